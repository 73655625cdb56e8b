"""Update apply cost: TUF verify + slot write, against plain decompression (the floor).

Side by side in one run, on the host, with the real release of image B:
- peer (the floor): `zstd -d` of the same three artifacts into files;
- ours: the agent's fetch (python-tuf over file://: metadata refresh, length
  and sha256 of every target) plus hostos.update.slots.install into a sparse
  copy of image A's disk and an ESP folder (GPT updates, bounded writes
  hashed on the way, fsyncs).
The ratio is what verification and crash safety cost. Also printed: the
download size of the release against its raw size, and the publish time.
The end-to-end time under TCG (update found -> B blessed) is bench/update_vm.py.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from hostos.artifacts import load_image
from hostos.keys import KeyStore
from hostos.release import make_release
from hostos.repo import KeyLayout, Repository
from hostos.update.check import Source
from hostos.update.config import validate
from hostos.update.manifest import ArtifactKind
from hostos.update.slots import BootDisk, Esp, install
from hostos.update.version import Version
from runtime.run import run

DESCRIPTION = "update apply (TUF verify + slot write) vs plain zstd -d; download size"
ROOT = Path(__file__).resolve().parents[1]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-a", type=Path, default=ROOT / "build" / "image")
    p.add_argument("--image-b", type=Path, default=ROOT / "build" / "image-b")
    p.add_argument("--rounds", type=int, default=3, help="runs of each side (median)")


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def main(args: argparse.Namespace) -> int:
    a, b = load_image(args.image_a), load_image(args.image_b)
    with tempfile.TemporaryDirectory(prefix="bench-update-", dir=ROOT / "build") as tmp_s:
        tmp = Path(tmp_s)
        repo = Repository.create(tmp / "repo", KeyStore(tmp / "keys", b"bench passphrase"),
                                 KeyLayout.default())
        t0 = time.monotonic()
        release = make_release(b.folder, b.version, repo)
        publish = time.monotonic() - t0
        targets = repo.targets()
        download = sum(targets[x.target].length for x in release.artifacts.values())
        raw = sum(x.size for x in release.artifacts.values())
        files = {k: repo.path / "targets" / x.target.rpartition("/")[0] /
                 f"{targets[x.target].hashes['sha256']}.{x.target.rpartition('/')[2]}"
                 for k, x in release.artifacts.items()}

        floor: list[float] = []
        ours: list[float] = []
        fetch: list[float] = []
        for i in range(args.rounds):
            t0 = time.monotonic()
            for kind, path in files.items():
                out = tmp / f"floor-{kind}"
                # --no-sparse: a slot gets every byte written, zeros included.
                run(["zstd", "-q", "-d", "-f", "--no-sparse", "-o", str(out), str(path)])
                fd = os.open(out, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
            floor.append(time.monotonic() - t0)
            for kind in ArtifactKind:
                (tmp / f"floor-{kind}").unlink()

            disk = tmp / "disk.raw"
            run(["cp", "--sparse=always", str(a.disk), str(disk)])
            esp = tmp / f"esp{i}"
            (esp / "EFI" / "Linux").mkdir(parents=True)
            settings = validate({"url": f"file://{repo.path}", "state_dir": str(tmp / f"s{i}"),
                                 "trusted_root": str(repo.path / "metadata" / "1.root.json")})
            t0 = time.monotonic()
            source = Source(settings)
            fetched = source.fetch(source.refresh() or release)
            fetch.append(time.monotonic() - t0)
            install(BootDisk(disk), Esp(esp, "berth"), a.usrhash, Version.parse(a.version), release,
                    fetched, 3)
            ours.append(time.monotonic() - t0)
            disk.unlink()

    print(f"release {b.version}: download {download / 1e6:.1f} MB "
          f"(raw {raw / 1e6:.1f} MB, {download / raw:.0%}); publish {publish:.1f} s")
    print(f"{'':24}{'median s':>10}")
    print(f"{'zstd -d (floor)':24}{_median(floor):>10.2f}")
    print(f"{'hostos apply':24}{_median(ours):>10.2f}")
    print(f"{'  of which TUF fetch':24}{_median(fetch):>10.2f}")
    print(f"ratio ours/floor: {_median(ours) / _median(floor):.2f}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0

