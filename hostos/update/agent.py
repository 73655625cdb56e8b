"""The update agent: one pass of check -> download -> write -> reboot -> verify.

Each run starts by reconciling the stored state with what actually booted
(`reconcile`, pure): after a reboot, a power cut or a rollback the stored
phase may be stale, and the boot loader's entries are the truth:

  target booted                         -> verifying (then done once blessed)
  target's entry at +0 (tries used up)  -> failed; the version is recorded bad
  target staged, old version booted     -> rebooting again (the reboot never came)
  interrupted while checking, downloading or writing -> start over from checking

Then, if asked to apply, it checks the channel, writes the inactive slot and
asks the reboot strategy (immediate, FleetLock, window: hostos.fleetlock)
whether it may reboot. Every phase change is saved before the next step.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from hostos.update.check import CheckError, Decision, Source, Verdict, decide
from hostos.update.config import UpdateSettings
from hostos.update.entries import BootEntry, EntryState
from hostos.update.slots import BootDisk, Esp, InstallStep, SlotError, install
from hostos.update.state import Phase, StateStore, Target, UpdateState
from hostos.update.version import Version

log = logging.getLogger("hostos.update")


class Host(Protocol):
    """What the agent needs from the machine it runs on (hostos.update.host)."""

    def booted_usrhash(self) -> str: ...

    def running_version(self) -> Version: ...

    def disk(self) -> BootDisk: ...

    def esp(self) -> Esp: ...

    def reboot(self) -> None: ...

    def memory_peak(self) -> int | None:
        """Peak memory of this agent's cgroup in bytes (page cache included), if known."""
        ...


class Fleet(Protocol):
    """The fleet seam (hostos.fleetagent.FleetAgent): rollout gate, reports, reboot slot."""

    def may_install(self, version: str, rollout: Mapping[str, Any] | None) -> Any: ...

    def report(self, phase: str, booted: str, target: str = "", last_error: str = "",
               wave: int = 0) -> None: ...

    def may_reboot(self, version: str) -> Any: ...

    def steady(self) -> Any: ...

    def rolled_back(self, version: str, reason: str) -> bool: ...


@dataclass(frozen=True)
class Observed:
    booted_usrhash: str
    booted_version: Version
    entries: tuple[BootEntry, ...]


def reconcile(state: UpdateState, seen: Observed) -> UpdateState:
    """The state that matches what booted; pure."""
    # A version the boot loader gave up on is bad, whatever the record says.
    for e in seen.entries:
        if e.state is EntryState.BAD:
            state = state.with_bad(str(e.version))
    target = state.target
    phase = state.phase
    if phase in (Phase.DOWNLOADING, Phase.WRITING) and target is not None and (
            target.usrhash == seen.booted_usrhash):
        # Cut after the UKI was written but before "staged" was saved: it booted.
        return reconcile(state.to(Phase.VERIFYING), seen)
    if phase in (Phase.CHECKING, Phase.DOWNLOADING, Phase.WRITING):
        # The slot write starts with emptying the slot and its entries: redo it all.
        return state.to(Phase.CHECKING)
    if target is None or phase not in (Phase.STAGED, Phase.REBOOTING, Phase.VERIFYING):
        return state
    if target.usrhash == seen.booted_usrhash:
        booted = [e for e in seen.entries if str(e.version) == target.version]
        if booted and booted[0].state is EntryState.GOOD:
            return state.to(Phase.VERIFYING).to(Phase.DONE, last_error=None)
        return state.to(Phase.VERIFYING)
    entry = next((e for e in seen.entries if str(e.version) == target.version), None)
    if entry is None:
        return state.to(Phase.FAILED, last_error=f"boot entry of {target.version} vanished "
                        f"before it booted; still on {seen.booted_version}")
    if entry.state is EntryState.BAD:
        reason = (f"{target.version} did not become healthy in {entry.tries_done} boot(s); "
                  f"rolled back to {seen.booted_version}")
        return state.with_bad(target.version).to(Phase.FAILED, last_error=reason)
    # Staged but not (yet) booted: the reboot did not happen or was cut short.
    return state.to(Phase.REBOOTING) if phase is not Phase.STAGED else state


@dataclass(frozen=True)
class RunResult:
    state: UpdateState
    decision: Decision | None
    message: str


class Agent:
    def __init__(self, settings: UpdateSettings, host: Host, fleet: Fleet | None = None) -> None:
        self.settings = settings
        self.host = host
        self.fleet = fleet
        self.store = StateStore(settings.state_dir)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One agent at a time (the timer's run and an operator's): later ones wait."""
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.settings.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("another hostos update run holds the lock; waiting for it")
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def observe(self) -> Observed:
        return Observed(self.host.booted_usrhash(), self.host.running_version(),
                        tuple(self.host.esp().entries()))

    def _save(self, state: UpdateState, seen: Observed) -> UpdateState:
        self.store.save(state)
        if self.fleet is not None:
            self.fleet.report(str(state.phase), str(seen.booted_version),
                              state.target.version if state.target else "",
                              state.last_error or "")
        return state

    def resume(self) -> tuple[UpdateState, Observed]:
        """Load the state, reconcile it with what booted, save if it changed."""
        seen = self.observe()
        before = self.store.load()
        state = reconcile(before, seen)
        if state != before:
            log.info("update state: %s -> %s", before.phase, state.phase)
            self._save(state, seen)
            if self.fleet is not None and state.phase is Phase.FAILED and state.target and (
                    state.target.version in state.bad_versions):
                self.fleet.rolled_back(state.target.version, state.last_error or "rolled back")
            # Zincati's "initialization": a host back from a reboot, healthy on the
            # new version or rolled back to the old one, gives its FleetLock slot back.
            if self.fleet is not None and state.phase in (Phase.DONE, Phase.FAILED):
                self.fleet.steady()
        return state, seen

    def check(self) -> RunResult:
        with self.locked():
            return self._check()

    def apply(self) -> RunResult:
        with self.locked():
            return self._apply()

    def _unconfigured(self, state: UpdateState) -> RunResult | None:
        # Not an error: a host without an update source simply has nothing to do
        # (the timer must not leave a failed unit behind on such hosts).
        if self.settings.url is None:
            return RunResult(state, None, "updates are not configured (no [update] url in "
                             "/etc/hostos/update.d/*.toml): nothing to do")
        return None

    def _check(self) -> RunResult:
        state, seen = self.resume()
        if (idle := self._unconfigured(state)) is not None:
            return idle
        if state.phase not in (Phase.IDLE, Phase.DONE, Phase.FAILED, Phase.CHECKING):
            return RunResult(state, None, f"an update is in progress ({state.phase})")
        source = Source(self.settings)
        release = source.refresh()
        d = decide(release, seen.booted_version, seen.booted_usrhash, state.bad_versions)
        return RunResult(state, d, d.reason)

    def _apply(self) -> RunResult:
        state, seen = self.resume()
        if state.phase in (Phase.STAGED, Phase.REBOOTING):
            return self._reboot(state, seen, None)
        if state.phase is Phase.VERIFYING:
            return RunResult(state, None, f"{state.target.version if state.target else '?'} "
                             "booted; waiting for boot-complete.target and the blessing")
        if (idle := self._unconfigured(state)) is not None:
            return idle
        if state.phase is not Phase.CHECKING:
            state = self._save(state.to(Phase.CHECKING), seen)
        try:
            source = Source(self.settings)
            release = source.refresh()
        except CheckError as e:
            state = self._save(state.to(Phase.FAILED, last_error=str(e)), seen)
            raise
        d = decide(release, seen.booted_version, seen.booted_usrhash, state.bad_versions)
        if d.verdict is not Verdict.UPDATE or release is None:
            error = d.reason if d.verdict in (Verdict.DOWNGRADE, Verdict.KNOWN_BAD) else None
            self._save(state.to(Phase.IDLE, last_error=error), seen)
            return RunResult(self.store.load(), d, d.reason)
        if self.fleet is not None:
            gate = self.fleet.may_install(str(release.version), release.rollout)
            if str(getattr(gate, "decision", "install")) != "install":
                self._save(state.to(Phase.IDLE), seen)
                return RunResult(self.store.load(), d, str(getattr(gate, "reason", gate)))
        target = Target(str(release.version), release.usrhash)
        state = self._save(state.to(Phase.DOWNLOADING, target=target,
                                    previous=str(seen.booted_version), last_error=None,
                                    attempts=state.attempts + 1), seen)
        def step(name: InstallStep) -> None:
            # Saved without a fleet report: a step is detail within one phase.
            nonlocal state
            state = self.store.save(state.to(Phase.WRITING, step=str(name)))

        try:
            files = source.fetch(release)
            log.info("verified %s; writing the inactive slot", release.version)
            state = self._save(state.to(Phase.WRITING), seen)
            result = install(self.host.disk(), self.host.esp(), seen.booted_usrhash,
                             seen.booted_version, release, files, self.settings.boot_tries,
                             step=step)
        except (CheckError, SlotError) as e:
            self._save(state.to(Phase.FAILED, last_error=str(e)), seen)
            raise
        state = self._save(state.to(Phase.STAGED), seen)
        source.prune()
        peak = self.host.memory_peak()
        log.info("%s staged in slot %s as %s%s", release.version, result.slot,
                 result.entry.filename,
                 f" (memory peak of this run: {peak / 1e6:.0f} MB)" if peak else "")
        return self._reboot(state, seen, d)

    def _reboot(self, state: UpdateState, seen: Observed, d: Decision | None) -> RunResult:
        version = state.target.version if state.target else "?"
        if self.fleet is not None:
            # The staged version: its rollout may have been halted since it was staged.
            verdict = self.fleet.may_reboot(version)
            if not getattr(verdict, "allowed", True):
                reason = str(getattr(verdict, "reason", verdict))
                return RunResult(state, d, f"{version} staged; not rebooting yet: {reason}")
        state = self._save(state.to(Phase.REBOOTING), seen)
        log.info("rebooting into %s", version)
        self.host.reboot()
        return RunResult(state, d, f"rebooting into {version}")

