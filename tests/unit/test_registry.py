"""Registry auth pieces and the progress stream, without a registry."""

from __future__ import annotations

import base64
import io
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from runtime.progress import JsonProgress, RichProgress
from runtime.registry.auth import (
    AuthError,
    Credentials,
    CredentialStore,
    StaticCredentials,
    decode_registry_auth,
    parse_challenge,
)
from runtime.registry.client import is_insecure


def test_parse_bearer_challenge() -> None:
    ch = parse_challenge('Bearer realm="https://auth.example/token",service="reg",'
                         'scope="repository:a/b:pull,push"')
    assert ch.scheme == "bearer"
    assert ch.params == {"realm": "https://auth.example/token", "service": "reg",
                         "scope": "repository:a/b:pull,push"}
    assert parse_challenge('Basic realm="x"').scheme == "basic"


def test_credential_store_is_private_atomic_and_removable(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "auth.json"
    creds = CredentialStore(path)
    assert creds.get("r.example") is None
    creds.set("r.example:5000", Credentials("alice", "pw:with:colons"))
    creds.set("docker.io", Credentials("bob", "x"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert set(doc["auths"]) == {"r.example:5000", "https://index.docker.io/v1/"}
    assert CredentialStore(path).get("r.example:5000") == Credentials("alice", "pw:with:colons")
    assert creds.remove("r.example:5000") and not creds.remove("r.example:5000")
    assert [p.name for p in path.parent.iterdir()] == ["auth.json"]  # no temp files left
    path.write_text("{not json")
    with pytest.raises(AuthError, match="unreadable"):
        creds.get("docker.io")


def test_x_registry_auth_and_static_credentials(tmp_path: Path) -> None:
    header = base64.urlsafe_b64encode(json.dumps(
        {"username": "u", "password": "p", "serveraddress": "https://r.example:5000/v2/"}
    ).encode()).decode().rstrip("=")
    server, creds = decode_registry_auth(header) or ("", Credentials("", ""))
    assert (server, creds) == ("r.example:5000", Credentials("u", "p"))
    assert decode_registry_auth("") is None
    with pytest.raises(AuthError):
        decode_registry_auth("!!!")
    file_creds = CredentialStore(tmp_path / "a.json")
    file_creds.set("other", Credentials("f", "g"))
    source = StaticCredentials({server: creds}, file_creds)
    assert source.get("r.example:5000") == creds and source.get("other") == Credentials("f", "g")


def test_json_progress_has_dockers_shape() -> None:
    out: list[dict[str, Any]] = []
    p = JsonProgress(out.append, interval=0)
    digest = "sha256:" + "ab" * 32
    p.start(digest, "Downloading", 10)
    p.advance(digest, 10)
    p.done(digest, "Pull complete")
    assert out == [
        {"status": "Downloading", "id": "abababababab"},
        {"status": "Downloading", "id": "abababababab",
         "progressDetail": {"current": 10, "total": 10}},
        {"status": "Pull complete", "id": "abababababab", "progressDetail": {}},
    ]


def test_rich_progress_draws_dockers_json_stream() -> None:
    buf = io.StringIO()
    out: list[dict[str, Any]] = []
    digest = "sha256:" + "cd" * 32
    p = JsonProgress(out.append, interval=0)
    p.message("1: Pulling from app")
    p.start(digest, "Downloading", 2048)
    p.advance(digest, 2048)
    p.done(digest, "Pull complete")
    with RichProgress(Console(file=buf, width=100, force_terminal=False)) as bars:
        for msg in out:
            bars.feed(msg)
        bars.feed({"error": "boom", "errorDetail": {"message": "boom"}})
    text = buf.getvalue()
    assert "1: Pulling from app" in text and "cdcdcdcdcdcd" in text
    assert "Pull complete" in text and "boom" in text


def test_insecure_only_when_named_by_host_or_cidr() -> None:
    named = frozenset({"reg.example:5000", "10.0.0.0/8"})
    assert is_insecure("reg.example:5000", named)
    assert not is_insecure("reg.example:5001", named)
    assert is_insecure("10.1.2.3:5000", named) and is_insecure("10.1.2.3", named)
    assert not is_insecure("127.0.0.1:5000", named)  # loopback is not implicitly insecure
    assert not is_insecure("127.0.0.1:5000", frozenset())
