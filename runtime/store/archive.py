"""Image archives: `load` (OCI layout tar or docker-archive), `save`, `import`.

`save` writes one tar that is both an OCI image layout and a docker-archive
(the layout `docker save` has written since Docker 25): `index.json` +
`oci-layout` + `blobs/sha256/*`, and `manifest.json` whose Config/Layers
point at those same blobs. So `skopeo copy oci-archive:` and
`docker-archive:`, `podman load` and `docker load` all read it.

`load` takes either form; every blob is hashed as it is copied into the
store (OCI blobs against their names), layers are unpacked and DiffIDs
checked before the image and its tags are recorded in one transaction.
"""

from __future__ import annotations

import io
import json
import shlex
import tarfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from runtime.oci import (
    Descriptor,
    Index,
    InvalidManifest,
    Manifest,
    MediaType,
    Platform,
    digest_hex,
    image_config_from_json,
    image_config_to_json,
    is_index,
    sha256_digest,
)
from runtime.registry.reference import parse, try_parse
from runtime.store.blobs import CHUNK
from runtime.store.commit import HistoryEntry, LayerInfo, create_image, layer_from_blob
from runtime.store.images import ImageRecord, ImageStore

MAX_JSON = 4 << 20  # manifests, indexes, configs and manifest.json
_CONTAINERD_NAME = "io.containerd.image.name"
_REF_NAME = "org.opencontainers.image.ref.name"


class ArchiveError(ValueError):
    def __init__(self, archive: str, why: str) -> None:
        super().__init__(f"{archive}: {why}")


@dataclass(frozen=True)
class Loaded:
    image: ImageRecord
    tags: tuple[str, ...]


class _Archive:
    def __init__(self, tar: tarfile.TarFile, label: str) -> None:
        self.tar = tar
        self.label = label
        self.members = {m.name.removeprefix("./"): m for m in tar.getmembers()
                        if m.isreg() or m.islnk() or m.issym()}

    def has(self, name: str) -> bool:
        return name in self.members

    def open(self, name: str) -> IO[bytes]:
        m = self.members.get(name.removeprefix("./"))
        f = self.tar.extractfile(m) if m is not None else None
        if f is None:
            raise ArchiveError(self.label, f"missing {name!r}")
        return f

    def json(self, name: str) -> Any:
        m = self.members.get(name.removeprefix("./"))
        if m is not None and m.size > MAX_JSON:
            raise ArchiveError(self.label, f"{name} is larger than {MAX_JSON} bytes")
        try:
            return json.loads(self.open(name).read(MAX_JSON + 1))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ArchiveError(self.label, f"{name} is not valid JSON: {e}") from None

    def blob_name(self, digest: str) -> str:
        return f"blobs/sha256/{digest_hex(digest)}"


def load(store: ImageStore, source: Path | BinaryIO, *,
         platform: Platform | None = None) -> list[Loaded]:
    """Load every image in an OCI layout tar or docker-archive tar."""
    label = str(source) if isinstance(source, Path) else "archive"
    try:
        if isinstance(source, Path):
            tar = tarfile.open(source, "r:*")  # noqa: SIM115 (closed below)
        else:
            tar = tarfile.open(fileobj=source, mode="r:*")  # noqa: SIM115
    except (tarfile.TarError, OSError) as e:
        raise ArchiveError(label, f"not a tar archive: {e}") from None
    with tar:
        ar = _Archive(tar, label)
        # Both (Docker 25+ and our own save): the OCI index keeps the exact
        # manifest bytes, hence the digest a registry knows the image by.
        if ar.has("index.json"):
            return _load_oci(store, ar, platform or Platform())
        if ar.has("manifest.json"):
            return _load_docker(store, ar)
        raise ArchiveError(label, "neither a docker-archive (manifest.json) nor an OCI "
                           "layout (index.json)")


def _copy_blob(store: ImageStore, ar: _Archive, name: str, expected: str | None) -> str:
    if expected and store.blobs.has(expected):
        return expected
    with ar.open(name) as f:
        return store.blobs.put_stream(f, expected, source=f"{ar.label}:{name}")


def _load_docker(store: ImageStore, ar: _Archive) -> list[Loaded]:
    entries = ar.json("manifest.json")
    if not isinstance(entries, list):
        raise ArchiveError(ar.label, "manifest.json is not a list")
    out = []
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get("Config"), str) or \
                not isinstance(e.get("Layers"), list):
            raise ArchiveError(ar.label, f"bad manifest.json entry {e!r}")
        tags = [parse(str(t)).tagged for t in e.get("RepoTags") or []]
        config_data = ar.open(e["Config"]).read(MAX_JSON + 1)
        if len(config_data) > MAX_JSON:
            raise ArchiveError(ar.label, f"{e['Config']} is too large")
        config_digest = store.blobs.put(config_data)
        layers = []
        with store.pinned([config_digest]):
            for name in e["Layers"]:
                blob = _copy_blob(store, ar, str(name), None)
                layers.append(Descriptor(_layer_type(store, blob), blob, store.blobs.size(blob)))
            manifest = Manifest(MediaType.OCI_MANIFEST,
                                Descriptor(MediaType.OCI_CONFIG, config_digest, len(config_data)),
                                tuple(layers))
            with store.pinned(d.digest for d in layers):
                rec = store.add_image(manifest.to_bytes(), tags=tags)
        out.append(Loaded(rec, tuple(tags)))
    return out


def _layer_type(store: ImageStore, blob: str) -> str:
    with store.blobs.open(blob) as f:
        head = f.read(2)
    return MediaType.OCI_LAYER_GZIP if head == b"\x1f\x8b" else MediaType.OCI_LAYER


def _load_oci(store: ImageStore, ar: _Archive, platform: Platform) -> list[Loaded]:
    layout = ar.json("oci-layout") if ar.has("oci-layout") else {}
    if layout.get("imageLayoutVersion") not in (None, "1.0.0"):
        raise ArchiveError(ar.label, f"unsupported OCI layout {layout!r}")
    data = ar.open("index.json").read(MAX_JSON + 1)
    try:
        index = Index.parse(data)
    except InvalidManifest as e:
        raise ArchiveError(ar.label, f"index.json: {e}") from None
    out = []
    for desc in index.manifests:
        name = desc.annotations.get(_CONTAINERD_NAME) or desc.annotations.get(_REF_NAME, "")
        ref = try_parse(name) if name and (":" in name or "/" in name) else None
        tags = [ref.tagged] if ref is not None and not ref.digest else []
        rec = _load_oci_manifest(store, ar, desc, platform, tags)
        out.append(Loaded(rec, tuple(tags)))
    return out


def _load_oci_manifest(store: ImageStore, ar: _Archive, desc: Descriptor,
                       platform: Platform, tags: list[str], depth: int = 0) -> ImageRecord:
    data = ar.open(ar.blob_name(desc.digest)).read(MAX_JSON + 1)
    if sha256_digest(data) != desc.digest:
        raise ArchiveError(ar.label, f"manifest {desc.digest} does not match its digest")
    if is_index(data, desc.media_type):
        if depth > 0:
            raise ArchiveError(ar.label, f"index {desc.digest} nested in an index")
        chosen = Index.parse(data).select(platform)
        return _load_oci_manifest(store, ar, chosen, platform, tags, depth + 1)
    manifest = Manifest.parse(data, desc.media_type)
    digests = [manifest.config.digest, *(d.digest for d in manifest.layers)]
    with store.pinned(digests):
        for d in digests:
            _copy_blob(store, ar, ar.blob_name(d), d)
        return store.add_image(data, tags=tags)  # image and tag in one transaction


def save(store: ImageStore, refs: Sequence[str], out: BinaryIO) -> None:
    """Write the images `refs` name as one OCI-layout + docker-archive tar stream."""
    images: dict[str, list[str]] = {}
    for ref in refs:
        iid = store.lookup(ref)
        r = try_parse(ref)
        names = images.setdefault(iid, [])
        # By name: that tag travels with it. By id or digest: no tag, as `docker save`.
        if r is not None and not r.digest and r.tagged in store.get(iid).tags \
                and r.tagged not in names:
            names.append(r.tagged)
    index: list[dict[str, Any]] = []
    docker: list[dict[str, Any]] = []
    written: set[str] = set()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        for iid, names in images.items():
            data, manifest = store.manifest(iid)
            mdigest = sha256_digest(data)
            for d in [manifest.config.digest, *(la.digest for la in manifest.layers)]:
                if d not in written:
                    _add_blob(store, tar, d)
                    written.add(d)
            if mdigest not in written:
                _add_bytes(tar, f"blobs/sha256/{digest_hex(mdigest)}", data)
                written.add(mdigest)
            base = {"mediaType": manifest.media_type, "digest": mdigest, "size": len(data)}
            for n in names or [""]:
                entry = dict(base)
                if n:
                    r = parse(n)
                    entry["annotations"] = {_CONTAINERD_NAME: str(r), _REF_NAME: r.tag or ""}
                index.append(entry)
            docker.append({
                "Config": f"blobs/sha256/{digest_hex(manifest.config.digest)}",
                "RepoTags": [parse(n).familiar for n in names],
                "Layers": [f"blobs/sha256/{digest_hex(la.digest)}" for la in manifest.layers],
            })
        _add_bytes(tar, "index.json", json.dumps(
            {"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX, "manifests": index}).encode())
        _add_bytes(tar, "manifest.json", json.dumps(docker).encode())


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), 0o644, int(time.time())
    tar.addfile(ti, io.BytesIO(data))


def _add_blob(store: ImageStore, tar: tarfile.TarFile, digest: str) -> None:
    ti = tarfile.TarInfo(f"blobs/sha256/{digest_hex(digest)}")
    ti.size, ti.mode, ti.mtime = store.blobs.size(digest), 0o644, int(time.time())
    with store.blobs.open(digest) as f:
        tar.addfile(ti, f)


def import_rootfs(store: ImageStore, source: BinaryIO, *, tag: str | None = None,
                  changes: Sequence[str] = (), message: str = "",
                  platform: Platform | None = None) -> ImageRecord:
    """`docker import`: a rootfs tar (plain or gzip) becomes a one-layer image."""
    if tag:
        parse(tag)
    config = apply_changes({}, changes)
    plat = platform or Platform()
    with store.blobs.writer(source="import") as w:
        while chunk := source.read(CHUNK):
            w.write(chunk)
        size = w.offset
        blob = w.commit()
    with store.pinned([blob]):
        with store.blobs.open(blob) as f:
            head = f.read(2)
        mt = MediaType.OCI_LAYER_GZIP if head == b"\x1f\x8b" else MediaType.OCI_LAYER
        info = layer_from_blob(store, blob, mt)
        info = LayerInfo(info.diff_id, blob, size, mt)
        return create_image(store, base=None, layers=[info], config=config,
                            history=[HistoryEntry(created_by="", comment=message)],
                            tags=[tag] if tag else [], comment=message,
                            platform=(plat.os, plat.architecture))


class ChangeError(ValueError):
    pass


_CHANGE_KEYS = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "ONBUILD", "STOPSIGNAL",
                "USER", "VOLUME", "WORKDIR")


def apply_changes(config: dict[str, Any], changes: Sequence[str]) -> dict[str, Any]:
    """Docker's `--change` Dockerfile instructions applied to a config's JSON."""
    cfg = image_config_to_json(image_config_from_json(config))
    for change in changes:
        word, _, rest = change.strip().partition(" ")
        word, rest = word.upper(), rest.strip()
        if word not in _CHANGE_KEYS:
            raise ChangeError(f"--change {change!r}: {word} is not one of "
                              f"{', '.join(_CHANGE_KEYS)}")
        if word in ("CMD", "ENTRYPOINT"):
            cfg["Cmd" if word == "CMD" else "Entrypoint"] = _exec_or_shell(rest)
        elif word == "ENV":
            for k, v in _pairs(rest):
                cfg["Env"] = [e for e in cfg.get("Env", []) if e.split("=", 1)[0] != k]
                cfg["Env"].append(f"{k}={v}")
        elif word == "LABEL":
            cfg.setdefault("Labels", {}).update(dict(_pairs(rest)))
        elif word == "EXPOSE":
            for p in rest.split():
                cfg.setdefault("ExposedPorts", {})[p if "/" in p else f"{p}/tcp"] = {}
        elif word == "VOLUME":
            vols = json.loads(rest) if rest.startswith("[") else rest.split()
            for v in vols:
                cfg.setdefault("Volumes", {})[v] = {}
        elif word == "WORKDIR":
            cfg["WorkingDir"] = rest
        elif word == "USER":
            cfg["User"] = rest
        elif word == "STOPSIGNAL":
            cfg["StopSignal"] = rest
        elif word == "ONBUILD":
            cfg.setdefault("OnBuild", []).append(rest)
    return cfg


def _exec_or_shell(rest: str) -> list[str]:
    if rest.startswith("["):
        try:
            v = json.loads(rest)
        except json.JSONDecodeError as e:
            raise ChangeError(f"bad JSON array {rest!r}: {e}") from None
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ChangeError(f"{rest!r} is not a list of strings")
        return v
    return ["/bin/sh", "-c", rest]


def _pairs(rest: str) -> Iterator[tuple[str, str]]:
    words = shlex.split(rest)
    if len(words) >= 2 and "=" not in words[0]:
        yield words[0], " ".join(words[1:])  # legacy `ENV key value`
        return
    for w in words:
        k, eq, v = w.partition("=")
        if not eq:
            raise ChangeError(f"{w!r}: want key=value")
        yield k, v

