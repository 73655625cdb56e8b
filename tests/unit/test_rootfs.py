"""The mount plan of a container (no root). `_clone` carries the steps out: what
they do to real mounts is checked by the privileged engine tests (masked and
read-only paths, volumes, a read-only rootfs)."""

from __future__ import annotations

from runtime.rootfs import (
    MASKED_PATHS,
    IdmapBind,
    Mask,
    Mount,
    Pivot,
    ReadOnlyPath,
    RemountReadOnly,
    RootfsSpec,
    Symlink,
    TreeBind,
    Volume,
    VolumeKind,
    container_plan,
    host_plan,
    host_teardown,
)
from runtime.sys import MountFlag


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
    assert [s for s in steps if isinstance(s, IdmapBind)] == [
        IdmapBind("/img/l0", "/run/c/stage/l0"), IdmapBind("/img/l1", "/run/c/stage/l1")]


def test_without_userns_the_layers_are_used_directly() -> None:
    steps = host_plan(spec(idmap=False))
    overlay = next(s for s in steps if isinstance(s, Mount) and s.fstype == "overlay")
    assert overlay.data == "lowerdir=/img/l1:/img/l0,upperdir=/c/upper,workdir=/c/work"
    assert host_teardown(spec(idmap=False)) == ["/run/c/rootfs"]


def test_volumes_mount_parents_first_and_ro_ones_are_remounted() -> None:
    vols = (Volume("/srv/b", "/data/sub", read_only=True), Volume("/srv/a", "/data"),
            Volume("", "/scratch", kind=VolumeKind.TMPFS))
    s = spec(volumes=vols)
    assert [b for b in host_plan(s) if isinstance(b, IdmapBind)][2:] == [
        IdmapBind("/srv/a", "/run/c/stage/v0"), IdmapBind("/srv/b", "/run/c/stage/v2")]
    plan = container_plan(s)
    binds = [(m.source, m.target) for m in plan
             if isinstance(m, Mount) and m.source.startswith("/run/c/stage")]
    assert binds == [("/run/c/stage/v0", "/run/c/rootfs/data"),
                     ("/run/c/stage/v2", "/run/c/rootfs/data/sub")]
    # the remount follows its bind (it keeps the flags the kernel locked: `_clone`)
    sub = plan.index(Mount("/run/c/stage/v2", "/run/c/rootfs/data/sub", None,
                           MountFlag.BIND | MountFlag.REC))
    assert plan[sub + 1] == RemountReadOnly("/run/c/rootfs/data/sub")
    assert RemountReadOnly("/run/c/rootfs/data") not in plan
    assert any(isinstance(m, Mount) and m.fstype == "tmpfs" and m.target == "/run/c/rootfs/scratch"
               for m in plan)
    assert host_teardown(s)[:3] == ["/run/c/rootfs", "/run/c/stage/v0", "/run/c/stage/v2"]


def test_every_masked_path_is_in_the_plan_in_order() -> None:
    masks = [s.path for s in container_plan(spec()) if isinstance(s, Mask)]
    assert masks == ["/run/c/rootfs" + p for p in MASKED_PATHS]


def test_readonly_paths_and_rootfs_are_applied_before_and_after_pivot() -> None:
    plan = container_plan(spec(read_only=True))
    kinds = [type(s) for s in plan]
    pivot = kinds.index(Pivot)
    assert all(i < pivot for i, k in enumerate(kinds) if k in (Mask, ReadOnlyPath))
    assert plan[-2:] == [Pivot("/run/c/rootfs"), RemountReadOnly("/")]
    assert ReadOnlyPath("/run/c/rootfs/proc/sys") in plan


def test_dev_is_a_tmpfs_with_host_nodes_bound_and_proc_sys_under_the_rootfs() -> None:
    plan = container_plan(spec())
    targets = [(m.target, m.fstype) for m in plan if isinstance(m, Mount)]
    assert targets[:4] == [("/", None), ("/run/c/rootfs", None), ("/run/c/rootfs/proc", "proc"),
                           ("/run/c/rootfs/dev", "tmpfs")]
    assert ("/run/c/rootfs/dev/null", None) in targets
    assert ("/run/c/rootfs/dev/pts", "devpts") in targets
    assert ("/run/c/rootfs/sys", "sysfs") in targets
    assert Symlink("pts/ptmx", "/run/c/rootfs/dev/ptmx") in plan


def test_host_network_binds_the_hosts_sys_read_only() -> None:
    plan = container_plan(spec(new_netns=False))
    assert Mount("/sys", "/run/c/rootfs/sys", None, MountFlag.BIND | MountFlag.REC) in plan
    assert RemountReadOnly("/run/c/rootfs/sys") in plan


def test_engine_files_are_moved_in_from_the_host_not_staged() -> None:
    s = spec(volumes=(Volume("/data", "/data"),
                      Volume("/var/lib/c/hosts", "/etc/hosts", kind=VolumeKind.FILE)))
    host = host_plan(s)
    # Only the bind volume is staged (idmapped); the engine's file is not touched here.
    assert not any("/var/lib/c/hosts" in str(step) for step in host)
    assert "/var/lib/c/hosts" not in " ".join(host_teardown(s))
    # The child moves in the copy of its mount the cloner took: never by its host path,
    # which the container's root may not be allowed to reach.
    steps = [m for m in container_plan(s) if "/var/lib/c/hosts" in str(m)]
    assert steps == [TreeBind("/var/lib/c/hosts", "/run/c/rootfs/etc/hosts")]
