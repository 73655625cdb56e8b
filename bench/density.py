"""Density: N idle containers (`sleep`), berth's engine side by side with bare `crun run -d`.

For each runtime, per container: the growth of the memory charged to our
own memory cgroup (see charged(): the honest figure on a shared machine),
and the drop of MemAvailable (what the issue names; noisy here), after a
settle pause; the time to start all N; and for berth the daemon's RSS (the
engine runs in this process, so its growth is inside both figures). crun
has no daemon and no per-container monitor either, so it is the floor of a
runtime: the target is berth <= 1.2x crun. Below it, the kernel's floor
(FloorSide): the containers' process in its own namespaces and nothing else,
what no runtime's container can cost less than; against podman, it bounds
what any berth/podman ratio can reach.

The sides alternate in rounds (N/5 containers each per round, all kept
running), and each side's figures sum only its own rounds, so the machine's
drift hits every side alike. The steady figure is the charge without file page
cache: the page cache in our memory cgroup moves by up to ~25 KiB per
container during a side's rounds for reasons of its own (seen on the crun
side too: its charge 277-300 KiB while its figure without file cache stayed
at 303-306 in four runs of session 3), so the charged ratio swings by ~0.1
from run to run. Figures are read after a settle on the event loop, so that
what a start left to do (berth detaches the host's rootfs copies in a worker
thread) is done within the round that caused it. Sides: berth as it ships; "berth bare" (no
user namespace, no seccomp filter: the isolation bare crun has) to show what
those two cost; bare crun.

All run busybox `sleep` with pid, net, ipc, uts, mount and cgroup
namespaces; berth adds a user namespace, Docker's seccomp profile (x86_64,
x86 and x32: ~300 BPF instructions as runtime/seccomp.py compiles it, ~6 KiB
of kernel memory each, a filter the kernel cannot share between unrelated
processes; libseccomp's own 968 took ~23 KiB), an overlayfs
(per-container upper dir over the shared layer), a log FIFO pair and its
records. crun runs on
one shared read-only rootfs directory, with its cgroup manager disabled
(so that its containers are charged to our memory cgroup, see charged()).
Everything happens in a network namespace made for the run; the machine's
own is not touched. crun is run as MACHINE-NOTES says (cgroup.controllers
hidden in a private mount ns); podman (optional) too, with conmon per
container, its charge read from our cgroup plus podman's libpod_parent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.api_start import inside_netns, run_tmpfs
from runtime import cgroups
from runtime.container.manager import ContainerManager, EngineConfig
from runtime.container.spawner import SpawnerClient
from runtime.container.spec import CreateRequest
from runtime.events import EventBus
from runtime.run import run
from runtime.store.archive import import_rootfs
from runtime.store.images import ImageStore
from runtime.sys.libc import set_child_subreaper

DESCRIPTION = "density: N idle containers, MemAvailable per container vs crun run -d, RSS"
IMAGE = "busybox:bench"
SETTLE = 3.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=1000, help="containers (default 1000)")
    parser.add_argument("--no-crun", action="store_true", help="skip the crun side")
    parser.add_argument("--no-bare", action="store_true",
                        help="skip berth without user namespace and seccomp (crun's isolation)")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the kernel's floor (busybox sleep in its own net, ipc, "
                             "uts, cgroup and pid namespaces, execed by unshare)")
    parser.add_argument("--podman", type=int, default=0, metavar="N",
                        help="also run N podman containers (slow: ~0.4 s each); 0 = skip")
    parser.add_argument("--parts", action="store_true",
                        help="instead: where berth's memory per container goes beyond bare "
                             "crun's (slab caches, page tables, mounts, run dir, records, "
                             "the daemon's objects; bench/density_parts.py); with --no-bare "
                             "without the no-seccomp and no-userns sides")


def meminfo(key: str = "MemAvailable") -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def memcg_usage(rel: str | None = None) -> int:
    """memory.usage_in_bytes of a cgroup-v1 memory cgroup (ours by default), 0 if none.

    The machine is shared: MemAvailable moves with everyone's work. Our own
    memory cgroup holds this process and every container it forks (berth
    moves them only in the v2 hierarchy; crun runs with its cgroup manager
    disabled), so its usage counts what the containers cost, kernel memory
    (namespaces, mounts, page tables, pipes) included.
    """
    if rel is None:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):
                rel = path
                break
        else:
            return 0
    try:
        return int((Path("/sys/fs/cgroup/memory") / rel.lstrip("/")
                    / "memory.usage_in_bytes").read_text())
    except (FileNotFoundError, ValueError):
        return 0


# Where podman's cgroupfs manager puts conmon and its containers (v1, hierarchical).
PODMAN_MEMCG = "libpod_parent"


def charged() -> int:
    return memcg_usage() + memcg_usage(PODMAN_MEMCG)


def _own_memcg() -> str | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return path
    return None


def file_cache(rel: str | None) -> int:
    """Page cache of files (active + inactive) in a v1 memory cgroup: reclaimable."""
    if rel is None:
        return 0
    try:
        text = (Path("/sys/fs/cgroup/memory") / rel.lstrip("/") / "memory.stat").read_text()
    except FileNotFoundError:
        return 0
    stat = dict(line.split() for line in text.splitlines())
    return int(stat.get("total_active_file", 0)) + int(stat.get("total_inactive_file", 0))


def unreclaimable() -> int:
    """charged() without file page cache: anon memory, tmpfs, kernel objects. The cache
    (image files, records, logs) comes and goes with the machine's memory pressure and
    makes charged() noisy; this is what the containers hold for sure."""
    own = _own_memcg()
    return charged() - file_cache(own) - file_cache(PODMAN_MEMCG)


def rss(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def settle() -> None:
    # On the loop, not time.sleep: berth's host-side rootfs detaches (worker threads,
    # started from tasks) and run-dir removals finish here, inside the round that
    # caused them, not in the next side's.
    await asyncio.sleep(SETTLE)


ROUNDS = 5  # the sides alternate in rounds: a shared machine's load drifts during a run


class BerthSide:
    """berth's engine in this process; `variant` picks the isolation (see VARIANTS)."""

    def __init__(self, tmp: Path, images: ImageStore, label: str,
                 request: dict[str, Any]) -> None:
        self.label = label
        self.request = request
        # Run state on tmpfs, as deployed (/run): bench.api_start.run_tmpfs, for every side.
        self.exec_root = Path(tempfile.mkdtemp(prefix="berth-bench-run-", dir=tmp / "run"))
        self.exec_root.chmod(0o711)
        self.cg_root = cgroups.default_root().with_name(f"berth-bench-{uuid.uuid4().hex[:8]}")
        self.m = ContainerManager(EngineConfig(root=tmp / f"engine-{uuid.uuid4().hex[:6]}",
                                               exec_root=self.exec_root,
                                               cgroup_root=self.cg_root), images, EventBus())

    async def open(self) -> None:
        await self.m.adopt()
        # Warm: compile the seccomp filter, touch the code paths once.
        warm = await self.m.create(CreateRequest(image=IMAGE, cmd=("true",),
                                                 **self.request))
        await self.m.start(warm.id)
        await self.m.wait(warm.id)
        await self.m.remove(warm.id)

    async def start(self, n: int) -> None:
        for _ in range(n):
            rec = await self.m.create(CreateRequest(image=IMAGE, cmd=("sleep", "1000000"),
                                                    **self.request))
            await self.m.start(rec.id)
            # As berthd between two API requests: the loop runs what the start left
            # ready (the detach of the host's rootfs copies, in a worker thread). A
            # start answered without a suspension left all of them for the end of
            # the round, and every clone in between copied them into its namespace.
            await asyncio.sleep(0)

    async def close(self) -> float:
        t0 = time.perf_counter()
        for cid in list(self.m.containers):
            await self.m.remove(cid, force=True)
        removed = time.perf_counter() - t0
        await self.m.shutdown()
        shutil.rmtree(self.exec_root, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.cg_root.rmdir()
        return removed


class CrunSide:
    """Bare `crun run -d` (crun's default spec: no user namespace, no seccomp)."""

    label = "crun run -d"

    def __init__(self, tmp: Path, rootfs_tar: Path) -> None:
        self.bundle = tmp / "bundle"
        (self.bundle / "rootfs").mkdir(parents=True)
        run(["tar", "-xf", str(rootfs_tar), "-C", str(self.bundle / "rootfs")])
        run(["crun", "spec"], cwd=self.bundle)
        cfg = json.loads((self.bundle / "config.json").read_text())
        cfg["process"]["terminal"] = False
        cfg["process"]["args"] = ["sleep", "1000000"]
        cfg["linux"]["namespaces"].append({"type": "cgroup"})
        (self.bundle / "config.json").write_text(json.dumps(cfg))
        self.state = tmp / "run" / "crun-state"
        self.empty = tmp / "empty"
        self.empty.touch()
        self.prefix = f"b{uuid.uuid4().hex[:6]}"
        self.count = 0

    def _hide(self) -> str:
        return f"mount --bind {self.empty} /sys/fs/cgroup/unified/cgroup.controllers"

    async def start(self, n: int) -> None:
        first, self.count = self.count + 1, self.count + n
        script = (f"{self._hide()} && for i in $(seq {first} {self.count}); do "
                  f"crun --cgroup-manager=disabled --root {self.state} run -d "
                  f"--bundle {self.bundle} {self.prefix}$i </dev/null >/dev/null 2>&1 "
                  f"|| exit 1; done")
        run(["unshare", "-m", "sh", "-c", script])

    async def close(self) -> float:
        t0 = time.perf_counter()
        listing = json.loads(run(["crun", "--root", str(self.state), "list", "-f",
                                  "json"]).stdout or "[]")
        pids = [int(c["pid"]) for c in listing if c.get("pid")]
        cleanup = (f"{self._hide()} && for i in $(seq 1 {self.count}); do "
                   f"crun --root {self.state} delete -f {self.prefix}$i; done")
        run(["unshare", "-m", "sh", "-c", cleanup], check=False)
        for pid in pids:  # whatever crun did not stop, by PID
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return time.perf_counter() - t0


async def interleaved(sides: list[Side], n: int) -> dict[str, dict[str, float]]:
    """Start n containers per side in alternating rounds; per side, the growth of our
    memory cgroup and MemAvailable over its own rounds only, and its start time."""
    out = {s.label: {"charged": 0.0, "resident": 0.0, "per_container": 0.0,
                     "start_all": 0.0, "count": float(_count(s, n))} for s in sides}
    for r in range(ROUNDS):
        for side in sides:
            total = _count(side, n)
            k = total // ROUNDS + (1 if r < total % ROUNDS else 0)
            if not k:
                continue
            await settle()
            mem0, cg0, res0 = meminfo(), charged(), unreclaimable()
            t0 = time.perf_counter()
            await side.start(k)
            started = time.perf_counter() - t0
            await settle()
            mem1, cg1, res1 = meminfo(), charged(), unreclaimable()
            o = out[side.label]
            o["charged"] += (cg1 - cg0) / total
            o["resident"] += (res1 - res0) / total
            o["per_container"] += (mem0 - mem1) / total
            o["start_all"] += started
        print(f"  round {r + 1}/{ROUNDS} done, load {os.getloadavg()[0]:.1f}", flush=True)
    return out


def _count(side: Side, n: int) -> int:
    return side.n if isinstance(side, PodmanSide) else n


VARIANTS: dict[str, dict[str, Any]] = {
    "berth": {},
    # The same isolation as bare crun: no user namespace, no seccomp filter.
    "berth bare": {"userns": False, "seccomp": "unconfined"},
}


async def berth_and_peers(tmp: Path, n: int, images: ImageStore, tar: Path,
                          with_crun: bool, bare: bool, podman: int, floor: bool
                          ) -> tuple[dict[str, dict[str, float]], float, float]:
    sides: list[Side] = [BerthSide(tmp, images, "berth", VARIANTS["berth"])]
    if bare:
        sides.append(BerthSide(tmp, images, "berth bare", VARIANTS["berth bare"]))
    for side in sides:
        assert isinstance(side, BerthSide)
        await side.open()
        cloner = side.m.spawner()
        if isinstance(cloner, SpawnerClient):
            # One per engine, started before the first round: in no side's growth.
            print(f"  {side.label}: spawner pid {cloner.proc.pid}, RSS "
                  f"{rss(cloner.proc.pid) / (1 << 20):.1f} MiB (one for all containers)")
    # The engine made us a subreaper (for re-adoption); crun's detached containers must
    # not become our children. berth's containers are our children anyway (clone3).
    set_child_subreaper(False)
    if with_crun:
        sides.append(CrunSide(tmp, tar))
    if podman:
        sides.append(PodmanSide(tmp, tar, podman))
    if floor:
        sides.append(FloorSide())
    rss0 = rss()
    removed = float("nan")
    try:
        result = await interleaved(sides, n)
        rss1 = rss()
    finally:
        for side in sides:
            took = await side.close()
            if side.label == "berth":
                removed = took
    berth_sides = sum(isinstance(s, BerthSide) for s in sides)
    return result, (rss1 - rss0) / (n * berth_sides), removed


PODMAN_CONF = """[containers]
netns="none"
default_ulimits=["nofile=20000:20000","nproc=32768:32768"]
[engine]
runtime="runc"
cgroup_manager="cgroupfs"
events_logger="file"
"""


class PodmanSide:
    """podman with MACHINE-NOTES' settings: one conmon per container, its containers
    and conmons charged to podman's libpod_parent memory cgroup (counted by charged())."""

    label = "podman"

    def __init__(self, tmp: Path, rootfs_tar: Path, n: int) -> None:
        self.n = n
        conf, storage = tmp / "containers.conf", tmp / "storage.conf"
        conf.write_text(PODMAN_CONF)
        storage.write_text(f'[storage]\ndriver="overlay"\ngraphroot="{tmp}/pm-graph"\n'
                           f'runroot="{tmp}/run/pm-run"\n')
        self.env = {"CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage)}
        run(["podman", "import", str(rootfs_tar), "bb:density"], env=self.env)

    async def start(self, n: int) -> None:
        for _ in range(n):
            run(["podman", "run", "-d", "--network", "none", "bb:density", "sleep",
                 "1000000"], env=self.env)

    async def close(self) -> float:
        t0 = time.perf_counter()
        run(["podman", "rm", "-f", "-t", "0", "-a"], env=self.env, check=False)
        run(["podman", "rmi", "-a", "-f"], env=self.env, check=False)
        return time.perf_counter() - t0


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:   # gone (poll() tells)
        return None


class FloorSide:
    """The kernel's floor for a container: one busybox `sleep` (the containers' own
    process) in its own network, ipc, uts and cgroup namespaces, execed by unshare(1),
    which makes a pid namespace too (for its children: without --fork, no second
    process). No mount namespace (its copy of the host's mounts is not what a
    container holds), no rootfs, /proc or /dev, no cgroup, no filter, no monitor, no
    record: every runtime's container costs at least this."""

    label = "floor"

    def __init__(self) -> None:
        from tests.privileged.images import BUSYBOX

        self.busybox = BUSYBOX
        self.procs: list[subprocess.Popen[bytes]] = []

    async def start(self, n: int) -> None:
        for _ in range(n):
            self.procs.append(subprocess.Popen(
                ["unshare", "--net", "--pid", "--ipc", "--uts", "--cgroup", "--",
                 str(self.busybox), "sleep", "1000000"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True))
        sleep = str(self.busybox.resolve())
        for proc in self.procs[-n:]:  # until unshare has execed sleep (or failed)
            while proc.poll() is None and _exe(proc.pid) != sleep:
                await asyncio.sleep(0.001)
            if proc.returncode is not None:
                raise RuntimeError(f"unshare exited {proc.returncode}")

    async def close(self) -> float:
        t0 = time.perf_counter()
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait()
        return time.perf_counter() - t0


Side = BerthSide | CrunSide | PodmanSide | FloorSide


def main(args: argparse.Namespace) -> int:
    n = args.count
    if args.parts:
        from bench.density_parts import main_parts

        return main_parts(n, with_bare=not args.no_bare)
    tmp = Path(tempfile.mkdtemp(prefix="berth-density-"))
    tmp.chmod(0o711)
    load0 = os.getloadavg()
    try:
        # Imported here: `python -m bench` lists benchmarks without the test tree.
        from tests.privileged.images import busybox_rootfs_tar

        tar = busybox_rootfs_tar(tmp / "busybox.tar")
        images = ImageStore(tmp / "data")
        with tar.open("rb") as f:
            import_rootfs(images, f, tag=IMAGE)
        print(f"starting {n} idle containers per side, sides alternating in {ROUNDS} rounds",
              flush=True)
        with inside_netns("berth-density"), run_tmpfs(tmp / "run"):
            sides, rss_per, removed = asyncio.run(berth_and_peers(
                tmp, n, images, tar, with_crun=not args.no_crun, bare=not args.no_bare,
                podman=args.podman, floor=not args.no_floor))
        p = sides.pop("podman", None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load1 = os.getloadavg()
    kib = 1024
    nan = float("nan")
    b = sides["berth"]
    crun = sides.get("crun run -d", {"per_container": nan, "start_all": nan, "charged": nan,
                                     "resident": nan})
    names = list(sides)
    print(f"\n{n} idle containers per side (load average {load0[0]:.1f} at the start, "
          f"{load1[0]:.1f} at the end; 2 cores)")
    print(f"{'':32}" + "".join(f"{name:>14}" for name in names))
    for label, key, scale in (("memory charged / ctr (KiB)", "charged", kib),
                              ("  without file cache (KiB)", "resident", kib),
                              ("MemAvailable drop / ctr (KiB)", "per_container", kib),
                              ("start all (s)", "start_all", 1)):
        print(f"{label:32}" + "".join(f"{sides[name][key] / scale:>14.1f}" for name in names))
    if "crun run -d" in sides:
        for name in (name for name in names if name.startswith("berth")):
            side = sides[name]
            print(f"ratio {name} / bare crun: charged {side['charged'] / crun['charged']:.2f}"
                  f" (target <= 1.2), without file cache "
                  f"{side['resident'] / crun['resident']:.2f}, MemAvailable "
                  f"{side['per_container'] / crun['per_container']:.2f}, start all "
                  f"{side['start_all'] / crun['start_all']:.2f}")
    print(f"remove all {n} berth containers: {removed:.2f} s")
    if p is not None:
        print(f"podman ({p['count']:.0f} containers, in the same rounds): "
              f"{p['charged'] / kib:.0f} "
              f"KiB charged per container ({p['resident'] / kib:.0f} without file cache; "
              f"MemAvailable: {p['per_container'] / kib:.0f} KiB); "
              f"berth/podman charged {b['charged'] / p['charged']:.2f}, without file cache "
              f"{b['resident'] / p['resident']:.2f}, MemAvailable "
              f"{b['per_container'] / p['per_container']:.2f} (target <= 0.15); "
              f"{p['start_all'] / p['count'] * 1000:.0f} ms per start "
              f"(berth {b['start_all'] / n * 1000:.0f} ms)")
    if "floor" in sides:
        low = sides["floor"]
        print(f"berth / floor: MemAvailable {b['per_container'] / low['per_container']:.2f}, "
              f"without file cache {b['resident'] / low['resident']:.2f}")
        if p is not None:
            print(f"floor / podman: MemAvailable "
                  f"{low['per_container'] / p['per_container']:.2f}, without file cache "
                  f"{low['resident'] / p['resident']:.2f}, charged "
                  f"{low['charged'] / p['charged']:.2f}: no container in its own "
                  f"namespaces goes below this fraction of podman's")
            # What the runtime adds to a container, the kernel's part taken out.
            for key, what in (("per_container", "MemAvailable"),
                              ("resident", "without file cache")):
                ours, theirs = b[key] - low[key], p[key] - low[key]
                print(f"above the floor, {what}: berth {ours / kib:.0f} KiB, podman "
                      f"{theirs / kib:.0f} KiB per container: {ours / theirs:.2f}")
    print(f"daemon (this process) RSS: +{rss_per / kib:.1f} KiB per berth container")
    print("memory charged = growth of this process's cgroup-v1 memory cgroup over each side's "
          "own rounds (containers and their kernel objects; the machine's other work "
          "excluded); MemAvailable is noisy on a shared machine")
    return 0
