"""A small typed etcd v3 client over etcd's JSON gRPC gateway, and `start_etcd`.

Why the gateway: the `etcd3` PyPI package is unmaintained and breaks on
current protobuf, while every etcd since 3.4 serves the v3 API as JSON over
plain HTTP at `/v3/...` (keys and values base64, int64 fields as strings).
Bookworm ships etcd 3.4, trixie 3.5: both answer on `/v3/`.

Only what Berth needs: range (one key or a prefix), put, delete, txn with
compare-and-swap, and leases (grant, keepalive, revoke). Every request is
counted in `EtcdClient.ops` so callers can report etcd operations per task;
`served_requests` reads the server's side of that count (etcd's /metrics).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from hostos.errors import HostosError
from runtime.run import run

log = logging.getLogger("hostos.etcd")

ETCD_BINARY = "/usr/bin/etcd"


class EtcdError(HostosError):
    """etcd refused a request or could not be reached."""

    def __init__(self, endpoint: str, what: str, cause: str) -> None:
        super().__init__(f"etcd at {endpoint}: {what}: {cause}")
        self.endpoint = endpoint
        self.cause = cause


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def _unb64(data: str) -> bytes:
    return base64.b64decode(data)


def prefix_end(prefix: str) -> bytes:
    """The range_end that selects every key starting with prefix (etcd's rule)."""
    raw = bytearray(prefix.encode())
    for i in range(len(raw) - 1, -1, -1):
        if raw[i] < 0xFF:
            raw[i] += 1
            return bytes(raw[: i + 1])
    return b"\0"  # prefix is all 0xff: the range runs to the end of the keyspace


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    def json(self) -> Any:
        return json.loads(self.value)

    @classmethod
    def from_gateway(cls, kv: dict[str, Any]) -> KeyValue:
        # The gateway omits zero-valued fields (proto3 JSON), hence the defaults.
        return cls(
            key=_unb64(kv["key"]).decode(),
            value=_unb64(kv.get("value", "")),
            create_revision=int(kv.get("create_revision", 0)),
            mod_revision=int(kv.get("mod_revision", 0)),
            version=int(kv.get("version", 0)),
            lease=int(kv.get("lease", 0)),
        )


@dataclass(frozen=True)
class RangeResult:
    kvs: tuple[KeyValue, ...]
    revision: int  # the store revision the read saw


class CompareTarget(StrEnum):
    VERSION = "VERSION"
    CREATE = "CREATE"
    MOD = "MOD"
    VALUE = "VALUE"
    LEASE = "LEASE"


class CompareResult(StrEnum):
    EQUAL = "EQUAL"
    GREATER = "GREATER"
    LESS = "LESS"
    NOT_EQUAL = "NOT_EQUAL"


_TARGET_FIELD = {
    CompareTarget.VERSION: "version",
    CompareTarget.CREATE: "create_revision",
    CompareTarget.MOD: "mod_revision",
    CompareTarget.VALUE: "value",
    CompareTarget.LEASE: "lease",
}


@dataclass(frozen=True)
class Compare:
    key: str
    target: CompareTarget
    result: CompareResult
    operand: int | bytes
    range_end: bytes | None = None

    @classmethod
    def mod_revision(cls, key: str, revision: int) -> Compare:
        """True iff key's mod_revision is revision (0: the key does not exist)."""
        return cls(key, CompareTarget.MOD, CompareResult.EQUAL, revision)

    def gateway(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "key": _b64(self.key), "target": self.target.value, "result": self.result.value,
        }
        operand = self.operand
        body[_TARGET_FIELD[self.target]] = (
            _b64(operand) if isinstance(operand, bytes) else str(operand)
        )
        if self.range_end is not None:
            body["range_end"] = _b64(self.range_end)
        return body


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0

    def gateway(self) -> dict[str, Any]:
        req: dict[str, Any] = {"key": _b64(self.key), "value": _b64(self.value)}
        if self.lease:
            req["lease"] = str(self.lease)
        return {"request_put": req}


def _key_range(key: str, prefix: bool) -> dict[str, Any]:
    """A key, or with prefix every key under it (etcd's [key, range_end))."""
    req: dict[str, Any] = {"key": _b64(key)}
    if prefix:
        req["range_end"] = _b64(prefix_end(key))
    return req


@dataclass(frozen=True)
class Delete:
    key: str
    prefix: bool = False

    def gateway(self) -> dict[str, Any]:
        return {"request_delete_range": _key_range(self.key, self.prefix)}


@dataclass(frozen=True)
class Get:
    key: str
    prefix: bool = False

    def gateway(self) -> dict[str, Any]:
        return {"request_range": _key_range(self.key, self.prefix)}


Op = Put | Delete | Get


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    # One entry per op of the branch that ran: the KeyValues a Get returned,
    # an empty tuple for Put and Delete.
    responses: tuple[tuple[KeyValue, ...], ...] = field(default=())


def _range_body(key: str, prefix: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"key": _b64(key)}
    if prefix:
        body["range_end"] = _b64(prefix_end(key))
    return body


# The gRPC method each gateway path becomes (what etcd's own counters name).
GATEWAY_METHODS = {
    "kv/range": "Range", "kv/put": "Put", "kv/deleterange": "DeleteRange", "kv/txn": "Txn",
    "lease/grant": "LeaseGrant", "lease/keepalive": "LeaseKeepAlive",
    "lease/revoke": "LeaseRevoke",
}


class EtcdClient:
    """Async etcd v3 client on one endpoint (http://host:port), on aiohttp.

    Use as `async with EtcdClient(url) as etcd:`; `ops` counts requests sent,
    `calls` the same by etcd method (Range, Txn, ...).
    """

    def __init__(self, endpoint: str, *, timeout: float = 10.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.ops = 0
        self.calls: Counter[str] = Counter()
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> EtcdClient:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self._session is None:
            raise RuntimeError("EtcdClient used outside `async with`")
        self.ops += 1
        self.calls[GATEWAY_METHODS.get(path, path)] += 1
        url = f"{self.endpoint}/v3/{path}"
        try:
            async with self._session.post(url, json=body) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise EtcdError(self.endpoint, path, _gateway_error(resp.status, text))
        except (aiohttp.ClientError, TimeoutError) as e:
            raise EtcdError(self.endpoint, path, str(e) or type(e).__name__) from e
        data: dict[str, Any] = json.loads(text)
        return data

    async def get(self, key: str) -> KeyValue | None:
        kvs = (await self.range(key)).kvs
        return kvs[0] if kvs else None

    async def range(self, key: str, *, prefix: bool = False) -> RangeResult:
        data = await self._call("kv/range", _range_body(key, prefix))
        return RangeResult(
            kvs=tuple(KeyValue.from_gateway(kv) for kv in data.get("kvs", ())),
            revision=int(data["header"]["revision"]),
        )

    async def put(self, key: str, value: str | bytes, *, lease: int = 0) -> int:
        raw = value.encode() if isinstance(value, str) else value
        data = await self._call("kv/put", Put(key, raw, lease).gateway()["request_put"])
        return int(data["header"]["revision"])

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        """Delete key (or every key under prefix); returns how many were deleted."""
        data = await self._call("kv/deleterange", _range_body(key, prefix))
        return int(data.get("deleted", 0))

    async def txn(
        self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = (),
    ) -> TxnResult:
        data = await self._call("kv/txn", {
            "compare": [c.gateway() for c in compare],
            "success": [op.gateway() for op in success],
            "failure": [op.gateway() for op in failure],
        })
        responses = []
        for r in data.get("responses", ()):
            rng = r.get("response_range")
            kvs = rng.get("kvs", ()) if rng else ()
            responses.append(tuple(KeyValue.from_gateway(kv) for kv in kvs))
        return TxnResult(
            succeeded=bool(data.get("succeeded", False)),
            revision=int(data["header"]["revision"]),
            responses=tuple(responses),
        )

    async def lease_grant(self, ttl: int) -> int:
        data = await self._call("lease/grant", {"TTL": ttl})
        if data.get("error"):
            raise EtcdError(self.endpoint, "lease/grant", str(data["error"]))
        return int(data["ID"])

    async def lease_keepalive(self, lease: int) -> int:
        """Refresh a lease; returns its new TTL, 0 if it has already expired."""
        data = await self._call("lease/keepalive", {"ID": str(lease)})
        return int(data.get("result", {}).get("TTL", 0))

    async def lease_revoke(self, lease: int) -> None:
        try:
            await self._call("lease/revoke", {"ID": str(lease)})
        except EtcdError as e:
            if "lease not found" not in e.cause:
                raise

    async def version(self) -> str:
        if self._session is None:
            raise RuntimeError("EtcdClient used outside `async with`")
        try:
            async with self._session.get(f"{self.endpoint}/version") as resp:
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise EtcdError(self.endpoint, "version", str(e) or type(e).__name__) from e
        return str(data["etcdserver"])


_STARTED = re.compile(r'^grpc_server_started_total\{(?P<labels>[^}]*)\} (?P<n>[0-9.e+]+)$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def served_requests(endpoint: str, *, timeout: float = 5.0) -> Counter[str]:
    """etcd's own count of the v3 requests it has served, by method (its /metrics).

    Counted by the server, so it covers every client at once (hosts in VMs
    included), which a client-side counter like `EtcdClient.ops` cannot.
    Gateway calls count as the gRPC call they become (a keepalive as one
    LeaseKeepAlive stream); etcd's own /health probes are not in it.
    """
    try:
        with urllib.request.urlopen(f"{endpoint.rstrip('/')}/metrics", timeout=timeout) as r:
            text = r.read().decode()
    except (OSError, urllib.error.URLError) as e:
        raise EtcdError(endpoint, "metrics", str(e)) from e
    out: Counter[str] = Counter()
    for line in text.splitlines():
        m = _STARTED.match(line)
        if m:
            labels = dict(_LABEL.findall(m["labels"]))
            if labels.get("grpc_service", "").startswith("etcdserverpb.") and float(m["n"]):
                out[labels["grpc_method"]] += int(float(m["n"]))
    return out


def _gateway_error(status: int, text: str) -> str:
    try:
        data = json.loads(text)
        return f"HTTP {status}: {data.get('message') or data.get('error') or text}"
    except ValueError:
        return f"HTTP {status}: {text.strip()[:200]}"


# ---------------------------------------------------------------------------
# A throw-away etcd for tests and `hostos fleet simulate`.


@dataclass(frozen=True)
class EtcdServer:
    endpoint: str  # http://127.0.0.1:PORT
    pid: int
    data_dir: Path
    client_port: int


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def etcd_cmd(data_dir: Path, client_port: int, peer_port: int, *,
             name: str = "berth", host: str = "127.0.0.1") -> list[str]:
    client = f"http://{host}:{client_port}"
    peer = f"http://{host}:{peer_port}"
    return [
        ETCD_BINARY, "--name", name, "--data-dir", str(data_dir),
        "--listen-client-urls", client, "--advertise-client-urls", client,
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"{name}={peer}", "--initial-cluster-state", "new",
        # A throw-away member: no need to fsync every write at test speed.
        "--unsafe-no-fsync", "--log-level", "warn",
    ]


def _ready(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/health", timeout=1) as resp:
            return bool(json.load(resp).get("health") in ("true", True))
    except (OSError, urllib.error.URLError, ValueError):
        return False


@contextlib.contextmanager
def start_etcd(*, host: str = "127.0.0.1", timeout: float = 30.0) -> Iterator[EtcdServer]:
    """Run a single-member etcd on random ports with a temp data dir; stop it by PID."""
    if not os.access(ETCD_BINARY, os.X_OK):
        raise HostosError(f"{ETCD_BINARY} not found: install etcd-server (scripts/install-deps.sh)")
    data_dir = Path(tempfile.mkdtemp(prefix="berth-etcd-"))
    client_port, peer_port = free_port(host), free_port(host)
    endpoint = f"http://{host}:{client_port}"
    argv = etcd_cmd(data_dir / "member", client_port, peer_port, host=host)
    if "--unsafe-no-fsync" in argv and not _supports_no_fsync():
        argv.remove("--unsafe-no-fsync")
    log.debug("+ %s", " ".join(argv))
    logf = (data_dir / "etcd.log").open("wb")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
    try:
        deadline = time.monotonic() + timeout
        while not _ready(endpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (data_dir / "etcd.log").read_text(errors="replace")[-1500:]
                raise HostosError(f"etcd on {endpoint} did not start:\n{tail}")
            time.sleep(0.1)
        yield EtcdServer(endpoint, proc.pid, data_dir, client_port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logf.close()
        shutil.rmtree(data_dir, ignore_errors=True)


@functools.cache
def _supports_no_fsync() -> bool:
    """--unsafe-no-fsync is missing from some etcd builds; ask the binary once."""
    out = run([ETCD_BINARY, "--help"], check=False)
    return "--unsafe-no-fsync" in (out.stdout + out.stderr)
