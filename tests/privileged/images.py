"""Test images made from Debian's busybox-static: a ~2 MB rootfs, no network needed.

`busybox_rootfs_tar` writes a rootfs tar (busybox plus one symlink per
applet, /etc/passwd and /etc/group, the usual empty directories) that
`berth import` / `docker import` turn into an image. `import_busybox` does
that through a daemon's API.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Mapping
from pathlib import Path

from runtime.run import run

BUSYBOX = Path("/bin/busybox")
PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = b"root:x:0:\nnogroup:x:65534:\n"
DIRS = ("bin", "dev", "etc", "proc", "sys", "tmp", "root", "var", "var/tmp", "usr", "usr/bin",
        "run")


def applets() -> list[str]:
    listing = run([str(BUSYBOX), "--list"]).stdout.split()
    return sorted(a for a in listing if a and a != "busybox")


def busybox_rootfs_tar(dest: Path, links: Mapping[str, str] | None = None) -> Path:
    """A rootfs tar at `dest`: /bin/busybox, /bin/<applet> -> busybox, passwd, group;
    and `links`, more symlinks (path in the rootfs -> target)."""
    with tarfile.open(dest, "w") as tar:
        for d in DIRS:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d in ("tmp", "var/tmp") else 0o755
            tar.addfile(info)
        info = tar.gettarinfo(str(BUSYBOX), arcname="bin/busybox")
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        with BUSYBOX.open("rb") as f:
            tar.addfile(info, f)
        symlinks = {f"bin/{applet}": "busybox" for applet in applets()} | dict(links or {})
        for path, target in symlinks.items():
            link = tarfile.TarInfo(path)
            link.type = tarfile.SYMTYPE
            link.linkname = target
            link.mode = 0o777
            tar.addfile(link)
        for name, data in (("etc/passwd", PASSWD), ("etc/group", GROUP),
                           ("etc/hostname", b"busybox\n")):
            entry = tarfile.TarInfo(name)
            entry.size = len(data)
            entry.mode = 0o644
            tar.addfile(entry, io.BytesIO(data))
    return dest


def import_busybox(berth: Callable[..., object], tar_dir: Path,
                   ref: str = "busybox:latest") -> Path:
    """Build the busybox rootfs tar in `tar_dir` and `berth import` it as `ref`."""
    tar = busybox_rootfs_tar(tar_dir / "busybox-rootfs.tar")
    berth("import", str(tar), ref)
    return tar
