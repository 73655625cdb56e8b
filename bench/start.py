"""Start latency of `/bin/true`: berth's engine (warm, in-process) vs `crun run`.

berth: create + start + wait for exit of a busybox `true` container, through
ContainerManager in this process (what berthd does per API call, without
HTTP). crun: `crun run` of the same rootfs (shared, read-only), foreground,
as MACHINE-NOTES runs it (cgroup.controllers hidden in a private mount ns;
one `sh` loop for all samples so only crun itself is timed, via its own
clock in the loop). Medians side by side; the target is a ratio <= 1.0.
Runs in a network namespace made for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench.api_start import inside_netns, run_tmpfs
from runtime import cgroups
from runtime.container.manager import ContainerManager, EngineConfig
from runtime.container.spec import CreateRequest
from runtime.events import EventBus
from runtime.run import run
from runtime.store.archive import import_rootfs
from runtime.store.images import ImageStore
from runtime.sys.libc import set_child_subreaper

DESCRIPTION = "start latency of /bin/true: engine create+start+wait vs crun run (ratio)"
IMAGE = "busybox:bench"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", type=int, default=50, help="starts of each (default 50)")


async def berth_samples(tmp: Path, images: ImageStore, n: int) -> list[float]:
    exec_root = Path(tempfile.mkdtemp(prefix="berth-bench-run-", dir=tmp / "run"))
    exec_root.chmod(0o711)
    cg_root = cgroups.default_root().with_name(f"berth-bench-{uuid.uuid4().hex[:8]}")
    m = ContainerManager(EngineConfig(root=tmp / "data", exec_root=exec_root,
                                      cgroup_root=cg_root), images, EventBus())
    await m.adopt()
    out = []
    try:
        for i in range(n + 3):
            t0 = time.perf_counter()
            rec = await m.create(CreateRequest(image=IMAGE, cmd=("true",)))
            await m.start(rec.id)
            await m.wait(rec.id)
            dt = time.perf_counter() - t0
            await m.remove(rec.id)
            if i >= 3:  # the first ones compile the seccomp filter and warm caches
                out.append(dt)
    finally:
        for cid in list(m.containers):
            await m.remove(cid, force=True)
        await m.shutdown()
        shutil.rmtree(exec_root, ignore_errors=True)
        cg_root.rmdir()
    return out


def crun_samples(tmp: Path, tar: Path, n: int) -> list[float]:
    bundle = tmp / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    run(["tar", "-xf", str(tar), "-C", str(bundle / "rootfs")])
    run(["crun", "spec"], cwd=bundle)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["true"]
    cfg["linux"]["namespaces"].append({"type": "cgroup"})
    (bundle / "config.json").write_text(json.dumps(cfg))
    empty = tmp / "empty"
    empty.touch()
    script = (f"mount --bind {empty} /sys/fs/cgroup/unified/cgroup.controllers && "
              f"for i in $(seq 1 {n + 3}); do s=$(date +%s%N); "
              f"crun --root {tmp}/run/state run --bundle {bundle} c$i </dev/null >/dev/null 2>&1; "
              f"e=$(date +%s%N); echo $((e - s)); done")
    lines = run(["unshare", "-m", "sh", "-c", script]).stdout.split()
    return [int(x) / 1e9 for x in lines[3:]]


def main(args: argparse.Namespace) -> int:
    n = args.samples
    tmp = Path(tempfile.mkdtemp(prefix="berth-startbench-"))
    tmp.chmod(0o711)   # the run dirs below: searchable by containers' mapped roots
    try:
        from tests.privileged.images import busybox_rootfs_tar

        tar = busybox_rootfs_tar(tmp / "busybox.tar")
        images = ImageStore(tmp / "data")
        with tar.open("rb") as f:
            import_rootfs(images, f, tag=IMAGE)
        # run state on tmpfs for both, as deployed (/run)
        with inside_netns("berth-startbench"), run_tmpfs(tmp / "run"):
            b = asyncio.run(berth_samples(tmp, images, n))
            set_child_subreaper(False)
            c = crun_samples(tmp, tar, n)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bm, cm = statistics.median(b) * 1000, statistics.median(c) * 1000
    print(f"\nstart of /bin/true, median of {n}")
    print(f"{'berth engine (create+start+wait)':36}{bm:8.1f} ms")
    print(f"{'crun run':36}{cm:8.1f} ms")
    print(f"{'ratio berth / crun':36}{bm / cm:8.2f}")
    return 0
