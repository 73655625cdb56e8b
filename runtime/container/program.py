"""A start compiled for `_clone`: what the cloner and the child do, as data.

berthd decides everything a container's first process does (rootfs.py's steps,
init.ChildPlan, spawner.ParentSetup); `_clone` (C) carries it out from the clone
to the exec with no Python in between. This module writes the program in the
format `_clone.c`'s header describes; fds are indices into the list returned
with it.
"""

from __future__ import annotations

import struct

from runtime import rootfs
from runtime.container.init import ChildFds, ChildPlan
from runtime.sys import Namespace, _clone

TAG = _clone.TAGS
_ITEM = [struct.Struct(f"=4H{n}q") for n in range(5)]   # the head and n ints
_LEN = struct.Struct("=I")
_NULL = _LEN.pack(0xFFFFFFFF)
HOST, CHILD = 0, 1   # the phase of a rootfs step: the cloner's, or the child's

# Each rootfs step: its item and the fields that are its strings (a Mount's flags go
# with the phase as ints).
_STEPS: dict[type, tuple[int, tuple[str, ...]]] = {
    rootfs.Mkdir: (TAG["MKDIR"], ("path",)),
    rootfs.Touch: (TAG["TOUCH"], ("path",)),
    rootfs.Symlink: (TAG["SYMLINK"], ("target", "link")),
    rootfs.Mount: (TAG["MOUNT"], ("source", "target", "fstype", "data")),
    rootfs.IdmapBind: (TAG["IDMAP_BIND"], ("source", "target")),
    rootfs.RemountReadOnly: (TAG["REMOUNT_RO"], ("target",)),
    rootfs.MountPoint: (TAG["MOUNTPOINT"], ("source", "target")),
    rootfs.Mask: (TAG["MASK"], ("path",)),
    rootfs.ReadOnlyPath: (TAG["READONLY"], ("path",)),
    rootfs.Pivot: (TAG["PIVOT"], ("root",)),
    rootfs.TreeBind: (TAG["TREE_BIND"], ("source", "target")),
}


class ProgramError(ValueError):
    """The request cannot be expressed (a NUL in a path or an argument)."""


class Writer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.fds: list[int] = []

    def fd(self, fd: int) -> int:
        """The index of fd in the program's fd list (-1 for none)."""
        if fd < 0:
            return -1
        self.fds.append(fd)
        return len(self.fds) - 1

    def item(self, tag: str | int, ints: tuple[int, ...] = (),
             strs: tuple[str | None, ...] = (), raw: bytes | None = None) -> None:
        parts = self.parts
        parts.append(_ITEM[len(ints)].pack(TAG[tag] if isinstance(tag, str) else tag,
                                           len(ints), len(strs) + (raw is not None), 0,
                                           *ints))
        for s in strs:
            if s is None:
                parts.append(_NULL)
                continue
            b = s.encode(errors="surrogateescape")
            if b"\0" in b:
                raise ProgramError(f"NUL byte in {s!r}")
            parts += (_LEN.pack(len(b) + 1), b, b"\0")
        if raw is not None:
            parts += (_LEN.pack(len(raw)), raw)

    def step(self, phase: int, step: rootfs.Step) -> None:
        tag, fields = _STEPS[type(step)]
        ints = (phase, int(step.flags)) if isinstance(step, rootfs.Mount) else (phase,)
        self.item(tag, ints, tuple(getattr(step, name) for name in fields))

    def program(self) -> bytes:
        return b"".join(self.parts)


def compile_start(plan: ChildPlan, fds: ChildFds, namespaces: Namespace, cgroup_fd: int,
                  pid_ns_fd: int, id_map: str, host_steps: tuple[rootfs.Step, ...],
                  release: int, parent: bool) -> tuple[bytes, list[int]]:
    """The program for one clone, and the fds it names (by index)."""
    w = Writer()
    w.item("CLONE", (int(namespaces), int(parent), w.fd(cgroup_fd), w.fd(pid_ns_fd)))
    if id_map:
        w.item("IDMAP", (), (id_map,))
    for step in host_steps:
        w.step(HOST, step)
    if release >= 0:
        w.item("RELEASE", (w.fd(release),))
    if plan.tty:
        w.item("CONSOLE", (w.fd(fds.console),))
    else:
        w.item("STDIO", (w.fd(fds.stdin), w.fd(fds.stdout), w.fd(fds.stderr)))
    w.item("GO", (w.fd(fds.go),))
    w.item("ERROR", (w.fd(fds.error),))
    for fd, nstype in fds.join:
        w.item("JOIN", (w.fd(fd), int(nstype)))
    if plan.userns:
        w.item("USERNS")
    if plan.unshare:
        w.item("UNSHARE", (int(plan.unshare),))
    for step in plan.steps:
        w.step(CHILD, step)
    if plan.hostname:
        w.item("HOSTNAME", (), (plan.hostname,))
    if plan.domainname:
        w.item("DOMAINNAME", (), (plan.domainname,))
    w.item("USER", (), (plan.user,))
    w.item("WORKDIR", (int(plan.make_workdir),), (plan.working_dir,))
    for arg in plan.args:
        w.item("ARG", (), (arg,))
    for env in plan.env:
        w.item("ENV", (), (env,))
    mask = 0
    for cap in plan.caps:
        mask |= 1 << cap
    w.item("CAPS", (mask,))
    if plan.seccomp_bpf:
        w.item("SECCOMP", raw=plan.seccomp_bpf)
    return w.program(), w.fds
