"""The spawner's wire format: fds travel by SCM_RIGHTS and come back in the right fields."""

from __future__ import annotations

import os
import pickle
import socket

from runtime.container.init import ChildFds, ChildPlan
from runtime.container.spawner import ParentSetup, _pack, _recv, _send, _unpack
from runtime.sys import Namespace


def plan(bpf: bytes | None) -> ChildPlan:
    return ChildPlan(steps=(), args=("true",), env=("PATH=/bin",), user="", working_dir="/",
                     hostname="h", caps=(0, 1), seccomp_bpf=bpf, userns=True,
                     unshare=Namespace.MOUNT, tty=False)


def test_request_fds_arrive_as_new_fds_in_the_same_roles_and_close_on_exec() -> None:
    pipes = [os.pipe() for _ in range(4)]
    fds = ChildFds(stdin=pipes[0][0], stdout=pipes[1][1], stderr=pipes[1][1], go=pipes[2][0],
                   error=pipes[3][1], join=((pipes[2][1], Namespace.USER),))
    known: set[bytes] = set()
    setup = ParentSetup(id_map="0 100000 65536\n", release=pipes[3][0])
    payload, sent = _pack(plan(b"\x06" * 8), fds, Namespace.PID, -1, pipes[0][1], setup, known)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _send(a, payload, sent)
        got = _recv(b)
        assert got is not None
        body, received = got
        req = pickle.loads(body)
        child_fds, cgroup_fd, pid_ns_fd, got_setup = _unpack(req, received)
        assert cgroup_fd == -1 and child_fds.console == -1
        # Each role got a received fd that is the same pipe end as the one sent.
        for field in ("stdin", "stdout", "stderr", "go", "error"):
            mine, theirs = getattr(fds, field), getattr(child_fds, field)
            assert theirs != mine and os.fstat(theirs).st_ino == os.fstat(mine).st_ino
        assert os.fstat(pid_ns_fd).st_ino == os.fstat(pipes[0][1]).st_ino
        assert child_fds.join[0][1] is Namespace.USER
        assert got_setup.id_map == setup.id_map
        assert os.fstat(got_setup.release).st_ino == os.fstat(pipes[3][0]).st_ino
        # The error pipe must close at the container's exec: that EOF means "it ran".
        assert not any(os.get_inheritable(fd) for fd in received)
        assert req.plan.seccomp_bpf == b"\x06" * 8
        for fd in received:
            os.close(fd)
    finally:
        a.close()
        b.close()
        for r, w in pipes:
            os.close(r)
            os.close(w)


def test_the_seccomp_program_is_sent_once_then_named_by_digest() -> None:
    fds = ChildFds(stdin=-1, stdout=-1, stderr=-1, go=-1, error=-1)
    known: set[bytes] = set()
    first = pickle.loads(_pack(plan(b"\x06" * 4000), fds, Namespace.NONE, -1, -1, ParentSetup(),
                                 known)[0])
    second = pickle.loads(_pack(plan(b"\x06" * 4000), fds, Namespace.NONE, -1, -1, ParentSetup(),
                                 known)[0])
    other = pickle.loads(_pack(plan(b"\x07" * 4000), fds, Namespace.NONE, -1, -1, ParentSetup(),
                                 known)[0])
    assert first.plan.seccomp_bpf == b"\x06" * 4000
    assert second.plan.seccomp_bpf is None and second.seccomp_key == first.seccomp_key
    assert other.plan.seccomp_bpf == b"\x07" * 4000 and other.seccomp_key != first.seccomp_key


def test_eof_is_none() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.close()
    try:
        assert _recv(b) is None
    finally:
        b.close()
