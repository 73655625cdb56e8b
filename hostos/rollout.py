"""Staged rollouts: waves keyed on the machine id, and the fleet-wide halt.

A release carries a rollout plan: waves, each a cumulative share of the
fleet and the time from which that share may install. A host's place in
the fleet is a stable hash of its machine id, a number in [0, 100): the
host belongs to the first wave whose share exceeds it, so a wave is the
same set of hosts for every release (Bottlerocket's "seed", Zincati's
rollout wariness).

The halt: when a host rolls back from a release (its health check failed
and systemd-boot fell back), it records `/berth/rollout/halted/<version>`
in etcd. Every host checks that key before installing, so the rollout of
that version stops fleet-wide until `hostos fleet resume` deletes the key,
or a newer (fixed) release is published, which has no halt of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from hostos.etcd import Compare, KeyValue, Op, Put, RangeResult, TxnResult

HALT_PREFIX = "/berth/rollout/halted/"
# Our app id for systemd's app-specific machine ids (sd_id128_get_machine_app_specific),
# so that the id a host shows the fleet is not its raw /etc/machine-id.
BERTH_APP_ID = bytes.fromhex("6f0b1c7e2a9d4e5b8c3f41d2a7e95b60")


class RolloutError(ValueError):
    """A rollout plan that cannot be followed; the message names the field."""


@dataclass(frozen=True)
class Wave:
    percent: float  # cumulative share of the fleet, in (0, 100]
    start: datetime  # aware, UTC: from then on this share may install

    def to_json(self) -> dict[str, Any]:
        return {"percent": self.percent, "start": self.start.isoformat()}


@dataclass(frozen=True)
class RolloutPlan:
    waves: tuple[Wave, ...]

    def __post_init__(self) -> None:
        if not self.waves:
            raise RolloutError("a rollout plan needs at least one wave")
        last_pct, last_start = 0.0, None
        for i, w in enumerate(self.waves, 1):
            if not last_pct < w.percent <= 100:
                raise RolloutError(f"wave {i}: percent {w.percent} must grow, within (0, 100]")
            if w.start.tzinfo is None:
                raise RolloutError(f"wave {i}: start {w.start} needs a time zone")
            if last_start is not None and w.start < last_start:
                raise RolloutError(f"wave {i}: starts before wave {i - 1}")
            last_pct, last_start = w.percent, w.start
        if last_pct != 100:
            raise RolloutError(f"the last wave must cover 100% of the fleet, not {last_pct}%")

    def wave_of(self, position: float) -> int:
        """0-based index of the wave a host at this fleet position belongs to."""
        for i, w in enumerate(self.waves):
            if position < w.percent:
                return i
        return len(self.waves) - 1

    def to_json(self) -> dict[str, Any]:
        return {"waves": [w.to_json() for w in self.waves]}

    @classmethod
    def from_json(cls, data: Any) -> RolloutPlan:
        if not isinstance(data, dict) or not isinstance(data.get("waves"), list):
            raise RolloutError("rollout: expected {\"waves\": [{\"percent\", \"start\"}, ...]}")
        waves = []
        for i, w in enumerate(data["waves"], 1):
            try:
                start = datetime.fromisoformat(str(w["start"]))
                waves.append(Wave(float(w["percent"]), start))
            except (KeyError, TypeError, ValueError) as e:
                raise RolloutError(f"wave {i}: {w!r}: {e}") from e
        return cls(tuple(waves))

    @classmethod
    def from_release(cls, rollout: Any) -> RolloutPlan | None:
        """The plan in a release manifest's `rollout`; None (everyone now) if it has no waves."""
        if not rollout or not rollout.get("waves"):
            return None
        return cls.from_json(rollout)

    @classmethod
    def immediate(cls, now: datetime | None = None) -> RolloutPlan:
        return cls((Wave(100.0, now or datetime.now(UTC)),))


_SPEC_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)%?@\+?(\d+)([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_plan_spec(spec: str, published: datetime) -> RolloutPlan:
    """`10%@0,50%@30m,100%@2h`: cumulative shares with delays after publishing.

    For `hostos release --rollout SPEC`, which stores the absolute plan.
    """
    waves = []
    for part in spec.split(","):
        m = _SPEC_RE.match(part)
        if not m:
            raise RolloutError(f"rollout wave {part.strip()!r}: expected PERCENT%@DELAY "
                               "like 10%@0 or 100%@2h")
        delay = timedelta(seconds=int(m.group(2)) * _UNITS[m.group(3)])
        waves.append(Wave(float(m.group(1)), published + delay))
    return RolloutPlan(tuple(waves))


def app_specific_id(machine_id: str, app_id: bytes = BERTH_APP_ID) -> str:
    """systemd's sd_id128_get_machine_app_specific(): HMAC-SHA256, UUID v4 bits."""
    digest = bytearray(hmac.new(bytes.fromhex(machine_id), app_id, hashlib.sha256).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x40
    digest[8] = (digest[8] & 0x3F) | 0x80
    return digest.hex()


def read_machine_id(root: Path = Path("/")) -> str:
    text = (root / "etc/machine-id").read_text().strip()
    if not re.fullmatch(r"[0-9a-f]{32}", text):
        raise RolloutError(f"{root / 'etc/machine-id'}: not a machine id: {text[:40]!r}")
    return text


def fleet_position(machine_id: str) -> float:
    """This host's stable place in the fleet, uniform in [0, 100)."""
    digest = hashlib.sha256(b"berth-rollout\0" + machine_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


class Decision(StrEnum):
    INSTALL = "install"
    WAIT = "wait"  # this host's wave has not started yet
    HALTED = "halted"  # a host rolled back from this version; the fleet stops


@dataclass(frozen=True)
class Halt:
    version: str
    host: str
    reason: str
    time: float

    @classmethod
    def from_kv(cls, kv: KeyValue) -> Halt:
        d = kv.json()
        return cls(str(d["version"]), str(d["host"]), str(d["reason"]), float(d["time"]))


@dataclass(frozen=True)
class Gate:
    decision: Decision
    wave: int  # 1-based, as shown to people
    position: float
    reason: str


def decide(version: str, plan: RolloutPlan | None, machine_id: str, now: datetime,
           halt: Halt | None) -> Gate:
    """Whether this host may install version now; pure, so tests drive the clock."""
    plan = plan or RolloutPlan.immediate(datetime.fromtimestamp(0, UTC))
    position = fleet_position(machine_id)
    index = plan.wave_of(position)
    wave = plan.waves[index]
    if halt is not None:
        return Gate(Decision.HALTED, index + 1, position,
                    f"rollout of {version} halted: {halt.host} rolled back ({halt.reason}); "
                    "`hostos fleet resume` or a fixed release continues it")
    if now < wave.start:
        return Gate(Decision.WAIT, index + 1, position,
                    f"wave {index + 1} of {len(plan.waves)} starts at {wave.start.isoformat()}")
    return Gate(Decision.INSTALL, index + 1, position, f"wave {index + 1} is open")


class Etcd(Protocol):
    async def get(self, key: str) -> KeyValue | None: ...

    async def delete(self, key: str, *, prefix: bool = False) -> int: ...

    async def range(self, key: str, *, prefix: bool = False) -> RangeResult: ...

    async def txn(self, compare: list[Compare], success: list[Op],
                  failure: list[Op] = ...) -> TxnResult: ...


async def check(etcd: Etcd, version: str, plan: RolloutPlan | None, machine_id: str,
                now: datetime | None = None) -> Gate:
    """decide() with the fleet's halt record read from etcd (one request)."""
    return decide(version, plan, machine_id, now or datetime.now(UTC),
                  await halt_of(etcd, version))


async def halt_of(etcd: Etcd, version: str) -> Halt | None:
    """The halt record of version's rollout, if a host stopped it (one request)."""
    kv = await etcd.get(HALT_PREFIX + version)
    return Halt.from_kv(kv) if kv else None


async def halt(etcd: Etcd, version: str, reason: str, host: str = "") -> bool:
    """Stop the rollout of version fleet-wide; the first host to report wins."""
    record = {"version": version, "host": host or socket.gethostname(), "reason": reason,
              "time": time.time()}
    key = HALT_PREFIX + version
    res = await etcd.txn([Compare.mod_revision(key, 0)], [Put(key, json.dumps(record).encode())])
    return res.succeeded


async def resume(etcd: Etcd, version: str | None = None) -> list[str]:
    """Lift the halt of one version (or all); returns the versions resumed."""
    halts = await halted(etcd)
    chosen = [h.version for h in halts if version is None or h.version == version]
    for v in chosen:
        await etcd.delete(HALT_PREFIX + v)
    return chosen


async def halted(etcd: Etcd) -> list[Halt]:
    res = await etcd.range(HALT_PREFIX, prefix=True)
    return [Halt.from_kv(kv) for kv in res.kvs]
