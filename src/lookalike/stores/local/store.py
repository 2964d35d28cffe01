"""LocalStore: the store object. It holds the connection, the lock and the mirror, and
runs each protocol method in one transaction; the work is done by the modules beside it."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..._checks import positive_int
from ...errors import ConfigurationError, StoreConnectionError, StoreError, quote_name
from ...filters import normalize_filter
from ...types import Filter, Hit, Record, Schema
from .._common import (
    check_batch_size,
    check_same_schema,
    check_search_args,
    require_schema,
    validate_records,
)
from . import _annfile, _check, _tombstones
from ._mirror import Mirror, catch_up, resync_deletions
from ._open import connect, open_file
from ._rows import delete_records, record
from ._search import search as search_mirror
from ._sqlite import execute_in, translate, write_transaction

__all__ = ["DEFAULT_ANN_THRESHOLD", "LocalStore"]

#: Stores with at least this many records search through the approximate index.
DEFAULT_ANN_THRESHOLD = 200_000


class LocalStore:
    """A persistent store in one SQLite file; works with no server.

    SQLite (WAL mode) is the source of truth: each :meth:`upsert` commits atomically, so
    a crash loses at most the call in flight and never what was committed. Several
    processes may read while one writes; a search sees every write committed before it
    started (readers catch up incrementally, reading only what changed).

    Search is exact (float32, brute force) below ``ann_threshold`` records and
    approximate above it: an IVF index with 8-bit vectors (faiss, extra ``[ann]``),
    whose candidates are re-ranked with the exact float32 vectors, so scores are exact
    cosine similarities. The index is a derived file, ``<path>.ann``, rebuilt when it is
    missing, stale or damaged. Without faiss installed, search stays exact at any size.
    Filters work on both paths and never drop matches: selective filters are answered by
    scanning every matching record. See ``docs/performance.md``.

    Args:
        path: the store file (created with its parent folder if missing), e.g.
            ``"photos.lookalike"``.
        timeout: seconds to wait for another writer's lock before
            :class:`~lookalike.errors.StoreTimeoutError`.
        ann_threshold: record count from which search is approximate; ``None`` keeps
            search exact at any size.
        ann_nprobe: inverted lists probed per query (default: 1/64 of them, at least 8);
            higher is slower and closer to exact.
        read_only: open without ever writing (``info``, ``search``, ``check``). A store
            whose file or folder cannot be written is opened read-only anyway; a write
            then raises :class:`~lookalike.errors.StoreConnectionError`.

    >>> store = LocalStore("photos.lookalike")  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 30.0,
        ann_threshold: int | None = DEFAULT_ANN_THRESHOLD,
        ann_nprobe: int | None = None,
        read_only: bool = False,
    ) -> None:
        self._conn: sqlite3.Connection | None = None
        self.ann_threshold = positive_int(ann_threshold, "ann_threshold", optional=True)
        self.ann_nprobe = positive_int(ann_nprobe, "ann_nprobe", optional=True)
        if not os.fspath(path):
            raise ConfigurationError("the store path is empty; give a file such as photos.lookalike")
        self.path = Path(path).expanduser()
        if not self.path.name:  # "/", ".": a folder, and no file name to put beside it
            raise ConfigurationError(
                f"{quote_name(str(self.path))} is a folder, not a lookalike store file; "
                "give a file such as photos.lookalike"
            )
        self.ann_path = self.path.with_name(self.path.name + ".ann")
        self._timeout = timeout
        self._lock = threading.RLock()
        self._schema: Schema | None = None
        self._mirror: Mirror | None = None
        self._data_version: int | None = None
        self._dirty = False
        opened = open_file(self.path, timeout, bool(read_only))
        self.read_only = opened.read_only
        self._immutable = opened.immutable
        self._uuid = opened.uuid
        self._conn = opened.conn

    @classmethod
    def from_url(cls, url: str | os.PathLike[str], **options: Any) -> LocalStore:
        """The store at a path, written as it is or as ``local:PATH``."""
        text = os.fspath(url)
        return cls(text[len("local:") :] if text.startswith("local:") else text, **options)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.path)!r})"

    # -- connection and transactions ---------------------------------------------------
    def _translate(self, action: str) -> contextlib.AbstractContextManager[None]:
        return translate(self.path, action)

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self.path}: the store is closed", backend="LocalStore")
        return self._conn

    @contextlib.contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        db = self._db
        if self.read_only:
            raise StoreConnectionError(
                f"{self.path}: cannot {action}: the store is open read-only "
                "(the file or its folder cannot be written)",
                backend="LocalStore",
            )
        with self._translate(action), write_transaction(db):
            yield db

    @contextlib.contextmanager
    def _snapshot(self, action: str) -> Iterator[sqlite3.Connection]:
        """One read transaction: everything read inside sees the same committed state."""
        db = self._db
        with self._translate(action):
            db.execute("BEGIN")
            try:
                yield db
            finally:
                if db.in_transaction:
                    db.execute("COMMIT")

    @contextlib.contextmanager
    def _current(self, action: str, schema: Schema) -> Iterator[tuple[sqlite3.Connection, Mirror]]:
        """A read snapshot and the mirror brought up to it."""
        with self._translate(action):
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
        with self._snapshot(action) as db:
            yield db, self._refresh(db, schema, version)

    # -- protocol ----------------------------------------------------------------------
    def create_schema(self, schema: Schema) -> None:
        existing = self.describe()
        if existing is not None:  # no write needed (works on a read-only store)
            check_same_schema(existing, schema, str(self.path))
            return
        with self._lock, self._transaction("create schema") as db:
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is not None:
                check_same_schema(Schema.from_dict(json.loads(row[0])), schema, str(self.path))
                return
            db.execute(
                "INSERT INTO meta(key, value) VALUES ('schema', ?)", (json.dumps(schema.to_dict()),)
            )
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
                (r.id, json.dumps(dict(r.metadata), ensure_ascii=False), memoryview(vec))
                for r, vec in zip(records, matrix)
            ]
            with self._transaction("upsert") as db:
                delete_records(db, [r.id for r in records])  # replaced: deleted, inserted again
                db.executemany("INSERT INTO records(id, metadata, vector) VALUES (?, ?, ?)", rows)
                _tombstones.maybe_compact(db, self.ann_path, self._uuid)
            self._dirty = True

    def search(
        self, vectors: NDArray[np.float32], k: int, filter: Filter | None = None
    ) -> list[list[Hit]]:
        with self._lock:
            schema = self._require_schema()
            queries = check_search_args(vectors, k, schema)
            flt = normalize_filter(filter, schema.fields)
            with self._current("search", schema) as (db, mirror):
                return search_mirror(db, mirror, queries, int(k), flt, self.path)

    def get(self, ids: Sequence[str]) -> list[Record]:
        with self._lock:
            schema = self._require_schema()
            ids = list(ids)
            found: dict[str, Record] = {}
            sql = "SELECT id, vector, metadata FROM records WHERE id IN ({marks})"
            with self._snapshot("get") as db:
                for cursor in execute_in(db, sql, ids):
                    for rid, blob, meta in cursor:
                        got = record(self.path, rid, blob, meta, schema.dim)
                        if got is not None:
                            found[rid] = got
            return [found[i] for i in dict.fromkeys(ids) if i in found]

    def delete(self, ids: Sequence[str]) -> int:
        with self._lock:
            self._require_schema()
            ids = list(dict.fromkeys(ids))
            with self._transaction("delete") as db:
                removed = delete_records(db, ids)
                _tombstones.maybe_compact(db, self.ann_path, self._uuid)
            self._dirty = True
            return removed

    def scan(self, batch_size: int = 1000) -> Iterator[list[Record]]:
        """Every record once, as the store was when the scan began (a snapshot).

        Records written meanwhile, even by this handle (say, copying a store onto
        itself), are not yielded; damaged records are skipped with a
        :class:`~lookalike.errors.DamagedRecordWarning`.
        """
        check_batch_size(batch_size)
        schema = self._require_schema()
        # A connection of its own holds one read transaction over the whole scan.
        conn = connect(self.path, self._timeout, self.read_only, immutable=self._immutable)
        try:
            with self._translate("scan"):
                conn.execute("BEGIN")
                cursor = conn.execute("SELECT id, vector, metadata FROM records ORDER BY rowid")
            while True:
                with self._translate("scan"):
                    rows = cursor.fetchmany(batch_size)
                if not rows:
                    return
                batch = [
                    got
                    for rid, blob, meta in rows
                    if (got := record(self.path, rid, blob, meta, schema.dim)) is not None
                ]
                if batch:
                    yield batch
        finally:
            conn.close()

    def shares_file_with(self, other: LocalStore) -> bool:
        """Whether ``other`` opened the very same store file, by whatever path.

        Paths that resolve to one file (links included) are the same. Two files with the
        same store id are the same only if a mark written through ``other`` is read
        back through this handle: a plain copy of a store file has the same id but is
        another store. The mark is removed again.
        """
        mine, theirs = os.path.realpath(self.path), os.path.realpath(other.path)
        if mine == theirs:
            return True
        with contextlib.suppress(OSError):
            if os.path.samefile(mine, theirs):
                return True
        if not self._uuid or self._uuid != other._uuid or other.read_only:
            return False
        token = uuid.uuid4().hex
        with other._lock, other._transaction("compare stores") as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('probe', ?)", (token,))
        try:
            with self._lock, self._translate("compare stores"):
                row = self._db.execute("SELECT value FROM meta WHERE key='probe'").fetchone()
        finally:
            with other._lock, other._transaction("compare stores") as db:
                db.execute("DELETE FROM meta WHERE key='probe' AND value=?", (token,))
        return row is not None and row[0] == token

    def count(self) -> int:
        with self._lock, self._translate("count"):
            return int(self._db.execute("SELECT count(*) FROM records").fetchone()[0])

    def close(self) -> None:
        self._close(save=True)

    def _close(self, save: bool) -> None:
        with self._lock:
            if self._conn is not None:
                mirror = self._mirror
                if save and mirror is not None and mirror.ann is not None and mirror.unsaved:
                    _annfile.save(self.ann_path, self._uuid, mirror)
                self._conn.close()
                self._conn = None
                self._mirror = None

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._close(save=False)

    # -- introspection -----------------------------------------------------------------
    @property
    def search_mode(self) -> str:
        """``"exact"`` or ``"ann"``: how searches are answered now (loads the index)."""
        with self._lock:
            schema = self._require_schema()
            with self._current("read", schema) as (_, mirror):
                return "exact" if mirror.matrix is not None else "ann"

    # -- the in-memory mirror ----------------------------------------------------------
    def _refresh(self, db: sqlite3.Connection, schema: Schema, version: int) -> Mirror:
        """Bring the mirror up to the snapshot ``db`` reads (``version`` read before it began)."""
        mirror = self._mirror
        if mirror is not None and not self._dirty and version == self._data_version:
            return mirror
        try:
            if mirror is None or mirror.dim != schema.dim:
                mirror = self._load_mirror(db, schema)
            else:
                if mirror.last_tomb < _tombstones.tomb_floor(db):  # compacted past what we saw
                    resync_deletions(db, mirror)
                catch_up(db, mirror, self.path)
                if mirror.matrix is not None and _annfile.wants_ann(self.ann_threshold, mirror.live):
                    mirror = self._load_mirror(db, schema)
                elif mirror.ann is not None and mirror.unsaved > max(50_000, mirror.live // 10):
                    _annfile.save(self.ann_path, self._uuid, mirror)
        except BaseException:
            self._mirror = None
            raise
        self._mirror = mirror
        self._dirty = False
        self._data_version = version
        return mirror

    def _load_mirror(self, db: sqlite3.Connection, schema: Schema) -> Mirror:
        n = int(db.execute("SELECT count(*) FROM records").fetchone()[0])
        if _annfile.wants_ann(self.ann_threshold, n):
            mirror = Mirror(schema.dim, exact=False)
            if not _annfile.load(db, mirror, self.ann_path, self._uuid, self.ann_nprobe, self.path):
                mirror = Mirror(schema.dim, exact=False)
                self._build_ann(db, mirror, n)
                _annfile.save(self.ann_path, self._uuid, mirror)
            return mirror
        mirror = Mirror(schema.dim, exact=True)
        mirror.reserve(n)  # one allocation, not 1.5x growth steps that copy
        mirror.last_tomb = _tombstones.max_tomb(db)
        catch_up(db, mirror, self.path)
        return mirror

    def _build_ann(self, db: sqlite3.Connection, mirror: Mirror, n: int) -> None:
        _annfile.build(db, mirror, self.ann_nprobe, self.path)

    # -- maintenance -------------------------------------------------------------------
    def check(self, *, rebuild: bool = False, fix: bool = False) -> list[str]:
        """Verify the file's integrity and repair derived indexes; return the problems found.

        Runs SQLite's integrity check, checks every record's vector size and metadata,
        then reloads the in-memory index and, for stores at or above ``ann_threshold``,
        verifies the derived ``<path>.ann`` file, rebuilding it when it is missing, stale
        or damaged (always with ``rebuild=True``). A repaired derived file is not a
        problem of the store, so it is not listed. Returns an empty list when healthy.

        With ``fix=True`` damaged records (each listed, ending in ``"; dropped"``) are
        deleted, so re-indexing their files adds them again, and the deletion log
        (tombstones) is compacted. Nothing is written without ``fix`` or ``rebuild``.
        """
        if (fix or rebuild) and self.read_only:
            raise StoreConnectionError(
                f"{self.path}: cannot {'fix' if fix else 'rebuild'}: the store is open "
                "read-only (the file or its folder cannot be written)",
                backend="LocalStore",
            )
        with self._lock, self._translate("check"):
            problems = _check.sqlite_problems(self._db)
            schema = self.describe()
            if schema is None:
                return problems
            damaged = _check.damaged_records(self._db, schema.dim)
            dropped = "; dropped" if fix else ""
            problems += [f"record {rid!r}: {problem}{dropped}" for rid, problem in damaged]
            if fix:
                with self._transaction("check --fix") as db:
                    delete_records(db, [rid for rid, _ in damaged])
                    _tombstones.compact(db, self.ann_path, self._uuid)
                self._dirty = True
            if [p for p in problems if not p.endswith("; dropped")]:
                return problems
            if rebuild:
                with contextlib.suppress(FileNotFoundError):
                    self.ann_path.unlink()
            self._mirror = None
            with self._current("check", schema) as (_, mirror):
                if mirror.ann is not None and mirror.unsaved:
                    _annfile.save(self.ann_path, self._uuid, mirror)
            if fix:
                # tombstones the ANN file still needed are now covered by its new save
                with self._transaction("check --fix") as db:
                    _tombstones.compact(db, self.ann_path, self._uuid)
        return problems
