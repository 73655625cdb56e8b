"""Fleet settings merge like Zincati's config fragments; status renders what operators need."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostos.errors import HostosError
from hostos.fleet import FleetSettings, FleetStatus, format_status, load_fleet_settings
from hostos.fleetlock.semaphore import Holder
from hostos.fleetstate import HostReport
from hostos.rollout import Halt


def write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_settings_later_directories_win_per_key(tmp_path: Path) -> None:
    write(tmp_path, "usr/lib/hostos/fleet.d/10-image.toml",
          '[fleet]\ngroup = "default"\nfleetlock_url = "http://image/"\n')
    write(tmp_path, "etc/hostos/fleet.d/50-provision.toml",
          '[fleet]\ngroup = "workers"\netcd_url = "http://etcd:2379"\n')
    assert load_fleet_settings(tmp_path) == FleetSettings(
        group="workers", fleetlock_url="http://image/", etcd_url="http://etcd:2379")
    assert load_fleet_settings(tmp_path / "empty") == FleetSettings()


@pytest.mark.parametrize(("text", "message"), [
    ('[fleet]\ngroup = "no spaces"\n', "group 'no spaces' must match"),
    ('[fleet]\ngroop = "x"\n', "unknown fleet setting"),
    ('[fleet]\ngroup = 3\n', "group must be a string"),
    ("[fleet\n", "50-provision.toml"),
])
def test_bad_settings_name_the_file_and_the_problem(tmp_path: Path, text: str,
                                                    message: str) -> None:
    write(tmp_path, "etc/hostos/fleet.d/50-provision.toml", text)
    with pytest.raises(HostosError, match=message):
        load_fleet_settings(tmp_path)


def test_status_table_groups_versions_by_wave_and_names_holders_and_halts() -> None:
    now = 1_000_000.0
    st = FleetStatus(
        hosts=(HostReport("a", "node-a", "default", 1, "2.0", "done", time=now - 5),
               HostReport("b", "node-b", "default", 2, "1.0", "rebooting", "",
                          "2.0", now - 200),
               HostReport("c", "node-c", "default", 2, "1.0", "failed",
                          "2.0 rolled back", "", now - 1)),
        slots=(("default", 1, (Holder("b", now - 30, "s1"),)),),
        halts=(Halt("2.0", "node-c", "health check failed", now - 60),),
    )
    out = format_status(st, now)
    assert "default wave 1: 2.0 x1" in out and "default wave 2: 1.0 x2" in out
    assert "default: 1/1 held: b (since 30s ago)" in out
    assert "2.0: node-c rolled back, health check failed (60s ago)" in out
    assert "hostos fleet resume --version V" in out
    row = next(line for line in out.splitlines() if line.startswith("default  2     node-b"))
    assert "rebooting" in row and "3m ago" in row
