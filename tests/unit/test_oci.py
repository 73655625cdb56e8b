"""References normalized as Docker does; manifests and indexes parsed strictly."""

from __future__ import annotations

import json

import pytest

from runtime.oci import (
    Index,
    InvalidManifest,
    Manifest,
    MediaType,
    Platform,
    chain_id,
    image_config_from_json,
    image_config_to_json,
    is_index,
)
from runtime.registry.reference import InvalidReference, parse

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(("ref", "full", "familiar"), [
    ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
    ("user/app", "docker.io/user/app:latest", "user/app:latest"),
    ("index.docker.io/library/x", "docker.io/library/x:latest", "x:latest"),
    ("localhost/app", "localhost/app:latest", "localhost/app:latest"),
    ("localhost:5000/a/b:v", "localhost:5000/a/b:v", "localhost:5000/a/b:v"),
    ("127.0.0.1:5000/app@" + D, "127.0.0.1:5000/app@" + D, "127.0.0.1:5000/app@" + D),
    ("quay.io/org/img:tag@" + D, "quay.io/org/img:tag@" + D, "quay.io/org/img:tag@" + D),
])
def test_reference_normalization(ref: str, full: str, familiar: str) -> None:
    r = parse(ref)
    assert str(r) == full
    assert r.familiar == familiar


@pytest.mark.parametrize("ref", ["", "UPPER", "a:b:c", "app@sha256:short", "a//b",
                                 "-lead", "app:" + "x" * 129, " space"])
def test_invalid_references(ref: str) -> None:
    with pytest.raises(InvalidReference):
        parse(ref)


def manifest_doc(**over: object) -> bytes:
    doc: dict[str, object] = {
        "schemaVersion": 2, "mediaType": MediaType.DOCKER_MANIFEST,
        "config": {"mediaType": MediaType.DOCKER_CONFIG, "digest": D, "size": 10},
        "layers": [{"mediaType": MediaType.DOCKER_LAYER_GZIP, "digest": D, "size": 20}],
    }
    doc.update(over)
    return json.dumps(doc).encode()


def test_manifest_parse_and_reject() -> None:
    m = Manifest.parse(manifest_doc())
    assert m.config.size == 10 and m.layers[0].media_type == MediaType.DOCKER_LAYER_GZIP
    assert Manifest.parse(m.to_bytes()) == m
    for bad in (manifest_doc(schemaVersion=1), b"[]", b"{nope",
                manifest_doc(layers=[{"digest": "md5:x", "size": 1}]),
                manifest_doc(config={"digest": D, "size": -1})):
        with pytest.raises(InvalidManifest):
            Manifest.parse(bad)


def test_index_selects_linux_amd64_and_skips_attestations() -> None:
    def entry(os: str, arch: str) -> dict[str, object]:
        return {"mediaType": MediaType.OCI_MANIFEST, "digest": D, "size": 1,
                "platform": {"os": os, "architecture": arch}}
    data = json.dumps({"schemaVersion": 2, "manifests": [
        entry("unknown", "unknown"), entry("linux", "arm64"), entry("linux", "amd64")]}).encode()
    assert is_index(data)
    idx = Index.parse(data)
    assert idx.select(Platform()).platform == Platform("linux", "amd64")
    with pytest.raises(InvalidManifest, match="no manifest for linux/s390x"):
        idx.select(Platform("linux", "s390x"))


def test_image_config_round_trip() -> None:
    doc = {"Env": ["A=1"], "Cmd": ["sh"], "ExposedPorts": {"80/tcp": {}},
           "Labels": {"a": "b"}, "Healthcheck": {"Test": ["CMD", "true"], "Interval": 5}}
    cfg = image_config_from_json(doc)
    assert cfg.exposed_ports == ("80/tcp",) and cfg.healthcheck is not None
    assert image_config_from_json(image_config_to_json(cfg)) == cfg


def test_chain_id() -> None:
    a, b = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    assert chain_id([a]) == a
    assert chain_id([a, b]) != b and chain_id([a, b]).startswith("sha256:")
