"""`berth build`, and the trusted-build verbs around it: `attest`, `inspect --provenance`.

`build` sends the context as a tar (berthd applies `.dockerignore`, as
Docker's builder does with what the CLI sent); a Dockerfile outside the
context is added to the tar under a private name, like the docker CLI does.
berthd records each build's provenance (source repo, commit, Dockerfile
digest, base images). `attest` signs that record as a SLSA statement and
pushes it next to the image in its registry (cosign-compatible); `inspect
--provenance` shows the local record, or with `--key` the attestations in
the registry that verify.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tarfile

from runtime.cli.common import Context, UsageError, add_verb, out, parse_key_values, print_json
from runtime.client import DaemonError, quote_id


def context_tar(context: Path, dockerfile: Path | None) -> tuple[IO[bytes], str]:
    """The context as a tar in a temporary file, and the Dockerfile's name in it."""
    # Imported here: every `berth` run imports this module, few of them build.
    import secrets
    import tarfile
    import tempfile
    if not context.is_dir():
        raise UsageError(f"unable to prepare context: path {str(context)!r} not found")
    name = "Dockerfile"
    extra: Path | None = None
    if dockerfile is not None:
        full = dockerfile if dockerfile.is_absolute() else Path.cwd() / dockerfile
        try:
            name = str(full.resolve().relative_to(context.resolve()))
        except ValueError:
            name, extra = f".dockerfile.{secrets.token_hex(6)}", full
        if not full.is_file():
            raise UsageError(f"Cannot locate specified Dockerfile: {dockerfile}")
    elif not (context / name).is_file():
        raise UsageError(f"Cannot locate specified Dockerfile: {context / name}")
    spool = tempfile.TemporaryFile()  # noqa: SIM115 - the caller closes it
    with tarfile.open(fileobj=spool, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(os.listdir(context)):
            tar.add(context / entry, arcname=entry, filter=_portable)
        if extra is not None:
            tar.add(extra, arcname=name, filter=_portable)
    spool.seek(0)
    return spool, name


def _portable(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Owners on the client mean nothing to the image (Docker sends 0/0 too).
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def cmd_build(args: argparse.Namespace, ctx: Context) -> int:
    body, dockerfile = context_tar(Path(args.path), Path(args.file) if args.file else None)
    params: dict[str, Any] = {
        "t": list(args.tag), "dockerfile": dockerfile, "q": args.quiet,
        "nocache": args.no_cache, "target": args.target or None,
        "networkmode": args.network or None,
        "buildargs": json.dumps(_build_args(args.build_arg)) if args.build_arg else None,
        "labels": json.dumps(_labels(Path(args.path), args.label)),
    }
    image_id = ""
    with body:
        response = ctx.client.call("POST", "/build", params, body=body,
                                   headers={"Content-Type": "application/x-tar"})
        for doc in response.json_lines():
            if not isinstance(doc, dict):
                continue
            if doc.get("error") or doc.get("errorDetail"):
                detail = doc.get("errorDetail") or {}
                raise DaemonError(500, str(detail.get("message") or doc.get("error")))
            if isinstance(doc.get("aux"), dict) and doc["aux"].get("ID"):
                image_id = str(doc["aux"]["ID"])
            text = doc.get("stream")
            if text:
                print(text, end="", flush=True)
    if args.iidfile and image_id:
        Path(args.iidfile).write_text(image_id)
    return 0


def _labels(context: Path, items: list[str]) -> dict[str, str]:
    """--label values over the repository and commit of the context's git checkout
    (found by git here, where the .git may sit above the context) [build helper]."""
    from runtime.build.provenance import git_source

    return {**git_source(context), **parse_key_values(items, "label")}


def _build_args(items: list[str]) -> dict[str, str | None]:
    out_args: dict[str, str | None] = {}
    for item in items:
        key, sep, value = item.partition("=")
        # `--build-arg NAME` takes NAME from this shell, as the docker CLI does.
        out_args[key] = value if sep else os.environ.get(key)
    return out_args


def local_provenance(ctx: Context, image: str) -> dict[str, Any]:
    doc: dict[str, Any] = ctx.client.get(f"/images/{quote_id(image)}/provenance")
    return doc


def cmd_attest(args: argparse.Namespace, ctx: Context) -> int:
    # Client-side like `berth sign`: these modules bring cryptography and aiohttp.
    import tempfile

    from runtime.build.provenance import from_json
    from runtime.registry.auth import CredentialStore
    from runtime.registry.client import RegistryClient, RegistryOptions
    from runtime.registry.reference import parse
    from runtime.sign import keys
    from runtime.sign.cli import _password
    from runtime.sign.provenance import attest_image
    from runtime.store.blobs import BlobStore

    ref = parse(args.image)
    prov = from_json(local_provenance(ctx, args.image)["Provenance"])
    key = keys.decrypt_private_key(Path(args.key).read_bytes(), _password(confirm=False))
    insecure = frozenset({ref.domain}) if args.allow_insecure_registry else frozenset()

    async def go() -> str:
        with tempfile.TemporaryDirectory(prefix="berth-attest-") as tmp:
            async with RegistryClient(RegistryOptions(insecure=insecure),
                                      CredentialStore()) as client:
                return await attest_image(client, ref, key, prov, BlobStore(Path(tmp)))

    digest = _registry_call(go)
    out(f"Pushing provenance attestation to: {ref.name}@{digest}")
    return 0


def cmd_inspect_provenance(args: argparse.Namespace, ctx: Context) -> int:
    if not args.key:
        for image in args.images:
            print_json(local_provenance(ctx, image))
        return 0
    import tempfile

    from runtime.registry.auth import CredentialStore
    from runtime.registry.client import RegistryClient, RegistryOptions
    from runtime.registry.reference import parse
    from runtime.sign import keys
    from runtime.sign.provenance import verified_provenance
    from runtime.store.blobs import BlobStore

    pubs = [keys.load_public_key(Path(k).read_bytes()) for k in args.key]

    async def verified(image: str) -> tuple[str, str, list[dict[str, Any]]]:
        ref = parse(image)
        insecure = frozenset({ref.domain}) if args.allow_insecure_registry else frozenset()
        with tempfile.TemporaryDirectory(prefix="berth-provenance-") as tmp:
            async with RegistryClient(RegistryOptions(insecure=insecure),
                                      CredentialStore()) as client:
                digest, statements = await verified_provenance(client, ref, pubs,
                                                               BlobStore(Path(tmp)))
                return ref.familiar, digest, statements

    for image in args.images:
        name, digest, statements = _registry_call(lambda image=image: verified(image))
        print_json({"Ref": name, "Digest": digest, "Statements": statements})
    return 0


def _registry_call(coro_fn: Any) -> Any:
    """Run a registry coroutine; its expected failures become one-line UsageErrors."""
    import asyncio

    from runtime.registry.auth import AuthError
    from runtime.registry.client import RegistryError
    from runtime.registry.reference import InvalidReference
    from runtime.sign.keys import KeyFileError
    from runtime.sign.provenance import ProvenanceError

    try:
        return asyncio.run(coro_fn())
    except (RegistryError, AuthError, InvalidReference, KeyFileError, ProvenanceError,
            OSError, ValueError) as e:
        raise UsageError(str(e)) from e


def register(sub: Any) -> None:
    p = add_verb(sub, "build", cmd_build, "Build an image from a Dockerfile (one layer per "
                 "instruction, cached)")
    p.add_argument("-t", "--tag", action="append", default=[], help="name[:tag]; repeatable")
    p.add_argument("-f", "--file", help="the Dockerfile (default PATH/Dockerfile)")
    p.add_argument("--build-arg", action="append", default=[], metavar="NAME[=VALUE]",
                   help="a build argument; repeatable")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   help="an image label; repeatable")
    p.add_argument("--target", help="build up to this stage")
    p.add_argument("--no-cache", action="store_true", help="do not use the layer cache")
    p.add_argument("--network", choices=("none", "host"), help="RUN steps' network")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image id")
    p.add_argument("--iidfile", help="write the image id to this file")
    p.add_argument("path", metavar="PATH", help="the build context directory")


    p = add_verb(sub, "attest", cmd_attest, "Sign an image's build provenance (SLSA) and push "
                 "it next to the image in its registry")
    p.add_argument("--key", required=True, help="private key file (cosign format)")
    p.add_argument("--allow-insecure-registry", action="store_true",
                   help="talk plain HTTP to this registry")
    p.add_argument("image", metavar="IMAGE", help="built here and pushed")
