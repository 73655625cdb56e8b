"""Exec routes: create, start (hijacked or detached), inspect, resize."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from aiohttp import web

from runtime.api.backend import streaming
from runtime.api.containers import json_body, manager
from runtime.api.errors import BadRequest, Conflict
from runtime.api.hijack import MULTIPLEXED_STREAM, RAW_STREAM, Hijacked, hijack
from runtime.api.routes import RouteTable
from runtime.api.streams import _feed_fd, frame, set_winsize, size_params
from runtime.container.errors import ContainerError
from runtime.container.exec import ExecSession, close_stdin
from runtime.container.spec import ExecRequest
from runtime.container.state import Status

log = logging.getLogger("berth.api")


def exec_request(body: Any) -> ExecRequest:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    cmd = body.get("Cmd")
    if isinstance(cmd, str):
        cmd = [cmd]
    if not cmd or not isinstance(cmd, list) or not all(isinstance(c, str) for c in cmd):
        raise BadRequest("No exec command specified")
    return ExecRequest(cmd=tuple(cmd), tty=bool(body.get("Tty")),
                       stdin=bool(body.get("AttachStdin")),
                       env=tuple(body.get("Env") or ()), user=body.get("User") or "",
                       workdir=body.get("WorkingDir") or "",
                       privileged=bool(body.get("Privileged")))


async def create(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    mgr, ref = manager(request), request.match_info["id"]
    if mgr.get(ref).state.status is Status.PAUSED:
        raise Conflict(f"Container {ref} is paused, unpause the container before exec")
    exec_id = await mgr.exec_create(ref, exec_request(body))
    return web.json_response({"Id": exec_id}, status=201)


@streaming
async def start(request: web.Request) -> web.StreamResponse:
    mgr = manager(request)
    exec_id = request.match_info["id"]
    body = await json_body(request)
    detach = bool(body.get("Detach")) if isinstance(body, dict) else False
    if detach:
        await mgr.exec_start(exec_id)
        return web.Response(status=200)
    info = mgr.exec_inspect(exec_id)  # 404 before the stream is opened
    if info.running or info.exit_code is not None:
        raise Conflict(f"exec {exec_id} has already run")
    tty = mgr.execs[exec_id].request.tty
    # Hijack first, then start the process (as dockerd does): a client that reads
    # the 101 answer through a buffered reader and then the raw socket (docker-py)
    # must not find output in that buffer.
    conn = await hijack(request, RAW_STREAM if tty else MULTIPLEXED_STREAM)
    feeder = None
    try:
        try:
            session = await mgr.exec_start(exec_id)
        except ContainerError as e:
            # Too late for an HTTP error: say it in the stream, as dockerd does; the
            # exec's exit code (126/127) is in its inspect.
            message = f"{e}\r\n".encode()
            await conn.write(message if tty else frame("stderr", message))
            return conn.response
        if tty and session.pty >= 0:
            feeder = asyncio.ensure_future(_feed_fd(conn, session.pty))
        elif session.stdin >= 0:
            feeder = asyncio.ensure_future(_feed_stdin(conn, session))
        async for stream, chunk in session.output():
            await conn.write(chunk if tty else frame(stream, chunk))
        # The stream ends once the exit code is known, so that a client that
        # inspects the exec right after EOF reads it.
        await session.wait()
    except ConnectionResetError:
        log.debug("exec %s: the client went away", exec_id[:12])
    finally:
        if feeder is not None:
            feeder.cancel()
        conn.close()
    return conn.response


async def _feed_stdin(conn: Hijacked, session: ExecSession) -> None:
    """-i without -t: the client's bytes to the process's stdin pipe; its EOF closes it."""
    os.set_blocking(session.stdin, False)  # a full pipe must not block the event loop
    try:
        await _feed_fd(conn, session.stdin)
    finally:
        close_stdin(session)


def inspect_json(session: ExecSession, info: Any) -> dict[str, Any]:
    req = session.request
    return {
        "ID": info.id, "Running": info.running, "ExitCode": info.exit_code,
        "ProcessConfig": {"tty": req.tty, "entrypoint": req.cmd[0],
                          "arguments": list(req.cmd[1:]), "privileged": req.privileged,
                          "user": req.user},
        "OpenStdin": req.stdin, "OpenStderr": True, "OpenStdout": True, "CanRemove": False,
        "ContainerID": info.container_id, "DetachKeys": "", "Pid": info.pid,
    }


async def inspect(request: web.Request) -> web.StreamResponse:
    mgr = manager(request)
    exec_id = request.match_info["id"]
    info = mgr.exec_inspect(exec_id)
    return web.json_response(inspect_json(mgr.execs[exec_id], info))


async def resize(request: web.Request) -> web.StreamResponse:
    mgr = manager(request)
    exec_id = request.match_info["id"]
    mgr.exec_inspect(exec_id)  # 404 for an unknown id
    h, w = size_params(request)
    session = mgr.execs[exec_id]
    if session.pty >= 0:
        with contextlib.suppress(OSError):
            set_winsize(session.pty, h, w)
    return web.Response(status=201)


def add_routes(table: RouteTable) -> None:
    table.post("/containers/{id}/exec", create)
    table.post("/exec/{id}/start", start)
    table.get("/exec/{id}/json", inspect)
    table.post("/exec/{id}/resize", resize)
