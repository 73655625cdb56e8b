"""OCI image-spec and runtime-spec types shared by the store and the engine."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Healthcheck:
    test: tuple[str, ...]
    interval_ns: int = 0
    timeout_ns: int = 0
    start_period_ns: int = 0
    retries: int = 0


@dataclass(frozen=True)
class ImageConfig:
    """The `config` object of an OCI image configuration (image-spec config.md)."""

    env: tuple[str, ...] = ()
    cmd: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    working_dir: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    stop_signal: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    healthcheck: Healthcheck | None = None
    shell: tuple[str, ...] | None = None
    onbuild: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResolvedImage:
    """An image ready to run: its id, the ref asked for, its unpacked layers."""

    id: str
    ref: str
    layer_dirs: tuple[Path, ...]
    config: ImageConfig


class ImageNotFound(LookupError):
    def __init__(self, ref: str) -> None:
        self.ref = ref
        super().__init__(f"No such image: {ref}")


# --- media types, digests and descriptors (image-spec descriptor.md, manifest.md) ---


class MediaType(StrEnum):
    OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
    OCI_INDEX = "application/vnd.oci.image.index.v1+json"
    OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
    OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
    OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
    OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
    DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
    DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
    DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
    DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
    DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    COSIGN_SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"


MANIFEST_TYPES = frozenset({MediaType.OCI_MANIFEST, MediaType.DOCKER_MANIFEST})
INDEX_TYPES = frozenset({MediaType.OCI_INDEX, MediaType.DOCKER_MANIFEST_LIST})
LAYER_TYPES = frozenset({
    MediaType.OCI_LAYER, MediaType.OCI_LAYER_GZIP, MediaType.OCI_LAYER_ZSTD,
    MediaType.DOCKER_LAYER, MediaType.DOCKER_LAYER_GZIP,
})

_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")


class InvalidDigest(ValueError):
    def __init__(self, value: str) -> None:
        self.value = value
        super().__init__(f"invalid digest {value!r}: want sha256:<64 lowercase hex digits>")


def check_digest(value: str) -> str:
    """Return `value` if it is a sha256 digest; the only algorithm the store keeps."""
    if not _DIGEST_RE.match(value):
        raise InvalidDigest(value)
    return value


def digest_hex(digest: str) -> str:
    return check_digest(digest).split(":", 1)[1]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_id(diff_ids: Sequence[str]) -> str:
    """The chain id of the top layer (image-spec config.md "Layer ChainID")."""
    chain = ""
    for diff_id in diff_ids:
        chain = diff_id if not chain else sha256_digest(f"{chain} {diff_id}".encode())
    return chain


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Platform:
        return cls(str(doc.get("os", "")), str(doc.get("architecture", "")),
                   str(doc.get("variant", "")))

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    platform: Platform | None = None

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Descriptor:
        try:
            size = doc["size"]
            if not isinstance(size, int) or size < 0:
                raise ValueError(f"bad size {size!r}")
            plat = doc.get("platform")
            return cls(
                media_type=str(doc.get("mediaType", "")),
                digest=check_digest(str(doc["digest"])),
                size=size,
                annotations=MappingProxyType(dict(doc.get("annotations") or {})),
                platform=Platform.from_json(plat) if isinstance(plat, dict) else None,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidManifest(f"bad descriptor {doc!r}: {e}") from None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                               "size": self.size}
        if self.annotations:
            doc["annotations"] = dict(self.annotations)
        if self.platform is not None:
            doc["platform"] = {"architecture": self.platform.architecture,
                               "os": self.platform.os}
            if self.platform.variant:
                doc["platform"]["variant"] = self.platform.variant
        return doc


class InvalidManifest(ValueError):
    """A manifest, index or image config that does not follow the image spec."""


@dataclass(frozen=True)
class Manifest:
    """An image manifest (OCI or Docker v2 schema 2: the same shape)."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def parse(cls, data: bytes, media_type: str = "") -> Manifest:
        doc = _load_json(data, "manifest")
        mt = str(doc.get("mediaType") or media_type or MediaType.OCI_MANIFEST)
        if mt not in MANIFEST_TYPES:
            raise InvalidManifest(f"not an image manifest: media type {mt!r}")
        if doc.get("schemaVersion") != 2:
            raise InvalidManifest(f"unsupported schemaVersion {doc.get('schemaVersion')!r}")
        if not isinstance(doc.get("config"), dict) or not isinstance(doc.get("layers"), list):
            raise InvalidManifest("manifest lacks config or layers")
        return cls(mt, Descriptor.from_json(doc["config"]),
                   tuple(Descriptor.from_json(d) for d in doc["layers"]),
                   MappingProxyType(dict(doc.get("annotations") or {})))

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type,
                               "config": self.config.to_json(),
                               "layers": [d.to_json() for d in self.layers]}
        if self.annotations:
            doc["annotations"] = dict(self.annotations)
        return json.dumps(doc, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Index:
    """An image index or Docker manifest list."""

    media_type: str
    manifests: tuple[Descriptor, ...]

    @classmethod
    def parse(cls, data: bytes, media_type: str = "") -> Index:
        doc = _load_json(data, "index")
        mt = str(doc.get("mediaType") or media_type or MediaType.OCI_INDEX)
        if not isinstance(doc.get("manifests"), list):
            raise InvalidManifest("index lacks manifests")
        return cls(mt, tuple(Descriptor.from_json(d) for d in doc["manifests"]))

    def select(self, platform: Platform) -> Descriptor:
        """The manifest for `platform`; attestation entries (unknown/unknown) never match."""
        for d in self.manifests:
            p = d.platform
            if p is None:
                continue
            if p.os == platform.os and p.architecture == platform.architecture and (
                not platform.variant or p.variant == platform.variant
            ):
                return d
        have = ", ".join(str(d.platform) for d in self.manifests if d.platform) or "none"
        raise InvalidManifest(f"no manifest for {platform} in the index (it has: {have})")


def is_index(data: bytes, media_type: str = "") -> bool:
    """An index if the media type says so, or, lacking one, if it has `manifests`."""
    if media_type in INDEX_TYPES:
        return True
    if media_type in MANIFEST_TYPES:
        return False
    doc = _load_json(data, "manifest")
    mt = doc.get("mediaType")
    return mt in INDEX_TYPES or (mt is None and "manifests" in doc)


def _load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidManifest(f"{what} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidManifest(f"{what} is not a JSON object")
    return doc


# --- image configuration <-> ImageConfig (image-spec config.md, Docker's field names) ---


def _strs(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidManifest(f"expected a list of strings, got {value!r}")
    return tuple(value)


def image_config_from_json(doc: Mapping[str, Any] | None) -> ImageConfig:
    """Parse the `config` object of an image configuration."""
    doc = doc or {}
    hc = doc.get("Healthcheck")
    health = None
    if isinstance(hc, dict) and hc.get("Test"):
        health = Healthcheck(
            test=_strs(hc.get("Test")) or (),
            interval_ns=int(hc.get("Interval") or 0),
            timeout_ns=int(hc.get("Timeout") or 0),
            start_period_ns=int(hc.get("StartPeriod") or 0),
            retries=int(hc.get("Retries") or 0),
        )
    labels = doc.get("Labels") or {}
    if not isinstance(labels, dict):
        raise InvalidManifest(f"Labels is not an object: {labels!r}")
    return ImageConfig(
        env=_strs(doc.get("Env")) or (),
        cmd=_strs(doc.get("Cmd")),
        entrypoint=_strs(doc.get("Entrypoint")),
        working_dir=str(doc.get("WorkingDir") or ""),
        user=str(doc.get("User") or ""),
        exposed_ports=tuple(sorted(doc.get("ExposedPorts") or {})),
        volumes=tuple(sorted(doc.get("Volumes") or {})),
        stop_signal=doc.get("StopSignal") or None,
        labels=MappingProxyType({str(k): str(v) for k, v in labels.items()}),
        healthcheck=health,
        shell=_strs(doc.get("Shell")),
        onbuild=_strs(doc.get("OnBuild")) or (),
    )


def image_config_to_json(cfg: ImageConfig) -> dict[str, Any]:
    """The inverse of image_config_from_json, with Docker's field names."""
    doc: dict[str, Any] = {}
    if cfg.env:
        doc["Env"] = list(cfg.env)
    if cfg.cmd is not None:
        doc["Cmd"] = list(cfg.cmd)
    if cfg.entrypoint is not None:
        doc["Entrypoint"] = list(cfg.entrypoint)
    if cfg.working_dir:
        doc["WorkingDir"] = cfg.working_dir
    if cfg.user:
        doc["User"] = cfg.user
    if cfg.exposed_ports:
        doc["ExposedPorts"] = {p: {} for p in cfg.exposed_ports}
    if cfg.volumes:
        doc["Volumes"] = {v: {} for v in cfg.volumes}
    if cfg.stop_signal:
        doc["StopSignal"] = cfg.stop_signal
    if cfg.labels:
        doc["Labels"] = dict(cfg.labels)
    if cfg.healthcheck is not None:
        h = cfg.healthcheck
        doc["Healthcheck"] = {"Test": list(h.test), "Interval": h.interval_ns,
                              "Timeout": h.timeout_ns, "StartPeriod": h.start_period_ns,
                              "Retries": h.retries}
    if cfg.shell is not None:
        doc["Shell"] = list(cfg.shell)
    if cfg.onbuild:
        doc["OnBuild"] = list(cfg.onbuild)
    return doc


def diff_ids_of(config_doc: Mapping[str, Any]) -> tuple[str, ...]:
    rootfs = config_doc.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise InvalidManifest("image config lacks rootfs of type 'layers'")
    ids = rootfs.get("diff_ids")
    if not isinstance(ids, list):
        raise InvalidManifest("image config rootfs lacks diff_ids")
    return tuple(check_digest(str(d)) for d in ids)
