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
_HEAD = struct.Struct("=4H")
_LEN = struct.Struct("=I")
_NULL = 0xFFFFFFFF
HOST, CHILD = 0, 1   # the phase of a rootfs step: the cloner's, or the child's


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

    def item(self, tag: str, ints: tuple[int, ...] = (), strs: tuple[str | None, ...] = (),
             raw: bytes | None = None) -> None:
        self.parts.append(_HEAD.pack(TAG[tag], len(ints), len(strs) + (raw is not None), 0))
        if ints:
            self.parts.append(struct.pack(f"={len(ints)}q", *ints))
        for s in strs:
            if s is None:
                self.parts.append(_LEN.pack(_NULL))
                continue
            b = s.encode(errors="surrogateescape")
            if b"\0" in b:
                raise ProgramError(f"NUL byte in {s!r}")
            self.parts.append(_LEN.pack(len(b) + 1) + b + b"\0")
        if raw is not None:
            self.parts.append(_LEN.pack(len(raw)) + raw)

    def step(self, phase: int, step: rootfs.Step) -> None:
        match step:
            case rootfs.Mkdir(path):
                self.item("MKDIR", (phase,), (path,))
            case rootfs.Touch(path):
                self.item("TOUCH", (phase,), (path,))
            case rootfs.Symlink(target, link):
                self.item("SYMLINK", (phase,), (target, link))
            case rootfs.Mount(source, target, fstype, flags, data):
                self.item("MOUNT", (phase, int(flags)), (source, target, fstype, data))
            case rootfs.IdmapBind(source, target):
                self.item("IDMAP_BIND", (phase,), (source, target))
            case rootfs.RemountReadOnly(target):
                self.item("REMOUNT_RO", (phase,), (target,))
            case rootfs.MountPoint(source, target):
                self.item("MOUNTPOINT", (phase,), (source, target))
            case rootfs.Mask(path):
                self.item("MASK", (phase,), (path,))
            case rootfs.ReadOnlyPath(path):
                self.item("READONLY", (phase,), (path,))
            case rootfs.Pivot(root):
                self.item("PIVOT", (phase,), (root,))

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
