"""The apt and mkosi command lines: a private apt configuration, mkosi's paths."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from hostos import mkosi
from hostos.mkosi import (
    AptConfig,
    MkosiInstall,
    MkosiPaths,
    apt_download_cmd,
    apt_update_cmd,
    installed_mkosi,
    mkosi_build_cmd,
    parse_apt_show_version,
    upstream_version,
)


def option_values(argv: list[str]) -> dict[str, str]:
    values = {}
    for flag, value in itertools.pairwise(argv):
        if flag == "-o":
            key, _, val = value.partition("=")
            values[key] = val
    return values


def test_apt_never_reads_or_writes_the_machines_own_state(tmp_path: Path) -> None:
    apt = AptConfig(tmp_path / "apt")
    for argv in (apt_update_cmd(apt), apt_download_cmd(apt, "mkosi=25.3-7")):
        opts = option_values(argv)
        assert opts["Dir::Etc::sourcelist"] == str(tmp_path / "apt" / "sources.list")
        assert opts["Dir::Etc::sourceparts"] == "-"
        assert opts["Dir::State::Lists"] == str(tmp_path / "apt" / "lists")
        assert opts["Dir::Cache"] == str(tmp_path / "apt")
        assert not any("/etc/apt" in a or "/var/lib/apt" in a for a in argv)
    assert apt_update_cmd(apt)[-1] == "update"
    assert apt_download_cmd(apt, "mkosi=25.3-7")[-2:] == ["download", "mkosi=25.3-7"]


def test_private_sources_name_trixie_with_a_keyring(tmp_path: Path) -> None:
    text = AptConfig(tmp_path).sources_text()
    assert text == ("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                    "http://deb.debian.org/debian trixie main\n")


@pytest.mark.parametrize(("debian", "upstream"), [
    ("25.3-7", "25.3"),
    ("3.11.16-1+deb13u1", "3.11.16"),
    ("2.18.0+dfsg-2+deb13u1", "2.18.0"),
    ("1:25.3.0-1", "25.3.0"),
    ("235-1+b6", "235"),
    ("2025.1.31+ds-1", "2025.1.31"),
    ("1.0", "1.0"),
])
def test_upstream_version(debian: str, upstream: str) -> None:
    assert upstream_version(debian) == upstream


def test_apt_show_version_is_parsed() -> None:
    out = "Package: mkosi\nVersion: 25.3-7\nArchitecture: all\n"
    assert parse_apt_show_version(out) == "25.3-7"
    assert parse_apt_show_version("N: Unable to locate package x\n") is None


def test_mkosi_build_keeps_every_path_outside_the_checkout(tmp_path: Path) -> None:
    tool = MkosiInstall(root=tmp_path / "mkosi-25.3-7", deb_version="25.3-7")
    paths = MkosiPaths(tmp_path / "cache")
    argv = mkosi_build_cmd(tool, defs=Path("/src/image-defs"), version="0.2.0", paths=paths,
                           python="/usr/bin/python3")
    assert argv[:3] == ["/usr/bin/python3", "-m", "mkosi"]
    assert argv[-1] == "build"
    pairs = dict(zip(argv[3:-1:2], argv[4:-1:2], strict=True))
    assert pairs == {
        "--directory": "/src/image-defs",
        "--image-version": "0.2.0",
        "--output-directory": str(tmp_path / "cache/mkosi/output"),
        "--workspace-directory": str(tmp_path / "cache/mkosi/workspace"),
        "--cache-directory": str(tmp_path / "cache/mkosi/cache"),
        "--package-cache-directory": str(tmp_path / "cache/mkosi/packages"),
    }
    # --force would make mkosi throw away its 1.5 GB tools tree.
    assert "--force" not in argv and "-f" not in argv
    site = tmp_path / "mkosi-25.3-7/usr/lib/python3/dist-packages"
    assert tool.env() == {"PYTHONPATH": str(site)}


def test_only_a_completely_unpacked_mkosi_is_reused(tmp_path: Path) -> None:
    assert installed_mkosi(tmp_path) is None
    half = tmp_path / "mkosi-25.3-7"
    (half / "usr").mkdir(parents=True)
    assert installed_mkosi(tmp_path) is None  # interrupted unpack
    (half / mkosi.COMPLETE_MARKER).write_text("25.3-7\n")
    (tmp_path / "mkosi-24.3-1").mkdir()
    (tmp_path / "mkosi-24.3-1" / mkosi.COMPLETE_MARKER).write_text("24.3-1\n")
    found = installed_mkosi(tmp_path)
    assert found == MkosiInstall(root=half, deb_version="25.3-7")
