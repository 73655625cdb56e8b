"""API errors in Docker's shape: `{"message": "..."}` with the matching status.

Routers raise these (or let the engine's and the store's own exceptions
through: `error_middleware` maps the known ones), so a client sees one line
saying what went wrong, never a traceback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

log = logging.getLogger("berth.api")


class ApiError(Exception):
    status: int = 500

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class BadRequest(ApiError):
    status = 400


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class NotModified(ApiError):
    status = 304


class NotImplementedYet(ApiError):
    status = 501


def error_response(status: int, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps({"message": message}).encode() + b"\n",
        content_type="application/json",
    )


# Exceptions from other layers, by class name, mapped to a status. Matching on
# the name keeps this module free of imports from the engine and the store;
# each of their error classes carries its object in its message.
_STATUS_BY_EXCEPTION_NAME: dict[str, int] = {
    "ImageNotFound": 404,
    "ContainerNotFound": 404,
    "VolumeNotFound": 404,
    "ExecNotFound": 404,
    "NetworkNotFound": 404,
    "NameConflict": 409,
    "ContainerNameConflict": 409,
    "ImageInUse": 409,
    "VolumeInUse": 409,
    "ContainerRunning": 409,
    "ContainerNotRunning": 409,
    "ContainerPaused": 409,
    "ContainerNotPaused": 409,
    "InvalidTransition": 409,
    "StateError": 409,
    "AlreadyStarted": 304,
    "AlreadyStopped": 304,
    "InvalidSpec": 400,
    "SpecError": 400,
    "InvalidReference": 400,
    "LayerError": 400,
    "UnsafeLayer": 400,
    "ArchiveError": 400,
}


def status_for(exc: BaseException) -> int | None:
    """The HTTP status for an exception from another layer, or None if unknown."""
    for cls in type(exc).__mro__:
        status = _STATUS_BY_EXCEPTION_NAME.get(cls.__name__)
        if status is not None:
            return status
    explicit = getattr(exc, "http_status", None)
    return explicit if isinstance(explicit, int) else None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        if e.status == 304:
            return web.Response(status=304)
        return error_response(e.status, e.message)
    except web.HTTPException as e:
        if e.status >= 400:
            return error_response(e.status, e.reason if e.text is None else e.text.strip())
        raise
    except (ConnectionResetError, TimeoutError):
        raise
    except Exception as e:
        status = status_for(e)
        if status == 304:
            return web.Response(status=304)
        if status is not None:
            return error_response(status, str(e))
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, f"{type(e).__name__}: {e}")
