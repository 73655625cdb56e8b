"""Waves: stable per machine, shares as planned; plans validated; the gate's decisions."""

from __future__ import annotations

import random
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hostos.rollout import (
    Decision,
    Halt,
    RolloutError,
    RolloutPlan,
    Wave,
    app_specific_id,
    decide,
    fleet_position,
    parse_plan_spec,
    read_machine_id,
)

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def synthetic_machine_ids(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.getrandbits(128):032x}" for _ in range(n)]


def test_wave_shares_match_the_plan_over_many_machines() -> None:
    plan = parse_plan_spec("5%@0,25%@1h,60%@6h,100%@1d", T0)
    ids = synthetic_machine_ids(40_000)
    counts = [0] * len(plan.waves)
    for mid in ids:
        counts[plan.wave_of(fleet_position(mid))] += 1
    shares = [c / len(ids) * 100 for c in counts]
    # Expected 5, 20, 35, 40 %; binomial sd at n=40000 is at most 0.25 points.
    for got, want in zip(shares, [5, 20, 35, 40], strict=True):
        assert abs(got - want) < 1.25, shares


def test_a_host_stays_in_its_wave_across_releases_and_restarts() -> None:
    ids = synthetic_machine_ids(500, seed=11)
    first = parse_plan_spec("10%@0,50%@1h,100%@2h", T0)
    later = parse_plan_spec("10%@0,50%@3h,100%@9h", T0 + timedelta(days=30))
    assert [first.wave_of(fleet_position(m)) for m in ids] == \
        [later.wave_of(fleet_position(m)) for m in ids]
    # A wider first wave only adds hosts to it; nobody leaves the first wave.
    wider = parse_plan_spec("20%@0,100%@1h", T0)
    assert all(wider.wave_of(fleet_position(m)) == 0
               for m in ids if first.wave_of(fleet_position(m)) == 0)


def test_the_gate_waits_for_the_wave_then_installs_unless_halted() -> None:
    plan = parse_plan_spec("50%@0,100%@2h", T0)
    ids = synthetic_machine_ids(200, seed=3)
    late = next(m for m in ids if plan.wave_of(fleet_position(m)) == 1)
    early = next(m for m in ids if plan.wave_of(fleet_position(m)) == 0)
    assert decide("2.0", plan, early, T0, None).decision is Decision.INSTALL
    wait = decide("2.0", plan, late, T0 + timedelta(hours=1), None)
    assert wait.decision is Decision.WAIT and wait.wave == 2 and "starts at" in wait.reason
    assert decide("2.0", plan, late, T0 + timedelta(hours=2), None).decision is Decision.INSTALL
    halt = Halt("2.0", "node-1", "health check failed", 0.0)
    gate = decide("2.0", plan, early, T0, halt)
    assert gate.decision is Decision.HALTED and "node-1 rolled back" in gate.reason
    # No plan in the release: everyone may install at once.
    assert decide("2.0", None, late, T0, None).decision is Decision.INSTALL


@pytest.mark.parametrize(("spec", "message"), [
    ("10%@0,5%@1h,100%@2h", "wave 2: percent 5.0 must grow"),
    ("10%@0,50%@1h", "last wave must cover 100%"),
    ("ten@0", "expected PERCENT%@DELAY"),
    ("", "expected PERCENT%@DELAY"),
])
def test_bad_plan_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(RolloutError, match=message):
        parse_plan_spec(spec, T0)


def test_plan_json_round_trip_and_bad_json() -> None:
    plan = parse_plan_spec("10%@0,100%@90m", T0)
    assert RolloutPlan.from_json(plan.to_json()) == plan
    assert plan.waves[1] == Wave(100.0, T0 + timedelta(minutes=90))
    assert RolloutPlan.from_release({"waves": []}) is None  # what `hostos release` writes
    assert RolloutPlan.from_release({}) is None
    assert RolloutPlan.from_release(plan.to_json()) == plan
    with pytest.raises(RolloutError, match="wave 1"):
        RolloutPlan.from_json({"waves": [{"percent": 100, "start": "yesterday"}]})
    with pytest.raises(RolloutError, match="time zone"):
        RolloutPlan.from_json({"waves": [{"percent": 100, "start": "2026-11-27T12:00:00"}]})
    with pytest.raises(RolloutError, match="starts before wave 1"):
        RolloutPlan((Wave(10, T0), Wave(100, T0 - timedelta(seconds=1))))


@pytest.mark.skipif(not shutil.which("systemd-id128") or not Path("/etc/machine-id").exists(),
                    reason="needs systemd-id128 and /etc/machine-id")
def test_node_id_is_systemds_app_specific_machine_id() -> None:
    from hostos.rollout import BERTH_APP_ID

    want = subprocess.run(
        ["systemd-id128", "machine-id", f"--app-specific={BERTH_APP_ID.hex()}"],
        capture_output=True, text=True, check=True).stdout.strip()
    assert app_specific_id(read_machine_id()) == want


def test_machine_id_file_is_validated(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/machine-id").write_text("uninitialized\n")
    with pytest.raises(RolloutError, match="not a machine id"):
        read_machine_id(tmp_path)
