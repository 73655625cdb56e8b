"""Density: N idle containers (`sleep`), berth's engine side by side with bare `crun run -d`.

For each runtime, per container: the growth of the memory charged to our
own memory cgroup (see charged(): the honest figure on a shared machine),
and the drop of MemAvailable (what the issue names; noisy here), after a
settle pause; the time to start all N; and for berth the daemon's RSS (the
engine runs in this process, so its growth is inside both figures). crun
has no daemon and no per-container monitor either, so it is the floor:
the target is berth <= 1.2x crun.

Both run busybox `sleep` with pid, net, ipc, uts, mount and cgroup
namespaces; berth adds a user namespace, an overlayfs (per-container upper
dir over the shared layer), a log FIFO pair and its records. crun runs on
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
import tempfile
import time
import uuid
from pathlib import Path

from runtime import cgroups
from runtime.container.manager import ContainerManager, EngineConfig
from runtime.container.spec import CreateRequest
from runtime.events import EventBus
from runtime.run import run
from runtime.store.archive import import_rootfs
from runtime.store.images import ImageStore
from runtime.sys import Namespace
from runtime.sys.libc import LibcSys, set_child_subreaper

DESCRIPTION = "density: N idle containers, MemAvailable per container vs crun run -d, RSS"
IMAGE = "busybox:bench"
SETTLE = 3.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=1000, help="containers (default 1000)")
    parser.add_argument("--no-crun", action="store_true", help="skip the crun side")
    parser.add_argument("--podman", type=int, default=0, metavar="N",
                        help="also run N podman containers (slow: ~0.4 s each); 0 = skip")


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


def charged(extra: tuple[str, ...] = ()) -> int:
    return memcg_usage() + sum(memcg_usage(rel) for rel in extra)


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def settle() -> None:
    time.sleep(SETTLE)


async def berth_side(tmp: Path, n: int, images: ImageStore) -> dict[str, float]:
    exec_root = Path(tempfile.mkdtemp(prefix="berth-bench-run-"))
    exec_root.chmod(0o711)
    cg_root = cgroups.default_root().with_name(f"berth-bench-{uuid.uuid4().hex[:8]}")
    m = ContainerManager(EngineConfig(root=tmp / "data", exec_root=exec_root,
                                      cgroup_root=cg_root), images, EventBus())
    await m.adopt()
    # Warm: compile the seccomp filter, touch the code paths once.
    warm = await m.create(CreateRequest(image=IMAGE, cmd=("true",)))
    await m.start(warm.id)
    await m.wait(warm.id)
    await m.remove(warm.id)
    settle()
    mem0, rss0, cg0 = meminfo(), rss(), charged()
    t0 = time.perf_counter()
    try:
        for i in range(n):
            rec = await m.create(CreateRequest(image=IMAGE, cmd=("sleep", "1000000")))
            await m.start(rec.id)
            if (i + 1) % 100 == 0:
                print(f"  berth: {i + 1}/{n} started", flush=True)
        started = time.perf_counter() - t0
        settle()
        mem1, rss1, cg1 = meminfo(), rss(), charged()
    finally:
        t0 = time.perf_counter()
        for cid in list(m.containers):
            await m.remove(cid, force=True)
        removed = time.perf_counter() - t0
        await m.shutdown()
    shutil.rmtree(exec_root, ignore_errors=True)
    cg_root.rmdir()
    return {"per_container": (mem0 - mem1) / n, "start_all": started, "remove_all": removed,
            "rss_before": rss0, "rss_after": rss1, "charged": (cg1 - cg0) / n}


def crun_side(tmp: Path, n: int, rootfs_tar: Path) -> dict[str, float]:
    bundle = tmp / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    run(["tar", "-xf", str(rootfs_tar), "-C", str(bundle / "rootfs")])
    run(["crun", "spec"], cwd=bundle)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["sleep", "1000000"]
    cfg["linux"]["namespaces"].append({"type": "cgroup"})
    (bundle / "config.json").write_text(json.dumps(cfg))
    state = tmp / "crun-state"
    empty = tmp / "empty"
    empty.touch()
    hide = f"mount --bind {empty} /sys/fs/cgroup/unified/cgroup.controllers"
    prefix = f"b{uuid.uuid4().hex[:6]}"
    script = (f"{hide} && for i in $(seq 1 {n}); do "
              f"crun --cgroup-manager=disabled --root {state} run -d --bundle {bundle} {prefix}$i "
              f"</dev/null >/dev/null 2>&1 || exit 1; "
              f"done")
    settle()
    mem0, cg0 = meminfo(), charged()
    t0 = time.perf_counter()
    run(["unshare", "-m", "sh", "-c", script])
    started = time.perf_counter() - t0
    settle()
    mem1, cg1 = meminfo(), charged()
    listing = json.loads(run(["crun", "--root", str(state), "list", "-f", "json"]).stdout or "[]")
    pids = [int(c["pid"]) for c in listing if c.get("pid")]
    cleanup = (f"{hide} && for i in $(seq 1 {n}); do "
               f"crun --root {state} delete -f {prefix}$i; done")
    run(["unshare", "-m", "sh", "-c", cleanup], check=False)
    for pid in pids:  # whatever crun did not stop, by PID
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return {"per_container": (mem0 - mem1) / n, "start_all": started, "charged": (cg1 - cg0) / n}


PODMAN_CONF = """[containers]
netns="none"
default_ulimits=["nofile=20000:20000","nproc=32768:32768"]
[engine]
runtime="runc"
cgroup_manager="cgroupfs"
events_logger="file"
"""


def podman_side(tmp: Path, n: int, rootfs_tar: Path) -> dict[str, float]:
    """podman with MACHINE-NOTES' settings: one conmon per container."""
    conf, storage = tmp / "containers.conf", tmp / "storage.conf"
    conf.write_text(PODMAN_CONF)
    storage.write_text(f'[storage]\ndriver="overlay"\ngraphroot="{tmp}/pm-graph"\n'
                       f'runroot="{tmp}/pm-run"\n')
    env = {"CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage)}
    run(["podman", "import", str(rootfs_tar), "bb:density"], env=env)
    settle()
    pod_cg = ("libpod_parent",)  # where podman's cgroupfs manager puts conmon and containers
    mem0, cg0 = meminfo(), charged(pod_cg)
    t0 = time.perf_counter()
    try:
        for i in range(n):
            run(["podman", "run", "-d", "--network", "none", "bb:density", "sleep", "1000000"],
                env=env)
            if (i + 1) % 50 == 0:
                print(f"  podman: {i + 1}/{n} started", flush=True)
        started = time.perf_counter() - t0
        settle()
        mem1, cg1 = meminfo(), charged(pod_cg)
    finally:
        run(["podman", "rm", "-f", "-t", "0", "-a"], env=env, check=False)
        run(["podman", "rmi", "-a", "-f"], env=env, check=False)
    return {"per_container": (mem0 - mem1) / n, "start_all": started, "count": n,
            "charged": (cg1 - cg0) / n}


def main(args: argparse.Namespace) -> int:
    n = args.count
    tmp = Path(tempfile.mkdtemp(prefix="berth-density-"))
    netns = f"berth-density-{uuid.uuid4().hex[:8]}"
    run(["ip", "netns", "add", netns])
    sys = LibcSys()
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        from tests.privileged.images import busybox_rootfs_tar

        tar = busybox_rootfs_tar(tmp / "busybox.tar")
        images = ImageStore(tmp / "data")
        with tar.open("rb") as f:
            import_rootfs(images, f, tag=IMAGE)
        sys.setns(target, Namespace.NET)
        print(f"berth: starting {n} idle containers", flush=True)
        b = asyncio.run(berth_side(tmp, n, images))
        set_child_subreaper(False)  # crun's detached containers must not become ours
        c = None if args.no_crun else crun_side(tmp, n, tar)
        p = podman_side(tmp, args.podman, tar) if args.podman else None
    finally:
        sys.setns(own, Namespace.NET)
        run(["ip", "netns", "delete", netns], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    kib = 1024
    nan = float("nan")
    cc = c or {"per_container": nan, "start_all": nan, "charged": nan}
    print(f"\n{n} idle containers")
    print(f"{'':34}{'berth':>10}{'crun run -d':>13}{'ratio':>8}")
    for label, key in (("memory charged / ctr (KiB)", "charged"),
                       ("MemAvailable drop / ctr (KiB)", "per_container")):
        print(f"{label:34}{b[key] / kib:>10.0f}{cc[key] / kib:>13.0f}"
              f"{b[key] / cc[key] if cc[key] else nan:>8.2f}")
    print(f"{'start all (s)':34}{b['start_all']:>10.2f}{cc['start_all']:>13.2f}"
          f"{b['start_all'] / cc['start_all']:>8.2f}")
    print(f"{'remove all (s)':34}{b['remove_all']:>10.2f}")
    if p is not None:
        print(f"podman ({p['count']:.0f} containers): {p['charged'] / kib:.0f} KiB charged per "
              f"container (MemAvailable: {p['per_container'] / kib:.0f} KiB); berth/podman "
              f"{b['charged'] / p['charged']:.2f}; {p['start_all'] / p['count'] * 1000:.0f} ms "
              f"per start (berth {b['start_all'] / n * 1000:.0f} ms)")
    print(f"daemon RSS: {b['rss_before'] / (1 << 20):.1f} MiB before, "
          f"{b['rss_after'] / (1 << 20):.1f} MiB with {n} containers "
          f"({(b['rss_after'] - b['rss_before']) / n / kib:.1f} KiB per container)")
    print("memory charged = growth of this process's cgroup-v1 memory cgroup (containers and "
          "their kernel objects; the machine's other work excluded); MemAvailable is noisy")
    return 0
