"""Layer extraction against hostile and odd tarballs: nothing escapes the layer."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime.store.extract import ExtractError, ExtractLimits, extract_layer
from runtime.store.layers import DiffIdMismatch, LayerStore

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts/xattrs need root")

Entry = Callable[[tarfile.TarFile], None]


def reg(name: str, data: bytes = b"x", mode: int = 0o644) -> Entry:
    def add(t: tarfile.TarFile) -> None:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode = len(data), mode
        t.addfile(ti, io.BytesIO(data))
    return add


def special(name: str, kind: bytes, link: str = "", mode: int = 0o755,
            devmajor: int = 0, devminor: int = 0) -> Entry:
    def add(t: tarfile.TarFile) -> None:
        ti = tarfile.TarInfo(name)
        ti.type, ti.linkname, ti.mode = kind, link, mode
        ti.devmajor, ti.devminor = devmajor, devminor
        t.addfile(ti)
    return add


def layer(*entries: Entry) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for e in entries:
            e(t)
    return buf.getvalue()


@pytest.fixture
def box(tmp_path: Path) -> tuple[Path, Path]:
    """(dest, outside): a layer dir and a sibling that must never be touched."""
    dest, outside = tmp_path / "layer", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("keep")
    return dest, outside


def extract(data: bytes, dest: Path, limits: ExtractLimits | None = None) -> None:
    extract_layer(io.BytesIO(data), dest, limits, preserve_owner=False)


def untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (outside / "secret").read_text() == "keep"


def test_regular_tree_and_diff_id(box: tuple[Path, Path]) -> None:
    dest, _ = box
    data = layer(special("bin", tarfile.DIRTYPE), reg("bin/tool", b"hello", 0o755),
                 special("bin/alias", tarfile.SYMTYPE, "tool"),
                 special("bin/hard", tarfile.LNKTYPE, "bin/tool"))
    stats = extract_layer(io.BytesIO(data), dest, preserve_owner=False)
    assert stats.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert (dest / "bin/tool").read_bytes() == b"hello"
    assert os.readlink(dest / "bin/alias") == "tool"
    assert (dest / "bin/hard").stat().st_ino == (dest / "bin/tool").stat().st_ino
    assert stat.S_IMODE((dest / "bin/tool").stat().st_mode) == 0o755


def test_gzip_layer_has_the_diff_id_of_its_plain_tar(box: tuple[Path, Path]) -> None:
    dest, _ = box
    data = layer(reg("a", b"1"))
    stats = extract_layer(io.BytesIO(gzip.compress(data)), dest, preserve_owner=False)
    assert stats.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert (dest / "a").read_bytes() == b"1"


@pytest.mark.parametrize("name", ["../outside/secret", "a/../../outside/secret", "/etc/evil"])
def test_traversal_and_absolute_names_refused(box: tuple[Path, Path], name: str) -> None:
    dest, outside = box
    with pytest.raises(ExtractError) as e:
        extract(layer(reg(name, b"pwned")), dest)
    assert name in str(e.value)
    untouched(outside)


def test_write_through_symlinked_dir_refused(box: tuple[Path, Path]) -> None:
    dest, outside = box
    data = layer(special("esc", tarfile.SYMTYPE, str(outside)), reg("esc/secret", b"pwned"))
    with pytest.raises(ExtractError, match="symlink"):
        extract(data, dest)
    untouched(outside)


def test_relative_symlink_escape_refused(box: tuple[Path, Path]) -> None:
    dest, outside = box
    data = layer(special("up", tarfile.SYMTYPE, "../outside"), reg("up/new", b"pwned"))
    with pytest.raises(ExtractError, match="up/new"):
        extract(data, dest)
    untouched(outside)


def test_file_replaces_symlink_instead_of_writing_through_it(box: tuple[Path, Path]) -> None:
    dest, outside = box
    data = layer(special("f", tarfile.SYMTYPE, str(outside / "secret")), reg("f", b"new"))
    extract(data, dest)
    assert not (dest / "f").is_symlink()
    assert (dest / "f").read_bytes() == b"new"
    untouched(outside)


@pytest.mark.parametrize("target", ["../outside/secret", "/etc/passwd", "esc/secret"])
def test_hardlink_escapes_refused(box: tuple[Path, Path], target: str) -> None:
    dest, outside = box
    data = layer(special("esc", tarfile.SYMTYPE, str(outside)),
                 special("h", tarfile.LNKTYPE, target))
    with pytest.raises(ExtractError, match="'h'"):
        extract(data, dest)
    untouched(outside)
    assert (outside / "secret").stat().st_nlink == 1


def test_hardlink_to_missing_target_refused(box: tuple[Path, Path]) -> None:
    dest, _ = box
    with pytest.raises(ExtractError, match="not in this layer"):
        extract(layer(special("h", tarfile.LNKTYPE, "nowhere")), dest)


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE])
def test_device_nodes_refused(box: tuple[Path, Path], kind: bytes) -> None:
    dest, _ = box
    with pytest.raises(ExtractError, match="device nodes"):
        extract(layer(special("dev/sda", kind, devmajor=8, devminor=0)), dest)


def test_oversize_entry_refused(box: tuple[Path, Path]) -> None:
    dest, _ = box
    with pytest.raises(ExtractError, match=r"big.*exceeds the entry limit"):
        extract(layer(reg("big", b"x" * 100)), dest, ExtractLimits(max_entry_size=10))


def test_oversize_total_refused(box: tuple[Path, Path]) -> None:
    dest, _ = box
    data = layer(*(reg(f"f{i}", b"x" * 60) for i in range(3)))
    with pytest.raises(ExtractError, match=r"f2.*size limit"):
        extract(data, dest, ExtractLimits(max_total_size=150))


def test_too_many_entries_refused(box: tuple[Path, Path]) -> None:
    dest, _ = box
    with pytest.raises(ExtractError, match="more than 5 entries"):
        extract(layer(*(reg(f"f{i}") for i in range(6))), dest, ExtractLimits(max_entries=5))


def test_truncated_stream_refused(box: tuple[Path, Path]) -> None:
    dest, _ = box
    data = layer(reg("a", b"y" * 5000))
    with pytest.raises(ExtractError):
        extract(data[:1500], dest)


def test_later_entries_replace_earlier_ones(box: tuple[Path, Path]) -> None:
    dest, _ = box
    data = layer(special("x", tarfile.DIRTYPE), reg("x/inner"), reg("x", b"file now"),
                 reg("y", b"file"), special("y", tarfile.DIRTYPE))
    extract(data, dest)
    assert (dest / "x").read_bytes() == b"file now"
    assert (dest / "y").is_dir()


def test_read_only_directory_still_gets_its_children(box: tuple[Path, Path]) -> None:
    dest, _ = box
    extract(layer(special("ro", tarfile.DIRTYPE, mode=0o555), reg("ro/f", b"1")), dest)
    assert (dest / "ro/f").read_bytes() == b"1"
    assert stat.S_IMODE((dest / "ro").stat().st_mode) == 0o555


def test_setuid_bit_is_kept(box: tuple[Path, Path]) -> None:
    dest, _ = box
    extract(layer(reg("su", b"#!", 0o4755)), dest)
    assert (dest / "su").stat().st_mode & stat.S_ISUID


@root_only
def test_whiteouts_become_overlay_whiteouts(box: tuple[Path, Path]) -> None:
    dest, _ = box
    data = layer(special("etc", tarfile.DIRTYPE), reg("etc/.wh.motd", b""),
                 special("var", tarfile.DIRTYPE), reg("var/.wh..wh..opq", b""),
                 reg("var/kept", b"k"), reg(".wh..wh.plnk", b""))
    extract_layer(io.BytesIO(data), dest)
    st = (dest / "etc/motd").lstat()
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert not (dest / "etc/.wh.motd").exists()
    assert os.getxattr(dest / "var", "trusted.overlay.opaque") == b"y"
    assert (dest / "var/kept").read_bytes() == b"k"
    assert not (dest / ".wh..wh.plnk").exists()


def test_whiteout_of_dotdot_refused(box: tuple[Path, Path]) -> None:
    dest, outside = box
    with pytest.raises(ExtractError):
        extract(layer(reg(".wh...", b"")), dest)
    untouched(outside)


def test_failed_unpack_leaves_nothing_behind(tmp_path: Path) -> None:
    layers = LayerStore(tmp_path)
    data = layer(reg("ok", b"1"), reg("../escape", b"2"))
    with pytest.raises(ExtractError, match="escape"):
        layers.unpack(io.BytesIO(data), None)
    assert list(layers.dir.iterdir()) == []
    assert not (tmp_path / "escape").exists()


def test_diff_id_mismatch_refused_and_cleaned(tmp_path: Path) -> None:
    layers = LayerStore(tmp_path)
    with pytest.raises(DiffIdMismatch, match="config says sha256:0000"):
        layers.unpack(io.BytesIO(layer(reg("a"))), "sha256:" + "0" * 64, "blob")
    assert list(layers.dir.iterdir()) == []


def test_unpack_publishes_under_diff_id(tmp_path: Path) -> None:
    layers = LayerStore(tmp_path)
    data = layer(reg("a", b"1"))
    stats = layers.unpack(io.BytesIO(data), None)
    assert layers.has(stats.diff_id)
    assert (layers.path(stats.diff_id) / "a").read_bytes() == b"1"


@root_only
def test_file_capabilities_kept_and_trusted_xattrs_dropped(box: tuple[Path, Path]) -> None:
    dest, _ = box
    cap = b"\x01\x00\x00\x02\x00\x20\x00\x00" + b"\x00" * 12  # cap_net_raw+ep, VFS v2

    def add(t: tarfile.TarFile) -> None:
        ti = tarfile.TarInfo("ping")
        ti.size, ti.mode = 1, 0o755
        ti.pax_headers = {
            "SCHILY.xattr.security.capability": cap.decode("utf-8", "surrogateescape"),
            "SCHILY.xattr.trusted.overlay.opaque": "y",
            "SCHILY.xattr.user.note": "hello"}
        t.addfile(ti, io.BytesIO(b"x"))
    extract_layer(io.BytesIO(layer(add)), dest)
    assert os.getxattr(dest / "ping", "security.capability") == cap
    assert os.getxattr(dest / "ping", "user.note") == b"hello"
    with pytest.raises(OSError):
        os.getxattr(dest / "ping", "trusted.overlay.opaque")


def test_corrupt_gzip_is_a_clear_error(box: tuple[Path, Path]) -> None:
    dest, _ = box
    data = bytearray(gzip.compress(layer(reg("a", os.urandom(50_000)))))
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(ExtractError, match=r"corrupt layer stream|not a valid tar"):
        extract_layer(io.BytesIO(bytes(data)), dest, preserve_owner=False)


def test_absurd_times_do_not_break_extraction(box: tuple[Path, Path]) -> None:
    dest, _ = box

    def add(t: tarfile.TarFile) -> None:
        ti = tarfile.TarInfo("old")
        ti.size, ti.mtime = 1, 10**20
        t.addfile(ti, io.BytesIO(b"x"))
    extract(layer(add), dest)
    assert (dest / "old").read_bytes() == b"x"
