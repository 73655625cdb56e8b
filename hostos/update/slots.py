"""The A/B slot table and the one module that writes partitions and the ESP.

Why our own slot table rather than systemd-sysupdate: the agent must verify
every byte against TUF metadata, resume after a power cut at any point, find
the active slot from what booted, and keep a record of bad versions; with
sysupdate we would still need all of that around it, plus a second copy of
each artifact in a sysupdate-shaped local source, and `systemd-sysupdate`
/`systemd-import` (for decompression) are extra binaries in the image. The
layout stays sysupdate-compatible: slots are labelled `berth_<V>` /
`berth_<V>_verity` and an unused slot `_empty`, as the image build does.

Reading: `SlotTable.from_table(gpt_table, booted_usrhash)`. The active slot
is the one whose usr partition UUID is the first half of the usrhash on the
running kernel's command line, i.e. what actually booted. Changes are pure
(`SlotTable.emptied`, `.installed`) and written by `BootDisk.write_table`.

Install order, each step safe to interrupt (nothing boots the inactive slot
until its UKI exists, and the UKI is written last):
  1. remove every entry of ours from the ESP except the booted version's;
  2. label the inactive slot `_empty` with fresh random UUIDs;
  3. write usr and verity data (decompressed, bounded to the partition,
     hashed on the way and compared with the signed sha256), flushed and
     evicted from the page cache as it goes (hostos.update.uncached);
  4. label it `berth_<V>` with the UUIDs derived from V's usrhash;
  5. write the UKI as `<name>_<V>+<tries>.efi` (temp name, fsync, rename).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import IO

from hostos.errors import HostosError
from hostos.update import gpt
from hostos.update.entries import BootEntry, entry_filename, parse_entries
from hostos.update.manifest import Artifact, ArtifactKind, ReleaseManifest
from hostos.update.uncached import DecompressError, UncachedWriter, decompressed
from hostos.update.version import Version

log = logging.getLogger("hostos.update")
EMPTY_LABEL = "_empty"
Progress = Callable[[str, int, int], None]


class InstallStep(StrEnum):
    """The steps of `install`, in order (module doc); persisted by the agent."""

    EMPTY = "empty"
    USR = "usr"
    VERITY = "verity"
    LABEL = "label"
    UKI = "uki"


Step = Callable[[InstallStep], None]


class SlotError(HostosError):
    pass


def usr_label(version: Version | str) -> str:
    return f"berth_{version}"


def verity_label(version: Version | str) -> str:
    return f"berth_{version}_verity"


@dataclass(frozen=True)
class Slot:
    name: str
    usr: gpt.Partition
    verity: gpt.Partition

    @property
    def version(self) -> str | None:
        label = self.usr.name
        if label.startswith("berth_") and self.verity.name == f"{label}_verity":
            return label.removeprefix("berth_")
        return None

    def holds(self, usrhash: str) -> bool:
        data, hash_ = gpt.uuids_for_roothash(usrhash)
        return (self.usr.uuid, self.verity.uuid) == (data, hash_)


@dataclass(frozen=True)
class SlotTable:
    table: gpt.Table
    slots: tuple[Slot, ...]
    active: Slot

    @classmethod
    def from_table(cls, table: gpt.Table, booted_usrhash: str) -> SlotTable:
        slots = _pairs(table)
        active = [s for s in slots if s.holds(booted_usrhash)]
        if not active:
            raise SlotError(f"no slot holds the booted usrhash {booted_usrhash[:12]}…: "
                            "is this host booted from this disk?")
        return cls(table, slots, active[0])

    @property
    def inactive(self) -> Slot:
        return next(s for s in self.slots if s is not self.active)

    def _with(self, slot: Slot, usr_uuid: uuid.UUID, verity_uuid: uuid.UUID,
              usr_name: str, verity_name: str) -> SlotTable:
        if slot.usr.number == self.active.usr.number:
            raise AssertionError("the running slot is never changed")
        table = self.table.with_partition(replace(slot.usr, uuid=usr_uuid, name=usr_name))
        table = table.with_partition(replace(slot.verity, uuid=verity_uuid, name=verity_name))
        return SlotTable.from_table_keep_active(table, self.active)

    @classmethod
    def from_table_keep_active(cls, table: gpt.Table, active: Slot) -> SlotTable:
        by_num = {p.number: p for p in table.partitions}
        slots = tuple(Slot(s.name, by_num[s.usr.number], by_num[s.verity.number])
                      for s in _pairs(table))
        return cls(table, slots, next(s for s in slots if s.usr.number == active.usr.number))

    def emptied(self) -> SlotTable:
        """The inactive slot marked free: `_empty`, random UUIDs (no UKI can find it)."""
        return self._with(self.inactive, uuid.uuid4(), uuid.uuid4(), EMPTY_LABEL, EMPTY_LABEL)

    def installed(self, release: ReleaseManifest) -> SlotTable:
        """The inactive slot labelled with release's version and usrhash UUIDs."""
        data, hash_ = gpt.uuids_for_roothash(release.usrhash)
        return self._with(self.inactive, data, hash_, usr_label(release.version),
                          verity_label(release.version))

    def check_fits(self, release: ReleaseManifest) -> None:
        """Refuse a release that cannot go into the inactive slot (before writing anything)."""
        ss = self.table.sector_size
        if self.active.holds(release.usrhash):
            raise SlotError(f"release {release.version} is what runs (usrhash matches slot "
                            f"{self.active.name}): nothing to install")
        for kind, part in ((ArtifactKind.USR, self.inactive.usr),
                           (ArtifactKind.VERITY, self.inactive.verity)):
            need = release.artifacts[kind].length
            if need > part.size(ss):
                raise SlotError(f"release {release.version}: {kind} is {need} bytes but slot "
                                f"{self.inactive.name} holds {part.size(ss)}")


def _pairs(table: gpt.Table) -> tuple[Slot, ...]:
    """Slots pair up in disk order: usr-A, verity-A, usr-B, verity-B."""
    usrs = [p for p in table.partitions if p.type == gpt.USR_X86_64]
    verities = [p for p in table.partitions if p.type == gpt.USR_VERITY_X86_64]
    if len(usrs) != 2 or len(verities) != 2:
        raise SlotError(f"expected 2 usr and 2 usr-verity partitions (A/B), found "
                        f"{len(usrs)} and {len(verities)}: not an A/B Berth disk")
    return tuple(Slot(n, u, v) for n, u, v in zip(("a", "b"), usrs, verities, strict=True))


@contextlib.contextmanager
def _decompressed(source: Path) -> Iterator[Iterator[bytes]]:
    try:
        with decompressed(source) as chunks:
            yield chunks
    except DecompressError as e:
        raise SlotError(str(e)) from e


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BootDisk:
    """The disk the host booted from (a block device, or an image file in tests)."""

    def __init__(self, path: Path, sector_size: int = 512) -> None:
        self.path = path
        self.sector_size = sector_size

    def _size(self, f: IO[bytes]) -> int:
        return f.seek(0, os.SEEK_END)

    def read_table(self) -> gpt.Table:
        with self.path.open("rb") as f:
            try:
                return gpt.read_table(f, self.sector_size, self._size(f))
            except gpt.GptError as e:
                raise SlotError(f"{self.path}: {e}") from e

    def write_table(self, table: gpt.Table) -> None:
        current = self.read_table()
        if (current.header.disk_guid, current.header.num_entries) != (
                table.header.disk_guid, table.header.num_entries):
            raise AssertionError("a slot table must be written to the disk it was read from")
        fd = os.open(self.path, os.O_WRONLY)
        try:
            for offset, data in table.write_plan():
                os.pwrite(fd, data, offset)
                os.fsync(fd)  # backup durable before the primary changes
        finally:
            os.close(fd)

    def write_partition(self, part: gpt.Partition, source: Path, artifact: Artifact,
                        progress: Progress | None = None) -> None:
        """Decompress source into part, never past its end; check size and sha256; zero
        the artifact's zero_tail after it."""
        ss = self.sector_size
        start, limit = part.offset(ss), part.size(ss)
        if artifact.length > limit:
            raise SlotError(f"{artifact.target}: {artifact.length} bytes do not fit partition "
                            f"{part.number} ({limit})")
        h = hashlib.sha256()
        fd = os.open(self.path, os.O_WRONLY)
        try:
            out = UncachedWriter(fd, start)
            with _decompressed(source) as chunks:
                for chunk in chunks:
                    if out.written + len(chunk) > artifact.size:
                        raise SlotError(f"{artifact.target} decompresses to more than the "
                                        f"signed {artifact.size} bytes")
                    out.write(chunk)
                    h.update(chunk)
                    if progress:
                        progress(artifact.target, out.written, artifact.size)
            if out.written != artifact.size or h.hexdigest() != artifact.sha256:
                raise SlotError(f"{artifact.target}: wrote {out.written} bytes with sha256 "
                                f"{h.hexdigest()[:12]}…, signed {artifact.size} / "
                                f"{artifact.sha256[:12]}…")
            out.zero_fill(artifact.zero_tail)   # checked bytes only: then the unshipped zeros
            out.flush()
        finally:
            os.close(fd)
        if out.zeroed:
            log.info("%s: %d MiB written, %d MiB of zeros zeroed in place", artifact.target,
                     (out.written - out.zeroed) >> 20, out.zeroed >> 20)


class Esp:
    """Our UKIs in the ESP's EFI/Linux (Boot Loader Specification type #2 entries)."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.dir = root / "EFI" / "Linux"
        self.name = name

    def entries(self) -> list[BootEntry]:
        if not self.dir.is_dir():
            return []
        return parse_entries([p.name for p in self.dir.iterdir() if p.is_file()], self.name)

    def remove_all_but(self, keep: Version) -> list[BootEntry]:
        """Remove our entries except keep's, and UKIs left half-written by a power cut."""
        removed = [e for e in self.entries() if e.version != keep]
        for e in removed:
            (self.dir / e.filename).unlink(missing_ok=True)
        # install_uki's temp names: systemd-boot ignores them, but a cut one would hold
        # its ~140 MB of the ESP for good once the next release has another name.
        partial = list(self.dir.glob(f".{self.name}_*.efi.tmp")) if self.dir.is_dir() else []
        for p in partial:
            p.unlink(missing_ok=True)
        if removed or partial:
            _fsync_dir(self.dir)
        return removed

    def remove(self, entry: BootEntry) -> None:
        (self.dir / entry.filename).unlink(missing_ok=True)
        _fsync_dir(self.dir)

    def install_uki(self, source: Path, artifact: Artifact, version: Version,
                    tries: int) -> BootEntry:
        """Write the UKI under a name systemd-boot ignores, check it, then rename it in."""
        final = entry_filename(self.name, version, tries)
        tmp = self.dir / f".{final}.tmp"
        self.dir.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            out = UncachedWriter(fd)
            with _decompressed(source) as chunks:
                for chunk in chunks:
                    if out.written + len(chunk) > artifact.size:
                        raise SlotError(f"{artifact.target} is longer than signed")
                    out.write(chunk)
                    h.update(chunk)
            out.flush()
        finally:
            os.close(fd)
        n = out.written
        if n != artifact.size or h.hexdigest() != artifact.sha256:
            tmp.unlink(missing_ok=True)
            raise SlotError(f"{artifact.target}: UKI does not match its signed sha256")
        os.replace(tmp, self.dir / final)
        _fsync_dir(self.dir)
        entry = next(e for e in self.entries() if e.filename == final)
        return entry


@dataclass(frozen=True)
class InstallResult:
    slot: str
    entry: BootEntry


def install(disk: BootDisk, esp: Esp, booted_usrhash: str, booted_version: Version,
            release: ReleaseManifest, files: dict[ArtifactKind, Path], tries: int,
            progress: Progress | None = None, step: Step | None = None) -> InstallResult:
    """Write release into the inactive slot and its UKI into the ESP (see module doc).

    `step` is called with each InstallStep as it begins (the agent persists it).
    """
    def begin(s: InstallStep) -> None:
        if step is not None:
            step(s)

    slots = SlotTable.from_table(disk.read_table(), booted_usrhash)
    slots.check_fits(release)
    target = slots.inactive
    begin(InstallStep.EMPTY)
    removed = esp.remove_all_but(booted_version)
    for e in removed:
        log.info("removed boot entry %s (slot %s is being replaced)", e.filename, target.name)
    slots = slots.emptied()
    disk.write_table(slots.table)
    log.info("writing %s into slot %s", release.version, target.name)
    begin(InstallStep.USR)
    disk.write_partition(target.usr, files[ArtifactKind.USR],
                         release.artifacts[ArtifactKind.USR], progress)
    begin(InstallStep.VERITY)
    disk.write_partition(target.verity, files[ArtifactKind.VERITY],
                         release.artifacts[ArtifactKind.VERITY], progress)
    begin(InstallStep.LABEL)
    disk.write_table(slots.installed(release).table)
    begin(InstallStep.UKI)
    log.info("writing the UKI of %s into the ESP", release.version)
    entry = esp.install_uki(files[ArtifactKind.UKI], release.artifacts[ArtifactKind.UKI],
                            release.version, tries)
    log.info("staged %s as %s", release.version, entry.filename)
    return InstallResult(target.name, entry)
