"""What a machine is: a frozen description that `qemu_cmd` turns into argv.

Nothing here touches the host; `qemu/machine.py` owns the side effects.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

# Guest port berthd serves the Docker API on (mTLS), Docker's convention.
API_PORT = 2376

# The UKI's kernel finds its root partition through gpt-auto, which needs a
# boot loader to name the disk; direct kernel boot names it instead.
# systemd-repart's default label for the x86-64 root partition type:
DEFAULT_ROOT_PARTLABEL = "root-x86-64"

# The serial ports, in order of -serial: the console and the test shell.
CONSOLE_TTY = "ttyS0"
SHELL_TTY = "ttyS1"

# systemd credential names: printable, no '/', at most NAME_MAX.
_CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9_.@:+-]{1,255}$")


class BootableImage(Protocol):
    """The image artifacts the harness boots (hostos.build.Image provides them)."""

    @property
    def disk(self) -> Path: ...

    @property
    def kernel(self) -> Path: ...

    @property
    def initrd(self) -> Path: ...

    @property
    def cmdline(self) -> str: ...


class BootMode(StrEnum):
    # OVMF + systemd-boot + UKI: what real hosts do; boot counting and A/B.
    UEFI = "uefi"
    # -kernel/-initrd/-append of the UKI's parts: skips OVMF (~5 s under TCG).
    DIRECT = "direct"


class ConsoleMode(StrEnum):
    LOG = "log"  # serial console to a log file only (tests, benchmarks)
    STDIO = "stdio"  # serial console in the terminal, also logged (hostos qemu)


class ForwardProto(StrEnum):
    TCP = "tcp"
    UDP = "udp"


@dataclass(frozen=True)
class Forward:
    """A host port on 127.0.0.1 forwarded to a guest port; host_port 0 = any free."""

    guest_port: int
    host_port: int = 0
    proto: ForwardProto = ForwardProto.TCP

    def __post_init__(self) -> None:
        if not 1 <= self.guest_port <= 65535:
            raise ValueError(f"guest port {self.guest_port} is out of range")
        if not 0 <= self.host_port <= 65535:
            raise ValueError(f"host port {self.host_port} is out of range")

    def hostfwd(self) -> str:
        # Bound to 127.0.0.1 only: the API must never face the host's network.
        return f"hostfwd={self.proto}:127.0.0.1:{self.host_port}-:{self.guest_port}"


@dataclass(frozen=True)
class Credential:
    """A systemd credential handed to the guest through SMBIOS type 11."""

    name: str
    data: bytes

    def __post_init__(self) -> None:
        if not _CREDENTIAL_NAME.match(self.name):
            raise ValueError(f"invalid systemd credential name {self.name!r}")

    def smbios_value(self) -> str:
        # .binary: base64, so PEM newlines (and anything else) survive; base64
        # has no ',' which QEMU's option parser would need doubled.
        return f"io.systemd.credential.binary:{self.name}=" + base64.b64encode(self.data).decode()


@dataclass(frozen=True)
class MachineSpec:
    image: BootableImage
    boot: BootMode = BootMode.DIRECT
    memory_mb: int = 2048
    cpus: int = 2
    forwards: tuple[Forward, ...] = (Forward(API_PORT),)
    credentials: tuple[Credential, ...] = ()
    kernel_args: tuple[str, ...] = ()
    # A root shell on ttyS1 (systemd.debug_shell) for Machine.run(); exists
    # only because the harness asks for it on the kernel command line.
    test_shell: bool = True
    # A root shell on the console instead of the login prompt (hostos qemu:
    # the image has no root password). systemd runs one debug shell only, so
    # this excludes the test shell.
    console_shell: bool = False
    # Print unit start/stop lines on the console ("Started berthd.service"
    # appears once the service signalled READY=1).
    show_status: bool = True
    # Keep the disk overlay (and EFI variables) across boots of this machine.
    persistent: bool = False
    root_partlabel: str = DEFAULT_ROOT_PARTLABEL
    console: ConsoleMode = ConsoleMode.LOG
    name: str = "berth"
    extra_qemu_args: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.memory_mb < 256:
            raise ValueError(f"memory {self.memory_mb} MiB is too small to boot (need >= 256)")
        if self.cpus < 1:
            raise ValueError(f"cpus must be >= 1, not {self.cpus}")
        seen: set[tuple[ForwardProto, int]] = set()
        for f in self.forwards:
            key = (f.proto, f.guest_port)
            if key in seen:
                raise ValueError(f"guest port {f.proto}/{f.guest_port} is forwarded twice")
            seen.add(key)
        if self.console_shell and self.test_shell:
            raise ValueError("console_shell and test_shell exclude each other (one debug shell)")
        names = [c.name for c in self.credentials]
        if len(names) != len(set(names)):
            raise ValueError(f"a credential is given twice: {sorted(names)}")

    def extra_kernel_args(self) -> list[str]:
        """Arguments the harness adds to the image's own command line."""
        args = [f"console={CONSOLE_TTY}"]
        if self.show_status:
            args.append("systemd.show_status=1")
        if self.console is ConsoleMode.LOG or self.console_shell:
            # Nobody types at a logged console, and while a getty holds it
            # systemd stops printing status lines there ("Started ...").
            args.append("systemd.getty_auto=0")
        if self.test_shell:
            args.append(f"systemd.debug_shell={SHELL_TTY}")
        elif self.console_shell:
            args.append(f"systemd.debug_shell={CONSOLE_TTY}")
        args.extend(self.kernel_args)
        return args
