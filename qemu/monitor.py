"""QMP (PyPI's qemu.qmp) on its own event-loop thread.

The thread keeps reading while the caller blocks elsewhere (waiting on the
console, running a guest command), so RESET and SHUTDOWN events are seen
when they happen, and the harness never shares an event loop with the code
under test.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError
from qemu.qmp.protocol import ConnectError

log = logging.getLogger("berth.qemu")
# qemu.qmp logs every refused connection attempt as an error and QEMU's exit
# as news; the harness reports what matters itself.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)

T = TypeVar("T")


class MonitorError(Exception):
    """QMP failed; the message names the socket or command and the cause."""


async def _cancel_tasks() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class Monitor:
    def __init__(self, socket_path: Path, name: str = "berth") -> None:
        self._path = socket_path
        self._name = name
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"qmp-{name}", daemon=True
        )
        self._thread.start()
        self._client: QMPClient | None = None
        self._events: list[Mapping[str, Any]] = []
        self._cond = threading.Condition()
        self._handlers: dict[str, list[Callable[[], None]]] = {}

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def connect(self, timeout: float = 30.0,
                exit_status: Callable[[], int | None] = lambda: None) -> None:
        """Connect once QEMU has created the socket; retries until `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            status = exit_status()
            if status is not None:
                raise MonitorError(f"QEMU exited with status {status} before QMP was up")
            try:
                # QEMU creates the socket soon after it starts; connecting
                # before that only makes qemu.qmp log an error per attempt.
                if not self._path.exists():
                    raise FileNotFoundError(f"{self._path} does not exist yet")
                self._client = self._call(self._connect(), timeout)
                break
            except (ConnectError, OSError) as e:
                if time.monotonic() > deadline:
                    raise MonitorError(f"QMP {self._path}: cannot connect: {e}") from e
                time.sleep(0.1)
        asyncio.run_coroutine_threadsafe(self._watch(), self._loop)

    async def _connect(self) -> QMPClient:
        client = QMPClient(self._name)
        await client.connect(str(self._path))
        return client

    async def _watch(self) -> None:
        assert self._client is not None
        async for event in self._client.events:
            log.debug("qmp event: %s", event.get("event"))
            with self._cond:
                # Handlers run before waiters see the event: whoever wakes up
                # on it (wait_event) finds their effect already done.
                for handler in self._handlers.get(str(event.get("event")), ()):
                    try:
                        handler()
                    except Exception:  # a broken handler must not stop event delivery
                        log.exception("qmp event handler for %s", event.get("event"))
                self._events.append(dict(event))
                self._cond.notify_all()

    def execute(self, cmd: str, args: Mapping[str, object] | None = None,
                timeout: float = 30.0) -> object:
        if self._client is None:
            raise MonitorError(f"QMP {self._path}: not connected (for {cmd})")
        try:
            return self._call(self._client.execute(cmd, args), timeout)
        except (QMPError, OSError, EOFError, TimeoutError) as e:
            raise MonitorError(f"QMP {cmd}: {e!r}") from e

    def human(self, command_line: str) -> str:
        out = self.execute("human-monitor-command", {"command-line": command_line})
        return str(out)

    def on_event(self, name: str, handler: Callable[[], None]) -> None:
        """Call `handler` on the monitor's thread as each `name` event arrives,
        before wait_event/event_count see it (so it must be quick and must not
        call back into the monitor).

        For state that must change at the moment of the event (a reset), not
        when the caller next looks at the event list.
        """
        with self._cond:
            self._handlers.setdefault(name, []).append(handler)

    def event_count(self, name: str) -> int:
        with self._cond:
            return sum(1 for e in self._events if e.get("event") == name)

    def wait_event(self, name: str, after: int, timeout: float) -> Mapping[str, Any] | None:
        """The (after+1)-th event called `name`, or None when `timeout` passes."""
        with self._cond:
            def nth() -> Mapping[str, Any] | None:
                seen = [e for e in self._events if e.get("event") == name]
                return seen[after] if len(seen) > after else None
            found = self._cond.wait_for(lambda: nth() is not None, timeout)
            return nth() if found else None

    def close(self) -> None:
        client = self._client
        self._client = None
        if client is not None:
            # QEMU may already be gone (quit, guest power-off): best effort.
            try:
                self._call(client.disconnect(), 10)
            except Exception as e:
                log.debug("qmp disconnect: %r", e)
        try:
            self._call(_cancel_tasks(), 10)
        except Exception as e:
            log.debug("qmp task shutdown: %r", e)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()
