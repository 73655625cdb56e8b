"""The update agent's side of FleetLock, exactly as Zincati speaks it.

Zincati's flow (zincati/src/fleet_lock): on start, "initialization" calls
steady-state until it succeeds (releasing any slot held from before the
last reboot); with an update staged, "pre-reboot" is retried until a slot
is granted, then the host finalizes and reboots. Works with any FleetLock
server (airlock, ours).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp

from hostos.fleetlock.protocol import (
    PRE_REBOOT,
    PROTOCOL_HEADER,
    STEADY_STATE,
    ClientParams,
    validate_group,
)

log = logging.getLogger("hostos.fleetlock.client")

REQUEST_TIMEOUT = 30.0


class LockResult(StrEnum):
    GRANTED = "granted"
    REFUSED = "refused"  # the server answered: no free slot (or another refusal)
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class Reply:
    result: LockResult
    status: int  # HTTP status; 0 when the server could not be reached
    detail: str

    @property
    def ok(self) -> bool:
        return self.result is LockResult.GRANTED


class FleetLockClient:
    """One host's identity and its FleetLock server's base URL."""

    def __init__(self, base_url: str, node_id: str, group: str = "default",
                 *, session: aiohttp.ClientSession | None = None) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.params = ClientParams(node_id, validate_group(group))
        self._session = session

    async def _post(self, endpoint: str) -> Reply:
        url = self.base_url + endpoint
        own = self._session is None
        session = self._session or aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))
        try:
            async with session.post(url, json=self.params.body(),
                                    headers={PROTOCOL_HEADER: "true"}) as resp:
                text = await resp.text()
                if resp.status == 200:
                    return Reply(LockResult.GRANTED, 200, text)
                return Reply(LockResult.REFUSED, resp.status, _detail(text))
        except (aiohttp.ClientError, TimeoutError) as e:
            return Reply(LockResult.UNREACHABLE, 0, f"{url}: {e or type(e).__name__}")
        finally:
            if own:
                await session.close()

    async def pre_reboot(self) -> Reply:
        """RecursiveLock: ask for a reboot slot (granted again if already held)."""
        reply = await self._post(PRE_REBOOT)
        log.info("fleetlock pre-reboot %s/%s: %s %s", self.params.group, self.params.id,
                 reply.result, reply.detail if not reply.ok else "")
        return reply

    async def steady_state(self) -> Reply:
        """UnlockIfHeld: give back a slot held from before the last reboot."""
        reply = await self._post(STEADY_STATE)
        log.info("fleetlock steady-state %s/%s: %s", self.params.group, self.params.id,
                 reply.result)
        return reply

    async def wait_for_slot(self, *, interval: float = 10.0, attempts: int | None = None) -> Reply:
        """Retry pre-reboot until granted (Zincati retries until the server agrees)."""
        n = 0
        while True:
            reply = await self.pre_reboot()
            n += 1
            if reply.ok or (attempts is not None and n >= attempts):
                return reply
            await asyncio.sleep(interval)


def _detail(text: str) -> str:
    try:
        body: Any = json.loads(text)
        if isinstance(body, dict) and "value" in body:
            return f"{body.get('kind', '?')}: {body['value']}"
    except ValueError:
        pass
    return text.strip()[:300]


def pre_reboot(base_url: str, node_id: str, group: str = "default") -> Reply:
    """Synchronous pre-reboot for callers outside an event loop (the agent's hook)."""
    return asyncio.run(FleetLockClient(base_url, node_id, group).pre_reboot())


def steady_state(base_url: str, node_id: str, group: str = "default") -> Reply:
    """Synchronous steady-state for callers outside an event loop."""
    return asyncio.run(FleetLockClient(base_url, node_id, group).steady_state())
