"""mkosi, fetched from Debian trixie and run from its unpacked .deb.

mkosi is not on PyPI. trixie's mkosi 25.3 is pure Python and runs with the
host's Python, so `ensure_mkosi` downloads its .deb through a private apt
configuration (its own sources list, package lists and archive cache under
the Berth cache folder: the machine's own apt sources are never touched),
unpacks it with `dpkg -x`, and returns how to run it. Everything is cached:
a second call costs nothing and needs no network.

Command lines are built by the `*_cmd` functions (unit-tested) and run
through `runtime.run`, the one subprocess chokepoint.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hostos.errors import HostosError
from runtime.run import CommandError, run

log = logging.getLogger("berth.hostos.mkosi")

# The mkosi release the image definitions are written for (trixie ships it).
MKOSI_UPSTREAM_VERSION = "25.3"
TRIXIE_MIRROR = "http://deb.debian.org/debian"
# bookworm's debian-archive-keyring already holds the keys trixie's Release
# files are signed with.
ARCHIVE_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DEFAULT_CACHE = Path("/var/cache/berth")
COMPLETE_MARKER = ".berth-unpacked"


@dataclass(frozen=True)
class AptConfig:
    """A private apt configuration rooted at `root` (sources, lists, archives)."""

    root: Path
    mirror: str = TRIXIE_MIRROR
    suite: str = "trixie"
    keyring: Path = ARCHIVE_KEYRING

    @property
    def sources_list(self) -> Path:
        return self.root / "sources.list"

    @property
    def lists_dir(self) -> Path:
        return self.root / "lists"

    @property
    def archives_dir(self) -> Path:
        return self.root / "archives"

    def sources_text(self) -> str:
        return f"deb [signed-by={self.keyring}] {self.mirror} {self.suite} main\n"

    def options(self) -> list[str]:
        """apt -o options that point every state path away from the system's."""
        return [
            "-o", f"Dir::Etc::sourcelist={self.sources_list}",
            # "-" disables sources.list.d: only our list is read.
            "-o", "Dir::Etc::sourceparts=-",
            "-o", f"Dir::State::Lists={self.lists_dir}",
            # Dir::Cache holds pkgcache.bin and archives/: ours, not /var/cache/apt.
            "-o", f"Dir::Cache={self.root}",
            "-o", "APT::Get::List-Cleanup=0",
            # Files land in a root-owned cache folder that _apt cannot write.
            "-o", "APT::Sandbox::User=root",
        ]  # fmt: skip


@dataclass(frozen=True)
class MkosiInstall:
    """An unpacked mkosi: run it as `python -m mkosi` with `pythonpath` set."""

    root: Path
    deb_version: str

    @property
    def pythonpath(self) -> Path:
        return self.root / "usr/lib/python3/dist-packages"

    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(self.pythonpath)}

    def argv(self, python: str = sys.executable) -> list[str]:
        return [python, "-m", "mkosi"]


def apt_update_cmd(apt: AptConfig) -> list[str]:
    return ["apt-get", "-q", *apt.options(), "update"]


def apt_download_cmd(apt: AptConfig, package: str) -> list[str]:
    return ["apt-get", "-q", *apt.options(), "download", package]


def apt_show_version_cmd(apt: AptConfig, package: str) -> list[str]:
    """Prints the candidate version of `package` in the private sources."""
    return ["apt-cache", *apt.options(), "show", "--no-all-versions", package]


def dpkg_extract_cmd(deb: Path, dest: Path) -> list[str]:
    return ["dpkg-deb", "--extract", str(deb), str(dest)]


def deb_version_cmd(deb: Path) -> list[str]:
    return ["dpkg-deb", "--field", str(deb), "Version"]


def upstream_version(debian_version: str) -> str:
    """Debian version -> upstream: drop the epoch, the revision and repack tags.

    "1:2.18.0+dfsg-2+deb13u1" -> "2.18.0"; "25.3-7" -> "25.3".
    """
    v = debian_version.split(":", 1)[1] if ":" in debian_version else debian_version
    if "-" in v:
        v = v.rsplit("-", 1)[0]
    for tag in ("+dfsg", "+ds", "+repack", "~dfsg", "~ds"):
        v = v.split(tag, 1)[0]
    return v


def parse_apt_show_version(output: str) -> str | None:
    for line in output.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return None


def update_lists(apt: AptConfig) -> None:
    """Writes the private sources list and refreshes its package lists."""
    (apt.lists_dir / "partial").mkdir(parents=True, exist_ok=True)
    (apt.archives_dir / "partial").mkdir(parents=True, exist_ok=True)
    if not apt.sources_list.exists() or apt.sources_list.read_text() != apt.sources_text():
        tmp = apt.sources_list.with_suffix(".tmp")
        tmp.write_text(apt.sources_text())
        tmp.replace(apt.sources_list)
    log.info("Refreshing the Debian %s package lists (private apt configuration)", apt.suite)
    try:
        run(apt_update_cmd(apt))
    except CommandError as e:
        raise HostosError(f"apt-get update for Debian {apt.suite} failed: {e}") from e


def candidate_version(apt: AptConfig, package: str) -> str:
    """The version of `package` that Debian `apt.suite` ships."""
    try:
        out = run(apt_show_version_cmd(apt, package)).stdout
    except CommandError as e:
        raise HostosError(f"{package} is not in Debian {apt.suite}: {e}") from e
    version = parse_apt_show_version(out)
    if version is None:
        raise HostosError(f"apt-cache show {package} printed no Version: field")
    return version


def installed_mkosi(cache: Path) -> MkosiInstall | None:
    """The newest complete unpacked mkosi of the wanted release in `cache`."""
    found = sorted(cache.glob(f"mkosi-{MKOSI_UPSTREAM_VERSION}-*/{COMPLETE_MARKER}"))
    if not found:
        return None
    root = found[-1].parent
    return MkosiInstall(root=root, deb_version=root.name.removeprefix("mkosi-"))


def ensure_mkosi(cache: Path = DEFAULT_CACHE) -> MkosiInstall:
    """Returns an unpacked mkosi 25.3 from the cache, fetching it once if needed."""
    if (have := installed_mkosi(cache)) is not None:
        return have
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise HostosError("fetching mkosi needs apt-get and dpkg-deb (a Debian machine)")
    apt = AptConfig(cache / "apt")
    update_lists(apt)
    version = candidate_version(apt, "mkosi")
    if upstream_version(version) != MKOSI_UPSTREAM_VERSION:
        raise HostosError(
            f"Debian trixie now ships mkosi {version}, the image definitions are written "
            f"for {MKOSI_UPSTREAM_VERSION}: check image-defs/ against it and update "
            "MKOSI_UPSTREAM_VERSION in hostos/mkosi.py"
        )
    log.info("Downloading mkosi %s from Debian trixie", version)
    try:
        run(apt_download_cmd(apt, f"mkosi={version}"), cwd=apt.archives_dir)
    except CommandError as e:
        raise HostosError(f"downloading mkosi {version} failed: {e}") from e
    debs = sorted(apt.archives_dir.glob("mkosi_*_all.deb"))
    deb = next((d for d in debs if run(deb_version_cmd(d)).stdout.strip() == version), None)
    if deb is None:
        raise HostosError(f"apt-get download left no mkosi {version} .deb in {apt.archives_dir}")
    dest = cache / f"mkosi-{version}"
    staging = cache / f".mkosi-{version}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    run(dpkg_extract_cmd(deb, staging))
    (staging / COMPLETE_MARKER).write_text(version + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(staging, dest)
    return MkosiInstall(root=dest, deb_version=version)


@dataclass(frozen=True)
class MkosiPaths:
    """Where mkosi keeps its state: all outside the checkout, all reused."""

    cache: Path

    @property
    def output(self) -> Path:
        """Staging output; also holds the default tools tree, reused by every build."""
        return self.cache / "mkosi/output"

    @property
    def workspace(self) -> Path:
        return self.cache / "mkosi/workspace"

    @property
    def image_cache(self) -> Path:
        """Incremental cache: the image tree after package installation."""
        return self.cache / "mkosi/cache"

    @property
    def packages(self) -> Path:
        return self.cache / "mkosi/packages"

    def all(self) -> tuple[Path, ...]:
        return (self.output, self.workspace, self.image_cache, self.packages)


def mkosi_build_cmd(
    mkosi: MkosiInstall,
    *,
    defs: Path,
    version: str,
    paths: MkosiPaths,
    extra: Sequence[str] = (),
    python: str = sys.executable,
) -> list[str]:
    """`mkosi build` of the image definitions in `defs` as version `version`.

    No --force: mkosi's --force also throws the tools tree away; the caller
    empties the image's staging outputs itself instead.
    """
    return [
        *mkosi.argv(python),
        "--directory", str(defs),
        "--image-version", version,
        "--output-directory", str(paths.output),
        "--workspace-directory", str(paths.workspace),
        "--cache-directory", str(paths.image_cache),
        "--package-cache-directory", str(paths.packages),
        *extra,
        "build",
    ]  # fmt: skip
