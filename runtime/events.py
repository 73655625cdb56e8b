"""In-process event bus in Docker's event shape; the API streams from it.

`publish` is synchronous and cheap; each subscriber has its own bounded
queue (a slow reader loses its oldest events rather than stalling the
engine). A short history lets `/events?since=...` replay recent events.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Event:
    type: str                      # "container", "image", "volume", "network", "daemon"
    action: str                    # "create", "start", "die", "oom", ...
    actor_id: str
    attributes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    time_ns: int = 0
    scope: str = "local"

    def to_docker(self) -> dict[str, Any]:
        """The JSON object Docker's /events streams (API 1.4x)."""
        d: dict[str, Any] = {
            "Type": self.type, "Action": self.action,
            "Actor": {"ID": self.actor_id, "Attributes": dict(self.attributes)},
            "scope": self.scope, "time": self.time_ns // 1_000_000_000, "timeNano": self.time_ns,
        }
        if self.type == "container":
            # Pre-1.22 fields, still sent by dockerd and read by some clients.
            d["id"] = self.actor_id
            d["status"] = self.action
            if "image" in self.attributes:
                d["from"] = self.attributes["image"]
        return d


EventFilter = Callable[[Event], bool]


class EventBus:
    def __init__(self, history: int = 1024, queue_size: int = 4096) -> None:
        self._history: collections.deque[Event] = collections.deque(maxlen=history)
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._queue_size = queue_size

    def publish(self, type: str, action: str, actor_id: str,
                attributes: Mapping[str, str] | None = None) -> Event:
        ev = Event(type, action, actor_id, MappingProxyType(dict(attributes or {})),
                   time.time_ns())
        self._history.append(ev)
        for q in self._subscribers:
            if q.full():
                q.get_nowait()
            q.put_nowait(ev)
        return ev

    def history(self, since_ns: int = 0, until_ns: int | None = None) -> list[Event]:
        return [e for e in self._history
                if e.time_ns >= since_ns and (until_ns is None or e.time_ns <= until_ns)]

    async def subscribe(self, since_ns: int | None = None, until_ns: int | None = None,
                        match: EventFilter | None = None) -> AsyncIterator[Event]:
        """Past events from since_ns (if given), then live ones until until_ns (if given)."""
        q: asyncio.Queue[Event] = asyncio.Queue(self._queue_size)
        self._subscribers.add(q)
        try:
            if since_ns is not None:
                for ev in self.history(since_ns, until_ns):
                    if match is None or match(ev):
                        yield ev
            while True:
                if until_ns is not None:
                    remaining = until_ns - time.time_ns()
                    if remaining <= 0:
                        return
                    try:
                        ev = await asyncio.wait_for(q.get(), remaining / 1e9)
                    except TimeoutError:
                        return
                else:
                    ev = await q.get()
                if until_ns is not None and ev.time_ns > until_ns:
                    return
                if match is None or match(ev):
                    yield ev
        finally:
            self._subscribers.discard(q)
