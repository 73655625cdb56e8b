"""New layers and images made here: `berth import`, `berth commit`, the builder.

`commit_layer(store, upper_dir)` turns an overlayfs upper directory (or any
directory tree) into a layer: a deterministic tar (names sorted, overlay
whiteouts turned back into `.wh.` entries and opaque directories into
`.wh..wh..opq`) streamed into the blob store, then unpacked through the same
safe extractor as any pulled layer. `create_image` writes the config and
manifest for a stack of layers and records the image atomically.

Layers made here are stored uncompressed (OCI `tar` media type): the blob's
digest is then the DiffID, and nobody pays for gzip on two cores.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import stat
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from runtime.oci import (
    Descriptor,
    ImageConfig,
    Manifest,
    MediaType,
    image_config_to_json,
)
from runtime.store.blobs import BlobWriter
from runtime.store.extract import OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX
from runtime.store.images import ImageHold, ImageRecord, ImageStore

_KEPT_XATTRS = ("security.capability",)
USER_OPAQUE_XATTR = "user.overlay.opaque"


class CommitError(ValueError):
    pass


@dataclass(frozen=True)
class IdShift:
    """A container's user namespace mapping (container 0 = host `host_base`):
    committed files get container ids back; ids outside the range become
    nobody (65534), as the kernel shows them inside the container."""

    host_base: int
    count: int = 65536

    def to_container(self, host_id: int) -> int:
        if self.host_base <= host_id < self.host_base + self.count:
            return host_id - self.host_base
        return 65534


@dataclass(frozen=True)
class LayerInfo:
    diff_id: str
    blob: str
    size: int  # blob bytes
    media_type: str = MediaType.OCI_LAYER


@dataclass(frozen=True)
class HistoryEntry:
    created_by: str
    empty_layer: bool = False
    comment: str = ""
    created: str = ""


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _WriterIO:
    def __init__(self, w: BlobWriter) -> None:
        self.w = w

    def write(self, data: bytes) -> int:
        self.w.write(data)
        return len(data)


def write_layer_tar(src: Path, out: BinaryIO, ids: IdShift | None = None) -> None:
    """A layer tar of the tree `src`, overlay whiteouts in tar (`.wh.`) form."""
    links: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirs, files in os.walk(src):
            dirs.sort()
            rel_dir = os.path.relpath(dirpath, src)
            names = sorted([*dirs, *files])
            for name in names:
                full = os.path.join(dirpath, name)
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                _add(tar, full, rel, links, ids)
            # os.walk does not descend into symlinked dirs, but lists them in dirs.
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(dirpath, d))]


def _add(tar: tarfile.TarFile, full: str, rel: str, links: dict[tuple[int, int], str],
         ids: IdShift | None) -> None:
    st = os.lstat(full)
    ti = tarfile.TarInfo(rel)
    ti.mode, ti.uid, ti.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    if ids is not None:
        ti.uid, ti.gid = ids.to_container(st.st_uid), ids.to_container(st.st_gid)
    ti.mtime = int(st.st_mtime)
    ti.uname = ti.gname = ""
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        head, _, base = rel.rpartition("/")
        wh = tarfile.TarInfo(f"{head}/{WHITEOUT_PREFIX}{base}" if head else
                             f"{WHITEOUT_PREFIX}{base}")
        wh.mtime = ti.mtime
        tar.addfile(wh)
        return
    ti.pax_headers = _xattrs(full)
    if stat.S_ISDIR(st.st_mode):
        ti.type = tarfile.DIRTYPE
        tar.addfile(ti)
        if _opaque(full):
            tar.addfile(tarfile.TarInfo(f"{rel}/{OPAQUE_MARKER}"))
    elif stat.S_ISLNK(st.st_mode):
        ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(full)
        tar.addfile(ti)
    elif stat.S_ISREG(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in links:
            ti.type, ti.linkname = tarfile.LNKTYPE, links[key]
            tar.addfile(ti)
            return
        links[key] = rel
        ti.size = st.st_size
        with open(full, "rb") as f:
            tar.addfile(ti, f)
    elif stat.S_ISFIFO(st.st_mode):
        ti.type = tarfile.FIFOTYPE
        tar.addfile(ti)
    elif stat.S_ISSOCK(st.st_mode):
        return  # sockets do not survive into images (Docker drops them too)
    else:
        raise CommitError(f"{rel}: device nodes cannot be committed into a layer")


def _opaque(path: str) -> bool:
    # trusted.* when overlayfs ran as root, user.* when mounted with `userxattr`.
    for name in (OVERLAY_OPAQUE_XATTR, USER_OPAQUE_XATTR):
        with contextlib.suppress(OSError):
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
    return False


def _xattrs(path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return out
    for n in names:
        if n in _KEPT_XATTRS or (n.startswith("user.") and not n.startswith("user.overlay.")):
            with contextlib.suppress(OSError):
                out[f"SCHILY.xattr.{n}"] = os.getxattr(path, n, follow_symlinks=False).decode(
                    "utf-8", "surrogateescape")
    return out


def commit_layer(store: ImageStore, tree: Path, ids: IdShift | None = None,
                 hold: ImageHold | None = None) -> LayerInfo:
    """Make a layer of `tree` (e.g. a container's overlay upper dir) and unpack it.

    `ids`: the container's uid/gid mapping when its files are owned by a
    shifted host range (a user-namespaced container's upper dir). `hold`: a
    running build's, which keeps the layer from a prune until its image exists."""
    with store.blobs.writer(source=str(tree)) as w:
        write_layer_tar(tree, cast(BinaryIO, _WriterIO(w)), ids)
        size = w.offset
        blob = w.commit()
    store.pin(blob)
    try:
        if not store.layers.has(blob):
            with store.blobs.open(blob) as f:
                store.layers.unpack(f, blob, blob)
    except BaseException:
        store.unpin(blob)
        raise
    if hold is not None:
        hold.pin(blob)
    store.unpin(blob)
    return LayerInfo(diff_id=blob, blob=blob, size=size)


def layer_from_blob(store: ImageStore, blob: str, media_type: str) -> LayerInfo:
    """Unpack a layer blob already in the store (plain or gzip); learn its DiffID."""
    with store.blobs.open(blob) as f:
        stats = store.layers.unpack(f, None, blob)
    return LayerInfo(stats.diff_id, blob, store.blobs.size(blob), media_type)


def create_image(store: ImageStore, *, base: str | None, layers: Sequence[LayerInfo],
                 config: ImageConfig | Mapping[str, Any] | None = None,
                 history: Sequence[HistoryEntry] = (), tags: Sequence[str] = (),
                 author: str = "", comment: str = "", created: str = "",
                 platform: tuple[str, str] = ("linux", "amd64")) -> ImageRecord:
    """Record an image: `base`'s layers (image id or None for scratch) + `layers`.

    `config` replaces the base's `config` object (ImageConfig or its JSON);
    None keeps the base's. `history` gets one entry per new layer unless given.
    """
    created = created or now_rfc3339()
    base_doc: dict[str, Any] = {}
    base_layers: list[Descriptor] = []
    if base is not None:
        base_doc = json.loads(json.dumps(store.config_doc(base)))
        base_layers = list(store.manifest(base)[1].layers)
    if config is None:
        cfg_json: Mapping[str, Any] = base_doc.get("config") or {}
    elif isinstance(config, ImageConfig):
        cfg_json = image_config_to_json(config)
    else:
        cfg_json = config
    hist = list(base_doc.get("history") or [])
    entries = list(history) or [HistoryEntry(created_by="") for _ in layers]
    for h in entries:
        e: dict[str, Any] = {"created": h.created or created, "created_by": h.created_by}
        if h.comment:
            e["comment"] = h.comment
        if h.empty_layer:
            e["empty_layer"] = True
        hist.append(e)
    diff_ids = [*(base_doc.get("rootfs") or {}).get("diff_ids", []), *(la.diff_id for la in layers)]
    doc: dict[str, Any] = {
        "created": created,
        "architecture": base_doc.get("architecture") or platform[1],
        "os": base_doc.get("os") or platform[0],
        "config": dict(cfg_json),
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": hist,
    }
    if author:
        doc["author"] = author
    if comment:
        doc["comment"] = comment
    config_data = json.dumps(doc, separators=(",", ":")).encode()
    config_digest = store.blobs.put(config_data)
    manifest = Manifest(
        MediaType.OCI_MANIFEST,
        Descriptor(MediaType.OCI_CONFIG, config_digest, len(config_data)),
        tuple(base_layers) + tuple(Descriptor(la.media_type, la.blob, la.size) for la in layers),
    )
    with store.pinned([config_digest, *(la.blob for la in layers)]):
        return store.add_image(manifest.to_bytes(), tags=tags, parent=base or "")
