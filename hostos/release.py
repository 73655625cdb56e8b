"""`hostos release --version V`: publish a built image as a signed TUF release.

From the image folder (berth.json) it takes the /usr partition and its
verity partition out of the disk (found in the GPT by the UUIDs that the
usrhash names, so they are exactly what the UKI pins) and the UKI, compresses
each, and publishes them plus the channel pointer `channels/<channel>.json`
in one new snapshot of the repository. The manifest (hostos.update.manifest)
goes into the targets' signed custom metadata.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostos.artifacts import ImageArtifacts, load_image
from hostos.errors import HostosError
from hostos.keys import KeyStore, add_key_arguments, passphrase_from
from hostos.repo import Repository, TargetSpec
from hostos.update import gpt
from hostos.update.manifest import (
    Artifact,
    ArtifactKind,
    Compression,
    ReleaseManifest,
    canonical_safe,
    channel_target,
)
from hostos.update.version import Version
from runtime.run import run

log = logging.getLogger("hostos.release")
CHUNK = 4 << 20
ZSTD_LEVEL = 12


def compress_cmd(src: Path, dst: Path, compression: Compression) -> list[str]:
    assert compression is Compression.ZSTD
    return ["zstd", "-q", "-f", "-T0", f"-{ZSTD_LEVEL}", "-o", str(dst), str(src)]


@dataclass(frozen=True)
class Extracted:
    path: Path
    size: int
    sha256: str
    zero_tail: int = 0   # zeros that follow in the partition, not extracted (not shipped)


def _data_length(disk: Path, offset: int, size: int) -> int:
    """The partition's length without its trailing zeros, up to a 4 KiB boundary: what
    the agent zeroes in place need not be shipped."""
    if disk.stat().st_size < offset + size:
        raise HostosError(f"{disk} ends inside a partition (at byte {disk.stat().st_size})")
    end = size
    with disk.open("rb") as f:
        while end:
            n = min(CHUNK, end)
            f.seek(offset + end - n)
            kept = len(f.read(n).rstrip(b"\0"))
            end -= n - kept
            if kept:
                break
    return min(size, -(-end // 4096) * 4096)


def _copy_range(disk: Path, offset: int, size: int, out: Path) -> Extracted:
    h = hashlib.sha256()
    with disk.open("rb") as src, out.open("wb") as dst:
        src.seek(offset)
        left = size
        while left:
            chunk = src.read(min(CHUNK, left))
            if not chunk:
                at = offset + size - left
                raise HostosError(f"{disk} ends inside a partition (at byte {at})")
            h.update(chunk)
            dst.write(chunk)
            left -= len(chunk)
    return Extracted(out, size, h.hexdigest())


def extract_usr(image: ImageArtifacts, workdir: Path) -> dict[ArtifactKind, Extracted]:
    """The usr and verity partitions the image's usrhash names, as raw files."""
    data_uuid, hash_uuid = gpt.uuids_for_roothash(image.usrhash)
    with image.disk.open("rb") as f:
        try:
            table = gpt.read_table(f, 512, image.disk.stat().st_size)
        except gpt.GptError as e:
            raise HostosError(f"{image.disk}: no usable partition table ({e})") from e
    out: dict[ArtifactKind, Extracted] = {}
    for kind, want, ptype in ((ArtifactKind.USR, data_uuid, gpt.USR_X86_64),
                              (ArtifactKind.VERITY, hash_uuid, gpt.USR_VERITY_X86_64)):
        part = table.by_uuid(want)
        if part is None or part.type != ptype:
            raise HostosError(
                f"{image.disk}: no {kind} partition with UUID {want} (from usrhash); "
                "was the image built by `hostos build`?"
            )
        offset, size = part.offset(512), part.size(512)
        data = _data_length(image.disk, offset, size)
        ex = _copy_range(image.disk, offset, data, workdir / f"{kind}.raw")
        out[kind] = dataclasses.replace(ex, zero_tail=size - data)
    return out


def _hash_file(path: Path) -> Extracted:
    h = hashlib.sha256()
    n = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
    return Extracted(path, n, h.hexdigest())


def _compress(src: Path, dst: Path, compression: Compression) -> Path:
    run(compress_cmd(src, dst, compression))
    return dst


def make_release(image_dir: Path, version: str, repo: Repository, *, channel: str = "stable",
                 compression: Compression = Compression.ZSTD,
                 rollout: Mapping[str, Any] | None = None) -> ReleaseManifest:
    """Publish the image in image_dir as release `version` on `channel`."""
    image = load_image(image_dir)
    missing = image.missing()
    if missing:
        raise HostosError(f"image {image_dir} is incomplete ({missing[0]} missing): rebuild it")
    if image.version != version:
        raise HostosError(
            f"image {image_dir} is version {image.version}, not {version}: "
            f"build it with `hostos build --version {version}` or pass --image"
        )
    v = Version.parse(version)
    if rollout is not None and not isinstance(rollout, dict):
        raise HostosError("the rollout plan must be a JSON object")
    existing = repo.targets().get(channel_target(channel))
    if existing is not None and isinstance(existing.custom, dict):
        current = Version.parse(str(existing.custom.get("version", "0")))
        if v < current:
            log.warning("channel %s goes back from %s to %s: hosts on %s will refuse it",
                        channel, current, v, current)
    with tempfile.TemporaryDirectory(prefix="berth-release-", dir=image.folder) as tmp:
        work = Path(tmp)
        log.info("extracting /usr and its verity data from %s", image.disk.name)
        raw = extract_usr(image, work)
        raw[ArtifactKind.UKI] = _hash_file(image.uki)
        specs: list[TargetSpec] = []
        artifacts: dict[ArtifactKind, Artifact] = {}
        for kind, ex in raw.items():
            log.info("compressing %s (%d MiB, %s)%s", kind, ex.size >> 20, compression,
                     f"; {ex.zero_tail >> 20} MiB of trailing zeros not shipped"
                     if ex.zero_tail else "")
            packed = _compress(ex.path, work / f"{kind}{compression.suffix}", compression)
            name = f"{version}/{kind}{compression.suffix}"
            artifacts[kind] = Artifact(name, ex.size, ex.sha256, compression, ex.zero_tail)
            specs.append(TargetSpec(name, packed, {"berth": {"kind": str(kind),
                                                             "version": version}}))
        manifest = ReleaseManifest(v, image.usrhash, artifacts,
                                   canonical_safe(dict(rollout or {"waves": []})))
        channel_file = work / "channel.json"
        channel_file.write_bytes(manifest.to_bytes())
        specs.append(TargetSpec(channel_target(channel), channel_file, manifest.to_json()))
        repo.add_targets(specs)
    log.info("published %s on channel %s (targets v%d)", version, channel,
             repo.targets_md.signed.version)
    return manifest


def _release(args: argparse.Namespace) -> int:
    store = KeyStore(args.keys, passphrase_from(args))
    repo = Repository.open(args.repo, store)
    image = args.image or Path("build/image")
    rollout = None
    if args.rollout:
        from datetime import UTC, datetime

        from hostos.rollout import RolloutError, parse_plan_spec
        try:
            rollout = parse_plan_spec(args.rollout, datetime.now(UTC)).to_json()
        except RolloutError as e:
            raise HostosError(f"--rollout: {e}") from e
    manifest = make_release(image, args.version, repo, channel=args.channel,
                            compression=Compression(args.compression), rollout=rollout)
    total = sum(repo.targets()[a.target].length for a in manifest.artifacts.values())
    print(f"released {manifest.version} on {args.channel}: {total / 1e6:.1f} MB to download")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("release", help="publish a built image as a signed update")
    p.add_argument("--version", required=True, help="the image's version (berth.json)")
    p.add_argument("--image", type=Path, help="image folder with berth.json (default build/image)")
    p.add_argument("--channel", default="stable", help="release channel (default: %(default)s)")
    p.add_argument("--compression", choices=[str(c) for c in Compression], default="zstd")
    p.add_argument("--rollout", metavar="SPEC",
                   help="waves as PERCENT%%@DELAY, e.g. 10%%@0,50%%@30m,100%%@2h "
                        "(default: everyone at once)")
    add_key_arguments(p)
    p.set_defaults(func=_release)
