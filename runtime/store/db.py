"""The one SQLite database under the daemon's root (`<root>/berth.db`), in WAL mode.

Each record module (images, containers, networks, ...) owns its tables and
registers its schema with `schema()`; `open_db` applies every registered
schema. All writes go through `transaction()`, so a change is atomic: it is
either all on disk or not at all.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_SCHEMAS: dict[str, str] = {}
CACHE_KIB = 512
WAL_CHECKPOINT_PAGES = 256
WAL_LIMIT = 1 << 20


def schema(owner: str, ddl: str) -> None:
    """Register `ddl` (idempotent CREATE ... IF NOT EXISTS statements) for `owner`."""
    _SCHEMAS[owner] = ddl


def open_db(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    # Memory that grows with the number of records: SQLite's own page cache (2 MB by
    # default, in berthd's heap) and the WAL, whose file (and page cache) stays at its
    # largest size: checkpoint every ~1 MiB instead of 4 and truncate it back after.
    conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
    conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
    conn.execute("PRAGMA foreign_keys=ON")
    for ddl in _SCHEMAS.values():
        conn.executescript(ddl)
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
