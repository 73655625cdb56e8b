"""The update agent's state machine, persisted so it resumes after a power cut.

    idle -> checking -> downloading -> writing -> staged -> rebooting -> verifying -> done
                 \\-> idle (nothing new)   any step -> failed

`downloading` covers fetch and verify, `writing` the write of the inactive
slot and the UKI; its `step` (slots.InstallStep: empty, usr, verity, label,
uki) is saved as each begins, so an operator (or a power-cut test) sees
where it is. Both are redone from the start after an interruption (the slot
is not in use, so rewriting it is always safe). `staged` means the new
entry is in the ESP on trial; from there on, what happens is decided by
what actually boots (see agent.reconcile), not by the stored state.

Each transition asserts its source state (a bug, not an expected failure,
if it does not hold). The record is written whole: temp file, fsync,
rename, fsync of the folder — a power cut leaves the old or the new record.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
# A version that rolled back stays refused; keep the list bounded.
MAX_BAD_VERSIONS = 32


class Phase(StrEnum):
    IDLE = "idle"
    CHECKING = "checking"
    DOWNLOADING = "downloading"
    WRITING = "writing"
    STAGED = "staged"
    REBOOTING = "rebooting"
    VERIFYING = "verifying"
    DONE = "done"
    FAILED = "failed"


# Allowed transitions: target phase -> phases it may be entered from.
TRANSITIONS: Mapping[Phase, frozenset[Phase]] = {
    # From downloading/writing: an interrupted apply starts over with a fresh check.
    Phase.CHECKING: frozenset({Phase.IDLE, Phase.DONE, Phase.FAILED, Phase.CHECKING,
                               Phase.DOWNLOADING, Phase.WRITING}),
    Phase.IDLE: frozenset({Phase.CHECKING}),
    Phase.DOWNLOADING: frozenset({Phase.CHECKING, Phase.DOWNLOADING}),
    # writing -> writing: the next step of the slot write.
    Phase.WRITING: frozenset({Phase.DOWNLOADING, Phase.WRITING}),
    Phase.STAGED: frozenset({Phase.WRITING}),
    Phase.REBOOTING: frozenset({Phase.STAGED, Phase.REBOOTING, Phase.VERIFYING}),
    # From writing: cut after the UKI landed but before `staged` was saved; it booted.
    # (From downloading: the same, recorded by agents older than the writing phase.)
    Phase.VERIFYING: frozenset({Phase.STAGED, Phase.REBOOTING, Phase.VERIFYING,
                                Phase.DOWNLOADING, Phase.WRITING}),
    Phase.DONE: frozenset({Phase.VERIFYING}),
    Phase.FAILED: frozenset(set(Phase) - {Phase.IDLE}),
}


def can_enter(source: Phase, target: Phase) -> bool:
    return source in TRANSITIONS[target]


class TransitionError(AssertionError):
    """A transition from the wrong state: a bug in the agent, never user input."""


@dataclass(frozen=True)
class Target:
    """The release being installed, as the verified metadata described it."""

    version: str
    usrhash: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class UpdateState:
    phase: Phase = Phase.IDLE
    target: Target | None = None
    # The version that was running when the update started (to detect a rollback).
    previous: str | None = None
    last_error: str | None = None
    bad_versions: tuple[str, ...] = ()
    attempts: int = 0
    # Within `writing`: the slots.InstallStep under way; None in every other phase.
    step: str | None = None
    changed: float = field(default_factory=time.time, compare=False)

    def to(self, phase: Phase, /, **changes: Any) -> UpdateState:
        """The next state; raises TransitionError if `phase` may not follow this one."""
        if not can_enter(self.phase, phase):
            raise TransitionError(f"update state {self.phase} -> {phase} is not allowed")
        changes.setdefault("step", None)
        return replace(self, phase=phase, changed=time.time(), **changes)

    def with_bad(self, version: str) -> UpdateState:
        if version in self.bad_versions:
            return self
        return replace(self, bad_versions=(*self.bad_versions, version)[-MAX_BAD_VERSIONS:])

    def to_json(self) -> dict[str, Any]:
        return {
            "phase": str(self.phase),
            "target": self.target.to_json() if self.target else None,
            "previous": self.previous,
            "last_error": self.last_error,
            "bad_versions": list(self.bad_versions),
            "attempts": self.attempts,
            "step": self.step,
            "changed": self.changed,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UpdateState:
        t = data.get("target")
        return cls(
            phase=Phase(data.get("phase", "idle")),
            target=Target(str(t["version"]), str(t["usrhash"])) if t else None,
            previous=data.get("previous"),
            last_error=data.get("last_error"),
            bad_versions=tuple(str(v) for v in data.get("bad_versions", ())),
            attempts=int(data.get("attempts", 0)),
            step=data.get("step"),
            changed=float(data.get("changed", 0.0)),
        )


class StateStore:
    """The one place that reads and writes the agent's state file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / STATE_FILE

    def load(self) -> UpdateState:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return UpdateState()
        except (json.JSONDecodeError, UnicodeDecodeError):
            # Only a torn write outside our temp+rename could do this; start over
            # rather than refuse to update forever (bad versions are in the ESP too).
            return UpdateState(last_error=f"{self.path} was unreadable; state reset")
        return UpdateState.from_json(data)

    def save(self, state: UpdateState) -> UpdateState:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{STATE_FILE}.tmp")
        data = json.dumps(state.to_json(), indent=2).encode() + b"\n"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return state
