"""`pause`/`unpause` through cgroup.freeze, and `top` over the cgroup's processes."""

from __future__ import annotations

import asyncio
import shlex
from typing import TYPE_CHECKING

from runtime.container.errors import Conflict, NotRunning
from runtime.container.state import Status
from runtime.run import run

if TYPE_CHECKING:
    from runtime.container.manager import Container, ContainerManager, TopResult


async def pause(mgr: ContainerManager, c: Container) -> None:
    if c.state.status is Status.PAUSED:
        raise Conflict(f"Container {c.id} is already paused")
    if not c.state.status.can_pause():
        raise NotRunning(c.id)
    mgr.hierarchy.container(c.id).freeze(True)
    mgr.save(c, status=Status.PAUSED)
    mgr.publish(c, "pause")


async def unpause(mgr: ContainerManager, c: Container) -> None:
    if not c.state.status.can_unpause():
        raise Conflict(f"Container {c.id} is not paused")
    mgr.hierarchy.container(c.id).freeze(False)
    mgr.save(c, status=Status.RUNNING)
    mgr.publish(c, "unpause")


def parse_ps(output: str, pids: set[int]) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """ps output -> (titles, rows of the given pids); CMD may hold spaces."""
    lines = output.splitlines()
    if not lines:
        return (), ()
    titles = tuple(lines[0].split())
    try:
        pid_col = titles.index("PID")
    except ValueError:
        raise Conflict("Couldn't find PID field in ps output") from None
    rows = []
    for line in lines[1:]:
        fields = line.split(None, len(titles) - 1)
        if len(fields) > pid_col and fields[pid_col].isdigit() and int(fields[pid_col]) in pids:
            rows.append(tuple(fields))
    return titles, tuple(rows)


async def top(mgr: ContainerManager, c: Container, ps_args: str = "-ef") -> TopResult:
    from runtime.container.manager import TopResult

    if not c.state.status.has_process:
        raise NotRunning(c.id)
    pids = set(mgr.hierarchy.container(c.id).procs())
    argv = ["ps", *shlex.split(ps_args or "-ef")]
    proc = await asyncio.get_running_loop().run_in_executor(None, lambda: run(argv))
    titles, rows = parse_ps(proc.stdout, pids)
    return TopResult(titles, rows)
