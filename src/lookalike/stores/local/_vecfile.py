"""The derived vector file ``<store>.vec``: every stored vector as float32, memory-mapped.

A process opening a store maps this file instead of reading every vector out of SQLite,
so opening costs the same at any size and the vectors are shared by every process
through the page cache.

Layout: a 4096-byte header (a magic line, then JSON naming the store's uuid, the
dimension and a random *token*) followed by float32 rows. SQLite says which rows are
valid, in the same transaction as the records themselves: ``meta.vecfile`` holds
``{"token", "rows"}`` and the table ``vecsegs(pos, row, n)`` says that the file's
positions ``pos .. pos+n-1`` hold the vectors of rowids ``row .. row+n-1``. A writer
writes the vectors into the file *before* it commits, so a committed row is always in
the file; rows past ``rows`` (a transaction that never committed) are overwritten by
the next append. A file whose token differs from SQLite's (deleted, replaced, another
store's) is ignored and rebuilt from SQLite, which stays the source of truth.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import sqlite3
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from ...errors import StoreError

__all__ = [
    "HEADER_BYTES",
    "VecFile",
    "VecFileError",
    "VecState",
    "create",
    "drop_state",
    "ensure_table",
    "gather",
    "open_file",
    "rewrite",
    "runs",
    "segments",
    "state",
]

_MAGIC = b"LOOKALIKE-VEC 1\n"
_PREADV = getattr(os, "preadv", None)
# Positional reads and writes (POSIX): without them, no vector file (vectors from SQLite).
SUPPORTED = hasattr(os, "pread") and hasattr(os, "pwrite")
HEADER_BYTES = 4096
_SEGS_SQL = (
    "CREATE TABLE IF NOT EXISTS vecsegs "
    "(pos INTEGER PRIMARY KEY, row INTEGER NOT NULL, n INTEGER NOT NULL)"
)


class VecFileError(Exception):
    """The vector file is missing, damaged or not the one SQLite describes."""


class VecState(NamedTuple):
    """What SQLite says about the vector file: its token, its valid row count, and the
    tombstone floor when it was written (deletions below it are not in the file; a
    floor moved by anything else means deletions the file cannot know of)."""

    token: str
    rows: int
    floor: int = 0


def state(db: sqlite3.Connection) -> VecState | None:
    """The vector file SQLite describes, or None (no file: vectors come from SQLite)."""
    row = db.execute("SELECT value FROM meta WHERE key='vecfile'").fetchone()
    if row is None:
        return None
    try:
        got = json.loads(row[0])
        return VecState(str(got["token"]), int(got["rows"]), int(got.get("floor", 0)))
    except (ValueError, KeyError, TypeError):
        return None


def _set_state(db: sqlite3.Connection, token: str, rows: int, floor: int) -> None:
    db.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES ('vecfile', ?)",
        (json.dumps({"token": token, "rows": rows, "floor": floor}),),
    )


def ensure_table(db: sqlite3.Connection) -> None:
    """Create the segments table (inside a write transaction); older stores lack it."""
    db.execute(_SEGS_SQL)


def drop_state(db: sqlite3.Connection) -> None:
    """Forget the vector file (inside a write transaction): it is rebuilt from SQLite."""
    db.execute("DELETE FROM meta WHERE key='vecfile'")
    if _has_segs(db):
        db.execute("DELETE FROM vecsegs")


def _has_segs(db: sqlite3.Connection) -> bool:
    return (
        db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='vecsegs'").fetchone()
        is not None
    )


def segments(db: sqlite3.Connection, from_pos: int, rows: int) -> list[tuple[int, int, int]]:
    """(pos, rowid, n) of the segments at or after position ``from_pos``, below ``rows``."""
    if not _has_segs(db):
        return []
    return [
        (int(p), int(r), int(n))
        for p, r, n in db.execute(
            "SELECT pos, row, n FROM vecsegs WHERE pos >= ? AND pos < ? ORDER BY pos",
            (from_pos, rows),
        )
    ]


def runs(rowids: NDArray[np.int64]) -> list[tuple[int, int, int]]:
    """Split sorted ``rowids`` into runs of consecutive values: (index, first rowid, n)."""
    if not len(rowids):
        return []
    breaks = np.flatnonzero(np.diff(rowids) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(rowids)]])
    return [(int(s), int(rowids[s]), int(e - s)) for s, e in zip(starts, ends)]


def _header(store_uuid: str, dim: int, token: str) -> bytes:
    blob = _MAGIC + json.dumps({"store": store_uuid, "dim": dim, "token": token}).encode()
    return blob.ljust(HEADER_BYTES, b" ")


class VecFile:
    """An open vector file: positional writes, and read-only maps of its first rows."""

    def __init__(self, path: Path, fd: int, dim: int, token: str, writable: bool) -> None:
        self.path = path
        self.fd = fd
        self.dim = dim
        self.token = token
        self.writable = writable
        self.row_bytes = dim * 4

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:  # pragma: no cover - closing a file descriptor hardly fails
            pass

    def write(self, pos: int, vectors: NDArray[np.float32], where: object) -> None:
        """Write ``vectors`` at position ``pos``; an OSError becomes a StoreError."""
        data = np.ascontiguousarray(vectors, dtype=np.float32).tobytes()
        offset = HEADER_BYTES + pos * self.row_bytes
        try:
            view = memoryview(data)
            while view:
                done = os.pwrite(self.fd, view, offset)
                view, offset = view[done:], offset + done
        except OSError as exc:
            raise StoreError(
                f"{where}: cannot write the vector file {self.path}: {exc.strerror or exc}. "
                "The disk may be full: free some space and retry; what was committed "
                "before is intact.",
                backend="LocalStore",
            ) from exc

    def map(self, rows: int) -> NDArray[np.float32]:
        """The first ``rows`` rows, memory-mapped read-only (no copy)."""
        if rows == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        size = HEADER_BYTES + rows * self.row_bytes
        try:
            if os.fstat(self.fd).st_size < size:
                raise VecFileError(f"{self.path} is shorter than the {rows} rows SQLite records")
            mm = mmap.mmap(self.fd, size, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise VecFileError(f"cannot map {self.path}: {exc}") from exc
        with_advice = getattr(mm, "madvise", None)
        if with_advice is not None and hasattr(mmap, "MADV_RANDOM"):
            # searches touch a few rows each: no read-ahead of the rest
            try:
                with_advice(mmap.MADV_RANDOM)
            except OSError:  # pragma: no cover - advice only
                pass
        return np.frombuffer(
            mm, dtype=np.float32, count=rows * self.dim, offset=HEADER_BYTES
        ).reshape(rows, self.dim)


def gather(vf: VecFile, pos: NDArray[np.intp]) -> NDArray[np.float32]:
    """Rows at positions ``pos`` read with ``pread`` (one call per run of consecutive
    positions) into RAM: the page cache serves them without mapping them into this
    process, whose RSS stays that of the rows read."""
    out = np.empty((len(pos), vf.dim), dtype=np.float32)
    if not len(pos):
        return out
    order = np.argsort(pos, kind="stable")
    ordered = np.asarray(pos)[order]
    breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
    starts = np.concatenate([[0], breaks]).tolist()
    ends = np.concatenate([breaks, [len(ordered)]]).tolist()
    rows = memoryview(out.reshape(-1)).cast("B")  # type: ignore[arg-type]
    for s, e in zip(starts, ends):
        want = (e - s) * vf.row_bytes
        offset = HEADER_BYTES + int(ordered[s]) * vf.row_bytes
        if e - s == 1 and _PREADV is not None:  # straight into its row of ``out``
            at = int(order[s]) * vf.row_bytes
            try:
                got = _PREADV(vf.fd, [rows[at : at + want]], offset)
            except OSError as exc:
                raise VecFileError(f"cannot read {vf.path}: {exc.strerror or exc}") from exc
            if got != want:
                raise VecFileError(f"{vf.path} is shorter than SQLite records")
            continue
        try:
            data = os.pread(vf.fd, want, offset)
        except OSError as exc:
            raise VecFileError(f"cannot read {vf.path}: {exc.strerror or exc}") from exc
        if len(data) != want:
            raise VecFileError(f"{vf.path} is shorter than SQLite records")
        out[order[s:e]] = np.frombuffer(data, dtype=np.float32).reshape(e - s, vf.dim)
    return out


def create(path: Path, store_uuid: str, dim: int) -> VecFile:
    """A new empty vector file at ``path`` (replacing any file there), with a new token;
    OSError when it cannot be written."""
    if not SUPPORTED:
        raise OSError("positional file I/O is not available on this platform")
    token = uuid.uuid4().hex
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(_header(store_uuid, dim, token))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fd = os.open(path, os.O_RDWR)
    return VecFile(path, fd, dim, token, writable=True)


def open_file(path: Path, store_uuid: str, dim: int, token: str, writable: bool) -> VecFile:
    """Open the vector file SQLite describes; VecFileError if it is not that file."""
    if not SUPPORTED:
        raise VecFileError("positional file I/O is not available on this platform")
    try:
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    except OSError as exc:
        if writable and not isinstance(exc, FileNotFoundError):
            return open_file(path, store_uuid, dim, token, writable=False)
        raise VecFileError(f"cannot open {path}: {exc.strerror or exc}") from exc
    try:
        try:
            head = os.pread(fd, HEADER_BYTES, 0)
        except OSError as exc:
            raise VecFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if len(head) < HEADER_BYTES or not head.startswith(_MAGIC):
            raise VecFileError(f"{path} is not a lookalike vector file")
        try:
            meta: Any = json.loads(head[len(_MAGIC) :].decode().strip())
        except ValueError as exc:
            raise VecFileError(f"{path}: unreadable header") from exc
        if not isinstance(meta, dict):
            raise VecFileError(f"{path}: unreadable header")
        expect = {"store": store_uuid, "dim": dim, "token": token}
        for key, value in expect.items():
            if meta.get(key) != value:
                raise VecFileError(f"{path}: {key} is {meta.get(key)!r}, expected {value!r}")
    except BaseException:
        os.close(fd)
        raise
    return VecFile(path, fd, dim, token, writable)


def append(
    db: sqlite3.Connection,
    vf: VecFile,
    rowids: NDArray[np.int64],
    vectors: NDArray[np.float32],
    where: object,
) -> None:
    """Write ``vectors`` (of sorted ``rowids``) at the end of the valid rows and record
    them in SQLite (inside the write transaction that stores the records)."""
    current = state(db)
    if current is None or current.token != vf.token:
        raise VecFileError("the vector file changed")
    vf.write(current.rows, vectors, where)
    ensure_table(db)
    db.executemany(
        "INSERT INTO vecsegs(pos, row, n) VALUES (?, ?, ?)",
        [(current.rows + i, row, n) for i, row, n in runs(rowids)],
    )
    _set_state(db, vf.token, current.rows + len(rowids), current.floor)


def rewrite(
    db: sqlite3.Connection,
    old: VecFile,
    store_uuid: str,
    positions: NDArray[np.intp],
    rowids: NDArray[np.int64],
    floor: int,
    where: object,
) -> VecFile:
    """Replace the file by one holding only the rows at ``positions`` (of sorted
    ``rowids``), recorded in SQLite with the tombstone ``floor`` (inside a write
    transaction: if it rolls back, the token no longer matches and the file is rebuilt)."""
    vf = create(old.path.with_name(f"{old.path.name}.{os.getpid()}.new"), store_uuid, old.dim)
    try:
        for start_at in range(0, len(positions), 4096):
            vf.write(start_at, gather(old, positions[start_at : start_at + 4096]), where)
        os.replace(vf.path, old.path)
    except BaseException:
        vf.close()
        with contextlib.suppress(OSError):
            vf.path.unlink()
        raise
    vf.path = old.path
    drop_state(db)
    ensure_table(db)
    db.executemany(
        "INSERT INTO vecsegs(pos, row, n) VALUES (?, ?, ?)",
        runs(np.asarray(rowids, dtype=np.int64)),
    )
    _set_state(db, vf.token, len(positions), floor)
    return vf


def start(db: sqlite3.Connection, vf: VecFile, floor: int) -> None:
    """Record a new, empty vector file in SQLite (inside a write transaction)."""
    drop_state(db)
    ensure_table(db)
    _set_state(db, vf.token, 0, floor)
