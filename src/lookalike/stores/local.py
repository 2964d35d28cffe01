"""LocalStore: the embedded, persistent default store (SQLite + an in-memory numpy matrix)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import StoreConnectionError, StoreCorruptError, StoreError, StoreTimeoutError
from ..filters import normalize_filter
from ..types import Filter, Hit, Record, Schema
from ._common import (
    ExactIndex,
    check_same_schema,
    check_search_args,
    require_schema,
    validate_records,
)

__all__ = ["LocalStore"]

_APPLICATION_ID = 0x4C4B4C4B  # "LKLK": marks a SQLite file as a lookalike store
_FORMAT_VERSION = 1
_SQLITE_MAGIC = b"SQLite format 3\x00"
_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    rowid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    vector BLOB NOT NULL,
    metadata TEXT NOT NULL
);
"""


class LocalStore:
    """A persistent store in one SQLite file; works with no server.

    SQLite (WAL mode) is the source of truth: each :meth:`upsert` commits atomically, so
    a crash loses at most the call in flight and never what was committed. Searches are
    exact, on a float32 matrix loaded on first use and kept in sync with this process's
    writes; writes committed by other processes are picked up on the next call.
    Several processes may read while one writes.

    Args:
        path: the store file (created with its parent folder if missing), e.g.
            ``"photos.lookalike"``.
        timeout: seconds to wait for another writer's lock before
            :class:`~lookalike.errors.StoreTimeoutError`.

    >>> store = LocalStore("photos.lookalike")  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        self.path = Path(path).expanduser()
        self._timeout = timeout
        self._lock = threading.RLock()
        self._schema: Schema | None = None
        self._index: ExactIndex | None = None
        self._data_version: int | None = None
        self._conn: sqlite3.Connection | None = None
        self._conn = self._open()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.path)!r})"

    # -- opening -----------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        where = str(self.path)
        if self.path.is_dir():
            raise StoreCorruptError(f"{where} is a folder, not a lookalike store file", backend="LocalStore")
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as fh:
                if fh.read(16) != _SQLITE_MAGIC:
                    raise StoreCorruptError(
                        f"{where} is not a lookalike store (not a SQLite file); "
                        "refusing to touch it. Choose another path.",
                        backend="LocalStore",
                    )
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create folder for {where}: {exc.strerror or exc}", backend="LocalStore") from exc
        with self._translate("open"):
            conn = sqlite3.connect(where, timeout=self._timeout, isolation_level=None, check_same_thread=False)
        try:
            with self._translate("open"):
                app_id = conn.execute("PRAGMA application_id").fetchone()[0]
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                if tables and app_id != _APPLICATION_ID:
                    raise StoreCorruptError(
                        f"{where} is a SQLite database but not a lookalike store; refusing to touch it",
                        backend="LocalStore",
                    )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                if not tables:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        for stmt in _SCHEMA_SQL.strip().split(";"):
                            if stmt.strip():
                                conn.execute(stmt)
                        conn.execute(f"PRAGMA application_id={_APPLICATION_ID}")
                        conn.execute(f"PRAGMA user_version={_FORMAT_VERSION}")
                        conn.execute("COMMIT")
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > _FORMAT_VERSION:
                    raise StoreCorruptError(
                        f"{where} was written by a newer lookalike (format {version}); upgrade lookalike",
                        backend="LocalStore",
                    )
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        """Translate sqlite3 errors into lookalike's hierarchy (the one boundary)."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            msg = str(exc)
            if "locked" in msg or "busy" in msg:
                raise StoreTimeoutError(
                    f"{self.path}: {action} timed out waiting for another writer ({msg})", backend="LocalStore"
                ) from exc
            if "unable to open" in msg or "readonly" in msg or "read-only" in msg:
                raise StoreConnectionError(f"{self.path}: cannot {action}: {msg}", backend="LocalStore") from exc
            raise StoreError(f"{self.path}: {action} failed: {msg}", backend="LocalStore") from exc
        except sqlite3.DatabaseError as exc:
            raise StoreCorruptError(
                f"{self.path}: {action} failed, the file is damaged or not a lookalike store: {exc}",
                backend="LocalStore",
            ) from exc
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {action} failed: {exc}", backend="LocalStore") from exc

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self.path}: the store is closed", backend="LocalStore")
        return self._conn

    @contextlib.contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        db = self._db
        with self._translate(action):
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    # -- protocol ----------------------------------------------------------------------
    def create_schema(self, schema: Schema) -> None:
        with self._lock, self._transaction("create schema") as db:
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is not None:
                check_same_schema(Schema.from_dict(json.loads(row[0])), schema, str(self.path))
                return
            db.execute("INSERT INTO meta(key, value) VALUES ('schema', ?)", (json.dumps(schema.to_dict()),))
            self._schema = schema

    def describe(self) -> Schema | None:
        with self._lock:
            if self._schema is None:
                with self._translate("read schema"):
                    row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                if row is not None:
                    self._schema = Schema.from_dict(json.loads(row[0]))
            return self._schema

    def _require_schema(self) -> Schema:
        return require_schema(self.describe(), str(self.path))

    def upsert(self, records: Sequence[Record]) -> None:
        with self._lock:
            schema = self._require_schema()
            matrix = validate_records(records, schema)
            if not records:
                return
            rows = [
                (r.id, vec.tobytes(), json.dumps(dict(r.metadata), ensure_ascii=False))
                for r, vec in zip(records, matrix)
            ]
            with self._transaction("upsert") as db:
                db.executemany(
                    "INSERT INTO records(id, vector, metadata) VALUES (?, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET vector=excluded.vector, metadata=excluded.metadata",
                    rows,
                )
            if self._index is not None:
                self._index.upsert([r.id for r in records], matrix, [r.metadata for r in records])

    def _synced_index(self, schema: Schema) -> ExactIndex:
        """The in-memory matrix, reloaded when another connection has committed."""
        with self._translate("read"):
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
            if self._index is None or version != self._data_version:
                index = ExactIndex(schema.dim)
                cursor = self._db.execute("SELECT id, vector, metadata FROM records ORDER BY rowid")
                while True:
                    chunk = cursor.fetchmany(8192)
                    if not chunk:
                        break
                    matrix = np.stack([self._decode_vector(r[0], r[1], schema.dim) for r in chunk])
                    index.upsert([r[0] for r in chunk], matrix, [json.loads(r[2]) for r in chunk])
                self._index = index
                self._data_version = version
        return self._index

    def _decode_vector(self, rid: str, blob: bytes, dim: int) -> NDArray[np.float32]:
        if len(blob) != dim * 4:
            raise StoreCorruptError(
                f"{self.path}: record {rid!r} has a vector of {len(blob)} bytes, expected {dim * 4}",
                backend="LocalStore",
            )
        return np.frombuffer(blob, dtype=np.float32)

    def search(
        self, vectors: NDArray[np.float32], k: int, filter: Filter | None = None
    ) -> list[list[Hit]]:
        with self._lock:
            schema = self._require_schema()
            queries = check_search_args(vectors, k, schema)
            flt = normalize_filter(filter, schema.fields)
            return self._synced_index(schema).search(queries, int(k), flt)

    def get(self, ids: Sequence[str]) -> list[Record]:
        with self._lock:
            schema = self._require_schema()
            ids = list(ids)
            found: dict[str, Record] = {}
            with self._translate("get"):
                for start in range(0, len(ids), 500):
                    chunk = ids[start : start + 500]
                    marks = ",".join("?" * len(chunk))
                    for rid, blob, meta in self._db.execute(
                        f"SELECT id, vector, metadata FROM records WHERE id IN ({marks})", chunk
                    ):
                        vec = self._decode_vector(rid, blob, schema.dim).copy()
                        found[rid] = Record(rid, vec, json.loads(meta))
            return [found[i] for i in dict.fromkeys(ids) if i in found]

    def delete(self, ids: Sequence[str]) -> int:
        with self._lock:
            self._require_schema()
            ids = list(dict.fromkeys(ids))
            removed = 0
            with self._transaction("delete") as db:
                for start in range(0, len(ids), 500):
                    chunk = ids[start : start + 500]
                    marks = ",".join("?" * len(chunk))
                    removed += db.execute(f"DELETE FROM records WHERE id IN ({marks})", chunk).rowcount
            if self._index is not None:
                self._index.delete(ids)
            return removed

    def scan(self, batch_size: int = 1000) -> Iterator[list[Record]]:
        schema = self._require_schema()
        last = 0
        while True:
            with self._lock, self._translate("scan"):
                rows = self._db.execute(
                    "SELECT rowid, id, vector, metadata FROM records WHERE rowid > ? ORDER BY rowid LIMIT ?",
                    (last, batch_size),
                ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield [
                Record(rid, self._decode_vector(rid, blob, schema.dim).copy(), json.loads(meta))
                for _, rid, blob, meta in rows
            ]

    def count(self) -> int:
        with self._lock, self._translate("count"):
            return int(self._db.execute("SELECT count(*) FROM records").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
                self._index = None

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # -- maintenance -------------------------------------------------------------------
    def check(self) -> list[str]:
        """Verify the file's integrity; return a list of problems (empty when healthy)."""
        problems: list[str] = []
        with self._lock, self._translate("check"):
            for (line,) in self._db.execute("PRAGMA integrity_check"):
                if line != "ok":
                    problems.append(f"sqlite: {line}")
            schema = self.describe()
            if schema is None:
                return problems
            expected = schema.dim * 4
            for rid, size, meta in self._db.execute("SELECT id, length(vector), metadata FROM records"):
                if size != expected:
                    problems.append(f"record {rid!r}: vector of {size} bytes, expected {expected}")
                try:
                    parsed: Any = json.loads(meta)
                    if not isinstance(parsed, dict):
                        raise ValueError("not an object")
                except ValueError as exc:
                    problems.append(f"record {rid!r}: unreadable metadata ({exc})")
        return problems
