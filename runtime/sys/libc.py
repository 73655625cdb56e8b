"""libc through ctypes: the only module that calls it (argtypes declared).

Every failure becomes `OSError(errno, "<call> <object>: <strerror>")`, so a
caller's message names what failed and why ("mount overlay on /x: EINVAL").
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import fcntl
import os
import stat
import struct

from runtime.sys.protocol import MountFlag, Namespace, Umount

_libc = ctypes.CDLL(None, use_errno=True)

PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2

_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                        ctypes.c_ulong, ctypes.c_char_p]
_libc.mount.restype = ctypes.c_int
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.umount2.restype = ctypes.c_int
_libc.unshare.argtypes = [ctypes.c_int]
_libc.unshare.restype = ctypes.c_int
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.setns.restype = ctypes.c_int
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.sethostname.restype = ctypes.c_int
_libc.setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.setdomainname.restype = ctypes.c_int
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]
_libc.prctl.restype = ctypes.c_int
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_libc.fallocate.restype = ctypes.c_int
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
BLKZEROOUT = 0x127F   # _IO(0x12, 127)
_libc.syscall.restype = ctypes.c_long
class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def _error(what: str) -> OSError:
    err = ctypes.get_errno()
    name = errno_mod.errorcode.get(err, str(err))
    return OSError(err, f"{what}: {name} ({os.strerror(err)})")


def _check(rc: int, what: str) -> int:
    if rc < 0:
        raise _error(what)
    return rc


def _syscall(nr: int, *args: int | bytes | None) -> int:
    """syscall(2) with every argument widened to a C long (it is variadic)."""
    conv: list[ctypes.c_long | ctypes.c_char_p] = [
        ctypes.c_char_p(a) if isinstance(a, bytes) or a is None else ctypes.c_long(a)
        for a in args
    ]
    return int(_libc.syscall(ctypes.c_long(nr), *conv))


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


class LibcSys:
    """The real kernel, through libc."""

    # The messages are built only on failure (an f-string with an IntFlag in it walks
    # the enum machinery).
    def mount(self, source: str, target: str, fstype: str | None,
              flags: MountFlag, data: str | None = None) -> None:
        if _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)) < 0:
            kind = fstype or ("bind" if flags & MountFlag.BIND else "remount")
            raise _error(f"mount {kind} {source} on {target}")

    def umount(self, target: str, flags: Umount = Umount.NONE) -> None:
        if _libc.umount2(_b(target), flags) < 0:
            raise _error(f"umount {target}")

    def unshare(self, flags: Namespace) -> None:
        if _libc.unshare(flags) < 0:
            raise _error(f"unshare {flags!r}")

    def setns(self, fd: int, nstype: Namespace) -> None:
        if _libc.setns(fd, nstype) < 0:
            raise _error(f"setns {nstype!r}")



def zero_range(fd: int, offset: int, length: int) -> None:
    """[offset, offset+length) of fd reads as zeros, nothing written: BLKZEROOUT on a block
    device (a write-zeroes request), fallocate(PUNCH_HOLE|KEEP_SIZE) on a file. OSError
    (EOPNOTSUPP, ENOTTY, EINVAL) where the device or filesystem cannot."""
    if stat.S_ISBLK(os.fstat(fd).st_mode):
        fcntl.ioctl(fd, BLKZEROOUT, struct.pack("=QQ", offset, length))
    else:
        _check(_libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset,
                               length), "fallocate PUNCH_HOLE")


def prctl(option: int, arg2: int = 0, arg3: int = 0, what: str = "prctl") -> None:
    _check(_libc.prctl(option, arg2, arg3, 0, 0), what)


def set_child_subreaper(on: bool = True) -> None:
    prctl(PR_SET_CHILD_SUBREAPER, int(on), what="prctl PR_SET_CHILD_SUBREAPER")


def set_no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1, what="prctl PR_SET_NO_NEW_PRIVS")


def set_pdeathsig(sig: int) -> None:
    prctl(PR_SET_PDEATHSIG, sig, what="prctl PR_SET_PDEATHSIG")


def load_seccomp_bpf(program: bytes) -> None:
    """Install a compiled classic-BPF seccomp filter on this process (needs
    no_new_privs or CAP_SYS_ADMIN). A container's child loads its own in `_clone`."""
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len=len(program) // 8, filter=ctypes.cast(buf, ctypes.c_char_p))
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0),
           "prctl PR_SET_SECCOMP")
