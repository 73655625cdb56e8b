"""The syscall seam: what rootfs and lifecycle code may ask of the kernel.

`LibcSys` (libc.py) is the real thing; `RecordingSys` (fake.py) records the
calls so mount plans and namespace setup are unit-tested without root.
"""

from __future__ import annotations

import enum
from typing import Protocol


class MountFlag(enum.IntFlag):
    """mount(2) flags (include/uapi/linux/mount.h)."""

    NONE = 0
    RDONLY = 1
    NOSUID = 2
    NODEV = 4
    NOEXEC = 8
    REMOUNT = 32
    NOATIME = 1024
    BIND = 4096
    MOVE = 8192
    REC = 16384
    PRIVATE = 1 << 18
    SLAVE = 1 << 19
    STRICTATIME = 1 << 24


class Umount(enum.IntFlag):
    NONE = 0
    FORCE = 1
    DETACH = 2


class Namespace(enum.IntFlag):
    """CLONE_NEW* flags, as unshare(2)/setns(2)/clone(2) take them."""

    NONE = 0
    MOUNT = 0x00020000
    CGROUP = 0x02000000
    UTS = 0x04000000
    IPC = 0x08000000
    USER = 0x10000000
    PID = 0x20000000
    NET = 0x40000000

    @property
    def proc_name(self) -> str:
        """The file under /proc/PID/ns/ for a single namespace flag."""
        return _PROC_NS[self]


_PROC_NS = {
    Namespace.MOUNT: "mnt", Namespace.CGROUP: "cgroup", Namespace.UTS: "uts",
    Namespace.IPC: "ipc", Namespace.USER: "user", Namespace.PID: "pid", Namespace.NET: "net",
}


class Sys(Protocol):
    """Kernel operations used by the engine. Each raises OSError(errno, "what: why")."""

    def mount(self, source: str, target: str, fstype: str | None,
              flags: MountFlag, data: str | None = None) -> None: ...

    def umount(self, target: str, flags: Umount = Umount.NONE) -> None: ...

    def unshare(self, flags: Namespace) -> None: ...

    def setns(self, fd: int, nstype: Namespace) -> None: ...
