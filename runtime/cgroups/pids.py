"""pids controller: pids.max from --pids-limit; pids.current."""

from __future__ import annotations

from pathlib import Path

from runtime.cgroups.files import read_int


def apply(path: Path, limit: int | None) -> None:
    if limit is not None:
        (path / "pids.max").write_text(str(limit) if limit > 0 else "max")


def stats(path: Path) -> tuple[int | None, int | None]:
    """(pids.current, pids.max); None where the controller is missing or unlimited."""
    return read_int(path / "pids.current"), read_int(path / "pids.max")
