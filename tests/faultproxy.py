"""A real registry for tests, and a faulty proxy to put in front of it.

`start_registry(tmp)` runs Debian's docker-registry on 127.0.0.1 at a free
port (filesystem storage under tmp, delete enabled) and stops it by PID.
`FaultProxy` is an asyncio HTTP proxy that forwards to it and misbehaves on
request: lies about digests and sizes, 5xx answers, truncated or stalled
bodies, oversize manifests, and Bearer-token auth of its own (a challenge,
a token endpoint checking Basic credentials), so the client's error paths
meet a real wire.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import ClientSession, web


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Registry:
    host: str  # 127.0.0.1:PORT
    root: Path
    pid: int

    @property
    def url(self) -> str:
        return f"http://{self.host}"


def registry_config(root: Path, port: int, extra: str = "") -> str:
    return (f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{port}\n{extra}")


@contextlib.contextmanager
def start_registry(tmp: Path, extra_config: str = "") -> Iterator[Registry]:
    """docker-registry on a free 127.0.0.1 port; stopped by its PID."""
    root = tmp / "registry-data"
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cfg = tmp / "registry.yml"
    cfg.write_text(registry_config(root, port, extra_config))
    log = (tmp / "registry.log").open("wb")
    proc = subprocess.Popen(["/usr/bin/docker-registry", "serve", str(cfg)],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2):
                    break
            except OSError as e:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"docker-registry did not start: {e}; see "
                                       f"{tmp / 'registry.log'}") from None
                time.sleep(0.1)
        yield Registry(f"127.0.0.1:{port}", root, proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@dataclass
class Faults:
    """What the proxy does wrong; each counter is a number of requests to spoil."""

    errors_5xx: int = 0  # answer 503 to the next N requests
    truncate_blobs: int = 0  # cut the next N blob bodies in half (then close)
    stall_blobs: int = 0  # send half a blob body, then stall
    corrupt_blobs: bool = False  # flip a byte in every blob body
    corrupt_only: str = ""  # ... or only in the blob of this digest
    lie_manifest_size: bool = False  # announce layers 1 byte larger than they are
    lie_manifest_digest: bool = False  # a Docker-Content-Digest header that is not the body's
    oversize_manifest: bool = False  # answer manifests with 5 MiB of padding
    ignore_range: bool = False  # answer Range requests with the full body (200)
    auth: tuple[str, str] | None = None  # Bearer auth: the one user:password accepted
    basic: tuple[str, str] | None = None  # Basic auth on every request instead
    stall_seconds: float = 3600.0
    seen: list[str] = field(default_factory=list)  # "METHOD path [Range]" log
    tokens: set[str] = field(default_factory=set)


class FaultProxy:
    def __init__(self, upstream: str, faults: Faults | None = None) -> None:
        self.upstream = upstream
        self.faults = faults or Faults()
        self.port = free_port()
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> FaultProxy:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_get("/token", self._token)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self._session = ClientSession(auto_decompress=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session:
            await self._session.close()
        if self._runner:
            await self._runner.cleanup()

    async def _token(self, req: web.Request) -> web.Response:
        f = self.faults
        want = "Basic " + base64.b64encode(":".join(f.auth or ("", "")).encode()).decode()
        if req.headers.get("Authorization") != want:
            return web.json_response({"errors": [{"code": "UNAUTHORIZED",
                                                  "message": "bad credentials"}]}, status=401)
        token = secrets.token_hex(16)
        f.tokens.add(token)
        return web.json_response({"token": token})

    async def _handle(self, req: web.Request) -> web.StreamResponse:
        f = self.faults
        f.seen.append(f"{req.method} {req.path} {req.headers.get('Range', '')}".strip())
        if f.auth is not None:
            auth = req.headers.get("Authorization", "")
            if auth.removeprefix("Bearer ") not in f.tokens:
                return web.json_response(
                    {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                    status=401, headers={"WWW-Authenticate": (
                        f'Bearer realm="http://{self.host}/token",service="faultproxy"')})
        if f.basic is not None:
            want = "Basic " + base64.b64encode(":".join(f.basic).encode()).decode()
            if req.headers.get("Authorization") != want:
                return web.json_response(
                    {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                    status=401, headers={"WWW-Authenticate": 'Basic realm="faultproxy"'})
        if f.errors_5xx > 0:
            f.errors_5xx -= 1
            return web.Response(status=503, text="injected failure")
        assert self._session is not None
        headers = {k: v for k, v in req.headers.items()
                   if k.lower() not in ("host", "authorization", "content-length")}
        if f.ignore_range:
            headers.pop("Range", None)
        body = await req.read()
        url = f"http://{self.upstream}{req.path_qs}"
        async with self._session.request(req.method, url, headers=headers, data=body or None,
                                         allow_redirects=False) as up:
            data = await up.read()
            out_headers = {k: v for k, v in up.headers.items()
                           if k.lower() not in ("content-length", "transfer-encoding",
                                                "content-encoding", "connection")}
            loc = out_headers.get("Location")
            if loc:
                out_headers["Location"] = loc.replace(self.upstream, self.host)
            is_blob = "/blobs/sha256:" in req.path and req.method == "GET" and up.status < 300
            is_manifest = "/manifests/" in req.path and req.method == "GET" and up.status == 200
            if is_manifest and (f.lie_manifest_size or f.oversize_manifest):
                data = self._spoil_manifest(data)
                out_headers.pop("Docker-Content-Digest", None)
            if is_manifest and f.lie_manifest_digest:
                out_headers["Docker-Content-Digest"] = "sha256:" + "0" * 64
            spoil = f.corrupt_blobs or (f.corrupt_only and f.corrupt_only in req.path)
            if is_blob and spoil and data:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            if is_blob and (f.truncate_blobs > 0 or f.stall_blobs > 0):
                return await self._spoiled_blob(req, up.status, out_headers, data)
            return web.Response(status=up.status, headers=out_headers,
                                body=data if req.method != "HEAD" else None)

    def _spoil_manifest(self, data: bytes) -> bytes:
        doc = json.loads(data)
        if self.faults.lie_manifest_size:
            for layer in doc.get("layers", []):
                layer["size"] += 1
        if self.faults.oversize_manifest:
            doc["annotations"] = {"padding": "x" * (5 << 20)}
        return json.dumps(doc).encode()

    async def _spoiled_blob(self, req: web.Request, status: int, headers: dict[str, str],
                            data: bytes) -> web.StreamResponse:
        f = self.faults
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = len(data)
        await resp.prepare(req)
        await resp.write(data[: len(data) // 2])
        if f.truncate_blobs > 0:
            f.truncate_blobs -= 1
        else:
            f.stall_blobs -= 1
            await asyncio.sleep(f.stall_seconds)
        # Close the connection mid-body: the client sees fewer bytes than announced.
        if req.transport is not None:
            req.transport.close()
        return resp


def busybox_rootfs(dest: Path) -> Path:
    """A 2 MB busybox root filesystem from Debian's busybox-static."""
    (dest / "bin").mkdir(parents=True, exist_ok=True)
    data = Path("/bin/busybox").read_bytes()
    (dest / "bin/busybox").write_bytes(data)
    os.chmod(dest / "bin/busybox", 0o755)
    for applet in ("sh", "echo", "cat", "ls", "true"):
        with contextlib.suppress(FileExistsError):
            os.symlink("busybox", dest / "bin" / applet)
    for d in ("etc", "tmp", "proc", "sys", "dev"):
        (dest / d).mkdir(exist_ok=True)
    (dest / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    return dest
