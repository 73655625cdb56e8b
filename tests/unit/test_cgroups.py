"""cgroup limit files, written to a temporary directory standing in for cgroupfs."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.cgroups import Hierarchy, Resources, memory
from runtime.cgroups.cpu import max_line, weight_from_shares
from runtime.cgroups.io import weight_from_blkio


def hierarchy(tmp_path: Path, controllers: str) -> Hierarchy:
    root = tmp_path / "berth"
    root.mkdir()
    (root / "cgroup.controllers").write_text(controllers + "\n")
    h = Hierarchy(root)
    h.setup()
    return h


def test_limits_are_written_to_each_controllers_file(tmp_path: Path) -> None:
    h = hierarchy(tmp_path, "cpuset cpu io memory pids")
    cg = h.container("c1")
    warnings = cg.create(Resources(memory=256 << 20, memory_swap=-1, nano_cpus=1_500_000_000,
                                   pids_limit=64, io_weight=500))
    assert warnings == []
    assert h.warnings == ()
    assert (cg.path / "memory.max").read_text() == str(256 << 20)
    assert (cg.path / "cpu.max").read_text() == "150000 100000"
    assert (cg.path / "pids.max").read_text() == "64"
    assert (cg.path / "io.weight").read_text() == f"default {weight_from_blkio(500)}"
    assert (tmp_path / "berth" / "cgroup.subtree_control").read_text() == "+memory +cpu +pids +io"


def test_missing_controllers_are_reported_and_not_written(tmp_path: Path) -> None:
    h = hierarchy(tmp_path, "")
    assert "memory, cpu, pids, io are not available" in h.warnings[0]
    cg = h.container("c2")
    warnings = cg.create(Resources(memory=1 << 20, pids_limit=10))
    assert [w.split(" ")[0] for w in warnings] == ["memory", "pids"]
    assert not (cg.path / "memory.max").exists()
    assert cg.exists()


def test_cpu_and_io_conversions() -> None:
    assert max_line(500_000_000) == "50000 100000"
    assert max_line(0) == "max 100000"
    assert weight_from_shares(1024) == 39  # runc's mapping of the default
    assert weight_from_shares(2) == 1 and weight_from_shares(262144) == 10000
    assert weight_from_blkio(10) == 1 and weight_from_blkio(1000) == 10000


def test_stats_and_oom_kills_are_read_from_cgroup_files(tmp_path: Path) -> None:
    h = hierarchy(tmp_path, "memory pids io")
    cg = h.container("c3")
    cg.create(Resources())
    (cg.path / "memory.current").write_text("1048576\n")
    (cg.path / "memory.max").write_text("max\n")
    (cg.path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    (cg.path / "cpu.stat").write_text("usage_usec 250\nuser_usec 200\nsystem_usec 50\n")
    (cg.path / "pids.current").write_text("3\n")
    (cg.path / "io.stat").write_text("8:0 rbytes=100 wbytes=20 rios=1\n8:16 rbytes=1 wbytes=2\n")
    st = cg.stats()
    assert (st.memory_current, st.memory_max, st.oom_kills) == (1 << 20, None, 1)
    assert (st.cpu_usage_usec, st.pids_current, st.io_read_bytes, st.io_write_bytes) == (
        250, 3, 101, 22)
    assert cg.oom_kills() == 1


def test_remove_of_a_missing_cgroup_is_done(tmp_path: Path) -> None:
    h = hierarchy(tmp_path, "")
    h.container("gone").remove()
    assert h.container("gone").try_remove()


@pytest.mark.parametrize("limit,expected", [(0, "max"), (-1, "max"), (5, "5")])
def test_pids_unlimited(tmp_path: Path, limit: int, expected: str) -> None:
    h = hierarchy(tmp_path, "pids")
    cg = h.container("p")
    cg.create(Resources(pids_limit=limit))
    assert (cg.path / "pids.max").read_text() == expected


@pytest.mark.parametrize("memory_swap,expected", [(None, str(16 << 20)), (-1, "max"),
                                                  (48 << 20, str(32 << 20))])
def test_swap_bound_follows_dockers_memory_swap(
    tmp_path: Path, memory_swap: int | None, expected: str
) -> None:
    # Unset --memory-swap means as much swap as memory (Docker), not unlimited swap.
    cg = tmp_path / "c"
    cg.mkdir()
    (cg / "memory.swap.max").write_text("max\n")
    memory.apply(cg, 16 << 20, memory_swap)
    assert (cg / "memory.swap.max").read_text() == expected
