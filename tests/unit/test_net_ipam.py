"""IPAM and host-port allocation, persisted in the SQLite records."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from runtime.net import ipam, records
from runtime.net.model import AddressExhausted, Network, PortBinding, PortInUse, Proto
from runtime.store.db import open_db


def make_net(db: sqlite3.Connection, subnet: str = "10.99.0.0/29", name: str = "n1") -> Network:
    subnet, gw = ipam.validate_subnet(subnet)
    net = Network(id=name * 8, name=name, bridge=f"br-{name}", subnet=subnet, gateway=gw)
    records.insert_network(db, net)
    return net


def take(db: sqlite3.Connection, net: Network, cid: str, ip: str = "") -> str:
    return records.allocate_endpoint(db, net, cid, name=cid, aliases=(),
                                     host_ifname=f"vb{cid}", ifname="eth0", static_ip=ip).address


def test_subnet_validation() -> None:
    assert ipam.validate_subnet("10.90.0.0/24") == ("10.90.0.0/24", "10.90.0.1")
    assert ipam.validate_subnet("10.90.0.0/24", "10.90.0.254") == ("10.90.0.0/24", "10.90.0.254")
    for bad, gw in [("10.90.0.1/24", ""), ("nonsense", ""), ("10.90.0.0/31", ""),
                    ("10.90.0.0/24", "10.91.0.1"), ("10.90.0.0/24", "10.90.0.255")]:
        with pytest.raises(ipam.BadSubnet):
            ipam.validate_subnet(bad, gw)


def test_pick_subnet_skips_taken_and_overlapping_ranges() -> None:
    assert ipam.pick_subnet([]) == "10.89.0.0/16"
    assert ipam.pick_subnet(["10.89.0.0/16", "10.90.3.0/24"]) == "10.91.0.0/16"


def test_addresses_are_unique_round_robin_and_skip_the_gateway(tmp_path: Path) -> None:
    db = open_db(tmp_path / "db")
    net = make_net(db)  # 10.99.0.0/29: hosts .1-.6, gateway .1
    got = [take(db, net, f"c{i}") for i in range(5)]
    assert got == ["10.99.0.2", "10.99.0.3", "10.99.0.4", "10.99.0.5", "10.99.0.6"]
    with pytest.raises(AddressExhausted):
        take(db, net, "c5")
    records.delete_endpoint(db, "c1", net.id)
    assert take(db, net, "c6") == "10.99.0.3"  # the only free one


def test_a_released_address_is_not_reused_at_once_even_after_a_restart(tmp_path: Path) -> None:
    db = open_db(tmp_path / "db")
    net = make_net(db, "10.99.0.0/24")
    assert take(db, net, "a") == "10.99.0.2"
    assert take(db, net, "b") == "10.99.0.3"
    records.delete_endpoint(db, "b", net.id)
    db.close()
    db = open_db(tmp_path / "db")  # the daemon restarted
    net = records.find_network(db, "n1")
    assert take(db, net, "c") == "10.99.0.4"
    assert [e.address for e in records.endpoints(db, network_id=net.id)] == [
        "10.99.0.2", "10.99.0.4"]


def test_static_address_must_be_free_and_inside(tmp_path: Path) -> None:
    db = open_db(tmp_path / "db")
    net = make_net(db, "10.99.0.0/24")
    assert take(db, net, "a", "10.99.0.50") == "10.99.0.50"
    for bad in ("10.99.0.50", "10.99.0.1", "10.98.0.2", "10.99.0.255"):
        with pytest.raises(ipam.BadSubnet):
            take(db, net, "b", bad)
    assert [e.container_id for e in records.endpoints(db)] == ["a"]


def test_mac_follows_the_address() -> None:
    assert ipam.mac_for("10.88.0.2") == "02:42:0a:58:00:02"


def test_host_ports_random_high_then_explicit_conflicts(tmp_path: Path) -> None:
    db = open_db(tmp_path / "db")
    free = lambda b: None  # noqa: E731 - every port is free on this "host"
    a = records.allocate_ports(db, "a", "10.0.0.2", [PortBinding(80), PortBinding(53, Proto.UDP)],
                               free)
    assert [p.binding.host_port for p in a] == [32768, 32769]
    b = records.allocate_ports(db, "b", "10.0.0.3", [PortBinding(80, Proto.TCP, "", 8080)], free)
    assert b[0].binding.host_port == 8080
    with pytest.raises(PortInUse):
        records.allocate_ports(db, "c", "10.0.0.4",
                               [PortBinding(81), PortBinding(80, Proto.TCP, "127.0.0.1", 8080)],
                               free)
    assert records.ports(db, "c") == []  # nothing half-recorded
    # UDP 8080 is another port; a busy host port is skipped for -p 80
    busy = lambda b: "in use" if b.host_port == 32770 else None  # noqa: E731
    c = records.allocate_ports(db, "c", "10.0.0.4",
                               [PortBinding(80, Proto.UDP, "", 8080), PortBinding(80)], busy)
    assert [p.binding.host_port for p in c] == [8080, 32771]
    db.close()
    db = open_db(tmp_path / "db")
    d = records.allocate_ports(db, "d", "10.0.0.5", [PortBinding(80)], free)
    assert d[0].binding.host_port == 32772
    assert records.delete_ports(db, "a") == 2
