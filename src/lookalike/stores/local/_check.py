"""The integrity check: what SQLite finds wrong with the file, and which records are
damaged (a vector of the wrong size, metadata that is not a JSON object)."""

from __future__ import annotations

import sqlite3

from ._rows import damage

__all__ = ["damaged_records", "sqlite_problems"]


def sqlite_problems(db: sqlite3.Connection) -> list[str]:
    """SQLite's own integrity check, one line per problem (none when healthy)."""
    return [f"sqlite: {line}" for (line,) in db.execute("PRAGMA integrity_check") if line != "ok"]


def damaged_records(db: sqlite3.Connection, dim: int) -> list[tuple[str, str]]:
    """(id, what is wrong) for every damaged record."""
    found = []
    for rid, size, meta in db.execute("SELECT id, length(vector), metadata FROM records"):
        problem = damage(size, meta, dim)
        if problem is not None:
            found.append((rid, problem))
    return found
