"""Image references, normalized the way Docker does (distribution/reference).

`busybox` -> `docker.io/library/busybox:latest`; `localhost:5000/a/b@sha256:..`
keeps its domain. A first path component is a registry domain when it has a
`.` or a `:` or is `localhost` (or has upper case letters), as in Docker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_DOMAIN = "docker.io"
DEFAULT_TAG = "latest"
_LEGACY_DOMAIN = "index.docker.io"
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_DOMAIN = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$"
)
MAX_NAME = 255


class InvalidReference(ValueError):
    def __init__(self, ref: str, why: str) -> None:
        self.ref = ref
        super().__init__(f"invalid reference format {ref!r}: {why}")


@dataclass(frozen=True)
class Reference:
    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """Fully qualified repository name: docker.io/library/busybox."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """The name as Docker prints it: busybox, user/app, localhost:5000/app."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        return self.path.removeprefix("library/")

    def with_tag(self, tag: str) -> Reference:
        if not _TAG.match(tag):
            raise InvalidReference(tag, "bad tag")
        return Reference(self.domain, self.path, tag, None)

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.domain, self.path, None, digest)

    @property
    def tagged(self) -> str:
        """name:tag (latest if none), the key of a tag record."""
        return f"{self.name}:{self.tag or DEFAULT_TAG}"

    @property
    def familiar(self) -> str:
        s = self.familiar_name
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s

    def __str__(self) -> str:
        s = self.name
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


def parse(ref: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalize; adds :latest unless a digest or default_tag=False."""
    if not ref or ref != ref.strip():
        raise InvalidReference(ref, "empty or surrounded by spaces")
    rest, digest = ref, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.match(digest):
            raise InvalidReference(ref, f"bad digest {digest!r}")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.match(tag):
            raise InvalidReference(ref, f"bad tag {tag!r}")
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        domain, path = first, remainder
        if not _DOMAIN.match(domain):
            raise InvalidReference(ref, f"bad registry domain {domain!r}")
    else:
        domain, path = DEFAULT_DOMAIN, rest
    if domain == _LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"library/{path}"
    for comp in path.split("/"):
        if not _COMPONENT.match(comp):
            why = "repository names must be lowercase" if comp.lower() != comp else (
                f"bad path component {comp!r}")
            raise InvalidReference(ref, why)
    if len(domain) + 1 + len(path) > MAX_NAME:
        raise InvalidReference(ref, f"name longer than {MAX_NAME} characters")
    if tag is None and digest is None and default_tag:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)


def try_parse(ref: str, *, default_tag: bool = True) -> Reference | None:
    try:
        return parse(ref, default_tag=default_tag)
    except InvalidReference:
        return None
