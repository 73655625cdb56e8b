"""Mutual-TLS material for berthd's TCP API, in Docker's file layout.

One CA signs a server pair (for berthd) and a client pair (for the docker
CLI, `berth`, docker-py). Files are written the way `dockerd --tlsverify`
and `DOCKER_CERT_PATH` expect them:

    ca.pem  server-cert.pem  server-key.pem  cert.pem  key.pem

Keys are ECDSA P-256: small enough to pass as systemd credentials through
SMBIOS, and fast to make on every test run. The server's three files reach
the guest as the credentials named in `CREDENTIALS`; the client pair stays
on the host.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from runtime.fsutil import write_atomic

# Names the server certificate answers to by default: the forwarded port on
# the host is always reached as 127.0.0.1 or localhost.
DEFAULT_SERVER_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
DEFAULT_DAYS = 365

CA_FILE = "ca.pem"
SERVER_CERT_FILE = "server-cert.pem"
SERVER_KEY_FILE = "server-key.pem"
CLIENT_CERT_FILE = "cert.pem"
CLIENT_KEY_FILE = "key.pem"

# systemd credential name -> file in the Docker layout (server side only).
CREDENTIAL_CA = "berth.tls.ca"
CREDENTIAL_CERT = "berth.tls.cert"
CREDENTIAL_KEY = "berth.tls.key"
CREDENTIALS: Mapping[str, str] = {
    CREDENTIAL_CA: CA_FILE,
    CREDENTIAL_CERT: SERVER_CERT_FILE,
    CREDENTIAL_KEY: SERVER_KEY_FILE,
}


class Usage(StrEnum):
    SERVER = "server"
    CLIENT = "client"


class TlsError(Exception):
    """TLS material is missing or unusable; the message names the file."""


@dataclass(frozen=True)
class Identity:
    """A certificate with its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True)
class TlsFiles:
    """A folder in Docker's layout; usable as DOCKER_CERT_PATH."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / CA_FILE

    @property
    def server_cert(self) -> Path:
        return self.directory / SERVER_CERT_FILE

    @property
    def server_key(self) -> Path:
        return self.directory / SERVER_KEY_FILE

    @property
    def client_cert(self) -> Path:
        return self.directory / CLIENT_CERT_FILE

    @property
    def client_key(self) -> Path:
        return self.directory / CLIENT_KEY_FILE

    def server_credentials(self) -> dict[str, bytes]:
        """The systemd credentials berthd reads its server TLS from."""
        return {name: (self.directory / f).read_bytes() for name, f in CREDENTIALS.items()}

    def docker_flags(self) -> list[str]:
        """The docker CLI flags that use the client pair."""
        return [
            "--tlsverify",
            f"--tlscacert={self.ca}",
            f"--tlscert={self.client_cert}",
            f"--tlskey={self.client_key}",
        ]


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Berth"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    # An hour of slack: a freshly booted guest's clock may lag the host's.
    return now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)


def make_ca(common_name: str = "Berth CA", *, days: int = DEFAULT_DAYS) -> Identity:
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Identity(cert, key)


def _san(names: Iterable[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


_EKU = {
    Usage.SERVER: ExtendedKeyUsageOID.SERVER_AUTH,
    Usage.CLIENT: ExtendedKeyUsageOID.CLIENT_AUTH,
}


def issue(
    ca: Identity,
    common_name: str,
    usage: Usage,
    *,
    names: Iterable[str] = (),
    days: int = DEFAULT_DAYS,
) -> Identity:
    """Sign a leaf for `usage`; `names` (DNS names or IP addresses) go in its SAN."""
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(days)
    eku = _EKU[usage]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=True, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    names = tuple(names)
    if names:
        builder = builder.add_extension(_san(names), critical=False)
    return Identity(builder.sign(ca.key, hashes.SHA256()), key)


def generate(
    directory: Path,
    *,
    server_names: Iterable[str] = DEFAULT_SERVER_NAMES,
    days: int = DEFAULT_DAYS,
) -> TlsFiles:
    """Make a fresh CA, server pair and client pair in `directory` (Docker layout)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca(days=days)
    server = issue(ca, "berthd", Usage.SERVER, names=server_names, days=days)
    client = issue(ca, "berth-client", Usage.CLIENT, days=days)
    files = TlsFiles(directory)
    # Keys first and certificates last, so a reader that sees ca.pem sees a
    # complete set.
    write_atomic(files.server_key, server.key_pem(), 0o600)
    write_atomic(files.client_key, client.key_pem(), 0o600)
    write_atomic(files.server_cert, server.cert_pem(), 0o644)
    write_atomic(files.client_cert, client.cert_pem(), 0o644)
    write_atomic(files.ca, ca.cert_pem(), 0o644)
    return files


def _check(*paths: Path) -> None:
    for p in paths:
        if not p.is_file():
            raise TlsError(f"TLS file {p} is missing")


def server_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """A server context that requires a client certificate signed by `ca`."""
    _check(ca, cert, key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(cafile=ca)
    except (ssl.SSLError, OSError) as e:
        raise TlsError(f"cannot load server TLS from {cert}, {key}, {ca}: {e}") from e
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """A client context presenting `cert` and trusting only servers signed by `ca`."""
    _check(ca, cert, key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(cafile=ca)
    except (ssl.SSLError, OSError) as e:
        raise TlsError(f"cannot load client TLS from {cert}, {key}, {ca}: {e}") from e
    return ctx
