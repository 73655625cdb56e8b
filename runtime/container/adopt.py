"""At daemon start: rebuild the live handles from the records and the kernel.

State is derived, not trusted: a container is still running only if its pid
exists with the recorded start time (pid reuse) and is in its cgroup. One
that ended while berthd was away gets exit code 255 and an error saying so.
Then restart policies are applied as at any exit.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from runtime import rootfs
from runtime.container import restart as restart_mod
from runtime.container import start as start_mod
from runtime.container.errors import StartError
from runtime.container.spawn import proc_start_time
from runtime.container.state import Status
from runtime.container.supervisor import watch_exit
from runtime.store import containers as records

if TYPE_CHECKING:
    from runtime.container.manager import Container, ContainerManager

log = logging.getLogger("berth.engine")


def still_running(mgr: ContainerManager, c: Container) -> bool:
    pid = c.state.pid
    if pid <= 0:
        return False
    try:
        if proc_start_time(pid) != c.state.pid_start_time:
            return False
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return False
    return pid in mgr.hierarchy.container(c.id).procs()


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    return int(raw[raw.rindex(b")") + 2:].split()[1])


def stale_mounts(exec_root: Path) -> list[str]:
    """Mount points under <exec-root>/containers (a start cut short by a crash)."""
    prefix = str(exec_root / "containers") + "/"
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            target = line.split()[4].replace("\\040", " ")
            if target.startswith(prefix):
                out.append(target)
    return sorted(out, key=len, reverse=True)


async def adopt_all(mgr: ContainerManager) -> None:
    from runtime.container.manager import Container

    rootfs.detach_all(stale_mounts(mgr.config.exec_root), mgr.sys)
    to_start: list[Container] = []
    for rec in records.load_all(mgr.db):
        c = Container(record=rec, log=mgr.open_log(rec))
        mgr.containers[rec.id] = c
        status = rec.state.status
        if status.has_process and still_running(mgr, c):
            _readopt(mgr, c)
            continue
        c.mark_stopped(True)
        if status.has_process:
            oom = mgr.hierarchy.container(c.id).oom_kills() > 0
            mgr.save(c, status=Status.EXITED, exit_code=start_mod.UNKNOWN_EXIT,
                     error=start_mod.UNKNOWN_EXIT_ERROR, oom_killed=oom, pid=0,
                     pid_start_time=0, finished_at=time.time())
            mgr.publish(c, "die", exitCode=str(start_mod.UNKNOWN_EXIT))
            await start_mod.teardown_run(mgr, c)
            if restart_mod.should_restart(rec.request.restart_policy, start_mod.UNKNOWN_EXIT,
                                          rec.state.restart_count, rec.state.stopped_by_user):
                to_start.append(c)
        elif status is Status.REMOVING:
            from runtime.container import delete

            mgr.save(c, status=Status.DEAD)
            await delete.remove(mgr, c, force=True, volumes=False)
        elif status is Status.RESTARTING or (
                status is Status.EXITED and rec.state.started_at > 0
                and restart_mod.should_start_on_boot(rec.request.restart_policy,
                                                     rec.state.stopped_by_user)):
            await start_mod.teardown_run(mgr, c)
            to_start.append(c)
    for c in to_start:
        mgr.save(c, status=Status.EXITED)
        try:
            async with c.lock:
                await start_mod.start(mgr, c)
        except StartError as e:
            log.warning("container %s: start at daemon start failed: %s", c.id[:12], e)


def _readopt(mgr: ContainerManager, c: Container) -> None:
    pid = c.state.pid
    c.pidfd = os.pidfd_open(pid)
    c.is_child = parent_of(pid) == os.getpid()
    c.mark_stopped(False)
    cg = mgr.hierarchy.container(c.id)
    c.oom_at_start = 0
    c.oom_seen = cg.oom_kills()
    mgr.oom_watch.add(c.id, cg.path)
    mgr.save(c, status=Status.PAUSED if cg.frozen() else Status.RUNNING)
    run = mgr.run_dir(c.id)
    if not c.record.spec.tty:
        fds = []
        for stream in ("stdout", "stderr"):
            try:
                fds.append(os.open(run / stream, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
            except FileNotFoundError:
                break
        c.pumps = start_mod.output_pumps(c, fds, readopted=True)
    watch_exit(c.pidfd, lambda: start_mod.on_exit(mgr, c))
    log.info("container %s: re-adopted (pid %d)", c.id[:12], pid)
