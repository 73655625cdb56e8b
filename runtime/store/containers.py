"""Container records in the shared SQLite database (the engine's cache of state).

One row per container: id, unique name, and the record as JSON. Every write
is one transaction, so a record is either all on disk or not at all.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from runtime.container.codec import from_jsonable, to_jsonable
from runtime.container.spec import ContainerSpec, CreateRequest
from runtime.container.state import State
from runtime.rootfs import Volume
from runtime.store.db import schema, transaction

schema("containers", """
CREATE TABLE IF NOT EXISTS containers (
    id      TEXT PRIMARY KEY,
    name    TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    record  TEXT NOT NULL
);
""")


@dataclass(frozen=True, slots=True)   # one per container, kept in berthd's memory
class ContainerRecord:
    id: str
    name: str
    created: float
    image_ref: str
    image_id: str
    layers: tuple[str, ...]
    request: CreateRequest
    spec: ContainerSpec
    state: State
    uid_base: int                      # host uid of container root; 0: no user namespace
    volumes: tuple[Volume, ...] = ()   # resolved at create (named volumes -> host dirs)
    anonymous_volumes: tuple[str, ...] = ()
    network: Any = field(default_factory=lambda: MappingProxyType({}))   # NetworkResult as dict
    warnings: tuple[str, ...] = ()


def save(conn: sqlite3.Connection, rec: ContainerRecord) -> None:
    with transaction(conn):
        conn.execute(
            "INSERT INTO containers(id, name, created, record) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET name=excluded.name, record=excluded.record",
            (rec.id, rec.name, rec.created, json.dumps(to_jsonable(rec))))


def delete(conn: sqlite3.Connection, container_id: str) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM containers WHERE id = ?", (container_id,))


def load_all(conn: sqlite3.Connection) -> list[ContainerRecord]:
    rows = conn.execute("SELECT record FROM containers ORDER BY created").fetchall()
    return [from_jsonable(ContainerRecord, json.loads(r[0])) for r in rows]
