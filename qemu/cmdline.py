"""`qemu_cmd`: a MachineSpec plus per-machine paths -> the QEMU argv."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qemu.accel import Accel, accel_args
from qemu.firmware import Firmware
from qemu.spec import BootMode, ConsoleMode, MachineSpec

QEMU_BINARY = "qemu-system-x86_64"


@dataclass(frozen=True)
class MachinePaths:
    """Where one machine keeps its files (overlay, EFI vars, logs, sockets)."""

    state_dir: Path

    @property
    def overlay(self) -> Path:
        return self.state_dir / "disk.qcow2"

    @property
    def efi_vars(self) -> Path:
        return self.state_dir / "efi-vars.fd"

    @property
    def console_log(self) -> Path:
        return self.state_dir / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.state_dir / "qemu.log"

    @property
    def shell_log(self) -> Path:
        """Transcript of the test shell: what was sent (>>>) and what came back."""
        return self.state_dir / "shell.log"

    @property
    def qmp_socket(self) -> Path:
        return self.state_dir / "qmp.sock"

    @property
    def shell_socket(self) -> Path:
        return self.state_dir / "shell.sock"


def _opt(value: str) -> str:
    # QEMU's option parser splits on ',' and reads ',,' as a literal comma.
    return value.replace(",", ",,")


def kernel_cmdline(spec: MachineSpec) -> str:
    """The full command line for direct kernel boot."""
    parts = [spec.image.cmdline.strip(), f"root=PARTLABEL={spec.root_partlabel}"]
    parts.extend(spec.extra_kernel_args())
    return " ".join(p for p in parts if p)


def qemu_cmd(
    spec: MachineSpec,
    paths: MachinePaths,
    accel: Accel,
    firmware: Firmware | None = None,
    *,
    binary: str = QEMU_BINARY,
) -> list[str]:
    argv = [
        binary,
        "-name", spec.name,
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        # smm=off: our OVMF build has no SMM, and TCG is faster without it.
        "-machine", "q35,smm=off",
        *accel_args(accel),
        "-m", str(spec.memory_mb),
        "-smp", str(spec.cpus),
        "-drive", f"if=none,id=disk0,file={_opt(str(paths.overlay))},format=qcow2,discard=unmap",
        "-device", "virtio-blk-pci,drive=disk0,bootindex=1",
        "-device", "virtio-rng-pci",
        "-netdev", "user,id=net0,restrict=on"
        + "".join("," + f.hostfwd() for f in spec.forwards),
        "-device", "virtio-net-pci,netdev=net0",
    ]
    log = _opt(str(paths.console_log))
    if spec.console is ConsoleMode.STDIO:
        # mux: Ctrl-A X quits, Ctrl-A C reaches the monitor; signal=off so
        # Ctrl-C goes to the guest rather than killing QEMU.
        argv += [
            "-chardev", f"stdio,id=console,mux=on,signal=off,logfile={log},logappend=on",
            "-mon", "chardev=console,mode=readline",
        ]
    else:
        argv += ["-chardev", f"file,id=console,path={log},append=on"]
    argv += ["-serial", "chardev:console"]
    # ttyS1 always exists so the guest's serial numbering never depends on
    # whether the test shell is wanted.
    argv += [
        "-chardev", f"socket,id=shell,path={_opt(str(paths.shell_socket))},server=on,wait=off",
        "-serial", "chardev:shell",
        "-chardev", f"socket,id=qmp,path={_opt(str(paths.qmp_socket))},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
    ]
    if spec.boot is BootMode.UEFI:
        if firmware is None:
            raise ValueError("UEFI boot needs OVMF firmware")
        argv += [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={_opt(str(firmware.code))}",
            "-drive", f"if=pflash,format=raw,unit=1,file={_opt(str(paths.efi_vars))}",
            # systemd-stub appends this to the UKI's command line (Secure Boot off).
            "-smbios", "type=11,value=" + _opt(
                "io.systemd.stub.kernel-cmdline-extra=" + " ".join(spec.extra_kernel_args())
            ),
        ]
    else:
        argv += [
            "-kernel", str(spec.image.kernel),
            "-initrd", str(spec.image.initrd),
            "-append", kernel_cmdline(spec),
        ]
    for cred in spec.credentials:
        argv += ["-smbios", "type=11,value=" + _opt(cred.smbios_value())]
    argv += list(spec.extra_qemu_args)
    return argv
