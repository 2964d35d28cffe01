"""LocalStore: the embedded, persistent default store (SQLite + an in-memory search index)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import threading
import urllib.parse
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import (
    ConfigurationError,
    DamagedRecordWarning,
    StoreConnectionError,
    StoreCorruptError,
    StoreError,
    StoreTimeoutError,
    quote_name,
)
from ..filters import NormalizedFilter, normalize_filter
from ..types import Filter, Hit, Record, Schema
from ._common import (
    check_batch_size,
    check_same_schema,
    check_search_args,
    require_schema,
    top_k,
    validate_records,
)

__all__ = ["DEFAULT_ANN_THRESHOLD", "LocalStore"]

#: Stores with at least this many records search through the approximate index.
DEFAULT_ANN_THRESHOLD = 200_000

_APPLICATION_ID = 0x4C4B4C4B  # "LKLK": marks a SQLite file as a lookalike store
_FORMAT_VERSION = 2
_SQLITE_MAGIC = b"SQLite format 3\x00"
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
# Tombstones are compacted once there are this many, and more than live records: other
# processes then resync their deletions from the rowids (see LocalStore._resync_deletions).
_TOMB_COMPACT_MIN = 100_000
_EXACT_FILTER_LIMIT = 50_000  # filtered ANN searches with fewer candidates scan them all
_FETCH_CHUNK = 8192
_IN_CHUNK = 500

_Key = tuple[str, Any]


def _key_from_json(value: Any, kind: str | None) -> _Key | None:
    """The filter key of a value read with SQLite's json_extract/json_type."""
    if kind == "true":
        return ("b", True)
    if kind == "false":
        return ("b", False)
    if kind in ("integer", "real"):
        return ("n", value)
    if kind == "text":
        return ("s", value)
    return None


def _key_from_python(value: Any) -> _Key | None:
    # Keys keep True from matching 1 and "1" from matching 1, as filters.matches does.
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, (int, float)):
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    return None


class _Column:
    """One filter field, dictionary-encoded: a code per mirror position (-1: no value)."""

    def __init__(self, capacity: int) -> None:
        self.codes = np.full(capacity, -1, dtype=np.int32)
        self.lookup: dict[_Key, int] = {}

    def code(self, key: _Key | None) -> int:
        if key is None:
            return -1
        found = self.lookup.get(key)
        if found is None:
            found = self.lookup[key] = len(self.lookup)
        return found


class _Mirror:
    """What one process keeps in memory to search a LocalStore.

    Positions are append-only and sorted by rowid; deleted rows are masked out and
    compacted away once they are a quarter of the rows. In exact mode ``matrix`` holds
    float32 vectors; in ANN mode ``ann`` holds them (8-bit) and ``matrix`` is None.
    """

    def __init__(self, dim: int, exact: bool) -> None:
        self.dim = dim
        self.size = 0
        self.dead = 0
        self.rowids = np.zeros(0, dtype=np.int64)
        self.alive = np.zeros(0, dtype=bool)
        self.matrix: NDArray[np.float32] | None = (
            np.zeros((0, dim), dtype=np.float32) if exact else None
        )
        self.ann: Any = None  # an _ann.IvfIndex, kept untyped so faiss stays optional
        self.columns: dict[str, _Column] = {}
        self.last_rowid = 0
        self.last_tomb = 0
        self.unsaved = 0  # ANN changes not yet written to the derived file

    @property
    def live(self) -> int:
        return self.size - self.dead

    def _reserve(self, extra: int) -> None:
        needed = self.size + extra
        capacity = len(self.rowids)
        if needed <= capacity:
            return
        capacity = max(needed, int(capacity * 1.5) + 1024)
        rowids = np.zeros(capacity, dtype=np.int64)
        rowids[: self.size] = self.rowids[: self.size]
        alive = np.zeros(capacity, dtype=bool)
        alive[: self.size] = self.alive[: self.size]
        self.rowids, self.alive = rowids, alive
        if self.matrix is not None:
            matrix = np.empty((capacity, self.dim), dtype=np.float32)
            matrix[: self.size] = self.matrix[: self.size]
            self.matrix = matrix
        for col in self.columns.values():
            codes = np.full(capacity, -1, dtype=np.int32)
            codes[: self.size] = col.codes[: self.size]
            col.codes = codes

    def append(
        self,
        rowids: NDArray[np.int64],
        vectors: NDArray[np.float32] | None,
        keys: dict[str, list[_Key | None]],
    ) -> None:
        n = len(rowids)
        if not n:
            return
        self._reserve(n)
        end = self.size + n
        self.rowids[self.size : end] = rowids
        self.alive[self.size : end] = True
        if self.matrix is not None and vectors is not None:
            self.matrix[self.size : end] = vectors
        for name, col in self.columns.items():
            col.codes[self.size : end] = [col.code(k) for k in keys[name]]
        self.size = end
        self.last_rowid = max(self.last_rowid, int(rowids[-1]))

    def positions(self, rowids: NDArray[np.int64]) -> NDArray[np.intp]:
        """Positions of those ``rowids`` that are present and alive."""
        known = self.rowids[: self.size]
        pos = np.searchsorted(known, rowids)
        pos = pos[pos < self.size]
        pos = pos[np.isin(known[pos], rowids)]
        return pos[self.alive[pos]]

    def remove(self, rowids: NDArray[np.int64]) -> None:
        pos = self.positions(rowids)
        if not len(pos):
            return
        self.alive[pos] = False
        self.dead += len(pos)
        if self.ann is not None:
            self.ann.remove(self.rowids[pos].tolist())
            self.unsaved += len(pos)
        if self.dead > 1024 and self.dead * 4 > self.size:
            self._compact()

    def _compact(self) -> None:
        keep = np.flatnonzero(self.alive[: self.size])
        self.rowids = self.rowids[keep]
        self.alive = np.ones(len(keep), dtype=bool)
        if self.matrix is not None:
            self.matrix = self.matrix[keep]
        for col in self.columns.values():
            col.codes = col.codes[keep]
        self.size = len(keep)
        self.dead = 0


@contextlib.contextmanager
def _write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error (one writer at a time)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


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
        if ann_threshold is not None and (
            not isinstance(ann_threshold, int)
            or isinstance(ann_threshold, bool)
            or ann_threshold < 1
        ):
            raise ConfigurationError(
                f"ann_threshold must be a positive int or None, got {ann_threshold!r}"
            )
        if ann_nprobe is not None and (not isinstance(ann_nprobe, int) or ann_nprobe < 1):
            raise ConfigurationError(
                f"ann_nprobe must be a positive int or None, got {ann_nprobe!r}"
            )
        if not os.fspath(path):
            raise ConfigurationError("the store path is empty; give a file such as photos.lookalike")
        self.path = Path(path).expanduser()
        if not self.path.name:  # "/", ".": a folder, and no file name to put beside it
            raise ConfigurationError(
                f"{quote_name(str(self.path))} is a folder, not a lookalike store file; "
                "give a file such as photos.lookalike"
            )
        self.ann_path = self.path.with_name(self.path.name + ".ann")
        self.ann_threshold = ann_threshold
        self.ann_nprobe = ann_nprobe
        self._timeout = timeout
        self._lock = threading.RLock()
        self._schema: Schema | None = None
        self._mirror: _Mirror | None = None
        self._data_version: int | None = None
        self._dirty = False
        self._uuid = ""
        self.read_only = bool(read_only)
        self._immutable = False
        self._conn: sqlite3.Connection | None = None
        self._conn = self._open()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.path)!r})"

    # -- opening -----------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        where = str(self.path)
        if self.path.is_dir():
            raise StoreCorruptError(
                f"{where} is a folder, not a lookalike store file", backend="LocalStore"
            )
        existing = self.path.exists() and self.path.stat().st_size > 0
        if existing:
            try:
                with open(self.path, "rb") as fh:
                    head = fh.read(16)
            except OSError as exc:
                raise StoreConnectionError(
                    f"cannot read {where}: {exc.strerror or exc}", backend="LocalStore"
                ) from exc
            if head != _SQLITE_MAGIC:
                raise StoreCorruptError(
                    f"{where} is not a lookalike store (not a SQLite file); "
                    "refusing to touch it. Choose another path.",
                    backend="LocalStore",
                )
            if not self.read_only and not self._writable():
                self.read_only = True  # info, search and check still work
        elif self.read_only:
            raise StoreConnectionError(
                f"{where}: no lookalike store there to open read-only", backend="LocalStore"
            )
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create folder for {where}: {exc.strerror or exc}", backend="LocalStore"
                ) from exc
        try:
            return self._setup(self._connect())
        except StoreConnectionError:
            if self.read_only or not existing:
                raise
        # SQLite could not open it for writing (permissions the check above cannot see)
        self.read_only = True
        return self._setup(self._connect())

    def _writable(self) -> bool:
        """Whether this process may write the file and its folder (WAL needs both)."""
        return os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK | os.X_OK)

    def _connect(self, immutable: bool = False) -> sqlite3.Connection:
        with self._translate("open"):
            if not self.read_only:
                return sqlite3.connect(
                    str(self.path),
                    timeout=self._timeout,
                    isolation_level=None,
                    check_same_thread=False,
                )
            mode = "immutable=1" if immutable else "mode=ro"
            uri = f"file:{urllib.parse.quote(os.path.abspath(self.path))}?{mode}"
            return sqlite3.connect(
                uri, uri=True, timeout=self._timeout, isolation_level=None, check_same_thread=False
            )

    def _setup(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        """Check that ``conn`` opened a lookalike store; create or upgrade it if writable."""
        where = str(self.path)
        try:
            try:
                with self._translate("open"):
                    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            except StoreConnectionError:
                wal = self.path.with_name(self.path.name + "-wal")
                if not self.read_only or (wal.exists() and wal.stat().st_size > 0):
                    raise
                # A read-only folder without the -shm file SQLite needs for WAL reads;
                # with no WAL content left the file alone is the whole store.
                conn.close()
                self._immutable = True
                conn = self._connect(immutable=True)
                with self._translate("open"):
                    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            with self._translate("open"):
                tables = {
                    r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                }
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if app_id != _APPLICATION_ID and (tables or version or app_id):
                    found = (
                        f"tables {', '.join(sorted(tables))}" if tables else "no lookalike tables"
                    )
                    raise StoreCorruptError(
                        f"{where} is a SQLite database of another application, not a lookalike "
                        f"store (application_id {app_id}, user_version {version}, {found}); "
                        "refusing to touch it",
                        backend="LocalStore",
                    )
                if version > _FORMAT_VERSION:
                    raise StoreCorruptError(
                        f"{where} was written by a newer lookalike (format {version}); upgrade lookalike",
                        backend="LocalStore",
                    )
                if self.read_only:
                    if not tables or version < _FORMAT_VERSION:
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
                    # Checkpoint every 64 MB of WAL rather than every 4 MB: bulk inserts of
                    # 8 KB vectors run about 1.5x faster, and the WAL file stays bounded.
                    conn.execute("PRAGMA wal_autocheckpoint=16384")
                    if not tables or version < _FORMAT_VERSION:
                        self._create_or_migrate(conn, bool(tables))
                row = conn.execute("SELECT value FROM meta WHERE key='uuid'").fetchone()
                self._uuid = str(row[0]) if row else ""
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _create_or_migrate(conn: sqlite3.Connection, existing: bool) -> None:
        with _write_transaction(conn):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < _FORMAT_VERSION:  # not done meanwhile by another process
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
                conn.execute(f"PRAGMA user_version={_FORMAT_VERSION}")

    @contextlib.contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        """Translate sqlite3 errors into lookalike's hierarchy (the one boundary)."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            msg = str(exc)
            if "locked" in msg or "busy" in msg:
                raise StoreTimeoutError(
                    f"{self.path}: {action} timed out waiting for another writer ({msg})",
                    backend="LocalStore",
                ) from exc
            if "unable to open" in msg or "readonly" in msg or "read-only" in msg:
                raise StoreConnectionError(
                    f"{self.path}: cannot {action}: {msg} (is the file or its folder read-only?)",
                    backend="LocalStore",
                ) from exc
            if "disk is full" in msg or "disk I/O error" in msg:
                raise StoreError(
                    f"{self.path}: {action} failed: {msg}. The disk may be full: free some space "
                    "and retry; what was committed before is intact.",
                    backend="LocalStore",
                ) from exc
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
        if self.read_only:
            raise StoreConnectionError(
                f"{self.path}: cannot {action}: the store is open read-only "
                "(the file or its folder cannot be written)",
                backend="LocalStore",
            )
        with self._translate(action), _write_transaction(db):
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
            ids = [r.id for r in records]
            with self._transaction("upsert") as db:
                for start in range(0, len(ids), _IN_CHUNK):
                    chunk = ids[start : start + _IN_CHUNK]
                    db.execute(
                        f"DELETE FROM records WHERE id IN ({','.join('?' * len(chunk))})", chunk
                    )
                db.executemany("INSERT INTO records(id, metadata, vector) VALUES (?, ?, ?)", rows)
                self._maybe_compact_tombstones(db)
            self._dirty = True

    def search(
        self, vectors: NDArray[np.float32], k: int, filter: Filter | None = None
    ) -> list[list[Hit]]:
        with self._lock:
            schema = self._require_schema()
            queries = check_search_args(vectors, k, schema)
            flt = normalize_filter(filter, schema.fields)
            with self._translate("search"):
                version = self._db.execute("PRAGMA data_version").fetchone()[0]
            with self._snapshot("search") as db:
                mirror = self._refresh(db, schema, version)
                return self._search(db, mirror, queries, int(k), flt)

    def get(self, ids: Sequence[str]) -> list[Record]:
        with self._lock:
            schema = self._require_schema()
            ids = list(ids)
            found: dict[str, Record] = {}
            with self._snapshot("get") as db:
                for start in range(0, len(ids), _IN_CHUNK):
                    chunk = ids[start : start + _IN_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    for rid, blob, meta in db.execute(
                        f"SELECT id, vector, metadata FROM records WHERE id IN ({marks})", chunk
                    ):
                        record = self._record(rid, blob, meta, schema.dim)
                        if record is not None:
                            found[rid] = record
            return [found[i] for i in dict.fromkeys(ids) if i in found]

    def delete(self, ids: Sequence[str]) -> int:
        with self._lock:
            self._require_schema()
            ids = list(dict.fromkeys(ids))
            removed = 0
            with self._transaction("delete") as db:
                for start in range(0, len(ids), _IN_CHUNK):
                    chunk = ids[start : start + _IN_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    removed += db.execute(
                        f"DELETE FROM records WHERE id IN ({marks})", chunk
                    ).rowcount
                self._maybe_compact_tombstones(db)
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
        conn = self._connect(immutable=self._immutable)
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
                    record
                    for rid, blob, meta in rows
                    if (record := self._record(rid, blob, meta, schema.dim)) is not None
                ]
                if batch:
                    yield batch
        finally:
            conn.close()

    def _record(self, rid: str, blob: bytes, meta: str, dim: int) -> Record | None:
        """A stored row as a Record, or None (with a warning) when it is damaged."""
        problem = self._damage(len(blob), meta, dim)
        if problem is not None:
            self._warn_damaged(rid, problem)
            return None
        return Record(rid, np.frombuffer(blob, dtype=np.float32).copy(), json.loads(meta))

    @staticmethod
    def _damage(size: int, meta: str | None, dim: int) -> str | None:
        """What is wrong with a stored row (its vector's size, its metadata), or None.

        ``meta=None`` stands for metadata already known to be a JSON object.
        """
        if size != dim * 4:
            return f"vector of {size} bytes, expected {dim * 4}"
        if meta is None:
            return None
        try:
            parsed: Any = json.loads(meta)
        except (TypeError, ValueError) as exc:
            return f"unreadable metadata ({exc})"
        if not isinstance(parsed, dict):
            return "unreadable metadata (not a JSON object)"
        return None

    def _warn_damaged(self, rid: str, problem: str) -> None:
        warnings.warn(
            f"{self.path}: record {rid!r} is damaged ({problem}) and was skipped; "
            "'lookalike check --fix' drops it, re-indexing its file replaces it",
            DamagedRecordWarning,
            stacklevel=4,
        )

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
                    self._save_ann(mirror)
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
            with self._translate("read"):
                version = self._db.execute("PRAGMA data_version").fetchone()[0]
            with self._snapshot("read") as db:
                mirror = self._refresh(db, schema, version)
            return "exact" if mirror.matrix is not None else "ann"

    # -- the in-memory mirror ------------------------------------------------------------
    def _wants_ann(self, n: int) -> bool:
        if self.ann_threshold is None or n < self.ann_threshold:
            return False
        from ._ann import ann_available

        return ann_available()

    def _refresh(self, db: sqlite3.Connection, schema: Schema, version: int) -> _Mirror:
        """Bring the mirror up to the snapshot ``db`` reads (``version`` read before it began)."""
        mirror = self._mirror
        if mirror is not None and not self._dirty and version == self._data_version:
            return mirror
        try:
            if mirror is None or mirror.dim != schema.dim:
                mirror = self._load_mirror(db, schema)
            else:
                if mirror.last_tomb < self._tomb_floor(db):  # compacted past what we saw
                    self._resync_deletions(db, mirror)
                self._catch_up(db, mirror, schema.dim)
                if mirror.matrix is not None and self._wants_ann(mirror.live):
                    mirror = self._load_mirror(db, schema)
                elif mirror.ann is not None and mirror.unsaved > max(50_000, mirror.live // 10):
                    self._save_ann(mirror)
        except BaseException:
            self._mirror = None
            raise
        self._mirror = mirror
        self._dirty = False
        self._data_version = version
        return mirror

    @staticmethod
    def _tomb_floor(db: sqlite3.Connection) -> int:
        row = db.execute("SELECT value FROM meta WHERE key='tomb_floor'").fetchone()
        return int(row[0]) if row else 0

    @classmethod
    def _max_tomb(cls, db: sqlite3.Connection) -> int:
        top = int(db.execute("SELECT coalesce(max(seq), 0) FROM tombstones").fetchone()[0])
        return max(top, cls._tomb_floor(db))

    def _resync_deletions(self, db: sqlite3.Connection, mirror: _Mirror) -> None:
        """Drop from the mirror the rows that are gone, when their tombstones were compacted.

        Reads only the rowids up to the mirror's last one (no vectors), so it costs far
        less than loading the mirror again.
        """
        present = np.fromiter(
            (
                r
                for (r,) in db.execute(
                    "SELECT rowid FROM records WHERE rowid <= ? ORDER BY rowid",
                    (mirror.last_rowid,),
                )
            ),
            dtype=np.int64,
        )
        known = mirror.rowids[: mirror.size][mirror.alive[: mirror.size]]
        mirror.remove(np.setdiff1d(known, present, assume_unique=True))
        mirror.last_tomb = self._max_tomb(db)

    def _maybe_compact_tombstones(self, db: sqlite3.Connection) -> None:
        """Compact the tombstones once they outnumber both the live records and a floor."""
        pending = self._max_tomb(db) - self._tomb_floor(db)
        if pending < _TOMB_COMPACT_MIN:
            return
        live = int(db.execute("SELECT count(*) FROM records").fetchone()[0])
        if pending > live:
            self._compact_tombstones(db, live)

    def _compact_tombstones(self, db: sqlite3.Connection, live: int | None = None) -> int:
        """Delete the tombstones every reader can do without; return how many.

        Inside a write transaction. Readers that had not seen them all resync their
        deletions from the rowids (``meta.tomb_floor`` tells them). Tombstones newer than
        the derived ANN file are kept, so that it still catches up incrementally, unless
        they outnumber the ``live`` records (catching up would cost about a rebuild).
        """
        floor = self._tomb_floor(db)
        upto = self._max_tomb(db)
        if self.ann_path.exists():
            from ._ann import AnnFileError, IvfIndex

            with contextlib.suppress(AnnFileError, KeyError, TypeError, ValueError):
                header = IvfIndex.read_header(self.ann_path)
                covered = int(header["last_tomb"])
                if (
                    header.get("store") == self._uuid
                    and covered >= floor
                    and (live is None or upto - covered <= live)
                ):
                    upto = min(upto, covered)
        if upto <= floor:
            return 0
        removed = int(db.execute("DELETE FROM tombstones WHERE seq <= ?", (upto,)).rowcount)
        db.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('tomb_floor', ?)", (str(upto),)
        )
        return removed

    def _load_mirror(self, db: sqlite3.Connection, schema: Schema) -> _Mirror:
        n = int(db.execute("SELECT count(*) FROM records").fetchone()[0])
        if self._wants_ann(n):
            mirror = _Mirror(schema.dim, exact=False)
            if not self._load_ann_file(db, mirror):
                mirror = _Mirror(schema.dim, exact=False)
                self._build_ann(db, mirror, n)
                self._save_ann(mirror)
            return mirror
        mirror = _Mirror(schema.dim, exact=True)
        mirror._reserve(n)  # one allocation, not 1.5x growth steps that copy
        mirror.last_tomb = self._max_tomb(db)
        self._catch_up(db, mirror, schema.dim)
        return mirror

    def _column_sql(self, names: Sequence[str]) -> str:
        parts = ["CASE WHEN json_valid(metadata) THEN NULL ELSE metadata END"] if names else []
        for name in names:  # field names are identifiers, safe inside the JSON path
            parts.append(
                f"json_extract(CASE WHEN json_valid(metadata) THEN metadata END, '$.{name}')"
            )
            parts.append(f"json_type(CASE WHEN json_valid(metadata) THEN metadata END, '$.{name}')")
        return "".join(", " + p for p in parts)

    @staticmethod
    def _keys(
        rows: Sequence[Sequence[Any]], names: Sequence[str], first: int
    ) -> dict[str, list[_Key | None]]:
        """Filter keys of ``names`` from rows laid out by :meth:`_column_sql` at ``first``."""
        keys: dict[str, list[_Key | None]] = {name: [] for name in names}
        for row in rows:
            raw = row[first] if names else None
            parsed: Any = None
            if raw is not None:  # not JSON SQLite reads (e.g. NaN): let Python parse it
                with contextlib.suppress(ValueError):
                    parsed = json.loads(raw)
            for i, name in enumerate(names):
                if raw is None:
                    keys[name].append(
                        _key_from_json(row[first + 1 + 2 * i], row[first + 2 + 2 * i])
                    )
                else:
                    value = parsed.get(name) if isinstance(parsed, dict) else None
                    keys[name].append(_key_from_python(value))
        return keys

    def _catch_up(self, db: sqlite3.Connection, mirror: _Mirror, dim: int) -> None:
        dead = db.execute(
            "SELECT seq, row FROM tombstones WHERE seq > ? ORDER BY seq", (mirror.last_tomb,)
        ).fetchall()
        if dead:
            mirror.remove(np.array([r for _, r in dead], dtype=np.int64))
            mirror.last_tomb = int(dead[-1][0])
        names = list(mirror.columns)
        # The 4th column is the metadata only when SQLite does not read it as a JSON object.
        cursor = db.execute(
            "SELECT rowid, id, vector, CASE WHEN json_valid(metadata) AND "
            "json_type(metadata) = 'object' THEN NULL ELSE metadata END"
            f"{self._column_sql(names)} FROM records WHERE rowid > ? ORDER BY rowid",
            (mirror.last_rowid,),
        )
        while chunk := cursor.fetchmany(_FETCH_CHUNK):
            last = int(chunk[-1][0])
            sound = []
            for row in chunk:
                problem = self._damage(len(row[2]), row[3], dim)
                if problem is None:
                    sound.append(row)
                else:
                    self._warn_damaged(row[1], problem)
            chunk = sound
            if chunk:
                rowids = np.array([r[0] for r in chunk], dtype=np.int64)
                vectors = self._decode_block(chunk, dim)
                if mirror.ann is not None:
                    mirror.ann.add(rowids, vectors)
                    mirror.unsaved += len(rowids)
                mirror.append(rowids, vectors, self._keys(chunk, names, 4))
            mirror.last_rowid = max(mirror.last_rowid, last)

    def _decode_block(self, rows: Sequence[Sequence[Any]], dim: int) -> NDArray[np.float32]:
        """Rows of (rowid, id, vector, ...) with sound vectors -> an (n, dim) float32 matrix."""
        if not rows:
            return np.zeros((0, dim), dtype=np.float32)
        return np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), dim)

    def _sound_vectors(self, rows: Sequence[Sequence[Any]], dim: int) -> list[Sequence[Any]]:
        """Rows of (rowid, id, vector, ...) whose vector has the right size (others warned)."""
        sound = []
        for row in rows:
            if len(row[2]) == dim * 4:
                sound.append(row)
            else:
                self._warn_damaged(row[1], f"vector of {len(row[2])} bytes, expected {dim * 4}")
        return sound

    def _column(self, db: sqlite3.Connection, mirror: _Mirror, name: str) -> _Column:
        col = mirror.columns.get(name)
        if col is None:  # built on the first filter on this field, then kept in sync
            col = _Column(len(mirror.rowids))
            known = mirror.rowids[: mirror.size]
            cursor = db.execute(
                f"SELECT rowid{self._column_sql([name])} FROM records WHERE rowid <= ? ORDER BY rowid",
                (mirror.last_rowid,),
            )
            while chunk := cursor.fetchmany(_FETCH_CHUNK):
                rowids = np.array([r[0] for r in chunk], dtype=np.int64)
                pos = np.minimum(np.searchsorted(known, rowids), max(len(known) - 1, 0))
                present = known[pos] == rowids if len(known) else np.zeros(len(rowids), bool)
                codes = [col.code(k) for k in self._keys(chunk, [name], 1)[name]]
                col.codes[pos[present]] = np.array(codes, dtype=np.int32)[present]
            mirror.columns[name] = col
        return col

    # -- the derived ANN file --------------------------------------------------------------
    def _ann_header(self, mirror: _Mirror) -> dict[str, Any]:
        return {
            "store": self._uuid,
            "dim": mirror.dim,
            "last_rowid": mirror.last_rowid,
            "last_tomb": mirror.last_tomb,
        }

    def _save_ann(self, mirror: _Mirror) -> None:
        self._remove_stale_temporaries()
        try:
            mirror.ann.save(self.ann_path, dict(self._ann_header(mirror), ntotal=mirror.ann.ntotal))
            mirror.unsaved = 0
        except OSError:
            pass  # a read-only folder or a full disk: the index still works from memory

    def _remove_stale_temporaries(self) -> None:
        """Delete ``<path>.ann.<pid>.tmp`` files left by processes killed while saving."""
        for tmp in self.ann_path.parent.glob(self.ann_path.name + ".*.tmp"):
            pid = tmp.name[len(self.ann_path.name) + 1 : -len(".tmp")]
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            except OSError:
                pass  # alive, owned by someone else

    def _load_ann_file(self, db: sqlite3.Connection, mirror: _Mirror) -> bool:
        """Load ``<path>.ann`` and catch it up; False when it is missing or unusable."""
        from ._ann import AnnFileError, IvfIndex

        if not self.ann_path.exists():
            return False
        try:
            ann, meta = IvfIndex.load(self.ann_path, {"store": self._uuid, "dim": mirror.dim})
        except (AnnFileError, OSError):
            return False
        last_rowid, last_tomb = int(meta.get("last_rowid", -1)), int(meta.get("last_tomb", -1))
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='records'").fetchone()
        max_tomb = self._max_tomb(db)
        if (
            last_rowid > (row[0] if row else 0)
            or last_tomb > max_tomb
            or last_tomb < self._tomb_floor(db)
        ):
            return False
        gone = [
            r
            for (r,) in db.execute("SELECT row FROM tombstones WHERE seq > ?", (last_tomb,))
            if r <= last_rowid
        ]
        ann.remove(gone)
        rowids = np.array(
            [
                r
                for (r,) in db.execute(
                    "SELECT rowid FROM records WHERE rowid <= ? AND length(vector) = ? "
                    "ORDER BY rowid",
                    (last_rowid, mirror.dim * 4),
                )
            ],
            dtype=np.int64,
        )
        if ann.ntotal != len(rowids):
            return False
        if self.ann_nprobe:
            ann.nprobe = self.ann_nprobe
        mirror.ann = ann
        mirror.append(rowids, None, {})
        mirror.last_rowid = last_rowid
        mirror.last_tomb = max_tomb
        mirror.unsaved = len(gone)
        self._catch_up(db, mirror, mirror.dim)
        return True

    def _build_ann(self, db: sqlite3.Connection, mirror: _Mirror, n: int) -> None:
        from ._ann import IvfIndex, choose_nlist

        rowids = np.array(
            [r for (r,) in db.execute("SELECT rowid FROM records ORDER BY rowid")], dtype=np.int64
        )
        rng = np.random.default_rng(0)
        take = min(len(rowids), max(10_000, 40 * choose_nlist(len(rowids))))
        picked = np.sort(rng.choice(rowids, size=take, replace=False))
        sample = np.empty((take, mirror.dim), dtype=np.float32)
        filled = 0
        for start in range(0, take, _IN_CHUNK):
            chunk = picked[start : start + _IN_CHUNK].tolist()
            rows = db.execute(
                f"SELECT rowid, id, vector FROM records WHERE rowid IN ({','.join('?' * len(chunk))}) ORDER BY rowid",
                chunk,
            ).fetchall()
            rows = self._sound_vectors(rows, mirror.dim)
            sample[filled : filled + len(rows)] = self._decode_block(rows, mirror.dim)
            filled += len(rows)
        mirror.ann = IvfIndex.train(mirror.dim, sample[:filled], len(rowids), self.ann_nprobe)
        del sample
        mirror.last_tomb = self._max_tomb(db)
        self._catch_up(db, mirror, mirror.dim)

    # -- search ----------------------------------------------------------------------------
    def _filter_mask(
        self, db: sqlite3.Connection, mirror: _Mirror, flt: NormalizedFilter
    ) -> NDArray[np.bool_]:
        mask = mirror.alive[: mirror.size].copy()
        for name, values in flt.items():
            col = self._column(db, mirror, name)
            wanted = [
                c
                for v in values
                if (key := _key_from_python(v)) is not None
                and (c := col.lookup.get(key)) is not None
            ]
            if not wanted:
                mask[:] = False
                break
            codes = col.codes[: mirror.size]
            mask &= codes == wanted[0] if len(wanted) == 1 else np.isin(codes, wanted)
        return mask

    def _search(
        self,
        db: sqlite3.Connection,
        mirror: _Mirror,
        queries: NDArray[np.float32],
        k: int,
        flt: NormalizedFilter | None,
    ) -> list[list[Hit]]:
        nq = queries.shape[0]
        mask = self._filter_mask(db, mirror, flt) if flt else None
        candidates = mirror.live if mask is None else int(mask.sum())
        if candidates == 0:
            return [[] for _ in range(nq)]
        if mirror.matrix is not None:
            found = self._search_exact(mirror, queries, min(k, candidates), mask, candidates)
        else:
            found = self._search_ann(db, mirror, queries, k, mask, candidates)
        return self._hits(db, found)

    @staticmethod
    def _search_exact(
        mirror: _Mirror,
        queries: NDArray[np.float32],
        k: int,
        mask: NDArray[np.bool_] | None,
        candidates: int,
    ) -> list[tuple[NDArray[np.int64], NDArray[np.float32]]]:
        assert mirror.matrix is not None
        size = mirror.size
        valid = mirror.alive[:size] if mask is None else mask
        rows: NDArray[np.intp] | None = None
        if candidates == size:
            scores = mirror.matrix[:size] @ queries.T
        elif candidates * 2 < size:
            rows = np.flatnonzero(valid)
            scores = mirror.matrix[rows] @ queries.T
        else:
            scores = mirror.matrix[:size] @ queries.T
            scores[~valid] = -np.inf
        out = []
        for j in range(queries.shape[0]):
            column = scores[:, j]
            best = top_k(column, k)
            pos = best if rows is None else rows[best]
            out.append((mirror.rowids[pos], column[best]))
        return out

    def _search_ann(
        self,
        db: sqlite3.Connection,
        mirror: _Mirror,
        queries: NDArray[np.float32],
        k: int,
        mask: NDArray[np.bool_] | None,
        candidates: int,
    ) -> list[tuple[NDArray[np.int64], NDArray[np.float32]]]:
        ann = mirror.ann
        pool = min(candidates, max(4 * k, k + 30))  # re-ranked with the float32 vectors
        allowed = None if mask is None else mirror.rowids[: mirror.size][mask]
        nprobe = ann.nprobe
        if allowed is not None:
            if candidates <= _EXACT_FILTER_LIMIT:
                nprobe = ann.nlist  # visits every list, but scores only the candidates
            else:
                nprobe = min(ann.nlist, math.ceil(nprobe * mirror.live / candidates))
        _, ids = ann.search(queries, pool, nprobe, allowed)
        need = min(k, candidates)
        short = [j for j in range(len(ids)) if int((ids[j] >= 0).sum()) < need]
        if short and nprobe < ann.nlist:  # never return fewer hits than there are matches
            _, ids[short] = ann.search(queries[short], pool, ann.nlist, allowed)
        wanted = np.unique(ids[ids >= 0])
        vectors: dict[int, NDArray[np.float32]] = {}
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start : start + _IN_CHUNK].tolist()
            rows = db.execute(
                f"SELECT rowid, id, vector FROM records WHERE rowid IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            rows = self._sound_vectors(rows, mirror.dim)
            for row, vec in zip(rows, self._decode_block(rows, mirror.dim)):
                vectors[int(row[0])] = vec
        out = []
        for j in range(len(ids)):
            got = np.array([r for r in ids[j] if r >= 0 and int(r) in vectors], dtype=np.int64)
            if not len(got):
                out.append((got, np.zeros(0, dtype=np.float32)))
                continue
            exact = np.stack([vectors[int(r)] for r in got]) @ queries[j]
            best = top_k(exact, min(k, len(got)))
            out.append((got[best], exact[best]))
        return out

    def _hits(
        self, db: sqlite3.Connection, found: list[tuple[NDArray[np.int64], NDArray[np.float32]]]
    ) -> list[list[Hit]]:
        wanted = sorted({int(r) for rowids, _ in found for r in rowids})
        info: dict[int, tuple[str, str]] = {}
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start : start + _IN_CHUNK]
            for row, rid, meta in db.execute(
                f"SELECT rowid, id, metadata FROM records WHERE rowid IN ({','.join('?' * len(chunk))})",
                chunk,
            ):
                info[int(row)] = (rid, meta)
        results = []
        for rowids, scores in found:
            hits = []
            for r, s in zip(rowids.tolist(), scores.tolist()):
                got = info.get(r)
                if got is None:
                    continue
                try:
                    parsed: Any = json.loads(got[1])
                    if not isinstance(parsed, dict):
                        raise ValueError("not a JSON object")
                except ValueError as exc:  # damaged since this process loaded it
                    self._warn_damaged(got[0], f"unreadable metadata ({exc})")
                    continue
                hits.append(Hit.from_metadata(got[0], float(np.clip(s, -1.0, 1.0)), parsed))
            results.append(hits)
        return results

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
        problems: list[str] = []
        with self._lock, self._translate("check"):
            db = self._db
            for (line,) in db.execute("PRAGMA integrity_check"):
                if line != "ok":
                    problems.append(f"sqlite: {line}")
            schema = self.describe()
            if schema is None:
                return problems
            damaged: list[str] = []
            for rid, size, meta in db.execute("SELECT id, length(vector), metadata FROM records"):
                problem = self._damage(size, meta, schema.dim)
                if problem is not None:
                    damaged.append(rid)
                    problems.append(f"record {rid!r}: {problem}" + ("; dropped" if fix else ""))
            if fix:
                with self._transaction("check --fix") as wdb:
                    for start in range(0, len(damaged), _IN_CHUNK):
                        chunk = damaged[start : start + _IN_CHUNK]
                        wdb.execute(
                            f"DELETE FROM records WHERE id IN ({','.join('?' * len(chunk))})",
                            chunk,
                        )
                    self._compact_tombstones(wdb)
                self._dirty = True
            if [p for p in problems if not p.endswith("; dropped")]:
                return problems
            if rebuild:
                with contextlib.suppress(FileNotFoundError):
                    self.ann_path.unlink()
            self._mirror = None
            version = db.execute("PRAGMA data_version").fetchone()[0]
            with self._snapshot("check") as snap:
                mirror = self._refresh(snap, schema, version)
            if mirror.ann is not None and mirror.unsaved:
                self._save_ann(mirror)
            if fix:
                # tombstones the ANN file still needed are now covered by its new save
                with self._transaction("check --fix") as wdb:
                    self._compact_tombstones(wdb)
        return problems
