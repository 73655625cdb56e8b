"""The live memory.events watch: a change of the file reaches the engine at once.

cgroupfs notifies memory.events changes as IN_MODIFY; a regular file written in
a temp dir gives the same inotify event, so the watch's plumbing is tested here
without root (the VM test shows the real OOM kill)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from runtime.cgroups.watch import MemoryEventsWatch


def test_a_change_of_memory_events_calls_back_with_the_containers_key(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "memory.events").write_text("oom 0\noom_kill 0\n")
    (tmp_path / "none").mkdir()

    seen: list[str] = []

    async def scenario() -> None:
        changed = asyncio.Event()

        def on_change(key: str) -> None:
            seen.append(key)
            changed.set()

        w = MemoryEventsWatch(on_change)
        w.add("ctr-a", a)
        w.add("ctr-b", b)
        w.add("ctr-none", tmp_path / "none")   # no memory controller: nothing watched
        (b / "memory.events").write_text("oom 1\noom_kill 1\n")
        await asyncio.wait_for(changed.wait(), 5)
        assert set(seen) == {"ctr-b"}
        w.remove("ctr-b")
        changed.clear()
        seen.clear()
        (b / "memory.events").write_text("oom 2\noom_kill 2\n")   # no longer watched
        (a / "memory.events").write_text("oom 1\noom_kill 1\n")
        await asyncio.wait_for(changed.wait(), 5)
        w.close()

    asyncio.run(scenario())
    # Events come in order: had b still been watched, its change would show here first.
    assert set(seen) == {"ctr-a"}
