"""`berthd`: the daemon. Flags like dockerd's; serves the API; talks to systemd.

Flow: parse flags into a frozen `DaemonConfig` -> take the listening sockets
(systemd's LISTEN_FDS, else bind each `-H`) -> start the services (engine,
image store) -> serve the API on every socket -> READY=1 (+ watchdog pings)
-> on SIGTERM/SIGINT stop serving and detach from containers, which keep
running (the next berthd re-adopts them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from aiohttp import web

from runtime import __version__
from runtime.api import listeners
from runtime.api.app import make_app
from runtime.api.backend import Backend, DaemonInfo
from runtime.api.listeners import ListenAddress, ListenError, Scheme, TlsFiles

log = logging.getLogger("berth.daemon")

DEFAULT_DATA_ROOT = Path("/var/lib/berth")
DEFAULT_EXEC_ROOT = Path("/run/berth")
# Long-lived streams (events, logs -f) get this long to finish on shutdown.
SHUTDOWN_GRACE_SECONDS = 2.0


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARN = "warn"
    ERROR = "error"
    FATAL = "fatal"

    @property
    def logging_level(self) -> int:
        return {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
                "error": logging.ERROR, "fatal": logging.CRITICAL}[self.value]


@dataclass(frozen=True)
class DaemonConfig:
    hosts: tuple[ListenAddress, ...]
    data_root: Path = DEFAULT_DATA_ROOT
    exec_root: Path = DEFAULT_EXEC_ROOT
    tls: TlsFiles | None = None
    insecure_tcp: bool = False
    log_level: LogLevel = LogLevel.INFO

    @property
    def default_socket(self) -> Path:
        return self.exec_root / "berthd.sock"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="berthd", description="Berth's container daemon (Docker Engine API compatible).")
    p.add_argument("--version", action="version", version=f"berthd {__version__}")
    p.add_argument("-H", "--host", action="append", default=[], metavar="ADDR",
                   help="listen on unix://PATH, tcp://HOST:PORT (mutual TLS) or fd:// "
                        "(systemd sockets); repeatable; default unix://EXEC_ROOT/berthd.sock")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT,
                   help="persistent state: images, containers, volumes (default %(default)s)")
    p.add_argument("--exec-root", type=Path, default=DEFAULT_EXEC_ROOT,
                   help="runtime state: sockets, netns mounts (default %(default)s)")
    p.add_argument("--tlscacert", help="CA that client certificates must chain to")
    p.add_argument("--tlscert", help="server certificate")
    p.add_argument("--tlskey", help="server key")
    p.add_argument("--insecure-tcp", action="store_true",
                   help="allow tcp:// listeners without TLS (anyone who reaches the port "
                        "is root on this host)")
    p.add_argument("-l", "--log-level", type=LogLevel, choices=list(LogLevel),
                   default=LogLevel.INFO, help="default %(default)s")
    return p


def config_from_args(argv: Sequence[str] | None = None) -> DaemonConfig:
    args = build_parser().parse_args(argv)
    hosts = tuple(listeners.parse_address(h) for h in args.host)
    tls = listeners.tls_files(args.tlscacert, args.tlscert, args.tlskey,
                              os.environ.get("CREDENTIALS_DIRECTORY"))
    config = DaemonConfig(hosts=hosts, data_root=args.data_root.absolute(),
                          exec_root=args.exec_root.absolute(), tls=tls,
                          insecure_tcp=args.insecure_tcp, log_level=args.log_level)
    if tls is None and not config.insecure_tcp and any(h.scheme is Scheme.TCP for h in hosts):
        raise ListenError("tcp:// listeners need mutual TLS: give --tlscacert, --tlscert and "
                          "--tlskey (or the berth.tls.* credentials), or --insecure-tcp")
    return config


class Notifier:
    """sd_notify through systemd-python; a quiet no-op without NOTIFY_SOCKET."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))

    def send(self, message: str) -> None:
        if not self.enabled:
            return
        from systemd import daemon as sd

        sd.notify(message)

    def watchdog_interval(self) -> float | None:
        """Half of WATCHDOG_USEC, in seconds, if systemd watches this process."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not self.enabled or not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2 / 1_000_000
        except ValueError:
            log.warning("ignoring WATCHDOG_USEC=%r: not a number", usec)
            return None


async def _watchdog(notifier: Notifier, interval: float) -> None:
    while True:
        notifier.send("WATCHDOG=1")
        await asyncio.sleep(interval)


def take_sockets(config: DaemonConfig) -> tuple[list[socket.socket], list[Path]]:
    """The listening sockets, and the unix socket files berthd itself created."""
    socks = listeners.activated_sockets()
    created: list[Path] = []
    wanted = config.hosts
    if not socks and not wanted:
        wanted = (ListenAddress(Scheme.UNIX, path=str(config.default_socket)),)
    try:
        for address in wanted:
            if address.scheme is Scheme.FD:
                if not socks:
                    raise ListenError("fd:// given but systemd passed no sockets (LISTEN_FDS)")
            elif address.scheme is Scheme.UNIX:
                socks.append(listeners.bind_unix(Path(address.path)))
                created.append(Path(address.path))
            else:
                socks.append(listeners.bind_tcp(address.host, address.port))
    except BaseException:
        listeners.close_all(socks)
        raise
    if any(not listeners.is_unix(s) for s in socks) and config.tls is None \
            and not config.insecure_tcp:
        listeners.close_all(socks)
        raise ListenError("systemd passed a TCP socket but no TLS material was given; "
                          "refusing to serve the API unencrypted")
    return socks, created


async def serve(config: DaemonConfig) -> None:
    config.data_root.mkdir(parents=True, exist_ok=True, mode=0o711)
    config.exec_root.mkdir(parents=True, exist_ok=True, mode=0o711)
    ssl_ctx = listeners.server_ssl_context(config.tls) if config.tls else None
    socks, created = take_sockets(config)
    notifier = Notifier()
    backend = Backend(info=DaemonInfo(data_root=config.data_root, exec_root=config.exec_root))
    services = await start_services(config, backend)
    runner = web.AppRunner(make_app(backend), access_log=None,
                           shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watchdog: asyncio.Task[None] | None = None
    try:
        for sock in socks:
            tls = None if listeners.is_unix(sock) else ssl_ctx
            site = web.SockSite(runner, sock, ssl_context=tls,
                                shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
            await site.start()
            log.info("listening on %s%s", listeners.describe(sock),
                     " (mutual TLS)" if tls else "")
        addresses = ", ".join(listeners.describe(s) for s in socks)
        notifier.send(f"READY=1\nSTATUS=Listening on {addresses}\nMAINPID={os.getpid()}")
        interval = notifier.watchdog_interval()
        if interval is not None:
            watchdog = asyncio.create_task(_watchdog(notifier, interval))
        log.info("berthd %s ready (data root %s, exec root %s)",
                 __version__, config.data_root, config.exec_root)
        await stop.wait()
        log.info("shutting down; containers keep running")
        notifier.send("STOPPING=1\nSTATUS=Shutting down")
    finally:
        if watchdog is not None:
            watchdog.cancel()
        await runner.cleanup()
        await stop_services(services)
        listeners.close_all(socks)
        for path in created:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


async def start_services(config: DaemonConfig, backend: Backend) -> list[object]:
    """Open the image store and start the engine; returns what to stop, in order."""
    from runtime.events import EventBus
    from runtime.store.images import ImageStore

    backend.events = EventBus()
    backend.images = await asyncio.to_thread(ImageStore, config.data_root)
    return []


async def stop_services(services: list[object]) -> None:
    for service in reversed(services):
        close = getattr(service, "aclose", None)
        if close is not None:
            await close()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = config_from_args(argv)
    except ListenError as e:
        print(f"berthd: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.logging_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(config))
    except ListenError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
