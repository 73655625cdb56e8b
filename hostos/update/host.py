"""The running host as the agent sees it: what booted, where the disk and ESP are.

Everything is derived from the running system, never configured: the usrhash
from /proc/cmdline (what the UKI that booted pinned), the boot disk as the
parent of the partition that usrhash names, the version from os-release.
"""

from __future__ import annotations

import os
from pathlib import Path

from hostos.update import gpt
from hostos.update.config import UpdateSettings
from hostos.update.slots import BootDisk, Esp, SlotError
from hostos.update.version import Version
from runtime.run import CommandError, run

ESP_CANDIDATES = (Path("/efi"), Path("/boot"), Path("/boot/efi"))


def usrhash_from_cmdline(cmdline: str) -> str | None:
    for word in cmdline.split():
        if word.startswith("usrhash="):
            return word.removeprefix("usrhash=")
    return None


def image_version(os_release: str) -> str | None:
    for line in os_release.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "IMAGE_VERSION":
            return value.strip().strip('"').strip("'")
    return None


def cgroup_path(proc_cgroup: str) -> str | None:
    """The cgroup v2 path in /proc/<pid>/cgroup's text (its `0::` line), if any."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line.removeprefix("0::")
    return None


def reboot_cmd() -> list[str]:
    return ["systemctl", "reboot", "--message=hostos update: booting the staged version"]


class LocalHost:
    def __init__(self, settings: UpdateSettings, root: Path = Path("/")) -> None:
        self.settings = settings
        self.root = root

    def booted_usrhash(self) -> str:
        value = usrhash_from_cmdline((self.root / "proc/cmdline").read_text())
        if value is None:
            raise SlotError("no usrhash= on the kernel command line: not booted from a "
                            "Berth UKI, so there is no A/B slot to update")
        return value

    def running_version(self) -> Version:
        for rel in ("etc/os-release", "usr/lib/os-release"):
            p = self.root / rel
            if p.is_file():
                v = image_version(p.read_text())
                if v:
                    return Version.parse(v)
        raise SlotError("os-release has no IMAGE_VERSION: cannot tell the running version")

    def disk(self) -> BootDisk:
        data_uuid, _ = gpt.uuids_for_roothash(self.booted_usrhash())
        link = self.root / "dev/disk/by-partuuid" / str(data_uuid)
        try:
            part = Path(os.path.realpath(link)).name
            parent = Path(os.path.realpath(self.root / "sys/class/block" / part)).parent.name
        except OSError as e:
            raise SlotError(f"cannot find the booted /usr partition {link}: {e}") from e
        if not (self.root / "sys/class/block" / part / "partition").exists():
            raise SlotError(f"{link} -> {part} is not a partition")
        ss = int((self.root / "sys/class/block" / parent / "queue/logical_block_size")
                 .read_text())
        return BootDisk(self.root / "dev" / parent, ss)

    def esp(self) -> Esp:
        if self.settings.esp is not None:
            return Esp(self.settings.esp, self.settings.entry_name)
        try:
            out = run(["bootctl", "--print-esp-path"]).stdout.strip()
            if out:
                return Esp(Path(out), self.settings.entry_name)
        except (CommandError, FileNotFoundError):
            pass
        for p in ESP_CANDIDATES:
            if (p / "EFI").is_dir():
                return Esp(p, self.settings.entry_name)
        raise SlotError("cannot find the ESP (bootctl --print-esp-path, /efi, /boot)")

    def reboot(self) -> None:
        run(reboot_cmd())

    def memory_peak(self) -> int | None:
        """memory.peak of our cgroup (hostos-update.service's, under systemd): what
        systemd reports as the unit's MemoryPeak; None where there is no such file."""
        try:
            path = cgroup_path((self.root / "proc/self/cgroup").read_text())
            if path is None:
                return None
            peak = self.root / "sys/fs/cgroup" / path.lstrip("/") / "memory.peak"
            return int(peak.read_text())
        except (OSError, ValueError):
            return None
