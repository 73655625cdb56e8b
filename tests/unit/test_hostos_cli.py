"""hostos imports only the verb it runs: boot-time units must not need build-host libraries."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hostos import cli


def test_every_module_is_mapped_to_the_verb_it_registers() -> None:
    assert sorted(cli.VERB_MODULES.values()) == sorted(cli.COMMAND_MODULES)
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(cli.VERB_MODULES)


@pytest.mark.parametrize("verb", ["provision", "health", "update"])
def test_boot_time_verbs_do_not_import_the_qemu_harness(verb: str) -> None:
    code = (
        "import sys; from hostos import cli\n"
        f"try: cli.main([{verb!r}, '--help'])\n"
        "except SystemExit: pass\n"
        "print(sorted(m for m in sys.modules if m.startswith(('qemu', 'hostos.vm'))))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_unknown_verb_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["frobnicate"])
    assert e.value.code == 2
