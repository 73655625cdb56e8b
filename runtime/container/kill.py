"""`kill` and `stop`: a signal to PID 1; stop escalates to cgroup.kill after the timeout."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import TYPE_CHECKING

from runtime.container.errors import NotModified, NotRunning
from runtime.container.spec import signal_number
from runtime.container.state import Status

if TYPE_CHECKING:
    from runtime.container.manager import Container, ContainerManager

KILL_GRACE = 10.0   # after cgroup.kill, how long to wait for the exit to be seen


def send(c: Container, signum: int) -> None:
    if c.pidfd < 0:
        return
    with contextlib.suppress(ProcessLookupError):  # already gone: exit is being handled
        signal.pidfd_send_signal(c.pidfd, signum)


async def kill(mgr: ContainerManager, c: Container, sig: str | int = "SIGKILL") -> None:
    signum = signal_number(sig)
    if not c.state.status.can_kill():
        raise NotRunning(c.id)
    if signum == signal.SIGKILL:
        mgr.save(c, stopped_by_user=True)
    send(c, signum)
    mgr.publish(c, "kill", signal=str(signum))


async def stop(mgr: ContainerManager, c: Container, timeout: float | None = None) -> None:
    status = c.state.status
    if status is Status.RESTARTING:
        if c.restart_task is not None:
            c.restart_task.cancel()
        mgr.save(c, status=Status.EXITED, stopped_by_user=True)
        c.mark_stopped(True)
        mgr.publish(c, "stop")
        return
    if not status.can_stop():
        raise NotModified(f"container {c.id} is not running")
    mgr.save(c, stopped_by_user=True)
    cg = mgr.hierarchy.container(c.id)
    if status is Status.PAUSED:
        # A frozen process cannot run its signal handler: thaw it first.
        cg.freeze(False)
        mgr.save(c, status=Status.RUNNING)
    wait_for = c.record.spec.stop_timeout if timeout is None else timeout
    if wait_for != 0:
        send(c, signal_number(c.record.spec.stop_signal))
        mgr.publish(c, "kill", signal=str(signal_number(c.record.spec.stop_signal)))
    try:
        if wait_for < 0:
            await c.stopped.wait()
        else:
            await asyncio.wait_for(c.stopped.wait(), wait_for)
    except TimeoutError:
        cg.kill()
        send(c, signal.SIGKILL)
        mgr.publish(c, "kill", signal=str(int(signal.SIGKILL)))
        await asyncio.wait_for(c.stopped.wait(), KILL_GRACE)
    mgr.publish(c, "stop")
