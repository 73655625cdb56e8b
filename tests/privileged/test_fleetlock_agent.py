"""Hosts' fleet side end to end, without VMs: real etcd, real FleetLock server, FleetAgent.

Three synthetic hosts (each its own root with a machine id and fleet
settings, as provisioning writes them) walk the agent's steps for one
release; one of them rolls back and the others must stop.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from hostos.etcd import EtcdClient, start_etcd
from hostos.fleetagent import FleetAgent
from hostos.fleetlock.semaphore import FleetSemaphore, max_concurrent_holders
from hostos.fleetlock.server import start_fleetlock
from hostos.fleetstate import hosts
from hostos.provision import apply, plan
from hostos.rollout import Decision, parse_plan_spec


def make_host(tmp: Path, n: int, etcd: str, lock: str) -> FleetAgent:
    root = tmp / f"host{n}"
    (root / "etc").mkdir(parents=True)
    (root / "etc/machine-id").write_text(f"{n:032x}\n")
    apply(plan({"hostname": f"node-{n}",
                "fleet": {"group": "default", "fleetlock_url": lock, "etcd_url": etcd}}),
          root, set_hostname=False)
    agent = FleetAgent.from_host(root)
    agent.hostname = f"node-{n}"
    return agent


def test_three_hosts_take_turns_and_a_rollback_stops_the_rest(tmp_path: Path) -> None:
    rollout = parse_plan_spec("100%@0", datetime(2026, 1, 1, tzinfo=UTC)).to_json()
    with start_etcd() as etcd, start_fleetlock(etcd.endpoint, slots=1) as srv:
        fleet = [make_host(tmp_path, n, etcd.endpoint, srv.url) for n in range(3)]
        for h in fleet:
            assert h.steady().allowed  # boot: "initialization" releases any old slot
            h.report("idle", "1.0")

        # Release 1.1: every host may install it; only one may reboot at a time.
        assert all(h.may_install("1.1", rollout).decision is Decision.INSTALL for h in fleet)
        for h in fleet:
            h.report("staged", "1.0", "1.1")
        assert fleet[0].may_reboot().allowed
        assert not fleet[1].may_reboot().allowed
        fleet[0].report("done", "1.1")
        assert fleet[0].steady().allowed
        assert fleet[1].may_reboot().allowed
        assert fleet[1].steady().allowed
        assert fleet[2].may_reboot().allowed
        assert fleet[2].steady().allowed

        # Release 1.2 is bad: the first host rolls back, and nobody else installs it.
        assert fleet[0].may_install("1.2", rollout).decision is Decision.INSTALL
        assert fleet[0].rolled_back("1.2", "health check failed 3 times")
        fleet[0].report("failed", "1.1", "", "1.2 rolled back")
        for h in fleet[1:]:
            gate = h.may_install("1.2", rollout)
            assert gate.decision is Decision.HALTED and "node-0" in gate.reason
        # A host that staged 1.2 before the halt does not reboot into it, though
        # the reboot slot is free; the release it already had still may.
        refused = fleet[1].may_reboot("1.2")
        assert not refused.allowed and "halted" in refused.reason
        assert fleet[1].may_reboot("1.1").allowed
        assert fleet[1].steady().allowed

        async def records() -> tuple[int, list[str]]:
            async with EtcdClient(etcd.endpoint) as c:
                log = await FleetSemaphore(c).audit_log("default")
                return max_concurrent_holders(log), [h.update_state for h in await hosts(c)]

        peak, states = asyncio.run(records())
        assert peak == 1
        assert sorted(states) == ["failed", "staged", "staged"]
    # Every host talked to etcd a bounded, small number of times.
    assert all(0 < h.etcd_ops <= 20 for h in fleet)


def test_unreachable_etcd_keeps_the_gate_shut(tmp_path: Path) -> None:
    with start_etcd() as etcd:
        url = etcd.endpoint
    host = make_host(tmp_path, 7, url, "http://127.0.0.1:9/")
    gate = host.may_install("1.1", None)
    assert gate.decision is Decision.WAIT and "cannot check the fleet's halt record" in gate.reason
    host.report("idle", "1.0")  # best effort: no exception
    assert not host.rolled_back("1.1", "x")
