"""The QEMU command line the harness builds: boot modes, forwards, credentials."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import pytest

from qemu.accel import Accel
from qemu.cmdline import MachinePaths, kernel_cmdline, qemu_cmd
from qemu.firmware import Firmware
from qemu.machine import parse_usernet_forwards
from qemu.spec import BootMode, ConsoleMode, Credential, Forward, ForwardProto, MachineSpec

CMDLINE = "console=ttyS0,115200 rw usrhash=" + "ab" * 32


@dataclass(frozen=True)
class Artifacts:
    disk: Path
    kernel: Path
    initrd: Path
    cmdline: str


IMAGE = Artifacts(Path("/img/berth.raw"), Path("/img/vmlinuz"), Path("/img/initrd"), CMDLINE)
PATHS = MachinePaths(Path("/state"))
FIRMWARE = Firmware(Path("/fw/CODE.fd"), Path("/fw/VARS.fd"))


def opt_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_direct_boot_uses_the_ukis_parts_and_names_the_root() -> None:
    argv = qemu_cmd(MachineSpec(IMAGE, boot=BootMode.DIRECT), PATHS, Accel.TCG)
    assert opt_values(argv, "-kernel") == ["/img/vmlinuz"]
    assert opt_values(argv, "-initrd") == ["/img/initrd"]
    (append,) = opt_values(argv, "-append")
    assert append.startswith(CMDLINE + " ")
    assert "root=PARTLABEL=root-x86-64" in append.split()
    assert "systemd.debug_shell=ttyS1" in append.split()
    assert not any("pflash" in v for v in opt_values(argv, "-drive"))


def test_uefi_boot_uses_pflash_with_a_private_vars_copy() -> None:
    spec = MachineSpec(IMAGE, boot=BootMode.UEFI, kernel_args=("foo=bar,baz",))
    argv = qemu_cmd(spec, PATHS, Accel.TCG, FIRMWARE)
    drives = opt_values(argv, "-drive")
    assert "if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.fd" in drives
    assert "if=pflash,format=raw,unit=1,file=/state/efi-vars.fd" in drives
    assert "-kernel" not in argv and "-append" not in argv
    smbios = opt_values(argv, "-smbios")
    # The comma inside a kernel argument is doubled for QEMU's option parser.
    extra = [s for s in smbios if "kernel-cmdline-extra" in s]
    assert extra == [
        "type=11,value=io.systemd.stub.kernel-cmdline-extra=console=ttyS0 "
        "systemd.show_status=1 systemd.getty_auto=0 systemd.debug_shell=ttyS1 foo=bar,,baz"
    ]


def test_uefi_without_firmware_is_refused() -> None:
    with pytest.raises(ValueError, match="OVMF"):
        qemu_cmd(MachineSpec(IMAGE, boot=BootMode.UEFI), PATHS, Accel.TCG)


def test_disk_is_the_overlay_never_the_image() -> None:
    argv = qemu_cmd(MachineSpec(IMAGE), PATHS, Accel.TCG)
    drives = " ".join(opt_values(argv, "-drive"))
    assert "file=/state/disk.qcow2,format=qcow2" in drives
    assert "/img/berth.raw" not in " ".join(argv)


def test_forwards_listen_on_loopback_only_and_network_is_restricted() -> None:
    forwards = (Forward(2376), Forward(80, 8080), Forward(53, 0, ForwardProto.UDP))
    spec = MachineSpec(IMAGE, forwards=forwards)
    (netdev,) = opt_values(qemu_cmd(spec, PATHS, Accel.TCG), "-netdev")
    parts = netdev.split(",")
    assert "restrict=on" in parts
    fwds = [p for p in parts if p.startswith("hostfwd=")]
    assert fwds == [
        "hostfwd=tcp:127.0.0.1:0-:2376",
        "hostfwd=tcp:127.0.0.1:8080-:80",
        "hostfwd=udp:127.0.0.1:0-:53",
    ]


def test_a_guest_port_cannot_be_forwarded_twice() -> None:
    with pytest.raises(ValueError, match="forwarded twice"):
        MachineSpec(IMAGE, forwards=(Forward(2376), Forward(2376, 9999)))
    with pytest.raises(ValueError, match="out of range"):
        Forward(70000)


def test_credentials_travel_base64_in_smbios_type_11() -> None:
    pem = b"-----BEGIN CERTIFICATE-----\nMIIB,x\n-----END CERTIFICATE-----\n"
    spec = MachineSpec(IMAGE, credentials=(Credential("berth.tls.cert", pem),))
    smbios = opt_values(qemu_cmd(spec, PATHS, Accel.TCG), "-smbios")
    prefix = "type=11,value=io.systemd.credential.binary:berth.tls.cert="
    (value,) = [s for s in smbios if s.startswith(prefix)]
    assert base64.b64decode(value.removeprefix(prefix)) == pem


def test_bad_credential_names_are_refused() -> None:
    for name in ("", "a/b", "x" * 256):
        with pytest.raises(ValueError, match="credential name"):
            Credential(name, b"")
    with pytest.raises(ValueError, match="given twice"):
        MachineSpec(IMAGE, credentials=(Credential("a", b"1"), Credential("a", b"2")))


def test_accelerator_and_resources() -> None:
    spec = MachineSpec(IMAGE, memory_mb=1024, cpus=3)
    tcg = qemu_cmd(spec, PATHS, Accel.TCG)
    kvm = qemu_cmd(spec, PATHS, Accel.KVM)
    assert opt_values(tcg, "-accel") == ["tcg"] and opt_values(tcg, "-cpu") == ["max"]
    assert opt_values(kvm, "-accel") == ["kvm"] and opt_values(kvm, "-cpu") == ["host"]
    assert opt_values(tcg, "-m") == ["1024"] and opt_values(tcg, "-smp") == ["3"]
    with pytest.raises(ValueError, match="too small"):
        MachineSpec(IMAGE, memory_mb=64)


def test_test_shell_is_only_there_when_asked() -> None:
    append = kernel_cmdline(MachineSpec(IMAGE, test_shell=False))
    assert "debug_shell" not in append


def test_interactive_console_gets_the_root_shell_instead_of_a_login() -> None:
    spec = MachineSpec(IMAGE, console=ConsoleMode.STDIO, test_shell=False, console_shell=True)
    args = kernel_cmdline(spec).split()
    assert "systemd.debug_shell=ttyS0" in args and "systemd.getty_auto=0" in args
    with pytest.raises(ValueError, match="exclude each other"):
        MachineSpec(IMAGE, console_shell=True)


def test_console_goes_to_a_log_or_the_terminal() -> None:
    logged = qemu_cmd(MachineSpec(IMAGE), PATHS, Accel.TCG)
    assert "file,id=console,path=/state/console.log,append=on" in opt_values(logged, "-chardev")
    interactive = qemu_cmd(MachineSpec(IMAGE, console=ConsoleMode.STDIO), PATHS, Accel.TCG)
    (stdio,) = [c for c in opt_values(interactive, "-chardev") if c.startswith("stdio,")]
    assert "logfile=/state/console.log" in stdio and "signal=off" in stdio
    # A login prompt only where someone can type at it.
    assert "systemd.getty_auto=0" in kernel_cmdline(MachineSpec(IMAGE)).split()
    stdio_spec = MachineSpec(IMAGE, console=ConsoleMode.STDIO)
    assert "systemd.getty_auto=0" not in kernel_cmdline(stdio_spec).split()
    # ttyS0 is the console, ttyS1 the test shell, in both modes.
    assert opt_values(interactive, "-serial") == ["chardev:console", "chardev:shell"]


def test_usernet_output_gives_the_bound_ports() -> None:
    text = (
        "Hub -1 (net0):\n"
        "  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\n"
        "  TCP[HOST_FORWARD]   9       127.0.0.1 40417       10.0.2.15  2376     0     0\n"
        "  UDP[HOST_FORWARD]   8       127.0.0.1 46079       10.0.2.15    53     0     0\n"
        "  TCP[ESTABLISHED]   12       10.0.2.15 51234        10.0.2.2    80     0     0\n"
    )
    assert parse_usernet_forwards(text) == {
        (ForwardProto.TCP, 2376): 40417,
        (ForwardProto.UDP, 53): 46079,
    }


def test_emergency_mode_on_the_console_ends_the_wait_for_a_shell(tmp_path: Path) -> None:
    from qemu.machine import Machine

    m = Machine(MachineSpec(IMAGE), tmp_path)
    m.paths.console_log.write_text("[  OK  ] Reached target basic.target\n")
    assert m._boot_failure() is None
    with m.paths.console_log.open("a") as f:
        f.write("You are in emergency mode. After logging in, type ...\n")
    reason = m._boot_failure()
    assert reason is not None and "emergency mode" in reason
