"""`GET /berth/update`: the host update agent's status over berthd's API.

The same report as `hostos update status --json`: booted version and slot,
boot entries, the staged version, the update phase, the last error and the
versions recorded bad. Read-only: applying stays with hostos-update.service.
Berth's own extension (no Docker client calls it), under a `/berth/` prefix.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from runtime.api.routes import RouteTable


def _status() -> dict[str, Any]:
    # Imported here: a berthd that runs off the host OS (development) still starts.
    from hostos.errors import HostosError
    from hostos.update.agent import Agent
    from hostos.update.cli import status
    from hostos.update.config import load_settings
    from hostos.update.host import LocalHost

    try:
        settings = load_settings()
        return status(Agent(settings, LocalHost(settings)))
    except (HostosError, OSError) as e:
        return {"phase": "unknown", "host_error": str(e)}


async def update_status(request: web.Request) -> web.StreamResponse:
    # Reads the GPT and the ESP: keep that off the event loop.
    return web.json_response(await asyncio.to_thread(_status))


def add_routes(table: RouteTable) -> None:
    table.get("/berth/update", update_status)
