"""LocalStore: the store object. It holds the connection, the lock and the mirror, and
runs each protocol method in one transaction; the work is done by the modules beside it."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from ..._checks import positive_int
from ...errors import ConfigurationError, StoreConnectionError, StoreError, quote_name
from ...filters import NormalizedFilter, normalize_filter
from ...types import Filter, Hit, Record, Schema, SimilarPairs
from .._common import (
    check_batch_size,
    check_same_schema,
    check_search_args,
    check_threshold,
    require_schema,
    validate_records,
)
from . import _annfile, _check, _pairs, _tombstones, _vecfile
from ._ivf import AnnFileError, IvfIndex
from ._mirror import Mirror, Reload, catch_up, expand, load_mapped, resync_deletions
from ._open import connect, open_file
from ._rows import decode_block, delete_records, record, sound_vectors
from ._search import search as search_mirror
from ._sqlite import FETCH_CHUNK, execute_in, translate, write_transaction

__all__ = ["DEFAULT_ANN_THRESHOLD", "LocalStore"]

_T = TypeVar("_T")

#: Stores with at least this many records search through the approximate index.
DEFAULT_ANN_THRESHOLD = 20_000

# Indexes of at most this many floats (rows x dim) are built in the caller's thread:
# well under a second. Larger ones are built in a background thread while searches stay
# exact, except when a handle that wrote closes (it builds before it returns).
_SYNC_BUILD_FLOATS = 1 << 22


class LocalStore:
    """A persistent store in one SQLite file; works with no server.

    SQLite (WAL mode) is the source of truth: each :meth:`upsert` commits atomically, so
    a crash loses at most the call in flight and never what was committed. Several
    processes may read while one writes; a search sees every write committed before it
    started (readers catch up incrementally, reading only what changed).

    The float32 vectors are also written, in the same transaction, to a derived file
    ``<path>.vec`` that every process memory-maps: opening a store reads no vectors,
    whatever its size. Search is exact (brute force over the mapped vectors) below
    ``ann_threshold`` records and approximate above it: an IVF index with 8-bit vectors
    (faiss, extra ``[ann]``), memory-mapped from the derived file ``<path>.ann``, whose
    candidates are re-ranked with the float32 vectors, so scores are exact cosine
    similarities. While the index is being built (in the background for large stores)
    searches are exact; rows written after it was built are searched exactly until it
    is rebuilt. Both derived files are rebuilt when missing, stale or damaged. Without
    faiss installed, search stays exact at any size. Filters work on both paths and
    never drop matches: selective filters are answered by scoring every matching
    record. See ``docs/performance.md``.

    Args:
        path: the store file (created with its parent folder if missing), e.g.
            ``"photos.lookalike"``.
        timeout: seconds to wait for another writer's lock before
            :class:`~lookalike.errors.StoreTimeoutError`.
        ann_threshold: record count from which search is approximate; ``None`` keeps
            search exact at any size.
        ann_nprobe: inverted lists probed per query (default: 1/8 of them, at least
            16, under 512 lists; 1/128, at least 5, under 1,024; else 1/64, at least 8);
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
        self.vec_path = self.path.with_name(self.path.name + ".vec")
        self._vec: _vecfile.VecFile | None = None  # this handle's vector file, for writes
        self._builder: threading.Thread | None = None
        self._built: IvfIndex | None = None  # handed over by the builder thread
        self._built_lock = threading.Lock()
        self._ann_seen: tuple[int, int] | None = None  # (inode, mtime) of the .ann last tried
        self._wrote = False
        self._build_failed = False
        self._vec_damaged = False
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
        if (self._mirror is None or self._vec_damaged) and not self.read_only:
            self._prepare_vecfile(schema)
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
                before = _last_rowid(db)
                delete_records(db, [r.id for r in records])  # replaced: deleted, inserted again
                db.executemany("INSERT INTO records(id, metadata, vector) VALUES (?, ?, ?)", rows)
                self._append_vectors(db, schema, before, matrix)
                self._maybe_compact(db, schema.dim)
            self._dirty = self._wrote = True

    def search(
        self, vectors: NDArray[np.float32], k: int, filter: Filter | None = None
    ) -> list[list[Hit]]:
        with self._lock:
            schema = self._require_schema()
            queries = check_search_args(vectors, k, schema)
            flt = normalize_filter(filter, schema.fields)
            return self._with_mirror(
                "search",
                schema,
                lambda db, mirror: search_mirror(db, mirror, queries, int(k), flt, self.path),
            )

    def similar_pairs(
        self, threshold: float, filter: Filter | None = None
    ) -> Iterator[SimilarPairs]:
        """Every pair of records (matching ``filter``) whose cosine similarity is at least
        ``threshold``, each once, in batches (:class:`~lookalike.protocols.PairSearchStore`).

        Exact below ``ann_threshold``; above it a join over the approximate index's lists
        (as many lists probed per record as a search probes), re-scored exactly, so a
        pair is missed only when neither record's search would find the other. Records
        written meanwhile are not paired; the store's lock is held one batch at a time.
        """
        threshold = check_threshold(threshold)
        with self._lock:
            schema = self._require_schema()
            flt = normalize_filter(filter, schema.fields)
            plan = self._with_mirror(
                "similar pairs", schema, lambda db, m: _pairs.plan(db, m, flt, self.path, self.ann_threshold)
            )
        seen: set[tuple[int, int]] = set()
        for bounds in plan.steps:
            with self._lock:
                batch = self._with_mirror(
                    "similar pairs",
                    schema,
                    functools.partial(self._pairs_step, flt, bounds, plan, threshold, seen),
                )
            yield batch

    def _pairs_step(
        self,
        flt: NormalizedFilter | None,
        bounds: tuple[int, int],
        plan: _pairs.Plan,
        threshold: float,
        seen: set[tuple[int, int]],
        db: sqlite3.Connection,
        mirror: Mirror,
    ) -> SimilarPairs:
        """One batch of :meth:`similar_pairs`, with the records' ids."""
        (left, right, scores), count = _pairs.step(
            db, mirror, flt, self.path, bounds, plan, threshold, seen
        )
        ids = _pairs.ids_of(db, np.concatenate([left, right]))
        kept = [
            i
            for i, (a, b) in enumerate(zip(left.tolist(), right.tolist()))
            if a in ids and b in ids
        ]  # one may be deleted meanwhile
        return SimilarPairs(
            [ids[int(left[i])] for i in kept],
            [ids[int(right[i])] for i in kept],
            scores[kept],
            count,
        )

    def _with_mirror(
        self, action: str, schema: Schema, work: Callable[[sqlite3.Connection, Mirror], _T]
    ) -> _T:
        """``work(db, mirror)`` on a read snapshot, run again once on a freshly loaded
        mirror when the vector file turns out cut short under this process."""
        try:
            with self._current(action, schema) as (db, mirror):
                return work(db, mirror)
        except _vecfile.VecFileError:
            self._vec_damaged = True
            self._mirror = None
            if self.read_only:
                self._vec = None
        with self._current(action, schema) as (db, mirror):
            return work(db, mirror)

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
            schema = self._require_schema()
            ids = list(dict.fromkeys(ids))
            with self._transaction("delete") as db:
                removed = delete_records(db, ids)
                self._maybe_compact(db, schema.dim)
            self._dirty = self._wrote = True
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
                if save and self._wrote and not self.read_only:
                    # a writer leaves the index ready for the processes that come next;
                    # the index is derived: failing to build it never fails close()
                    with contextlib.suppress(Exception):
                        self._finish_ann()
                self._conn.close()
                self._conn = None
                self._mirror = None
                if self._vec is not None:
                    self._vec.close()
                    self._vec = None

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
        """``"exact"`` or ``"ann"``: how searches are answered now (loads the index;
        ``"exact"`` while it is being built in the background)."""
        with self._lock:
            schema = self._require_schema()
            with self._current("read", schema) as (_, mirror):
                return "exact" if mirror.ann is None else "ann"

    def wait_for_index(self, timeout: float | None = None) -> bool:
        """Start the approximate index's build if it is due, wait until it has finished
        (at most ``timeout`` seconds); return whether searches now use it (False for
        stores below ``ann_threshold``, or without faiss)."""
        if self.search_mode == "ann":  # loads it, or starts its build
            return True
        builder = self._builder
        if builder is not None:
            builder.join(timeout)
            if builder.is_alive():
                return False
        return self.search_mode == "ann"

    # -- the in-memory mirror ----------------------------------------------------------
    def _refresh(self, db: sqlite3.Connection, schema: Schema, version: int) -> Mirror:
        """Bring the mirror up to the snapshot ``db`` reads (``version`` read before it began)."""
        mirror = self._mirror
        if (
            mirror is not None
            and not self._dirty
            and version == self._data_version
            and self._built is None
        ):
            return mirror
        try:
            if mirror is None or mirror.dim != schema.dim:
                mirror = self._load_mirror(db, schema)
            else:
                try:
                    if mirror.last_tomb < _tombstones.tomb_floor(db):  # compacted past what we saw
                        resync_deletions(db, mirror)
                    catch_up(db, mirror, self.path)
                except Reload:
                    mirror = self._load_mirror(db, schema)
            self._maintain_ann(mirror)
        except BaseException:
            self._mirror = None
            raise
        self._mirror = mirror
        self._dirty = False
        self._data_version = version
        return mirror

    def _load_mirror(self, db: sqlite3.Connection, schema: Schema) -> Mirror:
        mirror = Mirror(schema.dim)
        state = _vecfile.state(db)
        if state is not None:
            try:
                load_mapped(db, mirror, self._open_vecfile(state, schema.dim), state, self.path)
            except _vecfile.VecFileError:
                mirror = Mirror(schema.dim)  # read the vectors from SQLite instead
                self._vec_damaged = True  # and rebuild the file before the next search
        mirror.last_tomb = _tombstones.max_tomb(db)
        extra = int(
            db.execute(
                "SELECT count(*) FROM records WHERE rowid > ?", (mirror.last_rowid,)
            ).fetchone()[0]
        )
        mirror.reserve(extra)  # one allocation, not 1.5x growth steps that copy
        mirror._reserve_tail(extra)
        catch_up(db, mirror, self.path)
        self._ann_seen = None
        self._build_failed = False  # a build that failed on the previous mirror may retry
        return mirror

    # -- the vector file ---------------------------------------------------------------
    def _maybe_compact(self, db: sqlite3.Connection, dim: int) -> None:
        if _tombstones.due(db):
            self._compact(db, dim)

    def _compact(self, db: sqlite3.Connection, dim: int) -> None:
        """Compact the tombstones and, with them, drop the deleted rows from the vector
        file (inside a write transaction): the file then knows of every deletion."""
        _tombstones.compact(db)
        state = _vecfile.state(db)
        if state is None:
            return
        try:
            old = self._open_vecfile(state, dim)
            if not old.writable:
                raise _vecfile.VecFileError("read-only")
            rowids = _expand_all(db, state)
        except _vecfile.VecFileError:
            _vecfile.drop_state(db)  # rebuilt from SQLite by the next load
            return
        present = np.fromiter(
            (r for (r,) in db.execute("SELECT rowid FROM records")), dtype=np.int64
        )
        keep = np.flatnonzero(np.isin(rowids, present))
        try:
            self._vec = _vecfile.rewrite(
                db, old, self._uuid, keep, rowids[keep], _tombstones.tomb_floor(db), self.path
            )
        except (OSError, _vecfile.VecFileError):
            _vecfile.drop_state(db)
        old.close()

    def _open_vecfile(self, state: _vecfile.VecState, dim: int) -> _vecfile.VecFile:
        """This handle's open vector file, if it is the one SQLite describes."""
        vf = self._vec
        if vf is None or vf.token != state.token or vf.dim != dim:
            if vf is not None:
                vf.close()
                self._vec = None
            vf = self._vec = _vecfile.open_file(
                self.vec_path, self._uuid, dim, state.token, writable=not self.read_only
            )
        return vf

    def _append_vectors(
        self, db: sqlite3.Connection, schema: Schema, before: int, matrix: NDArray[np.float32]
    ) -> None:
        """Write the rows just inserted (rowids after ``before``) to the vector file, in
        the upsert's transaction. A store without a file gets one when it was empty."""
        n = len(matrix)
        last = _last_rowid(db)
        state = _vecfile.state(db)
        if state is None:
            if db.execute("SELECT 1 FROM records WHERE rowid <= ? LIMIT 1", (before,)).fetchone():
                return  # an older store: its file is built by the next load
            try:
                vf = self._vec = _vecfile.create(self.vec_path, self._uuid, schema.dim)
            except OSError:
                return  # no file beside the store (say, a folder there): SQLite alone
            _vecfile.start(db, vf, _tombstones.tomb_floor(db))
            state = _vecfile.VecState(vf.token, 0)
        try:
            vf = self._open_vecfile(state, schema.dim)
        except _vecfile.VecFileError:
            _vecfile.drop_state(db)  # the file is gone or not ours: rebuilt by the next load
            return
        if vf.writable and last == before + n:
            self._append_missing(db, vf, before, schema.dim)
            _vecfile.append(
                db, vf, np.arange(before + 1, last + 1, dtype=np.int64), matrix, self.path
            )
        # else the rows stay out of the file: readers take them from SQLite, and the next
        # writer that can append adds them first (_append_missing)

    def _append_missing(
        self, db: sqlite3.Connection, vf: _vecfile.VecFile, before: int, dim: int
    ) -> None:
        """Append rows an older lookalike stored without writing them to the file."""
        row = db.execute("SELECT row + n - 1 FROM vecsegs ORDER BY pos DESC LIMIT 1").fetchone()
        covered = int(row[0]) if row else 0
        if covered >= before:
            return
        cursor = db.execute(
            "SELECT rowid, id, vector FROM records WHERE rowid > ? AND rowid <= ? ORDER BY rowid",
            (covered, before),
        )
        while chunk := cursor.fetchmany(FETCH_CHUNK):
            sound = sound_vectors(self.path, chunk, dim)
            if sound:
                rowids = np.array([r[0] for r in sound], dtype=np.int64)
                _vecfile.append(db, vf, rowids, decode_block(sound, dim), self.path)

    def _prepare_vecfile(self, schema: Schema) -> None:
        """Build the vector file from SQLite when it is missing or not the one SQLite
        describes (an older store, a deleted or damaged file). Needs write access."""
        damaged, self._vec_damaged = self._vec_damaged, False
        if damaged:
            self._mirror = None  # loaded again, from the rebuilt file
        with self._translate("open"):
            state = _vecfile.state(self._db)
            if state is not None and not damaged:
                try:
                    self._open_vecfile(state, schema.dim)
                    return
                except _vecfile.VecFileError:
                    pass
            elif self._db.execute("SELECT 1 FROM records LIMIT 1").fetchone() is None:
                return  # an empty store starts its file with its first upsert
        _annfile.remove_stale_temporaries(self.vec_path)
        try:
            with self._transaction("build the vector file") as db:
                state = _vecfile.state(db)
                if state is not None and not damaged:  # built meanwhile by another process?
                    with contextlib.suppress(_vecfile.VecFileError):
                        self._open_vecfile(state, schema.dim)
                        return
                vf = _vecfile.create(self.vec_path, self._uuid, schema.dim)
                _vecfile.start(db, vf, _tombstones.tomb_floor(db))
                self._vec = vf
                self._append_missing(db, vf, _last_rowid(db), schema.dim)
        except (StoreError, OSError):
            pass  # searches read the vectors from SQLite

    # -- the approximate index ---------------------------------------------------------
    def _maintain_ann(self, mirror: Mirror) -> None:
        """Take a finished build, map a newer index file, or start a build, as needed."""
        if not _annfile.wants_ann(self.ann_threshold, mirror.live):
            mirror.ann = None
            return
        with self._built_lock:
            built, self._built = self._built, None
        if built is not None:
            mirror.ann = self._mapped_or(built)
        if not _annfile.stale(mirror):
            return
        seen = _file_id(self.ann_path)
        if seen is not None and seen != self._ann_seen:  # a file this handle has not tried
            self._ann_seen = seen
            ann = _annfile.load(mirror, self.ann_path, self._uuid, self.ann_nprobe)
            if ann is not None and (mirror.ann is None or ann.last_rowid > mirror.ann.last_rowid):
                mirror.ann = ann
                if not _annfile.stale(mirror):
                    return
        if self._builder is not None and (self._builder.is_alive() or self._build_failed):
            return
        snap = _annfile.Snapshot(mirror)
        if mirror.live * mirror.dim <= _SYNC_BUILD_FLOATS:
            mirror.ann = self._mapped_or(self._build_ann(snap))
            return
        self._builder = threading.Thread(
            target=self._build_in_background, args=(snap,), name="lookalike-ann-build", daemon=True
        )
        self._builder.start()

    def _build_ann(self, snap: _annfile.Snapshot) -> IvfIndex:
        """Build an index of the snapshot's rows and save it (when the folder is writable)."""
        ann = _annfile.build(snap, self.ann_nprobe)
        if not self.read_only:
            _annfile.save(self.ann_path, self._uuid, ann, snap.dim)
        return ann

    def _build_in_background(self, snap: _annfile.Snapshot) -> None:
        try:
            built = self._build_ann(snap)
        except Exception:  # noqa: BLE001 - searches stay exact (say, out of memory)
            self._build_failed = True
            return
        with self._built_lock:
            self._built = built
        self._dirty = True

    def _mapped_or(self, ann: IvfIndex) -> IvfIndex:
        """The saved file of ``ann`` mapped (shared with other processes), else ``ann``."""
        try:
            mapped, _ = IvfIndex.load(self.ann_path, {"store": self._uuid, "dim": ann.index.d})
        except (AnnFileError, OSError):
            return ann
        if mapped.last_rowid != ann.last_rowid or mapped.ntotal != ann.ntotal:
            return ann
        mapped.nprobe = ann.nprobe
        self._ann_seen = _file_id(self.ann_path)
        return mapped

    def _finish_ann(self) -> None:
        """Wait for a running build, then build the index if it is still missing or stale."""
        builder = self._builder
        if builder is not None:
            builder.join()
        schema = self.describe()
        if schema is None:
            return
        with self._current("build the index", schema) as (_, mirror):
            builder = self._builder
            if builder is not None and builder.is_alive():
                builder.join()
                self._dirty = True

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
                    self._compact(db, schema.dim)
                self._dirty = True
            if [p for p in problems if not p.endswith("; dropped")]:
                return problems
            self._check_derived(schema, rebuild)
        return problems

    def _check_derived(self, schema: Schema, rebuild: bool) -> None:
        """Verify the derived files in full and rebuild what is damaged (or everything
        with ``rebuild``); read-only stores are only verified, in memory."""
        builder = self._builder
        if builder is not None:
            builder.join()
        if rebuild:
            with self._transaction("check --rebuild") as db:
                _vecfile.drop_state(db)
            for path in (self.ann_path, self.vec_path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        self._mirror = None
        with self._current("check", schema) as (db, mirror):
            sound = mirror.vec is None or _vecfile_matches(db, mirror)
        if not sound:
            if self.read_only:
                with self._snapshot("check") as db:  # searches read SQLite instead
                    mirror = Mirror(schema.dim)
                    mirror.last_tomb = _tombstones.max_tomb(db)
                    catch_up(db, mirror, self.path)
                    self._mirror = mirror
            else:
                with self._transaction("check --rebuild") as db:
                    _vecfile.drop_state(db)
                self._mirror = None
        if self.ann_path.exists():
            try:
                IvfIndex.verify(self.ann_path)
            except (AnnFileError, OSError):
                with contextlib.suppress(OSError):
                    self.ann_path.unlink()
                self._mirror = None
        self._finish_ann()


def _last_rowid(db: sqlite3.Connection) -> int:
    """The highest rowid ever given (AUTOINCREMENT: rowids never go back)."""
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='records'").fetchone()
    return int(row[0]) if row else 0


def _expand_all(db: sqlite3.Connection, state: _vecfile.VecState) -> NDArray[np.int64]:
    return expand(_vecfile.segments(db, 0, state.rows), 0, state.rows)


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns)


def _vecfile_matches(db: sqlite3.Connection, mirror: Mirror) -> bool:
    """Whether every live mapped row equals its vector in SQLite."""
    rowids = mirror.rowids[: mirror.base]
    cursor = db.execute(
        "SELECT rowid, vector FROM records WHERE rowid <= ? ORDER BY rowid",
        (int(rowids[-1]) if len(rowids) else 0,),
    )
    while chunk := cursor.fetchmany(FETCH_CHUNK):
        got = np.array([r[0] for r in chunk], dtype=np.int64)
        pos = np.searchsorted(rowids, got)
        for p, (rowid, blob) in zip(pos.tolist(), chunk):
            if p >= len(rowids) or rowids[p] != rowid or not mirror.alive[p]:
                continue  # damaged (not searched) or not in the file
            if bytes(blob) != mirror.mapped[p].tobytes():
                return False
    return True
