"""cpu controller: cpu.max from --cpus, cpu.weight from --cpu-shares; cpu.stat."""

from __future__ import annotations

from pathlib import Path

from runtime.cgroups.files import read_kv

PERIOD_US = 100_000


def max_line(nano_cpus: int) -> str:
    """`--cpus 1.5` (1.5e9 nano CPUs) -> "150000 100000" (quota period, in us)."""
    if nano_cpus <= 0:
        return f"max {PERIOD_US}"
    return f"{nano_cpus * PERIOD_US // 1_000_000_000} {PERIOD_US}"


def weight_from_shares(shares: int) -> int:
    """Docker's cpu shares (2..262144, default 1024) -> cpu.weight (1..10000), as runc maps it."""
    shares = min(max(shares, 2), 262144)
    return 1 + ((shares - 2) * 9999) // 262142


def apply(path: Path, nano_cpus: int | None, shares: int | None) -> None:
    if nano_cpus is not None:
        (path / "cpu.max").write_text(max_line(nano_cpus))
    if shares is not None:
        (path / "cpu.weight").write_text(str(weight_from_shares(shares)))


def stats(path: Path) -> dict[str, int]:
    # cpu.stat is a core file: present even where the cpu controller is not.
    return read_kv(path / "cpu.stat")
