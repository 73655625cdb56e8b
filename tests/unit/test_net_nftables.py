"""The nft table rendered from networks and published ports."""

from __future__ import annotations

from runtime.net.model import Network, PortBinding, Proto, PublishedPort
from runtime.net.nftables import delete_table_script, render_table

DEFAULT = Network("d" * 64, "bridge", "berth0", "10.88.0.0/16", "10.88.0.1")
USER = Network("u" * 64, "app", "br-uuu", "10.89.0.0/16", "10.89.0.1")
INTERNAL = Network("i" * 64, "secret", "br-iii", "10.90.0.0/16", "10.90.0.1", internal=True)


def pub(port: int, host_port: int, ip: str = "10.88.0.2", host_ip: str = "",
        proto: Proto = Proto.TCP) -> PublishedPort:
    return PublishedPort("c", PortBinding(port, proto, host_ip, host_port), ip)


def test_table_is_replaced_atomically_as_a_unit() -> None:
    text = render_table([DEFAULT], [], table="berth_x")
    assert text.startswith("table ip berth_x\ndelete table ip berth_x\ntable ip berth_x {\n")
    assert delete_table_script("berth_x") == "table ip berth_x\ndelete table ip berth_x\n"


def test_published_ports_become_dnat_rules_address_specific_first() -> None:
    text = render_table([DEFAULT], [pub(80, 32768), pub(80, 8080, host_ip="127.0.0.1"),
                                    pub(53, 5353, proto=Proto.UDP)])
    rules = [line.strip() for line in text.splitlines() if "dnat to" in line]
    assert rules == [
        "ip daddr 127.0.0.1 tcp dport 8080 dnat to 10.88.0.2:80",
        "udp dport 5353 dnat to 10.88.0.2:53",
        "tcp dport 32768 dnat to 10.88.0.2:80",
    ]
    assert "type nat hook output" in text  # localhost reaches published ports too


def test_masquerade_and_isolation_between_networks() -> None:
    text = render_table([DEFAULT, USER, INTERNAL], [])
    assert ('ip saddr 10.88.0.0/16 oifname != "berth0" oifname != "bxddddddddd*" masquerade'
            in text)
    assert 'oifname "berth0" ip saddr 127.0.0.0/8 masquerade' in text
    assert 'iifname "berth0" oifname "br-uuu" drop' in text
    assert 'iifname "br-uuu" oifname "berth0" drop' in text
    assert 'iifname "br-iii" oifname != "br-iii" drop' in text
    assert 'oifname "br-iii" iifname != "br-iii" drop' in text
    assert "10.90.0.0/16" not in text  # an internal network is never masqueraded


def test_ports_of_internal_containers_are_not_published() -> None:
    text = render_table([DEFAULT, INTERNAL], [pub(80, 8080, ip="10.90.0.2")],
                        internal_ips=frozenset({"10.90.0.2"}))
    assert "dnat to" not in text
