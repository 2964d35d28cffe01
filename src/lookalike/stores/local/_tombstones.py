"""The deletion log: a trigger writes a tombstone per deleted row, so readers in other
processes catch up on deletions incrementally; the log is compacted when it grows large."""

from __future__ import annotations

import sqlite3

__all__ = ["compact", "due", "max_tomb", "tomb_floor"]

# Tombstones are compacted once there are this many, and more than live records: other
# processes then resync their deletions from the rowids (see _mirror.resync_deletions).
_TOMB_COMPACT_MIN = 100_000


def tomb_floor(db: sqlite3.Connection) -> int:
    """The last tombstone compacted away (readers that saw less must resync)."""
    row = db.execute("SELECT value FROM meta WHERE key='tomb_floor'").fetchone()
    return int(row[0]) if row else 0


def max_tomb(db: sqlite3.Connection) -> int:
    top = int(db.execute("SELECT coalesce(max(seq), 0) FROM tombstones").fetchone()[0])
    return max(top, tomb_floor(db))


def due(db: sqlite3.Connection) -> bool:
    """Whether the tombstones outnumber both the live records and a floor."""
    pending = max_tomb(db) - tomb_floor(db)
    if pending < _TOMB_COMPACT_MIN:
        return False
    live = int(db.execute("SELECT count(*) FROM records").fetchone()[0])
    return pending > live


def compact(db: sqlite3.Connection) -> int:
    """Delete the tombstones; return how many.

    Inside a write transaction. Readers that had not seen them all resync their
    deletions from the rowids (``meta.tomb_floor`` tells them). The store rewrites its
    vector file without the deleted rows in the same transaction.
    """
    floor = tomb_floor(db)
    upto = max_tomb(db)
    if upto <= floor:
        return 0
    removed = int(db.execute("DELETE FROM tombstones WHERE seq <= ?", (upto,)).rowcount)
    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('tomb_floor', ?)", (str(upto),))
    return removed
