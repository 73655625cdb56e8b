"""Where a berth container's memory goes beyond a bare crun one (`density --parts`).

Three kinds of evidence, side by side with bare `crun run -d` in the same run:

- kernel objects: the growth of every slab cache (/proc/slabinfo, active
  objects x object size) and of the page-level counters of /proc/meminfo
  (page tables, kernel stacks, vmalloc, percpu, shmem) over each side's own
  rounds, per container. These are machine-wide: other work on the machine
  shows up as noise, so the sides alternate and only large N is meaningful;
  our own memory cgroup's kmem, anon, shmem and file cache are exact.
- counted directly: the containers' own page tables and RSS (/proc/PID/status),
  their mounts (/proc/PID/mountinfo), inodes and pages of the run dir's tmpfs,
  directories and files under the data root (their inodes and dir blocks), the
  SQLite database and WAL, the daemon's fds.
- the daemon's Python objects: its RSS growth per container and a tracemalloc
  diff (a separate pass: tracing costs memory of its own) by allocation site.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import re
import time
import tracemalloc
from pathlib import Path

from bench import density as d
from runtime.run import run

KIB = 1024
SLAB_MIN = 0.1   # KiB per container: smaller slab differences are not listed


def slabinfo() -> dict[str, int]:
    """Bytes of live objects per slab cache (active_objs x objsize)."""
    out: dict[str, int] = {}
    with open("/proc/slabinfo") as f:
        for line in f.readlines()[2:]:
            parts = line.split()
            out[parts[0]] = int(parts[1]) * int(parts[3])
    return out


MEMINFO_KEYS = ("PageTables", "KernelStack", "VmallocUsed", "Percpu", "Shmem", "Slab",
                "SUnreclaim", "AnonPages", "Cached")


def meminfo_all() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in MEMINFO_KEYS:
            out[key] = int(rest.split()[0]) * KIB
    return out


def memcg_stat() -> dict[str, int]:
    rel = d._own_memcg()
    if rel is None:
        return {}
    base = Path("/sys/fs/cgroup/memory") / rel.lstrip("/")
    stat = dict(line.split() for line in (base / "memory.stat").read_text().splitlines())
    out: dict[str, int] = {k: int(stat[k]) for k in ("rss", "shmem", "mapped_file")
                           if k in stat}
    out["file"] = int(stat["active_file"]) + int(stat["inactive_file"])
    out["usage"] = int((base / "memory.usage_in_bytes").read_text())
    out["kmem"] = int((base / "memory.kmem.usage_in_bytes").read_text())
    return out


def snapshot() -> dict[str, dict[str, int]]:
    return {"slab": slabinfo(), "meminfo": meminfo_all(), "memcg": memcg_stat()}


def _add_delta(acc: dict[str, dict[str, float]], a: dict[str, dict[str, int]],
               b: dict[str, dict[str, int]], n: int) -> None:
    for kind in b:
        dst = acc.setdefault(kind, {})
        for key, val in b[kind].items():
            dst[key] = dst.get(key, 0.0) + (val - a[kind].get(key, 0)) / n


def proc_status(pid: int, keys: tuple[str, ...] = ("VmPTE", "VmRSS", "RssAnon",
                                                    "RssFile", "RssShmem")) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in keys:
            out[key] = int(rest.split()[0]) * KIB
    return out


def mounts_of(pid: int) -> tuple[int, int]:
    """(mounts, distinct superblocks) in the process's mount namespace."""
    try:
        lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    except FileNotFoundError:
        return 0, 0
    return len(lines), len({line.split()[2] for line in lines})


def tree_usage(root: Path) -> tuple[int, int, int]:
    """(dirs, files, bytes of regular files, each rounded up to pages) under root."""
    dirs = files = size = 0
    for dirpath, dnames, fnames in os.walk(root):
        dirs += len(dnames)
        files += len(fnames)
        for name in fnames:
            with_path = os.path.join(dirpath, name)
            try:
                st = os.lstat(with_path)
            except FileNotFoundError:
                continue
            size += (st.st_size + 4095) // 4096 * 4096
    return dirs, files, size


def container_pids(side: d.Side) -> list[int]:
    if isinstance(side, d.BerthSide):
        return [c.state.pid for c in side.m.containers.values() if c.state.pid]
    if isinstance(side, d.CrunSide):
        listing = json.loads(run(["crun", "--root", str(side.state), "list", "-f",
                                      "json"]).stdout or "[]")
        return [int(c["pid"]) for c in listing if c.get("pid")]
    return []


def per_process(pids: list[int]) -> dict[str, float]:
    tot: dict[str, float] = {}
    for pid in pids:
        for k, v in proc_status(pid).items():
            tot[k] = tot.get(k, 0.0) + v
        m, s = mounts_of(pid)
        tot["mounts"] = tot.get("mounts", 0.0) + m
        tot["superblocks"] = tot.get("superblocks", 0.0) + s
        with contextlib.suppress(FileNotFoundError):
            tot["fds"] = tot.get("fds", 0.0) + len(os.listdir(f"/proc/{pid}/fd"))
    return {k: v / max(len(pids), 1) for k, v in tot.items()}


def statvfs_used(path: Path) -> tuple[int, int]:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_files - st.f_ffree


async def measure(sides: list[d.Side], n: int, rounds: int) -> dict[str, dict[str, dict[str,
                                                                                       float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {s.label: {} for s in sides}
    for r in range(rounds):
        for side in sides:
            k = n // rounds + (1 if r < n % rounds else 0)
            await d.settle()
            a = snapshot()
            await side.start(k)
            await d.settle()
            b = snapshot()
            _add_delta(out[side.label], a, b, n)
        print(f"  round {r + 1}/{rounds} done, load {os.getloadavg()[0]:.1f}", flush=True)
    return out


def direct(side: d.BerthSide, n: int, run_root: Path, run_used0: tuple[int, int]
           ) -> dict[str, float]:
    """What one berth engine holds per container, counted (not sampled)."""
    m = side.m
    out: dict[str, float] = {}
    used, inodes = statvfs_used(run_root)
    out["run tmpfs pages (KiB)"] = (used - run_used0[0]) / n / KIB
    out["run tmpfs inodes"] = (inodes - run_used0[1]) / n
    dirs, files, _ = tree_usage(m.config.exec_root / "containers")
    out["run dir: dirs"] = dirs / n
    out["run dir: files (FIFOs)"] = files / n
    dirs, files, size = tree_usage(m.config.root / "containers")
    out["data dir: dirs"] = dirs / n
    out["data dir: files (/etc, logs)"] = files / n
    out["data dir: file pages (KiB)"] = size / n / KIB
    db = m.config.root / "berth.db"
    for suffix in ("", "-wal", "-shm"):
        p = Path(f"{db}{suffix}")
        out[f"berth.db{suffix} (KiB)"] = (p.stat().st_size if p.exists() else 0) / n / KIB
    out["daemon fds"] = len(os.listdir("/proc/self/fd")) / n
    return out


async def python_objects(side: d.BerthSide, n: int) -> tuple[float, list[str]]:
    """tracemalloc diff over starting n more containers: bytes per container and the top
    allocation sites."""
    gc.collect()
    tracemalloc.start(1)
    s0 = tracemalloc.take_snapshot()
    await side.start(n)
    await d.settle()
    gc.collect()
    s1 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    stats = s1.compare_to(s0, "lineno")
    total = sum(s.size_diff for s in stats)
    lines = []
    for s in stats[:18]:
        frame = s.traceback[0]
        short = re.sub(r".*/(runtime|bench|python3[^/]*)/", r"\1/", frame.filename)
        where = f"{short}:{frame.lineno}"
        lines.append(f"  {s.size_diff / n:8.0f} B  {s.count_diff / n:6.1f} objs  {where}")
    return total / n, lines


def report(sides: dict[str, dict[str, dict[str, float]]], procs: dict[str, dict[str, float]],
           berth_direct: dict[str, float], rss_per: float, py_per: float, py_lines: list[str],
           n: int) -> None:
    names = list(sides)
    col = "".join(f"{name:>14}" for name in names)

    def row(label: str, kind: str, key: str, scale: float = KIB) -> None:
        vals = [sides[s].get(kind, {}).get(key, float("nan")) / scale for s in names]
        print(f"{label:36}" + "".join(f"{v:>14.1f}" for v in vals))

    print(f"\nper container, KiB ({n} per side; memcg = our memory cgroup, exact; "
          f"meminfo/slab = machine-wide)\n{'':36}{col}")
    for key in ("usage", "kmem", "rss", "shmem", "file"):
        row(f"memcg {key}", "memcg", key)
    for key in MEMINFO_KEYS:
        row(f"meminfo {key}", "meminfo", key)
    base = names[-1]   # crun
    diffs = []
    caches = set().union(*(sides[s].get("slab", {}) for s in names))
    for cache in caches:
        vals = [sides[s].get("slab", {}).get(cache, 0.0) / KIB for s in names]
        if max(abs(v) for v in vals) >= SLAB_MIN:
            diffs.append((vals[0] - sides[base].get("slab", {}).get(cache, 0.0) / KIB,
                          cache, vals))
    print(f"\nslab caches (KiB per container; sorted by {names[0]} - {base})")
    for diff, cache, vals in sorted(diffs, reverse=True):
        print(f"  {cache:34}" + "".join(f"{v:>14.2f}" for v in vals) + f"   diff {diff:+.2f}")
    print(f"\nper container process\n{'':36}{col}")
    for key in ("VmPTE", "RssAnon", "RssFile", "RssShmem", "mounts", "superblocks", "fds"):
        scale = KIB if key.startswith(("Vm", "Rss")) else 1
        vals = [procs.get(s, {}).get(key, float("nan")) / scale for s in names]
        print(f"{key:36}" + "".join(f"{v:>14.1f}" for v in vals))
    print(f"\n{names[0]}: counted per container")
    for key, val in berth_direct.items():
        print(f"  {key:34}{val:>10.2f}")
    print(f"\ndaemon RSS growth: {rss_per / KIB:.1f} KiB per container; tracemalloc: "
          f"{py_per / KIB:.1f} KiB per container; by site:")
    print("\n".join(py_lines))


def main_parts(n: int, with_bare: bool) -> int:
    """Run the breakdown (called by `density --parts`)."""
    import shutil
    import tempfile

    from bench.api_start import inside_netns, run_tmpfs
    from runtime.store.archive import import_rootfs
    from runtime.store.images import ImageStore
    from runtime.sys.libc import set_child_subreaper
    from tests.privileged.images import busybox_rootfs_tar

    tmp = Path(tempfile.mkdtemp(prefix="berth-density-parts-"))
    tmp.chmod(0o711)
    load0 = os.getloadavg()

    async def go(run_root: Path, tar: Path, images: ImageStore) -> None:
        berth = d.BerthSide(tmp, images, "berth", d.VARIANTS["berth"])
        sides: list[d.Side] = [berth]
        if with_bare:
            sides.append(d.BerthSide(tmp, images, "no seccomp", {"seccomp": "unconfined"}))
            sides.append(d.BerthSide(tmp, images, "no userns", {"userns": False}))
        for s in sides:
            assert isinstance(s, d.BerthSide)
            await s.open()
        set_child_subreaper(False)
        crun = d.CrunSide(tmp, tar)
        sides.append(crun)
        run_used0 = statvfs_used(run_root)
        rss0 = d.rss()
        try:
            res = await measure(sides, n, 5)
            rss_per = (d.rss() - rss0) / (n * (len(sides) - 1))
            procs = {s.label: per_process(container_pids(s)) for s in sides}
            # the run tmpfs also holds crun's state and the other berth sides: count
            # berth's own run dir only
            run_used = (0, 0)
            counted = direct(berth, n, run_root, run_used)
            used_all, inodes_all = statvfs_used(run_root)
            counted["run tmpfs pages, all sides (KiB)"] = (used_all - run_used0[0]) / n / KIB
            counted["run tmpfs inodes, all sides"] = (inodes_all - run_used0[1]) / n
            del counted["run tmpfs pages (KiB)"], counted["run tmpfs inodes"]
            py_per, py_lines = await python_objects(berth, max(n // 10, 20))
            report(res, procs, counted, rss_per, py_per, py_lines, n)
        finally:
            for s in sides:
                await s.close()

    try:
        tar = busybox_rootfs_tar(tmp / "busybox.tar")
        images = ImageStore(tmp / "data")
        with tar.open("rb") as f:
            import_rootfs(images, f, tag=d.IMAGE)
        with inside_netns("berth-density"), run_tmpfs(tmp / "run") as run_root:
            asyncio.run(go(run_root, tar, images))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load1 = os.getloadavg()
    print(f"load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end; "
          f"{time.strftime('%H:%M:%S')}")
    return 0
