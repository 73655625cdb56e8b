"""Docker Engine API versions that berthd speaks.

Clients ask for a version by prefixing paths with `/v1.NN/`; unprefixed paths
mean the newest. The docker CLI negotiates down to the `Api-Version` header of
`GET /_ping`, so advertising 1.47 makes a newer CLI (28.x speaks 1.50) talk
1.47 to us.
"""

from __future__ import annotations

API_VERSION = "1.47"
MIN_API_VERSION = "1.24"


def parse(version: str) -> tuple[int, int]:
    major, _, minor = version.partition(".")
    return int(major), int(minor)


def check(requested: str) -> str | None:
    """None if `requested` is supported, else Docker's error message for it."""
    try:
        asked = parse(requested)
    except ValueError:
        return f"invalid API version {requested!r}"
    if asked < parse(MIN_API_VERSION):
        return (f"client version {requested} is too old. "
                f"Minimum supported API version is {MIN_API_VERSION}, "
                "please upgrade your client to a newer version")
    if asked > parse(API_VERSION):
        return (f"client version {requested} is too new. "
                f"Maximum supported API version is {API_VERSION}")
    return None
