"""Opening a store file: refuse what is not a store, create a new one, and fall back to
read-only (then to SQLite's ``immutable`` mode) when the file or its folder cannot be written."""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from pathlib import Path
from typing import NamedTuple

from ...errors import StoreConnectionError, StoreCorruptError, StoreError
from ._format import SQLITE_MAGIC, prepare, read_head
from ._sqlite import translate

__all__ = ["Opened", "connect", "open_file"]


class Opened(NamedTuple):
    """An open store file, and how it had to be opened."""

    conn: sqlite3.Connection
    read_only: bool
    immutable: bool  # read through SQLite's immutable mode: a read-only folder with no -shm
    uuid: str


def open_file(path: Path, timeout: float, read_only: bool) -> Opened:
    """Open (creating it if missing and writable) the store at ``path``."""
    where = str(path)
    if path.is_dir():
        raise StoreCorruptError(f"{where} is a folder, not a lookalike store file", backend="LocalStore")
    existing = path.exists() and path.stat().st_size > 0
    if existing:
        try:
            head = read_head(path)
        except OSError as exc:
            raise StoreConnectionError(
                f"cannot read {where}: {exc.strerror or exc}", backend="LocalStore"
            ) from exc
        if head != SQLITE_MAGIC:
            raise StoreCorruptError(
                f"{where} is not a lookalike store (not a SQLite file); "
                "refusing to touch it. Choose another path.",
                backend="LocalStore",
            )
        if not read_only and not _writable(path):
            read_only = True  # info, search and check still work
    elif read_only:
        raise StoreConnectionError(
            f"{where}: no lookalike store there to open read-only", backend="LocalStore"
        )
    else:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create folder for {where}: {exc.strerror or exc}", backend="LocalStore"
            ) from exc
    try:
        return _setup(path, timeout, read_only)
    except StoreConnectionError:
        if read_only or not existing:
            raise
    # SQLite could not open it for writing (permissions the check above cannot see)
    return _setup(path, timeout, True)


def _writable(path: Path) -> bool:
    """Whether this process may write the file and its folder (WAL needs both)."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)


def connect(path: Path, timeout: float, read_only: bool, immutable: bool = False) -> sqlite3.Connection:
    """A connection to ``path``: read-write, ``mode=ro`` or ``immutable=1``."""
    with translate(path, "open"):
        if not read_only:
            return sqlite3.connect(
                str(path), timeout=timeout, isolation_level=None, check_same_thread=False
            )
        mode = "immutable=1" if immutable else "mode=ro"
        uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?{mode}"
        return sqlite3.connect(
            uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False
        )


def _setup(path: Path, timeout: float, read_only: bool) -> Opened:
    """Connect and check that the file is a lookalike store; create or upgrade it if writable."""
    conn = connect(path, timeout, read_only)
    immutable = False
    try:
        try:
            with translate(path, "open"):
                app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        except StoreConnectionError:
            wal = path.with_name(path.name + "-wal")
            if not read_only or (wal.exists() and wal.stat().st_size > 0):
                raise
            # A read-only folder without the -shm file SQLite needs for WAL reads;
            # with no WAL content left the file alone is the whole store.
            conn.close()
            immutable = True
            conn = connect(path, timeout, read_only, immutable=True)
            with translate(path, "open"):
                app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        with translate(path, "open"):
            uuid = prepare(conn, str(path), app_id, read_only)
    except BaseException:
        conn.close()
        raise
    return Opened(conn, read_only, immutable, uuid)
