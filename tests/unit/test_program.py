"""The program berthd compiles for `_clone`, read back by `_clone`'s own parser: every
field arrives as written, and what is malformed is refused before any clone."""

from __future__ import annotations

import struct

import pytest

from runtime.container.init import ChildFds, ChildPlan
from runtime.container.program import CHILD, HOST, TAG, ProgramError, compile_start
from runtime.rootfs import IdmapBind, Mkdir, Mount, Pivot, RemountReadOnly, TreeBind
from runtime.sys import MountFlag, Namespace, _clone

NAME = {v: k for k, v in TAG.items()}


def items(prog: bytes, nfds: int) -> list[tuple[str, tuple[int, ...], tuple[bytes | None, ...]]]:
    return [(NAME[tag], ints, strs) for tag, ints, strs in _clone.parse(prog, nfds)]


def test_a_start_reads_back_field_for_field() -> None:
    plan = ChildPlan(
        steps=(Mount("proc", "/r/proc", "proc", MountFlag.NOSUID | MountFlag.NODEV),
               TreeBind("/var/lib/c/hosts", "/r/etc/hosts"), Pivot("/r"),
               RemountReadOnly("/")),
        args=("sh", "-c", "echo héllo"), env=("PATH=/bin", "A=b=c"), user="app:staff",
        working_dir="/srv", hostname="web", caps=(0, 1, 40), seccomp_bpf=b"\x06\0\0\0\0\0\xff\x7f",
        userns=True, unshare=Namespace.MOUNT | Namespace.CGROUP, tty=False, domainname="corp")
    fds = ChildFds(stdin=10, stdout=11, stderr=11, go=12, error=13)
    prog, sent = compile_start(plan, fds, Namespace.USER | Namespace.PID, 20, -1,
                               "0 100000 65536\n", (Mkdir("/s/l0"), IdmapBind("/img/0", "/s/l0")),
                               14, parent=True)
    assert sent == [20, 14, 10, 11, 11, 12, 13]
    got = items(prog, len(sent))
    assert got == [
        ("CLONE", (int(Namespace.USER | Namespace.PID), 1, 0, -1), ()),
        ("IDMAP", (), (b"0 100000 65536\n",)),
        ("MKDIR", (HOST,), (b"/s/l0",)),
        ("IDMAP_BIND", (HOST,), (b"/img/0", b"/s/l0")),
        ("RELEASE", (1,), ()),
        ("STDIO", (2, 3, 4), ()),
        ("GO", (5,), ()),
        ("ERROR", (6,), ()),
        ("USERNS", (), ()),
        ("UNSHARE", (int(Namespace.MOUNT | Namespace.CGROUP),), ()),
        ("MOUNT", (CHILD, int(MountFlag.NOSUID | MountFlag.NODEV)),
         (b"proc", b"/r/proc", b"proc", None)),
        ("TREE_BIND", (CHILD,), (b"/var/lib/c/hosts", b"/r/etc/hosts")),
        ("PIVOT", (CHILD,), (b"/r",)),
        ("REMOUNT_RO", (CHILD,), (b"/",)),
        ("HOSTNAME", (), (b"web",)),
        ("DOMAINNAME", (), (b"corp",)),
        ("USER", (), (b"app:staff",)),
        ("WORKDIR", (1,), (b"/srv",)),
        ("ARG", (), (b"sh",)), ("ARG", (), (b"-c",)), ("ARG", (), ("echo héllo".encode(),)),
        ("ENV", (), (b"PATH=/bin",)), ("ENV", (), (b"A=b=c",)),
        ("CAPS", ((1 << 0) | (1 << 1) | (1 << 40),), ()),
        ("SECCOMP", (), (b"\x06\0\0\0\0\0\xff\x7f",)),
    ]


def test_an_exec_joins_namespaces_and_a_tty_sends_its_console() -> None:
    plan = ChildPlan(steps=(), args=("ps",), env=(), user="", working_dir="/", hostname=None,
                     caps=(), seccomp_bpf=None, userns=True, unshare=Namespace.NONE, tty=True,
                     make_workdir=False)
    fds = ChildFds(stdin=-1, stdout=-1, stderr=-1, go=3, error=4, console=5,
                   join=((6, Namespace.USER), (7, Namespace.MOUNT)))
    prog, sent = compile_start(plan, fds, Namespace.NONE, 8, 9, "", (), -1, parent=False)
    got = items(prog, len(sent))
    assert got[0] == ("CLONE", (0, 0, 0, 1), ())
    assert [g for g in got if g[0] in ("CONSOLE", "JOIN", "STDIO")] == [
        ("CONSOLE", (sent.index(5),), ()),
        ("JOIN", (sent.index(6), int(Namespace.USER)), ()),
        ("JOIN", (sent.index(7), int(Namespace.MOUNT)), ())]
    assert ("WORKDIR", (0,), (b"/",)) in got
    assert not [g for g in got if g[0] in ("IDMAP", "RELEASE", "SECCOMP", "HOSTNAME")]


def test_a_nul_cannot_be_expressed() -> None:
    plan = ChildPlan(steps=(), args=("a\0b",), env=(), user="", working_dir="/",
                     hostname=None, caps=(), seccomp_bpf=None, userns=False,
                     unshare=Namespace.NONE, tty=False)
    with pytest.raises(ProgramError, match="NUL byte"):
        compile_start(plan, ChildFds(-1, -1, -1, -1, -1), Namespace.NONE, -1, -1, "", (), -1,
                      parent=False)


def item(tag: int, ints: tuple[int, ...] = (), strs: tuple[bytes, ...] = ()) -> bytes:
    out = struct.pack("=4H", tag, len(ints), len(strs), 0) + struct.pack(f"={len(ints)}q", *ints)
    for s in strs:
        out += struct.pack("=I", len(s)) + s
    return out


@pytest.mark.parametrize(("prog", "nfds", "error"), [
    (item(TAG["GO"], (3,)), 2, "program: fd index 3 out of range"),
    (item(999), 0, "program: unknown item 999"),
    (item(TAG["USER"], (), (b"root",)), 0, "string not terminated"),
    (item(TAG["USER"], (), (b"root\0",))[:-2], 0, "program: truncated string"),
    (item(TAG["CAPS"], (1,))[:-1], 0, "program: truncated item"),
    (item(TAG["SECCOMP"], (), (b"\0" * 7,)), 0, "seccomp program of 7 bytes"),
    (item(TAG["ERROR"], (0,)), 1, "program: no command"),
    (item(TAG["CLONE"], (0, 0)), 0, "has 2 ints and 0 strings, not 4 and 0"),
    (item(TAG["ARG"], (), ()), 0, "has 0 ints and 0 strings, not 0 and 1"),
    (item(TAG["MOUNT"], (1, 0), (b"proc\0",)), 0, "has 2 ints and 1 strings, not 2 and 4"),
    (struct.pack("=4HI", TAG["ARG"], 0, 1, 0, 0xFFFFFFFF), 0, "string 0 is null"),
])
def test_a_malformed_program_is_refused_with_what_is_wrong(prog: bytes, nfds: int,
                                                           error: str) -> None:
    with pytest.raises(ValueError, match=error):
        _clone.parse(prog, nfds)
    status, _, pid, pidfd, message = _clone.spawn(prog, list(range(100, 100 + nfds)))
    assert (status, pid, pidfd) == (1, 0, -1) and error in message   # no child
