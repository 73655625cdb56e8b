"""POST /build (Docker's legacy builder protocol) and GET /images/{name}/provenance.

The body is the context tar; the query names the Dockerfile, tags, build
args, target, labels. Progress goes back as Docker's JSON stream
(`{"stream": "Step 1/5 : FROM ..."}`), the image id in an `aux` message
(what `docker build --iidfile` reads), an error in-band as the last message.
The context is unpacked under `<data-root>/tmp/` and removed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web

from runtime.api.backend import backend
from runtime.api.errors import BadRequest, NotFound
from runtime.api.filters import query_bool
from runtime.api.routes import RouteTable

_CHUNK = 1 << 20
log = logging.getLogger("berth.build")


class ClientGone(Exception):
    """The client hung up: the build stops at its next output (its RUN container is
    removed on the way out), with nothing tagged."""


def _json_map(request: web.Request, name: str) -> dict[str, str]:
    raw = request.query.get(name, "")
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except ValueError:
        raise BadRequest(f"{name}: not valid JSON") from None
    if not isinstance(doc, dict):
        raise BadRequest(f"{name}: want a JSON object")
    # Docker sends buildargs with null values for `--build-arg NAME` taken from the env.
    return {str(k): str(v) for k, v in doc.items() if v is not None}


async def _spool(request: web.Request, dest: Path) -> None:
    with dest.open("wb") as f:
        while chunk := await request.content.read(_CHUNK):
            await asyncio.to_thread(f.write, chunk)


async def build(request: web.Request) -> web.StreamResponse:
    from runtime.build import cache as cache_mod
    from runtime.build import provenance as prov_mod
    from runtime.build.builder import Builder, BuildFailed, BuildOptions
    from runtime.build.cache import BuildCache
    from runtime.build.context import ContextError, apply_dockerignore, extract_context
    from runtime.build.engine import EngineRunner
    from runtime.build.parser import DockerfileError, parse
    from runtime.build.provenance import (
        ProvenanceRecords,
        build_labels,
        git_source_in_tree,
        provenance,
    )

    b = backend(request)
    store = b.need("images")
    manager = b.need("containers")
    store.ensure_schema(cache_mod.DDL)
    store.ensure_schema(prov_mod.DDL)
    q = request.query
    if q.get("remote"):
        raise BadRequest("remote build contexts cannot be fetched: there is no network here; "
                         "send the context as a tar")
    tags = tuple(t for t in q.getall("t", []) if t)
    dockerfile = q.get("dockerfile") or "Dockerfile"
    network = q.get("networkmode") or "none"
    if network in ("default", "bridge"):
        network = "none"
    if network not in ("none", "host"):
        raise BadRequest(f"networkmode {network}: builds run with network none or host")
    build_args = _json_map(request, "buildargs")
    user_labels = _json_map(request, "labels")
    quiet = query_bool(request, "q")
    tmp_root = b.info.data_root / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=tmp_root))
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})

    async def send(doc: dict[str, Any]) -> None:
        try:
            if not resp.prepared:
                await resp.prepare(request)
            await resp.write(json.dumps(doc).encode() + b"\r\n")
        except ConnectionError as e:
            raise ClientGone(str(e)) from None

    async def emit(text: str) -> None:
        if not quiet:
            await send({"stream": text})

    try:
        body = work / "context.tar"
        await _spool(request, body)
        context = work / "context"
        context.mkdir()
        try:
            with body.open("rb") as f:
                await asyncio.to_thread(extract_context, f, context, dockerfile, False)
            body.unlink()
            # The repository and commit, when the client did not say (the docker CLI
            # never does): from a .git the context carries, before .dockerignore drops it.
            user_labels = {**git_source_in_tree(context), **user_labels}
            await asyncio.to_thread(apply_dockerignore, context, dockerfile)
            df_path = context / dockerfile
            if not df_path.resolve().is_relative_to(context.resolve()):
                raise BadRequest(f"the Dockerfile ({dockerfile}) must be within the context")
            try:
                data = df_path.read_bytes()
            except (FileNotFoundError, IsADirectoryError):
                raise BadRequest(f"Cannot locate specified Dockerfile: {dockerfile}") from None
            df = parse(data.decode("utf-8", "replace"), dockerfile)
        except (ContextError, DockerfileError) as e:
            raise BadRequest(str(e)) from None
        prov = provenance(user_labels, dockerfile, data, build_args, q.get("target", ""))
        opts = BuildOptions(dockerfile=dockerfile, tags=tags, build_args=build_args,
                            target=q.get("target", ""), no_cache=query_bool(request, "nocache"),
                            labels=build_labels(user_labels, prov), network=network,
                            quiet=quiet)
        builder = Builder(store, EngineRunner(manager), BuildCache(store.conn), work)
        try:
            result = await builder.build(df, context, opts, emit)
        except (BuildFailed, DockerfileError) as e:
            await send({"errorDetail": {"message": str(e)}, "error": str(e)})
        else:
            done = dataclasses.replace(prov, base_images=result.base_images,
                                       finished=prov_mod.now_utc())
            with store.lock:
                ProvenanceRecords(store.conn).put(result.image_id, done)
            await send({"aux": {"ID": result.image_id}})
            if quiet:
                await send({"stream": result.image_id + "\n"})
            for t in tags:
                b.publish("image", "tag", result.image_id, {"name": t})
    except ClientGone:
        log.info("build of %s stopped: the client went away", tags or dockerfile)
        return resp
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
    if not resp.prepared:
        await resp.prepare(request)
    with contextlib.suppress(ConnectionError):
        await resp.write_eof()
    return resp


async def image_provenance(request: web.Request) -> web.Response:
    from runtime.build.provenance import DDL, ProvenanceRecords, to_json

    store = backend(request).need("images")
    store.ensure_schema(DDL)
    name = request.match_info["name"]
    try:
        iid = await asyncio.to_thread(store.lookup, name)
    except LookupError:
        raise NotFound(f"No such image: {name}") from None
    prov = ProvenanceRecords(store.conn).get(iid)
    if prov is None:
        raise NotFound(f"{name}: no build provenance recorded (it was not built here)")
    return web.json_response({"Id": iid, "Provenance": to_json(prov)})


def add_routes(table: RouteTable) -> None:
    table.post("/build", build)
    table.get("/images/{name:.+}/provenance", image_provenance)
