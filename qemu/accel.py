"""Choosing the accelerator: KVM only where it really works, TCG otherwise.

`/dev/kvm` existing is not enough. On machines whose KVM is `kvm_pvm`
(software nested virtualisation, /sys/module/kvm_pvm) Linux guests die in
KVM's instruction emulator ("KVM internal error. Suberror: 1") or crawl
~100x slower than TCG; a KVM without a hardware vendor module (kvm_intel,
kvm_amd) is suspect in the same way. The decision and its reason are
logged, and `--kvm`/`--tcg` override it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

log = logging.getLogger("berth.qemu")


class Accel(StrEnum):
    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True)
class AccelChoice:
    accel: Accel
    reason: str


# Modules that provide /dev/kvm without hardware virtualisation underneath.
SOFTWARE_KVM_MODULES = ("kvm_pvm",)
HARDWARE_KVM_MODULES = ("kvm_intel", "kvm_amd")


def choose_accel(
    override: Accel | None = None,
    *,
    sys_root: Path = Path("/sys"),
    dev_kvm: Path = Path("/dev/kvm"),
) -> AccelChoice:
    """Decide between KVM and TCG from what the host offers (or the override)."""
    if override is not None:
        choice = AccelChoice(override, f"{override} requested")
    else:
        choice = _detect(sys_root, dev_kvm)
    log.info("qemu: accelerator %s (%s)", choice.accel, choice.reason)
    return choice


def _detect(sys_root: Path, dev_kvm: Path) -> AccelChoice:
    if not dev_kvm.exists():
        return AccelChoice(Accel.TCG, f"{dev_kvm} does not exist")
    if not os.access(dev_kvm, os.R_OK | os.W_OK):
        return AccelChoice(Accel.TCG, f"{dev_kvm} is not readable and writable")
    modules = sys_root / "module"
    for name in SOFTWARE_KVM_MODULES:
        if (modules / name).exists():
            return AccelChoice(
                Accel.TCG,
                f"{dev_kvm} is {name}, software nested virtualisation that breaks Linux guests",
            )
    for name in HARDWARE_KVM_MODULES:
        if (modules / name).exists():
            return AccelChoice(Accel.KVM, f"{dev_kvm} backed by {name}")
    return AccelChoice(Accel.TCG, f"{dev_kvm} exists but no hardware KVM module is loaded")


def accel_args(accel: Accel) -> list[str]:
    if accel is Accel.KVM:
        return ["-accel", "kvm", "-cpu", "host"]
    # -cpu max gives TCG guests x86-64-v2+ features (Debian trixie's userland
    # runs on v1, but systemd and Python benefit from the newer instructions).
    return ["-accel", "tcg", "-cpu", "max"]
