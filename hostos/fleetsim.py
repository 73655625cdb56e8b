"""`hostos fleet simulate`: a fleet of QEMU VMs rolling out one release.

    etcd (start_etcd) <-- FleetLock server (start_fleetlock, slots = max-unavailable)
    TUF repository (hostos release) on a static HTTP server
    N VMs booted from image A, each provisioned by the `berth.provision`
    credential (hostname, group, update URL, FleetLock and etcd URLs, TUF
    root, strategy fleet_lock), reaching the three services through a second
    user-mode NIC whose guestfwd runs hostos.fleetrelay per connection:
        10.0.3.100:80 -> update server, :2379 -> etcd, :8080 -> FleetLock

The release carries a two-wave plan: a canary wave of one host opens at
once, the rest after `wave_delay`. The agents' timer is shortened by a
drop-in credential so hosts poll every few seconds. The simulator only
watches etcd (host reports, reboot slots, the halt record) and prints each
change; it never drives the guests. At the end it prints a summary table,
with the etcd requests the rollout cost per host (etcd's own counters, less
the simulator's reads), and stops everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from hostos.artifacts import ImageArtifacts, load_image
from hostos.errors import HostosError
from hostos.etcd import EtcdClient, EtcdServer, served_requests, start_etcd
from hostos.fleet import FleetStatus, status_of
from hostos.fleetlock.semaphore import AuditEntry, FleetSemaphore, GroupConfig
from hostos.fleetlock.server import FleetLockServer, start_fleetlock
from hostos.rollout import RolloutPlan, Wave, app_specific_id, fleet_position
from hostos.tomlout import dumps as toml_dumps
from hostos.uki import broken_release_image
from qemu.machine import Machine
from qemu.spec import BootMode, Credential, MachineSpec
from runtime import tls

log = logging.getLogger("hostos.fleetsim")

GUEST_ADDR = "10.0.3.100"
GUEST_PORTS = {"repo": 80, "etcd": 2379, "fleetlock": 8080}
GROUP = "default"
CANARY_PERCENT = 34.0
PASSPHRASE = b"berth fleet simulation key"
# Agents poll every few seconds instead of hourly (a drop-in for the timer,
# systemd >= 256 reads systemd.unit-dropin.* credentials).
TIMER_DROPIN = "[Timer]\nOnBootSec=15s\nOnUnitActiveSec=15s\nRandomizedDelaySec=0\n"


@dataclass(frozen=True)
class SimulateOptions:
    hosts: int = 3
    max_unavailable: int = 1
    bad: bool = False
    memory_mib: int = 768
    image: Path | None = None  # image A, what the hosts boot (default build/image)
    release_image: Path | None = None  # image B, the release (default build/image-b)
    boot_tries: int = 2
    wave_delay: timedelta = timedelta(minutes=2)
    timeout: float = 3600.0


def machine_ids(n: int) -> list[str]:
    """Stable machine ids: the first falls in the canary wave, the others after it."""
    canary: list[str] = []
    rest: list[str] = []
    i = 0
    while not canary or len(rest) < n - 1:
        i += 1
        mid = hashlib.sha256(f"berth-fleet-sim-{i}".encode()).hexdigest()[:32]
        (canary if fleet_position(mid) < CANARY_PERCENT else rest).append(mid)
    return [canary[0], *rest[: n - 1]]


def rollout_plan(now: datetime, wave_delay: timedelta) -> RolloutPlan:
    return RolloutPlan((Wave(CANARY_PERCENT, now), Wave(100.0, now + wave_delay)))


def provisioning(name: str, root_json: str, boot_tries: int) -> dict[str, Any]:
    base = f"http://{GUEST_ADDR}"
    return {
        "hostname": name,
        "fleet": {"group": GROUP, "fleetlock_url": f"{base}:{GUEST_PORTS['fleetlock']}/",
                  "etcd_url": f"{base}:{GUEST_PORTS['etcd']}"},
        "update": {"url": f"{base}:{GUEST_PORTS['repo']}/", "strategy": "fleet_lock",
                   "tuf_root": root_json, "boot_tries": boot_tries},
    }


def fleet_nic(ports: dict[str, int]) -> tuple[str, ...]:
    relay = f"{sys.executable} -m hostos.fleetrelay 127.0.0.1"
    fwds = ",".join(f"guestfwd=tcp:{GUEST_ADDR}:{GUEST_PORTS[k]}-cmd:{relay} {ports[k]}"
                    for k in GUEST_PORTS)
    return ("-netdev", f"user,id=fleet,net=10.0.3.0/24,restrict=on,{fwds}",
            "-device", "virtio-net-pci,netdev=fleet")


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def start_static_server(folder: Path) -> Iterator[int]:
    """Serve folder over HTTP on a free 127.0.0.1 port (a thread of this process)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass(frozen=True)
class EtcdLoad:
    """etcd requests served since the release was published, by whom."""

    hosts: int  # the fleet's size
    agents: int  # sent by the hosts' update agents (reports, rollout gate, halt)
    fleetlock: int  # sent by the FleetLock server (reboot slots)
    methods: Counter[str]  # agents' and FleetLock's, by etcd method

    @property
    def per_host(self) -> float:
        return (self.agents + self.fleetlock) / self.hosts


@dataclass
class FleetRun:
    """Everything a simulation started, for the caller to watch and assert on."""

    etcd: EtcdServer
    lock: FleetLockServer
    repo: Path
    hosts: list[Machine]
    names: list[str]
    release_version: str
    started: float = field(default_factory=time.monotonic)
    history: list[FleetStatus] = field(default_factory=list)  # every status watch() saw
    own_calls: Counter[str] = field(default_factory=Counter)  # the simulator's own reads
    _served: Counter[str] = field(default_factory=Counter)  # etcd's counters at publish
    _lock_ops: int = 0  # the FleetLock server's count at publish
    shown: dict[str, str] = field(default_factory=dict)  # what watch() last printed

    def _etcd(self, what: Callable[[EtcdClient], Any]) -> Any:
        async def go() -> Any:
            async with EtcdClient(self.etcd.endpoint) as etcd:
                try:
                    return await what(etcd)
                finally:
                    self.own_calls.update(etcd.calls)
        return asyncio.run(go())

    def status(self) -> FleetStatus:
        st: FleetStatus = self._etcd(status_of)
        return st

    def audit(self) -> list[AuditEntry]:
        log_: list[AuditEntry] = self._etcd(lambda etcd: FleetSemaphore(etcd).audit_log(GROUP))
        return log_

    def mark_published(self) -> None:
        """Start counting etcd requests: what follows is the rollout's cost."""
        self._served = served_requests(self.etcd.endpoint)
        self._lock_ops = _fleetlock_ops(self.lock)
        self.own_calls.clear()
        self.started = time.monotonic()

    def etcd_load(self) -> EtcdLoad:
        served = served_requests(self.etcd.endpoint)
        served.subtract(self._served)
        served.subtract(self.own_calls)
        lock = _fleetlock_ops(self.lock) - self._lock_ops
        return EtcdLoad(len(self.hosts), sum(served.values()) - lock, lock, +served)


def _fleetlock_ops(lock: FleetLockServer) -> int:
    """Requests the FleetLock server has sent to etcd (its /health counts them)."""
    with urllib.request.urlopen(lock.url.rstrip("/") + "/health", timeout=10) as r:
        return int(json.load(r)["etcd_ops"])


def _build(folder: Path, version: str) -> ImageArtifacts:
    """The image in folder, rebuilt first unless it was built from this tree.

    `hostos build` returns at once when the recorded inputs hash matches; it
    queues on its lock behind another build. The hosts run the image's copy
    of hostos, so a stale image would test yesterday's agent.
    """
    from runtime.run import run  # the build itself is `hostos build`'s business
    log.info("image %s (version %s): building unless current", folder, version)
    run([sys.executable, "-m", "hostos", "build", "--version", version, "--output", folder],
        capture=False, timeout=3600)
    return load_image(folder)


def _bad_release(image: ImageArtifacts, folder: Path) -> Path:
    # A release that boots but never becomes healthy: its UKI masks berthd,
    # so hostos-health fails and boot-complete.target is never reached.
    return broken_release_image(image, folder,
                                "systemd.mask=berthd.socket systemd.mask=berthd.service")


@contextlib.contextmanager
def start_fleet(opts: SimulateOptions, work: Path) -> Iterator[FleetRun]:
    """Start etcd, FleetLock, the update server and the VMs; publish the release."""
    from hostos.keys import KeyStore
    from hostos.release import make_release
    from hostos.repo import KeyLayout, Repository

    root = Path(__file__).resolve().parents[1] / "build"
    image_a = load_image(opts.image) if opts.image else _build(root / "image", "0.1.0")
    image_b = (load_image(opts.release_image) if opts.release_image
               else _build(root / "image-b", "0.2.0"))
    store = KeyStore(work / "keys", PASSPHRASE)
    repo = Repository.create(work / "repo", store, KeyLayout.default())
    root_json = (repo.path / "metadata" / "1.root.json").read_text()
    pki = tls.generate(work / "tls")
    ids = machine_ids(opts.hosts)
    names = [f"node-{i}" for i in range(opts.hosts)]
    with contextlib.ExitStack() as stack:
        etcd = stack.enter_context(start_etcd())
        asyncio.run(_set_slots(etcd.endpoint, opts.max_unavailable))
        lock = stack.enter_context(start_fleetlock(etcd.endpoint, slots=opts.max_unavailable,
                                                   max_hold=1800, name="sim",
                                                   log_path=work / "fleetlock.log"))
        repo_port = stack.enter_context(start_static_server(repo.path))
        ports = {"repo": repo_port, "etcd": etcd.client_port,
                 "fleetlock": int(lock.url.rstrip("/").rsplit(":", 1)[1])}
        hosts = []
        for i, (name, mid) in enumerate(zip(names, ids, strict=True)):
            creds = (*(Credential(n, d) for n, d in pki.server_credentials().items()),
                     Credential("berth.provision", toml_dumps(
                         provisioning(name, root_json, opts.boot_tries)).encode()),
                     Credential("systemd.unit-dropin.hostos-update.timer",
                                TIMER_DROPIN.encode()))
            spec = MachineSpec(image_a, boot=BootMode.UEFI, memory_mb=opts.memory_mib, cpus=1,
                               forwards=(), credentials=creds, persistent=True, name=name,
                               kernel_args=(f"systemd.machine_id={mid}",),
                               extra_qemu_args=fleet_nic(ports))
            m = Machine(spec, work / f"vm{i}")
            stack.callback(m.stop)
            m.start()
            hosts.append(m)
            log.info("%s: started (pid %s), machine id %s, node id %s, wave %d", name, m.pid,
                     mid, app_specific_id(mid), 1 if fleet_position(mid) < CANARY_PERCENT else 2)
        run = FleetRun(etcd, lock, repo.path, hosts, names, image_b.version)
        print(f"fleet of {opts.hosts}: etcd {etcd.endpoint} (pid {etcd.pid}), FleetLock "
              f"{lock.url} (pid {lock.pid}), VMs "
              + ", ".join(f"{n} (pid {m.pid})" for n, m in zip(names, hosts, strict=True))
              + f"; work dir {work}", flush=True)
        # Publish once every host is up and polling, so that the clock and the
        # etcd count below measure the rollout, not the first boots.
        log.info("waiting for the %d hosts to boot and report", opts.hosts)
        watch(run, reported(opts.hosts), opts.timeout)
        release = image_b.folder
        if opts.bad:
            release = _bad_release(image_b, work / "image-bad")
        plan = rollout_plan(datetime.now(UTC), opts.wave_delay)
        make_release(release, image_b.version, repo, rollout=plan.to_json())
        print(f"published {image_b.version}{' (bad)' if opts.bad else ''}; "
              "times below are seconds since", flush=True)
        log.info("published %s (%s) with waves %s", image_b.version,
                 "bad: its health check fails" if opts.bad else "good",
                 ", ".join(f"{w.percent:.0f}% at +{(w.start - plan.waves[0].start).seconds}s"
                           for w in plan.waves))
        run.mark_published()
        yield run


async def _set_slots(endpoint: str, slots: int) -> None:
    async with EtcdClient(endpoint) as etcd:
        config = GroupConfig(slots=slots, max_hold_seconds=1800)
        await FleetSemaphore(etcd).set_config(GROUP, config)


def _snapshot(st: FleetStatus) -> dict[str, str]:
    out = {h.hostname: f"{h.booted_version} {h.update_state}"
                       + (f" -> {h.target_version}" if h.target_version else "")
                       + (f" ({h.last_error})" if h.last_error else "")
           for h in st.hosts}
    for group, slots, holders in st.slots:
        out[f"slots {group}"] = f"{len(holders)}/{slots} " + ",".join(h.id[:8] for h in holders)
    for halt in st.halts:
        out[f"halt {halt.version}"] = f"by {halt.host}: {halt.reason}"
    return out


def watch(run: FleetRun, done: Callable[[FleetStatus], bool], timeout: float,
          interval: float = 3.0, out: Any = None) -> FleetStatus:
    """Print every change in etcd until done(status) or timeout; returns the last status."""
    out = out or sys.stdout
    deadline = time.monotonic() + timeout
    while True:
        st = run.status()
        run.history.append(st)
        now = _snapshot(st)
        t = time.monotonic() - run.started
        for k, v in now.items():
            if run.shown.get(k) != v:
                print(f"[{t:6.0f}s] {k}: {v}", file=out, flush=True)
        run.shown = now
        if done(st):
            return st
        for m, name in zip(run.hosts, run.names, strict=True):
            if not m.running:
                raise HostosError(f"{name}'s QEMU exited ({m.exit_status()}); see its log")
        if time.monotonic() > deadline:
            raise HostosError(f"the rollout did not finish within {timeout:.0f}s")
        time.sleep(interval)


def reported(n: int) -> Callable[[FleetStatus], bool]:
    """n hosts have booted and their update agents have reported once."""
    def check(st: FleetStatus) -> bool:
        return len(st.hosts) >= n
    return check


def converged(version: str, n: int) -> Callable[[FleetStatus], bool]:
    """Every host booted version, blessed it (done, then idle) and gave its slot back."""
    def check(st: FleetStatus) -> bool:
        done = [h for h in st.hosts
                if h.booted_version == version and h.update_state in ("done", "idle")]
        return len(done) == n and all(not holders for _, _, holders in st.slots)
    return check


def halted_and_refused(version: str, n: int,
                       after: datetime) -> Callable[[FleetStatus], bool]:
    """The rollout of version is halted and every host has checked since wave 2 opened."""
    def check(st: FleetStatus) -> bool:
        if not any(h.version == version for h in st.halts) or len(st.hosts) < n:
            return False
        return all(h.time >= after.timestamp() and h.update_state in ("idle", "failed")
                   for h in st.hosts)
    return check


def summary(st: FleetStatus, audit: list[AuditEntry], elapsed: float,
            load: EtcdLoad | None = None) -> str:
    lines = [f"{'HOST':10} {'WAVE':>4} {'BOOTED':8} {'STATE':10} LAST ERROR"]
    for h in st.hosts:
        lines.append(f"{h.hostname:10} {h.wave:>4} {h.booted_version:8} {h.update_state:10} "
                     f"{h.last_error or '-'}")
    peak = max((len(e.holders) for e in audit), default=0)
    locks = sum(e.op.value == "lock" for e in audit)
    lines.append(f"reboot slots: {locks} granted, at most {peak} held at once")
    for halt in st.halts:
        lines.append(f"halted: {halt.version} by {halt.host} ({halt.reason})")
    if load is not None:
        top = ", ".join(f"{m} {n}" for m, n in load.methods.most_common())
        lines.append(f"etcd requests per host: {load.per_host:.0f} (agents {load.agents}, "
                     f"FleetLock server {load.fleetlock}, for {load.hosts} hosts; {top})")
    lines.append(f"elapsed: {elapsed:.0f}s since the release was published")
    return "\n".join(lines)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def simulate(opts: SimulateOptions) -> int:
    with tempfile.TemporaryDirectory(prefix="berth-fleet-") as tmp, \
            start_fleet(opts, Path(tmp)) as run:
        pids = {"etcd": run.etcd.pid, "FleetLock": run.lock.pid,
                **{n: m.pid for n, m in zip(run.names, run.hosts, strict=True) if m.pid}}
        if opts.bad:
            opens = datetime.now(UTC) + opts.wave_delay
            st = watch(run, halted_and_refused(run.release_version, opts.hosts, opens),
                       opts.timeout)
        else:
            st = watch(run, converged(run.release_version, opts.hosts), opts.timeout)
        elapsed = time.monotonic() - run.started
        print()
        print(summary(st, run.audit(), elapsed, run.etcd_load()))
    left = [f"{what} (pid {pid})" for what, pid in pids.items() if _alive(pid)]
    if left:
        raise HostosError(f"still running after the simulation: {', '.join(left)}")
    print("stopped: " + ", ".join(f"{what} (pid {pid})" for what, pid in pids.items()))
    return 0

