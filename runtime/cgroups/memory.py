"""memory controller: memory.max, memory.swap.max; usage and OOM kills."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runtime.cgroups.files import read_int, read_kv


@dataclass(frozen=True)
class MemoryStats:
    current: int
    max: int | None
    stat: dict[str, int]
    oom_kills: int


def apply(path: Path, limit: int | None, memory_swap: int | None) -> None:
    if limit is not None:
        (path / "memory.max").write_text(str(limit) if limit > 0 else "max")
    if limit is not None and limit > 0:
        # Docker's --memory-swap is memory+swap; v2's swap.max is swap alone.
        # Left unset, Docker allows as much swap as memory: without a bound a
        # hog swaps into the host's swap (zram on Berth) for minutes instead
        # of being OOM-killed at its limit.
        if memory_swap is None:
            swap = str(limit)
        else:
            swap = "max" if memory_swap < 0 else str(max(memory_swap - limit, 0))
        swap_file = path / "memory.swap.max"
        if swap_file.exists():
            swap_file.write_text(swap)


def oom_kills(path: Path) -> int:
    return read_kv(path / "memory.events").get("oom_kill", 0)


def stats(path: Path) -> MemoryStats:
    return MemoryStats(current=read_int(path / "memory.current", 0) or 0,
                       max=read_int(path / "memory.max"),
                       stat=read_kv(path / "memory.stat"), oom_kills=oom_kills(path))
