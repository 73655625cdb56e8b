"""runtime/tls: the CA, server and client pairs berthd's mTLS port relies on."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from runtime import tls


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tls.TlsFiles:
    return tls.generate(tmp_path_factory.mktemp("tls"))


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_docker_layout_and_key_modes(files: tls.TlsFiles) -> None:
    names = sorted(p.name for p in files.directory.iterdir())
    assert names == ["ca.pem", "cert.pem", "key.pem", "server-cert.pem", "server-key.pem"]
    for key in (files.server_key, files.client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_leaves_are_signed_by_the_ca(files: tls.TlsFiles) -> None:
    ca = _load(files.ca)
    for leaf in (files.server_cert, files.client_cert):
        _load(leaf).verify_directly_issued_by(ca)
    # Same subject name, different key: only the signature tells them apart.
    impostor = tls.make_ca()
    with pytest.raises(InvalidSignature):
        _load(files.server_cert).verify_directly_issued_by(impostor.cert)


def test_server_san_and_usages(files: tls.TlsFiles) -> None:
    server = _load(files.server_cert)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert ExtendedKeyUsageOID.CLIENT_AUTH not in eku


def test_client_cert_is_for_client_auth_only(files: tls.TlsFiles) -> None:
    eku = _load(files.client_cert).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_credentials_carry_the_server_side_only(files: tls.TlsFiles) -> None:
    creds = files.server_credentials()
    assert set(creds) == {"berth.tls.ca", "berth.tls.cert", "berth.tls.key"}
    assert creds["berth.tls.key"] == files.server_key.read_bytes()
    assert files.client_key.read_bytes() not in creds.values()


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> str | None:
    """Handshake over a socket pair; returns the server's error, or None."""
    a, b = socket.socketpair()
    error: list[str] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                s.sendall(b"ok")
        except (ssl.SSLError, OSError) as e:
            error.append(str(e))

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname="localhost") as c:
            c.recv(2)
    except (ssl.SSLError, OSError):
        pass
    t.join(10)
    return error[0] if error else None


def test_mutual_tls_accepts_own_client(files: tls.TlsFiles) -> None:
    server = tls.server_context(files.ca, files.server_cert, files.server_key)
    client = tls.client_context(files.ca, files.client_cert, files.client_key)
    assert _handshake(server, client) is None


def test_client_from_another_ca_is_rejected(files: tls.TlsFiles, tmp_path: Path) -> None:
    stranger = tls.generate(tmp_path / "stranger")
    server = tls.server_context(files.ca, files.server_cert, files.server_key)
    # The stranger trusts our server's CA, but presents its own CA's cert.
    client = tls.client_context(files.ca, stranger.client_cert, stranger.client_key)
    error = _handshake(server, client)
    assert error is not None and "certificate" in error.lower()


def test_client_without_certificate_is_rejected(files: tls.TlsFiles) -> None:
    server = tls.server_context(files.ca, files.server_cert, files.server_key)
    client = ssl.create_default_context(cafile=str(files.ca))
    error = _handshake(server, client)
    assert error is not None and "certificate" in error.lower()


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(tls.TlsError, match=r"ca\.pem is missing"):
        tls.server_context(tmp_path / "ca.pem", tmp_path / "c.pem", tmp_path / "k.pem")
