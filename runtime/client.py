"""A small synchronous client of the Docker Engine API, used by the `berth` CLI.

Standard library only, and a minimal HTTP/1.1 of its own over one kept-alive
socket: `berth run --rm` is measured against `podman run`, and importing
http.client (or aiohttp) would cost more than the request itself. It speaks
to berthd and, since it is the Docker API, to dockerd as well.

Flow: `Client.from_env()` picks the daemon (-H, BERTH_HOST, DOCKER_HOST, the
default socket) -> `call()` sends one request and returns a `Response` that
is read whole (`json()`) or as a stream (`chunks()`, `json_lines()`) ->
`hijack()` upgrades the connection to a raw duplex stream (attach, exec).
Errors come back as `DaemonError` with the daemon's own message.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote, urlencode

if TYPE_CHECKING:
    import ssl

API_VERSION = "1.47"
DEFAULT_HOST = "unix:///run/berth/berthd.sock"
DEFAULT_TLS_PORT = 2376
_CHUNK = 256 * 1024

Params = Mapping[str, str | int | bool | list[str] | None]


class ClientError(Exception):
    """An expected failure talking to the daemon; the message is one line."""


class ConnectError(ClientError):
    pass


class DaemonError(ClientError):
    """The daemon answered with an error status and Docker's `{"message": ...}`."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"Error response from daemon: {message}")


# NamedTuples and plain classes, not dataclasses: `dataclasses` imports `inspect`
# (ast, dis, ...), a few ms of every `berth` start.
class TlsConfig(NamedTuple):
    ca: str | None
    cert: str | None
    key: str | None
    verify: bool = True

    def context(self) -> ssl.SSLContext:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            if self.cert and self.key:
                ctx.load_cert_chain(self.cert, self.key)
            if self.verify:
                if self.ca:
                    ctx.load_verify_locations(cafile=self.ca)
                else:
                    ctx.load_default_certs()
            else:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
        except (OSError, ssl.SSLError) as e:
            raise ClientError(f"cannot load TLS files ({self.ca}, {self.cert}, {self.key}): "
                              f"{e}") from e
        return ctx


class Endpoint(NamedTuple):
    """Where the daemon listens: unix://PATH or tcp://HOST:PORT."""

    unix_path: str = ""
    host: str = ""
    port: int = 0

    @classmethod
    def parse(cls, spec: str) -> Endpoint:
        scheme, sep, rest = spec.partition("://")
        if not sep:
            raise ClientError(f"invalid host {spec!r}: expected unix://PATH or tcp://HOST:PORT")
        if scheme == "unix":
            return cls(unix_path=rest)
        if scheme in ("tcp", "https", "http"):
            rest = rest.rstrip("/")
            if rest.startswith("["):
                host, _, tail = rest[1:].partition("]")
                port_text = tail.removeprefix(":")
            else:
                host, _, port_text = rest.partition(":")
            try:
                port = int(port_text) if port_text else DEFAULT_TLS_PORT
            except ValueError:
                raise ClientError(f"invalid host {spec!r}: bad port") from None
            return cls(host=host or "127.0.0.1", port=port)
        raise ClientError(f"invalid host {spec!r}: unknown scheme {scheme!r}")

    def __str__(self) -> str:
        return f"unix://{self.unix_path}" if self.unix_path else f"tcp://{self.host}:{self.port}"


class Connection:
    """One socket and its buffered reader."""

    def __init__(self, endpoint: Endpoint, tls: TlsConfig | None, timeout: float | None) -> None:
        self.endpoint = endpoint
        try:
            if endpoint.unix_path:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                sock.connect(endpoint.unix_path)
            else:
                sock = socket.create_connection((endpoint.host, endpoint.port), timeout)
                if tls is not None:
                    sock = tls.context().wrap_socket(sock, server_hostname=endpoint.host)
        except OSError as e:
            raise ConnectError(f"Cannot connect to the daemon at {endpoint}: "
                               f"{e.strerror or e}. Is berthd running?") from e
        self.sock = sock
        self.reader: IO[bytes] = sock.makefile("rb")
        self.reusable = True

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class Response:
    """Status and headers; the body is read on demand (whole or streamed)."""

    def __init__(self, conn: Connection, status: int, reason: str,
                 headers: dict[str, str], head_only: bool) -> None:
        self.conn = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self._chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        length = headers.get("content-length")
        self._remaining = int(length) if length is not None else None
        self._done = head_only or status in (204, 304) or self._remaining == 0
        if self._remaining is None and not self._chunked:
            conn.reusable = False  # the body ends when the daemon closes

    def chunks(self) -> Iterator[bytes]:
        """The body as it arrives; the connection is reusable once this ends."""
        r = self.conn.reader
        while not self._done:
            if self._chunked:
                size_line = r.readline()
                if not size_line:
                    break
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while r.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data = r.read(size)
                r.readline()
                yield data
            elif self._remaining is not None:
                data = r.read1(min(_CHUNK, self._remaining))  # type: ignore[attr-defined]
                if not data:
                    break
                self._remaining -= len(data)
                yield data
                if self._remaining <= 0:
                    break
            else:
                data = r.read1(_CHUNK)  # type: ignore[attr-defined]
                if not data:
                    break
                yield data
        self._done = True

    def read(self) -> bytes:
        return b"".join(self.chunks())

    def json(self) -> Any:
        body = self.read()
        return json.loads(body) if body.strip() else None

    def json_lines(self) -> Iterator[Any]:
        """A stream of JSON values, one per line (events, stats, load progress)."""
        pending = b""
        for chunk in self.chunks():
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    yield json.loads(line)
        if pending.strip():
            yield json.loads(pending)


class Hijacked:
    """A connection upgraded to a raw stream: read from `reader`, write to `sock`."""

    def __init__(self, sock: socket.socket, reader: IO[bytes]) -> None:
        self.sock = sock
        self.reader = reader

    def close_write(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


Body = bytes | IO[bytes] | Iterable[bytes] | None


class Client:
    def __init__(self, endpoint: Endpoint, tls: TlsConfig | None = None,
                 version: str = API_VERSION, timeout: float | None = None) -> None:
        self.endpoint = endpoint
        self.tls = tls
        self.version = version
        self.timeout = timeout
        self._conn: Connection | None = None
        self._last: Response | None = None

    @classmethod
    def from_env(cls, host: str | None = None, tls: TlsConfig | None = None,
                 env: Mapping[str, str] = os.environ) -> Client:
        spec = host or env.get("BERTH_HOST") or env.get("DOCKER_HOST") or DEFAULT_HOST
        endpoint = Endpoint.parse(spec)
        version = env.get("BERTH_API_VERSION") or env.get("DOCKER_API_VERSION") or API_VERSION
        if tls is None and not endpoint.unix_path and env.get("DOCKER_TLS_VERIFY"):
            cert_path = env.get("DOCKER_CERT_PATH", os.path.expanduser("~/.docker"))
            tls = TlsConfig(os.path.join(cert_path, "ca.pem"),
                            os.path.join(cert_path, "cert.pem"),
                            os.path.join(cert_path, "key.pem"))
        return cls(endpoint, tls, version)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> Connection:
        last = self._last
        if last is not None and not last._done:
            # A previous streamed body was abandoned: that socket is not reusable.
            last.conn.reusable = False
        if self._conn is None or not self._conn.reusable:
            if self._conn is not None:
                self._conn.close()
            self._conn = Connection(self.endpoint, self.tls, self.timeout)
        return self._conn

    def url(self, path: str, params: Params | None = None) -> str:
        target = f"/v{self.version}{path}"
        pairs: list[tuple[str, str]] = []
        for key, value in (params or {}).items():
            if isinstance(value, list):
                pairs.extend((key, str(v)) for v in value)  # repeated: ?names=a&names=b
            elif isinstance(value, bool):
                pairs.append((key, "1" if value else "0"))
            elif value is not None:
                pairs.append((key, str(value)))
        return target + ("?" + urlencode(pairs) if pairs else "")

    def _send(self, conn: Connection, method: str, target: str, body: Body,
              headers: Mapping[str, str]) -> None:
        head = {"Host": "berth", "User-Agent": "berth-cli", **headers}
        data: bytes | None = None
        stream: Iterable[bytes] | None = None
        if isinstance(body, bytes):
            data = body
            head["Content-Length"] = str(len(body))
        elif body is not None:
            stream = _iter_body(body)
            head["Transfer-Encoding"] = "chunked"
        elif method in ("POST", "PUT"):
            head["Content-Length"] = "0"
        lines = [f"{method} {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in head.items()]
        try:
            conn.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (data or b""))
        except OSError as e:
            conn.reusable = False
            raise ConnectError(f"lost the connection to {self.endpoint}: {e}") from e
        if stream is None:
            return
        try:
            for chunk in stream:
                if chunk:
                    conn.sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            conn.sock.sendall(b"0\r\n\r\n")
        except OSError:
            # The daemon may refuse a body half-way (a bad tar) and close: its
            # error response is already on the socket, so read it rather than
            # reporting a broken pipe.
            conn.reusable = False

    def _read_head(self, conn: Connection) -> tuple[int, str, dict[str, str]]:
        try:
            status_line = conn.reader.readline()
            if not status_line:
                raise ConnectError(f"{self.endpoint} closed the connection")
            parts = status_line.decode("latin-1").rstrip("\r\n").split(" ", 2)
            status_text, reason = parts[1], (parts[2] if len(parts) > 2 else "")
            headers: dict[str, str] = {}
            while True:
                line = conn.reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            return int(status_text), reason, headers
        except OSError as e:
            conn.reusable = False
            raise ConnectError(f"lost the connection to {self.endpoint}: {e}") from e

    def call(self, method: str, path: str, params: Params | None = None, *,
             json_body: Any = None, body: Body = None, headers: Mapping[str, str] | None = None,
             ok: Iterable[int] = ()) -> Response:
        """Send one request; raise DaemonError for statuses >= 400 not listed in `ok`."""
        hdrs = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs["Content-Type"] = "application/json"
        for attempt in (0, 1):
            conn = self._connection()
            reused = conn is self._conn and attempt == 0
            try:
                self._send(conn, method, self.url(path, params), body, hdrs)
                status, reason, rhdrs = self._read_head(conn)
                break
            except ConnectError:
                # A kept-alive socket the daemon closed meanwhile: retry once on a fresh one,
                # but only if the body can be sent again.
                if attempt == 1 or not reused or not (body is None or isinstance(body, bytes)):
                    raise
                conn.reusable = False
        if rhdrs.get("connection", "").lower() == "close":
            conn.reusable = False
        response = Response(conn, status, reason, rhdrs, head_only=method == "HEAD")
        self._last = response
        if status >= 400 and status not in ok:
            raise DaemonError(status, _error_message(response))
        return response

    def get(self, path: str, params: Params | None = None) -> Any:
        return self.call("GET", path, params).json()

    def post(self, path: str, params: Params | None = None, json_body: Any = None,
             ok: Iterable[int] = ()) -> Any:
        return self.call("POST", path, params, json_body=json_body, ok=ok).json()

    def delete(self, path: str, params: Params | None = None) -> Any:
        return self.call("DELETE", path, params).json()

    def hijack(self, method: str, path: str, params: Params | None = None, *,
               json_body: Any = None) -> Hijacked:
        """Docker's attach/exec-start upgrade: after 101 (or 200) the socket is raw."""
        conn = Connection(self.endpoint, self.tls, None)
        body = json.dumps(json_body).encode() if json_body is not None else None
        headers = {"Connection": "Upgrade", "Upgrade": "tcp"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        self._send(conn, method, self.url(path, params), body, headers)
        status, _reason, rhdrs = self._read_head(conn)
        if status >= 400:
            response = Response(conn, status, _reason, rhdrs, head_only=False)
            message = _error_message(response)
            conn.close()
            raise DaemonError(status, message)
        return Hijacked(conn.sock, conn.reader)


def _iter_body(body: IO[bytes] | Iterable[bytes]) -> Iterator[bytes]:
    read = getattr(body, "read", None)
    if read is None:
        yield from body
        return
    while chunk := read(_CHUNK):
        yield chunk


def _error_message(response: Response) -> str:
    raw = response.read()
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return str(doc["message"])
    text = raw.decode(errors="replace").strip()
    return text or f"{response.status} {response.reason}"


def quote_id(name: str) -> str:
    """A container or image name for a URL path (image refs keep their '/' and ':')."""
    return quote(name, safe="/:@")
