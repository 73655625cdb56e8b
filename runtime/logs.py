"""Container logs: journald when it runs, else a size-rotated json-file per container.

Both drivers take `LogEntry`s from the daemon's log pump (which drains the
container's stdout/stderr FIFOs, see runtime/container/README.md) and read
back with Docker's options: follow, since, until, tail, timestamps.
The json-file format is Docker's: one {"log","stream","time"} object a line.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("berth.logs")

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
FOLLOW_POLL = 0.05


@dataclass(frozen=True)
class LogEntry:
    stream: str          # "stdout" | "stderr"
    time_ns: int
    line: bytes          # with its trailing "\n" (absent on a last partial line)


@dataclass(frozen=True)
class LogOptions:
    follow: bool = False
    since_ns: int = 0
    until_ns: int | None = None
    tail: int | None = None          # None: all
    stdout: bool = True
    stderr: bool = True
    timestamps: bool = False

    def wants(self, e: LogEntry) -> bool:
        if (e.stream == "stdout" and not self.stdout) or (e.stream == "stderr" and not self.stderr):
            return False
        return e.time_ns >= self.since_ns and (self.until_ns is None or e.time_ns <= self.until_ns)


def rfc3339_nano(time_ns: int) -> str:
    secs, nanos = divmod(time_ns, 1_000_000_000)
    base = dt.datetime.fromtimestamp(secs, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{nanos:09d}Z"


def parse_rfc3339_nano(text: str) -> int:
    main, _, frac = text.rstrip("Z").partition(".")
    secs = int(dt.datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC).timestamp())
    return secs * 1_000_000_000 + int((frac + "000000000")[:9])


class LogDriver(Protocol):
    name: str

    def write(self, entry: LogEntry) -> None: ...

    def read(self, opts: LogOptions, alive: Callable[[], bool]) -> AsyncIterator[LogEntry]: ...

    def close(self) -> None: ...

    def remove(self) -> None: ...


def journald_running() -> bool:
    return JOURNAL_SOCKET.is_socket()


class JsonFileLog:
    """<dir>/<id>-json.log, rotated to .1 .. .N-1 when it passes max_size."""

    name = "json-file"
    __slots__ = ("_f", "max_files", "max_size", "path")   # one per container in berthd

    def __init__(self, path: Path, max_size: int = 10 << 20, max_files: int = 3) -> None:
        self.path = path
        self.max_size = max_size
        self.max_files = max(max_files, 1)
        self._f: Any = None

    def _open(self) -> Any:
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "ab", buffering=0)  # noqa: SIM115 - lives with the driver
        return self._f

    def write(self, entry: LogEntry) -> None:
        rec = {"log": entry.line.decode(errors="replace"), "stream": entry.stream,
               "time": rfc3339_nano(entry.time_ns)}
        f = self._open()
        f.write(json.dumps(rec, separators=(",", ":")).encode() + b"\n")
        if f.tell() >= self.max_size:
            self._rotate()

    def _rotate(self) -> None:
        self.close()
        if self.max_files == 1:
            self.path.unlink(missing_ok=True)
            return
        for i in range(self.max_files - 1, 0, -1):
            src = self.path if i == 1 else self.path.with_name(f"{self.path.name}.{i - 1}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i}"))

    def files(self) -> list[Path]:
        """Oldest first."""
        rotated = [self.path.with_name(f"{self.path.name}.{i}")
                   for i in range(self.max_files - 1, 0, -1)]
        return [p for p in [*rotated, self.path] if p.exists()]

    @staticmethod
    def _parse(raw: bytes) -> LogEntry | None:
        try:
            rec = json.loads(raw)
            return LogEntry(rec["stream"], parse_rfc3339_nano(rec["time"]), rec["log"].encode())
        except (ValueError, KeyError):
            return None  # a line cut by a crash mid-write

    def _entries(self) -> Iterator[LogEntry]:
        for p in self.files():
            with contextlib.suppress(FileNotFoundError), open(p, "rb") as f:
                for raw in f:
                    e = self._parse(raw)
                    if e is not None:
                        yield e

    async def read(self, opts: LogOptions, alive: Callable[[], bool]) -> AsyncIterator[LogEntry]:
        if self._f is not None:
            self._f.flush()
        if opts.tail is not None:
            backlog: deque[LogEntry] | list[LogEntry] = deque(
                (e for e in self._entries() if opts.wants(e)), maxlen=max(opts.tail, 0))
        else:
            backlog = [e for e in self._entries() if opts.wants(e)]
        for e in backlog:
            yield e
        if not opts.follow:
            return
        # Follow the live file from its current end; reopen it after a rotation.
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed in finally
        except FileNotFoundError:
            self._open()
            f = open(self.path, "rb")  # noqa: SIM115
        try:
            f.seek(0, os.SEEK_END)
            ino = os.fstat(f.fileno()).st_ino
            partial = b""
            while True:
                chunk = f.readline()
                if chunk:
                    partial += chunk
                    if partial.endswith(b"\n"):
                        got = self._parse(partial)
                        partial = b""
                        if got is not None and opts.wants(got):
                            yield got
                        if (got is not None and opts.until_ns is not None
                                and got.time_ns > opts.until_ns):
                            return
                    continue
                try:
                    rotated = os.stat(self.path).st_ino != ino
                except FileNotFoundError:
                    rotated = False
                if rotated:
                    f.close()
                    f = open(self.path, "rb")  # noqa: SIM115
                    ino = os.fstat(f.fileno()).st_ino
                    continue
                if not alive():
                    return
                await asyncio.sleep(FOLLOW_POLL)
        finally:
            f.close()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def remove(self) -> None:
        self.close()
        for p in self.files():
            p.unlink(missing_ok=True)


class JournalLog:
    """Entries go to journald with CONTAINER_ID/CONTAINER_NAME fields (as dockerd's driver)."""

    name = "journald"
    __slots__ = ("_journal", "container_id", "container_name")   # one per container

    def __init__(self, container_id: str, name: str) -> None:
        from systemd import journal

        self._journal = journal
        self.container_id = container_id
        self.container_name = name

    def write(self, entry: LogEntry) -> None:
        self._journal.send(
            entry.line.rstrip(b"\n").decode(errors="replace"),
            PRIORITY="3" if entry.stream == "stderr" else "6",
            CONTAINER_ID=self.container_id[:12], CONTAINER_ID_FULL=self.container_id,
            CONTAINER_NAME=self.container_name, SYSLOG_IDENTIFIER=self.container_name,
            BERTH_STREAM=entry.stream, BERTH_TIME_NS=str(entry.time_ns))

    def _reader(self, opts: LogOptions) -> Any:
        r = self._journal.Reader()
        r.add_match(CONTAINER_ID_FULL=self.container_id)
        if opts.since_ns:
            r.seek_realtime(dt.datetime.fromtimestamp(opts.since_ns / 1e9))
        return r

    @staticmethod
    def _entry(rec: Mapping_) -> LogEntry:
        t = int(rec.get("BERTH_TIME_NS") or rec["__REALTIME_TIMESTAMP"].timestamp() * 1e9)
        return LogEntry(str(rec.get("BERTH_STREAM", "stdout")), t,
                        str(rec.get("MESSAGE", "")).encode() + b"\n")

    async def read(self, opts: LogOptions, alive: Callable[[], bool]) -> AsyncIterator[LogEntry]:
        def backlog() -> tuple[Any, list[LogEntry]]:
            # A long journal takes a while to read: not on the daemon's event loop.
            r = self._reader(opts)
            return r, [e for e in (self._entry(rec) for rec in r) if opts.wants(e)]

        r, entries = await asyncio.to_thread(backlog)
        try:
            if opts.tail is not None:
                entries = entries[-opts.tail:] if opts.tail > 0 else []
            for e in entries:
                yield e
            while opts.follow:
                r.wait(0)  # let the reader see journal files that grew or rotated
                for rec in r:
                    e = self._entry(rec)
                    if opts.until_ns is not None and e.time_ns > opts.until_ns:
                        return
                    if opts.wants(e):
                        yield e
                if not alive():
                    return
                await asyncio.sleep(FOLLOW_POLL)
        finally:
            r.close()

    def close(self) -> None:
        pass

    def remove(self) -> None:
        pass  # journald owns retention


Mapping_ = dict[str, Any]


def open_driver(kind: str, container_id: str, name: str, log_dir: Path,
                max_size: int, max_files: int) -> LogDriver:
    """kind: "auto" (journald if its socket exists, else json-file), "journald", "json-file"."""
    if kind == "journald" or (kind == "auto" and journald_running()):
        try:
            return JournalLog(container_id, name)
        except ImportError:
            log.warning("systemd-python is not installed: logging to json-file")
    return JsonFileLog(log_dir / f"{container_id}-json.log", max_size, max_files)
