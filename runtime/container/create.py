"""`create`: resolve the image, build the spec, make the container's dirs and record."""

from __future__ import annotations

import os
import secrets
import time
from typing import TYPE_CHECKING

from runtime.container import caps
from runtime.container.errors import InvalidRequest
from runtime.container.spec import CreateRequest, NetworkMode, build_spec
from runtime.container.state import State
from runtime.rootfs import Volume, VolumeKind
from runtime.store.containers import ContainerRecord

if TYPE_CHECKING:
    from runtime.container.manager import ContainerManager

_LEFT = ("brave", "calm", "eager", "fond", "keen", "lucid", "merry", "quiet", "sharp", "tidy",
         "vivid", "witty", "bold", "cool", "deft", "sunny")
_RIGHT = ("hopper", "lovelace", "turing", "ritchie", "thompson", "torvalds", "knuth", "liskov",
          "hamilton", "noether", "curie", "shannon", "backus", "kay", "lamport", "perlman")


def generate_name(taken: set[str]) -> str:
    while True:
        name = f"{secrets.choice(_LEFT)}_{secrets.choice(_RIGHT)}"
        if name in taken:
            name = f"{name}_{secrets.randbelow(1000)}"
        if name not in taken:
            return name


def allocate_uid_base(mgr: ContainerManager) -> int:
    """The lowest free range subuid_base + n*subuid_count among existing containers."""
    cfg = mgr.config
    used = {c.record.uid_base for c in mgr.containers.values()}
    n = 0
    while cfg.subuid_base + n * cfg.subuid_count in used:
        n += 1
    return cfg.subuid_base + n * cfg.subuid_count


def network_mode(mgr: ContainerManager, mode: str) -> tuple[str, list[str]]:
    mode = mode or NetworkMode.NONE.value
    if mode in (NetworkMode.NONE, NetworkMode.HOST):
        return mode, []
    if mgr.network is None:
        if mode in ("bridge", "default"):
            return NetworkMode.NONE.value, [
                "networking is not available in this daemon: the container has only loopback"]
        raise InvalidRequest(f"network {mode} not found")
    return mode, []


def resolve_volumes(mgr: ContainerManager, req: CreateRequest,
                    image_volumes: tuple[str, ...]) -> tuple[list[Volume], list[str]]:
    vols: list[Volume] = []
    anonymous: list[str] = []
    seen: set[str] = set()
    for v in req.volumes:
        dst = os.path.normpath(v.destination)
        if not dst.startswith("/"):
            raise InvalidRequest(f"invalid mount config: mount path must be absolute: {dst}")
        if dst in seen:
            raise InvalidRequest(f"Duplicate mount point: {dst}")
        seen.add(dst)
        if v.is_bind:
            # Docker creates a missing bind source directory.
            os.makedirs(v.source, exist_ok=True)
            vols.append(Volume(v.source, dst, v.read_only, VolumeKind.BIND))
        else:
            info = mgr.volumes.create(v.source or None)
            if info.anonymous:
                anonymous.append(info.name)
            vols.append(Volume(str(info.mountpoint), dst, v.read_only, VolumeKind.VOLUME))
    for t in req.tmpfs:
        dst = os.path.normpath(t.split(":", 1)[0])
        if dst not in seen:
            seen.add(dst)
            vols.append(Volume("", dst, False, VolumeKind.TMPFS))
    for dst in image_volumes:
        dst = os.path.normpath(dst)
        if dst not in seen:
            seen.add(dst)
            info = mgr.volumes.create(None)
            anonymous.append(info.name)
            vols.append(Volume(str(info.mountpoint), dst, False, VolumeKind.VOLUME))
    return vols, anonymous


def prepare(mgr: ContainerManager, req: CreateRequest) -> ContainerRecord:
    """Validate everything first, then write: a bad request leaves nothing behind."""
    image = mgr.images.resolve(req.image)
    container_id = secrets.token_hex(32)
    spec = build_spec(req, image.config, container_id)
    caps.resolve(spec.cap_add, spec.cap_drop)
    mode, warnings = network_mode(mgr, spec.network_mode)
    if mode != spec.network_mode:
        import dataclasses

        spec = dataclasses.replace(spec, network_mode=mode)
    name = (req.name or "").lstrip("/") or generate_name(
        {c.record.name for c in mgr.containers.values()})
    userns = mgr.config.userns if req.userns is None else req.userns
    uid_base = allocate_uid_base(mgr) if userns else 0
    volumes, anonymous = resolve_volumes(mgr, req, image.config.volumes)
    if spec.network_mode not in ("none", "host"):
        # For the network provider (added by the networking helper, issue 4): -P
        # publishes the image's EXPOSE ports too, and a --link to this container
        # shows its whole environment (image ENV + -e), as Docker's did.
        opts = dict(req.network_options)
        given = opts.get("ExposedPorts")
        exposed = {str(p) for p in given} if isinstance(given, (list, tuple)) else set()
        opts["ExposedPorts"] = sorted(exposed | set(image.config.exposed_ports))
        opts["Env"] = list(spec.env)
        import dataclasses

        req = dataclasses.replace(req, network_options=opts)
    data = mgr.data_dir(container_id)
    for sub in ("upper", "work"):
        (data / sub).mkdir(parents=True, exist_ok=True)
        if uid_base:
            os.chown(data / sub, uid_base, uid_base)
    return ContainerRecord(
        id=container_id, name=name, created=time.time(), image_ref=req.image,
        image_id=image.id, layers=tuple(str(p) for p in image.layer_dirs), request=req,
        spec=spec, state=State(), uid_base=uid_base, volumes=tuple(volumes),
        anonymous_volumes=tuple(anonymous), warnings=tuple(warnings))
