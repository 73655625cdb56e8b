"""Reboot strategies: the maintenance window's arithmetic and which strategy a host gets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from pathlib import Path

import pytest

from hostos.errors import HostosError
from hostos.fleet import FleetSettings
from hostos.fleetlock.strategy import (
    FleetLock,
    Immediate,
    MaintenanceWindow,
    StrategyKind,
    Window,
    load_strategy,
)

# Saturday 23:30 UTC for 90 minutes: runs into Sunday.
SAT_NIGHT = MaintenanceWindow(frozenset({5}), dtime(23, 30), 90)


def at(day: int, hh: int, mm: int) -> datetime:
    # 2026-11-23 is a Monday.
    return datetime(2026, 11, 23, hh, mm, tzinfo=UTC) + timedelta(days=day)


def test_window_opens_closes_and_crosses_midnight() -> None:
    assert not SAT_NIGHT.contains(at(5, 23, 29))
    assert SAT_NIGHT.contains(at(5, 23, 30))
    assert SAT_NIGHT.contains(at(6, 0, 59))  # Sunday, still Saturday's window
    assert not SAT_NIGHT.contains(at(6, 1, 0))
    assert not SAT_NIGHT.contains(at(6, 23, 45))  # Sunday is not a window day
    assert SAT_NIGHT.next_opening(at(6, 1, 0)) == at(12, 23, 30)
    verdict = Window(SAT_NIGHT, clock=lambda: at(2, 12, 0)).may_reboot()
    assert not verdict.allowed and "2026-11-28T23:30:00+00:00" in verdict.reason
    assert Window(SAT_NIGHT, clock=lambda: at(5, 23, 45)).may_reboot().allowed


def write(root: Path, text: str) -> None:
    d = root / "etc/hostos/update.d"
    d.mkdir(parents=True, exist_ok=True)
    (d / "50-provision.toml").write_text(text)


def test_the_configured_strategy_is_chosen(tmp_path: Path) -> None:
    none = FleetSettings()
    locked = FleetSettings("workers", "http://lock:8080/", "")
    assert isinstance(load_strategy("id", tmp_path, none), Immediate)
    # A FleetLock URL without an explicit strategy means fleet_lock, as Zincati's docs advise.
    s = load_strategy("id", tmp_path, locked)
    assert isinstance(s, FleetLock) and s.group == "workers" and s.kind is StrategyKind.FLEET_LOCK
    write(tmp_path, '[update]\nstrategy = "window"\n'
                    '[update.window]\ndays = ["Sat"]\nstart = "23:30"\nminutes = 90\n')
    w = load_strategy("id", tmp_path, locked)
    assert isinstance(w, Window) and w.window == SAT_NIGHT


@pytest.mark.parametrize(("text", "message"), [
    ('[update]\nstrategy = "yolo"\n', "strategy 'yolo' is not one of"),
    ('[update]\nstrategy = "fleet_lock"\n', "fleet_lock needs fleetlock_url"),
    ('[update]\nstrategy = "window"\n[update.window]\nstart = "9"\n', "needs days"),
])
def test_bad_strategy_settings_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path, text)
    with pytest.raises(HostosError, match=message) as e:
        load_strategy("id", tmp_path, FleetSettings())
    assert "50-provision.toml" in str(e.value)
