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
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from aiohttp import web

from runtime import __version__
from runtime.api import listeners
from runtime.api.app import make_app
from runtime.api.backend import Backend, DaemonInfo
from runtime.api.listeners import ListenAddress, ListenError, Scheme, TlsFiles
from runtime.run import CommandError

log = logging.getLogger("berth.daemon")

DEFAULT_DATA_ROOT = Path("/var/lib/berth")
DEFAULT_EXEC_ROOT = Path("/run/berth")
DEFAULT_CONTAINERS_DIR = Path("/etc/berth/containers.d")
DEFAULT_HOOKS_DIR = Path("/etc/berth/hooks.d")
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
    bridge: str = ""                       # "none": no networking service at all
    userns: bool = True
    log_driver: str = "auto"
    insecure_registries: tuple[str, ...] = ()
    containers_dir: Path | None = None     # declarative containers (containers.d)
    hooks_dir: Path | None = None          # event hooks (hooks.d)
    policy: Path = Path("/etc/berth/policy.json")
    cgroup_parent: Path | None = None      # None: the delegated subtree, else the engine's

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
    p.add_argument("-b", "--bridge", default="",
                   help="'none': no container networking (bridge mode falls back to a "
                        "loopback-only netns); default: the berth0 bridge")
    p.add_argument("--userns", choices=("default", "host"), default="default",
                   help="map container root to an unprivileged host range (default) or not")
    p.add_argument("--log-driver", choices=("auto", "json-file", "journald"), default="auto",
                   help="container logs: journald where it runs, else json-file (auto)")
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST:PORT",
                   help="a registry reached over plain HTTP; repeatable")
    p.add_argument("--policy", type=Path, default=Path("/etc/berth/policy.json"),
                   help="trust policy for pulls and runs (no file: accept all; "
                        "default %(default)s)")
    p.add_argument("--cgroup-parent", type=Path, default=None,
                   help="cgroup v2 directory for containers' cgroups (default: the subtree "
                        "systemd delegated to berthd.service, else <cgroup2 mount>/berth)")
    p.add_argument("--containers-dir", default=None, metavar="DIR",
                   help="watch DIR for declarative containers (*.toml); default "
                        f"{DEFAULT_CONTAINERS_DIR} for the system daemon (default data "
                        "root), none otherwise; '' turns it off")
    p.add_argument("--hooks-dir", default=None, metavar="DIR",
                   help="run the executables in DIR on matching events (TYPE.ACTION[.x]); "
                        f"default {DEFAULT_HOOKS_DIR} for the system daemon, none otherwise")
    return p


def system_dir(flag: str | None, data_root: Path, default: Path) -> Path | None:
    """A host-wide /etc directory is the system daemon's alone: a daemon with its own
    data root (a test, a second daemon) only watches one if told to."""
    if flag is not None:
        return Path(flag) if flag else None
    return default if data_root == DEFAULT_DATA_ROOT else None


def config_from_args(argv: Sequence[str] | None = None) -> DaemonConfig:
    args = build_parser().parse_args(argv)
    hosts = tuple(listeners.parse_address(h) for h in args.host)
    tls = listeners.tls_files(args.tlscacert, args.tlscert, args.tlskey,
                              os.environ.get("CREDENTIALS_DIRECTORY"))
    config = DaemonConfig(hosts=hosts, data_root=args.data_root.absolute(),
                          exec_root=args.exec_root.absolute(), tls=tls,
                          insecure_tcp=args.insecure_tcp, log_level=args.log_level,
                          bridge=args.bridge, userns=args.userns == "default",
                          log_driver=args.log_driver,
                          insecure_registries=tuple(args.insecure_registry),
                          containers_dir=system_dir(args.containers_dir, args.data_root,
                                                    DEFAULT_CONTAINERS_DIR),
                          hooks_dir=system_dir(args.hooks_dir, args.data_root,
                                               DEFAULT_HOOKS_DIR),
                          policy=args.policy,
                          cgroup_parent=args.cgroup_parent)
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


async def _watchdog(notifier: Notifier, interval: float, backend: Backend) -> None:
    """Pings from the event loop itself (a stuck loop misses them), with a fresh STATUS."""
    while True:
        notifier.send(f"WATCHDOG=1\nSTATUS={status_line(backend)}")
        await asyncio.sleep(interval)


def status_line(backend: Backend) -> str:
    """What `systemctl status berthd` shows: the daemon's load at a glance."""
    mgr = backend.containers
    if mgr is None:
        return "Serving the API"
    info = mgr.info()
    return f"{info.running} running, {info.paused} paused, {info.stopped} stopped containers"


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
    backend = Backend(info=DaemonInfo(data_root=config.data_root, exec_root=config.exec_root,
                                      engine_id=engine_id(config.data_root)))
    try:
        services = await start_services(config, backend)
    except BaseException:
        listeners.close_all(socks)
        raise
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
        notifier.send(f"READY=1\nSTATUS=Listening on {addresses}; {status_line(backend)}\n"
                      f"MAINPID={os.getpid()}")
        interval = notifier.watchdog_interval()
        if interval is not None:
            watchdog = asyncio.create_task(_watchdog(notifier, interval, backend))
        log.info("berthd %s ready (data root %s, exec root %s)",
                 __version__, config.data_root, config.exec_root)
        await stop.wait()
        log.info("shutting down; containers keep running")
        notifier.send("STOPPING=1\nSTATUS=Shutting down")
    finally:
        if watchdog is not None:
            watchdog.cancel()
        await runner.cleanup()
        await services.stop()
        listeners.close_all(socks)
        for path in created:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


class _EngineImageUsers:
    """The store's ImageUsers seam: which containers use an image (rmi refuses those)."""

    def __init__(self) -> None:
        self.manager: Any = None

    def containers_using(self, image_id: str) -> list[str]:
        if self.manager is None:
            return []
        # Called from the store's worker thread: copy before iterating.
        handles = list(self.manager.containers.values())
        return [c.id for c in handles if c.record.image_id == image_id]


@dataclass
class Services:
    """What the daemon started, to stop in reverse order; containers keep running."""

    manager: Any = None
    network: Any = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.manager is not None:
            await self.manager.shutdown()
        if self.network is not None:
            await self.network.close()


CGROUP_MOUNT = Path("/sys/fs/cgroup")


def delegated_cgroup_root(proc_cgroup: str, under_systemd: bool) -> Path | None:
    """Where containers' cgroups go when systemd delegated a subtree to berthd.

    berthd.service has Delegate=yes and DelegateSubgroup=supervisor: the daemon
    runs in <service>/supervisor and owns <service>; containers go beside it in
    <service>/containers (a cgroup with processes cannot also hand controllers
    to children, hence the two leaves).
    """
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            path = line[3:].strip()
            if under_systemd and path.endswith("/supervisor"):
                return CGROUP_MOUNT / path.strip("/").rpartition("/")[0] / "containers"
    return None


def engine_id(data_root: Path) -> str:
    """A stable id for this daemon's data root (Docker's `info` ID)."""
    path = data_root / "engine-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        ident = str(uuid.uuid4()).upper()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(ident + "\n")
        os.replace(tmp, path)
        return ident


async def start_services(config: DaemonConfig, backend: Backend) -> Services:
    """Open the image store, start networking and the engine, re-adopt containers."""
    from runtime.container.manager import ContainerManager, EngineConfig
    from runtime.events import EventBus
    from runtime.policy import TrustedResolver
    from runtime.registry.client import RegistryOptions
    from runtime.registry.service import RegistryService
    from runtime.store.db import open_db
    from runtime.store.images import ImageStore

    services = Services()
    backend.events = EventBus()
    users = _EngineImageUsers()
    store = await asyncio.to_thread(ImageStore, config.data_root, users=users)
    backend.images = store
    backend.puller = RegistryService(store, RegistryOptions(
        insecure=frozenset(config.insecure_registries)), policy_path=config.policy)
    db = open_db(config.data_root / "berth.db")
    provider = None
    if config.bridge != "none":
        from runtime.net.engine import EngineNetwork
        from runtime.net.provider import NetworkService

        net = NetworkService(db)
        await net.start()
        services.network = backend.networks = net
        provider = EngineNetwork(net, files_root=config.data_root / "net")
    cgroup_root = config.cgroup_parent or delegated_cgroup_root(
        Path("/proc/self/cgroup").read_text(), bool(os.environ.get("INVOCATION_ID")))
    engine = EngineConfig(root=config.data_root, exec_root=config.exec_root,
                          cgroup_root=cgroup_root, userns=config.userns,
                          log_driver=config.log_driver)
    # The trust policy stands in front of the store: no container from an image it refuses.
    mgr = ContainerManager(engine, images=TrustedResolver(store, config.policy),
                           events=backend.events, network=provider, db=db)
    await mgr.adopt()
    if services.network is not None:
        await services.network.reconcile({rec.id for rec in mgr.list(all=False)})
    users.manager = services.manager = backend.containers = mgr
    if config.containers_dir is not None:
        from runtime.declarative import Reconciler

        reconciler = Reconciler(mgr, config.containers_dir)
        services.tasks.append(asyncio.create_task(reconciler.watch()))
    if config.hooks_dir is not None:
        from runtime.api.hooks import run_hooks

        services.tasks.append(asyncio.create_task(run_hooks(backend.events,
                                                            config.hooks_dir)))
    return services


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
    except (OSError, CommandError) as e:
        # Expected start-up failures (a read-only data root, nft missing): one line,
        # the traceback only at debug level.
        log.error("berthd cannot start: %s", e, exc_info=config.log_level is LogLevel.DEBUG)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
