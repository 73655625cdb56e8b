"""The value types of container networking: networks, endpoints, port bindings.

Pure data (frozen dataclasses and StrEnums); the provider, the records and the
renderers all speak these, and none of them touches the kernel.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum

DEFAULT_NETWORK = "bridge"
"""Docker's name for the default bridge network; its Linux bridge is `berth0`."""
DEFAULT_BRIDGE = "berth0"
DEFAULT_SUBNET = "10.88.0.0/16"
# User networks without --subnet get the next free /16 of this pool (as
# Docker takes 172.18-31/16): far from the usual 192.168/16 home networks.
USER_POOL = "10.89.0.0/16"
USER_POOL_LAST = "10.127.0.0/16"


OVERFLOW_PREFIX = "bx"
"""Overflow bridges of a network (a bridge takes at most 1023 ports): `bx` + 9 hex
of the network id + 3 hex of the overflow number, each joined to the network's
bridge by a trunk veth pair `tx...` (in the network's bridge) / `ty...`."""
TRUNK_PREFIX = "tx"
TRUNK_PEER_PREFIX = "ty"


def overflow_names(network_id: str, k: int) -> tuple[str, str, str]:
    """(overflow bridge, trunk end in the network's bridge, trunk end in the overflow)."""
    tail = f"{network_id[:9]}{k:03x}"
    return OVERFLOW_PREFIX + tail, TRUNK_PREFIX + tail, TRUNK_PEER_PREFIX + tail


def overflow_pattern(network_id: str) -> str:
    """nft's wildcard for every overflow bridge of a network."""
    return f"{OVERFLOW_PREFIX}{network_id[:9]}*"


class NetworkMode(StrEnum):
    NONE = "none"
    HOST = "host"
    BRIDGE = "bridge"
    """the default bridge, or any user-defined network by name"""


class Driver(StrEnum):
    BRIDGE = "bridge"


class Proto(StrEnum):
    TCP = "tcp"
    UDP = "udp"


class NetError(Exception):
    """An expected networking failure, with a one-line message for the user."""


class NetworkNotFound(NetError, LookupError):
    def __init__(self, ref: str) -> None:
        self.ref = ref
        super().__init__(f"network {ref} not found")


class NetworkInUse(NetError):
    def __init__(self, name: str, containers: list[str]) -> None:
        self.name = name
        self.containers = containers
        super().__init__(
            f"error while removing network: network {name} has active endpoints "
            f"({', '.join(c[:12] for c in containers)}); disconnect or remove them first"
        )


class PortInUse(NetError):
    def __init__(self, host_ip: str, host_port: int, proto: Proto, cause: str) -> None:
        self.host_ip, self.host_port, self.proto = host_ip, host_port, proto
        where = f"{host_ip or '0.0.0.0'}:{host_port}/{proto}"
        super().__init__(f"Bind for {where} failed: port is already allocated ({cause})")


class AddressExhausted(NetError):
    def __init__(self, network: str, subnet: str) -> None:
        super().__init__(f"no free address left in network {network} ({subnet})")


@dataclass(frozen=True)
class PortBinding:
    """One published port: host_ip "" means every host address; host_port 0 means
    "pick a free high port" (`-p 80`)."""

    container_port: int
    proto: Proto = Proto.TCP
    host_ip: str = ""
    host_port: int = 0

    @property
    def key(self) -> str:
        """Docker's port key, `80/tcp`."""
        return f"{self.container_port}/{self.proto}"


@dataclass(frozen=True)
class Network:
    """A network record: the default bridge or a user-defined bridge network."""

    id: str
    name: str
    bridge: str
    subnet: str
    gateway: str
    internal: bool = False
    driver: Driver = Driver.BRIDGE
    created: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    options: tuple[tuple[str, str], ...] = ()

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT_NETWORK

    @property
    def prefixlen(self) -> int:
        return ipaddress.IPv4Network(self.subnet).prefixlen


@dataclass(frozen=True)
class NetworkSpec:
    """What `berth network create` asks for; validated by `validate_spec`."""

    name: str
    subnet: str = ""
    gateway: str = ""
    internal: bool = False
    driver: Driver = Driver.BRIDGE
    labels: tuple[tuple[str, str], ...] = ()
    options: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Attachment:
    """A container's wish to join one network (`--network NAME --network-alias A --ip X`)."""

    network: str
    aliases: tuple[str, ...] = ()
    ip: str = ""


@dataclass(frozen=True)
class LinkRequest:
    """`--link name:alias`: the engine resolves the name to the target container."""

    alias: str
    container_id: str
    name: str
    env: tuple[str, ...] = ()
    exposed_ports: tuple[str, ...] = ()


@dataclass(frozen=True)
class Endpoint:
    """A container's interface on one network, as recorded."""

    container_id: str
    network_id: str
    network: str
    host_ifname: str
    ifname: str
    address: str
    prefixlen: int
    gateway: str
    mac: str
    aliases: tuple[str, ...] = ()
    name: str = ""
    bridge: str = ""
    """the Linux bridge the host end is in: the network's, or one of its overflow bridges"""


@dataclass(frozen=True)
class PublishedPort:
    """A port binding after allocation: host_port is never 0 here."""

    container_id: str
    binding: PortBinding
    container_ip: str


@dataclass(frozen=True)
class ContainerNetConfig:
    """Everything about a container that networking needs, from the engine."""

    name: str
    hostname: str
    attachments: tuple[Attachment, ...] = (Attachment(DEFAULT_NETWORK),)
    ports: tuple[PortBinding, ...] = ()
    links: tuple[LinkRequest, ...] = ()
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    extra_hosts: tuple[tuple[str, str], ...] = ()
    domainname: str = ""
    # What a `--link` to this container shows (ALIAS_ENV_*, ALIAS_PORT_*).
    env: tuple[str, ...] = ()
    exposed_ports: tuple[str, ...] = ()


@dataclass(frozen=True)
class ContainerNetResult:
    """What the engine gets back: files for /etc, link env vars, the endpoints and ports."""

    hosts: str
    resolv_conf: str
    hostname: str
    env: tuple[str, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    ports: tuple[PublishedPort, ...] = field(default_factory=tuple)
