"""Images on real overlayfs, and archives exchanged with podman and skopeo."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.store.archive import import_rootfs, load, save
from runtime.store.commit import commit_layer, create_image
from runtime.store.images import ImageStore
from tests.faultproxy import busybox_rootfs
from tests.privileged.conftest import NetNS


def sh(*argv: str, env: dict[str, str] | None = None) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       env={**os.environ, **(env or {})}, timeout=300)
    assert r.returncode == 0, f"{argv}: {r.stderr}"
    return r.stdout


@pytest.fixture
def overlay(tmp_path: Path) -> Iterator[list[Path]]:
    mounts: list[Path] = []
    yield mounts
    for m in reversed(mounts):
        subprocess.run(["umount", str(m)], check=False)


def mount_overlay(layers: tuple[Path, ...], target: Path, mounts: list[Path]) -> None:
    target.mkdir()
    lower = ":".join(str(p) for p in reversed(layers))  # overlayfs: topmost first
    sh("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower}", str(target))
    mounts.append(target)


def test_layers_stack_with_whiteouts_and_opaque_dirs_on_overlayfs(
        tmp_path: Path, overlay: list[Path]) -> None:
    store = ImageStore(tmp_path / "berth")
    base_tree = tmp_path / "base"
    for rel, text in {"etc/gone": "x", "etc/kept": "k", "var/lib/app/old": "o",
                      "bin/tool": "t"}.items():
        (base_tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (base_tree / rel).write_text(text)
    os.chmod(base_tree / "bin/tool", 0o4755)
    base = create_image(store, base=None, layers=[commit_layer(store, base_tree)],
                        tags=["base:1"])
    # An overlay upper dir, as a RUN step leaves it: a whiteout and an opaque dir.
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    os.mknod(upper / "etc/gone", stat.S_IFCHR, os.makedev(0, 0))
    (upper / "var/lib/app").mkdir(parents=True)
    os.setxattr(upper / "var/lib/app", "trusted.overlay.opaque", b"y")
    (upper / "var/lib/app/new").write_text("n")
    create_image(store, base=base.id, layers=[commit_layer(store, upper)], tags=["top:1"])
    # Through an archive and back: the whiteouts travel as .wh. entries.
    with (tmp_path / "img.tar").open("wb") as f:
        save(store, ["top:1"], f)
    with tarfile.open(tmp_path / "img.tar") as t:
        names = [n for n in t.getnames() if n.startswith("blobs/")]
        layer_names: list[str] = []
        for n in names:
            data = t.extractfile(n).read()  # type: ignore[union-attr]
            if data[257:262] == b"ustar":
                with tarfile.open(fileobj=io.BytesIO(data)) as layer:
                    layer_names += layer.getnames()
    assert "etc/.wh.gone" in layer_names and "var/lib/app/.wh..wh..opq" in layer_names
    fresh = ImageStore(tmp_path / "fresh")
    load(fresh, tmp_path / "img.tar")
    img = fresh.resolve("top:1")
    merged = tmp_path / "merged"
    mount_overlay(img.layer_dirs, merged, overlay)
    assert not (merged / "etc/gone").exists()
    assert (merged / "etc/kept").read_text() == "k"
    assert sorted(os.listdir(merged / "var/lib/app")) == ["new"]
    assert (merged / "bin/tool").stat().st_mode & stat.S_ISUID
    # Two containers' worth of mounts share the same layer directories.
    mount_overlay(fresh.resolve("top:1").layer_dirs, tmp_path / "merged2", overlay)
    assert (tmp_path / "merged2/etc/kept").read_text() == "k"


def podman_env(tmp: Path) -> dict[str, str]:
    (tmp / "podman").mkdir(exist_ok=True)
    conf = tmp / "podman/containers.conf"
    conf.write_text('[containers]\nnetns="none"\n'
                    'default_ulimits=["nofile=20000:20000","nproc=32768:32768"]\n'
                    '[engine]\nruntime="runc"\ncgroup_manager="cgroupfs"\n'
                    'events_logger="file"\n')
    storage = tmp / "podman/storage.conf"
    storage.write_text(f'[storage]\ndriver="overlay"\ngraphroot="{tmp}/podman/graph"\n'
                       f'runroot="{tmp}/podman/run"\n')
    return {"CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage)}


@pytest.fixture
def busybox_tar(tmp_path: Path) -> Path:
    rootfs = busybox_rootfs(tmp_path / "rootfs")
    out = tmp_path / "rootfs.tar"
    with tarfile.open(out, "w") as t:
        t.add(rootfs, arcname=".")
    return out


def test_podman_loads_and_runs_what_berth_saves(tmp_path: Path, busybox_tar: Path) -> None:
    store = ImageStore(tmp_path / "berth")
    with busybox_tar.open("rb") as f:
        import_rootfs(store, f, tag="berth/bb:1", changes=['CMD ["echo", "from berth"]'])
    with (tmp_path / "save.tar").open("wb") as f:
        save(store, ["berth/bb:1"], f)
    env = podman_env(tmp_path)
    try:
        sh("podman", "load", "-i", str(tmp_path / "save.tar"), env=env)
        assert sh("podman", "run", "--rm", "berth/bb:1", env=env).strip() == "from berth"
    finally:
        subprocess.run(["podman", "rmi", "-a", "-f"], env={**os.environ, **env},
                       capture_output=True, check=False)
    info = json.loads(sh("skopeo", "inspect", f"oci-archive:{tmp_path}/save.tar"))
    assert info["Layers"] == list(store.get("berth/bb:1").layer_blobs)


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_berth_loads_what_podman_saves(tmp_path: Path, busybox_tar: Path, fmt: str) -> None:
    env = podman_env(tmp_path)
    try:
        sh("podman", "import", "--change", "CMD [\"sh\"]", str(busybox_tar), "pod/bb:2", env=env)
        sh("podman", "save", "--format", fmt, "-o", str(tmp_path / "p.tar"), "pod/bb:2",
           env=env)
    finally:
        subprocess.run(["podman", "rmi", "-a", "-f"], env={**os.environ, **env},
                       capture_output=True, check=False)
    store = ImageStore(tmp_path / "berth")
    loaded = load(store, tmp_path / "p.tar")
    assert len(loaded) == 1
    ref = "localhost/pod/bb:2"
    if fmt == "oci-archive" and not loaded[0].tags:
        store.tag(loaded[0].image.id, ref)  # podman's OCI archives may carry no name
    img = store.resolve(ref)
    assert img.config.cmd == ("sh",)
    assert (img.layer_dirs[0] / "bin/busybox").read_bytes() == Path("/bin/busybox").read_bytes()


@contextlib.contextmanager
def start_dockerd(netns: NetNS, tmp: Path) -> Iterator[list[str]]:
    """Debian's dockerd (MACHINE-NOTES recipe) in the test's netns; yields the docker argv."""
    base = tmp / "dockerd"
    base.mkdir()
    # unix socket paths must fit in 108 bytes: the exec root lives in a short dir
    short = Path(tempfile.mkdtemp(prefix="bd-"))
    sock = short / "docker.sock"
    log = (base / "log").open("wb")
    proc = subprocess.Popen(netns.argv(
        "dockerd", "--data-root", str(base / "data"), "--exec-root", str(short / "exec"),
        "-H", f"unix://{sock}", "--pidfile", str(short / "pid"), "--iptables=false",
        "--ip-forward=false", "--ip-masq=false", "--bridge=none",
        "--storage-driver=overlay2"), stdin=subprocess.DEVNULL, stdout=log,
        stderr=subprocess.STDOUT)
    docker = ["docker", "-H", f"unix://{sock}"]
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([*docker, "version"], capture_output=True).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start; see {base / 'log'}")
            time.sleep(0.2)
        yield docker
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f
                      if str(base) in line or str(short) in line]
        for m in reversed(mounts):
            subprocess.run(["umount", "-l", m], check=False)
        shutil.rmtree(short, ignore_errors=True)


@pytest.mark.skipif(shutil.which("dockerd") is None, reason="dockerd (docker.io) not installed")
def test_docker_loads_berths_save_and_berth_loads_dockers(netns: NetNS, tmp_path: Path,
                                                          busybox_tar: Path) -> None:
    store = ImageStore(tmp_path / "berth")
    with busybox_tar.open("rb") as f:
        iid = import_rootfs(store, f, tag="berth/bb:1", changes=['CMD ["echo", "hi"]']).id
    with (tmp_path / "save.tar").open("wb") as f:
        save(store, ["berth/bb:1"], f)
    with start_dockerd(netns, tmp_path) as docker:
        sh(*docker, "load", "-i", str(tmp_path / "save.tar"))
        out = sh(*docker, "run", "--rm", "--network", "none", "berth/bb:1")
        assert out.strip() == "hi"
        assert sh(*docker, "image", "inspect", "-f", "{{.Id}}", "berth/bb:1").strip() == iid
        sh(*docker, "tag", "berth/bb:1", "from/docker:2")
        sh(*docker, "save", "-o", str(tmp_path / "docker.tar"), "from/docker:2")
    fresh = ImageStore(tmp_path / "fresh")
    loaded = load(fresh, tmp_path / "docker.tar")
    assert [x.image.id for x in loaded] == [iid]
    assert fresh.resolve("from/docker:2").config.cmd == ("echo", "hi")
