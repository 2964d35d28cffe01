"""The mirror one process searches, and how it catches up with the file.

Vectors are not read into memory: positions below ``base`` are rows of the memory-mapped
vector file (``_vecfile``), and only rows the file does not hold (a store opened
read-only without one, rows written by an older lookalike) are kept in a RAM ``tail``.
Rowids only grow, so new and replaced records are the rows above the last rowid the
mirror saw; deletions are the tombstones above the last one it saw (or, once they were
compacted away, the rowids no longer present).
"""

from __future__ import annotations

import sqlite3
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import _tombstones, _vecfile
from ._columns import Column, Key, column_sql, keys
from ._rows import damage, decode_block, warn_damaged
from ._sqlite import FETCH_CHUNK

__all__ = ["Mirror", "Reload", "catch_up", "expand", "load_mapped", "resync_deletions"]

_SPOT_CHECKS = 4  # rows compared with SQLite when a vector file is opened


class Reload(Exception):
    """The vector file was replaced or grew under a RAM tail: load the mirror again."""


class Mirror:
    """What one process keeps in memory to search a LocalStore.

    Positions are append-only and sorted by rowid; deleted rows are masked out (and, for
    rows held in RAM, compacted away once they are a quarter of the rows). ``ann`` is
    the approximate index (an ``_ivf.IvfIndex``) or None for exact search; rows above
    ``ann.last_rowid`` are not in it and are searched exactly.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.size = 0
        self.dead = 0
        self.rowids = np.zeros(0, dtype=np.int64)
        self.alive = np.zeros(0, dtype=bool)
        self.mapped: NDArray[np.float32] = np.zeros((0, dim), dtype=np.float32)
        self.tail: NDArray[np.float32] = np.zeros((0, dim), dtype=np.float32)
        self.vec: _vecfile.VecFile | None = None
        self.ann: Any = None  # an _ivf.IvfIndex, kept untyped so faiss stays optional
        self.columns: dict[str, Column] = {}
        self.last_rowid = 0
        self.last_tomb = 0
        self._bitmap: Any = None  # cached allowed-rowids bitmap of the ANN part

    @property
    def base(self) -> int:
        """Positions below this are rows of the mapped vector file."""
        return len(self.mapped)

    @property
    def live(self) -> int:
        return self.size - self.dead

    @property
    def matrix(self) -> NDArray[np.float32]:
        """Every position's vector, (size, dim): the mapped file itself when it holds all."""
        if self.size == self.base:
            return self.mapped
        if self.base == 0:
            return self.tail[: self.size]
        return np.concatenate([self.mapped, self.tail[: self.size - self.base]])

    def rows(self, pos: NDArray[np.intp]) -> NDArray[np.float32]:
        """The vectors at positions ``pos`` (a copy). Rows of the vector file are read
        with ``pread``, not through the map: touching scattered rows of a map would
        bring whole page-cache folios into this process's RSS."""
        pos = np.asarray(pos, dtype=np.intp)
        if self.vec is not None and self.size == self.base:
            return _vecfile.gather(self.vec, pos)
        out = np.empty((len(pos), self.dim), dtype=np.float32)
        low = pos < self.base
        if self.vec is not None:
            out[low] = _vecfile.gather(self.vec, pos[low])
        out[~low] = self.tail[pos[~low] - self.base]
        return out

    def reserve(self, extra: int) -> None:
        """Room for ``extra`` more positions (grown by 1.5x steps unless asked for more)."""
        needed = self.size + extra
        capacity = len(self.rowids)
        if needed > capacity:
            capacity = max(needed, int(capacity * 1.5) + 1024)
            rowids = np.zeros(capacity, dtype=np.int64)
            rowids[: self.size] = self.rowids[: self.size]
            alive = np.zeros(capacity, dtype=bool)
            alive[: self.size] = self.alive[: self.size]
            self.rowids, self.alive = rowids, alive
            for col in self.columns.values():
                codes = np.full(capacity, -1, dtype=np.int32)
                codes[: self.size] = col.codes[: self.size]
                col.codes = codes

    def _reserve_tail(self, extra: int) -> None:
        used = self.size - self.base
        if used + extra > len(self.tail):
            capacity = max(used + extra, int(len(self.tail) * 1.5) + 1024)
            tail = np.empty((capacity, self.dim), dtype=np.float32)
            tail[:used] = self.tail[:used]
            self.tail = tail

    def append(
        self,
        rowids: NDArray[np.int64],
        vectors: NDArray[np.float32],
        keys: dict[str, list[Key | None]],
    ) -> None:
        """Add rows held in RAM (after every mapped row)."""
        n = len(rowids)
        if not n:
            return
        self.reserve(n)
        self._reserve_tail(n)
        used = self.size - self.base
        self.tail[used : used + n] = vectors
        self._add_positions(rowids, keys)

    def extend_mapped(
        self,
        mapped: NDArray[np.float32],
        rowids: NDArray[np.int64],
        keys: dict[str, list[Key | None]],
    ) -> None:
        """The vector file grew: ``mapped`` maps all its rows, ``rowids`` are the new ones."""
        if self.size != self.base:  # pragma: no cover - callers reload instead
            raise Reload()
        self.reserve(len(rowids))
        self.mapped = mapped
        self._add_positions(rowids, keys)

    def _add_positions(self, rowids: NDArray[np.int64], keys: dict[str, list[Key | None]]) -> None:
        end = self.size + len(rowids)
        self.rowids[self.size : end] = rowids
        self.alive[self.size : end] = True
        for name, col in self.columns.items():
            col.codes[self.size : end] = [col.code(k) for k in keys[name]]
        self.size = end
        self.last_rowid = max(self.last_rowid, int(rowids[-1]))
        self._bitmap = None

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
        self._bitmap = None
        if self.base == 0 and self.dead > 1024 and self.dead * 4 > self.size:
            self._compact()

    def _compact(self) -> None:
        keep = np.flatnonzero(self.alive[: self.size])
        self.rowids = self.rowids[keep]
        self.alive = np.ones(len(keep), dtype=bool)
        self.tail = self.tail[keep]
        for col in self.columns.values():
            col.codes = col.codes[keep]
        self.size = len(keep)
        self.dead = 0


def expand(segs: list[tuple[int, int, int]], start: int, stop: int) -> NDArray[np.int64]:
    """The rowids of positions ``start .. stop-1`` from segments that must tile them."""
    rowids = np.empty(stop - start, dtype=np.int64)
    at = start
    for pos, row, n in segs:
        if pos != at or pos + n > stop:
            raise _vecfile.VecFileError("the vector file's segments do not tile its rows")
        rowids[pos - start : pos - start + n] = np.arange(row, row + n, dtype=np.int64)
        at = pos + n
    if at != stop or (len(rowids) > 1 and not (np.diff(rowids) > 0).all()):
        raise _vecfile.VecFileError("the vector file's segments do not tile its rows")
    return rowids


def load_mapped(
    db: sqlite3.Connection,
    mirror: Mirror,
    vf: _vecfile.VecFile,
    st: _vecfile.VecState,
    where: object,
) -> None:
    """Fill an empty ``mirror`` from the vector file ``vf`` that SQLite describes as ``st``.

    Reads the segments and which rowids are present with a sound vector (no vectors),
    maps the file and compares a few rows with SQLite; VecFileError when it is not the
    file SQLite describes.
    """
    rowids = expand(_vecfile.segments(db, 0, st.rows), 0, st.rows)
    last = int(rowids[-1]) if len(rowids) else 0
    dim = mirror.dim
    if st.floor == _tombstones.tomb_floor(db):
        # every deletion since the file was written is a tombstone: no table scan
        gone = np.array([r for (r,) in db.execute("SELECT row FROM tombstones")], dtype=np.int64)
        alive = ~np.isin(rowids, gone)
    else:  # tombstones compacted by something else: read which rows are present
        alive = np.isin(rowids, _sound_rowids(db, dim, 0, last, where), assume_unique=True)
    mapped = vf.map(st.rows)
    _spot_check(db, mapped, rowids, alive, dim)
    mirror.vec = vf
    mirror.mapped = mapped
    mirror.rowids = rowids
    mirror.alive = alive.astype(bool)
    mirror.size = len(rowids)
    mirror.dead = int(len(rowids) - alive.sum())
    mirror.last_rowid = last


def _spot_check(
    db: sqlite3.Connection,
    mapped: NDArray[np.float32],
    rowids: NDArray[np.int64],
    alive: NDArray[np.bool_],
    dim: int,
) -> None:
    """Compare a few live rows (the first, the last, some between) with SQLite."""
    live = np.flatnonzero(alive)
    if not len(live):
        return
    rng = np.random.default_rng(len(live))
    picks = {int(live[0]), int(live[-1])}
    picks.update(int(p) for p in rng.choice(live, size=min(len(live), _SPOT_CHECKS), replace=False))
    for p in sorted(picks):
        row = db.execute("SELECT vector FROM records WHERE rowid = ?", (int(rowids[p]),)).fetchone()
        if row is None or len(row[0]) != dim * 4:
            continue
        if bytes(row[0]) != mapped[p].tobytes():
            raise _vecfile.VecFileError(f"row {p} of the vector file differs from SQLite")


def catch_up(db: sqlite3.Connection, mirror: Mirror, where: object) -> None:
    """Take in what was committed since the mirror last looked: rows the vector file
    gained, rows only SQLite holds (read into RAM), tombstones. Raises Reload when the
    mirror must be loaded again (the vector file was replaced)."""
    dim = mirror.dim
    names = list(mirror.columns)
    if mirror.vec is not None:
        st = _vecfile.state(db)
        if st is None or st.token != mirror.vec.token or st.rows < mirror.base:
            raise Reload()
        if st.rows > mirror.base:
            if mirror.size != mirror.base:
                raise Reload()
            try:
                new = expand(_vecfile.segments(db, mirror.base, st.rows), mirror.base, st.rows)
                mapped = mirror.vec.map(st.rows)
            except _vecfile.VecFileError as exc:
                raise Reload() from exc
            # rows replaced or deleted since they were appended are not alive, even
            # when their tombstones were compacted away
            low, high = int(mirror.last_rowid), int(new[-1])
            fine = np.isin(new, _sound_rowids(db, dim, low, high, where))
            got = _keys_between(db, names, low, high)
            mirror.extend_mapped(mapped, new, {n: [got[n].get(int(r)) for r in new] for n in names})
            mirror.alive[mirror.size - len(new) : mirror.size] = fine
            mirror.dead += int(len(new) - fine.sum())
    dead = db.execute(
        "SELECT seq, row FROM tombstones WHERE seq > ? ORDER BY seq", (mirror.last_tomb,)
    ).fetchall()
    if dead:
        mirror.remove(np.array([r for _, r in dead], dtype=np.int64))
        mirror.last_tomb = int(dead[-1][0])
    # Rows the vector file does not hold. The 4th column is the metadata only when
    # SQLite does not read it as a JSON object.
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
            mirror.append(rowids, decode_block(sound, dim), keys(sound, names, 4))
        mirror.last_rowid = max(mirror.last_rowid, last)


def _sound_rowids(
    db: sqlite3.Connection, dim: int, low: int, high: int, where: object
) -> NDArray[np.int64]:
    """The rowids in ``(low, high]`` of records that are not damaged (others warned).

    Reads neither the vectors (their length is in the row header) nor metadata that
    SQLite reads as a JSON object.
    """
    cursor = db.execute(
        "SELECT rowid, length(vector), CASE WHEN json_valid(metadata) AND "
        "json_type(metadata) = 'object' THEN NULL ELSE metadata END "
        "FROM records WHERE rowid > ? AND rowid <= ? ORDER BY rowid",
        (low, high),
    )
    sound: list[NDArray[np.int64]] = []
    while chunk := cursor.fetchmany(FETCH_CHUNK):
        rows = np.array([r[0] for r in chunk], dtype=np.int64)
        ok = np.array([r[1] == dim * 4 and r[2] is None for r in chunk], dtype=bool)
        for i in np.flatnonzero(~ok).tolist():
            problem = damage(chunk[i][1], chunk[i][2], dim)
            if problem is None:
                ok[i] = True  # JSON that Python reads, SQLite does not (NaN)
            else:
                row = db.execute(
                    "SELECT id FROM records WHERE rowid = ?", (chunk[i][0],)
                ).fetchone()
                warn_damaged(where, row[0] if row else "?", problem)
        sound.append(rows[ok])
    return np.concatenate(sound) if sound else np.zeros(0, dtype=np.int64)


def _keys_between(
    db: sqlite3.Connection, names: list[str], low: int, high: int
) -> dict[str, dict[int, Key | None]]:
    """Filter keys of the fields ``names`` for rowids in ``(low, high]``."""
    out: dict[str, dict[int, Key | None]] = {n: {} for n in names}
    if not names:
        return out
    cursor = db.execute(
        f"SELECT rowid{column_sql(names)} FROM records WHERE rowid > ? AND rowid <= ? ORDER BY rowid",
        (low, high),
    )
    while chunk := cursor.fetchmany(FETCH_CHUNK):
        got = keys(chunk, names, 1)
        for n in names:
            out[n].update(zip((int(r[0]) for r in chunk), got[n]))
    return out


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
