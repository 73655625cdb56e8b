"""Shared by the update and release unit tests: small real images and repositories.

A "fake image" here is a real GPT disk written by sfdisk (an independent
implementation, so hostos.update.gpt is checked against it), with random
bytes for /usr and its verity data and partition UUIDs derived from a
usrhash exactly as systemd-repart derives them.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from hostos.keys import KeyStore
from hostos.repo import KeyLayout, Repository
from hostos.update import gpt
from runtime.run import run

SECTOR = 512
PASSPHRASE = b"correct horse battery"
# Sector layout of the test disk: (start, size) per partition.
LAYOUT = {
    "esp": (2048, 2048),
    "usr_a": (4096, 4096),
    "verity_a": (8192, 512),
    "usr_b": (8704, 4096),
    "verity_b": (12800, 512),
    "root": (13312, 2048),
}
DISK_SECTORS = 15400


@dataclass(frozen=True)
class FakeImage:
    folder: Path
    version: str
    usrhash: str
    usr: bytes
    verity: bytes
    uki: bytes


def sfdisk_script(usrhash: str, version: str, slot_b_hash: str | None = None,
                  scale: int = 1) -> str:
    """The test disk's table; scale multiplies every partition's start and size."""
    data_a, hash_a = gpt.uuids_for_roothash(usrhash)
    lines = ["label: gpt", "unit: sectors", "first-lba: 2048",
             f"last-lba: {DISK_SECTORS * scale - 40}"]
    types = {"esp": gpt.ESP, "usr_a": gpt.USR_X86_64, "verity_a": gpt.USR_VERITY_X86_64,
             "usr_b": gpt.USR_X86_64, "verity_b": gpt.USR_VERITY_X86_64, "root": gpt.ROOT_X86_64}
    names = {"esp": "esp", "usr_a": f"berth_{version}", "verity_a": f"berth_{version}_verity",
             "usr_b": "_empty", "verity_b": "_empty", "root": "root-x86-64"}
    uuids = {"usr_a": data_a, "verity_a": hash_a}
    if slot_b_hash:
        uuids["usr_b"], uuids["verity_b"] = gpt.uuids_for_roothash(slot_b_hash)
    for key, (start, size) in LAYOUT.items():
        u = uuids.get(key, uuid.uuid4())
        lines.append(f'start={start * scale}, size={size * scale}, type={types[key]}, '
                     f'uuid={u}, name="{names[key]}"')
    return "\n".join(lines) + "\n"


def make_disk(path: Path, usrhash: str, version: str, usr: bytes, verity: bytes,
              scale: int = 1) -> None:
    with path.open("wb") as f:
        f.truncate(DISK_SECTORS * SECTOR * scale)
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(path)],
        input=sfdisk_script(usrhash, version, scale=scale))
    with path.open("r+b") as f:
        f.seek(LAYOUT["usr_a"][0] * SECTOR * scale)
        f.write(usr)
        f.seek(LAYOUT["verity_a"][0] * SECTOR * scale)
        f.write(verity)


def fake_usrhash(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


def make_image(folder: Path, version: str, scale: int = 1, zeros: float = 0.0) -> FakeImage:
    """A berth.json image folder whose disk holds version's /usr in slot A.

    scale multiplies the partitions (1: 2 MiB of /usr); the UKI grows with it.
    zeros: the share of each partition that is trailing zeros (a real /usr
    partition is a small erofs at the start of a large slot).
    """
    folder.mkdir(parents=True, exist_ok=True)
    usrhash = fake_usrhash(version)

    def partition(key: str) -> bytes:
        size = LAYOUT[key][1] * SECTOR * scale
        data = int(size * (1 - zeros)) // 512 * 512 + 100   # not at a 4 KiB boundary
        return os.urandom(min(data, size)) + bytes(max(size - data, 0))

    usr, verity = partition("usr_a"), partition("verity_a")
    uki = b"MZ" + os.urandom(100_000 * scale)
    make_disk(folder / "disk.raw", usrhash, version, usr, verity, scale)
    (folder / "uki.efi").write_bytes(uki)
    for name in ("vmlinuz", "initrd", "manifest.json"):
        (folder / name).write_bytes(b"x")
    (folder / "berth.json").write_text(json.dumps({
        "version": version, "disk": "disk.raw", "uki": "uki.efi", "kernel": "vmlinuz",
        "initrd": "initrd", "manifest": "manifest.json",
        "cmdline": f"console=ttyS0 usrhash={usrhash}", "usrhash": usrhash,
    }))
    return FakeImage(folder, version, usrhash, usr, verity, uki)


def make_repo(tmp: Path, layout: KeyLayout | None = None) -> Repository:
    store = KeyStore(tmp / "keys", PASSPHRASE)
    return Repository.create(tmp / "repo", store, layout or KeyLayout.default())


def snapshot_tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}
