"""Docker's default seccomp profile, compiled to BPF once with libseccomp.

Uses libseccomp's own Python binding (`import seccomp`, Debian's
python3-seccomp in the image) or, where that is absent (the development
host's venv), PyPI's `pyseccomp`, a ctypes binding with the same API. The
daemon compiles each (profile, capabilities) combination once and caches
the BPF; the container's child only loads the bytes with prctl (runtime/sys),
so a start does not pay for compiling ~350 rules.
"""

from __future__ import annotations

import errno
import functools
import logging
import tempfile
from types import ModuleType
from typing import Any

log = logging.getLogger("berth.seccomp")

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


@functools.lru_cache(maxsize=32)
def default_profile_bpf(caps: tuple[int, ...]) -> bytes:
    """Docker's default profile for a container with these capabilities, as BPF."""
    sc: Any = _binding()
    f = sc.SyscallFilter(defaction=sc.ERRNO(errno.EPERM))
    # As moby: the compat ABIs of the native architecture get the same rules.
    import platform

    for arch in {"x86_64": ("X86", "X32"), "aarch64": ("ARM",)}.get(platform.machine(), ()):
        try:
            f.add_arch(getattr(sc.Arch, arch))
        except (ValueError, RuntimeError, OSError, AttributeError):
            log.debug("seccomp: architecture %s not supported by libseccomp here", arch)
    allowed = set(DEFAULT_ALLOW)
    for cap, calls in CAP_GATED.items():
        if cap in caps:
            allowed.update(calls)
    skipped = []
    for name in sorted(allowed):
        if name == "clone" and 21 not in caps:
            continue  # added below with its flag check
        try:
            f.add_rule(sc.ALLOW, name)
        except (ValueError, RuntimeError, OSError):
            skipped.append(name)  # not a syscall on this architecture
    if 21 not in caps:
        # moby: clone without CLONE_NEW* flags only (0x7E020000 = all namespace flags).
        f.add_rule(sc.ALLOW, "clone", sc.Arg(0, sc.MASKED_EQ, 0x7E020000, 0))
        for name in ENOSYS_UNLESS_SYS_ADMIN:
            f.add_rule(sc.ERRNO(errno.ENOSYS), name)
    log.debug("seccomp: %d syscalls not on this architecture", len(skipped))
    # Both bindings write to a real file descriptor.
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        return out.read()
