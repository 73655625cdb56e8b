"""The spawner: one small process that clones every container's PID 1 for berthd.

Why: clone3 from berthd copies the page tables of a ~70 MB Python process
per start, and the child (Python until its exec) then copy-on-writes pages
of that heap as it runs. The spawner is a fresh interpreter that imports
only what a container's init needs (init.py, rootfs.py, runtime/sys), so a
clone of it is cheap. It is single-threaded, so the malloc-lock hazard of a
clone3 in a threaded daemon (README: "clone3 from a threaded daemon") is
gone too.

It is ONE process for all containers, not a shim per container: it clones
with CLONE_PARENT, so each container's PID 1 is still berthd's direct child
(berthd stays the subreaper, reaps through the pidfd, re-adopts after a
restart exactly as before). The pidfd from CLONE_PIDFD and the pid go back
to berthd over a unix socket (SCM_RIGHTS); the spawner keeps nothing.

Protocol (one request at a time; berthd holds a lock):
    berthd -> spawner: 8-byte length + SCM_RIGHTS [fds...], then a pickled
                       SpawnRequest whose fd fields index that fd list
    spawner -> berthd: 8-byte length + SCM_RIGHTS [pidfd] (on success),
                       then a pickled ("ok", pid) or ("error", errno, message)
EOF on the socket (berthd exited or stopped it) ends the spawner; it also
has PR_SET_PDEATHSIG=SIGKILL, so it never outlives berthd.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import pickle
import signal
import socket
import struct
import sys as pysys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from runtime import rootfs
from runtime.container import init
from runtime.container.init import ChildFds, ChildPlan
from runtime.sys import Namespace, Sys
from runtime.sys import libc as libc_mod

if TYPE_CHECKING:
    import subprocess

# The spawner process imports this module too: what only berthd's side needs
# (hashlib, subprocess, threading: ~5 MiB of RSS) is imported where it is used.
_LEN = struct.Struct("!Q")
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
    """Creates a container's first process (or an exec's) running `child_main`."""

    def clone(self, plan: ChildPlan, fds: ChildFds, namespaces: Namespace, cgroup_fd: int,
              pid_ns_fd: int, setup: ParentSetup) -> tuple[int, int]:
        """(pid, pidfd) of a new child of this process, born in `namespaces` (and in
        the cgroup of cgroup_fd, and in the pid namespace of pid_ns_fd, when >= 0),
        with `setup` done. Raises SetupFailed if the child exists but setup failed."""
        ...


def prepare(pid: int, setup: ParentSetup, sys: Sys) -> None:
    """The parent's part between clone and "go" (spawn.py's handshake)."""
    if setup.id_map:
        line = setup.id_map.encode()
        for name in ("uid_map", "gid_map"):
            # os.open: no buffered text file (its fstat, ioctl and seeks) around one write.
            fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
    if setup.host_steps:
        userns_fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        try:
            rootfs.apply(setup.host_steps, sys, userns_fd)
        finally:
            os.close(userns_fd)
    if setup.release >= 0:
        os.write(setup.release, b"g")


class InProcessCloner:
    """clone3 of the calling process itself (the spawner's own path, and berthd's
    when no spawner runs, e.g. an engine embedded in a test)."""

    def __init__(self, sys: Sys, parent: bool = False,
                 signals: tuple[int, ...] | None = None) -> None:
        self.sys = sys
        self.parent = parent   # CLONE_PARENT: the child is our parent's child
        # The signals whose handlers this process changed (init.changed_signals, ~0.1 ms):
        # given once by a process whose handlers are fixed (the spawner), else read at
        # each clone (berthd's loop adds handlers).
        self.signals = signals

    def clone(self, plan: ChildPlan, fds: ChildFds, namespaces: Namespace, cgroup_fd: int,
              pid_ns_fd: int, setup: ParentSetup) -> tuple[int, int]:
        own = -1
        # Before the clone: the child then only makes calls.
        ready = init.prepare(plan, self.signals if self.signals is not None
                             else init.changed_signals())
        try:
            if pid_ns_fd >= 0:
                # Joining a pid namespace only applies to children: switch ours for the
                # clone, then back (our own active pid namespace is always allowed).
                own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
                self.sys.setns(pid_ns_fd, Namespace.PID)
            pid, pidfd = libc_mod.clone3(namespaces, cgroup_fd, parent=self.parent)
            if pid == 0:
                init.child_main(plan, ready, fds, self.sys)
        finally:
            if own >= 0:
                self.sys.setns(own, Namespace.PID)
                os.close(own)
        try:
            prepare(pid, setup, self.sys)
        except OSError as e:
            raise SetupFailed(pid, pidfd, e.errno or 0, f"{e.strerror or e}") from e
        return pid, pidfd


@dataclass(frozen=True)
class SpawnRequest:
    plan: ChildPlan
    fds: ChildFds        # every fd field is an index into the message's fd list (or -1)
    namespaces: int
    cgroup: int          # index, or -1
    pid_ns: int          # index, or -1
    setup: ParentSetup   # its release fd an index too
    # The seccomp BPF (~8 KiB) goes once per profile: later requests name it by digest.
    seccomp_key: bytes = b""


_FD_FIELDS = ("stdin", "stdout", "stderr", "go", "error", "console")


def _pack(plan: ChildPlan, fds: ChildFds, namespaces: Namespace, cgroup_fd: int,
          pid_ns_fd: int, setup: ParentSetup, known_bpf: set[bytes]) -> tuple[bytes, list[int]]:
    """The request and its fds; known_bpf: digests of the BPF programs the spawner has."""
    sent: list[int] = []
    key = b""
    if plan.seccomp_bpf:
        import hashlib

        key = hashlib.blake2b(plan.seccomp_bpf, digest_size=16).digest()
        if key in known_bpf:
            plan = dataclasses.replace(plan, seccomp_bpf=None)
        else:
            known_bpf.add(key)

    def index(fd: int) -> int:
        if fd < 0:
            return -1
        sent.append(fd)
        return len(sent) - 1

    fields = {name: index(getattr(fds, name)) for name in _FD_FIELDS}
    join = tuple((index(fd), ns) for fd, ns in fds.join)
    req = SpawnRequest(plan, dataclasses.replace(fds, join=join, **fields), int(namespaces),
                       index(cgroup_fd), index(pid_ns_fd),
                       dataclasses.replace(setup, release=index(setup.release)), key)
    return pickle.dumps(req, protocol=pickle.HIGHEST_PROTOCOL), sent


def _unpack(req: SpawnRequest, got: list[int]) -> tuple[ChildFds, int, int, ParentSetup]:
    def fd(i: int) -> int:
        return got[i] if i >= 0 else -1

    fields = {name: fd(getattr(req.fds, name)) for name in _FD_FIELDS}
    join = tuple((fd(i), ns) for i, ns in req.fds.join)
    return (dataclasses.replace(req.fds, join=join, **fields), fd(req.cgroup), fd(req.pid_ns),
            dataclasses.replace(req.setup, release=fd(req.setup.release)))


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
        self._known_bpf: set[bytes] = set()

    def clone(self, plan: ChildPlan, fds: ChildFds, namespaces: Namespace, cgroup_fd: int,
              pid_ns_fd: int, setup: ParentSetup) -> tuple[int, int]:
        with self._lock:
            payload, sent = _pack(plan, fds, namespaces, cgroup_fd, pid_ns_fd, setup,
                                  self._known_bpf)
            try:
                _send(self.sock, payload, sent)
                got = _recv(self.sock)
            except OSError as e:
                raise SpawnerError(e.errno, f"spawner: {e.strerror or e}") from e
        if got is None:
            raise SpawnerError(f"spawner (pid {self.proc.pid}) exited "
                               f"({self.proc.poll()})")
        body, pidfds = got
        answer = pickle.loads(body)
        if answer[0] == "error":
            for fd in pidfds:
                os.close(fd)
            raise OSError(int(answer[1]), str(answer[2]))
        if len(pidfds) != 1:
            raise SpawnerError("spawner: no pidfd with the answer")
        if answer[0] == "setup-failed":
            raise SetupFailed(int(answer[3]), pidfds[0], int(answer[1]), str(answer[2]))
        return int(answer[1]), pidfds[0]

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


def serve(sock: socket.socket, sys: Sys) -> None:
    """The spawner's loop: clone per request (CLONE_PARENT), hand back the pidfd."""
    cloner = InProcessCloner(sys, parent=True, signals=init.changed_signals())
    bpf: dict[bytes, bytes] = {}
    while True:
        got = _recv(sock)
        if got is None:
            return
        body, fds = got
        pidfd = -1
        try:
            req: SpawnRequest = pickle.loads(body)
            plan = req.plan
            if req.seccomp_key:
                if plan.seccomp_bpf:
                    bpf[req.seccomp_key] = plan.seccomp_bpf
                else:
                    plan = dataclasses.replace(plan, seccomp_bpf=bpf[req.seccomp_key])
            child_fds, cgroup_fd, pid_ns_fd, setup = _unpack(req, fds)
            pid, pidfd = cloner.clone(plan, child_fds, Namespace(req.namespaces),
                                      cgroup_fd, pid_ns_fd, setup)
            answer: tuple[object, ...] = ("ok", pid)
        except SetupFailed as e:
            pidfd = e.pidfd   # berthd kills and reaps it (its child), and undoes mounts
            answer = ("setup-failed", e.errno or 0, e.strerror or str(e), e.pid)
        except OSError as e:
            answer = ("error", e.errno or 0, str(e))
        except Exception as e:  # a bad request must not end the spawner
            answer = ("error", 0, f"spawner: {type(e).__name__}: {e}")
        finally:
            for fd in fds:
                os.close(fd)
        try:
            _send(sock, pickle.dumps(answer), [pidfd] if pidfd >= 0 else [])
        finally:
            if pidfd >= 0:
                os.close(pidfd)


def main(argv: list[str]) -> int:
    """argv: the socket's fd, berthd's pid."""
    libc_mod.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != int(argv[1]):   # berthd died before the line above
        return 0
    # Ctrl-C in berthd's terminal goes to the whole process group: berthd decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from runtime.sys.libc import LibcSys

    libc_mod.last_cap()   # cached here once, inherited by every child
    # Everything allocated so far lives as long as the spawner: out of the collector's
    # sight, so that no collection writes to (and, after a clone, copies) those pages.
    gc.freeze()
    with socket.socket(fileno=int(argv[0])) as sock:
        serve(sock, LibcSys())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(pysys.argv[1:]))
