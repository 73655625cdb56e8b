"""Reading cgroup interface files: single values and key/value lists."""

from __future__ import annotations

import contextlib
from pathlib import Path


def read_int(path: Path, default: int | None = None) -> int | None:
    try:
        raw = path.read_text().strip()
    except FileNotFoundError:
        return default
    return None if raw == "max" else int(raw)


def read_kv(path: Path) -> dict[str, int]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return {}
    out: dict[str, int] = {}
    for line in lines:
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out
