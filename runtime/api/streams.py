"""Container output routes: logs (with follow) and attach (hijacked), plus resize.

Without a TTY, output is framed in Docker's multiplexed format (8-byte
header: stream id 1 or 2, three zero bytes, big-endian payload length); with
a TTY it is the raw byte stream of the pty.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import struct
import termios
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from aiohttp import web

from runtime.api.backend import backend, streaming
from runtime.api.containers import manager, ref
from runtime.api.errors import BadRequest
from runtime.api.filters import query_bool, query_int
from runtime.api.hijack import MULTIPLEXED_STREAM, RAW_STREAM, Hijacked, hijack
from runtime.api.routes import RouteTable
from runtime.container.manager import ContainerManager, Output
from runtime.events import Event, EventBus
from runtime.logs import LogEntry, LogOptions, rfc3339_nano

log = logging.getLogger("berth.api")

STREAM_IDS = {"stdin": 0, "stdout": 1, "stderr": 2}
_HEADER = struct.Struct(">BxxxI")


def frame(stream: str, payload: bytes) -> bytes:
    return _HEADER.pack(STREAM_IDS[stream], len(payload)) + payload


def encode_entry(e: LogEntry, tty: bool, timestamps: bool) -> bytes:
    line = (rfc3339_nano(e.time_ns) + " ").encode() + e.line if timestamps else e.line
    return line if tty else frame(e.stream, line)


def parse_nanos(text: str | None, name: str) -> int | None:
    """since/until as unix seconds with an optional fraction; 0 or absent means none."""
    if not text or text == "0":
        return None
    seconds, _, frac = text.partition(".")
    if not seconds.lstrip("-").isdigit() or (frac and not frac.isdigit()):
        raise BadRequest(f"invalid {name} {text!r}: use unix seconds[.nanoseconds]")
    return int(seconds) * 1_000_000_000 + int((frac + "000000000")[:9])


def log_options(request: web.Request) -> LogOptions:
    stdout, stderr = query_bool(request, "stdout"), query_bool(request, "stderr")
    if not (stdout or stderr):
        raise BadRequest("Bad parameters: you must choose at least one stream")
    tail_text = request.query.get("tail", "all")
    tail = None if tail_text in ("all", "") else query_int(request, "tail")
    return LogOptions(follow=query_bool(request, "follow"),
                      since_ns=parse_nanos(request.query.get("since"), "since") or 0,
                      until_ns=parse_nanos(request.query.get("until"), "until"), tail=tail,
                      stdout=stdout, stderr=stderr,
                      timestamps=query_bool(request, "timestamps"))


@streaming
async def logs(request: web.Request) -> web.StreamResponse:
    mgr = manager(request)
    rec = mgr.inspect(ref(request))
    opts = log_options(request)
    tty = rec.spec.tty
    resp = web.StreamResponse(headers={"Content-Type": RAW_STREAM if tty else
                                       MULTIPLEXED_STREAM})
    await resp.prepare(request)
    async for entry in mgr.logs(rec.id, opts):
        await resp.write(encode_entry(entry, tty, opts.timestamps))
    await resp.write_eof()
    return resp


class Lifecycle:
    """Events of one container from now on: wait for its start, or its end."""

    def __init__(self, bus: EventBus, container_id: str) -> None:
        def mine(ev: Event) -> bool:
            return ev.type == "container" and ev.actor_id == container_id and \
                ev.action in ("start", "die", "destroy")

        self._events: AsyncGenerator[Event, None] = bus.subscribe(  # type: ignore[assignment]
            match=mine)
        self._next: asyncio.Future[Event] = asyncio.ensure_future(anext(self._events))

    async def ready(self) -> None:
        """Let the subscription register (so no event is missed after this returns)."""
        await asyncio.sleep(0)

    async def next(self) -> Event:
        ev = await self._next
        self._next = asyncio.ensure_future(anext(self._events))
        return ev

    async def until(self, *actions: str) -> Event:
        while True:
            ev = await self.next()
            if ev.action in actions:
                return ev

    async def close(self) -> None:
        self._next.cancel()
        with contextlib.suppress(BaseException):
            await self._next
        await self._events.aclose()


async def _until_client_leaves(conn: Hijacked, waiting: Awaitable[bool]) -> bool:
    """`waiting`'s result, or False if the client hangs up first (a `start -a` given up)."""
    task = asyncio.ensure_future(waiting)
    gone: asyncio.Future[Any] = conn.closed
    await asyncio.wait([task, gone], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        return task.result()
    task.cancel()
    return False


async def _wait_started(mgr: ContainerManager, events: Lifecycle, cid: str) -> bool:
    """True once the container runs; False if it was removed first."""
    if mgr.inspect(cid).state.status.has_process:
        return True
    return (await events.until("start", "destroy")).action == "start"


async def _copy_output(output: Output, tty: bool, opts: LogOptions,
                       write: Callable[[bytes], Awaitable[None]]) -> None:
    """The container's output as it comes (raw with -t, else framed) until its run ends.

    The engine ends the queue after it drained the run's output at exit (before
    `die`) or at removal, so nothing written before the exit is missed.
    """
    while (item := await output.get()) is not None:
        stream, chunk = item
        if tty:
            await write(chunk)
        elif opts.stdout if stream == "stdout" else opts.stderr:
            await write(frame(stream, chunk))


async def _feed_fd(conn: Hijacked, fd: int | None) -> None:
    """Client bytes to the container's pty until the client stops sending."""
    while fd is not None and (data := await conn.reader.read(65536)):
        while data:
            try:
                n = os.write(fd, data)
            except BlockingIOError:
                await asyncio.sleep(0.01)
                continue
            except OSError:
                return
            data = data[n:]


async def _feed_stdin(mgr: ContainerManager, cid: str, conn: Hijacked,
                      close_at_eof: bool) -> None:
    """Client bytes to the container's pty (-t) or stdin pipe (-i); at the client's EOF
    a -i container reads EOF too when the attach began before the start (`run -i`:
    Docker's StdinOnce). Without either the bytes are read and dropped, so the
    half-close is seen."""
    fd = mgr.stdin_fd(cid)
    if fd is None:
        while await conn.reader.read(65536):
            pass
        return
    os.set_blocking(fd, False)  # a full pipe must not block the event loop
    await _feed_fd(conn, fd)
    if close_at_eof:
        with contextlib.suppress(LookupError, OSError):
            mgr.close_stdin(cid)


@streaming
async def attach(request: web.Request) -> web.StreamResponse:
    mgr = manager(request)
    bus: EventBus = backend(request).need("events")
    rec = mgr.inspect(ref(request))
    cid, tty = rec.id, rec.spec.tty
    stdin = query_bool(request, "stdin")
    opts = LogOptions(stdout=query_bool(request, "stdout"), stderr=query_bool(request, "stderr"))
    before_start = not rec.state.status.has_process
    events = Lifecycle(bus, cid)
    await events.ready()
    # Subscribed before the hijack answer: a `run` attaches before it starts the
    # container, and its first output (a shell's prompt) must not be lost.
    att = mgr.attach(cid)
    mgr.publish(mgr.get(cid), "attach")
    conn = await hijack(request, RAW_STREAM if tty else MULTIPLEXED_STREAM)
    sink: asyncio.Future[None] | None = None
    try:
        if query_bool(request, "logs"):
            async for e in mgr.logs(cid, LogOptions(stdout=opts.stdout, stderr=opts.stderr)):
                await conn.write(encode_entry(e, tty, False))
        if query_bool(request, "stream") and await _until_client_leaves(
                conn, _wait_started(mgr, events, cid)):
            if stdin:
                sink = asyncio.ensure_future(
                    _feed_stdin(mgr, cid, conn, close_at_eof=before_start and not tty))
            await _copy_output(att.output, tty, opts, conn.write)
    except ConnectionResetError:
        log.debug("attach %s: the client went away", cid[:12])
    finally:
        if sink is not None:
            sink.cancel()
        mgr.detach(att)
        await events.close()
        conn.close()
    return conn.response


def set_winsize(fd: int, height: int, width: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


def size_params(request: web.Request) -> tuple[int, int]:
    h, w = query_int(request, "h"), query_int(request, "w")
    if h is None or w is None or h < 0 or w < 0:
        raise BadRequest("give the new size as ?h=ROWS&w=COLUMNS")
    return h, w


async def resize(request: web.Request) -> web.StreamResponse:
    mgr = manager(request)
    c = mgr.get(ref(request))
    h, w = size_params(request)
    if c.pty_master >= 0:
        set_winsize(c.pty_master, h, w)
        mgr.publish(c, "resize", height=str(h), width=str(w))
    return web.Response(status=200)


def add_routes(table: RouteTable) -> None:
    table.get("/containers/{id}/logs", logs)
    table.post("/containers/{id}/attach", attach)
    table.post("/containers/{id}/resize", resize)
