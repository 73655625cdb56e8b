"""Push and pull of one image against a local docker-registry: Berth vs skopeo/podman.

The image: busybox plus `--layers` layers of incompressible data (gzip
level 1, so no tool recompresses anything), `--size` MiB in all. Each
sample starts a fresh docker-registry on 127.0.0.1 (nothing already there,
no mounts), pushes with each tool, then pulls with each:

- push: `berth push` from its store vs `skopeo copy oci:<layout> docker://`
  (skopeo reading the same blobs from an OCI layout directory);
- pull: `berth pull` into an empty store (download, verify, unpack, record)
  vs `skopeo copy docker:// oci:` (download and verify only: less work) and
  `podman pull` (download, unpack into its overlay store: the same work).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import os
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from runtime.oci import MediaType
from runtime.registry.client import RegistryClient, RegistryOptions
from runtime.registry.transfer import pull, push
from runtime.store.archive import import_rootfs, save
from runtime.store.commit import LayerInfo, create_image, layer_from_blob
from runtime.store.images import ImageStore
from tests.faultproxy import busybox_rootfs, start_registry

DESCRIPTION = "registry: push and pull of one image, Berth vs skopeo and podman (ratios)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=48, help="MiB of layer data (default 48)")
    parser.add_argument("--layers", type=int, default=3, help="data layers (default 3)")
    parser.add_argument("--samples", type=int, default=3, help="samples (default 3)")


def make_image(store: ImageStore, tmp: Path, size_mib: int, layers: int) -> str:
    rootfs = busybox_rootfs(tmp / "rootfs")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        t.add(rootfs, arcname=".")
    buf.seek(0)
    base = import_rootfs(store, io.BytesIO(gzip.compress(buf.getvalue(), 1)))
    infos = []
    per = (size_mib << 20) // max(layers, 1)
    for i in range(layers):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as t:
            ti = tarfile.TarInfo(f"data/layer{i}.bin")
            ti.size = per
            t.addfile(ti, io.BytesIO(os.urandom(per)))
        blob = store.blobs.put(gzip.compress(raw.getvalue(), 1))
        info = layer_from_blob(store, blob, MediaType.OCI_LAYER_GZIP)
        infos.append(LayerInfo(info.diff_id, blob, store.blobs.size(blob),
                               MediaType.OCI_LAYER_GZIP))
    return create_image(store, base=base.id, layers=infos, tags=["bench/app:1"]).id


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, capture_output=True,
                   env={**os.environ, **(env or {})})
    return time.perf_counter() - t


def podman_env(tmp: Path) -> dict[str, str]:
    (tmp / "podman").mkdir(exist_ok=True)
    conf = tmp / "podman/containers.conf"
    conf.write_text('[containers]\nnetns="none"\n[engine]\ncgroup_manager="cgroupfs"\n'
                    'events_logger="file"\n')
    storage = tmp / "podman/storage.conf"
    storage.write_text(f'[storage]\ndriver="overlay"\ngraphroot="{tmp}/podman/graph"\n'
                       f'runroot="{tmp}/podman/run"\n')
    return {"CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage)}


def sample(store: ImageStore, layout: Path, tmp: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    with start_registry(tmp) as reg:
        opts = RegistryOptions(insecure=frozenset({reg.host}))
        ref = f"{reg.host}/berth/app:1"
        store.tag("bench/app:1", ref)

        async def do_push() -> None:
            async with RegistryClient(opts) as c:
                await push(store, c, ref)
        t = time.perf_counter()
        asyncio.run(do_push())
        out["push berth"] = time.perf_counter() - t
        out["push skopeo"] = timed(["skopeo", "copy", "-q", "--dest-tls-verify=false",
                                    f"oci:{layout}:1", f"docker://{reg.host}/skopeo/app:1"])
        fresh = ImageStore(tmp / "pulled")

        async def do_pull() -> None:
            async with RegistryClient(opts) as c:
                await pull(fresh, c, ref)
        t = time.perf_counter()
        asyncio.run(do_pull())
        out["pull berth"] = time.perf_counter() - t
        out["pull skopeo"] = timed(["skopeo", "copy", "-q", "--src-tls-verify=false",
                                    f"docker://{ref}", f"oci:{tmp}/skopeo-out:1"])
        env = podman_env(tmp)
        out["pull podman"] = timed(["podman", "pull", "-q", "--tls-verify=false", ref], env)
        subprocess.run(["podman", "rmi", "-a", "-f"], env={**os.environ, **env},
                       capture_output=True, check=False)
        store.remove(ref)
    return out


def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="berth-bench-reg-") as d:
        tmp = Path(d)
        store = ImageStore(tmp / "berth")
        make_image(store, tmp, args.size, args.layers)
        with (tmp / "img.tar").open("wb") as f:
            save(store, ["bench/app:1"], f)
        layout = tmp / "layout"
        layout.mkdir()
        with tarfile.open(tmp / "img.tar") as t:
            t.extractall(layout, filter="data")
        runs: list[dict[str, float]] = []
        for i in range(args.samples):
            s = tmp / f"s{i}"
            s.mkdir()
            runs.append(sample(store, layout, s))
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"image: busybox + {args.layers} layers, {args.size} MiB (gzip, incompressible); "
              f"median of {args.samples}")
        print(f"{'operation':<14}{'seconds':>9}")
        for k, v in med.items():
            print(f"{k:<14}{v:>9.3f}")
        print(f"push ratio berth/skopeo: {med['push berth'] / med['push skopeo']:.2f}")
        print(f"pull ratio berth/skopeo: {med['pull berth'] / med['pull skopeo']:.2f} "
              "(skopeo does not unpack)")
        print(f"pull ratio berth/podman: {med['pull berth'] / med['pull podman']:.2f}")
    return 0
