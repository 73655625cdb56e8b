"""Docker's `filters` query parameter: JSON of {"key": ["value", ...]}.

Old clients send {"key": {"value": true}}; both forms are accepted. Keys a
resource does not know are refused (400), as Docker does.
"""

from __future__ import annotations

import json
from collections.abc import Collection

from aiohttp import web

from runtime.api.errors import BadRequest

Filters = dict[str, list[str]]


def parse_filters(text: str | None, allowed: Collection[str]) -> Filters:
    if not text:
        return {}
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRequest(f"invalid filters {text!r}: {e}") from None
    if not isinstance(raw, dict):
        raise BadRequest(f"invalid filters {text!r}: expected a JSON object")
    out: Filters = {}
    for key, values in raw.items():
        if key not in allowed:
            raise BadRequest(f"Invalid filter '{key}'")
        if isinstance(values, dict):
            out[key] = [str(v) for v, on in values.items() if on]
        elif isinstance(values, list):
            out[key] = [str(v) for v in values]
        elif isinstance(values, str):
            out[key] = [values]
        else:
            raise BadRequest(f"invalid filter '{key}': expected a list of strings")
    return out


def request_filters(request: web.Request, allowed: Collection[str]) -> Filters:
    return parse_filters(request.query.get("filters"), allowed)


def query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    """Docker's boolean query values: 1/true/yes are true; 0/false/no/"" are false."""
    value = request.query.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def query_int(request: web.Request, name: str, default: int | None = None) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"invalid value for {name}: {value!r} is not an integer") from None


def bool_filter(filters: Filters, key: str) -> bool | None:
    values = filters.get(key)
    if not values:
        return None
    value = values[-1].lower()
    if value not in ("true", "false", "1", "0"):
        raise BadRequest(f"invalid filter '{key}={values[-1]}': use true or false")
    return value in ("true", "1")
