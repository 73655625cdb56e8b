"""ContainerManager: the engine's async API (documented in README.md beside this file).

It owns the live handles of every container (record + pidfd + log pumps)
and delegates each lifecycle verb to its own module (create, start, kill,
pause, delete, exec, adopt), as youki and crun do.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import logging
import os
import resource
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from runtime import cgroups
from runtime.cgroups.watch import MemoryEventsWatch
from runtime.container import create as create_mod
from runtime.container import delete as delete_mod
from runtime.container import exec as exec_mod
from runtime.container import kill as kill_mod
from runtime.container import pause as pause_mod
from runtime.container import start as start_mod
from runtime.container.errors import Conflict, InvalidRequest, NoSuchContainer, StartError
from runtime.container.network import NetworkProvider
from runtime.container.spawner import Cloner, InProcessCloner, SpawnerClient, start_spawner
from runtime.container.spec import CreateRequest, ExecRequest, validate_name
from runtime.container.state import State, Status, WaitCondition
from runtime.events import EventBus
from runtime.logs import LogDriver, LogEntry, LogOptions, open_driver
from runtime.oci import ResolvedImage
from runtime.store import containers as records
from runtime.store.containers import ContainerRecord
from runtime.store.db import open_db
from runtime.sys import Sys
from runtime.sys.libc import LibcSys, set_child_subreaper
from runtime.volumes import VolumeStore

log = logging.getLogger("berth.engine")


class ImageResolver(Protocol):
    def resolve(self, ref: str) -> ResolvedImage: ...


@dataclass(frozen=True)
class EngineConfig:
    root: Path                              # --data-root: records, upper dirs, logs, volumes
    exec_root: Path                         # --exec-root: FIFOs, mount points, netns files
    cgroup_root: Path | None = None         # None: <unified mount>/berth
    userns: bool = True
    subuid_base: int = 100000
    subuid_count: int = 65536
    log_driver: str = "auto"                # auto | journald | json-file
    log_max_size: int = 10 << 20
    log_max_files: int = 3
    # Clone containers from a small spawner process (CLONE_PARENT: still our children)
    # rather than from the daemon itself: see spawner.py.
    spawner: bool = True


@dataclass(frozen=True)
class WaitResult:
    status_code: int
    error: str = ""


@dataclass(frozen=True)
class TopResult:
    titles: tuple[str, ...]
    processes: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class EngineInfo:
    cgroup_root: Path
    cgroup_controllers: tuple[str, ...]
    cgroup_missing: tuple[str, ...]
    warnings: tuple[str, ...]
    log_driver: str
    userns: bool
    containers: int
    running: int
    paused: int
    stopped: int


# An attached client's queue: ("stdout"|"stderr", chunk) as the container writes it,
# then None once the run's output ended (its exit, drained) or the container is removed.
Output = asyncio.Queue[tuple[str, bytes] | None]


@dataclass(eq=False)
class Attach:
    """A live subscription to a container's output, made in any state before removal.

    `output` gets every chunk from now on (a created container's first output
    included) until None: the end of the current (or next) run. With -t the
    chunks are the pty's raw bytes (stream "stdout"); write input to
    `mgr.stdin_fd(ref)` once it runs. Unbounded: a terminal's output arrives
    whole however slowly the client reads.
    """

    container_id: str
    output: Output


@dataclass(eq=False, slots=True)
class Container:
    """The live handle: the record (a cache of state) and what watches the process.

    Slotted, and its asyncio objects are made on first use: 1,000 idle containers
    hold 1,000 of these in berthd (an asyncio.Event carries a waiter deque of ~760
    bytes; three per container were ~2.3 KiB of the daemon's memory each).
    """

    record: ContainerRecord
    log: LogDriver
    pidfd: int = -1
    pty_master: int = -1
    stdin_w: int = -1        # -i without -t: the write end of the container's stdin pipe
    pumps: list[Any] = field(default_factory=list)
    restart_task: asyncio.Task[None] | None = None
    teardown: asyncio.Task[None] | None = None   # the last run's teardown, if still going
    oom_at_start: int = 0
    oom_seen: int = 0        # memory.events oom_kill already published as `oom`
    consecutive_restarts: int = 0
    is_child: bool = True
    # The host mount namespace may hold copies of this run's rootfs mounts (unknown
    # after a daemon restart: True); the run's teardown detaches them then.
    host_mounts: bool = True
    # Detaching them right after a start (in a worker thread: each umount waits for an
    # RCU grace period, which must not hold up the event loop); the teardown awaits it.
    host_detach: asyncio.Future[None] | None = None
    listeners: set[Output] | None = None   # attached clients (fan-out), None: none yet
    # `stopped` is a plain flag until something needs the Event (a waiter); then the
    # Event holds the state. `removed`, `next_exit` and `lock` are made when first used.
    _stopped: asyncio.Event | bool = True
    _removed: asyncio.Event | None = None
    _next_exit: asyncio.Event | None = None
    _lock: asyncio.Lock | None = None

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def state(self) -> State:
        return self.record.state

    @property
    def stopped(self) -> asyncio.Event:
        """Set while the container has no process (wait on it for a stop)."""
        ev = self._stopped
        if isinstance(ev, bool):
            flag, ev = ev, asyncio.Event()
            if flag:
                ev.set()
            self._stopped = ev
        return ev

    def mark_stopped(self, stopped: bool) -> None:
        """stopped.set() / stopped.clear() without making an Event nobody waits on."""
        if isinstance(self._stopped, bool):
            self._stopped = stopped
        elif stopped:
            self._stopped.set()
        else:
            self._stopped.clear()

    @property
    def removed(self) -> asyncio.Event:
        if self._removed is None:
            self._removed = asyncio.Event()
        return self._removed

    @property
    def next_exit(self) -> asyncio.Event:
        """Set at the next exit (each exit sets the current one and forgets it)."""
        if self._next_exit is None:
            self._next_exit = asyncio.Event()
        return self._next_exit

    def signal_exit(self) -> None:
        ev, self._next_exit = self._next_exit, None
        if ev is not None:
            ev.set()

    @property
    def lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def outputs(self) -> set[Output]:
        """The attached clients' queues (made on first attach)."""
        if self.listeners is None:
            self.listeners = set()
        return self.listeners


class ContainerManager:
    def __init__(self, config: EngineConfig, images: ImageResolver, events: EventBus,
                 network: NetworkProvider | None = None, sys: Sys | None = None,
                 db: sqlite3.Connection | None = None) -> None:
        self.config = config
        self.images = images
        self.events = events
        self.network = network
        self.sys: Sys = sys or LibcSys()
        self.db = db or open_db(config.root / "berth.db")
        self.volumes = VolumeStore(config.root)
        self.hierarchy = cgroups.Hierarchy(config.cgroup_root or cgroups.default_root())
        self.oom_watch = MemoryEventsWatch(self.note_oom)
        self.containers: dict[str, Container] = {}
        self.execs: dict[str, exec_mod.ExecSession] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.cloner: Cloner = InProcessCloner()
        self._spawner = contextlib.ExitStack()
        for d in (config.root / "containers", config.exec_root / "containers",
                  config.exec_root / "netns"):
            d.mkdir(parents=True, exist_ok=True)
        self.mount_points = make_mount_points(config.root / "mount-points")
        # A container's init resolves its rootfs path as its own (mapped, unprivileged)
        # root: the exec root must be searchable, not readable, by others.
        for d in (config.exec_root, config.exec_root / "containers"):
            d.chmod(0o711)

    # --- lookup -----------------------------------------------------------

    def get(self, ref: str) -> Container:
        ref = ref.lstrip("/")
        if ref in self.containers:
            return self.containers[ref]
        for c in self.containers.values():
            if c.record.name == ref:
                return c
        matches = [c for c in self.containers.values() if ref and c.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidRequest(f"multiple IDs found with provided prefix: {ref}")
        raise NoSuchContainer(ref)

    def volume_users(self, name: str) -> builtins.list[str]:
        """Ids of containers that mount the named volume (`docker volume rm` refuses then)."""
        path = str(self.volumes.root / name / "_data")
        return [c.id for c in self.containers.values()
                if any(v.source == path for v in c.record.volumes)]

    def name_taken(self, name: str, except_id: str = "") -> bool:
        return any(c.record.name == name and c.id != except_id for c in self.containers.values())

    # --- bookkeeping used by the verb modules -------------------------------

    def open_log(self, rec: ContainerRecord) -> LogDriver:
        return open_driver(self.config.log_driver, rec.id, rec.name,
                           self.config.root / "containers" / rec.id,
                           self.config.log_max_size, self.config.log_max_files)

    def data_dir(self, container_id: str) -> Path:
        return self.config.root / "containers" / container_id

    def run_dir(self, container_id: str) -> Path:
        return self.config.exec_root / "containers" / container_id

    def netns_path(self, container_id: str) -> Path:
        return self.config.exec_root / "netns" / container_id

    def save(self, c: Container, **state_changes: Any) -> None:
        """Change the state (and/or record fields) in memory and on disk at once."""
        rec = c.record
        record_fields = {k: v for k, v in state_changes.items() if k.startswith("record_")}
        changes = {k: v for k, v in state_changes.items() if not k.startswith("record_")}
        if changes:
            rec = dataclasses.replace(rec, state=dataclasses.replace(rec.state, **changes))
        if record_fields:
            rec = dataclasses.replace(rec, **{k[7:]: v for k, v in record_fields.items()})
        records.save(self.db, rec)
        c.record = rec

    def publish(self, c: Container, action: str, **extra: str) -> None:
        attrs = {"name": c.record.name, "image": c.record.image_ref, **dict(c.record.spec.labels)}
        attrs.update(extra)
        self.events.publish("container", action, c.id, attrs)

    def note_oom(self, container_id: str) -> None:
        """Publish `oom` for each new OOM kill in the container's cgroup (as containerd
        does, the moment memory.events changes; at exit for what was not seen live)."""
        c = self.containers.get(container_id)
        if c is None:
            return
        kills = self.hierarchy.container(c.id).oom_kills()
        if kills > c.oom_seen:
            c.oom_seen = kills
            self.publish(c, "oom")

    def spawn_task(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def spawner(self) -> Cloner:
        """What clones containers: the spawner process (started here, and started again
        if it died), or this process itself without one (see spawner.py)."""
        if not self.config.spawner or not isinstance(self.sys, LibcSys):
            return self.cloner
        if isinstance(self.cloner, SpawnerClient):
            if self.cloner.alive():
                return self.cloner
            log.warning("spawner (pid %d) exited with %s; starting a new one",
                        self.cloner.proc.pid, self.cloner.proc.returncode)
            self._spawner.close()
        self.cloner = self._spawner.enter_context(start_spawner())
        return self.cloner

    # --- the API --------------------------------------------------------------

    async def adopt(self) -> None:
        """At daemon start: load records, re-adopt live containers, apply restart policies."""
        from runtime.container import adopt as adopt_mod

        with contextlib.suppress(OSError):
            set_child_subreaper()
        # Three fds per container (pidfd, two FIFO ends): lift the soft limit to the hard one.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        self.hierarchy.setup()
        self.spawner()
        await adopt_mod.adopt_all(self)

    async def create(self, req: CreateRequest) -> ContainerRecord:
        if req.name is not None:
            name = validate_name(req.name)
            if self.name_taken(name):
                other = next(c for c in self.containers.values() if c.record.name == name)
                raise Conflict(f'Conflict. The container name "/{name}" is already in use by '
                               f'container "{other.id}". You have to remove (or rename) that '
                               f'container to be able to reuse that name.')
        rec = create_mod.prepare(self, req)
        c = Container(record=rec, log=self.open_log(rec))
        self.containers[rec.id] = c
        records.save(self.db, rec)
        self.publish(c, "create")
        return rec

    async def start(self, ref: str) -> None:
        c = self.get(ref)
        try:
            async with c.lock:
                await start_mod.start(self, c)
        except StartError:
            # dockerd removes an --rm container whose start failed: `docker run --rm`
            # waits for that removal before it exits.
            if c.record.request.auto_remove:
                await delete_mod.remove(self, c, force=True, volumes=True)
            raise

    async def stop(self, ref: str, timeout: float | None = None) -> None:
        c = self.get(ref)
        await kill_mod.stop(self, c, timeout)

    async def kill(self, ref: str, signal: str | int = "SIGKILL") -> None:
        await kill_mod.kill(self, self.get(ref), signal)

    async def restart(self, ref: str, timeout: float | None = None) -> None:
        c = self.get(ref)
        if not c.state.status.can_restart():
            raise Conflict(f"cannot restart container {c.id}: it is {c.state.status}")
        if c.state.status.has_process:
            await kill_mod.stop(self, c, timeout)
        async with c.lock:
            await start_mod.start(self, c)
        self.publish(c, "restart")

    async def pause(self, ref: str) -> None:
        await pause_mod.pause(self, self.get(ref))

    async def unpause(self, ref: str) -> None:
        await pause_mod.unpause(self, self.get(ref))

    async def wait(self, ref: str,
                   condition: WaitCondition = WaitCondition.NOT_RUNNING) -> WaitResult:
        c = self.get(ref)
        if condition is WaitCondition.REMOVED:
            await c.removed.wait()
        elif condition is WaitCondition.NEXT_EXIT or c.state.status in (Status.RUNNING,
                                                                         Status.PAUSED,
                                                                         Status.RESTARTING):
            # Each exit sets the current event and installs a fresh one.
            await c.next_exit.wait()
        return WaitResult(c.state.exit_code, c.state.error)

    async def remove(self, ref: str, force: bool = False, volumes: bool = False) -> None:
        await delete_mod.remove(self, self.get(ref), force, volumes)

    async def rename(self, ref: str, new_name: str) -> None:
        c = self.get(ref)
        name = validate_name(new_name)
        if not c.state.status.can_rename():
            raise Conflict(f"cannot rename container {c.id}: it is being removed")
        if self.name_taken(name, except_id=c.id):
            raise Conflict(f'Conflict. The container name "/{name}" is already in use')
        old = c.record.name
        self.save(c, record_name=name)
        self.publish(c, "rename", oldName=f"/{old}")

    def list(self, all: bool = False,
             filters: Mapping[str, Sequence[str]] | None = None) -> list[ContainerRecord]:
        out = []
        for c in sorted(self.containers.values(), key=lambda c: -c.record.created):
            if not all and not c.state.status.has_process and not (filters or {}).get("status"):
                continue
            if filters and not _matches(c.record, filters):
                continue
            out.append(c.record)
        return out

    def inspect(self, ref: str) -> ContainerRecord:
        return self.get(ref).record

    async def top(self, ref: str, ps_args: str = "-ef") -> TopResult:
        return await pause_mod.top(self, self.get(ref), ps_args)

    def stats(self, ref: str) -> cgroups.Stats:
        c = self.get(ref)
        return self.hierarchy.container(c.id).stats()

    async def logs(self, ref: str, opts: LogOptions) -> AsyncIterator[LogEntry]:
        c = self.get(ref)
        async for entry in c.log.read(opts, lambda: c.state.status.has_process
                                      or c.state.status is Status.RESTARTING):
            yield entry

    def attach(self, ref: str) -> Attach:
        """Subscribe to the output of a container (created, running, exited...)."""
        c = self.get(ref)
        q: Output = asyncio.Queue()
        c.outputs().add(q)
        return Attach(c.id, q)

    def stdin_fd(self, ref: str) -> int | None:
        """Where a client's stdin goes: the pty master (-t) or the stdin pipe (-i); else None."""
        c = self.get(ref)
        if c.pty_master >= 0:
            return c.pty_master
        return c.stdin_w if c.stdin_w >= 0 else None

    def close_stdin(self, ref: str) -> None:
        """The client's stdin ended (-i without -t): the container reads EOF."""
        c = self.get(ref)
        if c.stdin_w >= 0:
            os.close(c.stdin_w)
            c.stdin_w = -1

    def detach(self, att: Attach) -> None:
        """Stop receiving a container's output."""
        c = self.containers.get(att.container_id)
        if c is not None and c.listeners is not None:
            c.listeners.discard(att.output)

    async def exec_create(self, ref: str, req: ExecRequest) -> str:
        return exec_mod.create(self, self.get(ref), req)

    async def exec_start(self, exec_id: str) -> exec_mod.ExecSession:
        return await exec_mod.start(self, exec_id)

    def exec_inspect(self, exec_id: str) -> exec_mod.ExecInfo:
        return exec_mod.inspect(self, exec_id)

    async def prune(self) -> builtins.list[str]:
        gone = []
        for c in list(self.containers.values()):
            if c.state.status in (Status.EXITED, Status.CREATED, Status.DEAD):
                await delete_mod.remove(self, c, force=False, volumes=False)
                gone.append(c.id)
        return gone

    def info(self) -> EngineInfo:
        states = [c.state.status for c in self.containers.values()]
        return EngineInfo(
            cgroup_root=self.hierarchy.root,
            cgroup_controllers=tuple(sorted(self.hierarchy.available)),
            cgroup_missing=tuple(c for c in cgroups.CONTROLLERS
                                 if c not in self.hierarchy.available),
            warnings=self.hierarchy.warnings, log_driver=self.open_log_kind(),
            userns=self.config.userns, containers=len(states),
            running=states.count(Status.RUNNING), paused=states.count(Status.PAUSED),
            stopped=len(states) - states.count(Status.RUNNING) - states.count(Status.PAUSED))

    def open_log_kind(self) -> str:
        from runtime.logs import journald_running

        if self.config.log_driver == "auto":
            return "journald" if journald_running() else "json-file"
        return self.config.log_driver

    async def shutdown(self) -> None:
        """Stop watching; containers keep running (their FIFOs keep their output)."""
        for c in list(self.containers.values()):
            await start_mod.settle(c)   # a run's teardown is finished, not cut short
        for task in list(self._tasks):
            task.cancel()
        for c in self.containers.values():
            if c.restart_task is not None:
                c.restart_task.cancel()
            start_mod.detach_watchers(c)
            c.log.close()
        self.oom_watch.close()
        for session in self.execs.values():
            exec_mod.detach(session)
        self._spawner.close()
        self.cloner = InProcessCloner()


# Where the engine mounts over a container's rootfs (rootfs.container_plan, start.py).
MOUNT_POINTS_DIRS = ("proc", "dev", "sys", "etc")
MOUNT_POINTS_FILES = ("etc/hosts", "etc/hostname", "etc/resolv.conf")


def make_mount_points(path: Path) -> Path:
    """A read-only lower layer shared by every container, lowest of its layers: empty
    mount points for /proc, /dev, /sys, /etc/hosts, /etc/hostname, /etc/resolv.conf.

    Where an image lacks them (busybox has no /etc/hosts) the start had to create
    them in the container's upper dir: a copy-up of /etc, on disk, per container
    (an ext4 directory block, three inodes and overlay inodes: kernel memory and
    page cache that 1,000 idle containers multiply). Docker's per-container init
    layer holds the same files; one shared layer holds them for all. An image's own
    /etc (above this layer) keeps its owner and mode; as with the init layer, none
    of this is part of a container's changes or of a committed layer.
    """
    for d in MOUNT_POINTS_DIRS:
        (path / d).mkdir(mode=0o755, parents=True, exist_ok=True)
    for f in MOUNT_POINTS_FILES:
        p = path / f
        if not p.exists():
            p.touch(mode=0o644)
    return path


def _matches(rec: ContainerRecord, filters: Mapping[str, Sequence[str]]) -> bool:
    for key, values in filters.items():
        if not values:
            continue
        if key == "name" and not any(v.lstrip("/") in rec.name for v in values):
            return False
        if key == "id" and not any(rec.id.startswith(v) for v in values):
            return False
        if key == "status" and rec.state.status.value not in values:
            return False
        if key == "ancestor" and rec.image_ref not in values and rec.image_id not in values:
            return False
        if key == "label":
            for v in values:
                k, sep, want = v.partition("=")
                if k not in rec.spec.labels or (sep and rec.spec.labels[k] != want):
                    return False
        if key == "exited" and not (rec.state.status is Status.EXITED
                                    and str(rec.state.exit_code) in values):
            return False
    return True
