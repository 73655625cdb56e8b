"""Container status and the guards of each lifecycle transition.

The guards live on the enum (as youki does) and tests/unit/test_state.py
checks them as a truth table. Status is derived at adoption from the process
and the cgroup; the stored value is a cache of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"
    REMOVING = "removing"
    EXITED = "exited"
    DEAD = "dead"

    def can_start(self) -> bool:
        return self in (Status.CREATED, Status.EXITED)

    def can_stop(self) -> bool:
        return self in (Status.RUNNING, Status.PAUSED, Status.RESTARTING)

    def can_kill(self) -> bool:
        return self in (Status.RUNNING, Status.PAUSED)

    def can_pause(self) -> bool:
        return self is Status.RUNNING

    def can_unpause(self) -> bool:
        return self is Status.PAUSED

    def can_exec(self) -> bool:
        return self is Status.RUNNING

    def can_restart(self) -> bool:
        return self not in (Status.REMOVING, Status.DEAD)

    def can_remove(self, force: bool) -> bool:
        if force:
            return self is not Status.REMOVING
        return self in (Status.CREATED, Status.EXITED, Status.DEAD)

    def can_rename(self) -> bool:
        return self is not Status.REMOVING

    @property
    def has_process(self) -> bool:
        return self in (Status.RUNNING, Status.PAUSED)


class WaitCondition(StrEnum):
    """Docker's /containers/{id}/wait?condition=..."""

    NOT_RUNNING = "not-running"
    NEXT_EXIT = "next-exit"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)   # one per container, kept in berthd's memory
class State:
    status: Status = Status.CREATED
    pid: int = 0
    pid_start_time: int = 0       # /proc/PID/stat field 22, against pid reuse
    exit_code: int = 0
    oom_killed: bool = False
    error: str = ""
    started_at: float = 0.0       # unix time, 0 = never
    finished_at: float = 0.0
    restart_count: int = 0
    stopped_by_user: bool = False  # for unless-stopped / always after `stop`

    @property
    def running(self) -> bool:
        return self.status.has_process
