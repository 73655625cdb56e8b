"""Declarative containers: one TOML file per container in a drop-in directory.

/etc/berth/containers.d/web.toml (the directory is configurable):

    image = "nginx"
    cmd = ["nginx", "-g", "daemon off;"]
    env = { MODE = "prod" }          # or ["MODE=prod"]
    restart = "always"               # default: always
    network = "none"                 # none | host | bridge | <network>
    volumes = ["/srv/www:/usr/share/nginx/html:ro", "cache:/var/cache/nginx"]
    memory = "256m"; cpus = 0.5; pids_limit = 100; read_only = false
    user = "www"; workdir = "/"; hostname = "web"; labels = { team = "a" }; ports = ["80"]

The container is named after the file (`web`) and labelled with the file
and a hash of its content. pyinotify watches the directory; on any change
the daemon reconciles: creates and starts what is new, replaces what
changed, removes containers whose file is gone. A file that does not parse
or validate is logged with the reason and changes nothing: its container,
if any, keeps running as it was. A container that cannot be created or
started yet (its image is not loaded or pulled yet, say) is logged once and
retried with back-off (1 s doubling to 60 s), and at once when an image is
loaded, pulled, imported or tagged (the daemon's event bus).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from runtime.container.errors import ContainerError
from runtime.container.spec import CreateRequest, RestartPolicy, VolumeRequest, validate_name
from runtime.container.state import Status
from runtime.events import Event
from runtime.oci import ImageNotFound

if TYPE_CHECKING:
    from runtime.container.manager import ContainerManager

log = logging.getLogger("berth.declarative")

DEFAULT_DIR = Path("/etc/berth/containers.d")
LABEL_FILE = "io.berth.declarative.file"
LABEL_HASH = "io.berth.declarative.hash"
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([bkmgt]?)i?b?$", re.IGNORECASE)
_KEYS = {"image", "cmd", "entrypoint", "env", "restart", "network", "volumes", "memory", "cpus",
         "pids_limit", "read_only", "user", "workdir", "hostname", "labels", "ports", "tmpfs",
         "stop_signal", "stop_timeout", "cap_add", "cap_drop", "name"}


class DeclarativeError(ValueError):
    pass


@dataclass(frozen=True)
class Desired:
    path: Path
    name: str
    digest: str
    request: CreateRequest


def parse_size(value: str | int) -> int:
    """"256m", "1g", "512k", 1048576 -> bytes (Docker's units, powers of 1024)."""
    if isinstance(value, int):
        return value
    m = _SIZE.match(value.strip())
    if not m:
        raise DeclarativeError(f"invalid size {value!r}: use a number with b, k, m, g or t")
    mult = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    return int(float(m.group(1)) * mult[m.group(2).lower()])


def _strs(doc: dict[str, Any], key: str) -> tuple[str, ...] | None:
    v = doc.get(key)
    if v is None:
        return None
    if isinstance(v, str):
        return (v,)
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise DeclarativeError(f"{key} must be a list of strings")
    return tuple(v)


def parse(text: str, name: str) -> CreateRequest:
    """Validate one file's content into a create request; raises DeclarativeError."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise DeclarativeError(f"not valid TOML: {e}") from None
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise DeclarativeError(f"unknown keys: {', '.join(unknown)}")
    image = doc.get("image")
    if not isinstance(image, str) or not image:
        raise DeclarativeError("image is required (a string)")
    env_doc = doc.get("env", ())
    if isinstance(env_doc, dict):
        env = tuple(f"{k}={v}" for k, v in env_doc.items())
    else:
        env = _strs(doc, "env") or ()
    labels = doc.get("labels", {})
    if not isinstance(labels, dict):
        raise DeclarativeError("labels must be a table")
    try:
        cpus = doc.get("cpus")
        if cpus is not None and (not isinstance(cpus, int | float) or cpus <= 0):
            raise DeclarativeError("cpus must be a positive number")
        pids = doc.get("pids_limit")
        if pids is not None and not isinstance(pids, int):
            raise DeclarativeError("pids_limit must be an integer")
        return CreateRequest(
            image=image, cmd=_strs(doc, "cmd"), entrypoint=_strs(doc, "entrypoint"),
            name=validate_name(str(doc.get("name", name))), env=env,
            user=str(doc.get("user", "")), working_dir=str(doc.get("workdir", "")),
            hostname=str(doc.get("hostname", "")),
            labels=MappingProxyType({str(k): str(v) for k, v in labels.items()}),
            volumes=tuple(VolumeRequest.parse(v) for v in _strs(doc, "volumes") or ()),
            tmpfs=_strs(doc, "tmpfs") or (), read_only=bool(doc.get("read_only", False)),
            network_mode=str(doc.get("network", "none")),
            network_options=MappingProxyType({"ports": _strs(doc, "ports") or ()}),
            memory=parse_size(doc["memory"]) if "memory" in doc else None,
            nano_cpus=int(cpus * 1e9) if cpus is not None else None, pids_limit=pids,
            restart_policy=RestartPolicy.parse(str(doc.get("restart", "always"))),
            stop_signal=doc.get("stop_signal"), stop_timeout=doc.get("stop_timeout"),
            cap_add=_strs(doc, "cap_add") or (), cap_drop=_strs(doc, "cap_drop") or ())
    except ContainerError as e:
        raise DeclarativeError(str(e)) from None


def load(directory: Path) -> tuple[dict[str, Desired], dict[str, str]]:
    """(valid files by container name, errors by file name)."""
    desired: dict[str, Desired] = {}
    errors: dict[str, str] = {}
    for path in sorted(directory.glob("*.toml")) if directory.is_dir() else []:
        try:
            raw = path.read_bytes()
            req = parse(raw.decode(), path.stem)
        except (DeclarativeError, OSError, UnicodeDecodeError) as e:
            errors[path.name] = str(e)
            continue
        name = (req.name or path.stem).lstrip("/")
        if name in desired:
            errors[path.name] = f"container name {name} is already declared by " \
                                f"{desired[name].path.name}"
            continue
        digest = hashlib.sha256(raw).hexdigest()[:16]
        labels = dict(req.labels)
        labels.update({LABEL_FILE: path.name, LABEL_HASH: digest})
        req = dataclasses.replace(req, labels=MappingProxyType(labels))
        desired[name] = Desired(path, name, digest, req)
    return desired, errors


# Back-off between retries of files whose container could not be created or started
# (most often: its image is not loaded or pulled yet). An image event retries at once.
RETRY_FIRST = 1.0
RETRY_MAX = 60.0
IMAGE_ARRIVALS = frozenset({"load", "pull", "import", "tag"})


class Reconciler:
    def __init__(self, manager: ContainerManager, directory: Path = DEFAULT_DIR) -> None:
        self.manager = manager
        self.directory = directory
        self._pending: asyncio.Task[None] | None = None   # scheduled, not begun yet
        self._tasks: set[asyncio.Task[None]] = set()
        self._retry: asyncio.TimerHandle | None = None
        self._failed_rounds = 0
        self._lock = asyncio.Lock()      # one reconcile at a time (files, images, retries)
        self.last_errors: dict[str, str] = {}
        # Declared containers that could not be created or started yet: name -> reason.
        self.waiting: dict[str, str] = {}

    async def reconcile(self) -> None:
        async with self._lock:
            await self._reconcile()

    async def _reconcile(self) -> None:
        desired, errors = load(self.directory)
        for fname, err in errors.items():
            if self.last_errors.get(fname) != err:
                log.error("%s: %s (nothing changed for this file)", self.directory / fname, err)
        self.last_errors = errors
        bad_files = set(errors)
        mgr = self.manager
        current = {rec.name: rec for rec in mgr.list(all=True)
                   if LABEL_FILE in rec.spec.labels}
        for name, rec in current.items():
            fname = rec.spec.labels[LABEL_FILE]
            want = desired.get(name)
            if want is None and fname not in bad_files:
                log.info("declarative: removing %s (%s is gone)", name, fname)
                await self._guard(mgr.remove(rec.id, force=True), name)
            elif want is not None and rec.spec.labels.get(LABEL_HASH) != want.digest:
                log.info("declarative: replacing %s (%s changed)", name, fname)
                await self._guard(mgr.remove(rec.id, force=True), name)
        records = {rec.name: rec for rec in mgr.list(all=True)}
        failed: dict[str, str] = {}
        for name, want in desired.items():
            existing = records.get(name)
            if existing is not None and not (LABEL_FILE in existing.spec.labels
                                             and existing.state.status is Status.CREATED):
                continue
            # Absent, or declared but never started (its start failed): bring it up.
            if name not in self.waiting:
                log.info("declarative: %s %s from %s",
                         "creating" if existing is None else "starting", name, want.path.name)
            try:
                if existing is None:
                    existing = await mgr.create(want.request)
                await mgr.start(existing.id)
            except Exception as e:
                failed[name] = self._reason(want, e)
        self._note_failures(failed)

    @staticmethod
    def _reason(want: Desired, e: Exception) -> str:
        if isinstance(e, ImageNotFound):
            return (f"image {want.request.image} not found: the container starts once it "
                    f"is loaded or pulled")
        return str(e) or type(e).__name__

    def _note_failures(self, failed: dict[str, str]) -> None:
        for name, reason in failed.items():
            if self.waiting.get(name) != reason:   # once per reason, not at every retry
                log.error("declarative: %s: %s (retrying)", name, reason)
        for name in self.waiting.keys() - failed.keys():
            log.info("declarative: %s is up", name)
        self.waiting = failed
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if not failed:
            self._failed_rounds = 0
            return
        delay = min(RETRY_FIRST * 2 ** self._failed_rounds, RETRY_MAX)
        self._failed_rounds += 1
        self._retry = asyncio.get_running_loop().call_later(delay, self.schedule, 0.0)

    def on_event(self, event: Event) -> None:
        """An image arrived: retry the waiting containers now rather than at the back-off."""
        if self.waiting and event.type == "image" and event.action in IMAGE_ARRIVALS:
            self.schedule()

    @staticmethod
    async def _guard(coro: Any, name: str) -> None:
        try:
            await coro
        except Exception as e:
            log.error("declarative: %s: %s", name, e)

    def schedule(self, delay: float = 0.2) -> None:
        """Reconcile soon, once, however many events arrive before it begins."""
        if self._pending is not None:
            return

        async def later() -> None:
            await asyncio.sleep(delay)
            self._pending = None   # a change from now on needs a reconcile of its own
            await self.reconcile()

        task = asyncio.get_running_loop().create_task(later())
        self._pending = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def watch(self) -> None:
        """Reconcile now, then on every change of the directory (until cancelled)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        images = asyncio.get_running_loop().create_task(self._watch_images())
        try:
            await self._watch_files()
        finally:
            images.cancel()
            if self._retry is not None:
                self._retry.cancel()
            for task in list(self._tasks):
                task.cancel()

    async def _watch_images(self) -> None:
        async for event in self.manager.events.subscribe(
                match=lambda ev: ev.type == "image" and ev.action in IMAGE_ARRIVALS):
            self.on_event(event)

    async def _watch_files(self) -> None:
        await self.reconcile()
        loop = asyncio.get_running_loop()
        try:
            import pyinotify
        except ImportError as e:  # pyinotify needs asyncore (pyasyncore on 3.12+)
            log.warning("pyinotify unavailable (%s): polling %s every 2s", e, self.directory)
            while True:
                await asyncio.sleep(2)
                await self.reconcile()
        wm = pyinotify.WatchManager()
        mask = (pyinotify.IN_CLOSE_WRITE | pyinotify.IN_MOVED_TO | pyinotify.IN_MOVED_FROM
                | pyinotify.IN_DELETE | pyinotify.IN_CREATE)
        wm.add_watch(str(self.directory), mask)
        notifier = pyinotify.Notifier(wm, default_proc_fun=lambda _ev: self.schedule(),
                                      timeout=0)
        fd = wm.get_fd()

        def readable() -> None:
            notifier.read_events()
            notifier.process_events()

        loop.add_reader(fd, readable)
        try:
            await asyncio.Event().wait()
        finally:
            loop.remove_reader(fd)
            notifier.stop()
