"""The update state machine: transitions (truth table), persistence, reconcile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hostos.update.agent import Observed, reconcile
from hostos.update.entries import EntryState, entry_filename, parse_entry
from hostos.update.state import (
    TRANSITIONS,
    Phase,
    StateStore,
    Target,
    TransitionError,
    UpdateState,
    can_enter,
)
from hostos.update.version import Version

ALLOWED = {
    (Phase.IDLE, Phase.CHECKING), (Phase.DONE, Phase.CHECKING), (Phase.FAILED, Phase.CHECKING),
    (Phase.CHECKING, Phase.CHECKING), (Phase.DOWNLOADING, Phase.CHECKING),
    (Phase.CHECKING, Phase.IDLE),
    (Phase.CHECKING, Phase.DOWNLOADING), (Phase.DOWNLOADING, Phase.DOWNLOADING),
    (Phase.DOWNLOADING, Phase.WRITING), (Phase.WRITING, Phase.WRITING),
    (Phase.WRITING, Phase.STAGED), (Phase.WRITING, Phase.CHECKING),
    (Phase.WRITING, Phase.VERIFYING),
    (Phase.STAGED, Phase.REBOOTING), (Phase.REBOOTING, Phase.REBOOTING),
    (Phase.VERIFYING, Phase.REBOOTING),
    (Phase.STAGED, Phase.VERIFYING), (Phase.REBOOTING, Phase.VERIFYING),
    (Phase.VERIFYING, Phase.VERIFYING), (Phase.DOWNLOADING, Phase.VERIFYING),
    (Phase.VERIFYING, Phase.DONE),
} | {(p, Phase.FAILED) for p in Phase if p is not Phase.IDLE}

A, B = "aa" * 32, "bb" * 32


def test_transition_truth_table() -> None:
    for src in Phase:
        for dst in Phase:
            assert can_enter(src, dst) == ((src, dst) in ALLOWED), (src, dst)
            state = UpdateState(phase=src)
            if (src, dst) in ALLOWED:
                assert state.to(dst).phase is dst
            else:
                with pytest.raises(TransitionError):
                    state.to(dst)
    assert set(TRANSITIONS) == set(Phase) - {Phase.IDLE} | {Phase.IDLE}


def test_state_survives_a_restart_and_is_written_whole(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "update")
    assert store.load() == UpdateState()
    s = UpdateState().to(Phase.CHECKING).to(Phase.DOWNLOADING, target=Target("0.2.0", B))
    store.save(s.with_bad("0.1.5"))
    loaded = StateStore(tmp_path / "update").load()
    assert loaded.phase is Phase.DOWNLOADING
    assert loaded.target == Target("0.2.0", B)
    assert loaded.bad_versions == ("0.1.5",)
    assert [p.name for p in (tmp_path / "update").iterdir()] == ["state.json"]
    assert json.loads((tmp_path / "update" / "state.json").read_text())["phase"] == "downloading"


def test_the_write_step_is_saved_and_cleared_by_the_next_phase(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "update")
    store.save(staged(Phase.WRITING).to(Phase.WRITING, step="uki"))
    loaded = store.load()
    assert (loaded.phase, loaded.step) == (Phase.WRITING, "uki")
    assert json.loads(store.path.read_text())["step"] == "uki"
    assert loaded.to(Phase.STAGED).step is None
    assert loaded.to(Phase.CHECKING).step is None


def entries(*names: str) -> tuple:  # type: ignore[type-arg]
    return tuple(e for n in names if (e := parse_entry(n, "berth")) is not None)


def seen(booted: str, version: str, *names: str) -> Observed:
    return Observed(booted, Version.parse(version), entries(*names))


def staged(phase: Phase) -> UpdateState:
    s = UpdateState().to(Phase.CHECKING).to(Phase.DOWNLOADING, target=Target("0.2.0", B))
    if phase is Phase.DOWNLOADING:
        return s
    s = s.to(Phase.WRITING, step="usr")
    if phase is Phase.WRITING:
        return s
    s = s.to(Phase.STAGED)
    if phase is Phase.STAGED:
        return s
    s = s.to(Phase.REBOOTING)
    return s if phase is Phase.REBOOTING else s.to(Phase.VERIFYING)


def test_reconcile_follows_what_booted() -> None:
    # Booted B, not blessed yet -> verifying; blessed -> done.
    r = reconcile(staged(Phase.REBOOTING), seen(B, "0.2.0", "berth_0.1.0.efi",
                                                "berth_0.2.0+2-1.efi"))
    assert r.phase is Phase.VERIFYING
    r = reconcile(r, seen(B, "0.2.0", "berth_0.1.0.efi", "berth_0.2.0.efi"))
    assert r.phase is Phase.DONE
    # Tries used up, A booted again -> failed, 0.2.0 recorded bad.
    r = reconcile(staged(Phase.VERIFYING), seen(A, "0.1.0", "berth_0.1.0.efi",
                                                "berth_0.2.0+0-3.efi"))
    assert r.phase is Phase.FAILED and r.bad_versions == ("0.2.0",)
    assert r.last_error is not None and "rolled back to 0.1.0" in r.last_error
    # Power cut before the reboot: still on A with B on trial -> reboot again.
    r = reconcile(staged(Phase.REBOOTING), seen(A, "0.1.0", "berth_0.1.0.efi",
                                                "berth_0.2.0+3.efi"))
    assert r.phase is Phase.REBOOTING
    # Cut while downloading or writing the slot -> start over (the write empties the
    # slot first); cut after the UKI landed but before `staged` was saved -> it booted B.
    assert reconcile(staged(Phase.DOWNLOADING), seen(A, "0.1.0")).phase is Phase.CHECKING
    r = reconcile(staged(Phase.WRITING), seen(A, "0.1.0", "berth_0.1.0.efi"))
    assert (r.phase, r.step, r.target) == (Phase.CHECKING, None, Target("0.2.0", B))
    for phase in (Phase.DOWNLOADING, Phase.WRITING):
        r = reconcile(staged(phase), seen(B, "0.2.0", "berth_0.2.0+2-1.efi"))
        assert r.phase is Phase.VERIFYING
    # A bad entry found in the ESP is remembered even without a stored target.
    assert reconcile(UpdateState(), seen(A, "0.1.0", "berth_0.3.0+0-3.efi")).bad_versions == (
        "0.3.0",)


def test_boot_entry_names() -> None:
    e = parse_entry("berth_0.2.0+2-1.efi", "berth")
    assert e is not None and (e.tries_left, e.tries_done, e.state) == (2, 1, EntryState.TRIAL)
    bad = parse_entry("berth_0.2.0+0-3.efi", "berth")
    assert bad is not None and bad.state is EntryState.BAD
    good = parse_entry("berth_0.10.0.efi", "berth")
    assert good is not None and good.state is EntryState.GOOD
    assert parse_entry("other_0.1.0.efi", "berth") is None
    assert parse_entry("berth_0.1.0.efi.tmp", "berth") is None
    assert entry_filename("berth", Version.parse("0.3.0"), 3) == "berth_0.3.0+3.efi"


def test_versions_order_like_systemd_boot() -> None:
    v = [Version.parse(s) for s in ("0.1.0", "0.2.0~rc1", "0.2.0", "0.2.0.1", "0.10.0", "1.0")]
    assert v == sorted(reversed(v))
    assert Version.parse("0.2.0") == Version.parse("0.2.0")
    with pytest.raises(ValueError):
        Version.parse("0.2_0")
