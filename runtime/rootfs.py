"""A container's filesystem as a plan of mount steps, carried out by `_clone` (C).

Two phases (see runtime/container/README.md for why):

1. `host_plan` runs in the cloner (the spawner), in the host mount namespace:
   each image layer (and each volume) is bound into the container's staging
   dir through an idmapped mount (so files owned by host root appear owned by
   the container's mapped root), then overlayfs is mounted on the rootfs dir.
   The container's child copies these mounts when it unshares its mount
   namespace; the daemon then detaches its own
   copies (`host_teardown`), so no container mount is left in the host.
2. `container_plan` runs in the child, in its own mount namespace:
   /proc, a minimal /dev, /sys, volumes, masked and read-only paths,
   pivot_root, and the read-only remount of / if asked.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from runtime.sys import MountFlag, Sys, Umount

# Docker's defaults (moby oci/defaults.go).
MASKED_PATHS: tuple[str, ...] = (
    "/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
    "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
)
READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)
DEVICES: tuple[str, ...] = ("null", "zero", "full", "random", "urandom", "tty")
DEV_SYMLINKS: tuple[tuple[str, str], ...] = (
    ("/proc/self/fd", "fd"), ("/proc/self/fd/0", "stdin"), ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"), ("pts/ptmx", "ptmx"),
)
_NOSUID_NODEV_NOEXEC = MountFlag.NOSUID | MountFlag.NODEV | MountFlag.NOEXEC


class VolumeKind(StrEnum):
    BIND = "bind"
    VOLUME = "volume"
    TMPFS = "tmpfs"
    # A file the engine wrote for this container alone (/etc/hosts, /etc/hostname,
    # /etc/resolv.conf), already owned by its mapped root: no idmapped staging mount
    # (3 fewer mounts per start); the child moves in a copy of its mount (TreeBind).
    FILE = "file"


_UNSTAGED = (VolumeKind.TMPFS, VolumeKind.FILE)


@dataclass(frozen=True)
class Volume:
    """A mount into the container: host source (a dir or a file) -> destination."""

    source: str
    destination: str
    read_only: bool = False
    kind: VolumeKind = VolumeKind.BIND


@dataclass(frozen=True)
class RootfsSpec:
    layers: tuple[str, ...]          # lowest first, as the image store gives them
    upper: str
    work: str
    rootfs: str                      # where overlayfs is mounted (host path)
    staging: str                     # dir for idmapped layer/volume mounts (host path)
    volumes: tuple[Volume, ...] = ()
    read_only: bool = False
    idmap: bool = True               # bind layers/volumes through the container's userns
    new_netns: bool = True           # sysfs needs a netns of our own inside a userns
    cgroupns: bool = True
    masked_paths: tuple[str, ...] = MASKED_PATHS
    readonly_paths: tuple[str, ...] = READONLY_PATHS
    shm_size: int = 64 * 1024 * 1024


# --- steps ------------------------------------------------------------------

@dataclass(frozen=True)
class Mkdir:
    path: str


@dataclass(frozen=True)
class Touch:
    path: str


@dataclass(frozen=True)
class Symlink:
    target: str
    link: str


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    fstype: str | None
    flags: MountFlag
    data: str | None = None


@dataclass(frozen=True)
class IdmapBind:
    source: str
    target: str


@dataclass(frozen=True)
class RemountReadOnly:
    """Remount a bind read-only, keeping the flags the kernel locked on it."""

    target: str


@dataclass(frozen=True)
class MountPoint:
    """Create target as a dir or an empty file, matching what source is."""

    source: str
    target: str


@dataclass(frozen=True)
class Mask:
    path: str


@dataclass(frozen=True)
class ReadOnlyPath:
    path: str


@dataclass(frozen=True)
class Pivot:
    root: str


@dataclass(frozen=True)
class TreeBind:
    """Bind source on target through a copy of source's mount that the cloner takes
    before the clone (open_tree), moved in by the child: the container's root need not
    be able to reach source by its path (a data root under a 0700 dir, as /root)."""

    source: str
    target: str


Step = (Mkdir | Touch | Symlink | Mount | IdmapBind | RemountReadOnly | MountPoint | Mask
        | ReadOnlyPath | Pivot | TreeBind)


def _in(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _sorted_volumes(volumes: Iterable[Volume]) -> list[Volume]:
    # Parents before children (moby sorts mounts by path depth), stable otherwise.
    return sorted(volumes, key=lambda v: os.path.normpath(v.destination).count("/"))


def staged_layer(spec: RootfsSpec, index: int) -> str:
    return os.path.join(spec.staging, f"l{index}")


def staged_volume(spec: RootfsSpec, index: int) -> str:
    return os.path.join(spec.staging, f"v{index}")


def host_plan(spec: RootfsSpec) -> list[Step]:
    """Steps for the daemon: idmapped layers and volumes, then the overlay."""
    steps: list[Step] = []
    lowers: list[str] = []
    # overlayfs lists lowerdirs top first.
    for i, layer in enumerate(spec.layers):
        if spec.idmap:
            target = staged_layer(spec, i)
            steps += [Mkdir(target), IdmapBind(layer, target)]
            lowers.append(target)
        else:
            lowers.append(layer)
    for i, vol in enumerate(_sorted_volumes(spec.volumes)):
        if vol.kind in _UNSTAGED:
            continue
        target = staged_volume(spec, i)
        steps.append(MountPoint(vol.source, target))
        if spec.idmap:
            steps.append(IdmapBind(vol.source, target))
        else:
            steps.append(Mount(vol.source, target, None, MountFlag.BIND | MountFlag.REC))
    data = (f"lowerdir={':'.join(reversed(lowers))},upperdir={spec.upper},"
            f"workdir={spec.work}")
    if spec.idmap:
        # Copy-up must not try to set trusted.* xattrs the container cannot read.
        data += ",userxattr"
    steps += [Mkdir(spec.rootfs), Mount("overlay", spec.rootfs, "overlay", MountFlag.NONE, data)]
    return steps


def host_teardown(spec: RootfsSpec) -> list[str]:
    """Mount points the daemon detaches (rootfs first), missing ones are skipped."""
    targets = [spec.rootfs]
    targets += [staged_volume(spec, i) for i, v in enumerate(_sorted_volumes(spec.volumes))
                if v.kind not in _UNSTAGED]
    if spec.idmap:
        targets += [staged_layer(spec, i) for i in range(len(spec.layers))]
    return targets


def container_plan(spec: RootfsSpec) -> list[Step]:
    """Steps for the container's child, in its own mount namespace."""
    r = spec.rootfs
    steps: list[Step] = [Mount("none", "/", None, MountFlag.REC | MountFlag.PRIVATE),
                         # Mounts copied into a namespace owned by our userns are locked
                         # and pivot_root refuses a locked new root: bind it afresh.
                         Mount(r, r, None, MountFlag.BIND | MountFlag.REC)]
    steps += [Mkdir(_in(r, "proc")),
              Mount("proc", _in(r, "proc"), "proc", _NOSUID_NODEV_NOEXEC)]
    dev = _in(r, "dev")
    steps += [Mkdir(dev),
              Mount("tmpfs", dev, "tmpfs", MountFlag.NOSUID | MountFlag.STRICTATIME,
                    "mode=755,size=65536k")]
    for name in DEVICES:
        # No mknod in a user namespace: bind the host's nodes instead (as rootless runc does).
        steps += [Touch(f"{dev}/{name}"),
                  Mount(f"/dev/{name}", f"{dev}/{name}", None, MountFlag.BIND)]
    steps += [Symlink(target, f"{dev}/{link}") for target, link in DEV_SYMLINKS]
    steps += [Mkdir(f"{dev}/pts"),
              Mount("devpts", f"{dev}/pts", "devpts", MountFlag.NOSUID | MountFlag.NOEXEC,
                    "newinstance,ptmxmode=0666,mode=0620,gid=5"),
              Mkdir(f"{dev}/shm"),
              Mount("shm", f"{dev}/shm", "tmpfs", _NOSUID_NODEV_NOEXEC,
                    f"mode=1777,size={spec.shm_size}"),
              Mkdir(f"{dev}/mqueue"),
              Mount("mqueue", f"{dev}/mqueue", "mqueue", _NOSUID_NODEV_NOEXEC)]
    sys_dir = _in(r, "sys")
    steps.append(Mkdir(sys_dir))
    if spec.new_netns:
        steps.append(Mount("sysfs", sys_dir, "sysfs", _NOSUID_NODEV_NOEXEC | MountFlag.RDONLY))
    else:
        # sysfs may only be mounted by the owner of the netns: bind the host's.
        steps += [Mount("/sys", sys_dir, None, MountFlag.BIND | MountFlag.REC),
                  RemountReadOnly(sys_dir)]
    if spec.cgroupns:
        steps.append(Mount("cgroup2", f"{sys_dir}/fs/cgroup", "cgroup2",
                           _NOSUID_NODEV_NOEXEC | MountFlag.RDONLY))
    for i, vol in enumerate(_sorted_volumes(spec.volumes)):
        target = _in(r, vol.destination)
        if vol.kind is VolumeKind.TMPFS:
            steps += [Mkdir(target),
                      Mount("tmpfs", target, "tmpfs",
                            _NOSUID_NODEV_NOEXEC | (MountFlag.RDONLY if vol.read_only
                                                    else MountFlag.NONE), "mode=1777")]
            continue
        if vol.kind is VolumeKind.FILE:
            steps += [Touch(target), TreeBind(vol.source, target)]
        else:
            staged = staged_volume(spec, i)
            steps += [MountPoint(staged, target),
                      Mount(staged, target, None, MountFlag.BIND | MountFlag.REC)]
        if vol.read_only:
            steps.append(RemountReadOnly(target))
    steps += [Mask(_in(r, p)) for p in spec.masked_paths]
    steps += [ReadOnlyPath(_in(r, p)) for p in spec.readonly_paths]
    steps.append(Pivot(r))
    if spec.read_only:
        steps.append(RemountReadOnly("/"))
    return steps


def detach_all(targets: Iterable[str], sys: Sys) -> None:
    """Lazily unmount each target; not mounted or missing means already done."""
    for target in targets:
        try:
            sys.umount(target, Umount.DETACH)
        except OSError as e:
            if e.errno not in (22, 2):  # EINVAL: not a mount point; ENOENT: gone
                raise
