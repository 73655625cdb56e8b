"""`hostos qemu`: boot the built image interactively, console in the terminal.

Fresh mTLS material is made for each run: the server's half goes to the
guest as systemd credentials, the client's half stays in the state folder
for the docker CLI (DOCKER_CERT_PATH).
"""

from __future__ import annotations

import argparse
import shlex
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hostos.artifacts import MANIFEST_NAME, load_image
from hostos.errors import HostosError
from qemu.accel import Accel
from qemu.firmware import FirmwareNotFound
from qemu.spec import API_PORT, BootMode, ConsoleMode, Credential, Forward, MachineSpec
from runtime import tls
from runtime.run import CommandError

if TYPE_CHECKING:
    from qemu.machine import Machine

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = REPO / "build" / "image"
DEFAULT_STATE = REPO / "build" / "qemu"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "qemu",
        help="boot the image under QEMU with the serial console in this terminal",
        description=(
            "Boot the Berth image under QEMU on a throw-away disk overlay, serial console "
            "in this terminal (Ctrl-A X quits QEMU). berthd's mTLS API port is forwarded "
            "to 127.0.0.1; the docker CLI settings are printed before the boot."
        ),
    )
    accel = p.add_mutually_exclusive_group()
    accel.add_argument("--kvm", dest="accel", action="store_const", const=Accel.KVM,
                       help="force KVM (default: KVM only where it really works)")
    accel.add_argument("--tcg", dest="accel", action="store_const", const=Accel.TCG,
                       help="force TCG software emulation")
    boot = p.add_mutually_exclusive_group()
    boot.add_argument("--uefi", dest="boot", action="store_const", const=BootMode.UEFI,
                      help="boot through OVMF and systemd-boot, as real hosts do")
    boot.add_argument("--direct", dest="boot", action="store_const", const=BootMode.DIRECT,
                      help="boot the UKI's kernel and initrd directly (default; faster)")
    p.set_defaults(boot=BootMode.DIRECT)
    p.add_argument("--image", type=Path, default=DEFAULT_IMAGE,
                   help=f"image folder (or its {MANIFEST_NAME}) (default: {DEFAULT_IMAGE})")
    p.add_argument("--memory", type=int, default=2048, metavar="MB",
                   help="guest memory in MiB (default: 2048)")
    p.add_argument("--cpus", type=int, default=2, metavar="N",
                   help="guest CPUs (default: 2)")
    p.add_argument("--port", type=int, default=0,
                   help="host port on 127.0.0.1 for the API (default: a free one)")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE,
                   help=f"overlay, logs, sockets and client certs (default: {DEFAULT_STATE})")
    p.add_argument("--keep-disk", action="store_true",
                   help="keep the disk overlay across runs instead of starting fresh")
    p.add_argument("--append", action="append", default=[], metavar="ARG",
                   help="extra kernel argument (repeatable)")
    p.set_defaults(func=qemu)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def banner(port: int, certs: tls.TlsFiles, machine: Machine) -> str:
    flags = " ".join(shlex.quote(f) for f in certs.docker_flags())
    lines = [
        f"berth: API (mTLS) forwarded to 127.0.0.1:{port}; "
        f"client certificates in {certs.directory}",
        f"  docker {flags} -H tcp://127.0.0.1:{port} version",
        f"  or: export DOCKER_HOST=tcp://127.0.0.1:{port} DOCKER_TLS_VERIFY=1 "
        f"DOCKER_CERT_PATH={shlex.quote(str(certs.directory))}",
        f"  console log {machine.paths.console_log}",
        "  A root shell opens on this console early in the boot (press Enter for a prompt);",
        "  it exists only because hostos qemu asks for it on the kernel command line.",
        "  Ctrl-A X quits QEMU.",
    ]
    return "\n".join(lines) + "\n"


def qemu(args: argparse.Namespace) -> int:
    # Here, not at the top: qemu.machine needs qemu.qmp, which the host OS image
    # does not ship, and every other hostos verb must work there.
    from qemu.machine import Machine, MachineError

    image_dir: Path = args.image
    if image_dir.name == MANIFEST_NAME:
        image_dir = image_dir.parent
    image = load_image(image_dir)
    missing = image.missing()
    if missing:
        names = ", ".join(map(str, missing))
        raise HostosError(f"image files missing: {names}; run `hostos build`")
    state: Path = args.state_dir
    certs = tls.generate(state / "tls")
    port = args.port or free_port()
    try:
        spec = MachineSpec(
            image,
            boot=args.boot,
            memory_mb=args.memory,
            cpus=args.cpus,
            forwards=(Forward(API_PORT, port),),
            credentials=tuple(Credential(n, d) for n, d in certs.server_credentials().items()),
            kernel_args=tuple(args.append),
            persistent=args.keep_disk,
            console=ConsoleMode.STDIO,
            test_shell=False,
            console_shell=True,
        )
    except ValueError as e:
        raise HostosError(str(e)) from e
    machine = Machine(spec, state, accel=args.accel)
    # Before the boot: once QEMU owns the terminal (raw mode) it is the console's.
    sys.stderr.write(banner(port, certs, machine))
    sys.stderr.flush()
    try:
        with machine:
            return machine.wait_exit(None)
    except (MachineError, FirmwareNotFound, CommandError) as e:
        raise HostosError(str(e)) from e
