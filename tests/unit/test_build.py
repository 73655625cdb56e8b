"""hostos build: arguments, change detection, the lock, staging, berth.json."""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import pytest

from hostos import build
from hostos.artifacts import ImageArtifacts, ImageSizes, write_image
from hostos.build import BuildRequest, input_hash, request_from_args
from hostos.cli import build_parser
from hostos.errors import HostosError
from tests.unit.test_build_artifacts import make_pe


def make_repo(root: Path, version: str = "1.2.3") -> Path:
    (root / "image-defs" / "mkosi.repart").mkdir(parents=True)
    (root / "image-defs" / "mkosi.conf").write_text("[Distribution]\nDistribution=debian\n")
    (root / "image-defs" / "mkosi.repart" / "10-usr.conf").write_text("[Partition]\nType=usr\n")
    for pkg in ("hostos", "runtime", "qemu"):
        (root / pkg).mkdir()
        (root / pkg / "mod.py").write_text(f"# {pkg}\n")
    (root / "pyproject.toml").write_text(f'[project]\nname = "berth"\nversion = "{version}"\n')
    (root / "constraints.txt").write_text("aiohttp==3.11.16\n")
    return root


def args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["build", *argv])


def test_cli_registers_build_with_its_options(tmp_path: Path) -> None:
    ns = args("--version", "0.2.0", "--output", str(tmp_path / "b"), "--force")
    assert ns.func is build.cmd_build
    assert (ns.version, ns.output, ns.force) == ("0.2.0", str(tmp_path / "b"), True)


def test_defaults_come_from_the_checkout(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", version="4.5.6")
    req = request_from_args(args(), repo=repo)
    assert req.version == "4.5.6"
    assert req.output == repo / "build" / "image"
    assert req.force is False
    assert req.defs == repo / "image-defs"


def test_relative_output_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path / "repo")
    monkeypatch.chdir(tmp_path)
    req = request_from_args(args("--output", "build/image-b", "--version", "0.2.0"), repo=repo)
    assert req.output == tmp_path / "build" / "image-b"
    assert req.version == "0.2.0"


@pytest.mark.parametrize("bad", ["", "v1", "1_2", "1+3", "1/2", "1 2", "1" * 24])
def test_versions_that_break_labels_or_boot_counting_are_refused(tmp_path: Path, bad: str) -> None:
    repo = make_repo(tmp_path / "repo")
    with pytest.raises(HostosError, match="bad image version"):
        request_from_args(args("--version", bad), repo=repo)


def test_outside_a_checkout_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HostosError, match=r"image-defs/mkosi\.conf"):
        request_from_args(args(), repo=tmp_path)


def test_hash_is_stable_and_ignores_bytecode_and_caches(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    first = input_hash(repo, "1.0")
    (repo / "hostos" / "__pycache__").mkdir()
    (repo / "hostos" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0" * 16)
    (repo / "runtime" / "stale.pyc").write_bytes(b"x")
    (repo / "image-defs" / "mkosi.cache").mkdir()
    (repo / "image-defs" / "mkosi.cache" / "junk").write_text("x")
    # Files outside the inputs (docs, tests) do not make a new image either.
    (repo / "README.md").write_text("hello")
    (repo / "tests").mkdir()
    (repo / "tests" / "test_x.py").write_text("x")
    assert input_hash(repo, "1.0") == first


@pytest.mark.parametrize(
    "change",
    [
        lambda r: (r / "image-defs" / "mkosi.conf").write_text("[Distribution]\nRelease=sid\n"),
        lambda r: (r / "image-defs" / "mkosi.extra").mkdir() or
        (r / "image-defs" / "mkosi.extra" / "new.conf").write_text("x"),
        lambda r: (r / "runtime" / "mod.py").write_text("# changed\n"),
        lambda r: (r / "qemu" / "mod.py").write_text("# changed\n"),
        lambda r: (r / "constraints.txt").write_text("aiohttp==3.11.17\n"),
        lambda r: (r / "pyproject.toml").write_text('[project]\nversion = "9"\n'),
        lambda r: (r / "hostos" / "mod.py").chmod(0o755),
        lambda r: (r / "hostos" / "mod.py").rename(r / "hostos" / "other.py"),
    ],
    ids=["mkosi.conf", "new-extra-file", "runtime", "qemu", "constraints", "pyproject",
         "exec-bit", "rename"],
)
def test_hash_changes_with_every_input(tmp_path: Path, change: object) -> None:
    repo = make_repo(tmp_path / "repo")
    before = input_hash(repo, "1.0")
    change(repo)  # type: ignore[operator]
    assert input_hash(repo, "1.0") != before


def test_hash_changes_with_the_version(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    assert input_hash(repo, "1.0") != input_hash(repo, "1.1")


def fake_image(folder: Path, version: str, inputs: str) -> ImageArtifacts:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, suffix in (("disk", "raw"), ("uki", "efi"), ("kernel", "vmlinuz"),
                        ("initrd", "initrd"), ("manifest", "manifest")):
        path = folder / f"berth_{version}.{suffix}"
        path.write_bytes(b"x")
        files[key] = path
    image = ImageArtifacts(version=version, cmdline="usrhash=ab console=ttyS0", usrhash="ab",
                           inputs=inputs,
                           sizes=ImageSizes(1, 2, 3, 4, 5, 6, 7), **files)
    write_image(image)
    return image


def test_up_to_date_only_for_the_same_inputs_version_and_files(tmp_path: Path) -> None:
    out = tmp_path / "image"
    req = BuildRequest(version="1.0", output=out, repo=tmp_path, cache=tmp_path / "cache")
    assert build.up_to_date(req, "abc") is None
    fake_image(out, "1.0", "abc")
    assert build.up_to_date(req, "abc") is not None
    assert build.up_to_date(req, "abd") is None
    other = BuildRequest(version="1.1", output=out, repo=tmp_path, cache=tmp_path / "cache")
    assert build.up_to_date(other, "abc") is None
    (out / "berth_1.0.efi").unlink()
    assert build.up_to_date(req, "abc") is None


def test_build_lock_makes_a_second_build_wait(tmp_path: Path) -> None:
    lock = tmp_path / "cache" / "build.lock"
    order: list[str] = []
    first_holds = threading.Event()

    def first() -> None:
        with build.build_lock(lock):
            order.append("first in")
            first_holds.set()
            time.sleep(0.3)
            order.append("first out")

    t = threading.Thread(target=first)
    t.start()
    assert first_holds.wait(5)
    with build.build_lock(lock):
        order.append("second in")
    t.join()
    assert order == ["first in", "first out", "second in"]


def test_clear_staging_keeps_the_tools_tree(tmp_path: Path) -> None:
    staging = tmp_path / "output"
    (staging / "tools" / "usr").mkdir(parents=True)
    (staging / "tools.manifest").write_text("{}")
    (staging / "berth_0.1.0.raw").write_text("old")
    (staging / "initrd").symlink_to("initrd.cpio.zst")
    (staging / "leftover-dir").mkdir()
    build.clear_staging(staging)
    assert sorted(p.name for p in staging.iterdir()) == ["tools", "tools.manifest"]
    assert (staging / "tools" / "usr").is_dir()


def staged(staging: Path, version: str) -> None:
    staging.mkdir(parents=True, exist_ok=True)
    for suffix in ("raw", "vmlinuz", "initrd", "manifest", "usr.raw", "usr-verity.raw"):
        (staging / f"berth_{version}.{suffix}").write_bytes(b"data-" + suffix.encode())
    (staging / f"berth_{version}.efi").write_bytes(
        make_pe({".cmdline": b"usrhash=" + b"ef" * 32 + b" console=ttyS0\0"}))
    (staging / "usr-size").write_text("123456\n")


def test_find_outputs_names_what_is_missing(tmp_path: Path) -> None:
    staged(tmp_path, "1.0")
    (tmp_path / "berth_1.0.vmlinuz").unlink()
    with pytest.raises(HostosError, match=r"berth_1\.0\.vmlinuz"):
        build.find_outputs(tmp_path, "1.0")


def test_install_outputs_replaces_the_old_image_and_writes_berth_json(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staged(staging, "2.0")
    out = tmp_path / "image"
    fake_image(out, "1.0", "old")
    (out / "stray-file").write_text("from the old image")
    req = BuildRequest(version="2.0", output=out, repo=tmp_path, cache=tmp_path / "cache")
    image = build.install_outputs(build.find_outputs(staging, "2.0"), req, "newhash")
    assert not (out / "stray-file").exists()
    assert not (out / "berth_1.0.raw").exists()
    assert image.usrhash == "ef" * 32
    assert image.cmdline == "usrhash=" + "ef" * 32 + " console=ttyS0"
    data = json.loads((out / "berth.json").read_text())
    assert data["disk"] == "berth_2.0.raw" and data["uki"] == "berth_2.0.efi"
    assert data["inputs"] == "newhash" and data["version"] == "2.0"
    assert data["sizes"]["usr_tree"] == 123456
    assert (out / "berth_2.0.usr.raw").exists() and (out / "berth_2.0.usr-verity.raw").exists()
    assert build.up_to_date(req, "newhash") == image
    assert sorted(os.listdir(tmp_path)) == ["image", "staging"]


def test_build_refuses_without_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    req = BuildRequest(version="1.0", output=tmp_path / "o", repo=tmp_path, cache=tmp_path / "c")
    with pytest.raises(HostosError, match="needs root"):
        build.build(req)
    assert not (tmp_path / "c").exists()


CHILD_SCRIPT = """
import sys
from hostos.build import terminate_child_on_signal
from runtime.run import run
with terminate_child_on_signal():
    run(["sh", "-c", "echo $$ > " + sys.argv[1] + "; exec sleep 60"], capture=False)
"""


def test_sigterm_during_a_build_takes_mkosi_down_too(tmp_path: Path) -> None:
    import subprocess
    import sys

    pidfile = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", CHILD_SCRIPT, str(pidfile)],
                              cwd=Path(build.__file__).parent.parent, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert time.monotonic() < deadline, "child never started"
            time.sleep(0.05)
        child = int(pidfile.read_text())
        parent.send_signal(15)
        _, err = parent.communicate(timeout=20)
        assert parent.returncode != 0
        assert b"interrupted by SIGTERM" in err
        # The child is gone (killed and reaped by the parent), not orphaned.
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
