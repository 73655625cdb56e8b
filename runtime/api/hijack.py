"""Docker's connection hijack (attach, exec start): HTTP in, raw duplex bytes after.

The client sends `Connection: Upgrade` + `Upgrade: tcp`; berthd answers
`101 UPGRADED` and from then on the socket carries the container's streams
both ways. aiohttp's C parser only upgrades for websockets, and its protocol
closes the socket when the client half-closes (stdin at EOF) although the
output must keep flowing. So after the answer the transport is moved to a
protocol of ours (`transport.set_protocol`): `eof_received` keeps the
connection open, reads feed a `StreamReader`, writes go straight out.
Clients that do not ask for the upgrade get `200` and a raw body that ends
when berthd closes the connection (Docker does the same).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from aiohttp import web

RAW_STREAM = "application/vnd.docker.raw-stream"
MULTIPLEXED_STREAM = "application/vnd.docker.multiplexed-stream"
_HIGH_WATER = 1 << 20


def _tls_half_close(transport: Any) -> Callable[[], None] | None:
    """Let a TLS connection keep sending after the client's close_notify.

    The docker CLI half-closes a hijacked connection it has no stdin for; over
    TLS that is a close_notify, on which asyncio's SSL layer shuts the whole
    connection down, so `docker -H tcp://... run` would print nothing. OpenSSL
    itself allows writing after receiving close_notify: skip the one shutdown
    that the peer's EOF triggers (our own close still shuts down normally).
    Returns the hook to call from eof_received, or None for a plain socket.
    """
    ssl_protocol = getattr(transport, "_ssl_protocol", None)
    original = getattr(ssl_protocol, "_start_shutdown", None)
    if ssl_protocol is None or original is None:
        return None
    skip = False

    def start_shutdown() -> None:
        nonlocal skip
        if skip:
            skip = False
            return
        original()

    def on_peer_eof() -> None:
        nonlocal skip
        skip = True

    ssl_protocol._start_shutdown = start_shutdown
    return on_peer_eof


class _RawProtocol(asyncio.Protocol):
    def __init__(self, transport: asyncio.Transport, previous: Any) -> None:
        self.transport = transport
        self.previous = previous
        self.on_peer_eof = _tls_half_close(transport)
        self.reader = asyncio.StreamReader(limit=_HIGH_WATER)
        self.closed = asyncio.get_running_loop().create_future()
        self._paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []

    def data_received(self, data: bytes) -> None:
        self.reader.feed_data(data)

    def eof_received(self) -> bool:
        self.reader.feed_eof()
        if self.on_peer_eof is not None:
            self.on_peer_eof()
            return False  # asyncio's SSL layer ignores the return value (and warns)
        return True  # half-close: the client is done writing, not reading

    def connection_lost(self, exc: Exception | None) -> None:
        self.reader.feed_eof()
        # aiohttp's protocol still tracks this connection: let it forget it.
        with contextlib.suppress(Exception):
            self.previous.connection_lost(exc)
        if not self.closed.done():
            self.closed.set_result(None)
        self.resume_writing()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        for w in self._drain_waiters:
            if not w.done():
                w.set_result(None)
        self._drain_waiters.clear()

    async def drain(self) -> None:
        if self._paused and not self.closed.done():
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(waiter)
            await waiter


class Hijacked:
    """The raw stream of one hijacked connection."""

    def __init__(self, response: web.StreamResponse, protocol: _RawProtocol) -> None:
        self.response = response
        self._protocol = protocol

    @property
    def reader(self) -> asyncio.StreamReader:
        return self._protocol.reader

    @property
    def closed(self) -> asyncio.Future[None]:
        """Done when the client went away."""
        return self._protocol.closed

    async def write(self, data: bytes) -> None:
        if self._protocol.closed.done():
            raise ConnectionResetError("the client closed the connection")
        self._protocol.transport.write(data)
        await self._protocol.drain()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._protocol.transport.close()


def wants_upgrade(request: web.Request) -> bool:
    return (request.headers.get("Upgrade", "").lower() == "tcp"
            and "upgrade" in request.headers.get("Connection", "").lower())


async def hijack(request: web.Request, content_type: str) -> Hijacked:
    """Answer the request (101, or 200 without an upgrade) and take over its socket."""
    upgrade = wants_upgrade(request)
    headers = {"Content-Type": content_type}
    if upgrade:
        headers.update({"Connection": "Upgrade", "Upgrade": "tcp"})
    response = web.StreamResponse(status=101 if upgrade else 200, headers=headers)
    response.force_close()
    # Without a length, aiohttp would frame a 200 body in chunks: the stream is raw.
    response._length_check = False  # aiohttp has no public switch for this
    transport: Any = request.transport
    if transport is None:
        raise ConnectionResetError("the client closed the connection")
    await response.prepare(request)  # aiohttp 3.11 writes the status line and headers now
    protocol = _RawProtocol(transport, transport.get_protocol())
    transport.set_protocol(protocol)
    return Hijacked(response, protocol)
