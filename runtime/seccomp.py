"""Docker's default seccomp profile, compiled to a compact BPF program once per
capability set.

libseccomp (its own Python binding, `import seccomp`, Debian's python3-seccomp in
the image; or, where that is absent (the development host's venv), PyPI's
`pyseccomp`, a ctypes binding with the same API) gives each syscall's number on
each architecture. The program itself is compiled here (`compile_profile`): the
allowed numbers of each architecture as ranges (298 allowed x86_64 syscalls are 31
ranges), ~300 instructions where libseccomp emits 968. What the kernel does with
a filter at each container's start is linear in its size and worse than linear in
its longest path (it runs the filter for every syscall number to build its cache
of always-allowed calls): measured here, libseccomp's program took 0.70-0.85 ms to
load and 15 KiB of vmalloc per container. The decisions are libseccomp's own:
tests/unit/test_seccomp.py runs both programs in a BPF interpreter for every
syscall number of every architecture and checks they agree. The daemon compiles
each capability set once and caches the program; the container's child only loads
the bytes with prctl (runtime/sys).
"""

from __future__ import annotations

import errno as errno_mod
import functools
import struct
from dataclasses import dataclass
from types import ModuleType
from typing import Any

# moby profiles/seccomp/default.json: syscalls allowed unconditionally.
DEFAULT_ALLOW: tuple[str, ...] = (
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "cachestat",
    "capget", "capset", "chdir", "chmod", "chown", "chown32", "clock_adjtime",
    "clock_adjtime64", "clock_getres", "clock_getres_time64", "clock_gettime",
    "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64", "close", "close_range",
    "connect", "copy_file_range", "creat", "dup", "dup2", "dup3", "epoll_create",
    "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2", "epoll_wait",
    "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat", "exit", "exit_group",
    "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate", "fanotify_mark",
    "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat", "fcntl",
    "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr",
    "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate",
    "ftruncate64", "futex", "futex_requeue", "futex_time64", "futex_wait", "futex_waitv",
    "futex_wake", "futimesat", "getcpu", "getcwd", "getdents", "getdents64", "getegid",
    "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32",
    "getitimer", "getpeername", "getpgid", "getpgrp", "getpid", "getppid", "getpriority",
    "getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit",
    "get_robust_list", "getrusage", "getsid", "getsockname", "getsockopt", "get_thread_area",
    "gettid", "gettimeofday", "getuid", "getuid32", "getxattr", "inotify_add_watch",
    "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel", "ioctl", "io_destroy",
    "io_getevents", "io_pgetevents", "io_pgetevents_time64", "ioprio_get", "ioprio_set",
    "io_setup", "io_submit", "ipc", "kill", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self", "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen",
    "listxattr", "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat",
    "lstat64", "madvise", "map_shadow_stack", "membarrier", "memfd_create", "memfd_secret",
    "mincore", "mkdir", "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap",
    "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap",
    "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap",
    "name_to_handle_at", "nanosleep", "newfstatat", "_newselect", "open", "openat", "openat2",
    "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free",
    "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv", "preadv2",
    "prlimit64", "process_mrelease", "pselect6", "pselect6_time64", "pwrite64", "pwritev",
    "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "recv", "recvfrom",
    "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr", "rename",
    "renameat", "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction",
    "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend",
    "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity",
    "sched_getattr", "sched_getparam", "sched_get_priority_max", "sched_get_priority_min",
    "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield",
    "seccomp", "select", "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "send",
    "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto", "setfsgid", "setfsgid32",
    "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32", "setitimer",
    "setpgid", "setpriority", "setregid", "setregid32", "setresgid", "setresgid32", "setresuid",
    "setresuid32", "setreuid", "setreuid32", "setrlimit", "set_robust_list", "setsid",
    "setsockopt", "set_thread_area", "set_tid_address", "setuid", "setuid32", "setxattr",
    "shmat", "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4",
    "sigprocmask", "sigreturn", "socketcall", "socketpair", "splice", "stat", "stat64",
    "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync", "sync_file_range",
    "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create", "timer_delete",
    "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime",
    "timer_settime64", "timerfd_create", "timerfd_gettime", "timerfd_gettime64",
    "timerfd_settime", "timerfd_settime64", "times", "tkill", "truncate", "truncate64",
    "ugetrlimit", "umask", "uname", "unlink", "unlinkat", "utime", "utimensat",
    "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4", "waitid", "waitpid", "write",
    "writev", "arch_prctl", "modify_ldt", "socket", "personality", "clone",
)
# Allowed only with the capability named (moby's "includes": {"caps": [...]}).
CAP_GATED: dict[int, tuple[str, ...]] = {
    21: ("bpf", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
         "lookup_dcookie", "mount", "mount_setattr", "move_mount", "open_tree", "perf_event_open",
         "quotactl", "quotactl_fd", "setdomainname", "sethostname", "setns", "syslog", "umount",
         "umount2", "unshare"),                                  # SYS_ADMIN
    18: ("chroot",),                                             # SYS_CHROOT
    16: ("delete_module", "init_module", "finit_module"),        # SYS_MODULE
    20: ("acct",),                                               # SYS_PACCT
    19: ("kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev",
         "ptrace"),                                              # SYS_PTRACE
    17: ("iopl", "ioperm"),                                      # SYS_RAWIO
    25: ("settimeofday", "stime", "clock_settime", "clock_settime64"),  # SYS_TIME
    26: ("vhangup",),                                            # SYS_TTY_CONFIG
    23: ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"),  # SYS_NICE
    35: ("alarm",),                                              # WAKE_ALARM (already allowed)
}
# clone3's flags live in a struct seccomp cannot inspect: make glibc fall back to clone.
ENOSYS_UNLESS_SYS_ADMIN = ("clone3",)


def _binding() -> ModuleType:
    import importlib

    try:
        return importlib.import_module("seccomp")
    except ImportError:
        return importlib.import_module("pyseccomp")


@dataclass(frozen=True)
class Profile:
    """A seccomp profile by syscall name: what is allowed, and how the rest fails."""

    allow: frozenset[str]
    # (name, mask): allowed only when its first argument has none of the mask's bits
    allow_if_clear: tuple[tuple[str, int], ...] = ()
    errno: tuple[tuple[str, int], ...] = ()   # (name, errno) instead of EPERM
    default_errno: int = errno_mod.EPERM


def default_profile(caps: tuple[int, ...]) -> Profile:
    """moby's default profile for a container with these capabilities."""
    allowed = set(DEFAULT_ALLOW)
    for cap, calls in CAP_GATED.items():
        if cap in caps:
            allowed.update(calls)
    if 21 in caps:   # CAP_SYS_ADMIN: clone and clone3 unrestricted
        return Profile(frozenset(allowed))
    allowed.discard("clone")
    # moby: clone without CLONE_NEW* flags only (0x7E020000 = all namespace flags).
    return Profile(frozenset(allowed), allow_if_clear=(("clone", 0x7E020000),),
                   errno=tuple((name, errno_mod.ENOSYS) for name in ENOSYS_UNLESS_SYS_ADMIN))


@functools.lru_cache(maxsize=32)
def default_profile_bpf(caps: tuple[int, ...]) -> bytes:
    """Docker's default profile for a container with these capabilities, as BPF."""
    return compile_profile(default_profile(caps))


# --- the compiler ---------------------------------------------------------------------

# Classic BPF as seccomp takes it (linux/filter.h, linux/seccomp.h).
_LD_ABS, _JA, _JEQ, _JGT, _JGE, _JSET, _RET = 0x20, 0x05, 0x15, 0x25, 0x35, 0x45, 0x06
RET_KILL_THREAD, RET_ERRNO, RET_ALLOW = 0x00000000, 0x00050000, 0x7FFF0000
# struct seccomp_data: nr, arch, instruction_pointer, args[6] (little-endian hosts)
NR_OFFSET, ARCH_OFFSET, ARG0_OFFSET = 0, 4, 16
X32_SYSCALL_BIT = 0x40000000


@dataclass(frozen=True)
class Arch:
    name: str      # libseccomp's Arch attribute
    audit: int     # AUDIT_ARCH_* the kernel reports in seccomp_data.arch
    x32: bool = False   # x86_64's x32 ABI: same audit arch, numbers with X32_SYSCALL_BIT


X86_64, X86, X32 = Arch("X86_64", 0xC000003E), Arch("X86", 0x40000003), \
    Arch("X32", 0xC000003E, x32=True)
AARCH64, ARM = Arch("AARCH64", 0xC00000B7), Arch("ARM", 0x40000028)
# As moby: the native architecture's compat ABIs get the same rules.
HOST_ARCHES = {"x86_64": (X86_64, X86, X32), "aarch64": (AARCH64, ARM)}


def host_arches() -> tuple[Arch, ...]:
    import platform

    machine = platform.machine()
    if machine not in HOST_ARCHES:
        raise RuntimeError(f"seccomp: no syscall table for {machine}")
    return HOST_ARCHES[machine]


class _Asm:
    """Instructions with symbolic jump targets (None: the next instruction)."""

    def __init__(self) -> None:
        self.code: list[tuple[int, str | None, str | None, int | str]] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def op(self, code: int, k: int | str = 0, jt: str | None = None,
           jf: str | None = None) -> None:
        self.code.append((code, jt, jf, k))

    def far(self, code: int, k: int, target: str) -> None:
        """If the test holds, go to `target` however far (a conditional jump reaches 255
        instructions; `ja` any distance)."""
        self.op(code, k, jf="+2")   # false: skip the ja
        self.op(_JA, target)

    def assemble(self) -> bytes:
        out = bytearray()
        for at, (code, jt, jf, k) in enumerate(self.code):
            if code == _JA:
                assert isinstance(k, str)
                k = self._offset(at, k, 0xFFFFFFFF)
            assert isinstance(k, int)
            out += struct.pack("<HBBI", code, self._offset(at, jt), self._offset(at, jf), k)
        if len(self.code) > 4096:   # BPF_MAXINSNS
            raise ValueError(f"seccomp: {len(self.code)} instructions, the kernel takes 4096")
        return bytes(out)

    def _offset(self, at: int, target: str | None, limit: int = 255) -> int:
        if target is None:
            return 0
        if target.startswith("+"):
            return int(target[1:]) - 1
        off = self.labels[target] - at - 1
        if not 0 <= off <= limit:
            raise ValueError(f"seccomp: jump to {target} out of reach ({off})")
        return off


def _ranges(numbers: set[int]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for n in sorted(numbers):
        if out and out[-1][1] == n - 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return [(lo, hi) for lo, hi in out]


# Syscall numbers scanned per architecture (x86_64's and i386's end below 470; x32's
# own calls are 512-547, past the x32 bit). The scan is the first compile's main cost
# (~5 us a number); tests/unit/test_seccomp.py compares decisions up to 1,100, so a
# table that outgrows this fails there.
_TABLE_SIZE = 600


@functools.lru_cache(maxsize=8)
def _table(arch: Arch) -> dict[str, frozenset[int]]:
    """Every syscall of `arch` by name: its numbers, from libseccomp's table. Read by
    number, because by name libseccomp gives a multiplexed call its pseudo number (on
    i386, "socket" is -101: a socketcall(2) sub-call) while its own filters allow the
    direct syscall (socket, 359) too."""
    sc: Any = _binding()
    token = getattr(sc.Arch, arch.name)
    base = X32_SYSCALL_BIT if arch.x32 else 0
    got: dict[str, set[int]] = {}
    for nr in range(base, base + _TABLE_SIZE):
        try:
            name = sc.resolve_syscall(token, nr)
        except (ValueError, RuntimeError, OSError):
            continue
        got.setdefault(name.decode() if isinstance(name, bytes) else str(name), set()).add(nr)
    return {name: frozenset(nrs) for name, nrs in got.items()}


def _arch_body(asm: _Asm, tag: str, arch: Arch, profile: Profile) -> None:
    """The rules of one architecture, the syscall number in the accumulator."""
    deny, allow = f"{tag}-deny", f"{tag}-allow"
    special = {**{n: ("errno", e) for n, e in profile.errno},
               **{n: ("clear", m) for n, m in profile.allow_if_clear}}
    table = _table(arch)   # names that are not syscalls on this architecture: left out
    numbers = {name: table[name] for name in profile.allow | set(special) if name in table}
    for name in sorted(special.keys() & numbers.keys()):
        for nr in sorted(numbers[name]):
            asm.op(_JEQ, nr, jt=f"{tag}-{name}")
    allowed = {nr for name, nrs in numbers.items() if name not in special for nr in nrs}
    ranges = _ranges(allowed)
    # Ascending ranges: past each one's top, go on; else in it iff at or over its bottom.
    for i, (lo, hi) in enumerate(ranges):
        asm.label(f"{tag}-r{i}")
        asm.op(_JGT, hi, jt=f"{tag}-r{i + 1}" if i + 1 < len(ranges) else deny)
        asm.op(_JGE, lo, jt=allow, jf=deny)
    if not ranges:
        asm.op(_JA, deny)
    for name, (kind, value) in special.items():
        if name not in numbers:
            continue
        asm.label(f"{tag}-{name}")
        if kind == "errno":
            asm.op(_RET, RET_ERRNO | value)
        else:   # the low 32 bits of the first argument: the flags of clone
            asm.op(_LD_ABS, ARG0_OFFSET)
            asm.op(_JSET, value, jt=deny, jf=allow)
    asm.label(allow)
    asm.op(_RET, RET_ALLOW)
    asm.label(deny)
    asm.op(_RET, RET_ERRNO | profile.default_errno)


def compile_profile(profile: Profile, arches: tuple[Arch, ...] | None = None) -> bytes:
    """The profile as a classic-BPF seccomp program. Another architecture than those
    given kills the thread (libseccomp's default for a foreign architecture); so does an
    x32 call where the x32 ABI is not among them. tests/unit/test_seccomp.py holds the
    decisions to libseccomp's."""
    arches = host_arches() if arches is None else arches
    asm = _Asm()
    asm.op(_LD_ABS, ARCH_OFFSET)
    heads = [a for a in arches if not a.x32]
    x32 = next((a for a in arches if a.x32), None)
    for a in heads:
        asm.far(_JEQ, a.audit, a.name)
    asm.op(_RET, RET_KILL_THREAD)
    for a in heads:
        asm.label(a.name)
        asm.op(_LD_ABS, NR_OFFSET)
        if a.audit == X86_64.audit and x32 is not None:
            asm.far(_JGE, X32_SYSCALL_BIT, x32.name)
        elif a.audit == X86_64.audit:
            # An x32 call, its ABI not given: foreign; but not -1, which a tracer sets
            # to skip a call (libseccomp's exception too).
            asm.op(_JGE, X32_SYSCALL_BIT, jf="+3")
            asm.op(_JEQ, 0xFFFFFFFF, jt="+2")
            asm.op(_RET, RET_KILL_THREAD)
        _arch_body(asm, a.name, a, profile)
    if x32 is not None:
        asm.label(x32.name)
        _arch_body(asm, x32.name, x32, profile)
    return asm.assemble()
