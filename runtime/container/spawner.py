"""The spawner: one small process that clones every container's PID 1 for berthd.

Why: clone3 from berthd copies the page tables of a ~70 MB Python process
per start. The spawner is a fresh interpreter that has imported only the
`_clone` extension, so a clone of it is cheap; its loop (`_clone.serve`) and
the child run no Python at all (runtime/container/README.md, "No Python after
the clone"). It is single-threaded, so the malloc-lock hazard of a clone3 in a
threaded daemon (README: "clone3 from a threaded daemon") is gone too.

It is ONE process for all containers, not a shim per container: it clones
with CLONE_PARENT, so each container's PID 1 is still berthd's direct child
(berthd stays the subreaper, reaps through the pidfd, re-adopts after a
restart exactly as before). The pidfd from CLONE_PIDFD and the pid go back
to berthd over a unix socket (SCM_RIGHTS); the spawner keeps nothing.

Protocol (one request at a time; berthd holds a lock):
    berthd -> spawner: 8-byte big-endian length + SCM_RIGHTS [fds...], then the
                       program (program.py) whose fds index that fd list
    spawner -> berthd: 8-byte big-endian length + SCM_RIGHTS [pidfd] (when a
                       child exists), then i32 status, errno, pid and a message
EOF on the socket (berthd exited or stopped it) ends the spawner; it also
has PR_SET_PDEATHSIG=SIGKILL, so it never outlives berthd.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import struct
import sys as pysys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from runtime import rootfs
from runtime.container import program
from runtime.container.init import ChildFds, ChildPlan
from runtime.sys import Namespace, _clone
from runtime.sys import libc as libc_mod

if TYPE_CHECKING:
    import subprocess

# The spawner process imports this module too: what only berthd's side needs
# (subprocess, threading) is imported where it is used.
_LEN = struct.Struct("!Q")
_ANSWER = struct.Struct("=iii")
_MAX_FDS = 64


@dataclass(frozen=True)
class ParentSetup:
    """The parent's part of a start, done by whoever clones, right after the clone
    (no round trip back to berthd in between): the id maps, the host mounts
    (idmapped through the child's user namespace), then "go"."""

    id_map: str = ""                           # uid_map/gid_map line; "" for none
    host_steps: tuple[rootfs.Step, ...] = ()   # rootfs.host_plan, in the host mount ns
    release: int = -1   # write "g" here when done; -1: berthd releases the child itself
                        # later (a bridged network is wired in between)


class SetupFailed(OSError):
    """The child exists but its setup failed: the caller must abort (kill, reap, detach)."""

    def __init__(self, pid: int, pidfd: int, errno: int, message: str) -> None:
        super().__init__(errno, message)
        self.pid = pid
        self.pidfd = pidfd


class Cloner(Protocol):
    """Creates a container's first process (or an exec's) from a ChildPlan."""

    def clone(self, plan: ChildPlan, fds: ChildFds, namespaces: Namespace, cgroup_fd: int,
              pid_ns_fd: int, setup: ParentSetup) -> tuple[int, int]:
        """(pid, pidfd) of a new child of this process, born in `namespaces` (and in
        the cgroup of cgroup_fd, and in the pid namespace of pid_ns_fd, when >= 0),
        with `setup` done. Raises SetupFailed if the child exists but setup failed."""
        ...


def _compile(plan: ChildPlan, fds: ChildFds, namespaces: Namespace, cgroup_fd: int,
             pid_ns_fd: int, setup: ParentSetup, parent: bool) -> tuple[bytes, list[int]]:
    try:
        return program.compile_start(plan, fds, namespaces, cgroup_fd, pid_ns_fd,
                                     setup.id_map, setup.host_steps, setup.release, parent)
    except program.ProgramError as e:
        raise OSError(errno.EINVAL, f"{e}") from None


def _result(status: int, err: int, pid: int, pidfd: int, message: str) -> tuple[int, int]:
    if status == _clone.OK:
        return pid, pidfd
    if status == _clone.SETUP_FAILED:
        raise SetupFailed(pid, pidfd, err, message)
    raise OSError(err, message)


class InProcessCloner:
    """clone3 of the calling process itself: berthd's way when no spawner runs (e.g. an
    engine embedded in a test). The child runs `_clone`'s C code only."""

    def clone(self, plan: ChildPlan, fds: ChildFds, namespaces: Namespace, cgroup_fd: int,
              pid_ns_fd: int, setup: ParentSetup) -> tuple[int, int]:
        prog, sent = _compile(plan, fds, namespaces, cgroup_fd, pid_ns_fd, setup, False)
        return _result(*_clone.spawn(prog, sent))


def _send(sock: socket.socket, payload: bytes, fds: list[int]) -> None:
    """Header, fds and payload in one sendmsg: one wake-up of the other side."""
    data = _LEN.pack(len(payload)) + payload
    sent = socket.send_fds(sock, [data], fds) if fds else sock.send(data)
    if sent < len(data):
        sock.sendall(data[sent:])


def recv_fds(sock: socket.socket, size: int, max_fds: int) -> tuple[bytes, list[int]]:
    """Data and SCM_RIGHTS fds, the fds close-on-exec as they arrive (MSG_CMSG_CLOEXEC:
    no ioctl per fd afterwards; the error pipe must close at the container's exec).
    socket.recv_fds would do, but Python 3.11's drops its flags argument."""
    item = struct.calcsize("i")
    data, ancdata, _, _ = sock.recvmsg(size, socket.CMSG_LEN(max_fds * item),
                                       socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, raw in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += struct.unpack(f"{len(raw) // item}i", raw[:len(raw) - len(raw) % item])
    return data, fds


def _recv(sock: socket.socket) -> tuple[bytes, list[int]] | None:
    """One message, or None at EOF. Received fds are made close-on-exec."""
    data, fds = recv_fds(sock, 1 << 16, _MAX_FDS)
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    while len(data) < _LEN.size:
        more = sock.recv(_LEN.size - len(data))
        if not more:
            raise ConnectionError("spawner socket: short header")
        data += more
    (size,) = _LEN.unpack(data[:_LEN.size])
    body = bytearray(data[_LEN.size:])
    # One request (or answer) in flight at a time: nothing of a next message follows.
    while len(body) < size:
        chunk = sock.recv(min(size - len(body), 1 << 20))
        if not chunk:
            raise ConnectionError("spawner socket: short message")
        body += chunk
    return bytes(body), fds


class SpawnerError(OSError):
    """The spawner process is gone or answered nonsense."""


class SpawnerClient:
    """berthd's side: a Cloner that asks the spawner process."""

    def __init__(self, sock: socket.socket, proc: subprocess.Popen[bytes]) -> None:
        import threading

        self.sock = sock
        self.proc = proc
        self._lock = threading.Lock()   # one request in flight: replies are not tagged

    def clone(self, plan: ChildPlan, fds: ChildFds, namespaces: Namespace, cgroup_fd: int,
              pid_ns_fd: int, setup: ParentSetup) -> tuple[int, int]:
        prog, sent = _compile(plan, fds, namespaces, cgroup_fd, pid_ns_fd, setup, True)
        with self._lock:
            try:
                _send(self.sock, prog, sent)
                got = _recv(self.sock)
            except OSError as e:
                raise SpawnerError(e.errno, f"spawner: {e.strerror or e}") from e
        if got is None:
            raise SpawnerError(f"spawner (pid {self.proc.pid}) exited "
                               f"({self.proc.poll()})")
        body, pidfds = got
        if len(body) < _ANSWER.size or len(pidfds) > 1:
            for fd in pidfds:
                os.close(fd)
            raise SpawnerError("spawner: a malformed answer")
        status, err, pid = _ANSWER.unpack_from(body)
        if status != _clone.ERROR and not pidfds:
            raise SpawnerError("spawner: no pidfd with the answer")
        return _result(status, err, pid, pidfds[0] if pidfds else -1,
                       body[_ANSWER.size:].decode(errors="replace"))

    def alive(self) -> bool:
        return self.proc.poll() is None


@contextlib.contextmanager
def start_spawner() -> Iterator[SpawnerClient]:
    """Run the spawner as our child for the duration; stop it (EOF, then wait).

    Call it from the event loop's thread: the spawner's PR_SET_PDEATHSIG fires
    when the *thread* that forked it ends, not only the process.
    """
    import subprocess

    import runtime

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    # -S: no site module (its .pth hooks cost time and memory); the spawner needs only
    # this package, put first on its path.
    top = os.path.dirname(os.path.dirname(os.path.abspath(runtime.__file__)))
    code = (f"import sys; sys.path.insert(0, {top!r}); "
            "from runtime.container.spawner import main; sys.exit(main(sys.argv[1:]))")
    try:
        proc = subprocess.Popen(
            [pysys.executable, "-S", "-c", code, str(theirs.fileno()), str(os.getpid())],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, close_fds=True)
    except BaseException:
        ours.close()
        theirs.close()
        raise
    theirs.close()
    try:
        yield SpawnerClient(ours, proc)
    finally:
        ours.close()   # EOF: the spawner exits
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str]) -> int:
    """argv: the socket's fd, berthd's pid."""
    libc_mod.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != int(argv[1]):   # berthd died before the line above
        return 0
    # Ctrl-C in berthd's terminal goes to the whole process group: berthd decides.
    # (A container's child gets every signal back to its default.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = int(argv[0])
    try:
        _clone.serve(sock)
    finally:
        os.close(sock)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(pysys.argv[1:]))
