"""Search over the mirror: exact (float32 brute force over the mapped vectors) or
approximate (IVF candidates re-ranked with the exact vectors); hits read back with their
metadata."""

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
from ._ivf import Bitmap
from ._mirror import Mirror
from ._rows import warn_damaged
from ._sqlite import execute_in

__all__ = ["search"]

# On the ANN path, filtered searches with at most this many matches read and score them
# all exactly; up to _ALL_LISTS_LIMIT matches their 8-bit codes are read from the mapped
# index and scored (an index built in memory visits every list, scoring only the
# matches); above it, the index probes proportionally more lists than unfiltered searches.
_EXACT_FILTER_LIMIT = 256
_ALL_LISTS_LIMIT = 50_000

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
    mask = filter_mask(db, mirror, flt, where) if flt else None
    candidates = mirror.live if mask is None else int(np.count_nonzero(mask))
    if candidates == 0:
        return [[] for _ in range(nq)]
    if mirror.ann is None:
        found = _search_exact(mirror, queries, min(k, candidates), mask, candidates)
    elif mask is not None and candidates <= _EXACT_FILTER_LIMIT:
        found = _search_rows(mirror, queries, k, np.flatnonzero(mask))
    else:
        found = _search_ann(mirror, queries, k, mask, candidates)
    return _hits(db, mirror, found, where)


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
    mirror: Mirror,
    queries: NDArray[np.float32],
    k: int,
    mask: NDArray[np.bool_] | None,
    candidates: int,
) -> _Found:
    """IVF candidates for the rows the index holds, exact scores for the rows written
    after it was built; all re-ranked with the float32 vectors.

    A filter's matches (up to ``_ALL_LISTS_LIMIT``) are not searched through the lists:
    their own 8-bit codes are read from the mapped index and scored, and the best
    ``_filter_pool(k)`` re-ranked, so no match is missed by the lists probed."""
    ann = mirror.ann
    size = mirror.size
    rowids = mirror.rowids[:size]
    valid = mirror.alive[:size] if mask is None else mask
    split = int(np.searchsorted(rowids, ann.last_rowid, side="right"))
    inside = int(np.count_nonzero(valid[:split]))
    need = min(k, candidates)
    pool = _pool(k) if mask is None else _filter_pool(k)  # re-ranked with float32 vectors
    nq = queries.shape[0]
    ids = np.full((nq, 0), -1, dtype=np.int64)
    extra = np.zeros(0, dtype=np.intp)  # matches the index does not hold: exact
    if inside and mask is not None and candidates <= _ALL_LISTS_LIMIT and ann.has_codes():
        matched = np.flatnonzero(valid[:split])
        ids, missing = ann.best_of(queries, rowids[matched], pool)
        if len(missing):
            extra = matched[np.isin(rowids[matched], missing)]
    elif inside:
        nprobe = ann.nprobe
        if mask is None:
            allowed = _unfiltered_bitmap(mirror, split, inside)
        else:
            allowed = Bitmap(rowids[:split][valid[:split]])
            if candidates <= _ALL_LISTS_LIMIT:
                nprobe = ann.nlist
            else:
                nprobe = min(ann.nlist, math.ceil(nprobe * mirror.live / candidates))
        _, ids = ann.search(queries, min(pool, inside), nprobe, allowed)
        short = [j for j in range(nq) if int((ids[j] >= 0).sum()) < min(need, inside)]
        if short and nprobe < ann.nlist:  # never return fewer hits than there are matches
            _, ids[short] = ann.search(queries[short], min(pool, inside), ann.nlist, allowed)
    # written after the index (or, never expected, missing from it): scored exactly
    delta = np.concatenate([extra, np.flatnonzero(valid[split:]) + split])
    delta_scores = mirror.rows(delta) @ queries.T if len(delta) else None
    out = []
    for j in range(nq):
        got = ids[j][ids[j] >= 0]
        pos = np.searchsorted(rowids, got)
        ok = pos < size
        pos = pos[ok]
        pos = pos[(rowids[pos] == got[ok]) & valid[pos]]
        exact = mirror.rows(pos) @ queries[j]
        if delta_scores is not None:
            pos = np.concatenate([pos, delta])
            exact = np.concatenate([exact, delta_scores[:, j]])
        best = top_k(exact, min(k, len(pos)))
        out.append((rowids[pos[best]], exact[best]))
    return out


def _pool(k: int) -> int:
    """Candidates of an unfiltered search re-ranked with their float32 vectors (each
    read with a ``pread``): at 100k recall@10 was the same with 15 as with 40."""
    return max(2 * k, k + 10)


def _filter_pool(k: int) -> int:
    """Matches re-ranked with their float32 vectors after scoring their 8-bit codes:
    generous, as filtered results must equal exact ones (recall@10 was 1.000 on the
    benchmark with 15: docs/performance.md)."""
    return max(4 * k, k + 30)


def _search_rows(
    mirror: Mirror, queries: NDArray[np.float32], k: int, positions: NDArray[np.intp]
) -> _Found:
    """Exact scores of the rows at ``positions`` (a few: read, not mapped)."""
    scores = mirror.rows(positions) @ queries.T
    out = []
    for j in range(queries.shape[0]):
        best = top_k(scores[:, j], min(k, len(positions)))
        out.append((mirror.rowids[positions[best]], scores[best, j]))
    return out


def _unfiltered_bitmap(mirror: Mirror, split: int, inside: int) -> Bitmap | None:
    """The rows the index may return, when it holds rows that are gone (else None)."""
    if mirror.ann.ntotal == inside:
        return None
    key = (mirror.size, mirror.dead, split, id(mirror.ann))
    cached = mirror._bitmap
    if cached is None or cached[0] != key:
        rowids = mirror.rowids[:split]
        cached = (key, Bitmap(rowids[mirror.alive[:split]]))
        mirror._bitmap = cached
    bitmap: Bitmap = cached[1]
    return bitmap


def _hits(db: sqlite3.Connection, mirror: Mirror, found: _Found, where: object) -> list[list[Hit]]:
    """Read the hits' ids and metadata; rows found damaged (a vector of the wrong size
    or metadata that is not a JSON object) are skipped with a warning and masked."""
    wanted = sorted({int(r) for rowids, _ in found for r in rowids})
    info: dict[int, tuple[str, str, int]] = {}
    sql = "SELECT rowid, id, metadata, length(vector) FROM records WHERE rowid IN ({marks})"
    for cursor in execute_in(db, sql, wanted):
        for row, rid, meta, size in cursor:
            info[int(row)] = (rid, meta, size)
    results = []
    damaged: set[int] = set()
    for rowids, scores in found:
        hits = []
        for r, s in zip(rowids.tolist(), scores.tolist()):
            got = info.get(r)
            if got is None:
                continue
            try:
                if got[2] != mirror.dim * 4:
                    raise ValueError(f"vector of {got[2]} bytes, expected {mirror.dim * 4}")
                try:
                    parsed: Any = json.loads(got[1])
                    if not isinstance(parsed, dict):
                        raise ValueError("not a JSON object")
                except ValueError as exc:  # damaged since this process loaded it
                    raise ValueError(f"unreadable metadata ({exc})") from exc
            except ValueError as exc:
                if r not in damaged:
                    warn_damaged(where, got[0], str(exc))
                    damaged.add(r)
                continue
            hits.append(Hit.from_metadata(got[0], min(1.0, max(-1.0, s)), parsed))
        results.append(hits)
    if damaged:
        mirror.remove(np.array(sorted(damaged), dtype=np.int64))
    return results
