"""Each host's report to the fleet: booted version, update state, last error.

Kept at `/berth/hosts/<group>/<node-id>` under an etcd lease, so a host
that goes away (or stops reporting) drops out of `hostos fleet status` by
itself when the lease runs out. Each report grants a fresh lease, writes
the record with it and revokes the previous one: three requests, no
long-lived keepalive stream, which suits an agent started by a timer.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from hostos.etcd import KeyValue, RangeResult

HOSTS_PREFIX = "/berth/hosts/"
DEFAULT_TTL = 900  # seconds; longer than the agent's timer interval


class Etcd(Protocol):
    async def get(self, key: str) -> KeyValue | None: ...

    async def put(self, key: str, value: str | bytes, *, lease: int = 0) -> int: ...

    async def range(self, key: str, *, prefix: bool = False) -> RangeResult: ...

    async def lease_grant(self, ttl: int) -> int: ...

    async def lease_revoke(self, lease: int) -> None: ...


@dataclass(frozen=True)
class HostReport:
    node_id: str
    hostname: str
    group: str
    wave: int
    booted_version: str
    update_state: str
    last_error: str = ""
    target_version: str = ""
    time: float = 0.0

    def key(self) -> str:
        return f"{HOSTS_PREFIX}{self.group}/{self.node_id}"

    @classmethod
    def from_json(cls, data: Any) -> HostReport:
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in fields})


async def report(etcd: Etcd, host: HostReport, *, ttl: int = DEFAULT_TTL) -> HostReport:
    """Publish this host's state under a fresh lease (stamped with the time now)."""
    previous = await etcd.get(host.key())
    if not host.wave and previous is not None:
        # The agent learns its wave from a release's plan; keep it between releases.
        host = replace(host, wave=int(previous.json().get("wave", 0)))
    host = replace(host, time=time.time())
    lease = await etcd.lease_grant(ttl)
    await etcd.put(host.key(), json.dumps(asdict(host)), lease=lease)
    if previous is not None and previous.lease and previous.lease != lease:
        await etcd.lease_revoke(previous.lease)
    return host


async def hosts(etcd: Etcd) -> list[HostReport]:
    res = await etcd.range(HOSTS_PREFIX, prefix=True)
    return sorted((HostReport.from_json(kv.json()) for kv in res.kvs),
                  key=lambda h: (h.group, h.wave, h.hostname))
