"""The aiohttp application: routers, API version checks, Docker's headers."""

from __future__ import annotations

import logging

from aiohttp import web

from runtime.api import (
    build,
    containers,
    events,
    exec,
    images,
    networks,
    streams,
    system,
    update,
    versions,
    volumes,
)
from runtime.api.backend import BACKEND, STREAMS, Backend, cancel_streams
from runtime.api.errors import Handler, error_middleware, error_response
from runtime.api.routes import RouteTable

log = logging.getLogger("berth.api")

ROUTERS = (system, events, images, containers, streams, exec, volumes, networks, update,
           build)


@web.middleware
async def version_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    requested = request.match_info.get("api_version")
    if requested is not None:
        problem = versions.check(requested)
        if problem is not None:
            return error_response(400, problem)
    log.debug("%s %s", request.method, request.path_qs)
    return await handler(request)


async def _docker_headers(request: web.Request, response: web.StreamResponse) -> None:
    info = request.app[BACKEND].info
    response.headers["Server"] = f"Berth/{info.version} (linux)"
    response.headers["Api-Version"] = versions.API_VERSION
    response.headers["Ostype"] = "linux"
    response.headers["Docker-Experimental"] = "false"
    response.headers["Builder-Version"] = "1"
    response.headers["Swarm"] = "inactive"


def make_app(backend: Backend) -> web.Application:
    app = web.Application(middlewares=[version_middleware, error_middleware],
                          client_max_size=0)
    app[BACKEND] = backend
    app[STREAMS] = set()
    app.on_shutdown.append(cancel_streams)
    table = RouteTable()
    for router in ROUTERS:
        router.add_routes(table)
    table.mount(app)
    app.on_response_prepare.append(_docker_headers)
    return app
