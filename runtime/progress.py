"""Progress of long work (pulls, pushes, loads), one line per item.

`Progress` is the seam: the registry client reports into it. `RichProgress`
draws bars on a terminal (the CLI), `JsonProgress` turns the same reports
into Docker's JSON progress messages (`{"status": "Downloading", "id": ...,
"progressDetail": {"current": n, "total": m}}`) for the API's streamed
answers, `NullProgress` discards them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)
from rich.progress import Progress as _RichBars


class Progress(Protocol):
    def start(self, item: str, action: str, total: int | None) -> None: ...
    def advance(self, item: str, n: int) -> None: ...
    def done(self, item: str, status: str) -> None: ...
    def message(self, text: str) -> None: ...


class NullProgress:
    def start(self, item: str, action: str, total: int | None) -> None:
        pass

    def advance(self, item: str, n: int) -> None:
        pass

    def done(self, item: str, status: str) -> None:
        pass

    def message(self, text: str) -> None:
        pass


def short(item: str) -> str:
    """Docker shows 12 hex digits of a digest."""
    return item.split(":", 1)[-1][:12]


class JsonProgress:
    """Docker's JSON progress stream; `emit` gets one dict per message."""

    def __init__(self, emit: Callable[[dict[str, Any]], None], interval: float = 0.1) -> None:
        self.emit = emit
        self.interval = interval
        self._state: dict[str, tuple[str, int, int | None, float]] = {}

    def start(self, item: str, action: str, total: int | None) -> None:
        self._state[item] = (action, 0, total, 0.0)
        self.emit({"status": action, "id": short(item)})

    def advance(self, item: str, n: int) -> None:
        action, cur, total, last = self._state.get(item, ("Downloading", 0, None, 0.0))
        cur += n
        now = time.monotonic()
        if now - last >= self.interval or (total is not None and cur >= total):
            detail: dict[str, int] = {"current": cur}
            if total is not None:
                detail["total"] = total
            self.emit({"status": action, "id": short(item), "progressDetail": detail})
            last = now
        self._state[item] = (action, cur, total, last)

    def done(self, item: str, status: str) -> None:
        self.emit({"status": status, "id": short(item), "progressDetail": {}})

    def message(self, text: str) -> None:
        self.emit({"status": text})


class RichProgress:
    """Bars on a terminal, one per layer; a context manager."""

    def __init__(self, console: Console | None = None) -> None:
        self._bars = _RichBars(TextColumn("{task.fields[item]}"),
                               TextColumn("{task.description:<12}"), BarColumn(),
                               DownloadColumn(), TransferSpeedColumn(), transient=False,
                               console=console)
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichProgress:
        self._bars.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._bars.stop()

    def start(self, item: str, action: str, total: int | None) -> None:
        if item in self._tasks:
            self._bars.update(self._tasks[item], description=action, total=total, completed=0)
            return
        self._tasks[item] = self._bars.add_task(action, total=total, item=short(item))

    def advance(self, item: str, n: int) -> None:
        if item in self._tasks:
            self._bars.advance(self._tasks[item], n)

    def done(self, item: str, status: str) -> None:
        if item not in self._tasks:
            self._tasks[item] = self._bars.add_task(status, total=1, item=short(item))
        task = self._tasks[item]
        total = self._bars.tasks[task].total or 1
        self._bars.update(task, description=status, completed=total)

    def message(self, text: str) -> None:
        self._bars.console.print(text)

    def feed(self, msg: dict[str, Any]) -> None:
        """Draw one of Docker's JSON progress messages (what the API streams to the CLI)."""
        status, item = str(msg.get("status", "")), msg.get("id")
        if "error" in msg:
            self._bars.console.print(f"[red]{msg['error']}[/red]")
            return
        if not item:
            self.message(status)
            return
        item = str(item)
        detail = msg.get("progressDetail") or {}
        if "current" in detail:
            if item not in self._tasks:
                self.start(item, status, detail.get("total"))
            self._bars.update(self._tasks[item], description=status,
                              completed=detail["current"], total=detail.get("total"))
        elif msg.get("progressDetail") == {} or item in self._tasks:
            self.done(item, status)
        else:
            self.start(item, status, None)
