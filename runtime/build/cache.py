"""The build cache: (parent image, instruction, content read) -> the image it made.

Every step of a build commits an image (the previous one plus one layer,
or plus only a config change). A step's key is the sha256 of the parent
image id, the instruction after argument substitution (plus the build args
RUN sees) and the digest of the content it reads (COPY/ADD sources). Since
the parent id is a digest of everything before, one changed instruction
misses the cache from there on. Records live in SQLite beside the images;
a hit counts only if the image is still in the store (prune drops it).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Sequence

from runtime.store.db import schema, transaction

DDL = """
CREATE TABLE IF NOT EXISTS build_cache (
  key TEXT PRIMARY KEY,
  image_id TEXT NOT NULL,
  created REAL NOT NULL
);
"""
schema("build", DDL)


def cache_key(parent: str, instruction: str, content: str = "",
              extra: Sequence[str] = ()) -> str:
    doc = json.dumps([parent, instruction, content, list(extra)], separators=(",", ":"))
    return "sha256:" + hashlib.sha256(doc.encode()).hexdigest()


class BuildCache:
    """On the image store's connection; its table is made by `store.ensure_schema(DDL)`
    (executescript would commit another thread's open transaction)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def get(self, key: str) -> str | None:
        row = self.conn.execute("SELECT image_id FROM build_cache WHERE key=?",
                                (key,)).fetchone()
        return str(row[0]) if row else None

    def put(self, key: str, image_id: str) -> None:
        with transaction(self.conn):
            self.conn.execute("INSERT OR REPLACE INTO build_cache VALUES (?,?,?)",
                              (key, image_id, time.time()))

    def forget(self, key: str) -> None:
        with transaction(self.conn):
            self.conn.execute("DELETE FROM build_cache WHERE key=?", (key,))
