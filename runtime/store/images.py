"""Image and tag records (SQLite) over the blob and layer stores.

An image is its config blob's digest (Docker's image id), the manifest kept
in the blob store, and its ordered layers (DiffIDs, unpacked under layers/).
Tags (`docker.io/library/busybox:latest`) and repo digests point at images.
Every change is one transaction: an image appears with all its layers
unpacked and its tags in place, or not at all; a tag moves atomically.

Layers and blobs are shared: removing an image deletes only what no other
image uses, and never what a pull in progress has pinned.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from runtime.oci import (
    ImageConfig,
    ImageNotFound,
    InvalidManifest,
    Manifest,
    ResolvedImage,
    diff_ids_of,
    image_config_from_json,
)
from runtime.registry.reference import InvalidReference, parse, try_parse
from runtime.store import removal
from runtime.store.blobs import BlobStore
from runtime.store.db import open_db, schema, transaction
from runtime.store.extract import ExtractLimits
from runtime.store.layers import LayerStore
from runtime.store.removal import ImageConflict as ImageConflict

_DDL = """
CREATE TABLE IF NOT EXISTS images (
  id TEXT PRIMARY KEY,
  manifest_digest TEXT NOT NULL,
  created TEXT NOT NULL DEFAULT '',
  size INTEGER NOT NULL DEFAULT 0,
  parent TEXT NOT NULL DEFAULT '',
  added REAL NOT NULL,
  last_tag_time REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS image_layers (
  image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
  position INTEGER NOT NULL,
  diff_id TEXT NOT NULL,
  blob TEXT NOT NULL,
  PRIMARY KEY (image_id, position)
);
CREATE INDEX IF NOT EXISTS image_layers_diff ON image_layers(diff_id);
CREATE INDEX IF NOT EXISTS image_layers_blob ON image_layers(blob);
CREATE TABLE IF NOT EXISTS layers (
  diff_id TEXT PRIMARY KEY,
  size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS image_tags (
  name TEXT PRIMARY KEY,
  image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS image_repo_digests (
  repo TEXT NOT NULL,
  digest TEXT NOT NULL,
  image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
  PRIMARY KEY (repo, digest)
);
"""
schema("images", _DDL)

PARTIAL_MAX_AGE = 24 * 3600  # resumable downloads older than this go at prune
_FULL_ID = re.compile(r"^(?:sha256:)?([a-f0-9]{64})$")
_SHORT_ID = re.compile(r"^(?:sha256:)?([a-f0-9]{1,63})$")


class ImageUsers(Protocol):
    """The container engine: which containers use an image (by id)."""

    def containers_using(self, image_id: str) -> Sequence[str]: ...


class NoUsers:
    def containers_using(self, image_id: str) -> Sequence[str]:
        return ()


class ImageHold:
    """What one running build stands on: images (its bases, steps and cache hits)
    and the blobs of layers it committed but has not yet made into an image."""

    def __init__(self, name: str, store: ImageStore) -> None:
        self.name = name
        self._store = store
        self._ids: set[str] = set()
        self._pins: list[str] = []

    def add(self, image_id: str) -> None:
        with self._store.lock:
            self._ids.add(image_id)

    def pin(self, digest: str) -> None:
        """Keep a blob (and the layer unpacked from it) until the build ends."""
        with self._store.lock:
            self._store.pin(digest)
            self._pins.append(digest)

    def release(self) -> None:
        with self._store.lock:
            for digest in self._pins:
                self._store.unpin(digest)
            self._pins.clear()
            self._ids.clear()

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._ids


class AmbiguousImage(LookupError):
    def __init__(self, ref: str, n: int) -> None:
        self.ref = ref
        super().__init__(f"short id {ref!r} matches {n} images; give more digits")


class StoreCorrupt(RuntimeError):
    pass


@dataclass(frozen=True)
class ImageRecord:
    id: str
    manifest_digest: str
    created: str
    size: int
    parent: str
    added: float
    last_tag_time: float
    tags: tuple[str, ...]  # fully qualified name:tag
    repo_digests: tuple[str, ...]  # name@digest
    diff_ids: tuple[str, ...]
    layer_blobs: tuple[str, ...]

    @property
    def dangling(self) -> bool:
        return not self.tags


@dataclass(frozen=True)
class ImageFilters:
    dangling: bool | None = None
    labels: tuple[str, ...] = ()  # "key" or "key=value", all must match
    reference: tuple[str, ...] = ()  # fnmatch patterns on familiar name[:tag]
    include_intermediate: bool = False
    created_before: float | None = None  # unix seconds (Docker's before=/until=)
    created_after: float | None = None  # unix seconds (Docker's since=)


class ImageStore:
    """The image store of one data root; thread-safe (one lock around writes)."""

    def __init__(self, root: Path, conn: sqlite3.Connection | None = None,
                 users: ImageUsers | None = None, limits: ExtractLimits | None = None) -> None:
        self.root = root
        self.conn = conn if conn is not None else open_db(root / "berth.db")
        if conn is not None:
            # The caller opened the database before our schema was registered.
            conn.executescript(_DDL)
        self.blobs = BlobStore(root)
        self.layers = LayerStore(root, limits)
        self.users: ImageUsers = users or NoUsers()
        self.lock = threading.RLock()
        self._pins: Counter[str] = Counter()
        self._configs: dict[str, dict[str, Any]] = {}
        self._sizes: dict[str, int] = {}
        self._schemas: set[str] = set()
        self._holds: list[ImageHold] = []
        # Other record owners (signatures) name blobs they keep alive.
        self.blob_roots: list[Callable[[], Collection[str]]] = []
        # Leftovers of a crash. (One ImageStore per data root: berthd's.)
        self.layers.sweep_temporaries()
        self.blobs.sweep_ingest()

    def ensure_schema(self, ddl: str) -> None:
        """Apply another owner's DDL once, under the write lock.

        executescript COMMITs any open transaction first: never run it while
        another thread may be inside one on this connection.
        """
        if ddl in self._schemas:
            return
        with self.lock:
            self.conn.executescript(ddl)
            self._schemas.add(ddl)

    # --- lookups ---

    def lookup(self, ref: str) -> str:
        """The image id `ref` names: name[:tag], name@digest, full or short id."""
        if m := _FULL_ID.match(ref):
            iid = f"sha256:{m.group(1)}"
            if self._row("SELECT id FROM images WHERE id=?", iid):
                return iid
            raise ImageNotFound(ref)
        r = try_parse(ref)
        if r is not None:
            if r.digest:
                row = self._row("SELECT image_id FROM image_repo_digests WHERE repo=? AND "
                                "digest=?", r.name, r.digest) or self._row(
                    "SELECT id FROM images WHERE manifest_digest=?", r.digest)
                if row:
                    return str(row[0])
                raise ImageNotFound(ref)
            row = self._row("SELECT image_id FROM image_tags WHERE name=?", r.tagged)
            if row:
                return str(row[0])
        if m := _SHORT_ID.match(ref):
            rows = self.conn.execute("SELECT id FROM images WHERE id LIKE ?",
                                     (f"sha256:{m.group(1)}%",)).fetchall()
            if len(rows) == 1:
                return str(rows[0][0])
            if len(rows) > 1:
                raise AmbiguousImage(ref, len(rows))
        raise ImageNotFound(ref)

    def get(self, ref: str) -> ImageRecord:
        return self._record(self.lookup(ref))

    def resolve(self, ref: str, rec: ImageRecord | None = None) -> ResolvedImage:
        """The engine's seam: id, unpacked layer dirs (lowest first), config (`rec`: the
        record of ref, when the caller has it)."""
        if rec is None:
            rec = self.get(ref)
        dirs = tuple(self.layers.path(d) for d in rec.diff_ids)
        for d, diff in zip(dirs, rec.diff_ids, strict=True):
            if not d.is_dir():
                raise StoreCorrupt(f"layer {diff} of image {rec.id} is missing from {d}; "
                                   f"remove the image and load or pull it again")
        return ResolvedImage(id=rec.id, ref=ref, layer_dirs=dirs,
                             config=self.image_config(rec.id))

    def config_doc(self, image_id: str) -> dict[str, Any]:
        """The image configuration JSON (the config blob), cached."""
        doc = self._configs.get(image_id)
        if doc is None:
            doc = json.loads(self.blobs.read(image_id))
            self._configs[image_id] = doc
        return doc

    def config_doc_of_blob(self, digest: str) -> dict[str, Any]:
        """Parse a config blob that may not belong to any image yet (a pull)."""
        try:
            doc = json.loads(self.blobs.read(digest))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InvalidManifest(f"image config {digest} is not JSON: {e}") from None
        if not isinstance(doc, dict):
            raise InvalidManifest(f"image config {digest} is not an object")
        return doc

    def image_config(self, image_id: str) -> ImageConfig:
        return image_config_from_json(self.config_doc(image_id).get("config"))

    def manifest(self, image_id: str) -> tuple[bytes, Manifest]:
        rec = self._record(image_id)
        data = self.blobs.read(rec.manifest_digest)
        return data, Manifest.parse(data)

    def list_images(self, filters: ImageFilters | None = None) -> list[ImageRecord]:
        f = filters or ImageFilters()
        out = []
        parents = {str(r[0]) for r in self.conn.execute("SELECT DISTINCT parent FROM images")}
        for row in self.conn.execute("SELECT id FROM images ORDER BY added DESC").fetchall():
            rec = self._record(str(row[0]))
            if f.dangling is not None and rec.dangling != f.dangling:
                continue
            # Docker hides a build's intermediate images (untagged, with a child) unless
            # asked for all (`images -a`); `dangling=true` means heads only, even with -a
            # (they are what prune removes, each with its chain).
            if rec.dangling and rec.id in parents and (not f.include_intermediate
                                                       or f.dangling is True):
                continue
            if f.labels and not self._labels_match(rec.id, f.labels):
                continue
            if f.reference and not _reference_match(rec.tags, f.reference):
                continue
            created = created_unix(rec.created)
            if f.created_before is not None and not created < f.created_before:
                continue
            if f.created_after is not None and not created > f.created_after:
                continue
            out.append(rec)
        return out

    def _labels_match(self, image_id: str, wanted: Iterable[str]) -> bool:
        labels = self.image_config(image_id).labels
        for w in wanted:
            k, eq, v = w.partition("=")
            if k not in labels or (eq and labels[k] != v):
                return False
        return True

    # --- writes ---

    @contextlib.contextmanager
    def pinned(self, digests: Iterable[str]) -> Iterator[None]:
        """Keep these blobs from garbage collection while an image is assembled."""
        ds = list(digests)
        with self.lock:
            self._pins.update(ds)
        try:
            yield
        finally:
            with self.lock:
                self._pins.subtract(ds)
                self._pins += Counter()  # drop zero counts

    def pin(self, digest: str) -> None:
        with self.lock:
            self._pins[digest] += 1

    def unpin(self, digest: str) -> None:
        with self.lock:
            self._pins[digest] -= 1
            self._pins += Counter()

    def add_image(self, manifest_data: bytes, *, tags: Sequence[str] = (),
                  repo_digest: tuple[str, str] | None = None, parent: str = "",
                  limits: ExtractLimits | None = None) -> ImageRecord:
        """Record an image whose config and layer blobs are already in the blob store.

        Unpacks missing layers (verifying each DiffID), then in one transaction
        inserts the image and moves `tags` (`name:tag`) onto it.
        """
        manifest = Manifest.parse(manifest_data)
        names = [_tag_name(t) for t in tags]
        config = self.config_doc_of_blob(manifest.config.digest)
        diff_ids = diff_ids_of(config)
        image_config_from_json(config.get("config"))  # validate before recording
        if len(diff_ids) != len(manifest.layers):
            raise InvalidManifest(f"manifest has {len(manifest.layers)} layers but the config "
                                  f"lists {len(diff_ids)} diff ids")
        blobs = [manifest.config.digest, *(d.digest for d in manifest.layers)]
        with self.pinned(blobs):
            manifest_digest = self.blobs.put(manifest_data)
            sizes = self._unpack_all(manifest, diff_ids, limits)
            iid = manifest.config.digest
            now = time.time()
            old = self._row("SELECT manifest_digest FROM images WHERE id=?", iid)
            old_blobs = [str(r[0]) for r in self.conn.execute(
                "SELECT blob FROM image_layers WHERE image_id=?", (iid,))]
            with self.lock, transaction(self.conn):
                self.conn.execute(
                    "INSERT INTO images(id, manifest_digest, created, size, parent, added) "
                    "VALUES (?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET "
                    "manifest_digest=excluded.manifest_digest",
                    (iid, manifest_digest, str(config.get("created") or ""), sum(sizes),
                     parent, now))
                self.conn.execute("DELETE FROM image_layers WHERE image_id=?", (iid,))
                for i, (diff, desc, size) in enumerate(
                        zip(diff_ids, manifest.layers, sizes, strict=True)):
                    self.conn.execute("INSERT OR IGNORE INTO layers(diff_id, size) VALUES (?,?)",
                                      (diff, size))
                    self.conn.execute("INSERT INTO image_layers VALUES (?,?,?,?)",
                                      (iid, i, diff, desc.digest))
                for name in names:
                    self.conn.execute("INSERT OR REPLACE INTO image_tags(name, image_id) "
                                      "VALUES (?,?)", (name, iid))
                if names:
                    self.conn.execute("UPDATE images SET last_tag_time=? WHERE id=?", (now, iid))
                if repo_digest:
                    self.conn.execute("INSERT OR REPLACE INTO image_repo_digests VALUES (?,?,?)",
                                      (repo_digest[0], repo_digest[1], iid))
            if old and old[0] != manifest_digest:
                # The same image arrived in another form (a pull after a load):
                # the former manifest and layer blobs go unless still used.
                self._drop_unreferenced([str(old[0]), *old_blobs])
        return self._record(iid)

    def _unpack_all(self, manifest: Manifest, diff_ids: Sequence[str],
                    limits: ExtractLimits | None) -> list[int]:
        return [self.unpack_layer(desc.digest, diff, limits)
                for desc, diff in zip(manifest.layers, diff_ids, strict=True)]

    def unpack_layer(self, blob: str, diff_id: str, limits: ExtractLimits | None = None) -> int:
        """Unpack one layer blob (if not yet on disk) checking its DiffID; its size.

        Pulls call this as each layer arrives, so unpacking overlaps the
        downloads; the caller pins `diff_id` until the image is recorded.
        """
        row = self._row("SELECT size FROM layers WHERE diff_id=?", diff_id)
        if self.layers.has(diff_id):
            if row:
                return int(row[0])
            if diff_id not in self._sizes:
                self._sizes[diff_id] = self.layers.disk_usage(diff_id)
            return self._sizes[diff_id]
        with self.blobs.open(blob) as f:
            stats = self.layers.unpack(f, diff_id, blob, limits)
        self._sizes[diff_id] = stats.size
        return stats.size

    def sweep_layers(self) -> int:
        """Remove unpacked layers no image records (a pull that failed after unpacking)."""
        removed = 0
        with self.lock:
            used = {str(r[0]) for r in self.conn.execute("SELECT diff_id FROM image_layers")}
            for p in self.layers.dir.iterdir():
                diff = f"sha256:{p.name}"
                if len(p.name) == 64 and diff not in used and not self._pins[diff]:
                    self.layers.remove(diff)
                    self._sizes.pop(diff, None)
                    removed += 1
        return removed

    def tag(self, source: str, target: str) -> str:
        """Point `target` (name[:tag]) at the image `source` names; returns the tag."""
        iid = self.lookup(source)
        name = _tag_name(target)
        with self.lock, transaction(self.conn):
            self.conn.execute("INSERT OR REPLACE INTO image_tags(name, image_id) VALUES (?,?)",
                              (name, iid))
            self.conn.execute("UPDATE images SET last_tag_time=? WHERE id=?", (time.time(), iid))
        return name

    def add_repo_digest(self, image_id: str, repo: str, digest: str) -> None:
        """Remember that `repo@digest` names this image (after a push)."""
        with self.lock, transaction(self.conn):
            self.conn.execute("INSERT OR REPLACE INTO image_repo_digests VALUES (?,?,?)",
                              (repo, digest, image_id))

    def remove(self, ref: str, *, force: bool = False, prune: bool = True) -> list[dict[str, str]]:
        """Docker's `rmi`: untag, then delete the image (and, with `prune`, its
        untagged parents) once nothing names or uses it; see removal.py.

        Returns Docker's list of {"Untagged": ...} / {"Deleted": ...}. An image
        a container uses is never deleted (its layers are the container's
        lowerdirs): with force it is only untagged and left dangling.
        """
        return removal.remove(self, ref, force=force, prune=prune)

    def prune(self, *, all_images: bool = False,
              filters: ImageFilters | None = None) -> dict[str, Any]:
        """Delete dangling images and their parent chains (all unused ones with
        all_images) that no container or running build uses."""
        result = removal.prune(self, all_images=all_images, filters=filters or ImageFilters())
        result["SpaceReclaimed"] += self.blobs.sweep_ingest(partial_max_age=PARTIAL_MAX_AGE)
        return result

    @contextlib.contextmanager
    def hold(self, name: str) -> Iterator[ImageHold]:
        """Register a running build: the images it adds to the hold stay until it ends.

        Add an image under `self.lock` in the same section that creates it, so no
        prune can come between the two."""
        h = ImageHold(name, self)
        with self.lock:
            self._holds.append(h)
        try:
            yield h
        finally:
            with self.lock:
                self._holds.remove(h)
                h.release()

    def builds_using(self, image_id: str) -> list[str]:
        with self.lock:
            return [h.name for h in self._holds if image_id in h]

    def forget(self, image_id: str) -> None:
        """Drop cached state of a deleted image."""
        self._configs.pop(image_id, None)

    def drop_unreferenced(self, blobs: Iterable[str]) -> None:
        self._drop_unreferenced(blobs)

    def _drop_unreferenced(self, blobs: Iterable[str]) -> None:
        with self.lock:
            for blob in blobs:
                if not self._pins[blob] and not self._blob_referenced(blob):
                    self.blobs.delete(blob)

    def _blob_referenced(self, blob: str) -> bool:
        if any(blob in roots() for roots in self.blob_roots):
            return True
        return bool(self._row(
            "SELECT 1 FROM images WHERE id=? OR manifest_digest=? UNION "
            "SELECT 1 FROM image_layers WHERE blob=?", blob, blob, blob))

    def sweep_blobs(self) -> int:
        """Delete every blob no image (nor a registered root) refers to; returns bytes."""
        freed = 0
        with self.lock:
            for blob in list(self.blobs):
                if not self._pins[blob] and not self._blob_referenced(blob):
                    freed += self.blobs.size(blob)
                    self.blobs.delete(blob)
        return freed

    def disk_bytes(self) -> int:
        row = self._row("SELECT COALESCE(SUM(size),0) FROM layers")
        blob_bytes = 0
        for p in self.blobs.dir.iterdir():
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                blob_bytes += p.stat().st_size
        return int(row[0] if row else 0) + blob_bytes

    # --- rows ---

    def _row(self, sql: str, *args: Any) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(sql, args).fetchone()
        return row

    def _record(self, iid: str) -> ImageRecord:
        row = self._row("SELECT * FROM images WHERE id=?", iid)
        if row is None:
            raise ImageNotFound(iid)
        tags = tuple(str(r[0]) for r in self.conn.execute(
            "SELECT name FROM image_tags WHERE image_id=? ORDER BY name", (iid,)))
        digests = tuple(f"{r[0]}@{r[1]}" for r in self.conn.execute(
            "SELECT repo, digest FROM image_repo_digests WHERE image_id=? ORDER BY repo",
            (iid,)))
        layers = self.conn.execute("SELECT diff_id, blob FROM image_layers WHERE image_id=? "
                                   "ORDER BY position", (iid,)).fetchall()
        return ImageRecord(
            id=iid, manifest_digest=row["manifest_digest"], created=row["created"],
            size=row["size"], parent=row["parent"], added=row["added"],
            last_tag_time=row["last_tag_time"], tags=tags, repo_digests=digests,
            diff_ids=tuple(str(r[0]) for r in layers),
            layer_blobs=tuple(str(r[1]) for r in layers),
        )


def created_unix(created: str) -> float:
    """An image config's RFC 3339 `created` as unix seconds (0 if absent or odd)."""
    if not created:
        return 0.0
    text = created.strip().replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # Python 3.11 takes at most 6 fractional digits
        digits = "".join(c for c in rest if c.isdigit())
        tz = rest[len(digits):]
        text = f"{head}.{digits[:6]}{tz}"
    try:
        stamp = dt.datetime.fromisoformat(text)
    except ValueError:
        return 0.0
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def _tag_name(ref: str) -> str:
    r = parse(ref)
    if r.digest:
        raise InvalidReference(ref, "a tag cannot hold a digest")
    return r.tagged


def _familiar(name: str) -> str:
    r = try_parse(name)
    return r.familiar if r else name


def familiar(name: str) -> str:
    """docker.io/library/busybox:latest -> busybox:latest (for display)."""
    return _familiar(name)


def _reference_match(tags: Sequence[str], patterns: Sequence[str]) -> bool:
    import fnmatch

    fam = [_familiar(t) for t in tags]
    for p in patterns:
        for t in fam:
            repo = t.rsplit(":", 1)[0] if ":" in t.rsplit("/", 1)[-1] else t
            if fnmatch.fnmatchcase(t, p) or fnmatch.fnmatchcase(repo, p):
                return True
    return False


def labels_of(config_doc: Mapping[str, Any]) -> dict[str, str]:
    labels = (config_doc.get("config") or {}).get("Labels") or {}
    return {str(k): str(v) for k, v in labels.items()}
