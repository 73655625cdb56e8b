"""`exec`: a new process in a running container's namespaces, cgroup, caps and seccomp.

The daemon setns()es into the container's pid namespace just around the
clone (only children are affected), the child joins the user, mount, uts,
ipc, net and cgroup namespaces itself, then takes a container's path to its exec
(`_clone`: user, workdir, caps, no_new_privs, seccomp).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from runtime.container import caps as caps_mod
from runtime.container.errors import NoSuchExec, NotRunning, StartError
from runtime.container.init import ChildPlan
from runtime.container.spawn import Launch, Stdio
from runtime.container.spec import ExecRequest, merge_env
from runtime.container.start import exit_code_for
from runtime.container.supervisor import exit_status, unwatch, watch_exit
from runtime.seccomp import default_profile_bpf
from runtime.sys import Namespace

if TYPE_CHECKING:
    from runtime.container.manager import ContainerManager


@dataclass(frozen=True)
class ExecInfo:
    id: str
    container_id: str
    request: ExecRequest
    running: bool
    exit_code: int | None
    pid: int


@dataclass(eq=False)
class ExecSession:
    id: str
    container_id: str
    request: ExecRequest
    pid: int = 0
    pidfd: int = -1
    stdout: int = -1          # read ends (non-blocking); for a tty, stdout is the pty master
    stderr: int = -1
    pty: int = -1
    stdin: int = -1           # -i without -t: the write end of the process's stdin pipe
    running: bool = False
    exit_code: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait(self) -> int:
        await self.done.wait()
        return self.exit_code if self.exit_code is not None else -1

    async def output(self) -> AsyncIterator[tuple[str, bytes]]:
        """("stdout"|"stderr", chunk) until both streams end."""
        q: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        streams = {fd: name for fd, name in ((self.stdout, "stdout"), (self.stderr, "stderr"))
                   if fd >= 0}

        def reader(fd: int) -> None:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if chunk:
                q.put_nowait((streams[fd], chunk))
            else:
                loop.remove_reader(fd)
                q.put_nowait(None)

        for fd in streams:
            os.set_blocking(fd, False)
            loop.add_reader(fd, reader, fd)
        open_streams = len(streams)
        try:
            while open_streams:
                item = await q.get()
                if item is None:
                    open_streams -= 1
                else:
                    yield item
        finally:
            for fd in streams:
                with contextlib.suppress(ValueError, RuntimeError):
                    loop.remove_reader(fd)


_JOIN_ORDER = (Namespace.USER, Namespace.MOUNT, Namespace.UTS, Namespace.IPC, Namespace.NET,
               Namespace.CGROUP)


def create(mgr: ContainerManager, c: object, req: ExecRequest) -> str:
    from runtime.container.manager import Container

    assert isinstance(c, Container)
    if not c.state.status.can_exec():
        raise NotRunning(c.id)
    if not req.cmd:
        raise StartError("No exec command specified")
    exec_id = secrets.token_hex(32)
    mgr.execs[exec_id] = ExecSession(exec_id, c.id, req)
    # dockerd's action names the command: "exec_create: ls -l" (filters match the prefix)
    mgr.publish(c, f"exec_create: {' '.join(req.cmd)}", execID=exec_id)
    return exec_id


def _session(mgr: ContainerManager, exec_id: str) -> ExecSession:
    try:
        return mgr.execs[exec_id]
    except KeyError:
        raise NoSuchExec(exec_id) from None


def inspect(mgr: ContainerManager, exec_id: str) -> ExecInfo:
    s = _session(mgr, exec_id)
    return ExecInfo(s.id, s.container_id, s.request, s.running, s.exit_code, s.pid)


async def start(mgr: ContainerManager, exec_id: str) -> ExecSession:
    s = _session(mgr, exec_id)
    c = mgr.get(s.container_id)
    if not c.state.status.can_exec():
        raise NotRunning(c.id)
    if s.running or s.exit_code is not None:
        raise StartError(f"exec {exec_id} has already run")
    rec, spec, req = c.record, c.record.spec, s.request
    pid = c.state.pid
    opened: list[int] = []
    child_ends: list[int] = []
    try:
        join = []
        own_netns = spec.network_mode != "host"
        for ns in _JOIN_ORDER:
            if (ns is Namespace.USER and not rec.uid_base) or (ns is Namespace.NET
                                                               and not own_netns):
                continue
            fd = os.open(f"/proc/{pid}/ns/{ns.proc_name}", os.O_RDONLY | os.O_CLOEXEC)
            opened.append(fd)
            join.append((fd, ns))
        pid_ns = os.open(f"/proc/{pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        opened.append(pid_ns)
        stdio: Stdio | None = None   # -t: the child opens a pty of the container's devpts
        if not req.tty:
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            if req.stdin:
                stdin_r, s.stdin = os.pipe2(os.O_CLOEXEC)
            else:
                stdin_r = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            s.stdout, s.stderr = out_r, err_r
            child_ends += [out_w, err_w, stdin_r]
            stdio = Stdio(stdin_r, out_w, err_w)
        cap_set = caps_mod.resolve(spec.cap_add, spec.cap_drop)
        plan = ChildPlan(
            steps=(), args=req.cmd, env=merge_env(spec.env, req.env), user=req.user or spec.user,
            working_dir=req.workdir or spec.working_dir, hostname=None, caps=cap_set,
            seccomp_bpf=None if spec.seccomp == "unconfined" else default_profile_bpf(cap_set),
            userns=rec.uid_base != 0, unshare=Namespace.NONE, tty=req.tty, make_workdir=False)
        launch = Launch(plan, None, stdio, mgr.hierarchy.container(c.id), None, Namespace.NONE,
                        mgr.sys, join=tuple(join), pid_ns_fd=pid_ns, cloner=mgr.spawner())
        s.pid = launch.begin()
        try:
            s.pidfd = launch.finish()
        except StartError as e:
            s.exit_code = exit_code_for(str(e))
            s.done.set()
            close_stdin(s)
            for fd in (s.stdout, s.stderr):
                if fd >= 0:
                    os.close(fd)
            s.stdout = s.stderr = s.pty = -1
            raise
        if req.tty:
            s.pty = s.stdout = launch.pty_master
    except BaseException:
        close_stdin(s)
        raise
    finally:
        for fd in opened + child_ends:
            os.close(fd)
    s.running = True
    mgr.publish(c, f"exec_start: {' '.join(req.cmd)}", execID=exec_id)

    def exited() -> None:
        close_stdin(s)
        code = exit_status(s.pidfd)
        os.close(s.pidfd)
        s.pidfd = -1
        s.running = False
        s.exit_code = code if code is not None else 255
        s.done.set()
        if s.container_id in mgr.containers:
            mgr.publish(mgr.containers[s.container_id], "exec_die", execID=exec_id,
                        exitCode=str(s.exit_code))

    watch_exit(s.pidfd, exited)
    return s


def close_stdin(s: ExecSession) -> None:
    """-i: the client's input ended (or the process did): the process reads EOF."""
    if s.stdin >= 0:
        os.close(s.stdin)
        s.stdin = -1


def detach(s: ExecSession) -> None:
    if s.pidfd >= 0:
        unwatch(s.pidfd)
