"""Docker Engine API shapes of networking records (inspect, network inspect)."""

from __future__ import annotations

import hashlib
from typing import Any

from runtime.net.model import Endpoint, Network


def endpoint_id(ep: Endpoint) -> str:
    return hashlib.sha256(f"{ep.container_id}/{ep.network_id}".encode()).hexdigest()


def docker_endpoint(ep: Endpoint, net: Network | None = None) -> dict[str, Any]:
    """One entry of NetworkSettings.Networks (and of a network's Containers)."""
    return {
        "IPAMConfig": None, "Links": None,
        "Aliases": list(ep.aliases) or None,
        "MacAddress": ep.mac, "DriverOpts": None,
        "NetworkID": ep.network_id, "EndpointID": endpoint_id(ep),
        "Gateway": "" if net is not None and net.internal else ep.gateway,
        "IPAddress": ep.address, "IPPrefixLen": ep.prefixlen,
        "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
        "DNSNames": [n for n in (ep.name, *ep.aliases, ep.container_id[:12]) if n],
    }
