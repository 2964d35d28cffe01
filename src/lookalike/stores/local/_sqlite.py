"""The SQLite boundary: errors translated into lookalike's hierarchy, write transactions,
and one helper for ``... IN (?, ?, ...)`` over any number of values."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from ...errors import StoreConnectionError, StoreCorruptError, StoreError, StoreTimeoutError

__all__ = ["FETCH_CHUNK", "execute_in", "translate", "write_transaction"]

FETCH_CHUNK = 8192  #: rows fetched at a time from a long cursor
_IN_CHUNK = 500  # values per IN (...): well under SQLite's variable limit


@contextlib.contextmanager
def translate(where: object, action: str) -> Iterator[None]:
    """Translate sqlite3 errors raised inside into lookalike's hierarchy, naming the file
    ``where`` and the ``action`` that failed (the one place sqlite3 errors are mapped)."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        msg = str(exc)
        if "locked" in msg or "busy" in msg:
            raise StoreTimeoutError(
                f"{where}: {action} timed out waiting for another writer ({msg})",
                backend="LocalStore",
            ) from exc
        if "unable to open" in msg or "readonly" in msg or "read-only" in msg:
            raise StoreConnectionError(
                f"{where}: cannot {action}: {msg} (is the file or its folder read-only?)",
                backend="LocalStore",
            ) from exc
        if "disk is full" in msg or "disk I/O error" in msg:
            raise StoreError(
                f"{where}: {action} failed: {msg}. The disk may be full: free some space "
                "and retry; what was committed before is intact.",
                backend="LocalStore",
            ) from exc
        raise StoreError(f"{where}: {action} failed: {msg}", backend="LocalStore") from exc
    except sqlite3.DatabaseError as exc:
        raise StoreCorruptError(
            f"{where}: {action} failed, the file is damaged or not a lookalike store: {exc}",
            backend="LocalStore",
        ) from exc
    except sqlite3.Error as exc:
        raise StoreError(f"{where}: {action} failed: {exc}", backend="LocalStore") from exc


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error (one writer at a time)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def execute_in(db: sqlite3.Connection, sql: str, values: Sequence[Any]) -> Iterator[sqlite3.Cursor]:
    """Run ``sql``, whose ``{marks}`` stands for the placeholders of an ``IN (...)``, once
    per chunk of ``values``; yield each cursor (iterate it, or read its ``rowcount``).

    >>> rows = [row for cur in execute_in(db, "SELECT id FROM records WHERE id IN ({marks})", ids)
    ...         for row in cur]  # doctest: +SKIP
    """
    for start in range(0, len(values), _IN_CHUNK):
        chunk = list(values[start : start + _IN_CHUNK])
        yield db.execute(sql.format(marks=",".join("?" * len(chunk))), chunk)
