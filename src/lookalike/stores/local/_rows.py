"""Stored rows read back: a damaged row (wrong vector size, unreadable metadata) is skipped
with a :class:`~lookalike.errors.DamagedRecordWarning`, never returned or searched."""

from __future__ import annotations

import json
import sqlite3
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ...errors import DamagedRecordWarning
from ...types import Record
from ._sqlite import execute_in

__all__ = ["damage", "decode_block", "delete_records", "record", "sound_vectors", "warn_damaged"]


def damage(size: int, meta: str | None, dim: int) -> str | None:
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


def warn_damaged(where: object, rid: str, problem: str) -> None:
    warnings.warn(
        f"{where}: record {rid!r} is damaged ({problem}) and was skipped; "
        "'lookalike check --fix' drops it, re-indexing its file replaces it",
        DamagedRecordWarning,
        stacklevel=4,
    )


def record(where: object, rid: str, blob: bytes, meta: str, dim: int) -> Record | None:
    """A stored row as a Record, or None (with a warning) when it is damaged."""
    problem = damage(len(blob), meta, dim)
    if problem is not None:
        warn_damaged(where, rid, problem)
        return None
    return Record(rid, np.frombuffer(blob, dtype=np.float32).copy(), json.loads(meta))


def decode_block(rows: Sequence[Sequence[Any]], dim: int) -> NDArray[np.float32]:
    """Rows of (rowid, id, vector, ...) with sound vectors -> an (n, dim) float32 matrix."""
    if not rows:
        return np.zeros((0, dim), dtype=np.float32)
    return np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), dim)


def sound_vectors(where: object, rows: Sequence[Sequence[Any]], dim: int) -> list[Sequence[Any]]:
    """Rows of (rowid, id, vector, ...) whose vector has the right size (others warned)."""
    sound = []
    for row in rows:
        if len(row[2]) == dim * 4:
            sound.append(row)
        else:
            warn_damaged(where, row[1], f"vector of {len(row[2])} bytes, expected {dim * 4}")
    return sound


def delete_records(db: sqlite3.Connection, ids: Sequence[str]) -> int:
    """Delete the records ``ids`` (inside a write transaction); return how many were there."""
    sql = "DELETE FROM records WHERE id IN ({marks})"
    return sum(cursor.rowcount for cursor in execute_in(db, sql, ids))
