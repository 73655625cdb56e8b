"""An OCI distribution-spec client (aiohttp): manifests, blobs, uploads, auth.

Every request goes through `_send`, which adds auth (a cached Bearer token
for the scope, or Basic), answers a 401 challenge once (token from the
realm, with stored credentials if any), and retries connection errors,
timeouts, 429 and 5xx a bounded number of times with back-off. A stall
(no byte for `read_timeout` seconds) is a timeout.

Blob downloads verify size and digest while writing (BlobWriter) and resume
from the partial file with a Range request after a broken or short
transfer; a blob that lies (wrong digest, more bytes than announced) fails
at once and nothing is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import urlencode, urljoin

import aiohttp

from runtime.oci import Descriptor, MediaType, Platform
from runtime.progress import NullProgress, Progress
from runtime.registry.auth import AuthError, Challenge, CredentialSource, parse_challenge
from runtime.store.blobs import CHUNK, BlobError, BlobStore, DigestMismatch

log = logging.getLogger("berth.registry")

MANIFEST_ACCEPT = ", ".join([MediaType.OCI_INDEX, MediaType.DOCKER_MANIFEST_LIST,
                             MediaType.OCI_MANIFEST, MediaType.DOCKER_MANIFEST])
MAX_MANIFEST = 4 << 20
MAX_ATTEMPTS = 4
RETRY_DELAY = 0.25
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_HUB_ENDPOINT = "registry-1.docker.io"


@dataclass(frozen=True)
class RegistryOptions:
    # "host:port" (or CIDRs) of registries reached over plain HTTP. Only those
    # named: unlike Docker, 127.0.0.0/8 is not implicitly insecure.
    insecure: frozenset[str] = frozenset()
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    max_attempts: int = MAX_ATTEMPTS
    retry_delay: float = RETRY_DELAY
    chunk_size: int | None = None  # None: monolithic uploads; else PATCH chunks
    parallel: int = 3
    max_manifest: int = MAX_MANIFEST
    platform: Platform = field(default_factory=Platform)


def is_insecure(domain: str, insecure: frozenset[str]) -> bool:
    """Plain HTTP for `host:port` named in `insecure`, or whose IP is in a CIDR
    named there (Docker's --insecure-registry takes both)."""
    if domain in insecure:
        return True
    host = domain.rsplit(":", 1)[0] if domain.count(":") == 1 else domain
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    for entry in insecure:
        if "/" in entry:
            with contextlib.suppress(ValueError):
                if ip in ipaddress.ip_network(entry, strict=False):
                    return True
    return False


class RegistryError(RuntimeError):
    http_status = 500  # what the API answers (runtime/api/errors.py reads it)

    def __init__(self, where: str, why: str) -> None:
        self.where = where
        super().__init__(f"{where}: {why}")


class NotFound(RegistryError):
    http_status = 404


class Unauthorized(RegistryError):
    pass


def _error_text(body: bytes, status: int) -> str:
    try:
        errs = json.loads(body).get("errors") or []
        msgs = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
                         for e in errs)
        if msgs:
            return f"{msgs} (HTTP {status})"
    except (ValueError, AttributeError):
        pass
    return f"HTTP {status}"


Body = bytes | Callable[[], Any] | None


class RegistryClient:
    """One client per operation batch; `async with RegistryClient(...) as c`."""

    def __init__(self, options: RegistryOptions | None = None,
                 credentials: CredentialSource | None = None) -> None:
        self.options = options or RegistryOptions()
        self.credentials = credentials
        self._session: aiohttp.ClientSession | None = None
        self._tokens: dict[tuple[str, str], str] = {}
        self._basic: set[str] = set()
        self._blob_locks: dict[str, asyncio.Lock] = {}

    async def __aenter__(self) -> RegistryClient:
        timeout = aiohttp.ClientTimeout(total=None, connect=self.options.connect_timeout,
                                        sock_read=self.options.read_timeout)
        self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("RegistryClient used outside `async with`")
        return self._session

    def base(self, domain: str) -> str:
        host = _HUB_ENDPOINT if domain == "docker.io" else domain
        scheme = "http" if is_insecure(domain, self.options.insecure) else "https"
        return f"{scheme}://{host}"

    # --- the one request path ---

    async def _send(self, method: str, domain: str, url: str, *, scopes: Sequence[str] = (),
                    headers: Mapping[str, str] | None = None, body: Body = None,
                    retry: bool = True) -> aiohttp.ClientResponse:
        full = url if url.startswith(("http://", "https://")) else self.base(domain) + url
        where = f"{domain} {method} {url.split('?')[0]}"
        attempts = self.options.max_attempts if retry else 1
        authed = False
        last = ""
        attempt = 0
        while attempt < attempts:
            hdrs = dict(headers or {})
            auth = self._auth_header(domain, scopes)
            if auth:
                hdrs["Authorization"] = auth
            data = body() if callable(body) else body
            try:
                resp = await self.session.request(method, full, headers=hdrs, data=data,
                                                  allow_redirects=True)
            except (aiohttp.ClientConnectionError, TimeoutError) as e:
                last = f"{type(e).__name__}: {e}"
                attempt += 1
                await self._backoff(attempt, attempts, where, last)
                continue
            if resp.status == 401 and not authed:
                challenge = resp.headers.get("WWW-Authenticate", "")
                resp.release()
                await self._authenticate(domain, scopes, challenge, where)
                authed = True
                continue  # the retry after a challenge does not count as an attempt
            if resp.status in _RETRY_STATUS:
                last = _error_text(await resp.read(), resp.status)
                resp.release()
                attempt += 1
                await self._backoff(attempt, attempts, where, last)
                continue
            if resp.status == 401:
                text = _error_text(await resp.read(), 401)
                resp.release()
                raise Unauthorized(where, f"{text}; log in with `berth login {domain}`")
            return resp
        raise RegistryError(where, f"gave up after {attempts} attempts: {last}")

    async def _backoff(self, attempt: int, attempts: int, where: str, why: str) -> None:
        if attempt < attempts:
            log.info("%s: %s; retry %d/%d", where, why, attempt, attempts - 1)
            await asyncio.sleep(self.options.retry_delay * 2 ** (attempt - 1))

    def _auth_header(self, domain: str, scopes: Sequence[str]) -> str | None:
        token = self._tokens.get((domain, " ".join(scopes)))
        if token:
            return f"Bearer {token}"
        if domain in self._basic:
            creds = self.credentials.get(domain) if self.credentials else None
            if creds:
                return creds.basic()
        return None

    async def _authenticate(self, domain: str, scopes: Sequence[str], header: str,
                            where: str) -> None:
        if not header:
            raise Unauthorized(where, "401 without a WWW-Authenticate challenge")
        ch = parse_challenge(header)
        try:
            creds = self.credentials.get(domain) if self.credentials else None
        except AuthError as e:
            raise Unauthorized(where, str(e)) from None
        if ch.scheme == "basic":
            if creds is None:
                raise Unauthorized(where, f"authentication required; run `berth login {domain}`")
            self._basic.add(domain)
            return
        if ch.scheme != "bearer" or "realm" not in ch.params:
            raise Unauthorized(where, f"unsupported auth challenge {header!r}")
        self._tokens[(domain, " ".join(scopes))] = await self._token(domain, ch, scopes, where)

    async def _token(self, domain: str, ch: Challenge, scopes: Sequence[str], where: str) -> str:
        query: list[tuple[str, str]] = []
        if "service" in ch.params:
            query.append(("service", ch.params["service"]))
        query += [("scope", s) for s in (scopes or ([ch.params["scope"]]
                                                   if "scope" in ch.params else []))]
        url = ch.params["realm"] + ("?" + urlencode(query) if query else "")
        creds = self.credentials.get(domain) if self.credentials else None
        hdrs = {"Authorization": creds.basic()} if creds else {}
        try:
            async with self.session.get(url, headers=hdrs) as resp:
                body = await resp.content.read(1 << 20)
                if resp.status != 200:
                    hint = "" if creds else f"; run `berth login {domain}`"
                    raise Unauthorized(where, f"token server {ch.params['realm']} said "
                                       f"{_error_text(body, resp.status)}{hint}")
        except (aiohttp.ClientError, TimeoutError) as e:
            raise Unauthorized(where, f"token server {ch.params['realm']}: {e}") from None
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise Unauthorized(where, "token server answered without a token")
        return token

    # --- API ---

    async def ping(self, domain: str) -> None:
        """GET /v2/ (what `login` checks credentials with)."""
        resp = await self._send("GET", domain, "/v2/")
        body = await resp.read()
        resp.release()
        if resp.status != 200:
            raise RegistryError(domain, _error_text(body, resp.status))

    async def get_manifest(self, domain: str, repo: str, reference: str,
                           accept: str = MANIFEST_ACCEPT) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of a manifest or index; size and digest checked."""
        where = f"{domain}/{repo}:{reference}" if not reference.startswith("sha256:") else \
            f"{domain}/{repo}@{reference}"
        resp = await self._send("GET", domain, f"/v2/{repo}/manifests/{reference}",
                                scopes=[f"repository:{repo}:pull"], headers={"Accept": accept})
        try:
            if resp.status == 404:
                raise NotFound(where, "manifest unknown: no such image in the registry")
            if resp.status != 200:
                raise RegistryError(where, _error_text(await resp.read(), resp.status))
            limit = self.options.max_manifest
            if (resp.content_length or 0) > limit:
                raise RegistryError(where, f"manifest of {resp.content_length} bytes refused "
                                    f"(limit {limit})")
            data = await self._read_limited(resp, limit, where)
            mt = resp.headers.get("Content-Type", "").split(";")[0].strip()
            header_digest = resp.headers.get("Docker-Content-Digest")
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as e:
            raise RegistryError(where, f"manifest transfer failed: {e}") from None
        finally:
            resp.release()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise DigestMismatch(reference, digest, where)
        if header_digest and header_digest.startswith("sha256:") and header_digest != digest:
            raise DigestMismatch(header_digest, digest, where)
        return data, mt, digest

    async def _read_limited(self, resp: aiohttp.ClientResponse, limit: int, where: str) -> bytes:
        buf = bytearray()
        async for chunk in resp.content.iter_chunked(CHUNK):
            buf += chunk
            if len(buf) > limit:
                raise RegistryError(where, f"manifest larger than {limit} bytes refused")
        return bytes(buf)

    async def blob_exists(self, domain: str, repo: str, digest: str,
                          scopes: Sequence[str] = ()) -> int | None:
        resp = await self._send("HEAD", domain, f"/v2/{repo}/blobs/{digest}",
                                scopes=scopes or [f"repository:{repo}:pull"])
        resp.release()
        if resp.status == 200:
            return resp.content_length
        if resp.status == 404:
            return None
        raise RegistryError(f"{domain}/{repo}", f"HEAD blob {digest}: HTTP {resp.status}")

    async def fetch_blob(self, domain: str, repo: str, desc: Descriptor, blobs: BlobStore,
                         progress: Progress | None = None) -> str:
        """Download a blob into the store: resumable, verified, bounded retries."""
        lock = self._blob_locks.setdefault(desc.digest, asyncio.Lock())
        async with lock:
            if blobs.has(desc.digest):
                return desc.digest
            return await self._fetch_blob(domain, repo, desc, blobs, progress or NullProgress())

    async def _fetch_blob(self, domain: str, repo: str, desc: Descriptor, blobs: BlobStore,
                          progress: Progress) -> str:
        where = f"{domain}/{repo}@{desc.digest}"
        attempts = self.options.max_attempts
        last = ""
        with blobs.writer(desc.digest, desc.size, resume=True, source=f"{domain}/{repo}") as w:
            progress.start(desc.digest, "Downloading", desc.size)
            if w.offset:
                progress.advance(desc.digest, w.offset)
            for attempt in range(1, attempts + 1):
                if w.offset >= desc.size:
                    break
                hdrs = {"Range": f"bytes={w.offset}-"} if w.offset else {}
                resp = await self._send("GET", domain, f"/v2/{repo}/blobs/{desc.digest}",
                                        scopes=[f"repository:{repo}:pull"], headers=hdrs)
                try:
                    if resp.status == 404:
                        raise NotFound(where, "blob unknown to the registry")
                    if resp.status == 416 or (resp.status == 200 and w.offset):
                        w.reset()  # Range ignored or refused: start over
                        progress.start(desc.digest, "Downloading", desc.size)
                        if resp.status == 416:
                            continue
                    elif resp.status not in (200, 206):
                        raise RegistryError(where, _error_text(await resp.read(), resp.status))
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        w.write(chunk)
                        progress.advance(desc.digest, len(chunk))
                    if w.offset >= desc.size:
                        break
                    last = f"transfer ended after {w.offset} of {desc.size} bytes"
                except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError,
                        TimeoutError) as e:
                    last = f"{type(e).__name__}: {e or 'stalled'}"
                except BlobError as e:
                    progress.done(desc.digest, "Failed")
                    raise RegistryError(where, str(e)) from None
                finally:
                    resp.release()
                log.info("%s: %s; resuming at byte %d (%d/%d)", where, last, w.offset,
                         attempt, attempts)
                await self._backoff(attempt, attempts, where, last)
            else:
                raise RegistryError(where, f"gave up after {attempts} attempts: {last}")
            progress.start(desc.digest, "Verifying", desc.size)
            try:
                digest = w.commit()
            except BlobError as e:
                progress.done(desc.digest, "Failed")
                raise RegistryError(where, str(e)) from None
        progress.done(desc.digest, "Download complete")
        return digest

    async def mount_blob(self, domain: str, repo: str, digest: str,
                         source_repo: str) -> str | None:
        """Cross-repository mount; None if mounted, else an upload URL to use instead."""
        q = urlencode({"mount": digest, "from": source_repo})
        resp = await self._send("POST", domain, f"/v2/{repo}/blobs/uploads/?{q}",
                                scopes=[f"repository:{repo}:pull,push",
                                        f"repository:{source_repo}:pull"])
        resp.release()
        if resp.status == 201:
            return None
        if resp.status == 202:
            return self._location(domain, resp)
        raise RegistryError(f"{domain}/{repo}", f"mount of {digest}: HTTP {resp.status}")

    def _location(self, domain: str, resp: aiohttp.ClientResponse) -> str:
        loc = resp.headers.get("Location")
        if not loc:
            raise RegistryError(domain, f"{resp.method} {resp.url.path}: no Location header")
        return urljoin(str(resp.url), loc)

    async def upload_blob(self, domain: str, repo: str, digest: str, size: int,
                          opener: Callable[[], IO[bytes]], location: str | None = None,
                          progress: Progress | None = None) -> None:
        """Push one blob: monolithic PUT, or PATCH chunks when chunk_size is set."""
        prog = progress or NullProgress()
        where = f"{domain}/{repo}@{digest}"
        scopes = [f"repository:{repo}:pull,push"]
        last = ""
        for attempt in range(1, self.options.max_attempts + 1):
            try:
                if location is None:
                    resp = await self._send("POST", domain, f"/v2/{repo}/blobs/uploads/",
                                            scopes=scopes)
                    resp.release()
                    if resp.status != 202:
                        raise RegistryError(where, f"start upload: HTTP {resp.status}")
                    location = self._location(domain, resp)
                prog.start(digest, "Pushing", size)
                await self._upload(domain, location, digest, size, opener, scopes, prog, where)
                prog.done(digest, "Pushed")
                return
            except (RegistryError, aiohttp.ClientError, TimeoutError) as e:
                if isinstance(e, Unauthorized | NotFound):
                    raise
                last = str(e)
                location = None  # start a fresh upload session
                await self._backoff(attempt, self.options.max_attempts, where, last)
        raise RegistryError(where, f"upload gave up after {self.options.max_attempts} "
                            f"attempts: {last}")

    async def _upload(self, domain: str, location: str, digest: str, size: int,
                      opener: Callable[[], IO[bytes]], scopes: Sequence[str],
                      prog: Progress, where: str) -> None:
        chunk = self.options.chunk_size
        octet = {"Content-Type": "application/octet-stream"}
        with opener() as f:
            if chunk is None or size <= chunk:
                resp = await self._send("PUT", domain, _with_query(location, digest), scopes=scopes,
                                        headers={**octet, "Content-Length": str(size)},
                                        body=lambda: _stream(f, prog, digest), retry=False)
            else:
                offset = 0
                while offset < size:
                    data = f.read(chunk)
                    end = offset + len(data) - 1
                    resp = await self._send(
                        "PATCH", domain, location, scopes=scopes, retry=False, body=data,
                        headers={**octet, "Content-Range": f"{offset}-{end}",
                                 "Content-Length": str(len(data))})
                    resp.release()
                    if resp.status != 202:
                        raise RegistryError(where, f"chunk {offset}-{end}: HTTP {resp.status}")
                    location = self._location(domain, resp)
                    offset += len(data)
                    prog.advance(digest, len(data))
                resp = await self._send("PUT", domain, _with_query(location, digest),
                                        scopes=scopes, retry=False,
                                        headers={"Content-Length": "0"})
        body_text = await resp.read()
        resp.release()
        if resp.status != 201:
            raise RegistryError(where, f"finish upload: {_error_text(body_text, resp.status)}")

    async def put_manifest(self, domain: str, repo: str, reference: str, data: bytes,
                           media_type: str) -> str:
        where = f"{domain}/{repo}:{reference}"
        resp = await self._send("PUT", domain, f"/v2/{repo}/manifests/{reference}",
                                scopes=[f"repository:{repo}:pull,push"],
                                headers={"Content-Type": media_type}, body=data)
        body = await resp.read()
        resp.release()
        if resp.status != 201:
            raise RegistryError(where, f"manifest push: {_error_text(body, resp.status)}")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        said = resp.headers.get("Docker-Content-Digest")
        if said and said != digest:
            raise DigestMismatch(digest, said, where)
        return digest


def _with_query(location: str, digest: str) -> str:
    return location + ("&" if "?" in location else "?") + urlencode({"digest": digest})


async def _stream(f: IO[bytes], prog: Progress, item: str) -> AsyncIterator[bytes]:
    """A file for aiohttp to send, reporting progress as it goes."""
    while data := f.read(CHUNK):
        prog.advance(item, len(data))
        yield data
