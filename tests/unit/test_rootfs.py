"""The mount plan of a container, applied to the recording fake (no root)."""

from __future__ import annotations

from runtime.rootfs import (
    MASKED_PATHS,
    Mask,
    Mount,
    Pivot,
    ReadOnlyPath,
    RemountReadOnly,
    RootfsSpec,
    Volume,
    VolumeKind,
    apply,
    container_plan,
    host_plan,
    host_teardown,
)
from runtime.sys import MountFlag, Umount
from runtime.sys.fake import RecordingSys


def spec(**kw: object) -> RootfsSpec:
    base: dict[str, object] = dict(
        layers=("/img/l0", "/img/l1"), upper="/c/upper", work="/c/work",
        rootfs="/run/c/rootfs", staging="/run/c/stage",
    )
    base.update(kw)
    return RootfsSpec(**base)  # type: ignore[arg-type]


def test_overlay_lists_layers_top_first_through_idmapped_binds() -> None:
    steps = host_plan(spec())
    overlay = [s for s in steps if isinstance(s, Mount) and s.fstype == "overlay"]
    assert len(overlay) == 1
    assert overlay[0].data == ("lowerdir=/run/c/stage/l1:/run/c/stage/l0,"
                               "upperdir=/c/upper,workdir=/c/work,userxattr")
    sys = RecordingSys(kinds={"/data": "dir"})
    apply(steps, sys, userns_fd=7)
    assert sys.named("idmapped_bind") == [("/img/l0", "/run/c/stage/l0", 7),
                                          ("/img/l1", "/run/c/stage/l1", 7)]


def test_without_userns_the_layers_are_used_directly() -> None:
    steps = host_plan(spec(idmap=False))
    overlay = next(s for s in steps if isinstance(s, Mount) and s.fstype == "overlay")
    assert overlay.data == "lowerdir=/img/l1:/img/l0,upperdir=/c/upper,workdir=/c/work"
    assert host_teardown(spec(idmap=False)) == ["/run/c/rootfs"]


def test_volumes_mount_parents_first_and_ro_ones_are_remounted_keeping_locked_flags() -> None:
    vols = (Volume("/srv/b", "/data/sub", read_only=True), Volume("/srv/a", "/data"),
            Volume("", "/scratch", kind=VolumeKind.TMPFS))
    s = spec(volumes=vols)
    sys = RecordingSys(kinds={"/srv/a": "dir", "/srv/b": "dir", "/run/c/stage/v0": "dir",
                              "/run/c/stage/v2": "dir"},
                       flags_by_path={"/run/c/rootfs/data/sub": MountFlag.NOSUID | MountFlag.NODEV})
    apply(host_plan(s), sys, userns_fd=3)
    assert [a[:2] for a in sys.named("idmapped_bind")][2:] == [("/srv/a", "/run/c/stage/v0"),
                                                              ("/srv/b", "/run/c/stage/v2")]
    sys.calls.clear()
    apply(container_plan(s), sys)
    binds = [(a[0], a[1]) for a in sys.named("mount") if a[0].startswith("/run/c/stage")]
    assert binds == [("/run/c/stage/v0", "/run/c/rootfs/data"),
                     ("/run/c/stage/v2", "/run/c/rootfs/data/sub")]
    remounts = [a for a in sys.named("mount") if a[1] == "/run/c/rootfs/data/sub"
                and a[3] & MountFlag.REMOUNT]
    assert remounts == [("none", "/run/c/rootfs/data/sub", None,
                         MountFlag.REMOUNT | MountFlag.BIND | MountFlag.RDONLY
                         | MountFlag.NOSUID | MountFlag.NODEV, None)]
    assert ("tmpfs", "/run/c/rootfs/scratch", "tmpfs") in [a[:3] for a in sys.named("mount")]
    assert host_teardown(s)[:3] == ["/run/c/rootfs", "/run/c/stage/v0", "/run/c/stage/v2"]


def test_masked_paths_hide_files_with_dev_null_and_dirs_with_empty_tmpfs() -> None:
    sys = RecordingSys(kinds={"/run/c/rootfs/proc/kcore": "file",
                              "/run/c/rootfs/proc/acpi": "dir"})
    apply(container_plan(spec()), sys)
    mounts = sys.named("mount")
    assert ("/dev/null", "/run/c/rootfs/proc/kcore", None, MountFlag.BIND, None) in mounts
    assert ("tmpfs", "/run/c/rootfs/proc/acpi", "tmpfs", MountFlag.RDONLY, "size=0") in mounts
    # paths that do not exist are left alone
    assert not [m for m in mounts if m[1] == "/run/c/rootfs/proc/keys"]
    masks = [s.path for s in container_plan(spec()) if isinstance(s, Mask)]
    assert masks == ["/run/c/rootfs" + p for p in MASKED_PATHS]


def test_masked_dirs_share_one_empty_read_only_tmpfs() -> None:
    sys = RecordingSys(kinds={"/run/c/rootfs/proc/acpi": "dir",
                              "/run/c/rootfs/sys/firmware": "dir"})
    apply(container_plan(spec()), sys)
    mounts = sys.named("mount")
    assert [m for m in mounts if m[2] == "tmpfs" and m[4] == "size=0"] == [
        ("tmpfs", "/run/c/rootfs/proc/acpi", "tmpfs", MountFlag.RDONLY, "size=0")]
    firmware = [m for m in mounts if m[1] == "/run/c/rootfs/sys/firmware"]
    assert firmware == [
        ("/run/c/rootfs/proc/acpi", "/run/c/rootfs/sys/firmware", None, MountFlag.BIND, None),
        ("none", "/run/c/rootfs/sys/firmware", None,
         MountFlag.REMOUNT | MountFlag.BIND | MountFlag.RDONLY, None)]


def test_readonly_paths_and_rootfs_are_applied_before_and_after_pivot() -> None:
    plan = container_plan(spec(read_only=True))
    kinds = [type(s) for s in plan]
    pivot = kinds.index(Pivot)
    assert all(i < pivot for i, k in enumerate(kinds) if k in (Mask, ReadOnlyPath))
    assert plan[-1] == RemountReadOnly("/")
    sys = RecordingSys(kinds={"/run/c/rootfs/proc/sys": "dir"})
    apply(plan, sys)
    assert ("/run/c/rootfs/proc/sys", "/run/c/rootfs/proc/sys", None,
            MountFlag.BIND | MountFlag.REC, None) in sys.named("mount")
    assert sys.named("pivot_root") == [(".", ".")]
    assert sys.named("umount") == [(".", Umount.DETACH)]
    assert sys.named("mount")[-1][1:4] == ("/", None,
                                           MountFlag.REMOUNT | MountFlag.BIND | MountFlag.RDONLY)


def test_dev_is_a_tmpfs_with_host_nodes_bound_and_proc_sys_under_the_rootfs() -> None:
    sys = RecordingSys()
    apply(container_plan(spec()), sys)
    targets = [(a[1], a[2]) for a in sys.named("mount")]
    assert targets[:4] == [("/", None), ("/run/c/rootfs", None), ("/run/c/rootfs/proc", "proc"),
                           ("/run/c/rootfs/dev", "tmpfs")]
    assert ("/run/c/rootfs/dev/null", None) in targets
    assert ("/run/c/rootfs/dev/pts", "devpts") in targets
    assert ("/run/c/rootfs/sys", "sysfs") in targets
    assert ("pts/ptmx", "/run/c/rootfs/dev/ptmx") in sys.named("symlink")


def test_host_network_binds_the_hosts_sys_read_only() -> None:
    plan = container_plan(spec(new_netns=False))
    assert Mount("/sys", "/run/c/rootfs/sys", None, MountFlag.BIND | MountFlag.REC) in plan
    assert RemountReadOnly("/run/c/rootfs/sys") in plan


def test_engine_files_are_bound_straight_from_the_host_not_staged() -> None:
    s = spec(volumes=(Volume("/data", "/data"),
                      Volume("/run/c/hosts", "/etc/hosts", kind=VolumeKind.FILE)))
    host = host_plan(s)
    # Only the bind volume is staged (idmapped); the engine's file is not touched here.
    assert not any("/run/c/hosts" in str(step) for step in host)
    assert "/run/c/hosts" not in " ".join(host_teardown(s))
    binds = [m for m in container_plan(s) if isinstance(m, Mount)
             and m.target == "/run/c/rootfs/etc/hosts"]
    assert binds == [Mount("/run/c/hosts", "/run/c/rootfs/etc/hosts", None,
                           MountFlag.BIND | MountFlag.REC)]
