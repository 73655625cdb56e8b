"""A fleet of three VMs on one machine: etcd, FleetLock, a TUF repo, real update agents.

Good release: with one reboot slot, every host ends on the new version and
the lock server's audit log (written in the same etcd transaction as each
slot change) shows that no two hosts were ever between pre-reboot and
steady-state at once. Bad release: the canary wave's one host installs it,
fails its health check, rolls back and halts the rollout; the two hosts of
the second wave never install it, even after their wave opens.

Slow under TCG, about 28 minutes for both on two shared cores (measured
2026-11-28): each test boots three VMs and reboots them through the update,
and the bad release's second wave opens only after 15 minutes, when the
canary has long rolled back (it took 9).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hostos.fleetlock.semaphore import AuditOp, max_concurrent_holders
from hostos.fleetsim import (
    SimulateOptions,
    converged,
    halted_and_refused,
    start_fleet,
    summary,
    watch,
)

# Each wait (boots, then the rollout) gives up after this: a hang must not eat CI's 90 min.
TIMEOUT = 40 * 60.0


def test_three_hosts_converge_with_one_reboot_at_a_time(tmp_path: Path) -> None:
    opts = SimulateOptions(hosts=3, max_unavailable=1, wave_delay=timedelta(seconds=60),
                           timeout=TIMEOUT)
    with start_fleet(opts, tmp_path) as run:
        st = watch(run, converged(run.release_version, 3), TIMEOUT)
        elapsed = time.monotonic() - run.started
        audit = run.audit()
        load = run.etcd_load()
        print("\n" + summary(st, audit, elapsed, load))
    assert sorted(h.hostname for h in st.hosts) == ["node-0", "node-1", "node-2"]
    assert {h.booted_version for h in st.hosts} == {run.release_version}
    locks = [e for e in audit if e.op is AuditOp.LOCK]
    assert len({e.id for e in locks}) == 3  # each host took the slot...
    assert max_concurrent_holders(audit) == 1  # ...and never two at once
    assert not any(e.op is AuditOp.EXPIRE for e in audit)  # nobody needed expiring
    # etcd's own counters saw the hosts' traffic: reports, gate checks, slots.
    assert load.agents > 0 and load.fleetlock > 0
    print(f"3-host rollout under TCG: {elapsed:.0f}s from publish to converged; "
          f"{load.per_host:.0f} etcd requests per host")


def test_bad_release_halts_after_the_canary(tmp_path: Path) -> None:
    delay = timedelta(minutes=15)
    opts = SimulateOptions(hosts=3, max_unavailable=1, bad=True, wave_delay=delay,
                           timeout=TIMEOUT)
    with start_fleet(opts, tmp_path) as run:
        wave2 = datetime.now(UTC) + delay
        st = watch(run, halted_and_refused(run.release_version, 3, wave2), TIMEOUT)
        audit = run.audit()
        print("\n" + summary(st, audit, time.monotonic() - run.started, run.etcd_load()))
    bad = run.release_version
    canary = next(h for h in st.hosts if h.wave == 1)
    assert [ht.version for ht in st.halts] == [bad] and st.halts[0].host == canary.hostname
    assert {h.booted_version for h in st.hosts} == {"0.1.0"}  # the canary rolled back
    # Only the canary ever took a reboot slot, and it gave it back.
    assert {e.id for e in audit if e.op is AuditOp.LOCK} == {canary.node_id}
    assert not any(holders for _, _, holders in st.slots)
    # No other host ever went for the bad release, in any report the fleet saw.
    others = {h.node_id for h in st.hosts} - {canary.node_id}
    assert len(others) == 2
    assert not [h for s in run.history for h in s.hosts
                if h.node_id in others and h.target_version == bad]
