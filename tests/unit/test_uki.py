"""hostos.uki: a UKI's command line read back and rewritten in place (a broken release).

The PE files here are laid out like ukify's: headers, then sections at
file-aligned offsets, `.cmdline` followed by `.linux` in memory.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from hostos.artifacts import load_image
from hostos.artifacts import uki_cmdline as read_cmdline
from hostos.errors import HostosError
from hostos.uki import broken_release_image, patch_cmdline, sections

FILE_ALIGN = 0x200


def make_pe(path: Path, cmdline: bytes, raw_size: int = FILE_ALIGN,
            next_va_gap: int = 0x1000) -> bytes:
    """A minimal PE32+ file: `.cmdline` (raw_size bytes in the file), then `.linux`."""
    pe = 0x80
    optional_size = 0xF0
    table = pe + 24 + optional_size
    first = (table + 2 * 40 + FILE_ALIGN - 1) // FILE_ALIGN * FILE_ALIGN
    linux = b"\x7fkernel" * 100
    data = bytearray(first + raw_size + FILE_ALIGN * 2)
    data[:2] = b"MZ"
    struct.pack_into("<I", data, 0x3C, pe)
    data[pe:pe + 4] = b"PE\0\0"
    struct.pack_into("<HH", data, pe + 4, 0x8664, 2)
    struct.pack_into("<H", data, pe + 20, optional_size)
    rows = ((b".cmdline", len(cmdline), 0x3000, raw_size, first),
            (b".linux", len(linux), 0x3000 + next_va_gap, FILE_ALIGN * 2, first + raw_size))
    for i, (name, vsize, vaddr, rawsize, rawptr) in enumerate(rows):
        off = table + 40 * i
        data[off:off + 8] = name.ljust(8, b"\0")
        struct.pack_into("<IIII", data, off + 8, vsize, vaddr, rawsize, rawptr)
    data[first:first + len(cmdline)] = cmdline
    data[first + raw_size:first + raw_size + len(linux)] = linux
    path.write_bytes(bytes(data))
    return bytes(data)


def test_cmdline_is_appended_and_nothing_else_changes(tmp_path: Path) -> None:
    src, dst = tmp_path / "a.efi", tmp_path / "b.efi"
    original = make_pe(src, b"usrhash=abc console=ttyS0\0")
    new = patch_cmdline(src, dst, "systemd.mask=berthd.service")
    assert new == "usrhash=abc console=ttyS0 systemd.mask=berthd.service"
    assert read_cmdline(dst) == new
    assert read_cmdline(src) == "usrhash=abc console=ttyS0"
    patched = dst.read_bytes()
    assert len(patched) == len(original)
    before, after = sections(original), sections(patched)
    assert [s.virtual_size for s in after] == [len(new), before[1].virtual_size]
    # The kernel section's bytes are where they were.
    linux = before[1]
    assert (patched[linux.raw_pointer:linux.raw_pointer + linux.raw_size]
            == original[linux.raw_pointer:linux.raw_pointer + linux.raw_size])


def test_text_that_does_not_fit_is_refused_and_nothing_written(tmp_path: Path) -> None:
    src, dst = tmp_path / "a.efi", tmp_path / "b.efi"
    make_pe(src, b"usrhash=abc\0", raw_size=FILE_ALIGN, next_va_gap=0x20)
    with pytest.raises(HostosError, match="do not fit"):
        patch_cmdline(src, dst, "x" * 40)
    assert not dst.exists()
    with pytest.raises(HostosError, match="do not fit"):
        patch_cmdline(src, dst, "y" * FILE_ALIGN)
    assert not dst.exists()


def test_not_a_uki_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.efi"
    junk.write_bytes(b"\0" * 4096)
    with pytest.raises(HostosError, match="not a PE file"):
        patch_cmdline(junk, tmp_path / "out.efi", "quiet")
    assert not (tmp_path / "out.efi").exists()


def test_broken_release_image_shares_all_but_the_uki(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    make_pe(good / "berth_0.2.0.efi", b"usrhash=abc console=ttyS0\0")
    for name in ("disk.raw", "vmlinuz", "initrd", "manifest"):
        (good / name).write_bytes(b"x")
    (good / "berth.json").write_text(json.dumps({
        "version": "0.2.0", "disk": "disk.raw", "uki": "berth_0.2.0.efi",
        "kernel": "vmlinuz", "initrd": "initrd", "manifest": "manifest",
        "cmdline": "usrhash=abc console=ttyS0", "usrhash": "abc",
    }))
    image = load_image(good)
    bad = load_image(broken_release_image(image, tmp_path / "bad", "systemd.mask=berthd.socket"))
    assert bad.version == "0.2.0"
    assert bad.cmdline == "usrhash=abc console=ttyS0 systemd.mask=berthd.socket"
    assert bad.uki == tmp_path / "bad" / "berth_0.2.0.efi"
    assert read_cmdline(bad.uki) == bad.cmdline
    assert (bad.disk, bad.kernel, bad.initrd, bad.manifest) == (
        image.disk, image.kernel, image.initrd, image.manifest)
    assert read_cmdline(image.uki) == "usrhash=abc console=ttyS0"
