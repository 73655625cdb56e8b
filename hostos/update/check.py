"""Find and fetch a release: python-tuf's ngclient does every check.

`Source.refresh()` runs the TUF client workflow (root rotation chain,
timestamp -> snapshot -> targets, signatures against thresholds, expiry,
version rollback) and reads the channel target's signed manifest. `decide()`
is the pure policy on top: newer than what runs, not known bad. `fetch()`
checks each artifact's length and hashes against the signed targets
metadata (as the Updater's download_target would) before handing back a path.
`fetch()` downloads each artifact itself, through the TUF fetcher, into the
download folder, bounded by the signed length and hashed on the way, without
leaving it in the page cache (hostos.update.uncached): python-tuf's
`download_target` stages each target in a TemporaryFile (tmpfs /tmp under
systemd) and copies it, twice the release in memory at the peak.

The repository URL may be http(s):// (python-tuf's requests fetcher) or
file:// (FileFetcher: updates from a mounted medium, and unit tests).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root, TargetFile

# Public API; its __all__ is built from __name__ strings, which mypy cannot read.
from tuf.ngclient import RequestsFetcher  # type: ignore[attr-defined]
from tuf.ngclient.config import UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.updater import Updater

from hostos.errors import HostosError
from hostos.keys import write_private
from hostos.update.config import UpdateSettings
from hostos.update.manifest import ArtifactKind, ReleaseManifest, channel_target
from hostos.update.uncached import UncachedWriter, digests, read_chunks
from hostos.update.version import Version

log = logging.getLogger("hostos.update")
USER_AGENT = "berth-update/1"


class CheckError(HostosError):
    """The repository or its metadata was refused; nothing was written."""


class Verdict(StrEnum):
    UPDATE = "update"
    UP_TO_DATE = "up-to-date"
    DOWNGRADE = "refused-downgrade"
    KNOWN_BAD = "refused-known-bad"
    NO_RELEASE = "no-release"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    release: ReleaseManifest | None
    reason: str


def decide(release: ReleaseManifest | None, running: Version, booted_usrhash: str | None,
           bad_versions: tuple[str, ...]) -> Decision:
    """Whether to install `release` on a host running `running`."""
    if release is None:
        return Decision(Verdict.NO_RELEASE, None, "the channel has no release")
    v = release.version
    if str(v) in bad_versions:
        return Decision(Verdict.KNOWN_BAD, release,
                        f"{v} failed on this host before (rolled back); not installing it again")
    if booted_usrhash is not None and release.usrhash == booted_usrhash:
        return Decision(Verdict.UP_TO_DATE, release, f"{v} is what is running")
    if v < running:
        return Decision(Verdict.DOWNGRADE, release,
                        f"release {v} is older than the running {running}: refusing a downgrade")
    if v == running:
        return Decision(Verdict.UP_TO_DATE, release, f"{v} is already running")
    return Decision(Verdict.UPDATE, release, f"{running} -> {v}")


class FileFetcher(FetcherInterface):
    """Serves file:// URLs (a repository on a mounted medium)."""

    def _fetch(self, url: str) -> Iterator[bytes]:
        parsed = urlparse(url)
        if parsed.scheme != "file":
            raise tuf_errors.DownloadError(f"FileFetcher cannot fetch {url}")
        path = Path(unquote(parsed.path))
        try:
            f = path.open("rb")
        except FileNotFoundError:
            raise tuf_errors.DownloadHTTPError(f"{path} not found", 404) from None

        def chunks() -> Iterator[bytes]:
            with f:
                while chunk := f.read(1 << 20):
                    yield chunk

        return chunks()


def _describe(e: Exception) -> str:
    kinds = {
        tuf_errors.ExpiredMetadataError: "expired metadata",
        tuf_errors.UnsignedMetadataError: "signatures below threshold",
        tuf_errors.BadVersionNumberError: "metadata version rollback",
        tuf_errors.LengthOrHashMismatchError: "length/hash mismatch (tampered?)",
        tuf_errors.DownloadLengthMismatchError: "longer than signed (tampered?)",
        tuf_errors.DownloadHTTPError: "download failed",
        tuf_errors.DownloadError: "download failed",
        tuf_errors.RepositoryError: "bad metadata",
    }
    for cls, label in kinds.items():
        if isinstance(e, cls):
            return f"{label}: {e}"
    return f"{type(e).__name__}: {e}"


def _verify(info: TargetFile, length: int, observed: dict[str, str]) -> None:
    """What TargetFile.verify_length_and_hashes checks, on digests taken while streaming."""
    if length != info.length:
        raise tuf_errors.LengthOrHashMismatchError(
            f"{info.path}: {length} bytes, signed {info.length}")
    for algorithm, expected in info.hashes.items():
        if observed[algorithm] != expected:
            raise tuf_errors.LengthOrHashMismatchError(
                f"{info.path}: {algorithm} {observed[algorithm][:12]}…, signed {expected[:12]}…")


class Source:
    """One TUF client session against the configured repository."""

    def __init__(self, settings: UpdateSettings) -> None:
        if settings.url is None:
            raise CheckError(
                "no update URL configured: set url in [update] of /etc/hostos/update.d/*.toml "
                "(or provision it: hostos provision)"
            )
        self.settings = settings
        self.metadata_dir = settings.state_dir / "metadata"
        self.download_dir = settings.state_dir / "downloads"
        self._bootstrap_root()
        self.download_dir.mkdir(parents=True, exist_ok=True)
        self.fetcher: FetcherInterface = (
            FileFetcher() if settings.url.startswith("file://")
            else RequestsFetcher(app_user_agent=USER_AGENT))
        try:
            self.updater = self._updater()
        except (OSError, tuf_errors.RepositoryError) as e:
            # A power cut soon after the trusted root was written can leave it empty or
            # torn (python-tuf writes metadata without fsync; so did our first copy):
            # refusing forever would leave the host without updates. The root the image
            # or provisioning carries is the anchor it came from; python-tuf walks the
            # signed root chain from it again (N.root.json, each checked by the last).
            log.warning("trusted root in %s is unusable (%s); starting over from %s",
                        self.metadata_dir, e, settings.trusted_root)
            self._bootstrap_root(again=True)
            try:
                self.updater = self._updater()
            except (OSError, tuf_errors.RepositoryError) as e:
                raise CheckError(f"trusted root in {self.metadata_dir} is unusable: {e}") from e

    def _updater(self) -> Updater:
        return Updater(
            metadata_dir=str(self.metadata_dir),
            metadata_base_url=self.settings.metadata_url,
            target_dir=str(self.download_dir),
            target_base_url=self.settings.targets_url,
            fetcher=self.fetcher,
            config=UpdaterConfig(app_user_agent=USER_AGENT),
        )

    def _bootstrap_root(self, again: bool = False) -> None:
        """First run (or again): trust the root.json the image (or provisioning) carries."""
        local = self.metadata_dir / "root.json"
        if local.is_file() and not again:
            return
        src = self.settings.trusted_root
        if src is None or not src.is_file():
            raise CheckError(
                "no trusted root.json: the image carries /usr/lib/hostos/tuf/root.json, "
                "or provisioning writes /etc/hostos/tuf/root.json ([update] tuf_root)"
            )
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        # fsynced file and directory: a torn root.json after a power cut stopped updates for good
        write_private(local, src.read_bytes(), 0o644)

    def refresh(self) -> ReleaseManifest | None:
        """Refresh metadata (all TUF checks) and return the channel's signed manifest."""
        try:
            self.updater.refresh()
            info = self.updater.get_targetinfo(channel_target(self.settings.channel))
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as e:
            raise CheckError(f"update repository {self.settings.url} refused: "
                             f"{_describe(e)}") from e
        if info is None:
            return None
        try:
            return ReleaseManifest.from_json(info.custom)
        except ValueError as e:
            raise CheckError(f"channel {self.settings.channel}: {e}") from e

    def fetch(self, release: ReleaseManifest) -> dict[ArtifactKind, Path]:
        """Download (or reuse verified cached) artifacts; each checked against TUF."""
        out: dict[ArtifactKind, Path] = {}
        for kind, art in release.artifacts.items():
            try:
                info = self.updater.get_targetinfo(art.target)
                if info is None:
                    raise CheckError(f"release {release.version}: target {art.target} is not "
                                     "in the signed targets metadata")
                unknown = sorted(set(info.hashes) - hashlib.algorithms_available)
                if unknown:
                    raise tuf_errors.RepositoryError(
                        f"{info.path}: unsupported hash algorithm(s) {', '.join(unknown)}")
                path = self.download_dir / quote(info.path, "")
                if not self._cached(info, path):
                    log.info("downloading %s (%.1f MB)", art.target, info.length / 1e6)
                    self._download(info, path)
            except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as e:
                raise CheckError(f"release {release.version}: {art.target} refused: "
                                 f"{_describe(e)}") from e
            out[kind] = path
        return out

    def _target_url(self, info: TargetFile) -> str:
        """Where the Updater would fetch info from (hash-prefixed under consistent snapshots)."""
        # The Updater keeps the newest trusted root there after refresh().
        root = Metadata[Root].from_file(str(self.metadata_dir / "root.json")).signed
        name = info.path
        if root.consistent_snapshot:
            folder, sep, base = name.rpartition("/")
            name = f"{folder}{sep}{next(iter(info.hashes.values()))}.{base}"
        return f"{self.settings.targets_url.rstrip('/')}/{name}"

    def _cached(self, info: TargetFile, path: Path) -> bool:
        """A download left by an interrupted run, if it still matches the signed target."""
        if not path.is_file():
            return False
        try:
            _verify(info, *digests(read_chunks(path), info.hashes))
        except tuf_errors.RepositoryError:
            path.unlink()
            return False
        return True

    def _download(self, info: TargetFile, path: Path) -> None:
        """Stream info's target into path: never past its signed length, hashed on the way."""
        tmp = path.with_name(f".{path.name}.part")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            out = UncachedWriter(fd)

            def bounded() -> Iterator[bytes]:
                for chunk in self.fetcher.fetch(self._target_url(info)):
                    if out.written + len(chunk) > info.length:
                        raise tuf_errors.DownloadLengthMismatchError(
                            f"{info.path}: more than the signed {info.length} bytes")
                    out.write(chunk)
                    yield chunk

            _verify(info, *digests(bounded(), info.hashes))
            out.flush()
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)

    def prune(self, keep: dict[ArtifactKind, Path] | None = None) -> None:
        """Drop downloaded artifacts (after they are written, or when abandoning)."""
        keep_set = set((keep or {}).values())
        for p in self.download_dir.iterdir():
            if p.is_file() and p not in keep_set:
                p.unlink()
