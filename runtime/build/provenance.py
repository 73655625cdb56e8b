"""Build provenance: where an image came from (repository, commit, Dockerfile).

The labels and the SLSA statement themselves are runtime/sign/provenance.py's
(`BuildProvenance`, `image_labels`, `attest_image`, `verified_provenance`);
here: finding the source repository and commit of a context (git), the
Dockerfile digest, and the record berthd keeps per built image so that
`berth attest` can sign and push the statement after `berth push`.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from runtime.oci import sha256_digest
from runtime.run import CommandError, run
from runtime.sign.provenance import BuildProvenance, image_labels
from runtime.store.db import schema, transaction

SOURCE_LABEL = "org.opencontainers.image.source"
REVISION_LABEL = "org.opencontainers.image.revision"

DDL = """
CREATE TABLE IF NOT EXISTS build_provenance (
  image_id TEXT PRIMARY KEY,
  doc TEXT NOT NULL,
  created REAL NOT NULL
);
"""
schema("build_provenance", DDL)


def git_source(context: Path) -> dict[str, str]:
    """The context's git remote (or its top-level path) and HEAD commit, as labels.

    Empty when the context is not in a git work tree or git is missing."""
    def git(*args: str) -> str:
        try:
            return run(["git", "-C", str(context), *args]).stdout.strip()
        except (CommandError, OSError):
            return ""
    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    url = git("config", "--get", "remote.origin.url")
    if not url:
        top = git("rev-parse", "--show-toplevel")
        url = f"file://{top}" if top else ""
    out = {REVISION_LABEL: commit}
    if url:
        out[SOURCE_LABEL] = url
    return out


_SHA_RE = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_REMOTE_RE = re.compile(r'^\s*\[\s*remote\s+"([^"]+)"\s*\]\s*$')
_URL_RE = re.compile(r"^\s*url\s*=\s*(.+?)\s*$")


def git_source_in_tree(context: Path) -> dict[str, str]:
    """The same labels, read from a `.git` directory the context carries (berthd's
    side, for clients such as the docker CLI that do not label the build).

    The files are parsed here, never handed to git: a context's .git/config is
    untrusted input, and git runs commands that a config names (core.fsmonitor)."""
    gitdir = context / ".git"
    if not gitdir.is_dir():
        return {}

    def read(rel: str) -> str:
        path = gitdir / rel
        if not path.resolve().is_relative_to(context.resolve()):
            return ""
        try:
            return path.read_text(errors="replace")[:1 << 20]
        except OSError:
            return ""
    head = read("HEAD").strip()
    commit = head
    if head.startswith("ref:"):
        ref = head[4:].strip()
        if ".." in ref or not ref.startswith("refs/"):
            return {}
        commit = read(ref).strip()
        if not commit:
            for line in read("packed-refs").splitlines():
                sha, _, name = line.partition(" ")
                if name.strip() == ref:
                    commit = sha.strip()
    if not _SHA_RE.match(commit):
        return {}
    out = {REVISION_LABEL: commit}
    remote, urls = "", dict[str, str]()
    for line in read("config").splitlines():
        m = _REMOTE_RE.match(line)
        if m:
            remote = m.group(1)
            continue
        if line.lstrip().startswith("["):
            remote = ""
        u = _URL_RE.match(line)
        if remote and u:
            urls.setdefault(remote, u.group(1))
    url = urls.get("origin") or next(iter(urls.values()), "")
    if url:
        out[SOURCE_LABEL] = url
    return out


def provenance(labels: Mapping[str, str], dockerfile: str, dockerfile_data: bytes,
               build_args: Mapping[str, str], target: str) -> BuildProvenance:
    return BuildProvenance(
        source_repo=labels.get(SOURCE_LABEL, ""), commit=labels.get(REVISION_LABEL, ""),
        dockerfile=dockerfile, dockerfile_digest=sha256_digest(dockerfile_data),
        build_args=MappingProxyType(dict(build_args)), target=target,
        started=now_utc())


def build_labels(user_labels: Mapping[str, str], prov: BuildProvenance) -> dict[str, str]:
    """The labels the final image gets: provenance labels, overridden by --label."""
    return {**image_labels(prov), **user_labels}


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def to_json(prov: BuildProvenance) -> dict[str, Any]:
    return {"source_repo": prov.source_repo, "commit": prov.commit,
            "dockerfile": prov.dockerfile, "dockerfile_digest": prov.dockerfile_digest,
            "build_args": dict(prov.build_args), "target": prov.target,
            "base_images": [list(b) for b in prov.base_images], "builder_id": prov.builder_id,
            "started": prov.started, "finished": prov.finished}


def from_json(doc: Mapping[str, Any]) -> BuildProvenance:
    try:
        return BuildProvenance(
            source_repo=str(doc["source_repo"]), commit=str(doc["commit"]),
            dockerfile=str(doc["dockerfile"]), dockerfile_digest=str(doc["dockerfile_digest"]),
            build_args=MappingProxyType({str(k): str(v) for k, v in doc["build_args"].items()}),
            target=str(doc["target"]),
            base_images=tuple((str(r), str(d)) for r, d in doc["base_images"]),
            builder_id=str(doc["builder_id"]), started=str(doc["started"]),
            finished=str(doc["finished"]))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"malformed provenance record: {e}") from None


class ProvenanceRecords:
    """image id -> the provenance of the build that made it (berthd's SQLite)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn  # the table: store.ensure_schema(DDL)

    def put(self, image_id: str, prov: BuildProvenance) -> None:
        with transaction(self.conn):
            self.conn.execute("INSERT OR REPLACE INTO build_provenance VALUES (?,?,?)",
                              (image_id, json.dumps(to_json(prov)), time.time()))

    def get(self, image_id: str) -> BuildProvenance | None:
        row = self.conn.execute("SELECT doc FROM build_provenance WHERE image_id=?",
                                (image_id,)).fetchone()
        return from_json(json.loads(row[0])) if row else None
