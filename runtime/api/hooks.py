"""Event hooks: executables in a directory that berthd runs on matching events.

    /etc/berth/hooks.d/container.die.page-oncall     # container `die` events
    /etc/berth/hooks.d/container.any.log             # every container event
    /etc/berth/hooks.d/any.any.audit                 # everything

A hook's file name is TYPE.ACTION[.ANYTHING]; `any` matches every type or
action. It gets the event as Docker's JSON on stdin and as environment
variables (BERTH_EVENT_TYPE, _ACTION, _ID, _NAME, _IMAGE, _EXIT_CODE). Hooks
run one at a time in the order of the events, outside the event loop, each
with a time limit; a failing hook is logged and the next event goes on. The
directory is read at every event, so hooks are added and removed live.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path

from runtime.events import Event, EventBus
from runtime.run import CommandError, run

log = logging.getLogger("berth.hooks")

HOOK_TIMEOUT = 30.0
ANY = "any"


def hook_matches(name: str, ev: Event) -> bool:
    parts = name.split(".")
    if len(parts) < 2:
        return False
    want_type, want_action = parts[0], parts[1]
    action = ev.action.split(":", 1)[0]  # "exec_start: sh" -> "exec_start"
    return want_type in (ANY, ev.type) and want_action in (ANY, action)


def hooks_for(directory: Path, ev: Event) -> list[Path]:
    try:
        entries = sorted(directory.iterdir())
    except FileNotFoundError:
        return []
    return [p for p in entries if p.is_file() and os.access(p, os.X_OK)
            and not p.name.startswith(".") and hook_matches(p.name, ev)]


def hook_env(ev: Event) -> dict[str, str]:
    attrs = ev.attributes
    return {"BERTH_EVENT_TYPE": ev.type, "BERTH_EVENT_ACTION": ev.action,
            "BERTH_EVENT_ID": ev.actor_id, "BERTH_EVENT_NAME": attrs.get("name", ""),
            "BERTH_EVENT_IMAGE": attrs.get("image", ""),
            "BERTH_EVENT_EXIT_CODE": attrs.get("exitCode", ""),
            "BERTH_EVENT_TIME_NANO": str(ev.time_ns)}


def run_hook(path: Path, ev: Event) -> None:
    try:
        run([path], input=json.dumps(ev.to_docker()) + "\n", env=hook_env(ev),
            timeout=HOOK_TIMEOUT)
    except CommandError as e:
        log.warning("hook %s for %s %s failed: %s", path.name, ev.type, ev.action, e)
    except (OSError, TimeoutError, Exception) as e:  # a hook never stops the daemon
        log.warning("hook %s for %s %s: %s", path.name, ev.type, ev.action, e)


async def run_hooks(bus: EventBus, directory: Path) -> None:
    """Until cancelled: for each event, run the hooks that match it."""
    log.info("event hooks from %s", directory)
    async for ev in bus.subscribe():
        for path in hooks_for(directory, ev):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(run_hook, path, ev)
