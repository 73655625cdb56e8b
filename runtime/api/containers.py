"""Container routes: create, start, stop, kill, restart, wait, pause, unpause, inspect,
json, top, stats, rename, delete, prune, resize (logs and attach are in streams.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from runtime.api import container_views as views
from runtime.api.backend import backend, streaming
from runtime.api.errors import BadRequest
from runtime.api.errors import Conflict as ApiConflict
from runtime.api.filters import query_bool, query_int, request_filters
from runtime.api.routes import RouteTable
from runtime.container.errors import NoSuchContainer, NotRunning
from runtime.container.manager import ContainerManager
from runtime.container.state import Status, WaitCondition
from runtime.store.containers import ContainerRecord

CONTAINER_FILTERS = ("name", "id", "status", "label", "ancestor", "exited", "before", "since",
                     "network", "volume")
# Filters the API applies itself on the summaries (the engine's list knows the others).
_VIEW_FILTERS = ("before", "since", "network", "volume")
STATS_INTERVAL = 1.0


def manager(request: web.Request) -> ContainerManager:
    mgr: ContainerManager = backend(request).need("containers")
    return mgr


def ref(request: web.Request) -> str:
    return request.match_info["id"]


def no_content() -> web.Response:
    return web.Response(status=204)


async def json_body(request: web.Request) -> Any:
    if not request.can_read_body:
        return {}
    try:
        return await request.json()
    except json.JSONDecodeError as e:
        raise BadRequest(f"invalid JSON body: {e}") from None


def log_type(mgr: ContainerManager) -> str:
    return mgr.open_log_kind()


def log_path(mgr: ContainerManager, container_id: str) -> str:
    if log_type(mgr) != "json-file":
        return ""
    return str(mgr.data_dir(container_id) / f"{container_id}-json.log")


def exec_ids(mgr: ContainerManager, container_id: str) -> list[str]:
    return [s.id for s in mgr.execs.values() if s.container_id == container_id]


async def create(request: web.Request) -> web.StreamResponse:
    from runtime.net.options import options_from_docker

    mgr = manager(request)
    body = await json_body(request)
    req = views.create_request(body, request.query.get("name") or None,
                               options_from_docker(body) if isinstance(body, dict) else {})
    rec = await mgr.create(req)
    warnings = list(rec.warnings) + (views.ignored_fields(body) if isinstance(body, dict)
                                     else [])
    if views.asks_limits(req):   # mgr.info() counts every container's state
        engine = mgr.info()
        warnings += views.unenforced_limits(req, engine.cgroup_missing, engine.cgroup_root)
    return web.json_response({"Id": rec.id, "Warnings": warnings}, status=201)


async def start(request: web.Request) -> web.StreamResponse:
    await manager(request).start(ref(request))
    return no_content()


async def stop(request: web.Request) -> web.StreamResponse:
    await manager(request).stop(ref(request), timeout=query_int(request, "t"))
    return no_content()


async def kill(request: web.Request) -> web.StreamResponse:
    try:
        await manager(request).kill(ref(request), request.query.get("signal") or "SIGKILL")
    except NotRunning as e:
        # dockerd's words: "Cannot kill container: web: Container <id> is not running"
        raise ApiConflict(f"Cannot kill container: {ref(request)}: {e}") from None
    return no_content()


async def restart(request: web.Request) -> web.StreamResponse:
    await manager(request).restart(ref(request), timeout=query_int(request, "t"))
    return no_content()


async def pause(request: web.Request) -> web.StreamResponse:
    await manager(request).pause(ref(request))
    return no_content()


async def unpause(request: web.Request) -> web.StreamResponse:
    await manager(request).unpause(ref(request))
    return no_content()


@streaming
async def wait(request: web.Request) -> web.StreamResponse:
    """Headers go out at once (a client may wait on them before `start`), the body at exit."""
    mgr = manager(request)
    try:
        condition = WaitCondition(request.query.get("condition") or "not-running")
    except ValueError:
        raise BadRequest(f"invalid condition {request.query.get('condition')!r}: use "
                         "not-running, next-exit or removed") from None
    mgr.get(ref(request))  # 404 before the 200 goes out
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    result = await mgr.wait(ref(request), condition)
    # dockerd reports a failed start's error to a not-running waiter, not to a removed
    # one: `docker run --rm IMG nosuchcmd` prints the error once, not a second time.
    error = result.error if condition is not WaitCondition.REMOVED else ""
    doc = {"StatusCode": result.status_code, "Error": {"Message": error} if error else None}
    await resp.write(json.dumps(doc).encode() + b"\n")
    await resp.write_eof()
    return resp


async def inspect(request: web.Request) -> web.StreamResponse:
    mgr = manager(request)
    rec = mgr.inspect(ref(request))
    doc = views.inspect_json(
        rec, log_path=log_path(mgr, rec.id), log_type=log_type(mgr),
        exec_ids=exec_ids(mgr, rec.id), swap_limit="memory" not in mgr.info().cgroup_missing)
    if query_bool(request, "size"):
        await add_sizes(request, mgr, [(doc, rec)])
    return web.json_response(doc)


async def list_containers(request: web.Request) -> web.StreamResponse:
    mgr = manager(request)
    filters = request_filters(request, CONTAINER_FILTERS)
    limit = query_int(request, "limit") or 0
    view_filters = {k: filters.pop(k) for k in _VIEW_FILTERS if k in filters}
    show_all = (query_bool(request, "all") or limit > 0 or "before" in view_filters
                or "since" in view_filters)
    records = [r for r in mgr.list(all=show_all, filters=filters)
               if _view_match(mgr, r, view_filters)]
    if limit > 0:
        records = records[:limit]
    now = time.time()
    docs = [views.summary_json(r, now) for r in records]
    if query_bool(request, "size"):
        await add_sizes(request, mgr, list(zip(docs, records, strict=True)))
    return web.json_response(docs)


def _view_match(mgr: ContainerManager, rec: ContainerRecord, f: dict[str, list[str]]) -> bool:
    """dockerd's before=/since= (created before/after that container), network=, volume=."""
    if "before" in f and not all(rec.created < mgr.inspect(v).created for v in f["before"]):
        return False
    if "since" in f and not all(rec.created > mgr.inspect(v).created for v in f["since"]):
        return False
    if "network" in f:
        nets = views.network_json(rec)["Networks"]
        names = set(nets) | {rec.spec.network_mode}   # host/none, or not started yet
        ids = {str(n.get("NetworkID", "")) for n in nets.values()}
        if not any(v in names or any(i and i.startswith(v) for i in ids)
                   for v in f["network"]):
            return False
    if "volume" in f:
        mounts = views.mounts_json(rec)
        if not any(v in (m.get("Name"), m["Source"], m["Destination"])
                   for v in f["volume"] for m in mounts):
            return False
    return True


def upper_size(upper: Path) -> int:
    """Bytes the container wrote: its overlay upper dir (dockerd's SizeRw)."""
    total = 0
    for dirpath, _dirs, files in os.walk(upper):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


async def add_sizes(request: web.Request, mgr: ContainerManager,
                    pairs: list[tuple[dict[str, Any], Any]]) -> None:
    """SizeRw and SizeRootFs (image + SizeRw), for ps -s and inspect -s; walked in a thread."""
    store = backend(request).images

    def image_size(image_id: str) -> int:
        try:
            return int(store.get(image_id).size) if store is not None else 0
        except LookupError:
            return 0

    def measure() -> None:
        for doc, rec in pairs:
            doc["SizeRw"] = upper_size(mgr.data_dir(rec.id) / "upper")
            doc["SizeRootFs"] = doc["SizeRw"] + image_size(rec.image_id)

    await asyncio.to_thread(measure)


async def top(request: web.Request) -> web.StreamResponse:
    mgr = manager(request)
    result = await mgr.top(ref(request), request.query.get("ps_args") or "-ef")
    mgr.publish(mgr.get(ref(request)), "top")
    return web.json_response({"Titles": list(result.titles),
                              "Processes": [list(p) for p in result.processes]})


@streaming
async def stats(request: web.Request) -> web.StreamResponse:
    mgr = manager(request)
    stream = query_bool(request, "stream", default=True)
    one_shot = query_bool(request, "one-shot")
    rec = mgr.inspect(ref(request))

    def sample() -> tuple[Any, int, float]:
        return mgr.stats(rec.id), views.system_cpu_ns(), time.time()

    pre, pre_sys, pre_read = (None, 0, 0.0)
    if not (one_shot and not stream):
        # CPU % needs two samples: Docker's precpu_stats is the previous second's.
        pre, pre_sys, pre_read = sample()
        await asyncio.sleep(STATS_INTERVAL)
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    try:
        # A stream goes on while the container exists, running or not (dockerd keeps it
        # open: `docker stats` shows a stopped container at zero, and a restarted one).
        while True:
            try:
                rec = mgr.inspect(rec.id)
            except NoSuchContainer:
                break
            cur, cur_sys, cur_read = sample()
            doc = views.stats_json(rec, cur, pre, cur_sys, pre_sys, cur_read, pre_read)
            await resp.write(json.dumps(doc).encode() + b"\n")
            if not stream:
                break
            pre, pre_sys, pre_read = cur, cur_sys, cur_read
            await asyncio.sleep(STATS_INTERVAL)
        await resp.write_eof()
    except ConnectionResetError:
        pass   # the client went away (docker stats ended with ^C)
    return resp


async def rename(request: web.Request) -> web.StreamResponse:
    name = request.query.get("name")
    if not name:
        raise BadRequest("give the new name: ?name=NEW")
    mgr = manager(request)
    c = mgr.get(ref(request))
    new = name.lstrip("/")
    # dockerd's words for the two refusals a user meets most.
    if new == c.record.name:
        raise BadRequest("Renaming a container with the same name as its current name")
    holder = next((o for o in mgr.containers.values()
                   if o.record.name == new and o.id != c.id), None)
    if holder is not None:
        raise ApiConflict(
            f'Error when allocating new name: Conflict. The container name "/{new}" is '
            f'already in use by container "{holder.id}". You have to remove (or rename) '
            f'that container to be able to reuse that name.')
    await mgr.rename(c.id, name)
    return no_content()


async def delete(request: web.Request) -> web.StreamResponse:
    mgr, force = manager(request), query_bool(request, "force")
    c = mgr.get(ref(request))
    if c.state.status is Status.PAUSED and not force:
        raise ApiConflict(f"You cannot remove a paused container {c.id}. Unpause and then "
                          f"stop the container before attempting removal or force remove")
    await mgr.remove(c.id, force=force, volumes=query_bool(request, "v"))
    return no_content()


def _labels_match(labels: dict[str, str], wanted: list[str], negated: list[str]) -> bool:
    """dockerd's label= (all must match) and label!= (none may match): KEY or KEY=VALUE."""
    def has(spec: str) -> bool:
        key, sep, value = spec.partition("=")
        return key in labels and (not sep or labels[key] == value)

    return all(has(w) for w in wanted) and not any(has(n) for n in negated)


async def prune(request: web.Request) -> web.StreamResponse:
    from runtime.store.views import parse_timestamp

    f = request_filters(request, ("until", "label", "label!"))  # others refused, as dockerd
    try:
        until = min((parse_timestamp(u) for u in f.get("until", [])), default=None)
    except ValueError as e:
        raise BadRequest(str(e)) from None
    mgr = manager(request)
    if not f:
        gone = await mgr.prune()
    else:
        gone = []
        for rec in mgr.list(all=True):
            if rec.state.status.has_process or rec.state.status is Status.RESTARTING:
                continue
            if until is not None and rec.created >= until:
                continue
            if not _labels_match(dict(rec.spec.labels), f.get("label", []),
                                 f.get("label!", [])):
                continue
            await mgr.remove(rec.id, force=False, volumes=False)
            gone.append(rec.id)
    backend(request).publish("container", "prune", "", {"reclaimed": "0"})
    return web.json_response({"ContainersDeleted": gone or None, "SpaceReclaimed": 0})


def add_routes(table: RouteTable) -> None:
    table.post("/containers/create", create)
    table.get("/containers/json", list_containers)
    table.post("/containers/prune", prune)
    table.get("/containers/{id}/json", inspect)
    table.post("/containers/{id}/start", start)
    table.post("/containers/{id}/stop", stop)
    table.post("/containers/{id}/kill", kill)
    table.post("/containers/{id}/restart", restart)
    table.post("/containers/{id}/pause", pause)
    table.post("/containers/{id}/unpause", unpause)
    table.post("/containers/{id}/wait", wait)
    table.get("/containers/{id}/top", top)
    table.get("/containers/{id}/stats", stats)
    table.post("/containers/{id}/rename", rename)
    table.delete("/containers/{id}", delete)
