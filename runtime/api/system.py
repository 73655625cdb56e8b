"""System routes: _ping, version (more with the engine: info, events, df)."""

from __future__ import annotations

from aiohttp import web

from runtime.api import versions
from runtime.api.backend import DaemonInfo, backend
from runtime.api.routes import RouteTable

# Docker reports Go's GOARCH names.
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


def goarch(machine: str) -> str:
    return _GOARCH.get(machine, machine)


def version_body(info: DaemonInfo) -> dict[str, object]:
    """`GET /version` in Docker's shape (the docker CLI reads Components and Platform)."""
    # A Python package has no build stamp; Docker's field stays empty rather than invented.
    build_time = ""
    details = {
        "ApiVersion": versions.API_VERSION,
        "Arch": goarch(info.arch),
        "BuildTime": build_time,
        "Experimental": "false",
        "GitCommit": "",
        "GoVersion": "",
        "KernelVersion": info.kernel,
        "MinAPIVersion": versions.MIN_API_VERSION,
        "Os": "linux",
    }
    return {
        "Platform": {"Name": "Berth"},
        "Components": [{"Name": "Engine", "Version": info.version, "Details": details}],
        "Version": info.version,
        "ApiVersion": versions.API_VERSION,
        "MinAPIVersion": versions.MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": "",
        "Os": "linux",
        "Arch": goarch(info.arch),
        "KernelVersion": info.kernel,
        "Experimental": False,
        "BuildTime": build_time,
    }


async def ping(request: web.Request) -> web.StreamResponse:
    return web.Response(text="OK", content_type="text/plain",
                        headers={"Cache-Control": "no-cache, no-store, must-revalidate",
                                 "Pragma": "no-cache"})


async def version(request: web.Request) -> web.StreamResponse:
    return web.json_response(version_body(backend(request).info))


def add_routes(table: RouteTable) -> None:
    table.get("/_ping", ping)
    table.get("/version", version)
