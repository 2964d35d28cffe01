"""Search over the mirror: exact (float32 brute force) or approximate (IVF candidates
re-ranked with the exact vectors); hits read back with their metadata."""

from __future__ import annotations

import json
import math
import sqlite3
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ...filters import NormalizedFilter
from ...types import Hit
from .._common import rows_per_block, top_k, top_k_rows
from ._columns import filter_mask
from ._mirror import Mirror
from ._rows import decode_block, sound_vectors, warn_damaged
from ._sqlite import execute_in

__all__ = ["search"]

_EXACT_FILTER_LIMIT = 50_000  # filtered ANN searches with fewer candidates scan them all

_Found = list[tuple[NDArray[np.int64], NDArray[np.float32]]]  # (rowids, scores) per query


def search(
    db: sqlite3.Connection,
    mirror: Mirror,
    queries: NDArray[np.float32],
    k: int,
    flt: NormalizedFilter | None,
    where: object,
) -> list[list[Hit]]:
    """The ``k`` best hits per query among the records matching ``flt``, best first."""
    nq = queries.shape[0]
    mask = filter_mask(db, mirror, flt) if flt else None
    candidates = mirror.live if mask is None else int(mask.sum())
    if candidates == 0:
        return [[] for _ in range(nq)]
    if mirror.matrix is not None:
        found = _search_exact(mirror, queries, min(k, candidates), mask, candidates)
    else:
        found = _search_ann(db, mirror, queries, k, mask, candidates, where)
    return _hits(db, found, where)


def _search_exact(
    mirror: Mirror,
    queries: NDArray[np.float32],
    k: int,
    mask: NDArray[np.bool_] | None,
    candidates: int,
) -> _Found:
    assert mirror.matrix is not None
    size = mirror.size
    valid = mirror.alive[:size] if mask is None else mask
    rows: NDArray[np.intp] | None = None
    masked: NDArray[np.intp] | None = None
    if candidates == size:
        matrix = mirror.matrix[:size]
    elif candidates * 2 < size:
        rows = np.flatnonzero(valid)
        matrix = mirror.matrix[rows]  # copied once per call, not per block
    else:
        matrix = mirror.matrix[:size]
        masked = np.flatnonzero(~valid)
    out: _Found = []
    step = rows_per_block(matrix.shape[0])
    for start in range(0, queries.shape[0], step):
        scores = queries[start : start + step] @ matrix.T  # (q, n): one row per query
        if masked is not None:
            scores[:, masked] = -np.inf
        best = top_k_rows(scores, k)  # vectorised over the block's queries
        picked = np.take_along_axis(scores, best, axis=1)
        found = mirror.rowids[best if rows is None else rows[best]]
        out += zip(found, picked)
    return out


def _search_ann(
    db: sqlite3.Connection,
    mirror: Mirror,
    queries: NDArray[np.float32],
    k: int,
    mask: NDArray[np.bool_] | None,
    candidates: int,
    where: object,
) -> _Found:
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
    sql = "SELECT rowid, id, vector FROM records WHERE rowid IN ({marks})"
    for cursor in execute_in(db, sql, wanted.tolist()):
        rows = sound_vectors(where, cursor.fetchall(), mirror.dim)
        for row, vec in zip(rows, decode_block(rows, mirror.dim)):
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


def _hits(db: sqlite3.Connection, found: _Found, where: object) -> list[list[Hit]]:
    wanted = sorted({int(r) for rowids, _ in found for r in rowids})
    info: dict[int, tuple[str, str]] = {}
    sql = "SELECT rowid, id, metadata FROM records WHERE rowid IN ({marks})"
    for cursor in execute_in(db, sql, wanted):
        for row, rid, meta in cursor:
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
                warn_damaged(where, got[0], f"unreadable metadata ({exc})")
                continue
            hits.append(Hit.from_metadata(got[0], float(np.clip(s, -1.0, 1.0)), parsed))
        results.append(hits)
    return results
