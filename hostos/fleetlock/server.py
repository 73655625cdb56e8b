"""`hostos fleetlock serve`: the FleetLock HTTP server, backed by etcd.

Stateless apart from etcd: run as many as you like behind a load balancer;
the semaphore's compare-and-swap keeps them consistent. `start_fleetlock`
runs one as a child process for tests and `hostos fleet simulate`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from hostos.errors import HostosError
from hostos.etcd import EtcdClient, EtcdError
from hostos.fleetlock.protocol import (
    PRE_REBOOT,
    PROTOCOL_HEADER,
    STEADY_STATE,
    ErrorKind,
    ProtocolError,
    error_body,
    parse_request,
    validate_group,
)
from hostos.fleetlock.semaphore import (
    DEFAULT_MAX_HOLD_SECONDS,
    DEFAULT_PREFIX,
    DEFAULT_SLOTS,
    ContentionError,
    FleetSemaphore,
    GroupConfig,
)

log = logging.getLogger("hostos.fleetlock")

SEMAPHORE_KEY: web.AppKey[FleetSemaphore] = web.AppKey("semaphore", FleetSemaphore)
READY_LINE = "fleetlock: listening on "


def _error(status: int, kind: ErrorKind, value: str) -> web.Response:
    return web.json_response(error_body(kind, value), status=status)


async def _params(request: web.Request) -> tuple[str, str]:
    try:
        body = await request.json()
    except ValueError as e:
        raise ProtocolError(f"body is not JSON: {e}") from e
    params = parse_request(request.headers.get(PROTOCOL_HEADER), body)
    return params.group, params.id


async def pre_reboot(request: web.Request) -> web.Response:
    sem = request.app[SEMAPHORE_KEY]
    try:
        group, hid = await _params(request)
        out = await sem.lock(group, hid)
    except ProtocolError as e:
        return _error(400, ErrorKind.BAD_REQUEST, str(e))
    except (EtcdError, ContentionError) as e:
        return _error(503, ErrorKind.BACKEND, str(e))
    if not out.granted:
        held = ", ".join(sorted(h.id for h in out.holders)) or "nobody (0 slots)"
        log.info("lock %s/%s: refused, %d/%d slots held by %s",
                 group, hid, len(out.holders), out.slots, held)
        return _error(409, ErrorKind.FAILED_LOCK,
                      f"all {out.slots} reboot slots of group {group!r} are held: {held}")
    log.info("lock %s/%s: granted (%d/%d)", group, hid, len(out.holders), out.slots)
    return web.json_response({"group": group, "id": hid,
                              "holders": sorted(h.id for h in out.holders)})


async def steady_state(request: web.Request) -> web.Response:
    sem = request.app[SEMAPHORE_KEY]
    try:
        group, hid = await _params(request)
        out = await sem.unlock(group, hid)
    except ProtocolError as e:
        return _error(400, ErrorKind.BAD_REQUEST, str(e))
    except (EtcdError, ContentionError) as e:
        return _error(503, ErrorKind.BACKEND, str(e))
    log.info("unlock %s/%s: %d/%d held", group, hid, len(out.holders), out.slots)
    return web.json_response({"group": group, "id": hid,
                              "holders": sorted(h.id for h in out.holders)})


async def health(request: web.Request) -> web.Response:
    sem = request.app[SEMAPHORE_KEY]
    ops = getattr(sem.etcd, "ops", None)
    return web.json_response({"ok": True, "server": sem.server, "etcd_ops": ops})


def make_app(sem: FleetSemaphore) -> web.Application:
    app = web.Application()
    app[SEMAPHORE_KEY] = sem
    app.router.add_post(f"/{PRE_REBOOT}", pre_reboot)
    app.router.add_post(f"/{STEADY_STATE}", steady_state)
    app.router.add_get("/health", health)
    return app


@dataclass(frozen=True)
class ServeConfig:
    etcd: str
    host: str = "127.0.0.1"
    port: int = 0
    prefix: str = DEFAULT_PREFIX
    default: GroupConfig = field(default_factory=GroupConfig)
    name: str = ""


async def serve(cfg: ServeConfig, stop: asyncio.Event) -> None:
    async with EtcdClient(cfg.etcd) as etcd:
        try:
            version = await etcd.version()
        except EtcdError as e:
            raise HostosError(f"{e}; is etcd running? (--etcd URL)") from e
        sem = FleetSemaphore(etcd, prefix=cfg.prefix, default=cfg.default,
                             server=cfg.name or f"{os.uname().nodename}:{os.getpid()}")
        runner = web.AppRunner(make_app(sem), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, cfg.host, cfg.port)
        await site.start()
        try:
            port = runner.addresses[0][1]
            # The ready line is parsed by start_fleetlock: keep its shape.
            print(f"{READY_LINE}http://{cfg.host}:{port}/ (etcd {version} at {cfg.etcd})",
                  flush=True)
            await stop.wait()
        finally:
            await runner.cleanup()


def _serve_cmd(args: argparse.Namespace) -> int:
    try:
        default = GroupConfig(args.slots, args.max_hold)
        cfg = ServeConfig(args.etcd, args.host, args.port, args.prefix, default, args.name)
    except ValueError as e:
        raise HostosError(str(e)) from e

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(cfg, stop)

    asyncio.run(main())
    return 0


def _config_cmd(args: argparse.Namespace) -> int:
    try:
        group = validate_group(args.group)
        config = GroupConfig(args.slots, args.max_hold)
    except ValueError as e:
        raise HostosError(str(e)) from e

    async def main() -> None:
        async with EtcdClient(args.etcd) as etcd:
            await FleetSemaphore(etcd, prefix=args.prefix).set_config(group, config)

    asyncio.run(main())
    print(f"group {group}: {config.slots} reboot slot(s), stale after {config.max_hold_seconds}s")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("fleetlock", help="the FleetLock reboot coordination server")
    verbs = p.add_subparsers(dest="fleetlock_verb", metavar="VERB", required=True)

    s = verbs.add_parser("serve", help="serve FleetLock (Zincati-compatible) backed by etcd")
    s.add_argument("--etcd", default="http://127.0.0.1:2379", help="etcd client URL")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on")
    s.add_argument("--port", type=int, default=0, help="port (0: pick a free one)")
    s.add_argument("--prefix", default=DEFAULT_PREFIX, help="etcd key prefix")
    s.add_argument("--slots", type=int, default=DEFAULT_SLOTS,
                   help="reboot slots of a group without its own config in etcd")
    s.add_argument("--max-hold", type=int, default=DEFAULT_MAX_HOLD_SECONDS,
                   help="seconds after which a holder that never unlocked is dropped")
    s.add_argument("--name", default="", help="this server's name in the audit log")
    s.set_defaults(func=_serve_cmd)

    c = verbs.add_parser("config", help="set a group's reboot slots in etcd")
    c.add_argument("--etcd", default="http://127.0.0.1:2379", help="etcd client URL")
    c.add_argument("--prefix", default=DEFAULT_PREFIX, help="etcd key prefix")
    c.add_argument("--group", default="default")
    c.add_argument("--slots", type=int, required=True)
    c.add_argument("--max-hold", type=int, default=DEFAULT_MAX_HOLD_SECONDS)
    c.set_defaults(func=_config_cmd)


# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetLockServer:
    url: str  # base URL, ending in "/"
    pid: int


@contextlib.contextmanager
def start_fleetlock(etcd: str, *, slots: int = DEFAULT_SLOTS,
                    max_hold: int = DEFAULT_MAX_HOLD_SECONDS, host: str = "127.0.0.1",
                    name: str = "", log_path: Path | None = None,
                    timeout: float = 30.0) -> Iterator[FleetLockServer]:
    """Run `hostos fleetlock serve` as a child on a free port; stop it by PID."""
    argv = [sys.executable, "-m", "hostos", "fleetlock", "serve", "--etcd", etcd,
            "--host", host, "--slots", str(slots), "--max-hold", str(max_hold)]
    if name:
        argv += ["--name", name]
    log.debug("+ %s", " ".join(argv))
    err = log_path.open("ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=err, text=True)
    try:
        url = _await_ready(proc, timeout)
        yield FleetLockServer(url, proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        if log_path and not isinstance(err, int):
            err.close()


def _await_ready(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise HostosError(f"fleetlock server (pid {proc.pid}) exited with status "
                              f"{proc.wait()} before it listened")
        if line.startswith(READY_LINE):
            return line[len(READY_LINE):].split()[0]
    raise HostosError(f"fleetlock server (pid {proc.pid}) not ready after {timeout}s")

