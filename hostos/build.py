"""`hostos build`: the Berth host OS image from image-defs/, rebuilt only when needed.

Flow: validate the request -> take the build lock (concurrent builds queue)
-> hash the inputs (image-defs/, the Python sources, pyproject.toml,
constraints.txt, the version); if DIR/berth.json records the same hash and
its files exist, the image is up to date -> fetch mkosi once (hostos.mkosi)
-> empty mkosi's staging outputs (its tools tree stays) -> `mkosi build`
with its output streaming to the terminal -> move the artifacts into DIR
-> read the UKI's command line -> write DIR/berth.json (hostos.artifacts).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import shutil
import signal
import threading
import time
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hostos import mkosi
from hostos.artifacts import (
    ImageArtifacts,
    ImageSizes,
    check_version,
    erofs_size,
    load_image,
    uki_cmdline,
    usrhash_from_cmdline,
    write_image,
)
from hostos.errors import HostosError
from runtime.run import CommandError, run

__all__ = ["BuildRequest", "ImageArtifacts", "build", "input_hash", "load_image", "register"]

log = logging.getLogger("berth.hostos.build")

REPO = Path(__file__).resolve().parent.parent
# What goes into the image: a change to any of these means a rebuild.
INPUT_DIRS = ("image-defs", "hostos", "runtime", "qemu")
INPUT_FILES = ("pyproject.toml", "constraints.txt")
# Never inputs: caches, bytecode, mkosi's own local state folders.
IGNORED_PARTS = frozenset({"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
                           "mkosi.output", "mkosi.cache", "mkosi.tools", "mkosi.builddir"})
IGNORED_SUFFIXES = (".pyc", ".pyo", ".swp", "~")
# Written by image-defs/mkosi.finalize: apparent bytes of /usr before erofs.
USR_SIZE_FILE = "usr-size"


@dataclass(frozen=True)
class BuildRequest:
    """A validated `hostos build` invocation."""

    version: str
    output: Path
    force: bool = False
    repo: Path = REPO
    cache: Path = mkosi.DEFAULT_CACHE

    @property
    def defs(self) -> Path:
        return self.repo / "image-defs"

    @property
    def lock_path(self) -> Path:
        return self.cache / "build.lock"


def project_version(repo: Path) -> str:
    """The distribution's version from pyproject.toml: the default image version."""
    with (repo / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def request_from_args(args: argparse.Namespace, repo: Path = REPO) -> BuildRequest:
    if not (repo / "image-defs" / "mkosi.conf").is_file():
        raise HostosError(
            f"{repo} has no image-defs/mkosi.conf: run hostos build from a Berth checkout"
        )
    version = check_version(project_version(repo) if args.version is None else args.version)
    output = Path(args.output) if args.output else repo / "build" / "image"
    cache = Path(args.cache) if args.cache else mkosi.DEFAULT_CACHE
    return BuildRequest(version=version, output=output.absolute(), force=bool(args.force),
                        repo=repo, cache=cache.absolute())


def input_files(repo: Path) -> Iterator[Path]:
    """The files whose contents decide the image, sorted, relative to `repo`."""
    found: list[Path] = [Path(name) for name in INPUT_FILES if (repo / name).is_file()]
    for top in INPUT_DIRS:
        base = repo / top
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if d not in IGNORED_PARTS]
            for name in filenames:
                if name.endswith(IGNORED_SUFFIXES):
                    continue
                found.append((Path(dirpath) / name).relative_to(repo))
    return iter(sorted(found))


def input_hash(repo: Path, version: str, extra: Iterable[str] = ()) -> str:
    """sha256 over the version, `extra` strings, and each input's path, mode and bytes."""
    h = hashlib.sha256()
    for item in (f"version={version}", f"mkosi={mkosi.MKOSI_UPSTREAM_VERSION}", *extra):
        h.update(item.encode() + b"\0")
    for rel in input_files(repo):
        path = repo / rel
        # Symlinks hash as their target text (mkosi.extra may hold them).
        if path.is_symlink():
            h.update(f"L {rel} {os.readlink(path)}".encode() + b"\0")
            continue
        executable = os.access(path, os.X_OK)
        h.update(f"F {rel} {'x' if executable else '-'}".encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def up_to_date(request: BuildRequest, digest: str) -> ImageArtifacts | None:
    """The existing image in request.output if it was built from `digest`."""
    try:
        image = load_image(request.output)
    except HostosError:
        return None
    if image.inputs != digest or image.version != request.version or image.missing():
        return None
    return image


class BuildInterrupted(HostosError):
    """SIGTERM or SIGHUP arrived while mkosi ran."""


@contextlib.contextmanager
def terminate_child_on_signal() -> Iterator[None]:
    """Turns SIGTERM/SIGHUP into an exception while a build runs.

    Python's default action for SIGTERM ends the process at once, leaving
    mkosi running without its parent while the build lock is released: the
    next build would then share mkosi's staging folder with it. An exception
    instead unwinds through `subprocess.run`, which kills mkosi first.
    """

    def raise_interrupted(signum: int, _frame: object) -> None:
        raise BuildInterrupted(f"build interrupted by {signal.Signals(signum).name}")

    if threading.current_thread() is not threading.main_thread():
        # Only the main thread may set handlers; a caller there owns the signals.
        yield
        return
    signals = (signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, raise_interrupted) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """An exclusive flock: a second build waits for the first (and says so)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            log.info("Another image build holds %s; waiting for it", path)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def clear_staging(output: Path) -> None:
    """Removes earlier image outputs from mkosi's staging folder, keeping its tools tree."""
    if not output.exists():
        return
    for entry in output.iterdir():
        if entry.name == "tools" or entry.name.startswith("tools."):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


@dataclass(frozen=True)
class StagedOutputs:
    """mkosi's outputs for one image, named by mkosi's Output= (berth_<version>)."""

    disk: Path
    uki: Path
    kernel: Path
    initrd: Path
    manifest: Path
    usr_partition: Path | None
    usr_verity: Path | None
    usr_size: Path | None


def find_outputs(staging: Path, version: str) -> StagedOutputs:
    stem = f"berth_{version}"
    wanted = {
        "disk": staging / f"{stem}.raw",
        "uki": staging / f"{stem}.efi",
        "kernel": staging / f"{stem}.vmlinuz",
        "initrd": staging / f"{stem}.initrd",
        "manifest": staging / f"{stem}.manifest",
    }
    missing = [p.name for p in wanted.values() if not p.exists()]
    if missing:
        raise HostosError(f"mkosi finished but left no {', '.join(missing)} in {staging}")
    # Split out by mkosi.repart's SplitName=: what an update writes into a slot.
    usr = staging / f"{stem}.usr.raw"
    verity = staging / f"{stem}.usr-verity.raw"
    usr_size = staging / USR_SIZE_FILE
    return StagedOutputs(**wanted,
                         usr_partition=usr if usr.exists() else None,
                         usr_verity=verity if verity.exists() else None,
                         usr_size=usr_size if usr_size.exists() else None)


def allocated_bytes(path: Path) -> int:
    return path.stat().st_blocks * 512


def install_outputs(staged: StagedOutputs, request: BuildRequest, digest: str) -> ImageArtifacts:
    """Moves the staged files into request.output (replacing an older image there)."""
    dest = request.output
    fresh = dest.with_name(f".{dest.name}.new")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    moved: dict[str, Path] = {}
    for key in ("disk", "uki", "kernel", "initrd", "manifest"):
        src: Path = getattr(staged, key)
        target = fresh / src.name
        shutil.move(src, target)
        moved[key] = target
    usr_erofs = None
    if staged.usr_partition is not None:
        target = fresh / staged.usr_partition.name
        shutil.move(staged.usr_partition, target)
        usr_erofs = erofs_size(target)
    if staged.usr_verity is not None:
        shutil.move(staged.usr_verity, fresh / staged.usr_verity.name)
    usr_tree = int(staged.usr_size.read_text().split()[0]) if staged.usr_size else None
    cmdline = uki_cmdline(moved["uki"])
    sizes = ImageSizes(
        uki=moved["uki"].stat().st_size,
        kernel=moved["kernel"].stat().st_size,
        initrd=moved["initrd"].stat().st_size,
        usr_tree=usr_tree,
        usr_erofs=usr_erofs,
        disk_apparent=moved["disk"].stat().st_size,
        disk_allocated=allocated_bytes(moved["disk"]),
    )
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        dest.rename(old)
        fresh.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        fresh.rename(dest)
    image = ImageArtifacts(
        version=request.version,
        cmdline=cmdline,
        usrhash=usrhash_from_cmdline(cmdline),
        inputs=digest,
        sizes=sizes,
        **{key: dest / path.name for key, path in moved.items()},
    )
    write_image(image)
    return image


def mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f} MB"


def describe(image: ImageArtifacts) -> str:
    lines = [f"Image {image.version} in {image.folder}"]
    if (s := image.sizes) is not None:
        lines += [
            f"  UKI {mb(s.uki)} (kernel {mb(s.kernel)}, initrd {mb(s.initrd)})",
            f"  /usr {mb(s.usr_tree)} as files, {mb(s.usr_erofs)} as erofs",
            f"  UKI + erofs /usr {mb(s.uki + (s.usr_erofs or 0))}",
            f"  disk {mb(s.disk_apparent)} apparent, {mb(s.disk_allocated)} allocated",
        ]
    lines.append(f"  usrhash {image.usrhash}")
    return "\n".join(lines)


def build(request: BuildRequest) -> ImageArtifacts:
    """Builds the image if its inputs changed; returns it either way."""
    if os.geteuid() != 0:
        raise HostosError("hostos build needs root (mkosi builds the image in namespaces it owns)")
    with terminate_child_on_signal(), build_lock(request.lock_path):
        digest = input_hash(request.repo, request.version)
        if not request.force and (image := up_to_date(request, digest)) is not None:
            log.info("Image %s in %s is up to date (inputs %s)", image.version, image.folder,
                     digest[:12])
            return image
        tool = mkosi.ensure_mkosi(request.cache)
        paths = mkosi.MkosiPaths(request.cache)
        for p in paths.all():
            p.mkdir(parents=True, exist_ok=True)
        clear_staging(paths.output)
        argv = mkosi.mkosi_build_cmd(tool, defs=request.defs, version=request.version,
                                     paths=paths)
        log.info("Building image %s with mkosi %s (inputs %s)", request.version,
                 tool.deb_version, digest[:12])
        started = time.monotonic()
        try:
            # Not captured: mkosi's progress goes straight to the terminal.
            run(argv, capture=False, env=tool.env(), cwd=request.defs)
        except CommandError as e:
            raise HostosError(
                f"mkosi build failed with status {e.returncode} (its output is above)"
            ) from e
        image = install_outputs(find_outputs(paths.output, request.version), request, digest)
        log.info("Built in %.0f s", time.monotonic() - started)
        return image


def cmd_build(args: argparse.Namespace) -> int:
    image = build(request_from_args(args))
    print(describe(image))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "build",
        help="build the host OS image (only if its inputs changed)",
        description="Build the Berth host OS disk image, UKI, kernel and initrd with mkosi "
        "from image-defs/. Skipped when nothing that goes into the image changed.",
    )
    p.add_argument("--version", metavar="V",
                   help="image version (default: the project version in pyproject.toml)")
    p.add_argument("--output", metavar="DIR",
                   help="where the artifacts and berth.json go (default: <repo>/build/image)")
    p.add_argument("--force", action="store_true", help="rebuild even if the inputs did not change")
    p.add_argument("--cache", metavar="DIR",
                   help=f"mkosi, its tools tree and package cache (default: {mkosi.DEFAULT_CACHE})")
    p.set_defaults(func=cmd_build)
