"""The slot writer on a real block device (a loop device): zero runs go out as
BLKZEROOUT, and the device reads back what was sent, old data overwritten."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.run import run
from tests.unit.test_update_uncached import MIB, disk, payload, write_all


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Path]:
    backing = disk(tmp_path, 24 * MIB)
    dev = Path(run(["losetup", "--find", "--show", str(backing)]).stdout.strip())
    try:
        yield dev
    finally:
        run(["losetup", "--detach", str(dev)], check=False)


def test_zero_runs_are_zeroed_on_the_device_and_it_reads_back_byte_for_byte(
        loop_device: Path) -> None:
    data = payload()
    out = write_all(loop_device, data, 2 * MIB)
    assert out.zeroed == 7 * MIB
    fd = os.open(loop_device, os.O_RDONLY | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, len(data) + 4096 - len(data) % 4096)   # O_DIRECT: aligned
        os.preadv(fd, [buf], 2 * MIB)   # from the device, not from a cached page
        assert buf[:len(data)] == data
    finally:
        os.close(fd)
