"""Image routes: json, inspect, history, tag, delete, prune, load, import, save.

The image store is synchronous (SQLite and file I/O), so each call runs in a
worker thread. Uploaded archives are spooled to a temporary file under the
data root first: the store needs a seekable tar, and a failed upload then
changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from runtime.api.backend import backend
from runtime.api.errors import BadRequest
from runtime.api.filters import bool_filter, query_bool, request_filters
from runtime.api.routes import RouteTable
from runtime.store import archive, views
from runtime.store.images import ImageFilters, ImageStore, created_unix, familiar

IMAGE_FILTERS = ("dangling", "label", "reference", "before", "since", "until")
_SPOOL_CHUNK = 1 << 20


def registry_auth(request: web.Request) -> Any:
    """Docker's X-Registry-Auth header as (server, Credentials), or None."""
    from runtime.registry.auth import decode_registry_auth

    return decode_registry_auth(request.headers.get("X-Registry-Auth", ""))


def _has_tag(image: str) -> bool:
    return ":" in image.rsplit("/", 1)[-1]


async def json_stream(request: web.Request, docs: AsyncIterator[dict[str, Any]],
                      event: tuple[str, str] | None = None) -> web.StreamResponse:
    """Docker's progress stream: one JSON object per line, errors in-band at the end.

    `event` (action, image name) is published if the stream ended without an error.
    """
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    failed = False
    async for doc in docs:
        failed = failed or bool(doc.get("error") or doc.get("errorDetail"))
        await resp.write(json.dumps(doc).encode() + b"\r\n")
    if event is not None and not failed:
        action, name = event
        backend(request).publish("image", action, name, {"name": name})
    await resp.write_eof()
    return resp


async def push_image(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    tag = request.query.get("tag", "")
    ref = f"{name}:{tag}" if tag and not _has_tag(name) else name
    service = backend(request).need("puller")
    return await json_stream(request, service.push(ref, registry_auth(request)),
                             event=("push", ref))


def store_of(request: web.Request) -> ImageStore:
    store: ImageStore = backend(request).need("images")
    return store


@contextlib.asynccontextmanager
async def spooled_body(request: web.Request) -> AsyncIterator[Path]:
    """The request body in a temporary file on the data root's filesystem."""
    tmp_dir = backend(request).info.data_root / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-", suffix=".tar")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            while chunk := await request.content.read(_SPOOL_CHUNK):
                f.write(chunk)
        yield path
    finally:
        path.unlink(missing_ok=True)


async def json_lines(request: web.Request, docs: list[dict[str, Any]]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    for doc in docs:
        await resp.write(json.dumps(doc).encode() + b"\r\n")
    await resp.write_eof()
    return resp


def image_filters(request: web.Request, store: ImageStore) -> ImageFilters:
    """Docker's /images/json filters; before=/since= name an image (store reads:
    call in a worker thread)."""
    f = request_filters(request, IMAGE_FILTERS)
    bounds: dict[str, float | None] = {"before": None, "since": None, "until": None}
    for key in bounds:
        if not f.get(key):
            continue
        value = f[key][-1]
        try:
            bounds[key] = views.parse_timestamp(value) if key == "until" else \
                created_unix(store.get(value).created)
        except ValueError as e:
            raise BadRequest(f"invalid filter '{key}={value}': {e}") from None
    before = [b for b in (bounds["before"], bounds["until"]) if b is not None]
    return ImageFilters(dangling=bool_filter(f, "dangling"), labels=tuple(f.get("label", ())),
                        reference=tuple(f.get("reference", ())),
                        include_intermediate=query_bool(request, "all"),
                        created_before=min(before) if before else None,
                        created_after=bounds["since"])


async def list_images(request: web.Request) -> web.StreamResponse:
    store = store_of(request)

    def summaries() -> list[dict[str, Any]]:
        filters = image_filters(request, store)
        return [views.summary(store, rec) for rec in store.list_images(filters)]

    return web.json_response(await asyncio.to_thread(summaries))


# dockerd (API 1.47) gives an image's Config every field of a container config; an OCI
# config has only those set. Clients read them unguarded (docker-py: attrs["Config"]["Env"]).
_IMAGE_CONFIG_DEFAULTS: dict[str, Any] = {
    "Hostname": "", "Domainname": "", "User": "", "AttachStdin": False,
    "AttachStdout": False, "AttachStderr": False, "Tty": False, "OpenStdin": False,
    "StdinOnce": False, "Env": None, "Cmd": None, "Image": "", "Volumes": None,
    "WorkingDir": "", "Entrypoint": None, "OnBuild": None, "Labels": None}


async def inspect_image(request: web.Request) -> web.StreamResponse:
    store = store_of(request)
    name = request.match_info["name"]
    doc = await asyncio.to_thread(lambda: views.inspect(store, store.get(name)))
    doc["Config"] = {**_IMAGE_CONFIG_DEFAULTS, **(doc.get("Config") or {})}
    return web.json_response(doc)


async def image_history(request: web.Request) -> web.StreamResponse:
    store = store_of(request)
    name = request.match_info["name"]
    return web.json_response(await asyncio.to_thread(
        lambda: views.history(store, store.get(name))))


async def tag_image(request: web.Request) -> web.StreamResponse:
    store = store_of(request)
    repo = request.query.get("repo", "")
    if not repo:
        raise BadRequest("repository name (repo) is required")
    target = f"{repo}:{request.query.get('tag') or 'latest'}"
    source = request.match_info["name"]

    def do_tag() -> str:
        store.tag(source, target)
        return store.lookup(source)

    image_id = await asyncio.to_thread(do_tag)
    backend(request).publish("image", "tag", image_id, {"name": target})
    return web.Response(status=201)


async def delete_image(request: web.Request) -> web.StreamResponse:
    store = store_of(request)
    force = query_bool(request, "force")
    # noprune=1 keeps the untagged parents (a build's step images) that rmi removes.
    result = await asyncio.to_thread(store.remove, request.match_info["name"], force=force,
                                     prune=not query_bool(request, "noprune"))
    publish_removals(request, result)
    return web.json_response(result)


def publish_removals(request: web.Request, entries: list[dict[str, str]]) -> None:
    """Docker's untag and delete events, one per entry of an rmi or prune answer."""
    for entry in entries:
        for key, action in (("Untagged", "untag"), ("Deleted", "delete")):
            if key in entry:
                backend(request).publish("image", action, entry[key], {"name": entry[key]})


async def prune_images(request: web.Request) -> web.StreamResponse:
    store = store_of(request)
    f = request_filters(request, ("dangling", "label", "until"))
    until = None
    if f.get("until"):
        try:
            until = views.parse_timestamp(f["until"][-1])
        except ValueError as e:
            raise BadRequest(f"invalid filter 'until={f['until'][-1]}': {e}") from None
    dangling = bool_filter(f, "dangling")
    result = await asyncio.to_thread(
        store.prune, all_images=dangling is False,
        filters=ImageFilters(labels=tuple(f.get("label", ())), created_before=until))
    publish_removals(request, result["ImagesDeleted"] or [])
    backend(request).publish("image", "prune", "",
                             {"reclaimed": str(result["SpaceReclaimed"])})
    return web.json_response(result)


async def load_images(request: web.Request) -> web.StreamResponse:
    store = store_of(request)
    async with spooled_body(request) as path:
        loaded = await asyncio.to_thread(archive.load, store, path)
    docs: list[dict[str, Any]] = []
    for item in loaded:
        names = [familiar(t) for t in item.tags]
        backend(request).publish("image", "load", item.image.id,
                                 {"name": names[0] if names else item.image.id})
        if names:
            docs.extend({"stream": f"Loaded image: {n}\n"} for n in names)
        else:
            docs.append({"stream": f"Loaded image ID: {item.image.id}\n"})
    return await json_lines(request, docs)


async def create_image(request: web.Request) -> web.StreamResponse:
    """POST /images/create: `fromSrc=-` imports a rootfs tar; `fromImage` pulls."""
    q = request.query
    if q.get("fromImage"):
        image = q["fromImage"]
        want = q.get("tag", "")
        ref = image if not want or "@" in image or _has_tag(image) else \
            f"{image}{'@' if want.startswith('sha256:') else ':'}{want}"
        service = backend(request).need("puller")
        return await json_stream(request, service.pull(ref, registry_auth(request)),
                                 event=("pull", ref))
    if q.get("fromSrc") != "-":
        raise BadRequest("give fromSrc=- (a rootfs tar in the body) or fromImage")
    store = store_of(request)
    tag = _import_tag(q.get("repo", ""), q.get("tag", ""))
    changes = q.getall("changes", [])
    # dockerd's wording when no -m is given; history shows no CreatedBy for an import
    message = q.get("message") or "Imported from -"
    async with spooled_body(request) as path:
        def do_import() -> str:
            with path.open("rb") as f:
                return archive.import_rootfs(store, f, tag=tag, changes=changes,
                                             message=message).id

        image_id = await asyncio.to_thread(do_import)
    backend(request).publish("image", "import", image_id, {"name": tag or image_id})
    return await json_lines(request, [{"status": image_id}])


def _import_tag(repo: str, tag: str) -> str | None:
    """repo=NAME&tag=T, or (the docker CLI's way) repo=NAME:T with no tag."""
    if not repo:
        return None
    if not tag and ":" in repo.rsplit("/", 1)[-1]:
        return repo
    return f"{repo}:{tag or 'latest'}"


async def save_images(request: web.Request) -> web.StreamResponse:
    store = store_of(request)
    names = request.query.getall("names", [])
    if "name" in request.match_info:
        names = [request.match_info["name"]]
    if not names:
        raise BadRequest("give the images to save: ?names=IMAGE")
    tmp_dir = backend(request).info.data_root / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=tmp_dir) as spool:
        await asyncio.to_thread(archive.save, store, names, spool)
        spool.seek(0)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-tar"})
        await resp.prepare(request)
        while chunk := await asyncio.to_thread(spool.read, _SPOOL_CHUNK):
            await resp.write(chunk)
        await resp.write_eof()
        return resp


def add_routes(table: RouteTable) -> None:
    # Fixed paths before the {name:.+} ones: image names may contain '/'.
    table.get("/images/json", list_images)
    table.post("/images/load", load_images)
    table.post("/images/create", create_image)
    table.post("/images/prune", prune_images)
    table.get("/images/get", save_images)
    table.get("/images/{name:.+}/json", inspect_image)
    table.get("/images/{name:.+}/history", image_history)
    table.get("/images/{name:.+}/get", save_images)
    table.post("/images/{name:.+}/tag", tag_image)
    table.post("/images/{name:.+}/push", push_image)
    table.delete("/images/{name:.+}", delete_image)
