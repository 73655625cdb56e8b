"""berth.json round trip, the UKI's command line, erofs sizes, the pin check."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from hostos.artifacts import (
    ImageArtifacts,
    ImageSizes,
    erofs_size,
    load_image,
    pe_section,
    uki_cmdline,
    usrhash_from_cmdline,
    write_image,
)
from hostos.errors import HostosError
from hostos.pins import (
    debian_package,
    manifest_versions,
    parse_constraints,
    pin_mismatches,
)


def make_pe(sections: dict[str, bytes]) -> bytes:
    """A minimal PE32+ file with the given sections (what a UKI looks like to a reader)."""
    opt_size = 240
    pe_offset = 0x80
    table = pe_offset + 4 + 20 + opt_size
    data_start = (table + 40 * len(sections) + 0x1FF) & ~0x1FF
    header = bytearray(data_start)
    header[0:2] = b"MZ"
    struct.pack_into("<I", header, 0x3C, pe_offset)
    header[pe_offset:pe_offset + 4] = b"PE\0\0"
    struct.pack_into("<HH", header, pe_offset + 4, 0x8664, len(sections))
    struct.pack_into("<H", header, pe_offset + 4 + 16, opt_size)
    body = bytearray()
    for i, (name, content) in enumerate(sections.items()):
        entry = table + 40 * i
        raw = content + b"\0" * (-len(content) % 0x200)
        header[entry:entry + 8] = name.encode().ljust(8, b"\0")
        struct.pack_into("<IIII", header, entry + 8, len(content), 0x1000 * (i + 1),
                         len(raw), data_start + len(body))
        body += raw
    return bytes(header + body)


def test_uki_cmdline_reads_the_cmdline_section(tmp_path: Path) -> None:
    uki = tmp_path / "berth.efi"
    uki.write_bytes(make_pe({".osrel": b"ID=debian\n",
                             ".cmdline": b"usrhash=abc console=ttyS0 rw\0",
                             ".linux": b"\x90" * 1000}))
    assert uki_cmdline(uki) == "usrhash=abc console=ttyS0 rw"
    assert usrhash_from_cmdline(uki_cmdline(uki)) == "abc"


def test_a_file_that_is_not_a_uki_is_refused(tmp_path: Path) -> None:
    not_uki = tmp_path / "x.efi"
    not_uki.write_bytes(make_pe({".text": b"code"}))
    with pytest.raises(HostosError, match=r"no \.cmdline"):
        uki_cmdline(not_uki)
    assert pe_section(b"ELF....", ".cmdline") is None


def test_cmdline_without_usrhash_is_an_error() -> None:
    with pytest.raises(HostosError, match="usrhash"):
        usrhash_from_cmdline("console=ttyS0 root=/dev/vda")


def test_erofs_size_reads_the_superblock(tmp_path: Path) -> None:
    part = tmp_path / "usr.raw"
    sb = bytearray(128)
    struct.pack_into("<I", sb, 0, 0xE0F5E1E2)
    sb[12] = 12  # 4 KiB blocks
    struct.pack_into("<I", sb, 36, 1000)
    part.write_bytes(b"\0" * 1024 + bytes(sb) + b"\0" * 4096)
    assert erofs_size(part) == 1000 * 4096
    empty = tmp_path / "empty.raw"
    empty.write_bytes(b"\0" * 8192)
    assert erofs_size(empty) is None


def image_in(folder: Path) -> ImageArtifacts:
    folder.mkdir(parents=True, exist_ok=True)
    files = {k: folder / f"berth_0.2.0.{s}" for k, s in
             (("disk", "raw"), ("uki", "efi"), ("kernel", "vmlinuz"), ("initrd", "initrd"),
              ("manifest", "manifest"))}
    return ImageArtifacts(version="0.2.0", cmdline="usrhash=ff rw", usrhash="ff", inputs="h",
                          sizes=ImageSizes(1, 2, 3, None, 5, 6, 7), **files)


def test_berth_json_round_trip_with_relative_paths(tmp_path: Path) -> None:
    image = image_in(tmp_path / "image-b")
    write_image(image)
    data = json.loads((tmp_path / "image-b" / "berth.json").read_text())
    assert {"version", "disk", "uki", "kernel", "initrd", "cmdline", "usrhash",
            "manifest"} <= set(data)
    assert data["disk"] == "berth_0.2.0.raw"
    # The folder can move: paths resolve against wherever berth.json is now.
    (tmp_path / "image-b").rename(tmp_path / "moved")
    loaded = load_image(tmp_path / "moved")
    assert loaded.disk == tmp_path / "moved" / "berth_0.2.0.raw"
    assert loaded.version == "0.2.0" and loaded.usrhash == "ff"
    assert loaded.sizes == ImageSizes(1, 2, 3, None, 5, 6, 7)
    assert loaded.missing() == [loaded.disk, loaded.uki, loaded.kernel, loaded.initrd,
                                loaded.manifest]


def test_load_image_errors_say_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(HostosError, match="run `hostos build`"):
        load_image(tmp_path)
    (tmp_path / "berth.json").write_text("{not json")
    with pytest.raises(HostosError, match="not valid JSON"):
        load_image(tmp_path)
    (tmp_path / "berth.json").write_text('{"version": "1"}')
    with pytest.raises(HostosError, match="missing key"):
        load_image(tmp_path)


def test_loaded_image_is_frozen(tmp_path: Path) -> None:
    write_image(image_in(tmp_path))
    image = load_image(tmp_path)
    with pytest.raises(AttributeError):
        image.version = "9"  # type: ignore[misc]


def test_constraints_parse_and_map_to_debian_packages() -> None:
    pins = parse_constraints("# comment\naiohttp==3.11.16\nsystemd_python==235  # x\n"
                             "Markdown-It-Py==3.0.0\nrich>=13\n")
    assert pins == {"aiohttp": "3.11.16", "systemd-python": "235", "markdown-it-py": "3.0.0"}
    assert [debian_package(n) for n in pins] == ["python3-aiohttp", "python3-systemd",
                                                 "python3-markdown-it"]


def test_pins_compare_upstream_versions_of_the_shipped_packages() -> None:
    shipped = manifest_versions({"packages": [
        {"type": "deb", "name": "python3-aiohttp", "version": "3.11.16-1+deb13u1"},
        {"type": "deb", "name": "python3-pygments", "version": "2.18.0+dfsg-2+deb13u1"},
        {"type": "deb", "name": "python3-systemd", "version": "235-1+b6"},
        {"type": "deb", "name": "python3-attr", "version": "1:25.3.0-1"},
    ]})
    pins = {"aiohttp": "3.11.16", "pygments": "2.18.0", "systemd-python": "235",
            "attrs": "25.3.0"}
    assert pin_mismatches(pins, shipped) == []
    bad = pin_mismatches({"aiohttp": "3.12.0", "tuf": "5.1.0"}, shipped)
    assert [str(m) for m in bad] == [
        "aiohttp==3.12.0 but the image ships python3-aiohttp 3.11.16-1+deb13u1 (upstream 3.11.16)",
        "tuf==5.1.0: python3-tuf is not in the image",
    ]
