"""`berth generate-key-pair | sign | verify | login | logout`: client-side verbs.

Like cosign and `docker login`, these talk to the registry (or the local
credentials file) directly, not to berthd. `register(sub)` adds them to the
`berth` parser; each handler takes (args, ctx) like the other verbs and
turns expected failures into one line on stderr and status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.registry.auth import AuthError, CredentialStore
from runtime.registry.client import RegistryClient, RegistryError, RegistryOptions
from runtime.registry.reference import InvalidReference, parse
from runtime.registry.transfer import login, logout
from runtime.sign import keys
from runtime.sign.cosign import SignatureError, sign_image, verify_image
from runtime.store.blobs import BlobError, BlobStore

_EXPECTED = (RegistryError, AuthError, InvalidReference, keys.KeyFileError, SignatureError,
             BlobError, OSError, ValueError)


def _password(confirm: bool) -> bytes:
    """$COSIGN_PASSWORD (as cosign), else a prompt."""
    env = os.environ.get("COSIGN_PASSWORD")
    if env is not None:
        return env.encode()
    pw = getpass.getpass("Enter password for private key: ")
    if confirm and getpass.getpass("Enter password for private key again: ") != pw:
        raise keys.KeyFileError("passwords do not match")
    return pw.encode()


def _options(args: argparse.Namespace, domain: str) -> RegistryOptions:
    return RegistryOptions(insecure=frozenset({domain}) if args.allow_insecure_registry
                           else frozenset())


def _guarded(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace, Any], int]:
    def run(args: argparse.Namespace, ctx: Any = None) -> int:
        try:
            return fn(args)
        except _EXPECTED as e:
            print(f"berth: {e}", file=sys.stderr)
            return 1
    return run


def cmd_generate_key_pair(args: argparse.Namespace) -> int:
    pair = keys.generate_key_pair(_password(confirm=True))
    priv, pub = keys.write_key_pair(pair, Path(args.output_key_prefix))
    print(f"Private key written to {priv}\nPublic key written to {pub}")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    ref = parse(args.image)
    key = keys.decrypt_private_key(Path(args.key).read_bytes(), _password(confirm=False))

    async def go() -> str:
        with tempfile.TemporaryDirectory(prefix="berth-sign-") as tmp:
            async with RegistryClient(_options(args, ref.domain), CredentialStore()) as c:
                digest, _ = await sign_image(c, ref, key, BlobStore(Path(tmp)))
                return digest
    digest = asyncio.run(go())
    print(f"Pushing signature to: {ref.name}@{digest}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    ref = parse(args.image)
    pubs = [keys.load_public_key(Path(k).read_bytes()) for k in args.key]

    async def go() -> list[str]:
        with tempfile.TemporaryDirectory(prefix="berth-verify-") as tmp:
            async with RegistryClient(_options(args, ref.domain), CredentialStore()) as c:
                _, good = await verify_image(c, ref, pubs, BlobStore(Path(tmp)))
                return [v.signature.payload.decode() for v in good]
    payloads = asyncio.run(go())
    print(f"Verification for {ref.familiar} --\nThe signatures were verified against the "
          f"specified public key", file=sys.stderr)
    print("[" + ",".join(payloads) + "]")
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    server = args.server or "docker.io"
    user = args.username or input("Username: ")
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else (
        args.password or getpass.getpass("Password: "))

    async def go() -> None:
        async with RegistryClient(_options(args, server), CredentialStore()) as c:
            await login(c, server, user, password)
    asyncio.run(go())
    print("Login Succeeded")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    server = args.server or "docker.io"
    if logout(server):
        print(f"Removing login credentials for {server}")
    else:
        print(f"Not logged in to {server}")
    return 0


def register(sub: Any) -> None:
    def verb(name: str, fn: Callable[[argparse.Namespace], int],
             text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=text, description=text)
        p.set_defaults(func=_guarded(fn))
        return p

    def insecure(p: argparse.ArgumentParser) -> None:
        p.add_argument("--allow-insecure-registry", action="store_true",
                       help="talk plain HTTP to this registry")

    p = verb("generate-key-pair", cmd_generate_key_pair,
             "Make an ECDSA P-256 key pair in cosign's format (password: $COSIGN_PASSWORD)")
    p.add_argument("--output-key-prefix", default="cosign", help="writes PREFIX.key, PREFIX.pub")
    p = verb("sign", cmd_sign, "Sign an image in a registry (cosign-compatible signature)")
    p.add_argument("--key", required=True, help="private key file (cosign format)")
    insecure(p)
    p.add_argument("image", metavar="IMAGE")
    p = verb("verify", cmd_verify, "Verify an image's signatures with public keys")
    p.add_argument("--key", required=True, action="append", help="public key file (repeatable)")
    insecure(p)
    p.add_argument("image", metavar="IMAGE")
    p = verb("login", cmd_login, "Log in to a registry (credentials stored 0600)")
    p.add_argument("-u", "--username")
    p.add_argument("-p", "--password")
    p.add_argument("--password-stdin", action="store_true")
    insecure(p)
    p.add_argument("server", nargs="?", metavar="SERVER")
    p = verb("logout", cmd_logout, "Forget a registry's credentials")
    p.add_argument("server", nargs="?", metavar="SERVER")
