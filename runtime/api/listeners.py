"""Where berthd listens: `-H` addresses, systemd socket activation, mTLS.

Each listening socket comes from one of two places: systemd passed it
(`LISTEN_FDS`, berthd.socket) or berthd binds it from a `-H` address. TCP
always gets mutual TLS (the client certificate is verified against the CA),
unless the operator explicitly asks for an insecure listener.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from runtime import tls

log = logging.getLogger("berth.daemon")

DEFAULT_UNIX = "/run/berth/berthd.sock"
DEFAULT_TLS_PORT = 2376
SOCKET_GROUP = "berth"
# systemd credential names for the server's TLS material (see berthd.service).
CREDENTIAL_NAMES = (tls.CREDENTIAL_CA, tls.CREDENTIAL_CERT, tls.CREDENTIAL_KEY)


class ListenError(Exception):
    """A listener cannot be set up; the message says which and why."""


class Scheme(StrEnum):
    UNIX = "unix"
    TCP = "tcp"
    FD = "fd"


@dataclass(frozen=True)
class ListenAddress:
    scheme: Scheme
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.scheme is Scheme.UNIX:
            return f"unix://{self.path}"
        if self.scheme is Scheme.FD:
            return "fd://"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


def parse_address(spec: str) -> ListenAddress:
    """Parse a dockerd-style `-H` value: unix://PATH, tcp://HOST:PORT, fd://."""
    scheme, sep, rest = spec.partition("://")
    if not sep:
        raise ListenError(f"invalid listen address {spec!r}: expected unix://PATH, "
                          "tcp://HOST:PORT or fd://")
    if scheme == Scheme.UNIX:
        return ListenAddress(Scheme.UNIX, path=rest or DEFAULT_UNIX)
    if scheme == Scheme.FD:
        return ListenAddress(Scheme.FD)
    if scheme == Scheme.TCP:
        host, port = _split_host_port(spec, rest)
        return ListenAddress(Scheme.TCP, host=host, port=port)
    raise ListenError(f"invalid listen address {spec!r}: unknown scheme {scheme!r}")


def _split_host_port(spec: str, rest: str) -> tuple[str, int]:
    rest = rest.rstrip("/")
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port_text = tail.removeprefix(":")
    else:
        host, _, port_text = rest.rpartition(":") if ":" in rest else (rest, "", "")
    try:
        port = int(port_text) if port_text else DEFAULT_TLS_PORT
    except ValueError:
        raise ListenError(f"invalid listen address {spec!r}: bad port {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise ListenError(f"invalid listen address {spec!r}: port out of range")
    return host or "0.0.0.0", port


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def tls_files(ca: str | None, cert: str | None, key: str | None,
              credentials_dir: str | None) -> TlsFiles | None:
    """TLS material from the flags, else from systemd credentials, else None."""
    given = [x for x in (ca, cert, key) if x]
    if given:
        if len(given) != 3 or ca is None or cert is None or key is None:
            raise ListenError("--tlscacert, --tlscert and --tlskey go together: give all three")
        return TlsFiles(Path(ca), Path(cert), Path(key))
    if credentials_dir:
        paths = [Path(credentials_dir) / name for name in CREDENTIAL_NAMES]
        if all(p.is_file() for p in paths):
            return TlsFiles(*paths)
    return None


def server_ssl_context(files: TlsFiles) -> ssl.SSLContext:
    """Mutual TLS: the server proves itself and the client must show a cert from the CA."""
    try:
        return tls.server_context(files.ca, files.cert, files.key)
    except tls.TlsError as e:
        raise ListenError(str(e)) from e


def activated_sockets() -> list[socket.socket]:
    """Sockets passed by systemd (LISTEN_FDS), empty when not socket-activated."""
    if "LISTEN_FDS" not in os.environ:
        return []
    from systemd import daemon as sd  # the host OS ships python3-systemd

    # sd_listen_fds() also sets FD_CLOEXEC: containers never inherit the API sockets.
    fds: list[int] = sd.listen_fds()
    return [socket.socket(fileno=fd) for fd in fds]


def is_unix(sock: socket.socket) -> bool:
    return sock.family == socket.AF_UNIX


def bind_unix(path: Path, group: str = SOCKET_GROUP) -> socket.socket:
    """Bind a unix socket at `path`, mode 0660 and group `group` where it exists.

    A stale socket file is replaced, but one that a live daemon answers on
    is not: two daemons on one data root would corrupt each other's state.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if _answers(path):
            raise ListenError(f"{path} is in use: another berthd is listening there")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Bind under a umask so that the socket is never wider than 0660.
    old_umask = os.umask(0o117)
    try:
        sock.bind(os.fspath(path))
    except OSError as e:
        sock.close()
        raise ListenError(f"cannot bind unix://{path}: {e.strerror}") from e
    finally:
        os.umask(old_umask)
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        log.debug("group %s does not exist; %s stays root-only", group, path)
    else:
        os.chown(path, 0, gid)
    os.chmod(path, 0o660)
    sock.listen(128)
    return sock


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(os.fspath(path))
    except OSError:
        return False
    else:
        return True
    finally:
        probe.close()


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        why = "address in use" if e.errno == errno.EADDRINUSE else e.strerror
        raise ListenError(f"cannot bind tcp://{host}:{port}: {why}") from e
    sock.listen(128)
    return sock


def describe(sock: socket.socket) -> str:
    name = sock.getsockname()
    if is_unix(sock):
        return f"unix://{name if isinstance(name, str) else name.decode(errors='replace')}"
    host, port = name[0], name[1]
    return f"tcp://{f'[{host}]' if ':' in host else host}:{port}"


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.close()
