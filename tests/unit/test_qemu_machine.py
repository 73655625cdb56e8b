"""The Machine lifecycle against a real QEMU, with OVMF and an empty disk.

No OS is needed to check the harness's own promises: the console is
watched, resets are seen, the base image is never written, a throw-away
disk starts fresh on each boot and a persistent one survives a power cut.
Data reaches the disk through QEMU's own block layer (HMP `qemu-io`), as a
guest's writes would.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from qemu.accel import Accel
from qemu.console import ConsoleTimeout
from qemu.firmware import FirmwareNotFound, find_firmware
from qemu.machine import Machine
from qemu.spec import BootMode, MachineSpec
from runtime.run import run

try:
    find_firmware()
    HAVE_QEMU = shutil.which("qemu-system-x86_64") is not None
except FirmwareNotFound:
    HAVE_QEMU = False
pytestmark = pytest.mark.skipif(not HAVE_QEMU, reason="needs qemu-system-x86 and ovmf")


@dataclass(frozen=True)
class BlankDisk:
    disk: Path
    kernel: Path = Path("/nonexistent")
    initrd: Path = Path("/nonexistent")
    cmdline: str = ""


def machine(tmp_path: Path, *, persistent: bool) -> Machine:
    disk = tmp_path / "blank.raw"
    if not disk.exists():
        with disk.open("wb") as f:
            f.truncate(16 << 20)
    spec = MachineSpec(BlankDisk(disk), boot=BootMode.UEFI, memory_mb=256, cpus=1,
                       persistent=persistent)
    return Machine(spec, tmp_path / "state")


def write_pattern(m: Machine) -> None:
    assert m._monitor is not None
    m._monitor.human('qemu-io disk0 "write -P 0x42 0 4096"')
    m._monitor.human('qemu-io disk0 "flush"')  # as a guest's fsync would


def overlay_has_pattern(m: Machine) -> bool:
    # -U: read the overlay while QEMU holds it, as a second reader.
    out = run(["qemu-io", "-U", "-r", "-f", "qcow2", "-c", "read -P 0x42 0 4096",
               m.paths.overlay], check=False).stdout
    return "read 4096/4096" in out and "verification failed" not in out


def test_console_wait_and_reset_are_seen(tmp_path: Path) -> None:
    with machine(tmp_path, persistent=False) as m:
        m.wait_for(r"BdsDxe", 120)
        mark = m.mark()
        before = m.resets
        m.reset()
        m.wait_reboot(60, after=before)
        assert m.resets == before + 1
        # The firmware runs again after the reset: seen only after the mark.
        m.wait_for(r"BdsDxe", 120, since=mark)
        with pytest.raises(ConsoleTimeout, match=r"(?s)not seen within 1 s.*BdsDxe"):
            m.wait_for(r"no such line", 1)
    assert not m.running


def test_throwaway_disk_is_fresh_on_each_boot_and_image_untouched(tmp_path: Path) -> None:
    m = machine(tmp_path, persistent=False)
    with m:
        write_pattern(m)
        assert overlay_has_pattern(m)
        m.power_cut()
        m.start()
        assert not overlay_has_pattern(m)
    assert not m.paths.overlay.exists()
    assert (tmp_path / "blank.raw").read_bytes()[:4096] == bytes(4096)


def test_persistent_disk_survives_a_power_cut(tmp_path: Path) -> None:
    m = machine(tmp_path, persistent=True)
    with m:
        write_pattern(m)
        m.power_cut()
        assert not m.running
        m.start()
        assert overlay_has_pattern(m)
        # No OS to answer the power button: cut again rather than wait.
        m.power_cut()
    assert overlay_has_pattern(m)
    assert (tmp_path / "blank.raw").read_bytes()[:4096] == bytes(4096)


def listeners(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp) listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, _, hexport = local.partition(":")
            if int(hexport, 16) == port and state == "0A":
                found.add(addr)
    return found


def test_api_port_listens_on_loopback_only(tmp_path: Path) -> None:
    with machine(tmp_path, persistent=False) as m:
        assert listeners(m.api_port) == {"0100007F"}  # 127.0.0.1, nothing else


KERNEL_PANIC = """[    2.555737] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI
[    2.556238] RIP: 0010:sched_clock_cpu+0x9/0x1d0
[    2.558538] Kernel panic - not syncing: Fatal exception in interrupt
"""


@pytest.mark.parametrize(("console", "accel", "boots_again"), [
    (KERNEL_PANIC, Accel.TCG, True),
    # a panic once an init runs is the image's own: no second boot
    ("Booting initrd of Debian\n" + KERNEL_PANIC, Accel.TCG, False),
    ("[    7.1] systemd[1]: x\n" + KERNEL_PANIC, Accel.TCG, False),
    (KERNEL_PANIC, Accel.KVM, False),
    ("[    2.5] all well so far\n", Accel.TCG, False),
])
def test_a_guest_kernel_that_panics_before_init_under_tcg_boots_once_more(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, console: str, accel: Accel,
        boots_again: bool) -> None:
    spec = MachineSpec(BlankDisk(tmp_path / "blank.raw"), boot=BootMode.UEFI, memory_mb=256,
                       cpus=1)
    m = Machine(spec, tmp_path / "state", accel=accel)
    m.paths.state_dir.mkdir(parents=True)
    m.paths.console_log.write_text(console)
    calls: list[str] = []
    monkeypatch.setattr(m, "stop", lambda: calls.append("stop"))
    monkeypatch.setattr(m, "start", lambda: calls.append("start"))
    assert m._boot_again_after_emulator_panic() is boots_again
    assert calls == (["stop", "start"] if boots_again else [])
    assert m._boot_again_after_emulator_panic() is False   # once, never twice
