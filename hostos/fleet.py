"""`hostos fleet status|resume|simulate`, and the host's fleet settings.

Fleet settings say where this host's fleet lives: its reboot group, the
FleetLock server and the etcd its reports and the rollout halt go to. They
are merged Zincati-style from `/usr/lib/hostos/fleet.d/*.toml` (image
defaults), `/run/hostos/fleet.d` and `/etc/hostos/fleet.d` (provisioning
writes `50-provision.toml` there), later files winning per key.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from hostos.errors import HostosError
from hostos.etcd import EtcdClient, EtcdError
from hostos.fleetlock.protocol import DEFAULT_GROUP, ProtocolError, validate_group
from hostos.fleetlock.semaphore import FleetSemaphore, Holder
from hostos.fleetstate import HostReport, hosts
from hostos.rollout import Halt, halted, resume

FLEET_DIRS = ("usr/lib/hostos/fleet.d", "run/hostos/fleet.d", "etc/hostos/fleet.d")
DEFAULT_ETCD = "http://127.0.0.1:2379"


@dataclass(frozen=True)
class FleetSettings:
    group: str = DEFAULT_GROUP
    fleetlock_url: str = ""  # empty: no reboot coordination configured
    etcd_url: str = ""  # empty: no reports, no halt checks

    @classmethod
    def from_mapping(cls, data: dict[str, object], origin: str) -> FleetSettings:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise HostosError(f"{origin}: unknown fleet setting(s) {', '.join(sorted(unknown))}")
        for k, v in data.items():
            if not isinstance(v, str):
                raise HostosError(f"{origin}: {k} must be a string, not {v!r}")
        settings = cls(**data)  # type: ignore[arg-type]
        try:
            validate_group(settings.group)
        except ProtocolError as e:
            raise HostosError(f"{origin}: {e}") from e
        return settings


def load_fleet_settings(root: Path = Path("/")) -> FleetSettings:
    merged: dict[str, object] = {}
    origin = "fleet settings"
    for d in FLEET_DIRS:
        for f in sorted((root / d).glob("*.toml")):
            try:
                merged.update(tomllib.loads(f.read_text()).get("fleet", {}))
            except (OSError, tomllib.TOMLDecodeError) as e:
                raise HostosError(f"{f}: {e}") from e
            origin = str(f)
    return FleetSettings.from_mapping(merged, origin)


# --- status ------------------------------------------------------------------


@dataclass(frozen=True)
class FleetStatus:
    hosts: tuple[HostReport, ...]
    slots: tuple[tuple[str, int, tuple[Holder, ...]], ...]  # group, slots, holders
    halts: tuple[Halt, ...]


async def read_status(etcd_url: str) -> FleetStatus:
    async with EtcdClient(etcd_url) as etcd:
        return await status_of(etcd)


async def status_of(etcd: EtcdClient) -> FleetStatus:
    reports = await hosts(etcd)
    sem = FleetSemaphore(etcd)
    slots = []
    for group in await sem.groups():
        holders, config = await sem.holders(group)
        slots.append((group, config.slots, holders))
    return FleetStatus(tuple(reports), tuple(slots), tuple(await halted(etcd)))


def _ago(t: float, now: float) -> str:
    s = max(0, int(now - t))
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago"


def format_status(st: FleetStatus, now: float | None = None) -> str:
    now = now or time.time()
    lines = []
    rows = [("GROUP", "WAVE", "HOST", "BOOTED", "STATE", "TARGET", "REPORTED", "LAST ERROR")]
    for h in st.hosts:
        rows.append((h.group, str(h.wave), h.hostname, h.booted_version, h.update_state,
                     h.target_version or "-", _ago(h.time, now), h.last_error or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    if not st.hosts:
        lines.append("(no host has reported)")
    versions = Counter((h.group, h.wave, h.booted_version) for h in st.hosts)
    if versions:
        lines.append("")
        lines.append("Versions:")
        for (group, wave, version), n in sorted(versions.items()):
            lines.append(f"  {group} wave {wave}: {version} x{n}")
    lines.append("")
    lines.append("Reboot slots:")
    for group, slots, holders in st.slots:
        who = ", ".join(f"{h.id} (since {_ago(h.since, now)})" for h in holders) or "free"
        lines.append(f"  {group}: {len(holders)}/{slots} held: {who}")
    if not st.slots:
        lines.append("  (no group has used FleetLock yet)")
    if st.halts:
        lines.append("")
        lines.append("Halted rollouts (`hostos fleet resume --version V` continues one):")
        for ht in st.halts:
            lines.append(f"  {ht.version}: {ht.host} rolled back, {ht.reason} "
                         f"({_ago(ht.time, now)})")
    return "\n".join(lines)


def _etcd_url(args: argparse.Namespace) -> str:
    url: str = args.etcd or load_fleet_settings().etcd_url or DEFAULT_ETCD
    return url


def _status_cmd(args: argparse.Namespace) -> int:
    url = _etcd_url(args)
    try:
        st = asyncio.run(read_status(url))
    except EtcdError as e:
        raise HostosError(f"{e} (point --etcd at the fleet's etcd)") from e
    print(format_status(st))
    return 0


def _resume_cmd(args: argparse.Namespace) -> int:
    url = _etcd_url(args)

    async def main() -> list[str]:
        async with EtcdClient(url) as etcd:
            return await resume(etcd, args.version)

    done = asyncio.run(main())
    if not done:
        what = f"version {args.version}" if args.version else "any version"
        raise HostosError(f"no halted rollout of {what}; `hostos fleet status` lists them")
    print(f"resumed the rollout of {', '.join(done)}")
    return 0


def _simulate_cmd(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from hostos.fleetsim import SimulateOptions, simulate  # QEMU, builds: load lazily

    if args.hosts < 1 or args.max_unavailable < 1 or args.boot_tries < 1:
        raise HostosError("--hosts, --max-unavailable and --boot-tries must be at least 1")
    # A bad canary needs its boot tries plus a boot back to fail and halt the
    # rollout (about 9 minutes under TCG with 2 tries): wave 2 must wait longer.
    delay = args.wave_delay if args.wave_delay is not None else (900 if args.bad else 120)
    return simulate(SimulateOptions(
        hosts=args.hosts, max_unavailable=args.max_unavailable, bad=args.bad,
        memory_mib=args.memory, image=args.image, release_image=args.release_image,
        boot_tries=args.boot_tries, wave_delay=timedelta(seconds=delay)))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("fleet", help="fleet-wide rollouts: status, resume, simulate")
    verbs = p.add_subparsers(dest="fleet_verb", metavar="VERB", required=True)

    s = verbs.add_parser("status", help="versions per group and wave, reboot slots, halts")
    s.add_argument("--etcd", help=f"etcd client URL (default: fleet settings, {DEFAULT_ETCD})")
    s.set_defaults(func=_status_cmd)

    r = verbs.add_parser("resume", help="continue a rollout halted by a rollback")
    r.add_argument("--etcd", help="etcd client URL")
    r.add_argument("--version", help="the halted version (default: every halted one)")
    r.set_defaults(func=_resume_cmd)

    m = verbs.add_parser("simulate", help="a fleet of QEMU VMs rolling out one release")
    m.add_argument("--hosts", type=int, default=3)
    m.add_argument("--max-unavailable", type=int, default=1, help="reboot slots")
    m.add_argument("--bad", action="store_true",
                   help="publish a release whose health check fails: watch the halt")
    m.add_argument("--memory", type=int, default=768, help="MiB per VM")
    m.add_argument("--wave-delay", type=int,
                   help="seconds between the canary wave and the rest (default 120, "
                        "900 with --bad)")
    m.add_argument("--boot-tries", type=int, default=2,
                   help="boots a new version gets to become healthy")
    m.add_argument("--image", type=Path, help="image the hosts boot (default: built 0.1.0)")
    m.add_argument("--release-image", type=Path,
                   help="image to release (default: built 0.2.0)")
    m.set_defaults(func=_simulate_cmd)
