"""io controller: io.weight from Docker's --blkio-weight; io.stat bytes."""

from __future__ import annotations

from pathlib import Path


def weight_from_blkio(weight: int) -> int:
    """blkio weight 10..1000 -> io.weight 1..10000 (linear, as runc converts it)."""
    weight = min(max(weight, 10), 1000)
    return 1 + (weight - 10) * 9999 // 990


def apply(path: Path, weight: int | None) -> None:
    if weight is not None:
        (path / "io.weight").write_text(f"default {weight_from_blkio(weight)}")


def stats(path: Path) -> tuple[int, int]:
    """(read bytes, written bytes) summed over devices."""
    try:
        lines = (path / "io.stat").read_text().splitlines()
    except FileNotFoundError:
        return 0, 0
    rbytes = wbytes = 0
    for line in lines:
        for field in line.split()[1:]:
            key, _, value = field.partition("=")
            if key == "rbytes":
                rbytes += int(value)
            elif key == "wbytes":
                wbytes += int(value)
    return rbytes, wbytes
