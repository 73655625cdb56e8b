"""Content-addressed blobs: <root>/blobs/sha256/<hex>, verified while written.

A blob is written to <root>/blobs/ingest/, hashed as it streams in, checked
against the digest (and size) it was announced with, fsynced and renamed into
place, so a blob under sha256/ always matches its name. Partial downloads keep
their ingest file (`<hex>.partial`) so a pull can resume with a Range request.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, BinaryIO

from runtime.oci import check_digest, digest_hex

CHUNK = 1 << 20


class BlobError(ValueError):
    """A blob that does not match what it was announced as; nothing was stored."""


class DigestMismatch(BlobError):
    def __init__(self, expected: str, actual: str, source: str = "") -> None:
        self.expected, self.actual = expected, actual
        where = f" from {source}" if source else ""
        super().__init__(f"blob{where} has digest {actual}, expected {expected}")


class SizeMismatch(BlobError):
    def __init__(self, digest: str, expected: int, actual: int, source: str = "") -> None:
        self.digest, self.expected, self.actual = digest, expected, actual
        where = f" from {source}" if source else ""
        super().__init__(f"blob {digest}{where} is {actual} bytes, expected {expected}")


class BlobNotFound(LookupError):
    def __init__(self, digest: str) -> None:
        self.digest = digest
        super().__init__(f"blob {digest} is not in the store")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobWriter:
    """Streams one blob in; `commit()` verifies and publishes it, else it is dropped.

    With `resume=True` and an expected digest, bytes left by an earlier
    interrupted write are kept (`offset` says how many) and the caller asks
    only for the rest.
    """

    def __init__(self, store: BlobStore, expected: str | None, size: int | None,
                 resume: bool, source: str) -> None:
        self._store = store
        self.expected = check_digest(expected) if expected else None
        self.expected_size = size
        self.source = source
        self._hash = hashlib.sha256()
        self._committed = False
        self._keep_partial = False
        if resume and self.expected:
            self.path = store.ingest_dir / f"{digest_hex(self.expected)}.partial"
            self._f: BinaryIO = open(self.path, "a+b")  # noqa: SIM115
            try:
                # One writer per partial file, across threads, tasks and processes;
                # a second concurrent download of the same blob goes to a temp file.
                fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._keep_partial = True
            except BlockingIOError:
                self._f.close()
        if not self._keep_partial:
            self.path = store.ingest_dir / f"tmp-{uuid.uuid4().hex}"
            self._f = open(self.path, "w+b")  # noqa: SIM115
        self._f.seek(0)
        while chunk := self._f.read(CHUNK):
            self._hash.update(chunk)
        self.offset = self._f.tell()
        if size is not None and self.offset > size:
            self.reset()

    def reset(self) -> None:
        """Drop what was written (a server that ignored our Range, say)."""
        self._f.seek(0)
        self._f.truncate()
        self._hash = hashlib.sha256()
        self.offset = 0

    def write(self, data: bytes) -> None:
        if self.expected_size is not None and self.offset + len(data) > self.expected_size:
            self._keep_partial = False  # more bytes than announced: never resume from them
            raise SizeMismatch(self.expected or "?", self.expected_size,
                               self.offset + len(data), self.source)
        self._f.write(data)
        self._hash.update(data)
        self.offset += len(data)

    def commit(self) -> str:
        digest = "sha256:" + self._hash.hexdigest()
        try:
            if self.expected_size is not None and self.offset != self.expected_size:
                raise SizeMismatch(self.expected or digest, self.expected_size, self.offset,
                                   self.source)
            if self.expected is not None and digest != self.expected:
                raise DigestMismatch(self.expected, digest, self.source)
        except BlobError:
            self._keep_partial = False  # wrong bytes: never resume from them
            raise
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        final = self._store.path(digest)
        os.replace(self.path, final)
        fsync_dir(final.parent)
        self._committed = True
        return digest

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
        if not self._committed and not self._keep_partial:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root / "blobs"
        self.dir = self.root / "sha256"
        self.ingest_dir = self.root / "ingest"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ingest_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)  # image contents are not for every host user to read

    def path(self, digest: str) -> Path:
        return self.dir / digest_hex(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(digest) from None

    def read(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(digest) from None

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise BlobNotFound(digest) from None

    def writer(self, expected: str | None = None, size: int | None = None, *,
               resume: bool = False, source: str = "") -> BlobWriter:
        return BlobWriter(self, expected, size, resume, source)

    def put(self, data: bytes, expected: str | None = None, source: str = "") -> str:
        if expected and self.has(expected) and self.size(expected) == len(data):
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            if digest != expected:
                raise DigestMismatch(expected, digest, source)
            return expected
        with self.writer(expected, len(data), source=source) as w:
            w.write(data)
            return w.commit()

    def put_stream(self, stream: IO[bytes], expected: str | None = None,
                   size: int | None = None, source: str = "") -> str:
        with self.writer(expected, size, source=source) as w:
            while chunk := stream.read(CHUNK):
                w.write(chunk)
            return w.commit()

    def delete(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(digest).unlink()

    def drop_partial(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.ingest_dir / f"{digest_hex(digest)}.partial").unlink()

    def sweep_ingest(self, partial_max_age: float | None = None) -> int:
        """Remove temp files of writes that never finished (a crash), and resumable
        partial downloads older than `partial_max_age` seconds; returns bytes freed."""
        freed = 0
        now = time.time()
        for p in self.ingest_dir.iterdir():
            try:
                st = p.stat()
                stale = p.name.startswith("tmp-") or (
                    partial_max_age is not None and p.name.endswith(".partial")
                    and now - st.st_mtime > partial_max_age)
                if stale:
                    p.unlink()
                    freed += st.st_size
            except FileNotFoundError:
                continue
        return freed

    def __iter__(self) -> Iterator[str]:
        for p in self.dir.iterdir():
            if len(p.name) == 64:
                yield f"sha256:{p.name}"
