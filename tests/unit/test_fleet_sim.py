"""The simulated fleet's fixed parts: who is the canary, and what each VM is handed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hostos.fleetsim import CANARY_PERCENT, fleet_nic, machine_ids, provisioning, rollout_plan
from hostos.provision import plan
from hostos.rollout import fleet_position

ROOT_JSON = json.dumps({"signed": {"_type": "root", "version": 1}, "signatures": []})


def test_first_host_is_the_only_canary_and_ids_are_stable() -> None:
    ids = machine_ids(5)
    assert ids == machine_ids(5) and len(set(ids)) == 5
    plan_ = rollout_plan(datetime(2026, 1, 1, tzinfo=UTC), timedelta(minutes=2))
    waves = [plan_.wave_of(fleet_position(m)) for m in ids]
    assert waves == [0, 1, 1, 1, 1]
    assert plan_.waves[0].percent == CANARY_PERCENT


def test_each_vm_gets_provisioning_that_validates() -> None:
    p = plan(provisioning("node-1", ROOT_JSON, 2))
    paths = {w.path for w in p.writes}
    assert paths == {"etc/hostname", "etc/hostos/fleet.d/50-provision.toml",
                     "etc/hostos/update.d/50-provision.toml", "etc/hostos/tuf/root.json"}


def test_fleet_nic_forwards_the_three_services_through_the_relay() -> None:
    args = fleet_nic({"repo": 1111, "etcd": 2222, "fleetlock": 3333})
    netdev = args[1]
    assert "restrict=on" in netdev
    for guest, host in ((80, 1111), (2379, 2222), (8080, 3333)):
        assert f"guestfwd=tcp:10.0.3.100:{guest}-cmd:" in netdev
        assert f"-m hostos.fleetrelay 127.0.0.1 {host}" in netdev


def test_summary_shows_each_host_and_the_etcd_cost_per_host() -> None:
    from collections import Counter

    from hostos.fleet import FleetStatus
    from hostos.fleetsim import EtcdLoad, summary
    from hostos.fleetstate import HostReport

    st = FleetStatus(tuple(HostReport(f"id{i}", f"node-{i}", "default", 1 + (i > 0), "0.2.0",
                                      "done") for i in range(3)), (), ())
    load = EtcdLoad(3, agents=90, fleetlock=15, methods=Counter({"Range": 60, "Put": 45}))
    text = summary(st, [], 600.0, load)
    assert [line.split()[0] for line in text.splitlines()[1:4]] == ["node-0", "node-1",
                                                                   "node-2"]
    assert "etcd requests per host: 35 (agents 90, FleetLock server 15" in text
    assert "Range 60, Put 45" in text
