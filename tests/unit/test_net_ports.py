"""`-p` forms, `-P`, and the Docker API shapes of ports."""

from __future__ import annotations

import pytest

from runtime.net.model import PortBinding, Proto, PublishedPort
from runtime.net.ports import (
    BadPortSpec,
    format_port_lines,
    from_docker_bindings,
    parse_port_spec,
    publish_all,
    to_docker_port_list,
    to_docker_ports,
)


@pytest.mark.parametrize(("spec", "want"), [
    ("80", [PortBinding(80)]),
    ("8080:80", [PortBinding(80, Proto.TCP, "", 8080)]),
    ("127.0.0.1:8080:80", [PortBinding(80, Proto.TCP, "127.0.0.1", 8080)]),
    ("127.0.0.1::80", [PortBinding(80, Proto.TCP, "127.0.0.1", 0)]),
    ("0.0.0.0:8080:80", [PortBinding(80, Proto.TCP, "", 8080)]),
    ("53/udp", [PortBinding(53, Proto.UDP)]),
    ("5353:53/UDP", [PortBinding(53, Proto.UDP, "", 5353)]),
    ("8000-8001:80-81",
     [PortBinding(80, Proto.TCP, "", 8000), PortBinding(81, Proto.TCP, "", 8001)]),
    ("7000-7001", [PortBinding(7000), PortBinding(7001)]),
])
def test_port_spec_forms(spec: str, want: list[PortBinding]) -> None:
    assert parse_port_spec(spec) == want


@pytest.mark.parametrize("spec", [
    "", "http", "0", "70000", "80/sctp", "1:2:3:4", "[::1]:80:80", "::1:80:80",
    "300.1.1.1:80:80", "8000-8002:80-81", "90-80", "x:80",
])
def test_bad_port_specs_are_refused_with_the_spec_named(spec: str) -> None:
    with pytest.raises(BadPortSpec) as err:
        parse_port_spec(spec)
    assert repr(spec) in str(err.value)


def test_publish_all_adds_every_exposed_port_not_published_explicitly() -> None:
    explicit = [PortBinding(80, Proto.TCP, "", 8080)]
    got = publish_all(["80/tcp", "443/tcp", "53/udp", "53/tcp"], explicit)
    assert got == [PortBinding(80, Proto.TCP, "", 8080), PortBinding(443),
                   PortBinding(53, Proto.UDP), PortBinding(53)]


def test_docker_port_bindings_round_trip_and_ignore_ipv6_twins() -> None:
    api = {"80/tcp": [{"HostIp": "", "HostPort": ""}, {"HostIp": "::", "HostPort": ""}],
           "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "5353"}],
           "443/tcp": None}
    assert from_docker_bindings(api) == [
        PortBinding(80), PortBinding(53, Proto.UDP, "127.0.0.1", 5353), PortBinding(443)]


def test_inspect_ports_show_host_ports_and_unpublished_exposed_ports_as_null() -> None:
    pub = [PublishedPort("c", PortBinding(80, Proto.TCP, "", 32768), "10.88.0.2")]
    assert to_docker_ports(pub, ["80/tcp", "22/tcp"]) == {
        "22/tcp": None, "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "32768"}]}
    assert to_docker_port_list(pub) == [
        {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 32768, "Type": "tcp"}]


def test_berth_port_output() -> None:
    pub = [PublishedPort("c", PortBinding(80, Proto.TCP, "", 32768), "10.88.0.2"),
           PublishedPort("c", PortBinding(53, Proto.UDP, "127.0.0.1", 5353), "10.88.0.2")]
    assert format_port_lines(pub) == ["53/udp -> 127.0.0.1:5353", "80/tcp -> 0.0.0.0:32768"]
    assert format_port_lines(pub, "80") == ["0.0.0.0:32768"]
    assert format_port_lines(pub, "80/udp") == []
