"""Boot time (QEMU start -> berthd READY) by boot mode, and the image's sizes.

Runs alternate between the modes so that load from other work on the
machine hits both alike; the table gives the median of each and the ratio
to direct kernel boot.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hostos.artifacts import ImageArtifacts, load_image
from qemu.accel import Accel
from qemu.machine import Machine
from qemu.spec import BootMode, Credential, MachineSpec
from runtime import tls

DESCRIPTION = "seconds from QEMU start to berthd READY (median), image sizes"
ROOT = Path(__file__).resolve().parents[1]
READY_UNIT = "berthd.service"
MB = 1_000_000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", type=Path, default=ROOT / "build" / "image",
                   help="image folder with berth.json")
    p.add_argument("--runs", type=int, default=3, help="boots per mode (default 3)")
    p.add_argument("--modes", default="direct,uefi",
                   help="comma-separated boot modes (direct, uefi)")
    p.add_argument("--accel", type=Accel, default=None, help="kvm or tcg (default: auto)")
    p.add_argument("--timeout", type=float, default=900.0, help="per boot, seconds")


@dataclass(frozen=True)
class BootTime:
    host: float  # QEMU start -> READY seen from the host
    guest: float  # kernel start -> READY, by systemd's own clock


def boot_once(image_dir: Path, mode: BootMode, creds: tuple[Credential, ...],
              accel: Accel | None, timeout: float, state: Path) -> BootTime:
    # Loaded per boot: a rebuild between boots replaces the disk and the
    # usrhash together, and a stale usrhash cannot find the new /usr.
    spec = MachineSpec(load_image(image_dir), boot=mode, credentials=creds)
    with Machine(spec, state, accel=accel) as m:
        host = m.wait_for_unit(READY_UNIT, timeout)
        usec = m.check(f"systemctl show -P ActiveEnterTimestampMonotonic {READY_UNIT}")
        return BootTime(host, int(usec.strip()) / 1e6)


def sizes_table(image: ImageArtifacts) -> list[tuple[str, str]]:
    s = image.sizes
    if s is None:
        return [("sizes", "not recorded in berth.json")]
    rows = [
        ("UKI", f"{s.uki / MB:.1f} MB"),
        ("  kernel", f"{s.kernel / MB:.1f} MB"),
        ("  initrd", f"{s.initrd / MB:.1f} MB"),
    ]
    if s.usr_tree is not None:
        rows.append(("/usr tree (raw)", f"{s.usr_tree / MB:.1f} MB"))
    if s.usr_erofs is not None:
        rows.append(("/usr erofs (compressed)", f"{s.usr_erofs / MB:.1f} MB"))
        rows.append(("UKI + compressed /usr", f"{(s.uki + s.usr_erofs) / MB:.1f} MB"))
    rows.append(("disk image apparent", f"{s.disk_apparent / MB:.1f} MB"))
    rows.append(("disk image allocated", f"{s.disk_allocated / MB:.1f} MB"))
    return rows


def main(args: argparse.Namespace) -> int:
    image = load_image(args.image)
    modes = [BootMode(m.strip()) for m in args.modes.split(",") if m.strip()]
    times: dict[BootMode, list[BootTime]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as tmp:
        files = tls.generate(Path(tmp) / "tls")
        creds = tuple(Credential(n, d) for n, d in files.server_credentials().items())
        for i in range(args.runs):
            for mode in modes:
                t = boot_once(args.image, mode, creds, args.accel, args.timeout,
                              Path(tmp) / "vm")
                times[mode].append(t)
                print(f"  run {i + 1}/{args.runs} {mode}: {t.host:.1f} s "
                      f"(kernel -> READY {t.guest:.1f} s)", flush=True)
    base = statistics.median(t.host for t in times[modes[0]])
    print(f"\nQEMU start -> {READY_UNIT} READY ({args.runs} runs each, image {image.version})")
    print(f"{'mode':<8} {'median s':>9} {'min':>7} {'max':>7} {'ratio':>7} {'kernel->READY':>14}")
    for mode in modes:
        hosts = [t.host for t in times[mode]]
        med = statistics.median(hosts)
        guest = statistics.median(t.guest for t in times[mode])
        print(f"{mode!s:<8} {med:>9.1f} {min(hosts):>7.1f} {max(hosts):>7.1f} "
              f"{med / base:>7.2f} {guest:>14.1f}")
    image = load_image(args.image)
    print(f"\nimage {image.version} sizes")
    for name, value in sizes_table(image):
        print(f"{name:<26} {value:>12}")
    return 0
