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
    # One line, as clients print it: nested causes (tarfile's) come multi-line.
    message = "; ".join(part.strip(" -") for part in message.splitlines() if part.strip())
    return web.Response(
        status=status,
        body=json.dumps({"message": message}).encode() + b"\n",
        content_type="application/json",
    )


# Exceptions from other layers, by class name, mapped to Docker's status.
# Matching on names (through the MRO, most specific first) keeps this module
# free of imports from the engine, the store and the network; each of those
# classes carries its object in its message, which becomes the API's message.
_STATUS_BY_EXCEPTION_NAME: dict[str, int] = {
    # 404
    "ImageNotFound": 404, "NoSuchContainer": 404, "NoSuchExec": 404,
    "NetworkNotFound": 404, "VolumeNotFound": 404, "NoSuchVolume": 404, "BlobNotFound": 404,
    # 304: already in the state asked for (start a running container, stop a stopped one)
    "NotModified": 304,
    # 409: the object is in a state that forbids the request
    "ImageConflict": 409, "Conflict": 409, "NetworkInUse": 409, "NetworkExists": 409,
    "VolumeInUse": 409, "VolumeExists": 409,
    # 400: the request is wrong and changed nothing
    "InvalidRequest": 400, "InvalidReference": 400, "InvalidDigest": 400,
    "InvalidManifest": 400, "ExtractError": 400, "CommitError": 400, "ArchiveError": 400,
    "ChangeError": 400, "BlobError": 400, "AmbiguousImage": 400, "UserError": 400,
    "BadSubnet": 400, "BadPortSpec": 400, "InvalidVolume": 400, "VolumeError": 400,
    # 403: the trust policy refuses the image
    "PolicyDenied": 403,
    # 500 without a traceback: expected failures with a message for the user
    "ContainerError": 500, "NetError": 500, "AuthError": 500,
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
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        # dockerd's router answers both with 404 "page not found".
        return error_response(404, "page not found")
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
