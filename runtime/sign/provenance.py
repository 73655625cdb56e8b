"""Build provenance: an in-toto statement with a SLSA v1 predicate, signed as a
DSSE envelope and stored next to the image as cosign stores attestations.

What a build records (`BuildProvenance`): the source repository and commit,
the Dockerfile's path and digest, build args, target, the base images it
resolved, the builder and the times. The builder (runtime/build) also sets
the standard labels from `image_labels()` on the image it makes.

On the wire (cosign's format, read by `cosign verify-attestation --type
slsaprovenance1`): tag `sha256-<hex>.att` in the image's repository, an OCI
manifest with one layer per attestation, media type
application/vnd.dsse.envelope.v1+json, annotations `predicateType` and an
empty `dev.cosignproject.cosign/signature`. The envelope's signature is
ECDSA-P256-SHA256 over the DSSE pre-authentication encoding (PAE).
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from runtime.oci import Descriptor, Manifest, MediaType, digest_hex, sha256_digest
from runtime.registry.client import NotFound, RegistryClient, RegistryError
from runtime.registry.reference import Reference
from runtime.sign import keys
from runtime.sign.cosign import SIGNATURE_ANNOTATION, docker_reference, resolve_digest
from runtime.store.blobs import BlobStore

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://github.com/berth/berth/dockerfile-build/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
DSSE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
MAX_ENVELOPE = 1 << 20


class ProvenanceError(ValueError):
    pass


@dataclass(frozen=True)
class BuildProvenance:
    source_repo: str = ""  # e.g. https://git.example/team/app.git
    commit: str = ""  # the source commit (git sha)
    dockerfile: str = "Dockerfile"
    dockerfile_digest: str = ""  # sha256:... of the Dockerfile's bytes
    build_args: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    target: str = ""
    base_images: tuple[tuple[str, str], ...] = ()  # (reference, digest)
    builder_id: str = "berth build"
    started: str = ""
    finished: str = ""


def image_labels(prov: BuildProvenance) -> dict[str, str]:
    """The org.opencontainers.image.* labels a build sets from its provenance."""
    labels = {}
    if prov.source_repo:
        labels["org.opencontainers.image.source"] = prov.source_repo
    if prov.commit:
        labels["org.opencontainers.image.revision"] = prov.commit
    if prov.dockerfile_digest:
        labels["dev.berth.dockerfile.digest"] = prov.dockerfile_digest
    return labels


def statement(ref: Reference, digest: str, prov: BuildProvenance) -> dict[str, Any]:
    source: dict[str, Any] = {"uri": prov.source_repo}
    if prov.commit:
        source["digest"] = {"gitCommit": prov.commit}
    dockerfile: dict[str, Any] = {"path": prov.dockerfile}
    if prov.dockerfile_digest:
        dockerfile["digest"] = {"sha256": digest_hex(prov.dockerfile_digest)}
    metadata = {k: v for k, v in (("startedOn", prov.started), ("finishedOn", prov.finished))
                if v}
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": docker_reference(ref), "digest": {"sha256": digest_hex(digest)}}],
        "predicateType": SLSA_PROVENANCE_V1,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"source": source, "dockerfile": dockerfile,
                                       "buildArgs": dict(prov.build_args),
                                       "target": prov.target},
                "internalParameters": {},
                "resolvedDependencies": [{"uri": r, "digest": {"sha256": digest_hex(d)}}
                                         for r, d in prov.base_images],
            },
            "runDetails": {"builder": {"id": prov.builder_id}, "metadata": metadata},
        },
    }


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding (what is signed)."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def envelope(stmt: Mapping[str, Any], key: ec.EllipticCurvePrivateKey) -> bytes:
    payload = json.dumps(stmt, separators=(",", ":")).encode()
    sig = keys.sign(key, pae(PAYLOAD_TYPE, payload))
    return json.dumps({"payloadType": PAYLOAD_TYPE,
                       "payload": base64.b64encode(payload).decode(),
                       "signatures": [{"keyid": "", "sig": sig}]},
                      separators=(",", ":")).encode()


def open_envelope(data: bytes, public_keys: Sequence[ec.EllipticCurvePublicKey],
                  digest: str) -> dict[str, Any]:
    """The statement inside a DSSE envelope signed by one of the keys, about `digest`."""
    try:
        env = json.loads(data)
        payload = base64.b64decode(env["payload"], validate=True)
        sigs = [s["sig"] for s in env["signatures"]]
        ptype = env["payloadType"]
    except (ValueError, KeyError, TypeError) as e:
        raise ProvenanceError(f"malformed DSSE envelope: {e}") from None
    if ptype != PAYLOAD_TYPE:
        raise ProvenanceError(f"envelope payload type {ptype!r} is not in-toto")
    signed = pae(ptype, payload)
    if not any(keys.verify(k, signed, s) for k in public_keys for s in sigs):
        raise ProvenanceError("the attestation is not signed by a trusted key")
    stmt: dict[str, Any] = json.loads(payload)
    subjects = [s.get("digest", {}).get("sha256") for s in stmt.get("subject", [])]
    if digest_hex(digest) not in subjects:
        raise ProvenanceError(f"the attestation is about {subjects}, not {digest}")
    return stmt


def attestation_tag(digest: str) -> str:
    return f"sha256-{digest_hex(digest)}.att"


def _manifest(envelopes: Sequence[tuple[bytes, str]]) -> tuple[bytes, bytes]:
    zero = "0001-01-01T00:00:00Z"
    config = json.dumps({
        "architecture": "", "created": zero, "history": [{"created": zero} for _ in envelopes],
        "os": "", "rootfs": {"type": "layers",
                             "diff_ids": [sha256_digest(e) for e, _ in envelopes]},
        "config": {}}, separators=(",", ":")).encode()
    layers = tuple(Descriptor(DSSE_MEDIA_TYPE, sha256_digest(e), len(e),
                              {SIGNATURE_ANNOTATION: "", "predicateType": ptype})
                   for e, ptype in envelopes)
    m = Manifest(MediaType.OCI_MANIFEST,
                 Descriptor(MediaType.OCI_CONFIG, sha256_digest(config), len(config)), layers)
    return m.to_bytes(), config


async def fetch_attestations(client: RegistryClient, ref: Reference, digest: str,
                             scratch: BlobStore) -> list[tuple[bytes, str]]:
    """(envelope, predicateType) of every attestation stored for `digest`."""
    try:
        data, mt, _ = await client.get_manifest(ref.domain, ref.path, attestation_tag(digest))
    except NotFound:
        return []
    out = []
    for layer in Manifest.parse(data, mt).layers[:64]:
        if layer.media_type != DSSE_MEDIA_TYPE:
            continue
        if layer.size > MAX_ENVELOPE:
            raise RegistryError(str(ref), f"attestation of {layer.size} bytes refused")
        await client.fetch_blob(ref.domain, ref.path, layer, scratch)
        out.append((scratch.read(layer.digest), layer.annotations.get("predicateType", "")))
    return out


async def attest_image(client: RegistryClient, ref: Reference, key: ec.EllipticCurvePrivateKey,
                       prov: BuildProvenance, scratch: BlobStore) -> str:
    """Sign a provenance statement for what `ref` points at and push it next to it."""
    digest = await resolve_digest(client, ref)
    env = envelope(statement(ref, digest, prov), key)
    existing = [e for e in await fetch_attestations(client, ref, digest, scratch)
                if e[0] != env]
    manifest, config = _manifest([*existing, (env, SLSA_PROVENANCE_V1)])
    for blob in [config, *(e for e, _ in existing), env]:
        d = scratch.put(blob)
        if await client.blob_exists(ref.domain, ref.path, d,
                                    [f"repository:{ref.path}:pull,push"]) is None:
            await client.upload_blob(ref.domain, ref.path, d, len(blob),
                                     functools.partial(scratch.open, d))
    await client.put_manifest(ref.domain, ref.path, attestation_tag(digest), manifest,
                              MediaType.OCI_MANIFEST)
    return digest


async def verified_provenance(client: RegistryClient, ref: Reference,
                              public_keys: Sequence[ec.EllipticCurvePublicKey],
                              scratch: BlobStore) -> tuple[str, list[dict[str, Any]]]:
    """`inspect --provenance`: the SLSA statements about `ref` that verify; raises if none."""
    digest = await resolve_digest(client, ref)
    found = await fetch_attestations(client, ref, digest, scratch)
    good, errors = [], []
    for env, ptype in found:
        if ptype != SLSA_PROVENANCE_V1:
            continue
        try:
            good.append(open_envelope(env, public_keys, digest))
        except ProvenanceError as e:
            errors.append(str(e))
    if not good:
        why = "; ".join(errors) if errors else "no provenance attestation found"
        raise ProvenanceError(f"{ref.familiar}@{digest}: {why}")
    return digest, good
