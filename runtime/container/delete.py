"""`rm`: kill if forced, tear the run down, delete dirs, logs, record (idempotent)."""

from __future__ import annotations

import asyncio
import logging
import shutil
from typing import TYPE_CHECKING

from runtime.container.errors import Conflict
from runtime.container.kill import KILL_GRACE, send
from runtime.container.start import end_output, settle, teardown_run
from runtime.container.state import Status
from runtime.store import containers as records
from runtime.volumes import VolumeError

if TYPE_CHECKING:
    from runtime.container.manager import Container, ContainerManager

log = logging.getLogger("berth.engine")


async def remove(mgr: ContainerManager, c: Container, force: bool, volumes: bool) -> None:
    status = c.state.status
    if not status.can_remove(force):
        if status.has_process or status is Status.RESTARTING:
            raise Conflict(f"You cannot remove a {status} container {c.id}. Stop the "
                           f"container before attempting removal or force remove")
        raise Conflict(f"removal of container {c.id} is already in progress")
    if c.restart_task is not None:
        c.restart_task.cancel()
    if status.has_process:
        mgr.save(c, stopped_by_user=True)
        mgr.publish(c, "kill", signal="9")     # as dockerd's rm -f: kill, die, destroy
        mgr.hierarchy.container(c.id).kill()   # SIGKILL reaches frozen tasks too (v2)
        send(c, 9)
        await asyncio.wait_for(c.stopped.wait(), KILL_GRACE)
    mgr.save(c, status=Status.REMOVING)
    await settle(c)
    await teardown_run(mgr, c)
    c.log.remove()
    if volumes:
        for name in c.record.anonymous_volumes:
            try:
                mgr.volumes.remove(name, force=True)
            except VolumeError as e:
                log.warning("container %s: %s", c.id[:12], e)
    records.delete(mgr.db, c.id)
    mgr.containers.pop(c.id, None)
    for exec_id in [e for e, s in mgr.execs.items() if s.container_id == c.id]:
        del mgr.execs[exec_id]
    end_output(c)
    c.removed.set()
    mgr.publish(c, "destroy")
    # The record is gone, so the container is (a crash from here on leaves only a
    # dir under containers/ that no id names): `wait --condition removed` (run --rm)
    # answers now; the upper dir's files (many rmdir/unlink) go off the event loop.
    await asyncio.to_thread(shutil.rmtree, mgr.data_dir(c.id), True)
