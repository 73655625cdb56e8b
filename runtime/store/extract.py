"""Safe layer extraction: a layer tar becomes an overlayfs lower directory.

Whiteouts are converted to overlayfs' native form, as Docker's overlay2 and
podman do: `.wh.NAME` becomes a 0/0 character device NAME, `.wh..wh..opq`
sets `trusted.overlay.opaque=y` on its directory. Each layer stays a diff, so
it is unpacked once and shared by every image and container that uses it.

Every path is resolved component by component from a directory fd with
O_NOFOLLOW, so nothing is ever written through a symlink; `..`, absolute
names, hard links leaving the layer and device nodes are refused with an
error naming the entry. setuid/setgid bits and file capabilities are kept
(as Docker keeps them: `ping`, `su` need them); containers run with
no_new_privs unless asked otherwise. Sizes and entry counts are bounded.

The caller extracts into a fresh directory and removes it if this raises,
so a failed extraction leaves nothing behind (see layers.py).
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import os
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO, Protocol, cast

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# xattrs carried over from PAX headers: file capabilities and user.*; never
# trusted.* (that would let a layer forge overlay metadata) nor security.selinux.
_KEPT_XATTRS = ("security.capability",)
_KEPT_XATTR_PREFIXES = ("user.",)


class DevicePolicy(StrEnum):
    REFUSE = "refuse"
    SKIP = "skip"


@dataclass(frozen=True)
class ExtractLimits:
    max_entry_size: int = 16 << 30
    max_total_size: int = 64 << 30
    max_entries: int = 1_000_000
    max_path: int = 4096
    devices: DevicePolicy = DevicePolicy.REFUSE


class ExtractError(ValueError):
    """A layer that cannot be unpacked safely; names the entry and the reason."""

    def __init__(self, entry: str, reason: str) -> None:
        self.entry, self.reason = entry, reason
        super().__init__(f"layer entry {entry!r}: {reason}" if entry else reason)


@dataclass(frozen=True)
class ExtractStats:
    diff_id: str  # sha256 of the uncompressed tar stream
    size: int  # bytes of file content
    entries: int


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _HashingReader:
    """Hashes every byte the tar reader consumes (the layer's DiffID)."""

    def __init__(self, raw: Readable) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()

    def read(self, n: int = -1, /) -> bytes:
        data = self.raw.read(n)
        self.hash.update(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


class _Peek:
    def __init__(self, raw: Readable) -> None:
        self.raw = raw
        self.head = raw.read(4)

    def read(self, n: int = -1, /) -> bytes:
        if self.head:
            if n < 0:
                data, self.head = self.head + self.raw.read(), b""
                return data
            data, self.head = self.head[:n], self.head[n:]
            if len(data) < n:
                data += self.raw.read(n - len(data))
            return data
        return self.raw.read(n)


def decompressed(raw: Readable) -> Readable:
    """The tar stream inside `raw`, whether plain or gzip (sniffed, not trusted)."""
    peek = _Peek(raw)
    if peek.head.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=cast(BinaryIO, peek), mode="rb")
    if peek.head.startswith(_ZSTD_MAGIC):
        raise ExtractError("", "zstd-compressed layers are not supported; use gzip or plain tar")
    return peek


def clean_path(name: str) -> tuple[str, ...]:
    """Split an entry name into components; refuse absolute names and `..`."""
    if "\x00" in name:
        raise ExtractError(name, "NUL in name")
    if name.startswith("/"):
        raise ExtractError(name, "absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ExtractError(name, "path contains '..'")
    return parts


class _Root:
    """A directory fd and safe, no-follow operations below it."""

    def __init__(self, dest: Path) -> None:
        self.fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)

    def close(self) -> None:
        os.close(self.fd)

    @contextlib.contextmanager
    def parent(self, entry: str, parts: tuple[str, ...], create: bool) -> Iterator[int]:
        """An fd of the directory holding parts[-1]; never follows a symlink."""
        fds: list[int] = []
        cur = self.fd
        try:
            for comp in parts[:-1]:
                try:
                    nxt = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=cur)
                except FileNotFoundError:
                    if not create:
                        raise ExtractError(entry, f"parent {comp!r} does not exist") from None
                    os.mkdir(comp, 0o755, dir_fd=cur)
                    nxt = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=cur)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise ExtractError(
                            entry, f"{comp!r} is a symlink or not a directory; refusing to "
                            "write through it") from None
                    raise
                fds.append(nxt)
                cur = nxt
            yield cur
        finally:
            for fd in fds:
                os.close(fd)


def _remove(dirfd: int, name: str, keep_dir: bool) -> None:
    """Remove whatever is at name (a later entry replaces an earlier one)."""
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if keep_dir:
            return
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dirfd)
        try:
            _clear_dir(fd)
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=dirfd)
    else:
        os.unlink(name, dir_fd=dirfd)


def _clear_dir(fd: int) -> None:
    for name in os.listdir(fd):
        _remove(fd, name, keep_dir=False)


class Extractor:
    def __init__(self, dest: Path, limits: ExtractLimits, preserve_owner: bool) -> None:
        self.dest = dest
        self.limits = limits
        self.preserve_owner = preserve_owner
        self.root = _Root(dest)
        self.total = 0
        self.entries = 0
        self.current = ""  # the entry being written, for error messages
        self._dirs: list[tuple[tuple[str, ...], tarfile.TarInfo]] = []

    def run(self, tar: tarfile.TarFile) -> None:
        try:
            for member in tar:
                self.current = member.name
                self.entries += 1
                if self.entries > self.limits.max_entries:
                    raise ExtractError(member.name, f"more than {self.limits.max_entries} entries")
                self._entry(tar, member)
            # Directory modes and times last: a 0555 dir must still take its children.
            for parts, member in reversed(self._dirs):
                with self.root.parent(member.name, parts, create=False) as pfd:
                    self._dir_meta(pfd, parts[-1], member)
        finally:
            self.root.close()

    def _entry(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        if len(m.name) > self.limits.max_path:
            raise ExtractError(m.name[:80] + "...", f"path longer than {self.limits.max_path}")
        parts = clean_path(m.name)
        if not parts:
            return  # "./": the layer root keeps the mode it was created with
        base = parts[-1]
        if m.size > self.limits.max_entry_size:
            raise ExtractError(m.name, f"{m.size} bytes exceeds the entry limit "
                               f"of {self.limits.max_entry_size}")
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(m.name, parts)
            return
        if m.ischr() or m.isblk():
            if self.limits.devices is DevicePolicy.SKIP:
                return
            raise ExtractError(m.name, "device nodes are not allowed in layers")
        with self.root.parent(m.name, parts, create=True) as pfd:
            _remove(pfd, base, keep_dir=m.isdir())
            if m.isdir():
                with contextlib.suppress(FileExistsError):
                    os.mkdir(base, 0o700, dir_fd=pfd)
                self._dirs.append((parts, m))
                return
            if m.isreg():
                self._file(tar, m, pfd, base)
            elif m.issym():
                os.symlink(m.linkname, base, dir_fd=pfd)
            elif m.islnk():
                self._hardlink(m, pfd, base)
                return  # a hard link shares its target's inode and metadata
            elif m.isfifo():
                os.mkfifo(base, 0o600, dir_fd=pfd)
            else:
                raise ExtractError(m.name, f"unsupported tar entry type {m.type!r}")
            self._meta(pfd, base, m)

    def _file(self, tar: tarfile.TarFile, m: tarfile.TarInfo, pfd: int, base: str) -> None:
        self.total += m.size
        if self.total > self.limits.max_total_size:
            raise ExtractError(m.name, f"layer exceeds the size limit of "
                               f"{self.limits.max_total_size} bytes")
        src = tar.extractfile(m)
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=pfd)
        try:
            left = m.size
            while left > 0 and src is not None:
                chunk = src.read(min(left, 1 << 20))
                if not chunk:
                    raise ExtractError(m.name, "tar stream ends inside this file")
                os.write(fd, chunk)
                left -= len(chunk)
        finally:
            os.close(fd)

    def _hardlink(self, m: tarfile.TarInfo, pfd: int, base: str) -> None:
        try:
            target = clean_path(m.linkname)
        except ExtractError as e:
            raise ExtractError(m.name, f"hard link target {m.linkname!r}: {e.reason}") from None
        if not target:
            raise ExtractError(m.name, f"hard link to the layer root {m.linkname!r}")
        with self.root.parent(m.name, target, create=False) as tfd:
            try:
                st = os.stat(target[-1], dir_fd=tfd, follow_symlinks=False)
            except FileNotFoundError:
                raise ExtractError(m.name, f"hard link target {m.linkname!r} is not in "
                                   "this layer") from None
            if stat.S_ISDIR(st.st_mode):
                raise ExtractError(m.name, f"hard link to directory {m.linkname!r}")
            os.link(target[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)

    def _whiteout(self, name: str, parts: tuple[str, ...]) -> None:
        base = parts[-1]
        with self.root.parent(name, parts, create=True) as pfd:
            if base == OPAQUE_MARKER:
                # The directory hides everything below it in lower layers.
                os.setxattr(pfd, OVERLAY_OPAQUE_XATTR, b"y")
                return
            if base.startswith(WHITEOUT_PREFIX * 2):
                return  # other AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): meaningless here
            hidden = base[len(WHITEOUT_PREFIX):]
            if hidden in ("", ".", ".."):
                raise ExtractError(name, "whiteout of an invalid name")
            _remove(pfd, hidden, keep_dir=False)
            os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=pfd)

    def _dir_meta(self, pfd: int, base: str, m: tarfile.TarInfo) -> None:
        try:
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):  # not replaced by a later entry
            self._meta(pfd, base, m)

    def _meta(self, pfd: int, base: str, m: tarfile.TarInfo) -> None:
        if self.preserve_owner:
            try:
                os.chown(base, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
            except (OverflowError, OSError) as e:
                raise ExtractError(m.name, f"cannot give it owner {m.uid}:{m.gid}: "
                                   f"{getattr(e, 'strerror', None) or e}") from None
        for key, value in (m.pax_headers or {}).items():
            if key.startswith("SCHILY.xattr."):
                attr = key[len("SCHILY.xattr."):]
                if attr in _KEPT_XATTRS or attr.startswith(_KEPT_XATTR_PREFIXES):
                    self._setxattr(pfd, base, m, attr, value)
        # Out-of-range times (a hostile or broken tar) keep the extraction time.
        mtime = int(m.mtime * 10**9)
        if m.issym():
            with contextlib.suppress(NotImplementedError, OSError, OverflowError, ValueError):
                os.utime(base, ns=(mtime, mtime), dir_fd=pfd, follow_symlinks=False)
            return
        # chmod after chown: chown clears setuid/setgid.
        os.chmod(base, stat.S_IMODE(m.mode), dir_fd=pfd)
        with contextlib.suppress(OverflowError, ValueError):
            os.utime(base, ns=(mtime, mtime), dir_fd=pfd)

    def _setxattr(self, pfd: int, base: str, m: tarfile.TarInfo, attr: str, value: str) -> None:
        fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_PATH, dir_fd=pfd)
        try:
            # O_PATH fds cannot take xattrs; go through /proc/self/fd (no symlink follow:
            # the fd is of the file itself).
            os.setxattr(f"/proc/self/fd/{fd}", attr, value.encode("utf-8", "surrogateescape"))
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP):
                raise ExtractError(m.name, f"setting xattr {attr}: {e.strerror}") from None
        finally:
            os.close(fd)


def extract_layer(raw: Readable, dest: Path, limits: ExtractLimits | None = None,
                  preserve_owner: bool | None = None) -> ExtractStats:
    """Unpack the (possibly gzipped) layer tar `raw` into the empty directory `dest`."""
    limits = limits or ExtractLimits()
    if preserve_owner is None:
        preserve_owner = os.geteuid() == 0
    reader = _HashingReader(decompressed(raw))
    ex = Extractor(dest, limits, preserve_owner)
    try:
        with tarfile.open(fileobj=cast(BinaryIO, reader), mode="r|", errorlevel=2,
                          bufsize=1 << 20) as tar:
            ex.run(tar)
        reader.drain()
    except tarfile.TarError as e:
        raise ExtractError("", f"not a valid tar stream: {e}") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ExtractError(ex.current, f"corrupt layer stream: {e}") from None
    except OSError as e:  # the disk's side: ENOSPC, EDQUOT, EIO...
        raise ExtractError(ex.current, f"writing the layer failed: "
                           f"{e.strerror or e}") from None
    return ExtractStats("sha256:" + reader.hash.hexdigest(), ex.total, ex.entries)
