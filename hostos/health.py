"""hostos-health.service: is this boot good enough to bless?

The unit is RequiredBy= and Before=boot-complete.target, so
systemd-bless-boot marks the booted entry good only if this check passes.
Checks (retried until a deadline, since berthd may still be starting):

  berthd     GET /_ping on its unix socket answers "OK"
  containers every declarative container (/etc/berth/containers.d/<name>.toml)
             is running, per GET /containers/json

On failure the boot stays unblessed. `hostos health finish` runs as the
unit's ExecStopPost=: if the check failed (or hung and was killed) and this
boot is on trial with another entry to fall back to, it reboots, so
systemd-boot counts the try down and eventually boots the previous version.
A blessed version that turns unhealthy is only reported, never rebooted in
a loop. A trial boot that hangs before the check ends (or before it starts)
is rebooted the same way by `hostos health deadline`, which
hostos-boot-deadline.timer runs a fixed time after boot on trial boots.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hostos.update.config import load_settings
from hostos.update.entries import BootEntry, EntryState
from hostos.update.host import LocalHost, reboot_cmd
from runtime.run import run

log = logging.getLogger("hostos.health")
DEFAULT_SOCKET = Path("/run/berth/berthd.sock")
CONTAINERS_DIR = Path("/etc/berth/containers.d")
RETRY_SECONDS = 2.0
BOOT_COMPLETE = "boot-complete.target"


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self.path))
        self.sock = sock


def _get(sock: Path, url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = UnixHTTPConnection(sock, timeout)
    try:
        conn.request("GET", url)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def check_berthd(sock: Path) -> CheckResult:
    try:
        status, body = _get(sock, "/_ping")
    except OSError as e:
        return CheckResult("berthd", False, f"{sock}: {e.strerror or e}")
    if status == 200 and body.strip() == b"OK":
        return CheckResult("berthd", True, "answers /_ping")
    return CheckResult("berthd", False, f"/_ping answered {status} {body[:60]!r}")


def declared_containers(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.toml"))


def check_containers(sock: Path, folder: Path) -> CheckResult:
    wanted = declared_containers(folder)
    if not wanted:
        return CheckResult("containers", True, "none declared")
    try:
        status, body = _get(sock, "/containers/json?all=1")
        listing = json.loads(body) if status == 200 else None
    except (OSError, json.JSONDecodeError) as e:
        return CheckResult("containers", False, f"cannot list containers: {e}")
    if not isinstance(listing, list):
        return CheckResult("containers", False, f"/containers/json answered {status}")
    running = {n.lstrip("/") for c in listing if c.get("State") == "running"
               for n in c.get("Names", [])}
    missing = [n for n in wanted if n not in running]
    if missing:
        return CheckResult("containers", False, f"not running: {', '.join(missing)}")
    return CheckResult("containers", True, f"{len(wanted)} running")


def run_checks(sock: Path, folder: Path, deadline: float,
               clock: Callable[[], float] = time.monotonic) -> list[CheckResult]:
    """Retry until every check passes or the deadline passes; the last results."""
    while True:
        results = [check_berthd(sock)]
        if results[0].ok:
            results.append(check_containers(sock, folder))
        if all(r.ok for r in results) or clock() >= deadline:
            return results
        time.sleep(RETRY_SECONDS)


def _check(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    results = run_checks(args.socket, args.containers, deadline)
    for r in results:
        print(f"{'ok  ' if r.ok else 'FAIL'} {r.name}: {r.detail}")
    return 0 if all(r.ok for r in results) else 1


def trial_reboot(version: str, entries: Sequence[BootEntry], why: str) -> str | None:
    """Why to reboot this boot of `version` after `why`, or None to stay up (pure).

    Only a trial boot (its entry still counting tries, or at +0) with another
    usable entry to fall back to is rebooted: a blessed version that turns
    unhealthy is reported, never rebooted in a loop.
    """
    mine = [e for e in entries if str(e.version) == version]
    others = [e for e in entries if str(e.version) != version and e.state is not EntryState.BAD]
    if not mine or mine[0].state not in (EntryState.TRIAL, EntryState.BAD):
        return None
    if not others:
        return None
    return (f"{why} on trial boot of {version} ({mine[0].filename}): rebooting so the "
            "boot loader counts the try")


def _reboot_if_on_trial(why: str) -> int:
    state = run(["systemctl", "is-system-running"], check=False).stdout.strip()
    if state == "stopping":  # e.g. the deadline's reboot stopping a check still retrying
        print(f"{why} while the system is already going down: nothing to do")
        return 0
    host = LocalHost(load_settings())
    version = str(host.running_version())
    reason = trial_reboot(version, host.esp().entries(), why)
    if reason is None:
        print(f"{why} on {version}, not on trial or nothing to fall back to: not rebooting")
        return 0
    print(reason)
    run(reboot_cmd())
    return 0


def _finish(args: argparse.Namespace) -> int:
    """ExecStopPost=: after a failed check, reboot if this boot is on trial."""
    result = os.environ.get("SERVICE_RESULT", "success")
    if result == "success":
        return 0
    return _reboot_if_on_trial(f"hostos-health failed ({result})")


def _deadline(args: argparse.Namespace) -> int:
    """hostos-boot-deadline.timer: the trial boot has not reached boot-complete.target.

    Covers what hostos-health's own timeout cannot: a boot that hangs before
    the check even starts (it runs after multi-user.target), or a check that
    cannot start at all.
    """
    if run(["systemctl", "is-active", "--quiet", BOOT_COMPLETE], check=False).returncode == 0:
        print(f"{BOOT_COMPLETE} reached in time")
        return 0
    return _reboot_if_on_trial(f"{BOOT_COMPLETE} not reached by the boot deadline")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("health", help="boot health check (hostos-health.service)")
    p.add_argument("--socket", type=Path, default=DEFAULT_SOCKET, help="berthd's API socket")
    p.add_argument("--containers", type=Path, default=CONTAINERS_DIR,
                   help="declarative containers folder")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to keep retrying")
    p.set_defaults(func=_check)
    verbs = p.add_subparsers(dest="health_command", metavar="VERB")
    fin = verbs.add_parser("finish", help="after a failed check: reboot if on trial")
    fin.set_defaults(func=_finish)
    dl = verbs.add_parser("deadline", help="boot deadline passed: reboot a trial boot that "
                          f"has not reached {BOOT_COMPLETE}")
    dl.set_defaults(func=_deadline)
