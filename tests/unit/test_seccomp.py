"""Docker's default seccomp profile: compiled, loaded in a child, and deciding every
syscall as libseccomp's own program for the same rules does."""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from typing import Any

import pytest

from runtime import seccomp
from runtime.container import caps
from runtime.seccomp import default_profile_bpf
from runtime.sys import Namespace
from runtime.sys.libc import LibcSys, load_seccomp_bpf, set_no_new_privs


def run_in_filtered_child(bpf: bytes, fn_name: str) -> int:
    """Exit status of a child that loads bpf then tries one syscall: 0 ok, 1 EPERM, 2 ENOSYS."""
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            set_no_new_privs()
            load_seccomp_bpf(bpf)
            try:
                if fn_name == "unshare":
                    # A new user namespace needs no privilege: only the filter can refuse.
                    LibcSys().unshare(Namespace.USER)
                elif fn_name == "getpid":
                    os.getpid()
                elif fn_name == "fork":
                    p = os.fork()
                    if p == 0:
                        os._exit(0)
                    os.waitpid(p, 0)
                code = 0
            except PermissionError:
                code = 1
            except OSError as e:
                code = 2 if e.errno == 38 else 4
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_profile_compiles_to_bpf_and_is_cached() -> None:
    bpf = default_profile_bpf(caps.resolve())
    assert len(bpf) % 8 == 0
    assert default_profile_bpf(caps.resolve()) is bpf


# --- the same decisions as libseccomp's program ---------------------------------------


Program = list[tuple[int, int, int, int]]


def decode(program: bytes) -> Program:
    return [struct.unpack_from("<HBBI", program, i) for i in range(0, len(program), 8)]


def run_bpf(insns: Program, nr: int, arch: int, arg0: int = 0) -> int:
    """What a classic-BPF seccomp program returns for one call (an interpreter of the
    instructions libseccomp and runtime/seccomp emit; any other fails the test)."""
    data = struct.pack("<IIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    pc = acc = 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:      # ld [k]
            acc = struct.unpack_from("<I", data, k)[0]
        elif code == 0x06:    # ret k
            return k
        elif code == 0x05:    # ja k
            pc += k
        elif code in (0x15, 0x25, 0x35, 0x45):   # jeq, jgt, jge, jset k
            taken = {0x15: acc == k, 0x25: acc > k, 0x35: acc >= k,
                     0x45: bool(acc & k)}[code]
            pc += jt if taken else jf
        elif code == 0x54:    # and k
            acc &= k
        else:
            raise AssertionError(f"instruction {code:#x} at {pc - 1}")


def libseccomp_program(profile: seccomp.Profile, arches: tuple[seccomp.Arch, ...]) -> bytes:
    """The profile compiled by libseccomp itself (its binary tree: quicker to interpret)."""
    sc: Any = seccomp._binding()
    f = sc.SyscallFilter(defaction=sc.ERRNO(profile.default_errno))
    f.set_attr(sc.Attr.CTL_OPTIMIZE, 2)
    f.remove_arch(sc.Arch.NATIVE)
    for a in arches:
        f.add_arch(getattr(sc.Arch, a.name))
    for name in sorted(profile.allow):
        # not a syscall on these architectures: libseccomp refuses it
        with contextlib.suppress(ValueError, RuntimeError, OSError):
            f.add_rule(sc.ALLOW, name)
    for name, mask in profile.allow_if_clear:
        f.add_rule(sc.ALLOW, name, sc.Arg(0, sc.MASKED_EQ, mask, 0))
    for name, err in profile.errno:
        f.add_rule(sc.ERRNO(err), name)
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        return out.read()


CLONE = {56, 120, seccomp.X32_SYSCALL_BIT | 56}   # clone on x86_64, i386, x32
CLONE_FLAGS = (0, 0x00020000, 0x10000000, 0x01200011, 0x7E020000, 0xFFFFFFFF_00000000)
AARCH64 = 0xC00000B7


@pytest.mark.parametrize("arches", [
    (seccomp.X86_64, seccomp.X86, seccomp.X32),
    (seccomp.X86_64, seccomp.X86),
], ids=["x86_64+i386+x32", "x86_64+i386"])
@pytest.mark.parametrize("cap_add", [(), ("SYS_ADMIN",), ("SYS_PTRACE", "SYS_TIME")],
                         ids=["default", "sys_admin", "ptrace+time"])
def test_every_syscall_is_decided_as_libseccomp_decides_it(
        arches: tuple[seccomp.Arch, ...], cap_add: tuple[str, ...]) -> None:
    profile = seccomp.default_profile(caps.resolve(cap_add=list(cap_add)))
    program = seccomp.compile_profile(profile, arches)
    reference = libseccomp_program(profile, arches)
    assert len(program) < len(reference) // 3   # what the compact form is for
    ours, theirs = decode(program), decode(reference)
    numbers = [*range(1100), *(seccomp.X32_SYSCALL_BIT | n for n in range(1100)),
               0x3FFFFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
    differ = []
    for arch in (seccomp.X86_64.audit, seccomp.X86.audit, AARCH64, 0):
        for nr in numbers:
            for arg0 in CLONE_FLAGS if nr in CLONE else (0,):
                got, want = run_bpf(ours, nr, arch, arg0), run_bpf(theirs, nr, arch, arg0)
                if got != want:
                    differ.append(f"arch {arch:#x} nr {nr} arg0 {arg0:#x}: "
                                  f"{got:#x}, libseccomp {want:#x}")
    assert not differ, "\n".join(differ[:20])
    # The interpreter itself: a few decisions known from the kernel's tables.
    allow, eperm = seccomp.RET_ALLOW, seccomp.RET_ERRNO | 1
    assert run_bpf(ours, 0, seccomp.X86_64.audit) == allow            # read
    assert run_bpf(ours, 359, seccomp.X86.audit) == allow             # i386 socket
    assert run_bpf(ours, 56, seccomp.X86_64.audit, 0x10000000) == (   # clone(NEWUSER)
        allow if cap_add == ("SYS_ADMIN",) else eperm)
    assert run_bpf(ours, 0, AARCH64) == seccomp.RET_KILL_THREAD        # foreign arch


def test_filter_blocks_unshare_without_sys_admin_and_allows_the_rest() -> None:
    bpf = default_profile_bpf(caps.resolve())
    assert run_in_filtered_child(bpf, "getpid") == 0
    assert run_in_filtered_child(bpf, "fork") == 0
    assert run_in_filtered_child(bpf, "unshare") == 1


def test_sys_admin_opens_the_gated_calls() -> None:
    bpf = default_profile_bpf(caps.resolve(cap_add=["SYS_ADMIN"]))
    assert run_in_filtered_child(bpf, "unshare") == 0
