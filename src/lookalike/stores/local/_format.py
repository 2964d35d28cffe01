"""The store file's format: how a lookalike SQLite file is recognised, created and
upgraded from older formats."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

from ...errors import StoreConnectionError, StoreCorruptError
from ._sqlite import write_transaction

__all__ = ["FORMAT_VERSION", "SQLITE_MAGIC", "prepare", "read_head"]

_APPLICATION_ID = 0x4C4B4C4B  # "LKLK": marks a SQLite file as a lookalike store
FORMAT_VERSION = 2
SQLITE_MAGIC = b"SQLite format 3\x00"
# Rowids are AUTOINCREMENT, so they only grow: a reader catches up on new and replaced
# records by reading rows above the last rowid it saw, and on deletions by reading the
# tombstones the trigger logs. A replaced record is deleted and inserted again.
# metadata comes before vector so reading it never walks the vector's overflow pages.
_SCHEMA_SQL = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS records (
        rowid INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        metadata TEXT NOT NULL,
        vector BLOB NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS tombstones (seq INTEGER PRIMARY KEY AUTOINCREMENT, row INTEGER NOT NULL)",
    """CREATE TRIGGER IF NOT EXISTS records_deleted AFTER DELETE ON records
    BEGIN
        INSERT INTO tombstones(row) VALUES (old.rowid);
    END""",
)


def read_head(path: Path) -> bytes:
    """The first 16 bytes of ``path`` (``SQLITE_MAGIC`` in a SQLite file); OSError passes."""
    with open(path, "rb") as fh:
        return fh.read(16)


def prepare(conn: sqlite3.Connection, where: str, app_id: int, read_only: bool) -> str:
    """Check that ``conn`` opened a lookalike store (``app_id`` already read from it);
    create or upgrade it when writable; return the store's uuid ("" for none)."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if app_id != _APPLICATION_ID and (tables or version or app_id):
        found = f"tables {', '.join(sorted(tables))}" if tables else "no lookalike tables"
        raise StoreCorruptError(
            f"{where} is a SQLite database of another application, not a lookalike "
            f"store (application_id {app_id}, user_version {version}, {found}); "
            "refusing to touch it",
            backend="LocalStore",
        )
    if version > FORMAT_VERSION:
        raise StoreCorruptError(
            f"{where} was written by a newer lookalike (format {version}); upgrade lookalike",
            backend="LocalStore",
        )
    if read_only:
        if not tables or version < FORMAT_VERSION:
            raise StoreConnectionError(
                f"{where} is read-only and "
                + ("empty" if not tables else f"in the older format {version}")
                + ": open it once with write access to "
                + ("create the store" if not tables else "upgrade it"),
                backend="LocalStore",
            )
    else:
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        # Checkpoint every 64 MB of WAL rather than every 4 MB: faster bulk inserts
        # (docs/performance.md, "Vector store at scale"), and the WAL stays bounded.
        conn.execute("PRAGMA wal_autocheckpoint=16384")
        if not tables or version < FORMAT_VERSION:
            _create_or_migrate(conn, bool(tables))
    row = conn.execute("SELECT value FROM meta WHERE key='uuid'").fetchone()
    return str(row[0]) if row else ""


def _create_or_migrate(conn: sqlite3.Connection, existing: bool) -> None:
    with write_transaction(conn):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version < FORMAT_VERSION:  # not done meanwhile by another process
            if existing:  # format 1: rowids could be reused; rebuild the table
                conn.execute("ALTER TABLE records RENAME TO records_v1")
            for stmt in _SCHEMA_SQL:
                conn.execute(stmt)
            if existing:
                conn.execute(
                    "INSERT INTO records(rowid, id, metadata, vector) "
                    "SELECT rowid, id, metadata, vector FROM records_v1 ORDER BY rowid"
                )
                conn.execute("DROP TABLE records_v1")
            conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('uuid', ?)", (uuid.uuid4().hex,)
            )
            conn.execute(f"PRAGMA application_id={_APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={FORMAT_VERSION}")
