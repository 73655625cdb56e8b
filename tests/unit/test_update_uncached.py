"""The slot writer: zero runs are zeroed in place, and what reads back is what was sent.

Whole zero blocks of what it is given (and a partition's unshipped zero tail,
test_update_agent.py) are punched out of a disk image, BLKZEROOUT on a block
device (tests/privileged/test_update_zeroout.py), instead of written through
the page cache.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from hostos.update import uncached
from hostos.update.uncached import ZERO_BLOCK, UncachedWriter

MIB = 1 << 20


def payload() -> bytes:
    """Random data with zero runs: 6 whole aligned blocks, one unaligned run of 1.5
    blocks, and a zero tail shorter than a block."""
    data = bytearray(os.urandom(16 * MIB + 4096))
    data[2 * MIB:8 * MIB] = bytes(6 * MIB)
    data[9 * MIB + 512 * 1024:11 * MIB] = bytes(MIB + 512 * 1024)
    data[16 * MIB:] = bytes(4096)
    return bytes(data)


def write_all(path: Path, data: bytes, start: int) -> UncachedWriter:
    fd = os.open(path, os.O_RDWR)
    try:
        out = UncachedWriter(fd, start)
        for i in range(0, len(data), uncached.CHUNK):
            out.write(data[i:i + uncached.CHUNK])
        out.flush()
        return out
    finally:
        os.close(fd)


def disk(tmp_path: Path, size: int) -> Path:
    """A disk image full of old data (the inactive slot's previous release)."""
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(size))
    return path


def test_zero_runs_become_holes_and_the_slot_reads_back_byte_for_byte(tmp_path: Path) -> None:
    start = 4 * MIB   # the partition's offset on the disk
    path = disk(tmp_path, start + 20 * MIB)
    data = payload()
    before = os.stat(path).st_blocks
    out = write_all(path, data, start)
    with path.open("rb") as f:
        f.seek(start)
        assert f.read(len(data)) == data
    # the 6 aligned blocks and the one whole block inside the unaligned run
    assert out.zeroed == 7 * ZERO_BLOCK
    assert before - os.stat(path).st_blocks >= 7 * ZERO_BLOCK // 512
    assert out.written == len(data)


def test_a_file_that_cannot_punch_holes_gets_the_zeros_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def cannot(fd: int, offset: int, length: int) -> None:
        calls.append(offset)
        raise OSError(errno.EOPNOTSUPP, "fallocate PUNCH_HOLE: EOPNOTSUPP")

    monkeypatch.setattr(uncached, "zero_range", cannot)
    path = disk(tmp_path, 20 * MIB)
    data = payload()
    out = write_all(path, data, 0)
    assert path.read_bytes()[:len(data)] == data
    assert out.zeroed == 0 and len(calls) == 1   # asked once, then written throughout
