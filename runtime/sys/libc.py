"""libc through ctypes: the only module that calls it (argtypes declared).

Every failure becomes `OSError(errno, "<call> <object>: <strerror>")`, so a
caller's message names what failed and why ("mount overlay on /x: EINVAL").
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errno_mod
import fcntl
import functools
import os
import platform
import stat
import struct
from collections.abc import Iterable

from runtime.sys.protocol import MountFlag, Namespace, Umount

_libc = ctypes.CDLL(None, use_errno=True)
# clone(2) must run with the GIL held and bracketed by the interpreter's fork
# hooks (what os.fork does), so it goes through a PyDLL handle.
_pylibc = ctypes.PyDLL(None, use_errno=True)

_ARCH = platform.machine()
_SYS_CLONE = {"x86_64": 56, "aarch64": 220}[_ARCH]
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}[_ARCH]
# The new mount API has one number on every architecture (asm-generic table).
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442

_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_AT_RECURSIVE = 0x8000
_OPEN_TREE_CLONE = 1
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_IDMAP = 0x00100000

PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

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
_libc.capset.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_libc.capset.restype = ctypes.c_int
_libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
_libc.signal.restype = ctypes.c_void_p
_libc.sigprocmask.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_libc.sigprocmask.restype = ctypes.c_int
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_libc.fallocate.restype = ctypes.c_int
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
BLKZEROOUT = 0x127F   # _IO(0x12, 127)
_SIG_SETMASK = 2
_EMPTY_SIGSET = ctypes.create_string_buffer(128)   # sigset_t: 1024 bits, all clear
_libc.syscall.restype = ctypes.c_long
_pylibc.syscall.restype = ctypes.c_long
_pylibc.syscall.argtypes = [ctypes.c_long, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                            ctypes.c_ulong, ctypes.c_ulong]
ctypes.pythonapi.PyOS_BeforeFork.argtypes = []
ctypes.pythonapi.PyOS_BeforeFork.restype = None
ctypes.pythonapi.PyOS_AfterFork_Parent.argtypes = []
ctypes.pythonapi.PyOS_AfterFork_Parent.restype = None
ctypes.pythonapi.PyOS_AfterFork_Child.argtypes = []
ctypes.pythonapi.PyOS_AfterFork_Child.restype = None


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


class _CloneArgs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size", "tls",
        "set_tid", "set_tid_size", "cgroup")]


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

    # The messages are built only on failure: these run in a container's child before
    # its exec, where every object touched costs a copy-on-write page fault (an f-string
    # with an IntFlag in it walks the enum machinery).
    def mount(self, source: str, target: str, fstype: str | None,
              flags: MountFlag, data: str | None = None) -> None:
        if _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)) < 0:
            kind = fstype or ("bind" if flags & MountFlag.BIND else "remount")
            raise _error(f"mount {kind} {source} on {target}")

    def umount(self, target: str, flags: Umount = Umount.NONE) -> None:
        if _libc.umount2(_b(target), flags) < 0:
            raise _error(f"umount {target}")

    def pivot_root(self, new_root: str, put_old: str) -> None:
        _check(_syscall(_SYS_PIVOT_ROOT, _b(new_root), _b(put_old)), f"pivot_root {new_root}")

    def chdir(self, path: str) -> None:
        os.chdir(path)

    def chroot(self, path: str) -> None:
        os.chroot(path)

    def makedirs(self, path: str, mode: int = 0o755) -> None:
        # One mkdir for the usual case (the parent exists): os.makedirs stats the parent
        # and splits the path in Python first.
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            if not os.path.isdir(path):
                raise
        except FileNotFoundError:
            os.makedirs(path, mode=mode, exist_ok=True)

    def touch(self, path: str) -> None:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))

    def symlink(self, target: str, link: str) -> None:
        with contextlib.suppress(FileExistsError):
            os.symlink(target, link)

    def path_kind(self, path: str) -> str | None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        return "dir" if stat.S_ISDIR(st.st_mode) else "file"

    def mount_flags(self, path: str) -> MountFlag:
        st = os.statvfs(path)
        flags = MountFlag.NONE
        for st_flag, flag in ((os.ST_RDONLY, MountFlag.RDONLY), (os.ST_NOSUID, MountFlag.NOSUID),
                              (os.ST_NODEV, MountFlag.NODEV), (os.ST_NOEXEC, MountFlag.NOEXEC)):
            if st.f_flag & st_flag:
                flags |= flag
        return flags

    def idmapped_bind(self, source: str, target: str, userns_fd: int) -> None:
        fd = _check(_syscall(_SYS_OPEN_TREE, _AT_FDCWD, _b(source),
                             _OPEN_TREE_CLONE | os.O_CLOEXEC | _AT_RECURSIVE),
                    f"open_tree {source}")
        try:
            attr = _MountAttr(attr_set=_MOUNT_ATTR_IDMAP, userns_fd=userns_fd)
            _check(_syscall(_SYS_MOUNT_SETATTR, fd, b"", _AT_EMPTY_PATH,
                            ctypes.addressof(attr), ctypes.sizeof(attr)),
                   f"mount_setattr idmap {source}")
            _check(_syscall(_SYS_MOVE_MOUNT, fd, b"", _AT_FDCWD, _b(target),
                            _MOVE_MOUNT_F_EMPTY_PATH),
                   f"move_mount {source} to {target}")
        finally:
            os.close(fd)

    def unshare(self, flags: Namespace) -> None:
        if _libc.unshare(flags) < 0:
            raise _error(f"unshare {flags!r}")

    def setns(self, fd: int, nstype: Namespace) -> None:
        if _libc.setns(fd, nstype) < 0:
            raise _error(f"setns {nstype!r}")

    def sethostname(self, name: str) -> None:
        raw = name.encode()
        if _libc.sethostname(raw, len(raw)) < 0:
            raise _error(f"sethostname {name}")

    def setdomainname(self, name: str) -> None:
        raw = name.encode()
        if _libc.setdomainname(raw, len(raw)) < 0:
            raise _error(f"setdomainname {name}")


def clone(flags: Namespace) -> int:
    """fork(2) into new namespaces: returns the child's pid, or 0 in the child.

    Like os.fork, but the child is created directly in the new namespaces, so
    with Namespace.PID it is PID 1 there and still our child (no intermediate).
    """
    sigchld = 17
    ctypes.pythonapi.PyOS_BeforeFork()
    pid = _pylibc.syscall(_SYS_CLONE, int(flags) | sigchld, 0, 0, 0, 0)
    if pid == 0:
        ctypes.pythonapi.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    ctypes.pythonapi.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone {flags!r}: {errno_mod.errorcode.get(err, err)} "
                           f"({os.strerror(err)})")
    return int(pid)


_SYS_CLONE3 = 435
_CLONE_PIDFD = 0x00001000
_CLONE_PARENT = 0x00008000
_CLONE_INTO_CGROUP = 0x200000000


def clone3(flags: Namespace, cgroup_fd: int = -1, parent: bool = False) -> tuple[int, int]:
    """clone3(2) into new namespaces and, if cgroup_fd >= 0, straight into that cgroup.

    Returns (pid, pidfd) in the caller and (0, -1) in the child. Starting the
    child in its cgroup (CLONE_INTO_CGROUP, Linux 5.7) spares a write to
    cgroup.procs, whose migration lock is the slowest step of a start. With
    `parent` (CLONE_PARENT) the child is our parent's child, not ours: the
    spawner clones containers for berthd that way.
    """
    pidfd = ctypes.c_int(-1)
    extra = (_CLONE_PIDFD | (_CLONE_INTO_CGROUP if cgroup_fd >= 0 else 0)
             | (_CLONE_PARENT if parent else 0))
    args = _CloneArgs(flags=int(flags) | extra, pidfd=ctypes.addressof(pidfd),
                      # CLONE_PARENT takes no exit_signal: the kernel gives the child
                      # ours (SIGCHLD), as the signal our parent gets at its exit.
                      exit_signal=0 if parent else 17, cgroup=max(cgroup_fd, 0))
    ctypes.pythonapi.PyOS_BeforeFork()
    pid = _pylibc.syscall(_SYS_CLONE3, ctypes.addressof(args), ctypes.sizeof(args), 0, 0, 0)
    if pid == 0:
        ctypes.pythonapi.PyOS_AfterFork_Child()
        return 0, -1
    err = ctypes.get_errno()
    ctypes.pythonapi.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone3 {flags!r}: {errno_mod.errorcode.get(err, err)} "
                           f"({os.strerror(err)})")
    return int(pid), pidfd.value


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


@functools.cache
def last_cap() -> int:
    """The kernel's highest capability number (constant while it runs): read once, so a
    container's child inherits the value instead of reading /proc before its exec."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


class Capabilities:
    """One capability set made ready for a container's child by its parent, before the
    clone: the bounding-set drops and capset(2)'s structures are built once (per set,
    in the long-lived cloner), so the child only makes the calls."""

    def __init__(self, keep: Iterable[int]) -> None:
        kept = frozenset(keep)
        self.drop = tuple(cap for cap in range(last_cap() + 1) if cap not in kept)
        mask = 0
        for cap in kept:
            mask |= 1 << cap
        self._header = _CapHeader(version=_LINUX_CAPABILITY_VERSION_3, pid=0)
        self._data = (_CapData * 2)()
        for n in range(2):
            word = (mask >> (32 * n)) & 0xFFFFFFFF
            self._data[n].effective = self._data[n].permitted = word
        self._args = (ctypes.addressof(self._header), ctypes.addressof(self._data))

    def drop_bounding(self) -> None:
        """Drop every other capability from the bounding set; clear the ambient set."""
        for cap in self.drop:
            if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0:
                raise _error(f"prctl PR_CAPBSET_DROP {cap}")
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, what="prctl PR_CAP_AMBIENT_CLEAR_ALL")

    def set(self) -> None:
        """capset(2): effective = permitted = the set, inheritable empty."""
        _check(_libc.capset(*self._args), "capset")


class Seccomp:
    """A compiled classic-BPF seccomp filter ready to load: its buffer and sock_fprog are
    built once by the parent (no 8 KiB copy in each child)."""

    def __init__(self, program: bytes) -> None:
        self._buf = ctypes.create_string_buffer(program, len(program))
        self._prog = _SockFprog(len=len(program) // 8,
                                filter=ctypes.cast(self._buf, ctypes.c_char_p))
        self._addr = ctypes.addressof(self._prog)

    def load(self) -> None:
        """Install the filter (needs no_new_privs or CAP_SYS_ADMIN)."""
        _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, self._addr, 0, 0),
               "prctl PR_SET_SECCOMP")


def load_seccomp_bpf(program: bytes) -> None:
    """Install a compiled classic-BPF seccomp filter (needs no_new_privs or CAP_SYS_ADMIN)."""
    Seccomp(program).load()


def default_signals(signals: Iterable[int], unblock: bool) -> None:
    """Back to SIG_DFL for each signal (failures ignored: glibc's own RT signals refuse),
    and with `unblock` an empty signal mask: a container's child before its exec (which
    keeps ignored signals ignored and the mask). Straight to libc: the signal module's
    wrappers turn every handler they return into an enum member."""
    for sig in signals:
        _libc.signal(sig, None)
    if unblock:
        _libc.sigprocmask(_SIG_SETMASK, _EMPTY_SIGSET, None)
