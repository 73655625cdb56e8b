"""A route table that each resource router fills; the app mounts each route
twice, as `/path` and as `/v{api_version}/path` (Docker's versioned form)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

VERSION_PREFIX = r"/v{api_version:[0-9]+\.[0-9]+}"


@dataclass
class RouteTable:
    entries: list[tuple[str, str, Handler]] = field(default_factory=list)

    def add(self, method: str, path: str, handler: Handler) -> None:
        self.entries.append((method, path, handler))

    def get(self, path: str, handler: Handler) -> None:
        self.add("GET", path, handler)

    def post(self, path: str, handler: Handler) -> None:
        self.add("POST", path, handler)

    def put(self, path: str, handler: Handler) -> None:
        self.add("PUT", path, handler)

    def delete(self, path: str, handler: Handler) -> None:
        self.add("DELETE", path, handler)

    def head(self, path: str, handler: Handler) -> None:
        self.add("HEAD", path, handler)

    def mount(self, app: web.Application) -> None:
        for method, path, handler in self.entries:
            for full in (path, VERSION_PREFIX + path):
                if method == "GET":
                    # aiohttp answers HEAD for GET routes (the docker CLI pings with HEAD).
                    app.router.add_get(full, handler, allow_head=True)
                else:
                    app.router.add_route(method, full, handler)
