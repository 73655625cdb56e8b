"""Container records in the shared SQLite database (the engine's cache of state).

One row per container: id, unique name, and the record as JSON. Every write
is one transaction, so a record is either all on disk or not at all.
"""

from __future__ import annotations

import dataclasses
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
            (rec.id, rec.name, rec.created, encode(rec)))


def delete(conn: sqlite3.Connection, container_id: str) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM containers WHERE id = ?", (container_id,))


def load_all(conn: sqlite3.Connection) -> list[ContainerRecord]:
    rows = conn.execute("SELECT record FROM containers ORDER BY created").fetchall()
    return [from_jsonable(ContainerRecord, json.loads(r[0])) for r in rows]


def encode(rec: ContainerRecord) -> str:
    """The record as compact JSON: fields at their defaults are left out (from_jsonable
    fills them in again), so a plain container's row is ~0.8 KB, not 1.7 (1,000
    records are pages of the database and of its WAL in memory)."""
    return json.dumps(_without_defaults(rec, to_jsonable(rec)), separators=(",", ":"))


def _without_defaults(obj: Any, data: Any) -> Any:
    fields = _defaults(type(obj))
    if fields is None or not isinstance(data, dict):
        return data
    return {name: _without_defaults(getattr(obj, name), data[name])
            for name, default in fields if default != data[name]}


_MISSING = object()   # a required field: never equal to a value, always written
_DEFAULTS: dict[type, tuple[tuple[str, Any], ...] | None] = {}


def _defaults(cls: type) -> tuple[tuple[str, Any], ...] | None:
    """(field name, its default as JSON) for each field of a dataclass; None for
    other types (cached: a record is encoded at each state change)."""
    if cls in _DEFAULTS:
        return _DEFAULTS[cls]
    got: tuple[tuple[str, Any], ...] | None = None
    if dataclasses.is_dataclass(cls):
        pairs = []
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                pairs.append((f.name, to_jsonable(f.default)))
            elif f.default_factory is not dataclasses.MISSING:
                pairs.append((f.name, to_jsonable(f.default_factory())))
            else:
                pairs.append((f.name, _MISSING))
        got = tuple(pairs)
    _DEFAULTS[cls] = got
    return got
