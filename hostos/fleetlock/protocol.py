"""The FleetLock wire format (coreos/airlock docs/protocol-specs.md, Zincati).

Two POST endpoints relative to a base URL, `v1/pre-reboot` (RecursiveLock)
and `v1/steady-state` (UnlockIfHeld); each request carries the header
`fleet-lock-protocol: true` and the body
`{"client_params": {"id": ..., "group": ...}}`. Older Zincati and airlock
send `node_uuid` instead of `id`; both are accepted. 200 means success,
any other status a failure; error bodies are `{"kind": ..., "value": ...}`
as airlock sends them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

PROTOCOL_HEADER = "fleet-lock-protocol"
PRE_REBOOT = "v1/pre-reboot"
STEADY_STATE = "v1/steady-state"
DEFAULT_GROUP = "default"
# Spec: "Group is a textual label conforming to the regexp ^[a-zA-Z0-9.-]+$".
GROUP_RE = re.compile(r"^[a-zA-Z0-9.-]+$")
MAX_ID_LENGTH = 256


class ErrorKind(StrEnum):
    BAD_REQUEST = "bad_request"
    FAILED_LOCK = "failed_lock"
    FAILED_UNLOCK = "failed_unlock"
    BACKEND = "backend_unavailable"


class ProtocolError(ValueError):
    """A request that breaks the protocol; the server answers 400."""


@dataclass(frozen=True)
class ClientParams:
    id: str
    group: str

    def body(self) -> dict[str, Any]:
        return {"client_params": {"id": self.id, "group": self.group}}


def validate_group(group: str) -> str:
    if not GROUP_RE.match(group):
        raise ProtocolError(f"group {group!r} must match {GROUP_RE.pattern}")
    return group


def parse_request(header: str | None, body: Any) -> ClientParams:
    """Validate one request's header and decoded JSON body."""
    if header != "true":
        raise ProtocolError(f"missing or wrong '{PROTOCOL_HEADER}: true' header (got {header!r})")
    if not isinstance(body, dict) or not isinstance(body.get("client_params"), dict):
        raise ProtocolError("body must be a JSON object with a 'client_params' object")
    params: dict[str, Any] = body["client_params"]
    node = params.get("id") or params.get("node_uuid")
    group = params.get("group")
    if not isinstance(node, str) or not node:
        raise ProtocolError("client_params.id (or the older node_uuid) must be a non-empty string")
    if len(node) > MAX_ID_LENGTH:
        raise ProtocolError(f"client_params.id {node[:40]!r}...: longer than {MAX_ID_LENGTH}")
    if not isinstance(group, str) or not group:
        raise ProtocolError("client_params.group must be a non-empty string")
    return ClientParams(node, validate_group(group))


def error_body(kind: ErrorKind, value: str) -> dict[str, str]:
    return {"kind": kind.value, "value": value}
