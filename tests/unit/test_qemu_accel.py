"""Accelerator choice from what the host offers, given fake /sys and /dev paths."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from qemu.accel import Accel, choose_accel
from qemu.firmware import FirmwareNotFound, find_firmware


def host(tmp_path: Path, *modules: str, kvm: bool = True) -> tuple[Path, Path]:
    sys_root = tmp_path / "sys"
    for m in modules:
        (sys_root / "module" / m).mkdir(parents=True)
    dev_kvm = tmp_path / "kvm"
    if kvm:
        dev_kvm.touch(mode=0o600)
    return sys_root, dev_kvm


def test_no_dev_kvm_means_tcg(tmp_path: Path) -> None:
    sys_root, dev_kvm = host(tmp_path, "kvm", "kvm_intel", kvm=False)
    choice = choose_accel(sys_root=sys_root, dev_kvm=dev_kvm)
    assert choice.accel is Accel.TCG and "does not exist" in choice.reason


def test_kvm_pvm_is_not_trusted(tmp_path: Path) -> None:
    sys_root, dev_kvm = host(tmp_path, "kvm", "kvm_pvm")
    choice = choose_accel(sys_root=sys_root, dev_kvm=dev_kvm)
    assert choice.accel is Accel.TCG and "kvm_pvm" in choice.reason


def test_kvm_pvm_wins_even_next_to_a_vendor_module(tmp_path: Path) -> None:
    sys_root, dev_kvm = host(tmp_path, "kvm", "kvm_intel", "kvm_pvm")
    assert choose_accel(sys_root=sys_root, dev_kvm=dev_kvm).accel is Accel.TCG


@pytest.mark.parametrize("vendor", ["kvm_intel", "kvm_amd"])
def test_hardware_kvm_is_used(tmp_path: Path, vendor: str) -> None:
    sys_root, dev_kvm = host(tmp_path, "kvm", vendor)
    choice = choose_accel(sys_root=sys_root, dev_kvm=dev_kvm)
    assert choice.accel is Accel.KVM and vendor in choice.reason


def test_kvm_without_a_vendor_module_is_suspect(tmp_path: Path) -> None:
    sys_root, dev_kvm = host(tmp_path, "kvm")
    assert choose_accel(sys_root=sys_root, dev_kvm=dev_kvm).accel is Accel.TCG


def test_override_wins_and_the_choice_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sys_root, dev_kvm = host(tmp_path, "kvm", "kvm_pvm")
    with caplog.at_level(logging.INFO, logger="berth.qemu"):
        choice = choose_accel(Accel.KVM, sys_root=sys_root, dev_kvm=dev_kvm)
    assert choice.accel is Accel.KVM
    assert "accelerator kvm (kvm requested)" in caplog.text


def test_this_machine_boots_under_tcg() -> None:
    # MACHINE-NOTES: /dev/kvm here is kvm_pvm, whose guests die.
    if not Path("/sys/module/kvm_pvm").exists():
        pytest.skip("not a kvm_pvm machine")
    assert choose_accel().accel is Accel.TCG


def test_missing_firmware_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(FirmwareNotFound, match="ovmf package"):
        find_firmware(((str(tmp_path / "CODE.fd"), str(tmp_path / "VARS.fd")),))
    (tmp_path / "CODE.fd").touch()
    (tmp_path / "VARS.fd").touch()
    fw = find_firmware(((str(tmp_path / "CODE.fd"), str(tmp_path / "VARS.fd")),))
    assert fw.code == tmp_path / "CODE.fd"
