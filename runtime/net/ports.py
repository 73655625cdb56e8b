"""Port specs: the `-p` forms, `-P`, and the Docker API's JSON shapes for them.

`-p` forms accepted (Docker's): `80`, `8080:80`, `127.0.0.1:8080:80`,
`127.0.0.1::80`, each with an optional `/tcp` or `/udp`, and equal-length
ranges (`8000-8001:80-81`). IPv4 only: an IPv6 host address is refused with a
clear message rather than half supported.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from runtime.net.model import NetError, PortBinding, Proto, PublishedPort


class BadPortSpec(NetError, ValueError):
    def __init__(self, spec: str, why: str) -> None:
        self.spec = spec
        super().__init__(f"invalid port spec {spec!r}: {why}")


def _port_range(text: str, spec: str, *, allow_zero: bool = False) -> list[int]:
    lo_s, sep, hi_s = text.partition("-")
    try:
        lo = int(lo_s)
        hi = int(hi_s) if sep else lo
    except ValueError:
        raise BadPortSpec(spec, f"{text!r} is not a port number or range") from None
    low_limit = 0 if allow_zero else 1
    if not (low_limit <= lo <= 65535 and low_limit <= hi <= 65535) or hi < lo:
        raise BadPortSpec(spec, f"{text!r} is outside 1-65535 or an empty range")
    return list(range(lo, hi + 1))


def parse_proto(text: str, spec: str) -> Proto:
    try:
        return Proto(text.lower())
    except ValueError:
        raise BadPortSpec(spec, f"protocol {text!r} is not tcp or udp") from None


def parse_port_spec(spec: str) -> list[PortBinding]:
    """One `-p` argument -> its bindings (several for a range)."""
    body, _, proto_s = spec.partition("/")
    proto = parse_proto(proto_s, spec) if proto_s else Proto.TCP
    if body.startswith("["):
        raise BadPortSpec(spec, "IPv6 host addresses are not supported (IPv4 only)")
    parts = body.split(":")
    if len(parts) == 1:
        host_ip, host_s, ctr_s = "", "", parts[0]
    elif len(parts) == 2:
        host_ip, host_s, ctr_s = "", parts[0], parts[1]
    elif len(parts) == 3:
        host_ip, host_s, ctr_s = parts
    else:
        raise BadPortSpec(spec, "expected [[HOST_IP:]HOST_PORT:]CONTAINER_PORT[/PROTO]")
    if host_ip:
        try:
            addr = ipaddress.ip_address(host_ip)
        except ValueError:
            raise BadPortSpec(spec, f"{host_ip!r} is not an IP address") from None
        if addr.version != 4:
            raise BadPortSpec(spec, "IPv6 host addresses are not supported (IPv4 only)")
        if addr.is_unspecified:
            host_ip = ""
    ctr_ports = _port_range(ctr_s, spec)
    if not host_s:
        return [PortBinding(p, proto, host_ip, 0) for p in ctr_ports]
    host_ports = _port_range(host_s, spec, allow_zero=True)
    if host_ports == [0]:
        host_ports = [0] * len(ctr_ports)
    if len(host_ports) != len(ctr_ports):
        raise BadPortSpec(spec, "host and container port ranges differ in length")
    return [PortBinding(c, proto, host_ip, h) for h, c in zip(host_ports, ctr_ports, strict=True)]


def parse_port_specs(specs: Iterable[str]) -> list[PortBinding]:
    out: list[PortBinding] = []
    for spec in specs:
        out.extend(parse_port_spec(spec))
    return out


def parse_exposed(key: str) -> tuple[int, Proto]:
    """`80/tcp` or `80` (an image's ExposedPorts key) -> (80, tcp)."""
    num, _, proto_s = key.partition("/")
    ports = _port_range(num, key)
    return ports[0], parse_proto(proto_s, key) if proto_s else Proto.TCP


def publish_all(exposed: Iterable[str], explicit: Sequence[PortBinding]) -> list[PortBinding]:
    """`-P`: every exposed port not already published by `-p` gets a random host port."""
    taken = {(b.container_port, b.proto) for b in explicit}
    out = list(explicit)
    for key in exposed:
        for port in _port_range(key.partition("/")[0], key):
            proto = parse_exposed(key)[1]
            if (port, proto) not in taken:
                taken.add((port, proto))
                out.append(PortBinding(port, proto))
    return out


# -- the Docker Engine API's shapes -------------------------------------------


def from_docker_bindings(port_bindings: Mapping[str, Any] | None) -> list[PortBinding]:
    """HostConfig.PortBindings `{"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}`."""
    out: list[PortBinding] = []
    for key, entries in (port_bindings or {}).items():
        port, proto = parse_exposed(key)
        for entry in entries or [{}]:
            host_ip = str(entry.get("HostIp") or "")
            if ":" in host_ip:
                continue  # the docker CLI adds a [::] twin for every binding: IPv4 only here
            if host_ip == "0.0.0.0":
                host_ip = ""
            host_port_s = str(entry.get("HostPort") or "")
            spec = f"{host_ip}:{host_port_s}:{port}/{proto}" if host_ip else (
                f"{host_port_s}:{port}/{proto}" if host_port_s else f"{port}/{proto}")
            out.extend(parse_port_spec(spec))
    return out


def to_docker_bindings(bindings: Iterable[PortBinding]) -> dict[str, list[dict[str, str]]]:
    """The inverse of `from_docker_bindings` (HostConfig.PortBindings as requested)."""
    out: dict[str, list[dict[str, str]]] = {}
    for b in bindings:
        out.setdefault(b.key, []).append(
            {"HostIp": b.host_ip, "HostPort": str(b.host_port) if b.host_port else ""})
    return out


def to_docker_ports(
    published: Iterable[PublishedPort], exposed: Iterable[str] = ()
) -> dict[str, list[dict[str, str]] | None]:
    """NetworkSettings.Ports: each published port with its actual host port; exposed
    but unpublished ports map to null, as Docker shows them."""
    out: dict[str, list[dict[str, str]] | None] = {}
    for key in exposed:
        port, proto = parse_exposed(key)
        out.setdefault(f"{port}/{proto}", None)
    for p in published:
        entries = out.get(p.binding.key) or []
        entries.append({"HostIp": p.binding.host_ip or "0.0.0.0",
                        "HostPort": str(p.binding.host_port)})
        out[p.binding.key] = entries
    return out


def to_docker_port_list(published: Iterable[PublishedPort]) -> list[dict[str, Any]]:
    """The `Ports` list of GET /containers/json (what `ps` shows)."""
    return [
        {"IP": p.binding.host_ip or "0.0.0.0", "PrivatePort": p.binding.container_port,
         "PublicPort": p.binding.host_port, "Type": str(p.binding.proto)}
        for p in published
    ]


def format_port_lines(published: Iterable[PublishedPort], port: str = "") -> list[str]:
    """`berth port CONTAINER [PORT[/PROTO]]` output: `80/tcp -> 0.0.0.0:32768`."""
    want: tuple[int, Proto] | None = parse_exposed(port) if port else None
    lines = []
    for p in sorted(published, key=lambda p: (p.binding.container_port, p.binding.proto)):
        b = p.binding
        if want is not None and (b.container_port, b.proto) != want:
            continue
        where = f"{b.host_ip or '0.0.0.0'}:{b.host_port}"
        lines.append(where if want is not None else f"{b.key} -> {where}")
    return lines
