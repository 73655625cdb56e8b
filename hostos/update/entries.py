"""systemd-boot entries of Berth in the ESP: `EFI/Linux/<name>_<V>[+LEFT[-DONE]].efi`.

Boot assessment (systemd Boot Loader Specification, "Boot counting"): an
entry named `+3` is on trial; systemd-boot renames it `+2-1`, `+1-2`, ...
at each boot; systemd-bless-boot drops the counter once boot-complete.target
is reached. An entry at `+0-N` has used its tries: systemd-boot sorts it
last, so the previous version boots again. Pure parsing, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from hostos.update.version import Version


class EntryState(StrEnum):
    GOOD = "good"        # no counter: blessed (or never on trial)
    TRIAL = "trial"      # counter with tries left
    BAD = "bad"          # counter at zero: systemd-boot gave up on it


@dataclass(frozen=True)
class BootEntry:
    filename: str
    name: str
    version: Version
    tries_left: int | None
    tries_done: int | None

    @property
    def state(self) -> EntryState:
        if self.tries_left is None:
            return EntryState.GOOD
        return EntryState.TRIAL if self.tries_left > 0 else EntryState.BAD


def parse_entry(filename: str, name: str) -> BootEntry | None:
    """The entry for filename if it is one of ours (`<name>_<V>...efi`), else None."""
    m = re.fullmatch(rf"{re.escape(name)}_([^+_/]+?)(?:\+(\d+)(?:-(\d+))?)?\.efi", filename)
    if m is None:
        return None
    try:
        version = Version.parse(m.group(1))
    except ValueError:
        return None
    left = int(m.group(2)) if m.group(2) is not None else None
    done = int(m.group(3)) if m.group(3) is not None else (0 if left is not None else None)
    return BootEntry(filename, name, version, left, done)


def entry_filename(name: str, version: Version, tries: int | None) -> str:
    """The file name of a new entry; tries=None for an entry that is not on trial."""
    counter = f"+{tries}" if tries is not None else ""
    return f"{name}_{version}{counter}.efi"


def parse_entries(filenames: list[str], name: str) -> list[BootEntry]:
    return [e for f in sorted(filenames) if (e := parse_entry(f, name)) is not None]
