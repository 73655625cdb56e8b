"""Volume routes: create, list, inspect, remove, prune (the engine's VolumeStore)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from runtime.api.backend import backend
from runtime.api.container_views import rfc3339
from runtime.api.containers import json_body, manager
from runtime.api.errors import BadRequest
from runtime.api.filters import bool_filter, query_bool, request_filters
from runtime.api.routes import RouteTable
from runtime.container.manager import ContainerManager
from runtime.rootfs import VolumeKind
from runtime.volumes import VolumeInfo, VolumeInUse

VOLUME_FILTERS = ("name", "label", "dangling", "driver")


def users(mgr: ContainerManager) -> dict[str, list[str]]:
    """Volume mountpoint -> ids of the containers that use it."""
    out: dict[str, list[str]] = {}
    for c in mgr.containers.values():
        for v in c.record.volumes:
            if v.kind is VolumeKind.VOLUME:
                out.setdefault(v.source, []).append(c.id)
    return out


def volume_json(v: VolumeInfo, refs: int | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "Name": v.name, "Driver": v.driver, "Mountpoint": str(v.mountpoint),
        "CreatedAt": rfc3339(v.created_at), "Labels": dict(v.labels) or None,
        "Scope": "local", "Options": None,
    }
    if refs is not None:
        doc["UsageData"] = {"Size": _size(v), "RefCount": refs}
    return doc


def _size(v: VolumeInfo) -> int:
    total = 0
    for p in v.mountpoint.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            continue
    return total


async def create(request: web.Request) -> web.StreamResponse:
    mgr = manager(request)
    body = await json_body(request)
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    driver = body.get("Driver") or "local"
    if driver != "local":
        raise BadRequest(f"volume driver {driver!r} is not available: only 'local'")
    if body.get("DriverOpts"):
        raise BadRequest("driver options are not supported by the local driver of berthd")
    info = mgr.volumes.create(body.get("Name") or None, dict(body.get("Labels") or {}),
                              anonymous=not body.get("Name"))
    backend(request).publish("volume", "create", info.name, {"driver": "local"})
    return web.json_response(volume_json(info), status=201)


def _wanted(v: VolumeInfo, f: dict[str, list[str]], in_use: bool) -> bool:
    if "name" in f and not any(n in v.name for n in f["name"]):
        return False
    if "driver" in f and v.driver not in f["driver"]:
        return False
    dangling = bool_filter(f, "dangling")
    if dangling is not None and dangling == in_use:
        return False
    def has(label: str) -> bool:
        key, sep, value = label.partition("=")
        return key in v.labels and (not sep or v.labels[key] == value)

    return all(has(x) for x in f.get("label", [])) and \
        not any(has(x) for x in f.get("label!", []))


async def list_volumes(request: web.Request) -> web.StreamResponse:
    mgr = manager(request)
    f = request_filters(request, VOLUME_FILTERS)
    used = users(mgr)
    vols = [volume_json(v) for v in mgr.volumes.list()
            if _wanted(v, f, str(v.mountpoint) in used)]
    return web.json_response({"Volumes": vols, "Warnings": []})


async def inspect(request: web.Request) -> web.StreamResponse:
    return web.json_response(volume_json(manager(request).volumes.inspect(
        request.match_info["name"])))


async def delete(request: web.Request) -> web.StreamResponse:
    mgr = manager(request)
    name = request.match_info["name"]
    force = query_bool(request, "force")
    try:
        info = mgr.volumes.inspect(name)
    except LookupError:
        if force:
            return web.Response(status=204)
        raise
    holders = mgr.volume_users(info.name)
    if holders:
        raise VolumeInUse(f"remove {name}: volume is in use - [{', '.join(holders)}]")
    mgr.volumes.remove(name, force=force)
    backend(request).publish("volume", "destroy", name, {"driver": "local"})
    return web.Response(status=204)


async def prune(request: web.Request) -> web.StreamResponse:
    mgr = manager(request)
    f = request_filters(request, ("label", "label!", "all"))
    everything = bool_filter(f, "all") or False
    used = users(mgr)
    deleted, reclaimed = [], 0
    for v in mgr.volumes.list():
        if str(v.mountpoint) in used or not (everything or v.anonymous):
            continue
        if not _wanted(v, {k: f.get(k, []) for k in ("label", "label!")}, False):
            continue
        reclaimed += _size(v)
        mgr.volumes.remove(v.name)
        backend(request).publish("volume", "destroy", v.name, {"driver": "local"})
        deleted.append(v.name)
    return web.json_response({"VolumesDeleted": deleted or None, "SpaceReclaimed": reclaimed})


def usage(mgr: ContainerManager) -> list[tuple[VolumeInfo, int]]:
    """Each volume with the number of containers using it (read on the event loop)."""
    used = users(mgr)
    return [(v, len(used.get(str(v.mountpoint), []))) for v in mgr.volumes.list()]


def sized(vols: list[tuple[VolumeInfo, int]]) -> list[dict[str, Any]]:
    """Their JSON with sizes (walks the volumes: call it in a worker thread)."""
    return [volume_json(v, refs) for v, refs in vols]


def add_routes(table: RouteTable) -> None:
    table.post("/volumes/create", create)
    table.post("/volumes/prune", prune)
    table.get("/volumes", list_volumes)
    table.get("/volumes/{name}", inspect)
    table.delete("/volumes/{name}", delete)


