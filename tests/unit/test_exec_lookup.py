"""The executable's lookup the child makes before its exec (`_clone.find_executable`),
with Docker's error texts, on real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.sys import _clone


@pytest.fixture
def bins(tmp_path: Path) -> Path:
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    for path, mode in (("a/tool", 0o644), ("b/tool", 0o755), ("b/run", 0o755)):
        (tmp_path / path).write_text("#!/bin/sh\n")
        (tmp_path / path).chmod(mode)
    return tmp_path


def test_path_is_searched_in_order_skipping_what_cannot_run(bins: Path) -> None:
    path = f"{bins}/a:{bins}/b/"
    assert _clone.find_executable("tool", path) == f"{bins}/b/tool"
    assert _clone.find_executable("run", f"{bins}/b") == f"{bins}/b/run"


def test_not_found_in_path_is_dockers_message(bins: Path) -> None:
    with pytest.raises(LookupError) as e:
        _clone.find_executable("nosuchcmd", f"{bins}/a:{bins}/b")
    assert str(e.value) == 'exec: "nosuchcmd": executable file not found in $PATH'


def test_a_path_with_a_slash_is_taken_as_is(bins: Path) -> None:
    assert _clone.find_executable(f"{bins}/b/run", "") == f"{bins}/b/run"
    with pytest.raises(LookupError) as e:
        _clone.find_executable(f"{bins}/b/missing", "/bin")
    assert str(e.value) == (f'exec: "{bins}/b/missing": stat {bins}/b/missing: '
                            "no such file or directory")
    for name in (f"{bins}/a/tool", f"{bins}/b"):   # not executable; a directory
        with pytest.raises(LookupError) as e:
            _clone.find_executable(name, "/bin")
        assert str(e.value) == f'exec: "{name}": permission denied'
