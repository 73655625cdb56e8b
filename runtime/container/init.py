"""What runs in a container's first process between clone(2) and execve(2).

This code runs in a copy of the cloning process (the spawner, or berthd;
no other threads; the interpreter's fork hooks have run). It only makes
syscalls, reads files of the container and writes one error line to a
CLOEXEC pipe if something fails: a successful exec closes that pipe, which
is how the parent knows.

Every page the child writes is copied from its parent (copy-on-write), and
in Python nearly every object touched is written (its reference count):
so the parent builds what it can before the clone (`prepare`: the signals
to reset, the capability and seccomp structures, argv and the environment)
and the child only makes the calls.
"""

from __future__ import annotations

import fcntl
import functools
import gc
import os
import signal
import socket
import struct
import termios
from dataclasses import dataclass
from typing import NoReturn

from runtime import rootfs
from runtime.container import user as users
from runtime.sys import Namespace, Sys
from runtime.sys import libc as libc_mod

EXIT_INIT_FAILED = 127


@dataclass(frozen=True)
class ChildPlan:
    steps: tuple[rootfs.Step, ...]     # container_plan(...) (empty when joining, for exec)
    args: tuple[str, ...]
    env: tuple[str, ...]
    user: str
    working_dir: str
    hostname: str | None
    caps: tuple[int, ...]
    seccomp_bpf: bytes | None
    userns: bool
    unshare: Namespace                 # unshared after "go" (MOUNT|CGROUP for a container)
    tty: bool
    make_workdir: bool = True
    domainname: str = ""               # the UTS NIS domain name (`--domainname`)


@dataclass(frozen=True)
class ChildFds:
    stdin: int
    stdout: int
    stderr: int
    go: int          # read one byte: parent is done (maps, cgroup, mounts); EOF = abort
    error: int       # CLOEXEC: one line on failure
    join: tuple[tuple[int, Namespace], ...] = ()   # namespaces to setns into (exec)
    console: int = -1  # -t: a unix socket to send the pty master to (stdio fds unused)


@dataclass(frozen=True)
class Prepared:
    """A ChildPlan made ready by the cloning process, before the clone (module doc)."""

    signals: tuple[int, ...]        # handlers to reset to SIG_DFL
    unblock: bool                   # the parent blocks signals: clear the mask
    caps: libc_mod.Capabilities
    seccomp: libc_mod.Seccomp | None
    env: dict[str, str]             # for execve
    home: bool                      # HOME is set: else it comes from the user's passwd entry
    path: str                       # $PATH, for the executable's lookup


# Built once per capability set or BPF program by the long-lived cloner, not per start.
_capabilities = functools.lru_cache(maxsize=32)(libc_mod.Capabilities)
_seccomp = functools.lru_cache(maxsize=8)(libc_mod.Seccomp)


def changed_signals() -> tuple[int, ...]:
    """Signals whose handler the cloning process changed (Python's own SIGPIPE and
    SIGXFSZ ignores, berthd's loop handlers): exec keeps ignored ones ignored, and a
    handler of ours must not run in the child before its exec."""
    out = []
    for sig in range(1, signal.NSIG):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            if signal.getsignal(sig) is not signal.SIG_DFL:
                out.append(sig)
        except ValueError:
            continue
    return tuple(out)


def prepare(plan: ChildPlan, signals: tuple[int, ...]) -> Prepared:
    """`signals`: changed_signals() of the cloning process."""
    env: dict[str, str] = {}
    for e in plan.env:
        k, _, v = e.partition("=")
        env[k] = v
    return Prepared(
        signals=signals,
        unblock=bool(signal.pthread_sigmask(signal.SIG_BLOCK, ())),
        caps=_capabilities(plan.caps),
        seccomp=_seccomp(plan.seccomp_bpf) if plan.seccomp_bpf else None,
        env=env, home=any(e.startswith("HOME=") for e in plan.env),
        path=next((e[5:] for e in plan.env if e.startswith("PATH=")), ""))


def find_executable(name: str, path: str) -> str:
    """Lookup in $PATH (`path`) inside the container, with Docker's error texts."""
    if "/" in name:
        try:
            st = os.stat(name)
        except FileNotFoundError:
            raise OSError(f'exec: "{name}": stat {name}: no such file or directory') from None
        if not os.access(name, os.X_OK) or (st.st_mode & 0o170000) == 0o040000:
            raise OSError(f'exec: "{name}": permission denied')
        return name
    for d in path.split(":"):
        cand = os.path.join(d or ".", name)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise OSError(f'exec: "{name}": executable file not found in $PATH')


def _read(path: str) -> str:
    # os.open and os.read: no buffered text file (its objects, fstat, ioctl and seeks).
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        return ""
    finally:
        os.close(fd)
    return b"".join(chunks).decode()


_TIOCSPTLCK = 0x40045431   # _IOW('T', 0x31, int)
_TIOCGPTPEER = 0x5441      # _IO('T', 0x41), Linux 4.13


def open_console(sock: int) -> int:
    """A pty of the container's own devpts (so `tty` names a /dev/pts/N that exists
    inside): the master goes to the daemon over `sock`, the slave is returned."""
    master = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
    slave = fcntl.ioctl(master, _TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    with socket.socket(fileno=os.dup(sock)) as s:
        socket.send_fds(s, [b"t"], [master])
    os.close(master)
    return slave


def child_main(plan: ChildPlan, ready: Prepared, fds: ChildFds, sys: Sys) -> NoReturn:
    """Never returns: execs the command or exits EXIT_INIT_FAILED after reporting."""
    # A collection here would walk (and so copy-on-write) the daemon's whole heap.
    gc.disable()
    try:
        _setup(plan, ready, fds, sys)
    except BaseException as e:
        msg = str(e) if isinstance(e, OSError) and e.errno is None else (
            f"{e.strerror or e}" if isinstance(e, OSError) and e.strerror else f"{e}")
        if not msg:
            msg = type(e).__name__
        try:
            os.write(fds.error, msg.encode(errors="replace")[:4000])
        finally:
            os._exit(EXIT_INIT_FAILED)
    os._exit(EXIT_INIT_FAILED)  # pragma: no cover - _setup execs


def _setup(plan: ChildPlan, ready: Prepared, fds: ChildFds, sys: Sys) -> None:
    libc_mod.default_signals(ready.signals, ready.unblock)
    # What needs neither the id maps nor the mounts (and cannot fail) is done while the
    # cloner makes them: the child would only wait for "go" meanwhile.
    if not plan.tty:
        os.dup2(fds.stdin, 0)
        os.dup2(fds.stdout, 1)
        os.dup2(fds.stderr, 2)
        os.setsid()
    if os.read(fds.go, 1) != b"g":
        os._exit(EXIT_INIT_FAILED)
    for fd, nstype in fds.join:
        sys.setns(fd, nstype)
    if plan.userns:
        os.setgroups([])
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    if plan.unshare:
        sys.unshare(plan.unshare)
    rootfs.apply(plan.steps, sys)
    if plan.hostname:
        sys.sethostname(plan.hostname)
    if plan.domainname:
        sys.setdomainname(plan.domainname)
    if plan.tty:   # a pty of the container's own devpts: after the mounts
        slave = open_console(fds.console)
        for n in (0, 1, 2):
            os.dup2(slave, n)
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    # Nothing of the daemon's (sockets, other containers' FIFOs) may leak in.
    os.closerange(3, fds.error)
    os.closerange(fds.error + 1, 1 << 20)
    who = users.resolve(plan.user, _read("/etc/passwd"), _read("/etc/group"))
    env = ready.env
    if not ready.home:
        env["HOME"] = who.home   # the child's own copy of the dict
    if plan.make_workdir:
        os.makedirs(plan.working_dir, exist_ok=True)
    try:
        os.chdir(plan.working_dir)
    except OSError as e:
        raise OSError(f"chdir to cwd (\"{plan.working_dir}\") set in config.json failed: "
                      f"{e.strerror}") from None
    exe = find_executable(plan.args[0], ready.path)
    ready.caps.drop_bounding()
    os.setgroups(who.groups)
    os.setresgid(who.gid, who.gid, who.gid)
    os.setresuid(who.uid, who.uid, who.uid)
    if who.uid == 0:
        ready.caps.set()
    libc_mod.set_no_new_privs()
    if ready.seccomp is not None:
        ready.seccomp.load()
    os.execve(exe, plan.args, env)
