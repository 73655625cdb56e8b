"""cgroup v2: one cgroup per container under a configurable root.

`Cgroup` does the generic part (create, move a pid in, cgroup.kill,
cgroup.freeze, procs, remove); each controller has its own module (memory,
cpu, pids, io) applying its limits and reading its stats from a cgroup path,
so the unit tests point them at a temporary directory.

A controller that the root does not offer (the hybrid hierarchy of the
development machines has an empty v2 mount) is reported in `missing` and
in a warning; its limits are not applied, and process tracking still works.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from runtime.cgroups import cpu, io, memory, pids
from runtime.cgroups.files import read_int, read_kv

log = logging.getLogger("berth.cgroups")

CONTROLLERS = ("memory", "cpu", "pids", "io")


@dataclass(frozen=True)
class Resources:
    memory: int | None = None          # bytes, memory.max
    memory_swap: int | None = None     # bytes of memory+swap (Docker), -1 unlimited
    nano_cpus: int | None = None       # --cpus * 1e9, cpu.max
    cpu_shares: int | None = None      # Docker's 2..262144, mapped to cpu.weight
    pids_limit: int | None = None      # pids.max, <= 0 unlimited
    io_weight: int | None = None       # Docker's blkio weight 10..1000, mapped to io.weight

    def wanted(self) -> set[str]:
        want: set[str] = set()
        if self.memory is not None or self.memory_swap is not None:
            want.add("memory")
        if self.nano_cpus is not None or self.cpu_shares is not None:
            want.add("cpu")
        if self.pids_limit is not None:
            want.add("pids")
        if self.io_weight is not None:
            want.add("io")
        return want


@dataclass(frozen=True)
class Stats:
    memory_current: int
    memory_max: int | None
    memory_stat: dict[str, int]
    oom_kills: int
    cpu_usage_usec: int
    cpu_user_usec: int
    cpu_system_usec: int
    pids_current: int
    pids_max: int | None
    io_read_bytes: int
    io_write_bytes: int


def default_root() -> Path:
    """<unified mount>/berth: /sys/fs/cgroup on a unified host, .../unified on a hybrid one."""
    base = Path("/sys/fs/cgroup")
    if not (base / "cgroup.controllers").exists() and (base / "unified").is_dir():
        base = base / "unified"
    return base / "berth"


class Hierarchy:
    """The berth root cgroup: which controllers it can hand to containers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.available: frozenset[str] = frozenset()
        self.warnings: tuple[str, ...] = ()

    def setup(self) -> None:
        """Create the root and enable what controllers the parents offer."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._enable_down_to_root()
        offered = set(_read_words(self.root / "cgroup.controllers"))
        self.available = frozenset(c for c in CONTROLLERS if c in offered)
        missing = [c for c in CONTROLLERS if c not in offered]
        if missing:
            msg = (f"cgroup controllers {', '.join(missing)} are not available under "
                   f"{self.root} (on a hybrid hierarchy they are bound to cgroup v1): "
                   f"their limits are not enforced; process tracking, kill and freeze work")
            log.warning("%s", msg)
            self.warnings = (msg,)

    def _enable_down_to_root(self) -> None:
        # Each ancestor must list the controller in cgroup.subtree_control for
        # its child to get it; the berth root itself enables it for containers.
        chain = [self.root, *self.root.parents]
        mounted = [p for p in chain if (p / "cgroup.controllers").exists()]
        for cg in reversed(mounted):
            offered = _read_words(cg / "cgroup.controllers")
            want = [f"+{c}" for c in CONTROLLERS if c in offered]
            if not want:
                continue
            try:
                (cg / "cgroup.subtree_control").write_text(" ".join(want))
            except OSError as e:
                log.debug("enable %s in %s: %s", want, cg, e)

    def container(self, container_id: str) -> Cgroup:
        return Cgroup(self.root / container_id, self)


def _read_words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []


class Cgroup:
    def __init__(self, path: Path, hierarchy: Hierarchy) -> None:
        self.path = path
        self.hierarchy = hierarchy

    def create(self, res: Resources) -> list[str]:
        """mkdir and apply limits; returns warnings for limits that cannot be enforced."""
        self.path.mkdir(exist_ok=True)
        warnings = []
        avail = self.hierarchy.available
        for name in sorted(res.wanted()):
            if name not in avail:
                warnings.append(f"{name} limit not applied: the {name} cgroup controller is "
                                f"not available under {self.hierarchy.root}")
        if "memory" in avail:
            memory.apply(self.path, res.memory, res.memory_swap)
        if "cpu" in avail:
            cpu.apply(self.path, res.nano_cpus, res.cpu_shares)
        if "pids" in avail:
            pids.apply(self.path, res.pids_limit)
        if "io" in avail:
            io.apply(self.path, res.io_weight)
        return warnings

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def procs(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def exists(self) -> bool:
        return self.path.is_dir()

    def kill(self) -> None:
        """SIGKILL every process in the cgroup (cgroup.kill, Linux 5.14)."""
        with contextlib.suppress(FileNotFoundError):
            (self.path / "cgroup.kill").write_text("1")

    def freeze(self, frozen: bool, timeout: float = 5.0) -> None:
        (self.path / "cgroup.freeze").write_text("1" if frozen else "0")
        deadline = time.monotonic() + timeout
        want = 1 if frozen else 0
        while self.events().get("frozen", want) != want:
            if time.monotonic() > deadline:
                raise TimeoutError(f"cgroup {self.path}: not {'frozen' if frozen else 'thawed'} "
                                   f"after {timeout}s")
            time.sleep(0.002)

    def frozen(self) -> bool:
        return read_int(self.path / "cgroup.freeze", 0) == 1

    def events(self) -> dict[str, int]:
        return read_kv(self.path / "cgroup.events")

    def oom_kills(self) -> int:
        return memory.oom_kills(self.path)

    def stats(self) -> Stats:
        mem = memory.stats(self.path)
        c = cpu.stats(self.path)
        p = pids.stats(self.path)
        i = io.stats(self.path)
        pids_current = p[0] if p[0] is not None else len(self.procs())
        return Stats(memory_current=mem.current, memory_max=mem.max, memory_stat=mem.stat,
                     oom_kills=mem.oom_kills, cpu_usage_usec=c.get("usage_usec", 0),
                     cpu_user_usec=c.get("user_usec", 0), cpu_system_usec=c.get("system_usec", 0),
                     pids_current=pids_current, pids_max=p[1], io_read_bytes=i[0],
                     io_write_bytes=i[1])

    def try_remove(self) -> bool:
        """rmdir now: True if gone (or never there), False while processes remain."""
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            return True
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise OSError(e.errno, f"remove cgroup {self.path}: {e.strerror}") from e
            return False
        return True

    def remove(self, timeout: float = 5.0) -> None:
        """Kill what is left and rmdir; ENOENT means already done."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise OSError(e.errno, f"remove cgroup {self.path}: {e.strerror}") from e
                self.kill()
                time.sleep(0.005)
