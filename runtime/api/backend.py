"""What the API routers reach: the daemon's facts and its services.

The daemon builds one `Backend` and the app carries it under `BACKEND`.
Services are optional so that the API can start before the engine and the
image store exist (issue 2: _ping and version only); a router whose service
is missing answers 501 with a clear message.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import platform
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from runtime import __version__
from runtime.api.errors import NotImplementedYet


@dataclass(frozen=True)
class DaemonInfo:
    """Facts about this daemon, fixed at start."""

    data_root: Path
    exec_root: Path
    version: str = __version__
    hostname: str = field(default_factory=socket.gethostname)
    kernel: str = field(default_factory=platform.release)
    arch: str = field(default_factory=platform.machine)
    started_at: float = field(default_factory=time.time)
    engine_id: str = ""


@dataclass
class Backend:
    info: DaemonInfo
    # Typed as Any at this seam: each router narrows with its own Protocol,
    # so the API does not import the engine's or the store's concrete classes.
    containers: Any = None
    images: Any = None
    volumes: Any = None
    events: Any = None
    puller: Any = None
    networks: Any = None

    def publish(self, type: str, action: str, actor_id: str,
                attributes: dict[str, str] | None = None) -> None:
        """An event from the API's own actions (images, volumes); no bus, no event."""
        if self.events is not None:
            self.events.publish(type, action, actor_id, attributes or {})

    def need(self, name: str) -> Any:
        service = getattr(self, name)
        if service is None:
            raise NotImplementedYet(f"{name} are not available in this berthd")
        return service


BACKEND: web.AppKey[Backend] = web.AppKey("berth.backend", Backend)
# Handlers that stream until the client leaves (events, logs -f, attach, exec, wait):
# cancelled at shutdown, so that berthd stops at once instead of waiting for them.
STREAMS: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("berth.streams")


@contextlib.contextmanager
def long_lived(request: web.Request) -> Iterator[None]:
    """Mark the running handler as a stream that shutdown may cancel."""
    task = asyncio.current_task()
    streams = request.app[STREAMS]
    if task is not None:
        streams.add(task)
    try:
        yield
    finally:
        if task is not None:
            streams.discard(task)


def streaming(
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Decorate a handler that streams until the client or the daemon goes."""

    @functools.wraps(handler)
    async def run(request: web.Request) -> web.StreamResponse:
        with long_lived(request):
            try:
                return await handler(request)
            except ConnectionResetError:
                # The client left mid-stream (a detached `docker run` drops its wait, ^C
                # ends `logs -f`): the answer has nowhere to go. aiohttp finishes this
                # stand-in quietly (a ConnectionError while it is sent is not logged).
                return web.Response(status=204)

    return run


async def cancel_streams(app: web.Application) -> None:
    streams: set[asyncio.Task[Any]] = app[STREAMS]
    for task in list(streams):
        task.cancel()


def backend(request: web.Request) -> Backend:
    return request.app[BACKEND]
