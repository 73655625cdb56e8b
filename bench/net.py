"""Container networking cost: bridged vs `--network none`, N bridged containers, memory.

Runs in a network namespace of its own (the "host"), never the machine's.
Each "container" is a fresh network namespace (`ip netns add`, as the
engine's clone(CLONE_NEWNET) + bind mount): a `none` start is that alone; a
bridged start is that plus NetworkService.setup (veth pair into the bridge,
address, routes, /etc files). The ratio therefore compares networking
against the namespace alone — a real container start (rootfs, exec) costs
more in both columns, so the ratio through the engine can only be lower.

Then the same comparison through the real engine (ContainerManager, busybox
`sleep`, `--network none` vs the default bridge): the figure that counts.

Memory per bridged container: the growth of the kernel's slab + per-cpu
memory while N bridged containers exist, minus that of N `none` ones, over
N (the veth pair, the bridge port, neighbour and route entries), plus the
daemon's own RSS growth (records, DNS names). MemAvailable is useless here:
other processes on a shared machine move it by more than the whole signal.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from runtime.net.model import ContainerNetConfig, PortBinding
from runtime.net.provider import NetworkService
from runtime.run import run
from runtime.store.db import open_db

DESCRIPTION = "networking: bridged vs none start latency, N bridged containers, memory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=1000,
                        help="bridged containers to start in the density run (default 1000)")
    parser.add_argument("--samples", type=int, default=100,
                        help="starts measured for the latency comparison (default 100)")


def meminfo(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def kmem() -> int:
    return meminfo("Slab") + meminfo("Percpu")


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Bench:
    def __init__(self, tmp: Path) -> None:
        self.host = f"berth-bench-{uuid.uuid4().hex[:8]}"
        run(["ip", "netns", "add", self.host])
        run(["nsenter", f"--net=/run/netns/{self.host}", "ip", "link", "set", "lo", "up"])
        self.tmp = tmp
        self.netns: list[str] = []
        self.svc: NetworkService | None = None

    async def start(self) -> NetworkService:
        resolv = self.tmp / "resolv.conf"
        resolv.write_text("")
        self.svc = NetworkService(open_db(self.tmp / "berth.db"),
                                  host_netns=Path(f"/run/netns/{self.host}"),
                                  resolv_conf=resolv)
        await self.svc.start()
        return self.svc

    def new_netns(self) -> Path:
        name = f"berth-bc-{uuid.uuid4().hex[:8]}"
        run(["ip", "netns", "add", name])
        self.netns.append(name)
        return Path(f"/run/netns/{name}")

    def drop_netns(self) -> None:
        for name in self.netns:
            run(["ip", "netns", "delete", name], check=False)
        self.netns.clear()

    async def close(self) -> None:
        if self.svc is not None:
            await self.svc.destroy()
        self.drop_netns()
        run(["ip", "netns", "delete", self.host], check=False)


def ms(xs: list[float]) -> str:
    p90 = sorted(xs)[int(len(xs) * .9)]
    return f"{statistics.median(xs) * 1000:7.2f} ms (p90 {p90 * 1000:.2f})"


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


async def latency(b: Bench, svc: NetworkService, samples: int) -> None:
    none_t, bridge_t, setup_t, ports_t, down_t = [], [], [], [], []
    for i in range(samples):
        none_t.append(timed(b.new_netns))
        t0 = time.perf_counter()
        path = b.new_netns()
        cfg = ContainerNetConfig(name=f"c{i}", hostname=f"c{i}")
        t1 = time.perf_counter()
        await svc.setup(f"lat{i:060d}", path, cfg)
        t2 = time.perf_counter()
        bridge_t.append(t2 - t0)
        setup_t.append(t2 - t1)
        pcfg = ContainerNetConfig(name=f"p{i}", hostname=f"p{i}", ports=(PortBinding(80),))
        path = b.new_netns()
        t3 = time.perf_counter()
        await svc.setup(f"pub{i:060d}", path, pcfg)
        ports_t.append(time.perf_counter() - t3)
    for i in range(samples):
        t4 = time.perf_counter()
        await svc.teardown(f"lat{i:060d}")
        down_t.append(time.perf_counter() - t4)
        await svc.teardown(f"pub{i:060d}")
    b.drop_netns()
    ratio = statistics.median(bridge_t) / statistics.median(none_t)
    print(f"start, network none (netns only)   {ms(none_t)}")
    print(f"start, default bridge              {ms(bridge_t)}")
    print(f"  of which NetworkService.setup    {ms(setup_t)}")
    print(f"  setup with -p 80 (nft apply)     {ms(ports_t)}")
    print(f"  teardown                         {ms(down_t)}")
    print(f"ratio bridge / none (netns only)   {ratio:7.2f}x   (a bare netns, not a start)")


async def density(b: Bench, svc: NetworkService, count: int) -> None:
    # none: the kernel memory of N bare namespaces
    base = kmem()
    for _ in range(count):
        b.new_netns()
    none_mem = kmem() - base
    b.drop_netns()
    await asyncio.sleep(2)  # netns destruction is asynchronous in the kernel
    base, base_rss = kmem(), rss()
    t0 = time.perf_counter()
    ns_time = 0.0
    setups: list[float] = []
    for i in range(count):
        t = time.perf_counter()
        path = b.new_netns()
        ns_time += time.perf_counter() - t
        t = time.perf_counter()
        await svc.setup(f"den{i:060d}", path, ContainerNetConfig(name=f"d{i}", hostname=f"d{i}"))
        setups.append(time.perf_counter() - t)
        if (i + 1) % 250 == 0:
            print(f"  {i + 1} bridged containers up", flush=True)
    total = time.perf_counter() - t0
    bridge_mem = kmem() - base
    daemon = rss() - base_rss
    print(f"{count} bridged starts                {total:7.2f} s "
          f"({total / count * 1000:.2f} ms each; netns creation {ns_time:.2f} s of it)")
    tenth = max(count // 10, 1)
    print(f"  setup, first {tenth}                  {ms(setups[:tenth])}")
    print(f"  setup, last {tenth}                   {ms(setups[-tenth:])}")
    per = (bridge_mem - none_mem) / count
    print(f"kernel memory per container        {per / 1024:7.1f} KiB for networking "
          f"(its netns alone: {none_mem / count / 1024:.1f} KiB); "
          f"daemon RSS {daemon / count / 1024:.1f} KiB")
    t = time.perf_counter()
    for i in range(count):
        await svc.teardown(f"den{i:060d}")
    print(f"{count} teardowns                     {time.perf_counter() - t:7.2f} s")


async def engine_latency(b: Bench, svc: NetworkService, samples: int) -> None:
    """none vs bridge through ContainerManager (skipped if the engine is missing)."""
    try:
        from runtime.container.manager import ContainerManager, EngineConfig
        from runtime.container.spec import CreateRequest
        from runtime.events import EventBus
        from runtime.net.engine import EngineNetwork
        from runtime.store.archive import import_rootfs
        from runtime.store.images import ImageStore
        from tests.privileged.images import busybox_rootfs_tar
    except ImportError as e:
        print(f"engine comparison skipped: {e}")
        return
    root = Path(tempfile.mkdtemp(prefix="berth-bench-engine-"))
    root.chmod(0o711)  # a container's mapped root must traverse to its rootfs
    try:
        images = ImageStore(root / "data")
        with busybox_rootfs_tar(root / "busybox.tar").open("rb") as f:
            import_rootfs(images, f, tag="busybox:latest")
        mgr = ContainerManager(EngineConfig(root=root / "data", exec_root=root / "run"),
                               images=images, events=EventBus(),
                               network=EngineNetwork(svc, root / "run" / "net"), db=svc.db)
        await mgr.adopt()
        times: dict[str, list[float]] = {"none": [], "bridge": []}
        for i in range(samples * 2):
            mode = "none" if i % 2 == 0 else "bridge"  # interleaved: same load for both
            c = await mgr.create(CreateRequest(image="busybox", cmd=("sleep", "300"),
                                               network_mode=mode))
            t = time.perf_counter()
            await mgr.start(c.id)
            times[mode].append(time.perf_counter() - t)
        for c in mgr.list(all=True):
            await mgr.remove(c.id, force=True)
        await mgr.shutdown()
        ratio = statistics.median(times["bridge"]) / statistics.median(times["none"])
        print(f"engine start, --network none       {ms(times['none'])}")
        print(f"engine start, default bridge       {ms(times['bridge'])}")
        print(f"ratio bridge / none (engine)       {ratio:7.2f}x   (target <= 2x)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def amain(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("bench net needs root (network namespaces)")
        return 1
    with tempfile.TemporaryDirectory(prefix="berth-bench-net-") as tmp:
        b = Bench(Path(tmp))
        try:
            svc = await b.start()
            await latency(b, svc, args.samples)
            await engine_latency(b, svc, min(args.samples, 50))
            await density(b, svc, args.count)
        finally:
            await b.close()
    return 0


def main(args: argparse.Namespace) -> int:
    return asyncio.run(amain(args))
