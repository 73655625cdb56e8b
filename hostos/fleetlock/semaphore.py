"""A counting semaphore per reboot group, kept in etcd and changed by CAS.

Layout under the prefix (default `/berth/fleetlock`):

    groups/<group>/config     {"slots": N, "max_hold_seconds": S}  (optional)
    groups/<group>/semaphore  {"holders": {"<id>": {"since": T, "server": ...}}}
    audit/<group>/<ns>-<rand> {"op", "id", "holders", "time", "server"}

Every change reads the semaphore and writes it back in a transaction that
compares its mod_revision with the one read, so two servers behind one load
balancer (or two requests in one server) can never both take the last slot:
the loser's transaction fails and it retries on fresh data. The audit
record is written in the same transaction, so the audit log is exactly the
sequence of semaphore states; its keys' mod_revisions order it.

Stale holders (a host that took a slot and never came back to
steady-state) are dropped once they have held it for `max_hold_seconds`,
as part of the next change to the group.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from hostos.etcd import Compare, Get, KeyValue, Op, Put, RangeResult, TxnResult

DEFAULT_PREFIX = "/berth/fleetlock"
DEFAULT_SLOTS = 1
DEFAULT_MAX_HOLD_SECONDS = 3600
MAX_CAS_ATTEMPTS = 64


class Etcd(Protocol):
    """The part of hostos.etcd.EtcdClient the semaphore needs."""

    async def txn(self, compare: list[Compare], success: list[Op],
                  failure: list[Op] = ...) -> TxnResult: ...

    async def range(self, key: str, *, prefix: bool = False) -> RangeResult: ...

    async def put(self, key: str, value: str | bytes, *, lease: int = 0) -> int: ...


class AuditOp(StrEnum):
    LOCK = "lock"
    UNLOCK = "unlock"
    EXPIRE = "expire"


@dataclass(frozen=True)
class GroupConfig:
    slots: int = DEFAULT_SLOTS
    max_hold_seconds: int = DEFAULT_MAX_HOLD_SECONDS

    def __post_init__(self) -> None:
        if self.slots < 0:
            raise ValueError(f"slots must be >= 0, not {self.slots}")
        if self.max_hold_seconds <= 0:
            raise ValueError(f"max_hold_seconds must be > 0, not {self.max_hold_seconds}")

    def to_json(self) -> str:
        return json.dumps({"slots": self.slots, "max_hold_seconds": self.max_hold_seconds})

    @classmethod
    def from_json(cls, data: Any, default: GroupConfig) -> GroupConfig:
        if not isinstance(data, dict):
            return default
        return cls(
            slots=int(data.get("slots", default.slots)),
            max_hold_seconds=int(data.get("max_hold_seconds", default.max_hold_seconds)),
        )


@dataclass(frozen=True)
class Holder:
    id: str
    since: float
    server: str


@dataclass(frozen=True)
class LockOutcome:
    granted: bool
    holders: tuple[Holder, ...]
    slots: int
    expired: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuditEntry:
    revision: int
    op: AuditOp
    id: str
    holders: tuple[str, ...]
    time: float
    server: str


@dataclass
class _State:
    """One read of a group: its config and holders, and the revision to CAS on."""

    config: GroupConfig
    mod_revision: int
    holders: dict[str, Holder] = field(default_factory=dict)


class FleetSemaphore:
    """RecursiveLock and UnlockIfHeld for every group, on one etcd."""

    def __init__(self, etcd: Etcd, *, prefix: str = DEFAULT_PREFIX,
                 default: GroupConfig = GroupConfig(), server: str = "",
                 clock: Callable[[], float] = time.time) -> None:
        self.etcd = etcd
        self.prefix = prefix.rstrip("/")
        self.default = default
        self.server = server or secrets.token_hex(4)
        self.clock = clock

    def _sem_key(self, group: str) -> str:
        return f"{self.prefix}/groups/{group}/semaphore"

    def config_key(self, group: str) -> str:
        return f"{self.prefix}/groups/{group}/config"

    def audit_prefix(self, group: str) -> str:
        return f"{self.prefix}/audit/{group}/"

    async def set_config(self, group: str, config: GroupConfig) -> None:
        await self.etcd.put(self.config_key(group), config.to_json())

    async def _read(self, group: str) -> _State:
        # One transaction without compares = one consistent snapshot of both keys.
        res = await self.etcd.txn([], [Get(self._sem_key(group)), Get(self.config_key(group))])
        sem, cfg = res.responses
        config = GroupConfig.from_json(cfg[0].json(), self.default) if cfg else self.default
        state = _State(config, sem[0].mod_revision if sem else 0)
        if sem:
            for hid, h in sem[0].json().get("holders", {}).items():
                state.holders[hid] = Holder(hid, float(h["since"]), str(h.get("server", "")))
        return state

    def _expire(self, state: _State, now: float) -> list[str]:
        stale = [h.id for h in state.holders.values()
                 if now - h.since >= state.config.max_hold_seconds]
        for hid in stale:
            del state.holders[hid]
        return stale

    def _audit(self, group: str, op: AuditOp, hid: str, holders: dict[str, Holder],
               now: float) -> Put:
        key = f"{self.audit_prefix(group)}{time.time_ns():020d}-{secrets.token_hex(4)}"
        record = {"op": op.value, "id": hid, "holders": sorted(holders), "time": now,
                  "server": self.server}
        return Put(key, json.dumps(record).encode())

    async def _write(self, group: str, state: _State, audit: list[Put]) -> bool:
        body = {"holders": {h.id: {"since": h.since, "server": h.server}
                            for h in state.holders.values()}}
        res = await self.etcd.txn(
            [Compare.mod_revision(self._sem_key(group), state.mod_revision)],
            [Put(self._sem_key(group), json.dumps(body).encode()), *audit],
        )
        return res.succeeded

    async def lock(self, group: str, hid: str) -> LockOutcome:
        """RecursiveLock: take a slot, or confirm that hid already holds one."""
        for _ in range(MAX_CAS_ATTEMPTS):
            state = await self._read(group)
            now = self.clock()
            expired = self._expire(state, now)
            audit = [self._audit(group, AuditOp.EXPIRE, e, state.holders, now) for e in expired]
            granted = hid in state.holders
            if not granted and len(state.holders) < state.config.slots:
                state.holders[hid] = Holder(hid, now, self.server)
                audit.append(self._audit(group, AuditOp.LOCK, hid, state.holders, now))
                granted = True
            if audit and not await self._write(group, state, audit):
                continue  # someone changed the group since our read: start over
            return LockOutcome(granted, tuple(state.holders.values()), state.config.slots,
                               tuple(expired))
        raise ContentionError(group)

    async def unlock(self, group: str, hid: str) -> LockOutcome:
        """UnlockIfHeld: release hid's slot if it holds one; only hid's own."""
        for _ in range(MAX_CAS_ATTEMPTS):
            state = await self._read(group)
            if hid not in state.holders:
                return LockOutcome(True, tuple(state.holders.values()), state.config.slots)
            now = self.clock()
            del state.holders[hid]
            if await self._write(group, state,
                                 [self._audit(group, AuditOp.UNLOCK, hid, state.holders, now)]):
                return LockOutcome(True, tuple(state.holders.values()), state.config.slots)
        raise ContentionError(group)

    async def holders(self, group: str) -> tuple[tuple[Holder, ...], GroupConfig]:
        state = await self._read(group)
        return tuple(state.holders.values()), state.config

    async def groups(self) -> list[str]:
        res = await self.etcd.range(f"{self.prefix}/groups/", prefix=True)
        names = {kv.key[len(self.prefix) + len("/groups/"):].split("/")[0] for kv in res.kvs}
        return sorted(names)

    async def audit_log(self, group: str) -> list[AuditEntry]:
        res = await self.etcd.range(self.audit_prefix(group), prefix=True)
        return sorted((_entry(kv) for kv in res.kvs), key=lambda e: e.revision)


def _entry(kv: KeyValue) -> AuditEntry:
    d = kv.json()
    return AuditEntry(kv.mod_revision, AuditOp(d["op"]), d["id"], tuple(d["holders"]),
                      float(d["time"]), d.get("server", ""))


class ContentionError(RuntimeError):
    def __init__(self, group: str) -> None:
        super().__init__(f"group {group!r}: gave up after {MAX_CAS_ATTEMPTS} conflicting "
                         "transactions; retry")
        self.group = group


def max_concurrent_holders(log: list[AuditEntry]) -> int:
    """The most hosts that were ever between pre-reboot and steady-state at once."""
    return max((len(e.holders) for e in log), default=0)
