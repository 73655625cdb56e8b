"""`--help` on every berth verb and sub-verb, found by walking the parser (so a verb
added later is covered without editing a list)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from runtime.cli import build_parser


def verbs(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
          ) -> Iterator[tuple[str, ...]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from verbs(sub, (*prefix, name))


def test_every_verb_and_sub_verb_answers_help(capsys: pytest.CaptureFixture[str]) -> None:
    found = list(verbs(build_parser()))
    # The walk sees the nested families too, not only the top level.
    assert {("run",), ("logs",), ("container", "prune"), ("image", "history"),
            ("volume", "create"), ("network", "ls")} <= set(found), found
    for verb in found:
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([*verb, "--help"])
        assert exit_info.value.code == 0, verb
        out = capsys.readouterr().out
        # (an alias such as `volume list` prints the usage of `volume ls`)
        assert out.startswith(f"usage: berth {verb[0]}"), (verb, out[:200])
        assert "--help  " in out or "--help " in out, (verb, out)
