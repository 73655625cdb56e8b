"""`hostos qemu`: its options, its failure without an image, what it tells the user."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hostos.cli import main
from hostos.vm import banner
from qemu.machine import Machine
from qemu.spec import MachineSpec
from runtime import tls
from runtime.run import run
from tests.unit.test_qemu_cmdline import IMAGE

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_the_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["qemu", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--kvm", "--tcg", "--image", "--memory", "--cpus", "--uefi"):
        assert flag in out


def test_kvm_and_tcg_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["qemu", "--kvm", "--tcg"])
    assert exc.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_missing_image_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["qemu", "--image", str(tmp_path / "nowhere"),
                   "--state-dir", str(tmp_path / "state")])
    err = capsys.readouterr().err
    assert status == 1
    assert "hostos build" in err and "Traceback" not in err
    assert not (tmp_path / "state").exists()  # nothing made before the image is known


def test_banner_tells_how_to_reach_the_api(tmp_path: Path) -> None:
    certs = tls.generate(tmp_path / "tls")
    machine = Machine(MachineSpec(IMAGE), tmp_path / "state")
    text = banner(43210, certs, machine)
    assert "127.0.0.1:43210" in text
    assert f"--tlscacert={certs.ca}" in text and f"--tlscert={certs.client_cert}" in text
    assert f"DOCKER_CERT_PATH={certs.directory}" in text
    assert "DOCKER_TLS_VERIFY=1" in text


def test_hostos_starts_without_qemu_qmp() -> None:
    # The image ships hostos but not qemu.qmp (a development-host dependency):
    # registering the qemu verb must not import it, or every verb fails there.
    code = (
        "import sys; sys.modules['qemu.qmp'] = None\n"
        "from hostos.cli import build_parser\n"
        "build_parser().parse_args(['qemu', '--tcg'])\n"
    )
    r = run([sys.executable, "-c", code], check=False, cwd=ROOT)
    assert r.returncode == 0, r.stderr
