"""GET /events: the event bus as Docker's JSON stream, with since/until and filters."""

from __future__ import annotations

import json
from collections.abc import Callable

from aiohttp import web

from runtime.api.backend import backend, streaming
from runtime.api.errors import BadRequest
from runtime.api.filters import Filters, request_filters
from runtime.api.routes import RouteTable
from runtime.events import Event, EventBus

EVENT_FILTERS = ("type", "event", "container", "image", "label", "volume", "network",
                 "daemon", "scope")


def parse_timestamp(text: str | None) -> int | None:
    """Docker's since/until: unix seconds with an optional fraction, in nanoseconds."""
    if not text:
        return None
    seconds, _, frac = text.partition(".")
    if not seconds.isdigit() or not (frac == "" or frac.isdigit()):
        raise BadRequest(f"invalid timestamp {text!r}: use unix seconds[.nanoseconds]")
    return int(seconds) * 1_000_000_000 + int((frac + "000000000")[:9])


def event_matcher(f: Filters) -> Callable[[Event], bool]:
    """Docker's semantics: values of one key are OR-ed, different keys AND-ed."""

    def matches(ev: Event) -> bool:
        attrs = ev.attributes
        if "type" in f and ev.type not in f["type"]:
            return False
        if "event" in f and not any(ev.action == a or ev.action.startswith(a + ":")
                                    for a in f["event"]):
            return False
        if "scope" in f and ev.scope not in f["scope"]:
            return False
        for key in ("container", "volume", "network", "daemon"):
            if key in f and not (ev.type == key and any(
                    v in (ev.actor_id, attrs.get("name")) or
                    (len(v) >= 3 and ev.actor_id.startswith(v)) for v in f[key])):
                return False
        if "image" in f and not any(v in (attrs.get("image"), attrs.get("name"), ev.actor_id)
                                    or (ev.type == "image" and ev.actor_id.endswith(v))
                                    for v in f["image"]):
            return False
        if "label" in f:
            for label in f["label"]:
                key, sep, value = label.partition("=")
                if key not in attrs or (sep and attrs[key] != value):
                    return False
        return True

    return matches


@streaming
async def events(request: web.Request) -> web.StreamResponse:
    bus: EventBus = backend(request).need("events")
    since = parse_timestamp(request.query.get("since"))
    until = parse_timestamp(request.query.get("until"))
    match = event_matcher(request_filters(request, EVENT_FILTERS))
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)  # the docker CLI waits for the headers before printing
    async for ev in bus.subscribe(since_ns=since, until_ns=until, match=match):
        await resp.write(json.dumps(ev.to_docker()).encode() + b"\n")
    await resp.write_eof()
    return resp


def add_routes(table: RouteTable) -> None:
    table.get("/events", events)
