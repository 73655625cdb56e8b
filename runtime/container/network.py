"""The seam to runtime/net: the engine creates the netns, the provider wires it.

The engine handles `none` (a fresh netns with only loopback) and `host` (no
netns of its own). For any other mode (bridge, a user network) the engine
bind-mounts the container's netns at `<exec-root>/netns/<container-id>` and
calls `setup` before the container's process is released to exec, and
`teardown` after it exited (and on remove), idempotently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Protocol


@dataclass(frozen=True)
class NetworkRequest:
    container_id: str
    name: str
    hostname: str
    mode: str                                  # "bridge" or a network name
    options: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class NetworkResult:
    """What inspect shows under NetworkSettings; the API shapes it into Docker's JSON."""

    ip_address: str = ""
    gateway: str = ""
    mac_address: str = ""
    ports: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    networks: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    # Files to bind into the container (e.g. /etc/hosts, /etc/resolv.conf): dst -> host src.
    files: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


class NetworkProvider(Protocol):
    async def setup(self, container_id: str, netns_path: Path,
                    request: NetworkRequest) -> NetworkResult: ...

    async def teardown(self, container_id: str) -> None: ...
