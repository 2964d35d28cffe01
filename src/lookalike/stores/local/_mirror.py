"""The in-memory mirror one process searches, and how it catches up with the file.

Rowids only grow, so new and replaced records are the rows above the last rowid the
mirror saw; deletions are the tombstones above the last one it saw (or, once they were
compacted away, the rowids no longer present).
"""

from __future__ import annotations

import sqlite3
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import _tombstones
from ._columns import Column, Key, column_sql, keys
from ._rows import damage, decode_block, warn_damaged
from ._sqlite import FETCH_CHUNK

__all__ = ["Mirror", "catch_up", "resync_deletions"]


class Mirror:
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
        self.ann: Any = None  # an _ivf.IvfIndex, kept untyped so faiss stays optional
        self.columns: dict[str, Column] = {}
        self.last_rowid = 0
        self.last_tomb = 0
        self.unsaved = 0  # ANN changes not yet written to the derived file

    @property
    def live(self) -> int:
        return self.size - self.dead

    def reserve(self, extra: int) -> None:
        """Room for ``extra`` more positions (grown by 1.5x steps unless asked for more)."""
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
        keys: dict[str, list[Key | None]],
    ) -> None:
        n = len(rowids)
        if not n:
            return
        self.reserve(n)
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


def catch_up(db: sqlite3.Connection, mirror: Mirror, where: object) -> None:
    """Apply the tombstones and read the rows the mirror has not seen yet."""
    dim = mirror.dim
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
        f"{column_sql(names)} FROM records WHERE rowid > ? ORDER BY rowid",
        (mirror.last_rowid,),
    )
    while chunk := cursor.fetchmany(FETCH_CHUNK):
        last = int(chunk[-1][0])
        sound = []
        for row in chunk:
            problem = damage(len(row[2]), row[3], dim)
            if problem is None:
                sound.append(row)
            else:
                warn_damaged(where, row[1], problem)
        if sound:
            rowids = np.array([r[0] for r in sound], dtype=np.int64)
            vectors = decode_block(sound, dim)
            if mirror.ann is not None:
                mirror.ann.add(rowids, vectors)
                mirror.unsaved += len(rowids)
            mirror.append(rowids, vectors, keys(sound, names, 4))
        mirror.last_rowid = max(mirror.last_rowid, last)


def resync_deletions(db: sqlite3.Connection, mirror: Mirror) -> None:
    """Drop from the mirror the rows that are gone, when their tombstones were compacted.

    Reads only the rowids up to the mirror's last one (no vectors), so it costs far
    less than loading the mirror again.
    """
    present = np.fromiter(
        (
            r
            for (r,) in db.execute(
                "SELECT rowid FROM records WHERE rowid <= ? ORDER BY rowid", (mirror.last_rowid,)
            )
        ),
        dtype=np.int64,
    )
    known = mirror.rowids[: mirror.size][mirror.alive[: mirror.size]]
    mirror.remove(np.setdiff1d(known, present, assume_unique=True))
    mirror.last_tomb = _tombstones.max_tomb(db)
