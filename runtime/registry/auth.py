"""Registry credentials (`berth login/logout`) and WWW-Authenticate challenges.

Credentials live in one JSON file in Docker's config.json shape
(`{"auths": {"host:port": {"auth": base64("user:password")}}}`), mode 0600,
replaced atomically (temp + fsync + rename). Default:
`$BERTH_CONFIG/auth.json`, else `~/.config/berth/auth.json`.
"""

from __future__ import annotations

import base64
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

DOCKER_HUB_KEY = "https://index.docker.io/v1/"


class AuthError(RuntimeError):
    pass


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "bearer" or "basic"
    params: dict[str, str]


_PARAM = re.compile(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


def parse_challenge(header: str) -> Challenge:
    """`Bearer realm="https://auth",service="reg",scope="repository:x:pull"`."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
              for m in _PARAM.finditer(rest)}
    return Challenge(scheme.lower(), params)


class CredentialSource(Protocol):
    def get(self, registry: str) -> Credentials | None: ...


@dataclass(frozen=True)
class StaticCredentials:
    """Credentials given with one request (the API's X-Registry-Auth), then the file's."""

    given: Mapping[str, Credentials]
    fallback: CredentialSource | None = None

    def get(self, registry: str) -> Credentials | None:
        found = self.given.get(registry)
        if found is None and self.fallback is not None:
            return self.fallback.get(registry)
        return found


def decode_registry_auth(header: str) -> tuple[str, Credentials] | None:
    """Docker's X-Registry-Auth: base64url JSON {username, password, serveraddress}."""
    if not header:
        return None
    try:
        pad = "=" * (-len(header) % 4)
        doc = json.loads(base64.urlsafe_b64decode(header + pad))
    except (ValueError, UnicodeDecodeError):
        raise AuthError("X-Registry-Auth is not base64 JSON") from None
    if not isinstance(doc, dict) or not doc.get("username"):
        return None
    server = str(doc.get("serveraddress") or "docker.io")
    server = server.removeprefix("https://").removeprefix("http://").split("/")[0]
    if server == "index.docker.io":
        server = "docker.io"
    return server, Credentials(str(doc["username"]), str(doc.get("password") or ""))


def default_path() -> Path:
    base = os.environ.get("BERTH_CONFIG")
    if base:
        return Path(base) / "auth.json"
    return Path.home() / ".config" / "berth" / "auth.json"


def _key(registry: str) -> str:
    return DOCKER_HUB_KEY if registry in ("docker.io", "index.docker.io") else registry


class CredentialStore:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_path()

    def _load(self) -> dict[str, dict[str, dict[str, str]]]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"auths": {}}
        except (OSError, json.JSONDecodeError) as e:
            raise AuthError(f"{self.path}: unreadable credentials file: {e}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("auths", {}), dict):
            raise AuthError(f"{self.path}: not a credentials file")
        doc.setdefault("auths", {})
        return doc

    def get(self, registry: str) -> Credentials | None:
        entry = self._load()["auths"].get(_key(registry))
        if not entry or "auth" not in entry:
            return None
        try:
            user, _, pw = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise AuthError(f"{self.path}: bad entry for {registry}") from None
        return Credentials(user, pw)

    def set(self, registry: str, creds: Credentials) -> None:
        doc = self._load()
        doc["auths"][_key(registry)] = {
            "auth": base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()}
        self._write(doc)

    def remove(self, registry: str) -> bool:
        doc = self._load()
        found = doc["auths"].pop(_key(registry), None) is not None
        if found:
            self._write(doc)
        return found

    def _write(self, doc: object) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".auth-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
