"""Live OOM kills: one inotify instance watching every container's memory.events.

cgroup v2 notifies a change of memory.events as a modification of the file
(Documentation/admin-guide/cgroup-v2.rst, "memory.events ... generates a file
modified event"). containerd watches it the same way, which is why Docker's
`oom` event comes the moment the kernel OOM-kills a process in the container,
before `die` and even when the container's main process survives.

One inotify fd for the whole daemon (not one per container), read on the event
loop. Without pyinotify or without a memory controller (a hybrid host), nothing
is watched and the engine still reports OOM kills at exit from the counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("berth.cgroups")


class MemoryEventsWatch:
    """Calls `on_change(key)` when the watched memory.events of `key` changes."""

    def __init__(self, on_change: Callable[[str], None]) -> None:
        self._on_change = on_change
        self._wm: Any = None
        self._notifier: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._keys: dict[str, str] = {}      # watched path -> key
        self._wds: dict[str, int] = {}       # key -> watch descriptor
        self._unavailable = False

    def _open(self) -> bool:
        if self._wm is not None:
            return True
        if self._unavailable:
            return False
        try:
            import pyinotify
        except ImportError as e:  # pyinotify needs asyncore (pyasyncore on 3.12+)
            log.warning("pyinotify unavailable (%s): OOM kills are reported at exit only", e)
            self._unavailable = True
            return False
        self._wm = pyinotify.WatchManager()
        self._notifier = pyinotify.Notifier(self._wm, default_proc_fun=self._event, timeout=0)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._wm.get_fd(), self._readable)
        return True

    def _readable(self) -> None:
        self._notifier.read_events()
        self._notifier.process_events()

    def _event(self, event: Any) -> None:
        key = self._keys.get(event.path)
        if key is not None:
            self._on_change(key)

    def add(self, key: str, cgroup: Path) -> None:
        """Watch `cgroup`/memory.events (no-op where the file does not exist)."""
        path = cgroup / "memory.events"
        if key in self._wds or not path.exists() or not self._open():
            return
        import pyinotify

        wds = self._wm.add_watch(str(path), pyinotify.IN_MODIFY, quiet=True)
        wd = wds.get(str(path), -1)
        if wd < 0:
            log.warning("cannot watch %s: OOM kills of %s are reported at exit only",
                        path, key[:12])
            return
        self._keys[str(path)] = key
        self._wds[key] = wd

    def remove(self, key: str) -> None:
        """Stop watching (before the cgroup is removed, so no IN_IGNORED is left over)."""
        wd = self._wds.pop(key, None)
        self._keys = {p: k for p, k in self._keys.items() if k != key}
        if wd is not None and self._wm is not None and self._wm.get_watch(wd) is not None:
            self._wm.rm_watch(wd, quiet=True)

    def close(self) -> None:
        if self._wm is None:
            return
        if self._loop is not None:
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                self._loop.remove_reader(self._wm.get_fd())
        self._notifier.stop()
        self._wm = self._notifier = self._loop = None
        self._keys.clear()
        self._wds.clear()
