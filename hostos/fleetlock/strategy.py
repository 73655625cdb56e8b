"""Reboot strategies for the update agent: immediate, fleet_lock, window.

The agent asks its strategy twice per update (Zincati's finalization gate
and its "initialization" step):

  may_reboot()   an update is staged: may this host reboot into it now?
  report_steady() the host booted and is healthy: give back what it holds

immediate: always yes. fleet_lock: yes once the FleetLock server grants a
slot; the slot is given back at steady state (so no more than N hosts of a
group are between pre-reboot and a healthy boot). window: yes inside a
weekly maintenance window, in UTC, like Zincati's `periodic` strategy.

Settings come from `[update]` in /usr/lib, /run, /etc `hostos/update.d/*.toml`
(strategy, window) and the fleet settings (group, fleetlock_url).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from hostos.errors import HostosError
from hostos.fleet import FleetSettings, load_fleet_settings
from hostos.fleetlock.client import LockResult, pre_reboot, steady_state

UPDATE_DIRS = ("usr/lib/hostos/update.d", "run/hostos/update.d", "etc/hostos/update.d")
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


class StrategyKind(StrEnum):
    IMMEDIATE = "immediate"
    FLEET_LOCK = "fleet_lock"
    WINDOW = "window"


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str


class RebootStrategy(Protocol):
    """The seam between the update agent and whoever decides when it reboots."""

    kind: StrategyKind

    def may_reboot(self) -> Verdict: ...

    def report_steady(self) -> Verdict: ...


class Immediate:
    kind = StrategyKind.IMMEDIATE

    def may_reboot(self) -> Verdict:
        return Verdict(True, "strategy immediate")

    def report_steady(self) -> Verdict:
        return Verdict(True, "strategy immediate: nothing held")


class FleetLock:
    kind = StrategyKind.FLEET_LOCK

    def __init__(self, base_url: str, node_id: str, group: str) -> None:
        self.base_url, self.node_id, self.group = base_url, node_id, group

    def may_reboot(self) -> Verdict:
        r = pre_reboot(self.base_url, self.node_id, self.group)
        if r.ok:
            return Verdict(True, f"fleetlock slot granted in group {self.group}")
        what = "unreachable" if r.result is LockResult.UNREACHABLE else "refused"
        return Verdict(False, f"fleetlock {what}: {r.detail}")

    def report_steady(self) -> Verdict:
        r = steady_state(self.base_url, self.node_id, self.group)
        return Verdict(r.ok, "fleetlock slot released" if r.ok else f"fleetlock: {r.detail}")


@dataclass(frozen=True)
class MaintenanceWindow:
    days: frozenset[int]  # 0 = Monday
    start: dtime  # UTC
    minutes: int

    def contains(self, now: datetime) -> bool:
        now = now.astimezone(UTC)
        # A window may run past midnight, so look at today's and yesterday's opening.
        for back in (0, 1):
            day = (now - timedelta(days=back)).date()
            if day.weekday() in self.days:
                opens = datetime.combine(day, self.start, UTC)
                if opens <= now < opens + timedelta(minutes=self.minutes):
                    return True
        return False

    def next_opening(self, now: datetime) -> datetime:
        now = now.astimezone(UTC)
        for ahead in range(8):
            day = (now + timedelta(days=ahead)).date()
            opens = datetime.combine(day, self.start, UTC)
            if day.weekday() in self.days and opens > now:
                return opens
        raise AssertionError("a window with at least one day opens within a week")

    @classmethod
    def from_mapping(cls, w: Any, origin: str) -> MaintenanceWindow:
        try:
            days = frozenset(DAYS.index(d) for d in w.get("days", DAYS))
            hh, mm = (int(x) for x in str(w["start"]).split(":"))
            window = cls(days, dtime(hh, mm), int(w["minutes"]))
        except (AttributeError, KeyError, ValueError, TypeError) as e:
            raise HostosError(f"{origin}: [update.window] needs days (Mon..Sun), start "
                              f"HH:MM (UTC) and minutes: {e}") from e
        if not days or not 0 < window.minutes <= 24 * 60:
            raise HostosError(f"{origin}: [update.window] needs >= 1 day and 1..1440 minutes")
        return window


class Window:
    kind = StrategyKind.WINDOW

    def __init__(self, window: MaintenanceWindow, clock: Any = None) -> None:
        self.window = window
        self.clock = clock or (lambda: datetime.now(UTC))

    def may_reboot(self) -> Verdict:
        now = self.clock()
        if self.window.contains(now):
            return Verdict(True, "inside the maintenance window")
        return Verdict(False, "outside the maintenance window; next opens "
                              f"{self.window.next_opening(now).isoformat()}")

    def report_steady(self) -> Verdict:
        return Verdict(True, "strategy window: nothing held")


def load_update_settings(root: Path = Path("/")) -> tuple[dict[str, Any], str]:
    merged: dict[str, Any] = {}
    origin = "built-in defaults"
    for d in UPDATE_DIRS:
        for f in sorted((root / d).glob("*.toml")):
            try:
                merged.update(tomllib.loads(f.read_text()).get("update", {}))
            except (OSError, tomllib.TOMLDecodeError) as e:
                raise HostosError(f"{f}: {e}") from e
            origin = str(f)
    return merged, origin


def load_strategy(node_id: str, root: Path = Path("/"),
                  fleet: FleetSettings | None = None) -> RebootStrategy:
    """The configured strategy; fleet_lock when a FleetLock URL is set and none is named."""
    settings, origin = load_update_settings(root)
    fleet = fleet or load_fleet_settings(root)
    default = StrategyKind.FLEET_LOCK if fleet.fleetlock_url else StrategyKind.IMMEDIATE
    try:
        kind = StrategyKind(settings.get("strategy", default))
    except ValueError as e:
        raise HostosError(f"{origin}: strategy {settings.get('strategy')!r} is not one of "
                          f"{', '.join(k.value for k in StrategyKind)}") from e
    if kind is StrategyKind.FLEET_LOCK:
        if not fleet.fleetlock_url:
            raise HostosError(f"{origin}: strategy fleet_lock needs fleetlock_url in "
                              "/etc/hostos/fleet.d/*.toml [fleet]")
        return FleetLock(fleet.fleetlock_url, node_id, fleet.group)
    if kind is StrategyKind.WINDOW:
        return Window(MaintenanceWindow.from_mapping(settings.get("window"), origin))
    return Immediate()
