"""UEFI firmware (OVMF): the read-only code and a template for the variables.

Each machine gets its own copy of the variables store: systemd-boot writes
EFI variables (boot counting, LoaderEntryOneShot), and a shared template
must never change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Debian's ovmf package, newest layout first. The 4M builds are the ones
# with a large enough variable store for systemd-boot's variables.
SEARCH: tuple[tuple[str, str], ...] = (
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
    ("/usr/share/edk2/x64/OVMF_CODE.4m.fd", "/usr/share/edk2/x64/OVMF_VARS.4m.fd"),
)


class FirmwareNotFound(Exception):
    def __init__(self, searched: Sequence[str]) -> None:
        super().__init__(
            "no OVMF firmware found (looked for " + ", ".join(searched) + "); "
            "install Debian's ovmf package or boot with direct kernel boot"
        )


@dataclass(frozen=True)
class Firmware:
    code: Path
    vars_template: Path


def find_firmware(search: Sequence[tuple[str, str]] = SEARCH) -> Firmware:
    for code, template in search:
        if Path(code).is_file() and Path(template).is_file():
            return Firmware(Path(code), Path(template))
    raise FirmwareNotFound([code for code, _ in search])
