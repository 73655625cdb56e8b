"""Docker Engine API shapes of image records: /images/json, inspect, history."""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Any

from runtime.oci import ImageNotFound, chain_id
from runtime.store.images import ImageRecord, ImageStore, created_unix, familiar


def _unix(created: str) -> int:
    return int(created_unix(created))


_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def parse_timestamp(text: str, now: float | None = None) -> float:
    """Docker's filter times (until=, since=): unix seconds, RFC 3339, or a Go
    duration ("24h", "1h30m", "90s") meaning that long before now."""
    now = time.time() if now is None else now
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    m = _DURATION.match(text)
    if m and any(m.groups()):
        h, mi, sec = (float(g or 0) for g in m.groups())
        return now - (h * 3600 + mi * 60 + sec)
    stamp = created_unix(text)
    if stamp == 0.0:
        raise ValueError(f"{text!r} is not a timestamp (unix seconds, RFC 3339) or a "
                         "duration (24h, 90m, 30s)")
    return stamp


def summary(store: ImageStore, rec: ImageRecord) -> dict[str, Any]:
    """One entry of GET /images/json."""
    labels = dict(store.image_config(rec.id).labels)
    return {
        "Id": rec.id,
        "ParentId": rec.parent,
        "RepoTags": [familiar(t) for t in rec.tags],
        "RepoDigests": [familiar(d) for d in rec.repo_digests],
        "Created": _unix(rec.created),
        "Size": rec.size,
        "SharedSize": -1,
        "VirtualSize": rec.size,
        "Labels": labels or None,
        "Containers": len(store.users.containers_using(rec.id)),
    }


def inspect(store: ImageStore, rec: ImageRecord) -> dict[str, Any]:
    """GET /images/{name}/json."""
    doc = store.config_doc(rec.id)
    dirs = [str(store.layers.path(d)) for d in rec.diff_ids]
    return {
        "Id": rec.id,
        "RepoTags": [familiar(t) for t in rec.tags],
        "RepoDigests": [familiar(d) for d in rec.repo_digests],
        "Parent": rec.parent,
        "Comment": doc.get("comment", ""),
        "Created": rec.created,
        "DockerVersion": doc.get("docker_version", ""),
        "Author": doc.get("author", ""),
        "Config": doc.get("config") or {},
        "Architecture": doc.get("architecture", ""),
        "Variant": doc.get("variant", ""),
        "Os": doc.get("os", ""),
        "Size": rec.size,
        "VirtualSize": rec.size,
        "GraphDriver": {"Name": "overlay", "Data": {
            "LowerDir": ":".join(reversed(dirs)),
            "ChainID": chain_id(rec.diff_ids) if rec.diff_ids else "",
        }},
        "RootFS": {"Type": "layers", "Layers": list(rec.diff_ids)},
        "Metadata": {"LastTagTime": dt.datetime.fromtimestamp(
            rec.last_tag_time, dt.UTC).isoformat() if rec.last_tag_time else
            "0001-01-01T00:00:00Z"},
        "Descriptor": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": rec.manifest_digest,
                       "size": store.blobs.size(rec.manifest_digest)},
    }


def history(store: ImageStore, rec: ImageRecord) -> list[dict[str, Any]]:
    """GET /images/{name}/history: newest first, one entry per history item."""
    doc = store.config_doc(rec.id)
    hist = doc.get("history") or [{"created": rec.created, "created_by": ""}
                                  for _ in rec.diff_ids]
    sizes = [_layer_size(store, d) for d in rec.diff_ids]
    out = []
    layer = 0
    for h in hist:
        size = 0
        if not h.get("empty_layer") and layer < len(sizes):
            size = sizes[layer]
            layer += 1
        out.append({"Id": "<missing>", "Created": _unix(str(h.get("created") or "")),
                    "CreatedBy": h.get("created_by", ""), "Tags": None, "Size": size,
                    "Comment": h.get("comment", "")})
    out.reverse()
    # As Docker: newest entry first, each named by the image along the parent chain
    # (a build's step images, then the base where it is in the store).
    step: ImageRecord | None = rec
    for entry in out:
        if step is None:
            break
        entry["Id"] = step.id
        entry["Tags"] = [familiar(t) for t in step.tags] or None
        try:
            step = store.get(step.parent) if step.parent else None
        except ImageNotFound:
            step = None
    return out


def _layer_size(store: ImageStore, diff_id: str) -> int:
    row = store.conn.execute("SELECT size FROM layers WHERE diff_id=?", (diff_id,)).fetchone()
    return int(row[0]) if row else 0
