"""`hostos update status|check|apply`: thin verbs over hostos.update.agent."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from hostos.errors import HostosError
from hostos.update.agent import Agent, Fleet, reconcile
from hostos.update.config import load_settings
from hostos.update.host import LocalHost
from hostos.update.slots import SlotError, SlotTable
from hostos.update.state import StateStore

log = logging.getLogger("hostos.update")


def _fleet(root: Path) -> Fleet | None:
    """The fleet agent (rollout gate, FleetLock, reports), or None without fleet tooling."""
    try:
        from hostos.fleetagent import FleetAgent
    except ImportError:
        return None
    try:
        return FleetAgent.from_host(root)
    except (HostosError, OSError, ValueError) as e:
        log.warning("fleet settings unusable, updating without them: %s", e)
        return None


def status(agent: Agent) -> dict[str, Any]:
    """What an operator needs: booted version and slot, staged one, phase, last error."""
    stored = StateStore(agent.settings.state_dir).load()
    out: dict[str, Any] = {"phase": str(stored.phase), "last_error": stored.last_error,
                           "bad_versions": list(stored.bad_versions)}
    try:
        seen = agent.observe()
        state = reconcile(stored, seen)
        out.update({
            "booted": {"version": str(seen.booted_version), "usrhash": seen.booted_usrhash},
            "entries": [{"file": e.filename, "version": str(e.version), "state": str(e.state)}
                        for e in seen.entries],
            "phase": str(state.phase),
            "last_error": state.last_error,
            "bad_versions": list(state.bad_versions),
        })
        slots = SlotTable.from_table(agent.host.disk().read_table(), seen.booted_usrhash)
        out["slots"] = [{"slot": s.name, "version": s.version, "active": s is slots.active}
                        for s in slots.slots]
    except (SlotError, OSError) as e:
        out["host_error"] = str(e)
    target = stored.target
    out["target"] = target.to_json() if target else None
    out["staged"] = target.version if stored.phase.value in (
        "staged", "rebooting", "verifying") and target else None
    return out


def _agent(args: argparse.Namespace) -> Agent:
    settings = load_settings()
    fleet = None if args.no_fleet else _fleet(Path("/"))
    return Agent(settings, LocalHost(settings), fleet)


def _status(args: argparse.Namespace) -> int:
    info = status(_agent(args))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    booted = info.get("booted", {})
    print(f"booted:   {booted.get('version', '?')}")
    for s in info.get("slots", []):
        mark = "*" if s["active"] else " "
        print(f"slot {s['slot']}: {mark} {s['version'] or '(empty)'}")
    for e in info.get("entries", []):
        print(f"entry:    {e['file']} ({e['state']})")
    print(f"phase:    {info['phase']}")
    if info.get("staged"):
        print(f"staged:   {info['staged']}")
    if info.get("last_error"):
        print(f"error:    {info['last_error']}")
    if info.get("bad_versions"):
        print(f"bad:      {', '.join(info['bad_versions'])}")
    if info.get("host_error"):
        print(f"host:     {info['host_error']}")
    return 0


def _check(args: argparse.Namespace) -> int:
    result = _agent(args).check()
    if result.decision is None:
        print(result.message)
        return 0
    print(f"{result.decision.verdict}: {result.decision.reason}")
    return 0


def _apply(args: argparse.Namespace) -> int:
    result = _agent(args).apply()
    print(result.message)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("update", help="A/B host updates: status, check, apply")
    verbs = p.add_subparsers(dest="update_command", metavar="VERB", required=True)
    for name, func, text in (
        ("status", _status, "booted and staged versions, update phase, last error"),
        ("check", _check, "look for a newer release (writes nothing)"),
        ("apply", _apply, "install a newer release in the inactive slot and reboot"),
    ):
        v = verbs.add_parser(name, help=text)
        v.add_argument("--no-fleet", action="store_true",
                       help="ignore fleet settings (rollout waves, FleetLock, reports)")
        if name == "status":
            v.add_argument("--json", action="store_true", help="machine-readable output")
        v.set_defaults(func=func)
