"""Signing keys for the update repository: Ed25519, encrypted at rest.

A key store is a folder of `<keyid>.pem` files, each a PKCS#8 Ed25519
private key encrypted with the store's passphrase (never written in the
clear). Which key signs which TUF role is not recorded here: the root
metadata says that, so the two cannot disagree. `hostos keys init` creates
the keys and the repository's first metadata; `hostos keys rotate ROLE`
replaces a role's keys (for root: the new root is signed by both the old
and the new keys, as TUF's root chain requires).
"""

from __future__ import annotations

import argparse
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, SSlibKey

from hostos.errors import HostosError

PASSPHRASE_ENV = "HOSTOS_KEY_PASSPHRASE"
MIN_PASSPHRASE = 8


class KeyStoreError(HostosError):
    pass


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write a file atomically and durably (temp + fsync + rename + fsync of the
    directory); never world-readable unless `mode` says so (published metadata)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass(frozen=True)
class KeyStore:
    """A folder of encrypted Ed25519 private keys, addressed by TUF keyid."""

    path: Path
    passphrase: bytes

    def __post_init__(self) -> None:
        if len(self.passphrase) < MIN_PASSPHRASE:
            raise KeyStoreError(
                f"key passphrase for {self.path} is shorter than {MIN_PASSPHRASE} characters: "
                f"set {PASSPHRASE_ENV} or pass --passphrase-file"
            )

    def generate(self) -> CryptoSigner:
        """Make a new key, store it encrypted, return its signer."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        private = Ed25519PrivateKey.generate()
        signer = CryptoSigner(private)
        pem = private.private_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PrivateFormat.PKCS8,
            encryption_algorithm=serialization.BestAvailableEncryption(self.passphrase),
        )
        write_private(self.path / f"{signer.public_key.keyid}.pem", pem)
        return signer

    def has(self, keyid: str) -> bool:
        return (self.path / f"{keyid}.pem").is_file()

    def signer(self, keyid: str) -> CryptoSigner:
        """Load the signer for keyid; KeyStoreError if absent or undecryptable."""
        file = self.path / f"{keyid}.pem"
        try:
            pem = file.read_bytes()
        except FileNotFoundError:
            raise KeyStoreError(f"no private key {keyid[:12]}… in {self.path}") from None
        if file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyStoreError(f"{file} is readable by others: chmod 600 it")
        try:
            private = serialization.load_pem_private_key(pem, password=self.passphrase)
        except (ValueError, TypeError) as e:
            raise KeyStoreError(f"cannot decrypt {file}: wrong passphrase?") from e
        if not isinstance(private, Ed25519PrivateKey):
            raise KeyStoreError(f"{file} is not an Ed25519 key")
        return CryptoSigner(private, SSlibKey.from_crypto(private.public_key()))

    def signers(self, keyids: Iterable[str]) -> list[CryptoSigner]:
        """The signers among keyids that this store holds (maybe fewer than asked)."""
        return [self.signer(k) for k in keyids if self.has(k)]

    def remove(self, keyid: str) -> None:
        (self.path / f"{keyid}.pem").unlink(missing_ok=True)


def passphrase_from(args: argparse.Namespace) -> bytes:
    """The passphrase from --passphrase-file, else $HOSTOS_KEY_PASSPHRASE."""
    file: Path | None = getattr(args, "passphrase_file", None)
    if file is not None:
        try:
            return file.read_bytes().rstrip(b"\n")
        except OSError as e:
            raise KeyStoreError(f"read passphrase file {file}: {e.strerror}") from e
    value = os.environ.get(PASSPHRASE_ENV)
    if not value:
        raise KeyStoreError(f"no key passphrase: set {PASSPHRASE_ENV} or pass --passphrase-file")
    return value.encode()


def add_key_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keys", type=Path, default=Path("build/release-keys"),
                        help="folder of encrypted signing keys (default: %(default)s)")
    parser.add_argument("--repo", type=Path, default=Path("build/update-repo"),
                        help="TUF repository folder to publish into (default: %(default)s)")
    parser.add_argument("--passphrase-file", type=Path,
                        help=f"file holding the key passphrase (default: ${PASSPHRASE_ENV})")


def _parse_thresholds(items: list[str]) -> dict[str, tuple[int, int]]:
    """ROLE=KEYS[/THRESHOLD] pairs, e.g. root=3/2 targets=2/2."""
    out: dict[str, tuple[int, int]] = {}
    for item in items:
        role, sep, spec = item.partition("=")
        count_s, _, thr_s = spec.partition("/")
        try:
            count = int(count_s)
            threshold = int(thr_s) if thr_s else count
        except ValueError:
            raise KeyStoreError(f"bad --role {item!r}: want ROLE=KEYS[/THRESHOLD]") from None
        if not sep or not 1 <= threshold <= count:
            raise KeyStoreError(f"bad --role {item!r}: need 1 <= THRESHOLD <= KEYS")
        out[role] = (count, threshold)
    return out


def _init(args: argparse.Namespace) -> int:
    from hostos import repo

    store = KeyStore(args.keys, passphrase_from(args))
    layout = repo.KeyLayout.default().with_overrides(_parse_thresholds(args.role))
    r = repo.Repository.create(args.repo, store, layout)
    print(f"created {args.repo} (root v{r.root_version}); keys in {args.keys}")
    print(f"trusted root for hosts: {args.repo / 'metadata' / '1.root.json'}")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from hostos import repo

    store = KeyStore(args.keys, passphrase_from(args))
    r = repo.Repository.open(args.repo, store)
    r.rotate(args.role, count=args.count, threshold=args.threshold)
    print(f"rotated {args.role} keys; root is now v{r.root_version}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("keys", help="make and rotate the update repository's signing keys")
    verbs = p.add_subparsers(dest="keys_command", metavar="VERB", required=True)
    init = verbs.add_parser("init", help="make keys and the repository's first metadata")
    add_key_arguments(init)
    init.add_argument("--role", action="append", default=[], metavar="ROLE=KEYS[/THRESHOLD]",
                      help="keys and signature threshold per role (default: 1/1 each)")
    init.set_defaults(func=_init)
    rot = verbs.add_parser("rotate", help="replace one role's keys (root: signed by old and new)")
    add_key_arguments(rot)
    rot.add_argument("role", choices=["root", "targets", "snapshot", "timestamp"])
    rot.add_argument("--count", type=int, default=None, help="new number of keys")
    rot.add_argument("--threshold", type=int, default=None, help="new threshold")
    rot.set_defaults(func=_rotate)
