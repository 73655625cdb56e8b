"""cosign-format keys, payloads and signature manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from runtime.oci import Manifest, MediaType, sha256_digest
from runtime.registry.reference import parse
from runtime.sign import keys
from runtime.sign.cosign import (
    SIGNATURE_ANNOTATION,
    Signature,
    make_signature,
    payload,
    signature_manifest,
    signature_tag,
    verify_signatures,
)
from runtime.sign.provenance import (
    BuildProvenance,
    ProvenanceError,
    envelope,
    image_labels,
    open_envelope,
    pae,
    statement,
)

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def pair() -> keys.KeyPair:
    return keys.generate_key_pair(b"pw")


def test_private_key_is_encrypted_in_cosign_format(pair: keys.KeyPair) -> None:
    text = pair.private_pem.decode()
    assert text.startswith("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----")
    key = keys.decrypt_private_key(pair.private_pem, b"pw")
    assert keys.public_pem(key.public_key()) == pair.public_pem
    with pytest.raises(keys.KeyFileError, match="wrong password"):
        keys.decrypt_private_key(pair.private_pem, b"nope")
    with pytest.raises(keys.KeyFileError, match="not a cosign private key"):
        keys.decrypt_private_key(pair.public_pem, b"pw")


def test_write_key_pair_is_private(tmp_path: Path, pair: keys.KeyPair) -> None:
    priv, pub = keys.write_key_pair(pair, tmp_path / "cosign")
    assert priv.name == "cosign.key" and pub.name == "cosign.pub"
    assert priv.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        keys.write_key_pair(pair, tmp_path / "cosign")


def test_payload_is_cosigns_simple_signing_json() -> None:
    ref = parse("127.0.0.1:5000/team/app:1")
    assert payload(ref, DIGEST) == (
        b'{"critical":{"identity":{"docker-reference":"127.0.0.1:5000/team/app"},'
        b'"image":{"docker-manifest-digest":"' + DIGEST.encode() + b'"},'
        b'"type":"cosign container image signature"},"optional":null}')
    assert b"index.docker.io/library/busybox" in payload(parse("busybox"), DIGEST)
    assert signature_tag(DIGEST) == "sha256-" + "ab" * 32 + ".sig"


def test_signatures_verify_only_for_their_key_digest_and_bytes(pair: keys.KeyPair) -> None:
    key = keys.decrypt_private_key(pair.private_pem, b"pw")
    pub = keys.load_public_key(pair.public_pem)
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    sig = make_signature(key, parse("r.example/app"), DIGEST)
    assert [v.docker_reference for v in verify_signatures([sig], DIGEST, [other, pub])] == \
        ["r.example/app"]
    assert verify_signatures([sig], DIGEST, [other]) == []
    assert verify_signatures([sig], "sha256:" + "cd" * 32, [pub]) == []
    tampered = Signature(sig.payload.replace(b"app", b"apq"), sig.signature)
    assert verify_signatures([tampered], DIGEST, [pub]) == []
    garbage = Signature(b"{}", sig.signature)
    assert verify_signatures([garbage, sig], DIGEST, [pub])[0].signature == sig


def test_signature_manifest_has_cosigns_shape(pair: keys.KeyPair) -> None:
    key = keys.decrypt_private_key(pair.private_pem, b"pw")
    sigs = [make_signature(key, parse("r.example/app"), DIGEST) for _ in range(2)]
    data, config = signature_manifest(sigs)
    m = Manifest.parse(data)
    assert m.media_type == MediaType.OCI_MANIFEST
    assert [la.media_type for la in m.layers] == [MediaType.COSIGN_SIMPLE_SIGNING] * 2
    assert [la.annotations[SIGNATURE_ANNOTATION] for la in m.layers] == \
        [s.signature for s in sigs]
    assert m.config.digest == sha256_digest(config)
    doc = json.loads(config)
    assert doc["rootfs"]["diff_ids"] == [sha256_digest(s.payload) for s in sigs]
    assert doc["created"] == "0001-01-01T00:00:00Z"


def test_dsse_pae_matches_the_spec_vector() -> None:
    assert pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


def test_provenance_envelope_round_trip(pair: keys.KeyPair) -> None:
    key = keys.decrypt_private_key(pair.private_pem, b"pw")
    prov = BuildProvenance(source_repo="https://git.example/app.git", commit="abc123",
                           dockerfile_digest="sha256:" + "cd" * 32,
                           base_images=(("busybox:1", DIGEST),))
    stmt = statement(parse("r.example/app:1"), DIGEST, prov)
    env = envelope(stmt, key)
    pub = keys.load_public_key(pair.public_pem)
    opened = open_envelope(env, [pub], DIGEST)
    params = opened["predicate"]["buildDefinition"]["externalParameters"]
    assert params["source"] == {"uri": "https://git.example/app.git",
                                "digest": {"gitCommit": "abc123"}}
    assert params["dockerfile"]["digest"] == {"sha256": "cd" * 32}
    assert opened["predicateType"] == "https://slsa.dev/provenance/v1"
    with pytest.raises(ProvenanceError, match="not signed by a trusted key"):
        open_envelope(env, [ec.generate_private_key(ec.SECP256R1()).public_key()], DIGEST)
    with pytest.raises(ProvenanceError, match="not sha256:"):
        open_envelope(env, [pub], "sha256:" + "ef" * 32)
    assert image_labels(prov) == {"org.opencontainers.image.source": prov.source_repo,
                                  "org.opencontainers.image.revision": "abc123",
                                  "dev.berth.dockerfile.digest": prov.dockerfile_digest}
