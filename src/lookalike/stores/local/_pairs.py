"""Every pair of stored records at or above a cosine similarity: the work behind
:meth:`LocalStore.similar_pairs <lookalike.stores.LocalStore.similar_pairs>` (a self-join).

The records are taken in rowid order, a step at a time, each step under the store's lock
with the mirror as it is then (a step finds its rows by rowid, so a mirror reloaded
between steps is fine). Rows written after the call began are neither queries nor
partners. A step's pairs come from:

- **an exact mirror** (below ``ann_threshold``, or while the index is built): the step's
  rows scored against themselves and every later row (``exact_pairs``), so each pair is
  found once, from its first record;
- **the approximate index**: the step's rows go to ``IvfIndex.candidates_above``, which
  scores each probed list against all the step's rows that probe it in one matrix product
  (a list is read once per step, not once per query as a k-NN search reads it), with a
  floor :data:`MARGIN` below the threshold; the candidates are re-scored with their
  float32 vectors. Both records of a pair look for it, so pairs already given are
  remembered (by rowid) and not given again. Rows written after the index was built are
  not in its lists: they find their pairs with indexed rows from their own side, and
  pairs among themselves exactly.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ...filters import NormalizedFilter
from .._common import PAIR_QUERIES, SCORE_ROUNDING, exact_pairs, row_reader
from ._columns import filter_mask
from ._mirror import Mirror
from ._sqlite import execute_in

__all__ = ["MARGIN", "PAIR_QUERIES_ANN", "Plan", "ids_of", "plan", "step"]

#: How far below the threshold an 8-bit score may be and still be re-scored exactly. The
#: 8-bit scores' error against float32 cosines, measured on the 1M duplicates benchmark
#: store (102k candidates): standard deviation 0.00025, largest 0.0022.
MARGIN = 0.02

#: Rows per step on the approximate index: every probed list's codes are converted to
#: float32 once per step, so larger steps share that cost among more rows (at 1M, 8192
#: rows probe all 2,000 lists; converting them costs ~1.3 s, scoring them ~5.5 s).
PAIR_QUERIES_ANN = 8192

_Pairs = tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]


@dataclass(frozen=True)
class Plan:
    """The rowid ranges ``[lo, hi)`` of the steps, the last rowid the call pairs, and
    whether the pairs are found exactly even though there is an index."""

    steps: list[tuple[int, int]]
    last: int
    exact: bool


def _valid(
    db: sqlite3.Connection, mirror: Mirror, flt: NormalizedFilter | None, where: object
) -> NDArray[np.bool_]:
    """Which mirror positions are alive (and match ``flt``)."""
    if flt:
        return filter_mask(db, mirror, flt, where)
    return mirror.alive[: mirror.size]


def plan(
    db: sqlite3.Connection,
    mirror: Mirror,
    flt: NormalizedFilter | None,
    where: object,
    exact_below: int | None,
) -> Plan:
    """Steps of :data:`PAIR_QUERIES_ANN` records (on the approximate index) or
    :data:`~lookalike.stores._common.PAIR_QUERIES` (exact), by rowid. Fewer records than
    ``exact_below`` (a filter's matches, say) are paired exactly, as a search would be."""
    rowids = mirror.rowids[: mirror.size][_valid(db, mirror, flt, where)]
    exact = mirror.ann is None or exact_below is None or len(rowids) < exact_below
    if not len(rowids):
        return Plan([], 0, exact)
    size = PAIR_QUERIES if exact else PAIR_QUERIES_ANN
    starts = rowids[::size].tolist()
    last = int(rowids[-1])
    return Plan(list(zip(starts, [*starts[1:], last + 1])), last, exact)


def step(
    db: sqlite3.Connection,
    mirror: Mirror,
    flt: NormalizedFilter | None,
    where: object,
    bounds: tuple[int, int],
    plan: Plan,
    threshold: float,
    seen: set[tuple[int, int]],
) -> tuple[_Pairs, int]:
    """The pairs (left rowids, right rowids, scores) first found by the records with
    rowids in ``bounds``, and how many such records there are."""
    size = mirror.size
    rowids = mirror.rowids[:size]
    valid = _valid(db, mirror, flt, where)
    top = int(np.searchsorted(rowids, plan.last, side="right"))
    lo, hi = (int(np.searchsorted(rowids, b)) for b in bounds)
    later = lo + np.flatnonzero(valid[lo:top])  # this step's rows, then every later one
    count = int(np.count_nonzero(valid[lo:hi]))
    if not count:
        return _empty(), 0
    if plan.exact or mirror.ann is None:
        left, right, scores = exact_pairs(_reader(mirror), later, 0, count, threshold)
        found = rowids[left], rowids[right], scores
        if plan.exact:  # every step exact: each pair comes once, from its first record
            return found, count
    else:
        found = _ann_pairs(mirror, later[:count], valid[:top], threshold)
    return _unseen(found, seen), count


def _ann_pairs(
    mirror: Mirror, queries_at: NDArray[np.intp], valid: NDArray[np.bool_], threshold: float
) -> _Pairs:
    ann = mirror.ann
    rowids = mirror.rowids[: len(valid)]
    queries = mirror.rows(queries_at)
    asking, found = ann.candidates_above(queries, threshold - MARGIN)
    at = np.minimum(np.searchsorted(rowids, found), len(rowids) - 1)
    keep = (rowids[at] == found) & valid[at] & (at != queries_at[asking])
    asking, at = asking[keep], at[keep]
    parts = [_rescored(mirror, queries, queries_at, asking, at, threshold)]
    split = int(np.searchsorted(rowids, ann.last_rowid, side="right"))
    newer = split + np.flatnonzero(valid[split:])  # not in the index's lists
    first = int(np.searchsorted(newer, queries_at[0]))
    stop = int(np.searchsorted(newer, queries_at[-1], side="right"))
    if stop > first:
        left, right, scores = exact_pairs(_reader(mirror), newer, first, stop, threshold)
        parts.append((rowids[left], rowids[right], scores))
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
    )


def _rescored(
    mirror: Mirror,
    queries: NDArray[np.float32],
    queries_at: NDArray[np.intp],
    asking: NDArray[np.intp],
    at: NDArray[np.intp],
    threshold: float,
) -> _Pairs:
    """The candidate pairs whose float32 cosine reaches ``threshold``."""
    if not len(at):
        return _empty()
    unique, inverse = np.unique(at, return_inverse=True)
    vectors = mirror.rows(unique)
    scores = np.einsum("ij,ij->i", queries[asking], vectors[inverse]).astype(np.float32)
    ok = scores >= np.float32(threshold - SCORE_ROUNDING)
    rowids = mirror.rowids
    return rowids[queries_at[asking[ok]]], rowids[at[ok]], scores[ok]


def _unseen(found: _Pairs, seen: set[tuple[int, int]]) -> _Pairs:
    """Each pair once, smaller rowid first, leaving out those in ``seen`` (then added)."""
    left, right, scores = found
    low, high = np.minimum(left, right), np.maximum(left, right)
    keep = []
    for i, key in enumerate(zip(low.tolist(), high.tolist())):
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return low[keep], high[keep], scores[keep]


def _reader(mirror: Mirror) -> Callable[[NDArray[np.intp]], NDArray[np.float32]]:
    """Vectors by positions for ``exact_pairs``: from the mapped file's map when it holds
    every row (runs of positions as slices, no copy), else gathered with ``pread``."""
    if mirror.size != mirror.base:  # rows beyond the mapped file: never concatenate it all
        return mirror.rows
    return row_reader(mirror.mapped)


def _empty() -> _Pairs:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)


def ids_of(db: sqlite3.Connection, rowids: NDArray[np.int64]) -> dict[int, str]:
    """The record ids of ``rowids``."""
    wanted = sorted(set(rowids.tolist()))
    found: dict[int, str] = {}
    for cursor in execute_in(db, "SELECT rowid, id FROM records WHERE rowid IN ({marks})", wanted):
        found.update((int(r), str(i)) for r, i in cursor)
    return found
