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
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from runtime.api.backend import backend
from runtime.api.errors import BadRequest, NotFound
from runtime.api.filters import query_bool
from runtime.api.routes import RouteTable

_CHUNK = 1 << 20
log = logging.getLogger("berth.build")


# The work dirs of this daemon's running builds; any other build-* dir under
# <data-root>/tmp was left by a daemon that died mid-build.
_ACTIVE: set[Path] = set()


def _sweep_stale(tmp_root: Path) -> None:
    for d in tmp_root.glob("build-*"):
        if d not in _ACTIVE:
            shutil.rmtree(d, ignore_errors=True)


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


@dataclass(frozen=True)
class BuildQuery:
    """POST /build's query, validated before the body is read."""

    tags: tuple[str, ...]
    dockerfile: str
    network: str
    build_args: dict[str, str]
    labels: dict[str, str]
    target: str
    no_cache: bool
    quiet: bool


def build_query(request: web.Request) -> BuildQuery:
    from runtime.registry.reference import InvalidReference
    from runtime.registry.reference import parse as parse_ref

    q = request.query
    if q.get("remote"):
        raise BadRequest("remote build contexts cannot be fetched: there is no network here; "
                         "send the context as a tar")
    tags = tuple(t for t in q.getall("t", []) if t)
    for t in tags:  # checked before anything runs: a build never ends half-tagged
        try:
            if parse_ref(t).digest:
                raise InvalidReference(t, "a tag cannot hold a digest")
        except InvalidReference as e:
            raise BadRequest(f"invalid tag {t!r}: {e}") from None
    network = q.get("networkmode") or "none"
    network = "none" if network in ("default", "bridge") else network
    if network not in ("none", "host"):
        raise BadRequest(f"networkmode {network}: builds run with network none or host")
    return BuildQuery(tags, q.get("dockerfile") or "Dockerfile", network,
                      _json_map(request, "buildargs"), _json_map(request, "labels"),
                      q.get("target", ""), query_bool(request, "nocache"),
                      query_bool(request, "q"))


def unpack_context(body: Path, context: Path, dockerfile: str) -> tuple[bytes, dict[str, str]]:
    """Unpack the context; the Dockerfile's bytes and the git labels found in it."""
    from runtime.build.context import ContextError, apply_dockerignore, extract_context
    from runtime.build.provenance import git_source_in_tree

    try:
        with body.open("rb") as f:
            extract_context(f, context, dockerfile, ignore=False)
    except ContextError as e:
        raise BadRequest(str(e)) from None
    body.unlink()
    # The repository and commit, for clients that do not say (the docker CLI never
    # does): from a .git the context carries, read before .dockerignore drops it.
    git_labels = git_source_in_tree(context)
    apply_dockerignore(context, dockerfile)
    df_path = context / dockerfile
    if not df_path.resolve().is_relative_to(context.resolve()):
        raise BadRequest(f"the Dockerfile ({dockerfile}) must be within the context")
    try:
        return df_path.read_bytes(), git_labels
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise BadRequest(f"Cannot locate specified Dockerfile: {dockerfile}") from None


async def build(request: web.Request) -> web.StreamResponse:
    from runtime.build import cache as cache_mod
    from runtime.build import provenance as prov_mod
    from runtime.build.builder import Builder, BuildFailed, BuildOptions
    from runtime.build.cache import BuildCache
    from runtime.build.engine import EngineRunner
    from runtime.build.parser import DockerfileError, parse

    b = backend(request)
    store = b.need("images")
    manager = b.need("containers")
    store.ensure_schema(cache_mod.DDL)
    store.ensure_schema(prov_mod.DDL)
    bq = build_query(request)
    tmp_root = b.info.data_root / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(_sweep_stale, tmp_root)
    work = tmp_root / f"build-{secrets.token_hex(8)}"
    _ACTIVE.add(work)  # before it exists: another build's sweep may be running
    work.mkdir(mode=0o700)
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})

    async def send(doc: dict[str, Any]) -> None:
        try:
            if not resp.prepared:
                await resp.prepare(request)
            await resp.write(json.dumps(doc).encode() + b"\r\n")
        except ConnectionError as e:
            raise ClientGone(str(e)) from None

    async def emit(text: str) -> None:
        if not bq.quiet:
            await send({"stream": text})

    try:
        await _spool(request, work / "context.tar")
        context = work / "context"
        context.mkdir()
        data, git_labels = await asyncio.to_thread(unpack_context, work / "context.tar",
                                                   context, bq.dockerfile)
        try:
            df = parse(data.decode("utf-8", "replace"), bq.dockerfile)
        except DockerfileError as e:
            raise BadRequest(str(e)) from None
        user_labels = {**git_labels, **bq.labels}
        prov = prov_mod.provenance(user_labels, bq.dockerfile, data, bq.build_args, bq.target)
        opts = BuildOptions(dockerfile=bq.dockerfile, tags=bq.tags, build_args=bq.build_args,
                            target=bq.target, no_cache=bq.no_cache,
                            labels=prov_mod.build_labels(user_labels, prov),
                            network=bq.network, quiet=bq.quiet)
        runner = EngineRunner(manager)
        await runner.sweep()
        builder = Builder(store, runner, BuildCache(store.conn), work)
        try:
            result = await builder.build(df, context, opts, emit)
        except (BuildFailed, DockerfileError) as e:
            await send({"errorDetail": {"message": str(e)}, "error": str(e)})
        except (ClientGone, asyncio.CancelledError):
            raise
        except Exception as e:
            # The stream has started: a bug must still reach the client as a message.
            log.exception("build failed unexpectedly")
            msg = f"internal error in the builder: {type(e).__name__}: {e}"
            await send({"errorDetail": {"message": msg}, "error": msg})
        else:
            done = dataclasses.replace(prov, base_images=result.base_images,
                                       finished=prov_mod.now_utc())
            with store.lock:
                prov_mod.ProvenanceRecords(store.conn).put(result.image_id, done)
            await send({"aux": {"ID": result.image_id}})
            if bq.quiet:
                await send({"stream": result.image_id + "\n"})
            for t in bq.tags:
                b.publish("image", "tag", result.image_id, {"name": t})
    except ClientGone:
        log.info("build of %s stopped: the client went away", bq.tags or bq.dockerfile)
        return resp
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
        _ACTIVE.discard(work)
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
