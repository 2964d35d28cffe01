"""Filter columns: each filtered field dictionary-encoded in memory (a code per mirror
position), so a filter is a few integer comparisons over numpy arrays, not a JSON scan."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ...filters import NormalizedFilter
from ._rows import damage, warn_damaged
from ._sqlite import FETCH_CHUNK

if TYPE_CHECKING:
    from ._mirror import Mirror

__all__ = ["Column", "Key", "column_sql", "filter_mask", "keys"]

Key = tuple[str, Any]


def _key_from_json(value: Any, kind: str | None) -> Key | None:
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


def _key_from_python(value: Any) -> Key | None:
    # Keys keep True from matching 1 and "1" from matching 1, as filters.matches does.
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, (int, float)):
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    return None


class Column:
    """One filter field, dictionary-encoded: a code per mirror position (-1: no value)."""

    def __init__(self, capacity: int) -> None:
        self.codes = np.full(capacity, -1, dtype=np.int32)
        self.lookup: dict[Key, int] = {}

    def code(self, key: Key | None) -> int:
        if key is None:
            return -1
        found = self.lookup.get(key)
        if found is None:
            found = self.lookup[key] = len(self.lookup)
        return found


def column_sql(names: Sequence[str]) -> str:
    """Extra SELECT columns that read the fields ``names`` (see :func:`keys`)."""
    parts = ["CASE WHEN json_valid(metadata) THEN NULL ELSE metadata END"] if names else []
    for name in names:  # field names are identifiers, safe inside the JSON path
        parts.append(f"json_extract(CASE WHEN json_valid(metadata) THEN metadata END, '$.{name}')")
        parts.append(f"json_type(CASE WHEN json_valid(metadata) THEN metadata END, '$.{name}')")
    return "".join(", " + p for p in parts)


def keys(rows: Sequence[Sequence[Any]], names: Sequence[str], first: int) -> dict[str, list[Key | None]]:
    """Filter keys of ``names`` from rows laid out by :func:`column_sql` at ``first``."""
    out: dict[str, list[Key | None]] = {name: [] for name in names}
    for row in rows:
        raw = row[first] if names else None
        parsed: Any = None
        if raw is not None:  # not JSON SQLite reads (e.g. NaN): let Python parse it
            with contextlib.suppress(ValueError):
                parsed = json.loads(raw)
        for i, name in enumerate(names):
            if raw is None:
                out[name].append(_key_from_json(row[first + 1 + 2 * i], row[first + 2 + 2 * i]))
            else:
                value = parsed.get(name) if isinstance(parsed, dict) else None
                out[name].append(_key_from_python(value))
    return out


def _column(db: sqlite3.Connection, mirror: Mirror, name: str, where: object) -> Column:
    col = mirror.columns.get(name)
    if col is None:  # built on the first filter on this field, then kept in sync
        col = Column(len(mirror.rowids))
        known = mirror.rowids[: mirror.size]
        cursor = db.execute(
            f"SELECT rowid{column_sql([name])} FROM records WHERE rowid <= ? ORDER BY rowid",
            (mirror.last_rowid,),
        )
        while chunk := cursor.fetchmany(FETCH_CHUNK):
            _warn_unreadable(db, chunk, where)
            rowids = np.array([r[0] for r in chunk], dtype=np.int64)
            pos = np.minimum(np.searchsorted(known, rowids), max(len(known) - 1, 0))
            present = known[pos] == rowids if len(known) else np.zeros(len(rowids), bool)
            codes = [col.code(k) for k in keys(chunk, [name], 1)[name]]
            col.codes[pos[present]] = np.array(codes, dtype=np.int32)[present]
        mirror.columns[name] = col
    return col


def _warn_unreadable(db: sqlite3.Connection, rows: Sequence[Sequence[Any]], where: object) -> None:
    """Warn of the rows (laid out by :func:`column_sql` at 1) whose metadata is damaged."""
    for row in rows:
        if row[1] is not None and (problem := damage(0, row[1], 0)) is not None:
            found = db.execute("SELECT id FROM records WHERE rowid = ?", (row[0],)).fetchone()
            warn_damaged(where, found[0] if found else "?", problem)


def filter_mask(
    db: sqlite3.Connection, mirror: Mirror, flt: NormalizedFilter, where: object = None
) -> NDArray[np.bool_]:
    """Which mirror positions are alive and match ``flt``."""
    mask = mirror.alive[: mirror.size].copy()
    for name, values in flt.items():
        col = _column(db, mirror, name, where)
        wanted = [
            c
            for v in values
            if (key := _key_from_python(v)) is not None and (c := col.lookup.get(key)) is not None
        ]
        if not wanted:
            mask[:] = False
            break
        codes = col.codes[: mirror.size]
        mask &= codes == wanted[0] if len(wanted) == 1 else np.isin(codes, wanted)
    return mask
