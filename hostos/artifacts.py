"""berth.json: what one image build produced, and where.

The contract between the image build and its users (the QEMU harness, the
release and update tooling, the VM tests): a folder with berth.json whose
file paths are relative to that folder. `load_image(dir)` reads it.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hostos.errors import HostosError

MANIFEST_NAME = "berth.json"
# GPT partition labels hold 36 UTF-16 characters: "berth_" + V + "_verity".
# "_" separates label fields and "+" starts systemd-boot's boot counter, so
# neither may appear in a version.
VERSION_RE = re.compile(r"^[0-9][0-9A-Za-z.~-]{0,22}$")
_FILE_KEYS = ("disk", "uki", "kernel", "initrd", "manifest")


def check_version(version: str) -> str:
    if not VERSION_RE.match(version):
        raise HostosError(
            f"bad image version {version!r}: use digits, letters, '.', '~' or '-', "
            "starting with a digit, at most 23 characters (no '_' or '+')"
        )
    return version


@dataclass(frozen=True)
class ImageSizes:
    """Bytes; usr_tree is /usr before erofs, usr_erofs the filesystem in the slot."""

    uki: int
    kernel: int
    initrd: int
    usr_tree: int | None
    usr_erofs: int | None
    disk_apparent: int
    disk_allocated: int


@dataclass(frozen=True)
class ImageArtifacts:
    """One built image; every path is absolute (resolved against berth.json's folder)."""

    version: str
    disk: Path
    uki: Path
    kernel: Path
    initrd: Path
    cmdline: str
    usrhash: str
    manifest: Path
    inputs: str = ""
    sizes: ImageSizes | None = field(default=None, compare=False)

    @property
    def folder(self) -> Path:
        return self.disk.parent

    def missing(self) -> list[Path]:
        return [p for p in (self.disk, self.uki, self.kernel, self.initrd, self.manifest)
                if not p.exists()]

    def to_json(self) -> dict[str, Any]:
        base = self.folder
        data: dict[str, Any] = {"version": self.version}
        for key in _FILE_KEYS:
            data[key] = os.path.relpath(getattr(self, key), base)
        data["cmdline"] = self.cmdline
        data["usrhash"] = self.usrhash
        data["inputs"] = self.inputs
        if self.sizes is not None:
            data["sizes"] = vars(self.sizes)
        return data


def _parse(data: Mapping[str, Any], folder: Path, source: Path) -> ImageArtifacts:
    try:
        files = {key: folder / str(data[key]) for key in _FILE_KEYS}
        sizes_data = data.get("sizes")
        sizes = ImageSizes(**sizes_data) if isinstance(sizes_data, dict) else None
        return ImageArtifacts(
            version=str(data["version"]),
            cmdline=str(data["cmdline"]),
            usrhash=str(data["usrhash"]),
            inputs=str(data.get("inputs", "")),
            sizes=sizes,
            **files,
        )
    except KeyError as e:
        raise HostosError(
            f"{source}: missing key {e.args[0]!r}; rebuild with `hostos build`"
        ) from e
    except TypeError as e:
        raise HostosError(f"{source}: malformed sizes ({e}); rebuild with `hostos build`") from e


def load_image(folder: str | os.PathLike[str]) -> ImageArtifacts:
    """Reads `folder`/berth.json; raises HostosError if absent or malformed."""
    folder = Path(folder).resolve()
    source = folder / MANIFEST_NAME
    try:
        data = json.loads(source.read_text())
    except FileNotFoundError as e:
        raise HostosError(
            f"no image at {folder} ({MANIFEST_NAME} missing): run `hostos build`"
        ) from e
    except json.JSONDecodeError as e:
        raise HostosError(f"{source} is not valid JSON ({e}): run `hostos build --force`") from e
    if not isinstance(data, dict):
        raise HostosError(f"{source} is not a JSON object: run `hostos build --force`")
    return _parse(data, folder, source)


def write_image(artifacts: ImageArtifacts) -> Path:
    """Writes berth.json next to the artifacts: temp file, fsync, rename."""
    target = artifacts.folder / MANIFEST_NAME
    tmp = target.with_name(f".{MANIFEST_NAME}.tmp")
    with tmp.open("w") as f:
        json.dump(artifacts.to_json(), f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(target)
    return target


def usrhash_from_cmdline(cmdline: str) -> str:
    for arg in cmdline.split():
        if arg.startswith("usrhash="):
            return arg.removeprefix("usrhash=")
    raise HostosError(f"the UKI's command line has no usrhash=: {cmdline!r}")


def pe_section(data: bytes, name: str) -> bytes | None:
    """The raw contents of PE section `name` (e.g. a UKI's ".cmdline")."""
    if data[:2] != b"MZ":
        return None
    (pe_offset,) = struct.unpack_from("<I", data, 0x3C)
    if data[pe_offset:pe_offset + 4] != b"PE\0\0":
        return None
    coff = pe_offset + 4
    (n_sections,) = struct.unpack_from("<H", data, coff + 2)
    (opt_size,) = struct.unpack_from("<H", data, coff + 16)
    table = coff + 20 + opt_size
    wanted = name.encode()
    for i in range(n_sections):
        entry = table + 40 * i
        raw_name = data[entry:entry + 8].rstrip(b"\0")
        vsize, _vaddr, raw_size, raw_ptr = struct.unpack_from("<IIII", data, entry + 8)
        if raw_name == wanted:
            return data[raw_ptr:raw_ptr + min(vsize, raw_size)]
    return None


def uki_cmdline(uki: Path) -> str:
    """The kernel command line baked into a UKI (its .cmdline section)."""
    section = pe_section(uki.read_bytes(), ".cmdline")
    if section is None:
        raise HostosError(f"{uki} has no .cmdline section: is it a UKI?")
    return section.rstrip(b"\0").decode().strip()


EROFS_SUPER_OFFSET = 1024
EROFS_MAGIC = 0xE0F5E1E2


def erofs_size(partition: Path) -> int | None:
    """Bytes used by the erofs filesystem at the start of `partition`, or None."""
    with partition.open("rb") as f:
        f.seek(EROFS_SUPER_OFFSET)
        sb = f.read(64)
    if len(sb) < 40 or struct.unpack_from("<I", sb, 0)[0] != EROFS_MAGIC:
        return None
    blkszbits = sb[12]
    (blocks,) = struct.unpack_from("<I", sb, 36)
    return int(blocks) << blkszbits
