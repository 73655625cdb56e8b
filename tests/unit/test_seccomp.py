"""Docker's default seccomp profile, compiled with libseccomp and loaded in a child."""

from __future__ import annotations

import os

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
    assert len(bpf) % 8 == 0 and len(bpf) > 8 * 100
    assert default_profile_bpf(caps.resolve()) is bpf


def test_filter_blocks_unshare_without_sys_admin_and_allows_the_rest() -> None:
    bpf = default_profile_bpf(caps.resolve())
    assert run_in_filtered_child(bpf, "getpid") == 0
    assert run_in_filtered_child(bpf, "fork") == 0
    assert run_in_filtered_child(bpf, "unshare") == 1


def test_sys_admin_opens_the_gated_calls() -> None:
    bpf = default_profile_bpf(caps.resolve(cap_add=["SYS_ADMIN"]))
    assert run_in_filtered_child(bpf, "unshare") == 0
