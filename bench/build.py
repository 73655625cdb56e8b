"""Dockerfile builds: berthd vs Debian's dockerd (legacy builder), side by side.

One 5-step Dockerfile on a busybox base (ENV, COPY of a 4 MiB context
directory, two RUN steps, CMD). Both daemons run in a private network
namespace with private roots (dockerd: --iptables=false --bridge=none) and
are built against with the same client, the docker CLI with
DOCKER_BUILDKIT=0, so only the daemons differ; `berth build` is timed too.

- cold: `--no-cache` (every step runs: two RUN containers, one COPY layer)
- cached: a rebuild where every step hits the cache
- one step changed: the last RUN edited, so two steps rebuild
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from bench.api_start import ROOT, netns, start_berthd, start_dockerd
from tests.privileged.images import busybox_rootfs_tar

DESCRIPTION = "build: cold, cached and one-step-changed builds, berthd vs dockerd (ratios)"
DOCKER = "/usr/local/bin/docker"
DOCKERFILE = """FROM busybox
ENV APP=bench
COPY data /data
RUN ls /data > /listing && echo built > /built
RUN for i in $(seq 1 {n}); do echo $i > /tmp/f$i; done
CMD ["cat", "/built"]
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", type=int, default=3, help="samples (default 3)")
    parser.add_argument("--no-docker", action="store_true", help="berthd only")


def make_context(ctx: Path) -> None:
    data = ctx / "data"
    data.mkdir(parents=True)
    for i in range(16):
        (data / f"blob{i}").write_bytes(os.urandom(256 << 10))
    (ctx / "Dockerfile").write_text(DOCKERFILE.format(n=100))


def client(argv: list[str], work: Path) -> Callable[[], None]:
    env = {"PATH": "/usr/bin:/bin", "DOCKER_BUILDKIT": "0", "HOME": str(work),
           "DOCKER_CONFIG": str(work / "docker-cli")}

    def once() -> None:
        r = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT,
                           stdin=subprocess.DEVNULL, timeout=600)
        if r.returncode:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{r.stdout}{r.stderr}")
    return once


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="berth-bench-build-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        work.chmod(0o711)  # containers' mapped roots traverse the exec root below
        ctx = work / "ctx"
        make_context(ctx)
        rootfs = busybox_rootfs_tar(work / "busybox.tar")
        ns = stack.enter_context(netns())
        (work / "b").mkdir()
        daemons: dict[str, Path] = {"berthd": stack.enter_context(start_berthd(ns, work / "b"))}
        if not args.no_docker:
            (work / "d").mkdir()
            try:
                daemons["dockerd"] = stack.enter_context(start_dockerd(ns, work / "d"))
            except (RuntimeError, OSError) as e:
                print(f"dockerd does not run here ({e}): berthd only", flush=True)
        sides: dict[str, dict[str, Callable[[], None]]] = {}
        for name, sock in daemons.items():
            docker = [DOCKER, "-H", f"unix://{sock}"]
            client([*docker, "import", str(rootfs), "busybox:latest"], work)()
            sides[f"docker build -> {name}"] = {
                "cold": client([*docker, "build", "-q", "--no-cache", "-t", "b:1", str(ctx)],
                               work),
                "cached": client([*docker, "build", "-q", "-t", "b:1", str(ctx)], work)}
            if name == "berthd":
                berth = [sys.executable, "-m", "runtime.cli", "-H", f"unix://{sock}"]
                sides["berth build -> berthd"] = {
                    "cold": client([*berth, "build", "-q", "--no-cache", "-t", "b:1",
                                    str(ctx)], work),
                    "cached": client([*berth, "build", "-q", "-t", "b:1", str(ctx)], work)}
        results: dict[str, dict[str, list[float]]] = {s: {"cold": [], "cached": [],
                                                          "changed": []} for s in sides}
        edits = 0
        for sample in range(args.samples):
            for side, fns in sides.items():  # interleaved: drift hits every side alike
                results[side]["cold"].append(timed(fns["cold"]))
                results[side]["cached"].append(timed(fns["cached"]))
                edits += 1  # an edit no daemon has seen: exactly the last RUN and CMD rebuild
                (ctx / "Dockerfile").write_text(DOCKERFILE.format(n=100 + edits))
                results[side]["changed"].append(timed(fns["cached"]))
                (ctx / "Dockerfile").write_text(DOCKERFILE.format(n=100))
            print(f"sample {sample + 1}/{args.samples} done", flush=True)
        med = {s: {k: statistics.median(v) for k, v in r.items()} for s, r in results.items()}
        print(f"{'client -> daemon':28} {'cold s':>8} {'cached s':>9} {'1 changed s':>12}")
        for side, m in med.items():
            print(f"{side:28} {m['cold']:8.3f} {m['cached']:9.3f} {m['changed']:12.3f}")
        ref = "docker build -> dockerd"
        if ref in med:
            b = med["docker build -> berthd"]
            print("ratios berthd/dockerd (same docker CLI; < 1: berthd faster): " + ", ".join(
                f"{k} {b[k] / med[ref][k]:.2f}" for k in ("cold", "cached", "changed")))
    return 0
