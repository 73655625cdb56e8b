"""Bulk reads and writes of an update that leave no page cache behind.

The kernel charges page cache to the cgroup of the process that first
touched the pages, and systemd's memory accounting (MemoryPeak=, the
"memory peak" logged when a unit stops) counts it. Written the plain way,
an apply left every byte it had downloaded, decompressed and written in
cache: hostos-update.service peaked at ~704 MB on a 2 GiB VM, for a release
of ~90 MB compressed (300 MB of /usr + verity, a 137 MB UKI). On a host
packed with containers that cache evicts theirs, and a tmpfs /tmp (python-
tuf's download_target stages each target in a TemporaryFile there) cannot
be evicted at all.

So every bulk file the agent touches goes through here, in bounded chunks:
written data is flushed every WINDOW bytes (fdatasync) and the flushed
range dropped (POSIX_FADV_DONTNEED, what `dd oflag=nocache` does); input
is dropped once consumed. Memory in use stays at about one WINDOW plus one
chunk, whatever the size of the release.

Zeros are not written but zeroed in place where whole ZERO_BLOCKs allow:
BLKZEROOUT on a block device (a write-zeroes request the disk, or QEMU,
carries out without the data crossing the bus), a punched hole in a regular
file (a disk image). That is the zero tail of a partition, which a release
does not ship (`zero_fill`: ~450 MiB of a 512 MiB /usr slot holding a ~60 MB
erofs), and any whole zero block of what it does ship (`write`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

from hostos.errors import HostosError
from runtime.sys.libc import zero_range

# Bytes written between two flushes (and cache drops); reads drop at the same pace.
WINDOW = 8 << 20
CHUNK = 4 << 20
# Aligned blocks of this size that hold only zeros are zeroed in place, not written.
ZERO_BLOCK = 1 << 20
_ZEROS = bytes(ZERO_BLOCK)


class DecompressError(HostosError):
    pass


def drop_cache(fd: int, offset: int = 0, length: int = 0) -> None:
    """Evict the clean cached pages of [offset, offset+length) (length 0: to the end)."""
    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


class UncachedWriter:
    """Sequential writes to fd from `start` on, flushed and evicted every WINDOW bytes;
    whole aligned ZERO_BLOCKs of zeros are zeroed in place (libc.zero_range) instead."""

    def __init__(self, fd: int, start: int = 0) -> None:
        self.fd = fd
        self.start = start
        self.written = 0
        self.zeroed = 0          # of written, the bytes zeroed in place
        self._dropped = 0
        self._can_zero = True    # until zero_range says the file cannot

    def write(self, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            n = min(len(data) - pos, ZERO_BLOCK - (self.start + self.written) % ZERO_BLOCK)
            # startswith: one memcmp in place, no copy, out at the first non-zero byte
            if n == ZERO_BLOCK and data.startswith(_ZEROS, pos):
                self.zero_fill(n)
            else:
                self._pwrite(memoryview(data)[pos:pos + n])
            pos += n

    def zero_fill(self, length: int) -> None:
        """Zeros for the next `length` bytes: its whole aligned blocks zeroed in place in
        one call (a block device's BLKZEROOUT, a file's hole), the edges written."""
        head = min(length, -(self.start + self.written) % ZERO_BLOCK)
        whole = (length - head) // ZERO_BLOCK * ZERO_BLOCK
        self._write_zeros(head)
        if whole and self._zero(whole):
            self.zeroed += whole
            self._advance(whole)
        else:
            self._write_zeros(whole)
        self._write_zeros(length - head - whole)

    def _write_zeros(self, length: int) -> None:
        while length:
            n = min(length, ZERO_BLOCK)
            self._pwrite(memoryview(_ZEROS)[:n])
            length -= n

    def _zero(self, length: int) -> bool:
        """zero_range at the current offset; False (and never again) if the file cannot."""
        if self._can_zero:
            try:
                zero_range(self.fd, self.start + self.written, length)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
                    raise
                self._can_zero = False
        return self._can_zero

    def _pwrite(self, view: memoryview) -> None:
        offset = self.start + self.written
        n = len(view)
        while view:
            k = os.pwrite(self.fd, view, offset)
            view = view[k:]
            offset += k
        self._advance(n)

    def _advance(self, n: int) -> None:
        self.written += n
        if self.written - self._dropped >= WINDOW:
            self.flush()

    def flush(self) -> None:
        """Make everything written durable, then drop it from the cache."""
        os.fdatasync(self.fd)
        drop_cache(self.fd, self.start + self._dropped, self.written - self._dropped)
        self._dropped = self.written


def read_chunks(path: Path, chunk: int = CHUNK) -> Iterator[bytes]:
    """The bytes of path in chunks; pages already read are evicted as it goes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        offset = 0
        while data := os.pread(fd, chunk, offset):
            yield data
            offset += len(data)
            drop_cache(fd, 0, offset)
    finally:
        os.close(fd)


def digests(chunks: Iterable[bytes], algorithms: Iterable[str]) -> tuple[int, dict[str, str]]:
    """(length, {algorithm: hex digest}) of a stream; ValueError for an unknown algorithm."""
    hashers = {name: hashlib.new(name) for name in algorithms}
    n = 0
    for data in chunks:
        n += len(data)
        for h in hashers.values():
            h.update(data)
    return n, {name: h.hexdigest() for name, h in hashers.items()}


@contextlib.contextmanager
def decompressed(source: Path) -> Iterator[Iterator[bytes]]:
    """`zstd -d` of source as chunks of at most CHUNK bytes, input evicted as zstd reads it.

    zstd reads the file through its stdin, which shares our open file
    description: its offset is how far zstd has read, so that much of the
    compressed file is dropped from the cache every WINDOW bytes of output.
    Raises DecompressError if zstd fails.
    """
    fd = os.open(source, os.O_RDONLY)
    try:
        proc = subprocess.Popen(["zstd", "-d", "-c", "-q"], stdin=fd, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    except BaseException:
        os.close(fd)
        raise
    assert proc.stdout is not None and proc.stderr is not None

    def chunks() -> Iterator[bytes]:
        assert proc.stdout is not None
        since_drop = 0
        while data := proc.stdout.read(CHUNK):
            yield data
            since_drop += len(data)
            if since_drop >= WINDOW:
                drop_cache(fd, 0, os.lseek(fd, 0, os.SEEK_CUR))
                since_drop = 0

    try:
        yield chunks()
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
        status = proc.wait()
        drop_cache(fd)
        os.close(fd)
    if status != 0:
        raise DecompressError(f"zstd -d {source} failed ({status}): {err}")
