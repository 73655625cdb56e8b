"""What a container's first process (or an exec's) is to do between clone(2) and
execve(2), as berthd decides it: ChildPlan and the fds it gets (ChildFds).

`_clone` (C, runtime/sys/_clone.c) carries it out: program.py compiles
the plan, the cloner clones, and the child makes the calls with no Python in
between. Failures are written to a CLOEXEC error pipe: EOF means the exec
succeeded; a message is the reason, and the child exits 127.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime import rootfs
from runtime.sys import Namespace


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
