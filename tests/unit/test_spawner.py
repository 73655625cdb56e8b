"""The spawner's wire format and `_clone`'s answers, without root: a child that the
cloner's part fails for, a clone that fails, a request that cannot be expressed."""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import socket
from pathlib import Path

import pytest

from runtime.container.init import ChildFds, ChildPlan
from runtime.container.spawner import (
    ParentSetup,
    SetupFailed,
    _recv,
    _send,
    start_spawner,
)
from runtime.rootfs import Mkdir, TreeBind
from runtime.sys import Namespace


def plan(*args: str) -> ChildPlan:
    return ChildPlan(steps=(), args=args or ("true",), env=("PATH=/bin",), user="",
                     working_dir="/", hostname=None, caps=(), seccomp_bpf=None, userns=False,
                     unshare=Namespace.NONE, tty=False)


def ppid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError("no PPid")


def test_a_failed_setup_comes_back_with_the_child_which_is_ours_to_reap(tmp_path: Path) -> None:
    (tmp_path / "file").touch()
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    fds = ChildFds(stdin=-1, stdout=-1, stderr=-1, go=go_r, error=err_w)
    bad = ParentSetup(host_steps=(Mkdir(str(tmp_path / "file" / "sub")),), release=go_w)
    try:
        with start_spawner() as spawner, pytest.raises(SetupFailed) as failed:
            spawner.clone(plan(), fds, Namespace.NONE, -1, -1, bad)
        e = failed.value
        assert e.errno == errno.ENOTDIR
        assert e.strerror == f"mkdir {tmp_path}/file/sub: ENOTDIR (Not a directory)"
        # The child waits for "go" that never came; CLONE_PARENT made it our child.
        assert ppid(e.pid) == os.getpid()
        signal.pidfd_send_signal(e.pidfd, signal.SIGKILL)
        _, status = os.waitpid(e.pid, 0)
        assert os.WIFSIGNALED(status)
        os.close(e.pidfd)
    finally:
        for fd in (go_r, go_w, err_r, err_w):
            os.close(fd)


def test_a_failed_clone_is_an_error_with_no_child() -> None:
    r, w = os.pipe()   # not a cgroup: CLONE_INTO_CGROUP refuses it
    fds = ChildFds(stdin=-1, stdout=-1, stderr=-1, go=r, error=w)
    try:
        with start_spawner() as spawner:
            with pytest.raises(OSError) as failed:
                spawner.clone(plan(), fds, Namespace.NONE, r, -1, ParentSetup())
            assert not isinstance(failed.value, SetupFailed)
            assert failed.value.strerror.startswith("clone3 0x0: E")
            assert spawner.alive()   # a bad request does not end the spawner
            with pytest.raises(OSError, match="NUL byte"):
                spawner.clone(plan("a\0b"), fds, Namespace.NONE, -1, -1, ParentSetup())
    finally:
        os.close(r)
        os.close(w)


def test_a_file_to_move_in_that_cannot_be_opened_is_an_error_before_the_clone(
        tmp_path: Path) -> None:
    missing = tmp_path / "hosts"
    r, w = os.pipe()
    fds = ChildFds(stdin=-1, stdout=-1, stderr=-1, go=r, error=w)
    child = dataclasses.replace(plan(), steps=(TreeBind(str(missing), "/r/etc/hosts"),))
    # Root gets as far as the path; anyone else is refused a copy of a mount at all.
    name = "ENOENT" if os.geteuid() == 0 else "EPERM"
    try:
        with start_spawner() as spawner:
            with pytest.raises(OSError) as failed:
                spawner.clone(child, fds, Namespace.NONE, -1, -1, ParentSetup())
            assert not isinstance(failed.value, SetupFailed)   # no child to reap
            assert failed.value.strerror.startswith(f"open_tree {missing}: {name} (")
            assert spawner.alive()
    finally:
        os.close(r)
        os.close(w)


def test_a_message_and_its_fds_arrive_together_close_on_exec() -> None:
    r, w = os.pipe()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _send(a, b"x" * 100_000, [r, w])
        got = _recv(b)
        assert got is not None
        body, fds = got
        assert body == b"x" * 100_000
        assert [os.fstat(fd).st_ino for fd in fds] == [os.fstat(r).st_ino, os.fstat(w).st_ino]
        assert not any(os.get_inheritable(fd) for fd in fds)
        for fd in fds:
            os.close(fd)
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


def test_eof_is_none() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.close()
    try:
        assert _recv(b) is None
    finally:
        b.close()
