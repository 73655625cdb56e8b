"""IP address management: pure choices over a subnet; the records persist them.

Addresses are handed out round-robin from a persisted cursor (the last one
given), skipping those in use: a freed address is not reused until the
subnet wraps around, so a stale ARP entry or a client still talking to a
removed container does not reach its successor at once. The uniqueness
itself is the records' primary key (network, address), so even a bug here
could not give one address to two containers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Container, Iterable

from runtime.net.model import USER_POOL, USER_POOL_LAST, AddressExhausted, NetError


class BadSubnet(NetError, ValueError):
    pass


def validate_subnet(subnet: str, gateway: str = "") -> tuple[str, str]:
    """(normalised subnet, gateway): the gateway defaults to the first host address."""
    try:
        net = ipaddress.IPv4Network(subnet, strict=False)
    except ValueError as e:
        raise BadSubnet(f"invalid subnet {subnet!r}: {e} (IPv4 CIDR, e.g. 10.90.0.0/24)") from None
    if str(net.network_address) != subnet.split("/")[0]:
        raise BadSubnet(f"invalid subnet {subnet!r}: host bits set (did you mean {net}?)")
    if net.prefixlen > 30:
        raise BadSubnet(f"subnet {subnet} is too small: use /30 or larger")
    if gateway:
        try:
            gw = ipaddress.IPv4Address(gateway)
        except ValueError:
            raise BadSubnet(f"invalid gateway {gateway!r}: not an IPv4 address") from None
        if gw not in net or gw in (net.network_address, net.broadcast_address):
            raise BadSubnet(f"gateway {gateway} is not a host address of subnet {net}")
    else:
        gw = net.network_address + 1
    return str(net), str(gw)


def overlaps(subnet: str, others: Iterable[str]) -> str | None:
    net = ipaddress.IPv4Network(subnet)
    for other in others:
        if net.overlaps(ipaddress.IPv4Network(other, strict=False)):
            return other
    return None


def pick_subnet(taken: Iterable[str]) -> str:
    """The first /16 of the user pool that overlaps nothing taken (networks, host routes)."""
    taken_list = list(taken)
    first = ipaddress.IPv4Network(USER_POOL)
    last = ipaddress.IPv4Network(USER_POOL_LAST)
    addr = int(first.network_address)
    while addr <= int(last.network_address):
        cand = f"{ipaddress.IPv4Address(addr)}/16"
        if overlaps(cand, taken_list) is None:
            return cand
        addr += 1 << 16
    raise BadSubnet(f"no free /16 left in {USER_POOL}..{USER_POOL_LAST}: give --subnet")


def next_address(
    network: str, subnet: str, gateway: str, used: Container[int], cursor: int
) -> int:
    """The next free host address after `cursor` (an int address), round robin."""
    net = ipaddress.IPv4Network(subnet)
    first = int(net.network_address) + 1
    last = int(net.broadcast_address) - 1
    size = last - first + 1
    gw = int(ipaddress.IPv4Address(gateway))
    start = cursor + 1 if first <= cursor < last else first
    for i in range(size):
        cand = first + (start - first + i) % size
        if cand != gw and cand not in used:
            return cand
    raise AddressExhausted(network, subnet)


def check_static(network: str, subnet: str, gateway: str, address: str,
                 used: Container[int]) -> int:
    """A requested `--ip`: inside the subnet, a host address, not the gateway, not used."""
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        raise BadSubnet(f"invalid address {address!r} for network {network}") from None
    net = ipaddress.IPv4Network(subnet)
    if ip not in net or ip in (net.network_address, net.broadcast_address):
        raise BadSubnet(f"address {address} is not a host address of {network} ({subnet})")
    if str(ip) == gateway or int(ip) in used:
        raise BadSubnet(f"address {address} is already in use on network {network}")
    return int(ip)


def mac_for(address: str) -> str:
    """Docker's scheme: 02:42 + the IPv4 address, so a reused address keeps its MAC
    and neighbours' ARP caches stay right."""
    octets = ipaddress.IPv4Address(address).packed
    return "02:42:" + ":".join(f"{b:02x}" for b in octets)


def to_str(address: int) -> str:
    return str(ipaddress.IPv4Address(address))


def to_int(address: str) -> int:
    return int(ipaddress.IPv4Address(address))
