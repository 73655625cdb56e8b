"""Spawn: clone a container's PID 1 into its namespaces and see it exec.

The parent's half of the handshake with the child (runtime/sys/_clone.c):

    clone3(NEWUSER|NEWPID|NEWUTS|NEWIPC[|NEWNET], INTO_CGROUP, PIDFD)   child: waits "go"
      (by the spawner process with CLONE_PARENT, or by berthd itself: the Cloner)
    cloner: uid_map/gid_map, host mounts (idmapped layers, overlay), "go"
            (held for berthd when it wires a bridged network between begin and finish)
                                     child: unshare(NEWNS|NEWCGROUP) (copies them),
                                            rootfs, pivot_root, caps, seccomp, exec
    parent: error pipe EOF = exec done; a line = the failure, raised as StartError;
            then it detaches the host's copies of the mounts (detach_host)
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
from dataclasses import dataclass

from runtime import rootfs
from runtime.cgroups import Cgroup
from runtime.container import spawner
from runtime.container.errors import StartError
from runtime.container.init import ChildFds, ChildPlan
from runtime.sys import Namespace, Sys

START_TIMEOUT = 10.0
log = logging.getLogger("berth.engine")


class InitTimeout(StartError):
    """The child never answered (see README: clone3 skips glibc's fork handlers)."""


@dataclass(frozen=True)
class IdMap:
    """Container ids 0..count-1 are host ids host_base..host_base+count-1."""

    host_base: int
    count: int = 65536

    def line(self) -> str:
        return f"0 {self.host_base} {self.count}\n"


@dataclass(frozen=True)
class Stdio:
    stdin: int
    stdout: int
    stderr: int


def proc_start_time(pid: int) -> int:
    """Field 22 of /proc/PID/stat (clock ticks after boot): pid + this names a process."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    # comm (field 2) may hold spaces and parens: split after its closing paren.
    return int(raw[raw.rindex(b")") + 2:].split()[19])


def _read_all(fd: int, timeout: float, what: str) -> bytes:
    out = b""
    poller = select.poll()  # not select(): a daemon with 1,000 containers has fds > 1024
    poller.register(fd, select.POLLIN)
    while True:
        if not poller.poll(timeout * 1000):
            raise InitTimeout(f"{what}: container init did not answer within {timeout:.0f}s")
        chunk = os.read(fd, 4096)
        if not chunk:
            return out
        out += chunk


def _recv_fd(sock: int) -> int:
    """The one fd the child sent before its exec (already queued: no wait)."""
    with socket.socket(fileno=os.dup(sock)) as s:
        s.setblocking(False)
        _, fds = spawner.recv_fds(s, 16, 1)
    if not fds:
        raise OSError("no pty came from the container's init")
    return fds[0]


class Launch:
    """One start attempt: begin() clones and prepares, finish() lets it exec."""

    def __init__(self, plan: ChildPlan, spec: rootfs.RootfsSpec | None, stdio: Stdio | None,
                 cgroup: Cgroup | None, idmap: IdMap | None, namespaces: Namespace,
                 sys: Sys, join: tuple[tuple[int, Namespace], ...] = (),
                 pid_ns_fd: int = -1, cloner: spawner.Cloner | None = None,
                 hold: bool = False) -> None:
        self.plan = plan
        self.spec = spec
        self.stdio = stdio
        self.cgroup = cgroup
        self.idmap = idmap
        self.namespaces = namespaces
        self.sys = sys
        self.join = join
        self.pid_ns_fd = pid_ns_fd
        self.cloner: spawner.Cloner = cloner or spawner.InProcessCloner()
        # hold: the caller has work between begin() and finish() (a bridged network);
        # otherwise the cloner releases the child ("go") as soon as its setup is done.
        self.hold = hold
        self._released = False
        self.pid = 0
        self.pidfd = -1
        self.pty_master = -1     # -t: the master of the pty the child opened (after finish)
        self._mounted = False
        self._go_w = self._err_r = self._console = -1

    def begin(self) -> int:
        """Clone the child, have the cloner do the parent's part (id maps, host mounts)
        and, unless held, "go"; returns the pid."""
        go_r, self._go_w = os.pipe2(os.O_CLOEXEC)
        # No handshake after the child's unshare: berthd detaches its copies of the host
        # mounts after the exec (the child unshared long before), not while the child
        # works: one wake-up of berthd less on the start's critical path.
        self._err_r, err_w = os.pipe2(os.O_CLOEXEC)
        console_w = -1
        if self.stdio is None:  # -t: the child opens a pty in its devpts and sends the master
            pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self._console, console_w = pair[0].detach(), pair[1].detach()
        stdio = self.stdio or Stdio(-1, -1, -1)
        fds = ChildFds(stdin=stdio.stdin, stdout=stdio.stdout, stderr=stdio.stderr, go=go_r,
                       error=err_w, join=self.join, console=console_w)
        setup = spawner.ParentSetup(
            id_map=self.idmap.line() if self.idmap is not None and self.namespaces
            & Namespace.USER else "",
            host_steps=tuple(rootfs.host_plan(self.spec)) if self.spec is not None else (),
            release=-1 if self.hold else self._go_w)
        self._mounted = self.spec is not None   # abort() undoes what may be mounted
        self._released = not self.hold
        try:
            pid, self.pidfd = self._clone(fds, setup)
        except OSError as e:
            for fd in (go_r, err_w, console_w):
                if fd >= 0:
                    os.close(fd)
            if isinstance(e, spawner.SetupFailed):
                self.pid, self.pidfd = e.pid, e.pidfd
                self.abort()
                raise StartError(f"{e.strerror or e}") from e
            self._mounted = False
            self._close_parent_ends()
            raise StartError(f"clone: {e.strerror}") from e
        self.pid = pid
        for fd in (go_r, err_w, console_w):
            if fd >= 0:
                os.close(fd)
        return pid

    def _clone(self, fds: ChildFds, setup: spawner.ParentSetup) -> tuple[int, int]:
        """(pid, pidfd) of the child, born in its cgroup if any."""
        cg_fd = -1
        try:
            if self.cgroup is not None:
                cg_fd = os.open(self.cgroup.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            return self.cloner.clone(self.plan, fds, self.namespaces, cg_fd, self.pid_ns_fd,
                                     setup)
        finally:
            if cg_fd >= 0:
                os.close(cg_fd)

    def finish(self) -> int:
        """Release the child; return its pidfd once it has exec'd, or raise StartError.

        The host's copies of the rootfs mounts are still there: the caller detaches
        them (`detach_host`) once the start is answered."""
        try:
            if not self._released:
                os.write(self._go_w, b"g")
                self._released = True
            err = _read_all(self._err_r, START_TIMEOUT, "exec")
        except BaseException:
            self.abort()
            raise
        if err:
            self.abort()
            raise StartError(err.decode(errors="replace"))
        if self._console >= 0:
            try:
                self.pty_master = _recv_fd(self._console)
            except OSError as e:
                self.abort()
                raise StartError(f"receive the container's pty: {e.strerror or e}") from e
        self._close_parent_ends()
        return self.pidfd

    def _detach(self) -> None:
        if self._mounted and self.spec is not None:
            rootfs.detach_all(rootfs.host_teardown(self.spec), self.sys)
            self._mounted = False

    @property
    def mounted(self) -> bool:
        """The host's copies of the rootfs mounts may still be there."""
        return self._mounted

    def detach_host(self) -> None:
        """Detach the host mount namespace's copies of the rootfs mounts (after exec:
        the container's own mount namespace holds its copies)."""
        try:
            self._detach()
        except OSError as e:   # the run's teardown tries again
            log.warning("detach the host's rootfs mounts: %s", e)

    def _close_parent_ends(self) -> None:
        for attr in ("_go_w", "_err_r", "_console"):
            fd = getattr(self, attr)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, attr, -1)

    def abort(self) -> None:
        """Kill and reap the child, undo host mounts; idempotent."""
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = 0
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        if self.pty_master >= 0:
            os.close(self.pty_master)
            self.pty_master = -1
        with contextlib.suppress(OSError):
            self._detach()
        self._close_parent_ends()
