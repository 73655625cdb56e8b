"""GUID partition tables: parse and re-encode, pure (no I/O beyond a given file).

`sfdisk` is not in the tools tree and the update agent only ever changes a
partition's UUID and name, so a small, exact GPT codec (UEFI spec 2.10,
section 5.3) is simpler than a dependency. Entries we do not touch are kept
byte for byte; headers and entry arrays get fresh CRC32s. `write_plan()`
returns the (offset, bytes) writes in a crash-safe order: the backup copy
first, then the primary, so a power cut leaves one valid table at all times.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass, replace
from typing import BinaryIO

SIGNATURE = b"EFI PART"
HEADER_FMT = "<8sIIIIQQQQ16sQIII"
HEADER_SIZE = struct.calcsize(HEADER_FMT)  # 92
ENTRY_FMT = "<16s16sQQQ72s"

# Discoverable Partitions Specification, x86-64.
USR_X86_64 = uuid.UUID("8484680c-9521-48c6-9c11-b0720656f69e")
USR_VERITY_X86_64 = uuid.UUID("77ff5f63-e7b6-4633-acf4-1565b864c0e6")
ESP = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
ROOT_X86_64 = uuid.UUID("4f68bce3-e8cd-4db1-96e7-fbcaf984b709")


class GptError(ValueError):
    pass


@dataclass(frozen=True)
class Partition:
    number: int  # 1-based, as in /dev/vdaN
    type: uuid.UUID
    uuid: uuid.UUID
    first_lba: int
    last_lba: int
    attributes: int
    name: str

    def size(self, sector_size: int) -> int:
        return (self.last_lba - self.first_lba + 1) * sector_size

    def offset(self, sector_size: int) -> int:
        return self.first_lba * sector_size

    def encode(self) -> bytes:
        name = self.name.encode("utf-16-le")
        if len(name) > 72:
            raise GptError(f"partition name {self.name!r} is longer than 36 UTF-16 units")
        return struct.pack(ENTRY_FMT, self.type.bytes_le, self.uuid.bytes_le,
                           self.first_lba, self.last_lba, self.attributes, name.ljust(72, b"\0"))


@dataclass(frozen=True)
class Header:
    revision: int
    my_lba: int
    alternate_lba: int
    first_usable: int
    last_usable: int
    disk_guid: uuid.UUID
    entries_lba: int
    num_entries: int
    entry_size: int

    def encode(self, entries_crc: int, *, primary: bool, entries_lba: int) -> bytes:
        my, alt = (self.my_lba, self.alternate_lba)
        if not primary:
            my, alt = alt, my
        fields = [SIGNATURE, self.revision, HEADER_SIZE, 0, 0, my, alt, self.first_usable,
                  self.last_usable, self.disk_guid.bytes_le, entries_lba, self.num_entries,
                  self.entry_size, entries_crc]
        raw = struct.pack(HEADER_FMT, *fields)
        crc = zlib.crc32(raw)
        fields[3] = crc
        return struct.pack(HEADER_FMT, *fields)


@dataclass(frozen=True)
class Table:
    """A whole GPT: header, every entry slot (raw), and the decoded used ones."""

    sector_size: int
    header: Header
    raw_entries: tuple[bytes, ...]

    @property
    def partitions(self) -> tuple[Partition, ...]:
        out = []
        for i, raw in enumerate(self.raw_entries):
            p = _decode_entry(i + 1, raw)
            if p is not None:
                out.append(p)
        return tuple(out)

    def by_uuid(self, value: uuid.UUID) -> Partition | None:
        return next((p for p in self.partitions if p.uuid == value), None)

    def with_partition(self, new: Partition) -> Table:
        """A copy with partition `new.number` replaced (bounds and type must not move)."""
        old = _decode_entry(new.number, self.raw_entries[new.number - 1])
        if old is None or (old.first_lba, old.last_lba, old.type) != (
            new.first_lba, new.last_lba, new.type
        ):
            raise GptError(f"partition {new.number}: only its UUID, name and flags may change")
        clash = self.by_uuid(new.uuid)
        if clash is not None and clash.number != new.number:
            raise GptError(f"UUID {new.uuid} is already partition {clash.number}'s")
        entries = list(self.raw_entries)
        entries[new.number - 1] = new.encode().ljust(self.header.entry_size, b"\0")
        return replace(self, raw_entries=tuple(entries))

    def entries_bytes(self) -> bytes:
        return b"".join(self.raw_entries)

    def write_plan(self) -> list[tuple[int, bytes]]:
        """(byte offset, data) writes: backup entries+header, then primary entries+header."""
        ss = self.sector_size
        entries = self.entries_bytes()
        crc = zlib.crc32(entries)
        h = self.header
        backup_entries_lba = h.alternate_lba - _sectors(len(entries), ss)
        return [
            (backup_entries_lba * ss, entries),
            (h.alternate_lba * ss,
             h.encode(crc, primary=False, entries_lba=backup_entries_lba).ljust(ss, b"\0")),
            (h.entries_lba * ss, entries),
            (h.my_lba * ss,
             h.encode(crc, primary=True, entries_lba=h.entries_lba).ljust(ss, b"\0")),
        ]


def _sectors(n: int, ss: int) -> int:
    return (n + ss - 1) // ss


def _decode_entry(number: int, raw: bytes) -> Partition | None:
    type_b, uuid_b, first, last, attrs, name_b = struct.unpack_from(ENTRY_FMT, raw)
    ptype = uuid.UUID(bytes_le=type_b)
    if ptype.int == 0:
        return None
    name = name_b.decode("utf-16-le", errors="replace").split("\0", 1)[0]
    return Partition(number, ptype, uuid.UUID(bytes_le=uuid_b), first, last, attrs, name)


def _read_at(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise GptError(f"short read at byte {offset}")
    return data


def _parse_header(raw: bytes, lba: int) -> Header:
    (sig, revision, size, crc, _res, my_lba, alt_lba, first_usable, last_usable, disk_guid,
     entries_lba, num_entries, entry_size, _entries_crc) = struct.unpack_from(HEADER_FMT, raw)
    if sig != SIGNATURE:
        raise GptError(f"no GPT signature at LBA {lba}")
    if not HEADER_SIZE <= size <= len(raw):
        raise GptError(f"GPT header at LBA {lba} has bad size {size}")
    check = bytearray(raw[:size])
    check[16:20] = b"\0\0\0\0"
    if zlib.crc32(check) != crc:
        raise GptError(f"GPT header at LBA {lba} fails its CRC")
    if my_lba != lba or entry_size < 128 or num_entries > 4096:
        raise GptError(f"GPT header at LBA {lba} is inconsistent")
    return Header(revision, my_lba, alt_lba, first_usable, last_usable,
                  uuid.UUID(bytes_le=disk_guid), entries_lba, num_entries, entry_size)


def read_table(f: BinaryIO, sector_size: int = 512, size: int | None = None) -> Table:
    """Read the primary GPT, falling back to the backup (last LBA) if it is damaged."""
    errors: list[str] = []
    lbas = [1]
    if size is not None:
        lbas.append(size // sector_size - 1)
    for lba in lbas:
        try:
            raw = _read_at(f, lba * sector_size, sector_size)
            header = _parse_header(raw, lba)
            entries = _read_at(f, header.entries_lba * sector_size,
                               header.num_entries * header.entry_size)
            expected = struct.unpack_from("<I", raw, 88)[0]
            if zlib.crc32(entries) != expected:
                raise GptError(f"GPT entries of LBA {lba}'s header fail their CRC")
        except GptError as e:
            errors.append(str(e))
            continue
        if lba != 1:
            # Present the backup as if it were the primary, so a write restores both.
            header = replace(header, my_lba=header.alternate_lba, alternate_lba=lba,
                             entries_lba=2)
        es = header.entry_size
        raw_entries = tuple(entries[i * es:(i + 1) * es] for i in range(header.num_entries))
        return Table(sector_size, header, raw_entries)
    raise GptError("; ".join(errors))


def uuids_for_roothash(roothash: str) -> tuple[uuid.UUID, uuid.UUID]:
    """The (data, hash) partition UUIDs that systemd derives from a verity root hash.

    systemd-veritysetup-generator looks the devices up as
    /dev/disk/by-partuuid/<first 128 bits> and <last 128 bits> of the hash,
    and systemd-repart names the partitions that way when it builds them.
    """
    raw = bytes.fromhex(roothash)
    if len(raw) < 32:
        raise GptError(f"root hash {roothash!r} is shorter than 256 bits")
    return uuid.UUID(bytes=raw[:16]), uuid.UUID(bytes=raw[-16:])
