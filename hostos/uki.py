"""Unified kernel images: rewrite the `.cmdline` PE section; deliberately broken releases.

A UKI is a PE file whose `.cmdline` section holds the kernel command line
(with `usrhash=`; `hostos.artifacts.uki_cmdline` reads it). Changing it
after the build is how a release is made deliberately bad (a realistic
failure: it boots, but does not come up healthy), for the rollback VM test
and `hostos fleet simulate --bad`.
The new text must fit in the section's file padding, so the PE layout is
never moved; only unsigned UKIs (a signature would no longer match).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from hostos.artifacts import MANIFEST_NAME, ImageArtifacts
from hostos.errors import HostosError

CMDLINE_SECTION = ".cmdline"
_SECTION_HEADER = 40


@dataclass(frozen=True)
class Section:
    """One entry of a PE section table; `header` is its offset in the file."""

    name: str
    header: int
    virtual_size: int
    virtual_address: int
    raw_size: int
    raw_pointer: int


def sections(data: bytes | bytearray, source: Path | str = "<bytes>") -> tuple[Section, ...]:
    """The section table of a PE file."""
    if len(data) < 0x40 or data[:2] != b"MZ":
        raise HostosError(f"{source} is not a PE file (no MZ header)")
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    if data[pe:pe + 4] != b"PE\0\0":
        raise HostosError(f"{source} is not a PE file (no PE signature at {pe:#x})")
    count = struct.unpack_from("<H", data, pe + 6)[0]
    optional_size = struct.unpack_from("<H", data, pe + 20)[0]
    table = pe + 24 + optional_size
    if table + _SECTION_HEADER * count > len(data):
        raise HostosError(f"{source}: section table runs past the end of the file")
    out = []
    for i in range(count):
        off = table + _SECTION_HEADER * i
        name = bytes(data[off:off + 8]).rstrip(b"\0").decode("ascii", errors="replace")
        vsize, vaddr, rawsize, rawptr = struct.unpack_from("<IIII", data, off + 8)
        out.append(Section(name, off, vsize, vaddr, rawsize, rawptr))
    return tuple(out)


def _cmdline_section(data: bytes | bytearray, source: Path | str) -> Section:
    for s in sections(data, source):
        if s.name == CMDLINE_SECTION:
            return s
    raise HostosError(f"{source} has no {CMDLINE_SECTION} section (not a UKI?)")


def patch_cmdline(src: Path, dst: Path, extra: str) -> str:
    """Copy `src` to `dst` with `extra` appended to its command line; returns the new line.

    Fails, writing nothing, when the text does not fit in the section's
    padding (file alignment) or would overlap the next section in memory.
    """
    data = bytearray(src.read_bytes())
    table = sections(data, src)
    s = _cmdline_section(data, src)
    old = bytes(data[s.raw_pointer:s.raw_pointer + s.virtual_size]).rstrip(b"\0").decode()
    new = f"{old.strip()} {extra.strip()}".encode()
    next_va = min((t.virtual_address for t in table if t.virtual_address > s.virtual_address),
                  default=s.virtual_address + s.raw_size)
    if len(new) > s.raw_size or s.virtual_address + len(new) > next_va:
        raise HostosError(
            f"{src}: {len(new)} bytes of command line do not fit in its {CMDLINE_SECTION} "
            f"section ({min(s.raw_size, next_va - s.virtual_address)} bytes of room)"
        )
    data[s.raw_pointer:s.raw_pointer + s.raw_size] = new.ljust(s.raw_size, b"\0")
    struct.pack_into("<I", data, s.header + 8, len(new))
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.write_bytes(bytes(data))
    tmp.replace(dst)
    return new.decode()


def broken_release_image(image: ImageArtifacts, folder: Path, extra: str) -> Path:
    """An image folder like `image` whose UKI boots with `extra` on its command line.

    Only the UKI is new (in `folder`); berth.json points at `image`'s disk,
    kernel, initrd and manifest by absolute path, so `hostos release` takes
    /usr from the good build. Returns `folder`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    uki = folder / image.uki.name
    cmdline = patch_cmdline(image.uki, uki, extra)
    data = json.loads((image.folder / MANIFEST_NAME).read_text())
    for key in ("disk", "kernel", "initrd", "manifest"):
        data[key] = str(getattr(image, key))
    data["uki"] = uki.name
    data["cmdline"] = cmdline
    (folder / MANIFEST_NAME).write_text(json.dumps(data, indent=2) + "\n")
    return folder
