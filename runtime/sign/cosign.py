"""cosign's signature format, on the wire and in the payload.

A signature of image `repo@sha256:H` is an OCI image manifest stored in the
same repository under the tag `sha256-H.sig`: one layer per signature, each
layer a "simple signing" JSON payload (media type
application/vnd.dev.cosign.simplesigning.v1+json) whose annotation
`dev.cosignproject.cosign/signature` holds base64(ECDSA-P256-SHA256(payload)).
This is what `cosign sign --key` writes (without a transparency log entry)
and what `cosign verify --key --insecure-ignore-tlog` reads.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from runtime.oci import Descriptor, Manifest, MediaType, digest_hex, sha256_digest
from runtime.registry.client import NotFound, RegistryClient, RegistryError
from runtime.registry.reference import Reference
from runtime.sign import keys
from runtime.store.blobs import BlobStore

SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_TYPE = "cosign container image signature"
MAX_SIGNATURES = 64
MAX_PAYLOAD = 1 << 16


class SignatureError(ValueError):
    pass


@dataclass(frozen=True)
class Signature:
    payload: bytes
    signature: str  # base64 DER

    def claims(self) -> tuple[str, str]:
        """(docker-reference, docker-manifest-digest) the payload vouches for."""
        try:
            doc: dict[str, Any] = json.loads(self.payload)
            crit = doc["critical"]
            if crit["type"] != SIGNATURE_TYPE:
                raise SignatureError(f"not a cosign signature payload: type {crit['type']!r}")
            return str(crit["identity"]["docker-reference"]), str(
                crit["image"]["docker-manifest-digest"])
        except (ValueError, KeyError, TypeError) as e:
            if isinstance(e, SignatureError):
                raise
            raise SignatureError(f"malformed simple signing payload: {e}") from None


@dataclass(frozen=True)
class Verified:
    signature: Signature
    key_id: str
    docker_reference: str


def signature_tag(digest: str) -> str:
    return f"sha256-{digest_hex(digest)}.sig"


def docker_reference(ref: Reference) -> str:
    """The repository as cosign names it in payloads (go-containerregistry's form)."""
    return f"index.docker.io/{ref.path}" if ref.domain == "docker.io" else ref.name


def payload(ref: Reference, digest: str) -> bytes:
    doc = {"critical": {"identity": {"docker-reference": docker_reference(ref)},
                        "image": {"docker-manifest-digest": digest},
                        "type": SIGNATURE_TYPE},
           "optional": None}
    return json.dumps(doc, separators=(",", ":")).encode()


def make_signature(key: ec.EllipticCurvePrivateKey, ref: Reference, digest: str) -> Signature:
    data = payload(ref, digest)
    return Signature(data, keys.sign(key, data))


def verify_signatures(signatures: Sequence[Signature], digest: str,
                      public_keys: Sequence[ec.EllipticCurvePublicKey]) -> list[Verified]:
    """The signatures that one of `public_keys` made over a payload naming `digest`."""
    out = []
    for sig in signatures:
        try:
            ref, claimed = sig.claims()
        except SignatureError:
            continue
        if claimed != digest:
            continue
        for k in public_keys:
            if keys.verify(k, sig.payload, sig.signature):
                out.append(Verified(sig, keys.key_id(k), ref))
                break
    return out


def signature_manifest(sigs: Sequence[Signature]) -> tuple[bytes, bytes]:
    """(manifest, config) of a cosign signature image holding `sigs`."""
    zero = "0001-01-01T00:00:00Z"
    config = json.dumps({
        "architecture": "", "created": zero, "history": [{"created": zero} for _ in sigs],
        "os": "", "rootfs": {"type": "layers",
                             "diff_ids": [sha256_digest(s.payload) for s in sigs]},
        "config": {}}, separators=(",", ":")).encode()
    layers = tuple(Descriptor(MediaType.COSIGN_SIMPLE_SIGNING, sha256_digest(s.payload),
                              len(s.payload), {SIGNATURE_ANNOTATION: s.signature})
                   for s in sigs)
    m = Manifest(MediaType.OCI_MANIFEST,
                 Descriptor(MediaType.OCI_CONFIG, sha256_digest(config), len(config)), layers)
    return m.to_bytes(), config


async def fetch_signatures(client: RegistryClient, ref: Reference, digest: str,
                           scratch: BlobStore) -> list[Signature]:
    """Signatures stored for `digest` in ref's repository ([] if none)."""
    try:
        data, mt, _ = await client.get_manifest(ref.domain, ref.path, signature_tag(digest))
    except NotFound:
        return []
    m = Manifest.parse(data, mt)
    out = []
    for layer in m.layers[:MAX_SIGNATURES]:
        sig = layer.annotations.get(SIGNATURE_ANNOTATION)
        if layer.media_type != MediaType.COSIGN_SIMPLE_SIGNING or not sig:
            continue
        if layer.size > MAX_PAYLOAD:
            raise RegistryError(str(ref), f"signature payload of {layer.size} bytes refused")
        await client.fetch_blob(ref.domain, ref.path, layer, scratch)
        out.append(Signature(scratch.read(layer.digest), sig))
    return out


async def push_signature(client: RegistryClient, ref: Reference, digest: str,
                         sig: Signature, scratch: BlobStore) -> str:
    """Add `sig` to the signature image of `digest` (kept: the ones already there)."""
    existing = await fetch_signatures(client, ref, digest, scratch)
    sigs = [s for s in existing if s != sig] + [sig]
    manifest, config = signature_manifest(sigs)
    for blob in [config, *(s.payload for s in sigs)]:
        d = scratch.put(blob)
        if await client.blob_exists(ref.domain, ref.path, d,
                                    [f"repository:{ref.path}:pull,push"]) is None:
            await client.upload_blob(ref.domain, ref.path, d, len(blob),
                                     functools.partial(scratch.open, d))
    return await client.put_manifest(ref.domain, ref.path, signature_tag(digest), manifest,
                                     MediaType.OCI_MANIFEST)


async def resolve_digest(client: RegistryClient, ref: Reference) -> str:
    """The digest `ref` names in its registry (what the tag points at: index or manifest)."""
    if ref.digest:
        return ref.digest
    _, _, digest = await client.get_manifest(ref.domain, ref.path, ref.tag or "latest")
    return digest


async def sign_image(client: RegistryClient, ref: Reference,
                     key: ec.EllipticCurvePrivateKey, scratch: BlobStore) -> tuple[str, Signature]:
    """`cosign sign --key`: sign what `ref` points at and push the signature next to it."""
    digest = await resolve_digest(client, ref)
    sig = make_signature(key, ref, digest)
    await push_signature(client, ref, digest, sig, scratch)
    return digest, sig


async def verify_image(client: RegistryClient, ref: Reference,
                       public_keys: Sequence[ec.EllipticCurvePublicKey],
                       scratch: BlobStore) -> tuple[str, list[Verified]]:
    """`cosign verify --key`: the valid signatures by `public_keys`; raises if none."""
    digest = await resolve_digest(client, ref)
    sigs = await fetch_signatures(client, ref, digest, scratch)
    good = verify_signatures(sigs, digest, public_keys)
    if not good:
        why = "no signatures found" if not sigs else \
            f"none of its {len(sigs)} signature(s) verifies with the given key(s)"
        raise SignatureError(f"{ref.familiar}@{digest}: {why}")
    return digest, good
