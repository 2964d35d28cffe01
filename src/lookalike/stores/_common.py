"""Helpers every store uses: schema checks, record validation and exact top-k search."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._checks import positive_int, unit_rows
from ..errors import ConfigurationError, SchemaMismatchError
from ..filters import NormalizedFilter, matches, value_problem
from ..types import Hit, Record, Schema

__all__ = [
    "ExactIndex",
    "check_batch_size",
    "check_same_schema",
    "check_search_args",
    "check_threshold",
    "exact_pairs",
    "require_schema",
    "row_reader",
    "validate_records",
]


def check_same_schema(existing: Schema, wanted: Schema, where: str) -> None:
    """Raise :class:`SchemaMismatchError` naming both schemas when they differ."""
    problems = []
    if existing.dim != wanted.dim:
        problems.append(f"dim {existing.dim} (stored) vs {wanted.dim} (requested)")
    if existing.identity != wanted.identity:
        problems.append(
            f"embedder {existing.identity!r} (stored) vs {wanted.identity!r} (requested)"
        )
    if existing.metric != wanted.metric:
        problems.append(f"metric {existing.metric!r} (stored) vs {wanted.metric!r} (requested)")
    if existing.fields != wanted.fields:
        problems.append(
            f"fields {list(existing.fields)} (stored) vs {list(wanted.fields)} (requested)"
        )
    if problems:
        raise SchemaMismatchError(
            f"{where} was created with another schema: {'; '.join(problems)}. "
            "Use the same embedder and fields, or create a new store."
        )


def check_batch_size(batch_size: Any) -> int:
    """Raise :class:`ConfigurationError` unless ``batch_size`` is a positive int."""
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigurationError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def require_schema(schema: Schema | None, where: str) -> Schema:
    if schema is None:
        raise ConfigurationError(f"{where} has no schema yet: call create_schema() first")
    return schema


def validate_records(records: Sequence[Record], schema: Schema) -> NDArray[np.float32]:
    """Check ids, dims, finiteness and metadata; return the vectors stacked as float32."""
    if not records:
        return np.zeros((0, schema.dim), dtype=np.float32)
    seen: set[str] = set()
    for r in records:
        if not isinstance(r.id, str) or not r.id:
            raise ConfigurationError(f"record ids must be non-empty strings, got {r.id!r}")
        if r.id in seen:
            raise ConfigurationError(f"duplicate id {r.id!r} in one upsert")
        seen.add(r.id)
        _check_metadata(r.id, r.metadata)
    vectors = [as_float32(r.vector, f"vector of record {r.id!r}").reshape(-1) for r in records]
    try:
        matrix = np.stack(vectors)
    except ValueError as exc:
        raise ConfigurationError(f"vectors in one upsert have different lengths: {exc}") from None
    if matrix.shape[1] != schema.dim:
        raise ConfigurationError(
            f"vector dim {matrix.shape[1]} does not match the store's dim {schema.dim}"
        )
    if not np.isfinite(matrix).all():
        bad = next(r.id for r, row in zip(records, matrix) if not np.isfinite(row).all())
        raise ConfigurationError(f"vector of record {bad!r} contains NaN or infinity")
    return matrix


def _check_metadata(record_id: str, metadata: Mapping[str, Any]) -> None:
    for key, value in metadata.items():
        if not isinstance(key, str) or not key.isidentifier() or key in ("id", "vector", "score"):
            raise ConfigurationError(f"record {record_id!r}: invalid metadata key {key!r}")
        problem = value_problem(value)
        if problem is not None:
            raise ConfigurationError(f"record {record_id!r}: metadata {key!r} {problem}")


def as_float32(value: Any, what: str) -> NDArray[np.float32]:
    """``value`` (array, list, numbers) as a float32 array; :class:`ConfigurationError`
    naming ``what`` and the offending element when it holds anything but numbers (an
    object array of strings or ``None``, ragged rows), never a bare ``ValueError``."""
    try:
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
    except (ValueError, TypeError) as exc:  # e.g. ragged nested sequences
        raise ConfigurationError(f"{what} must be a flat sequence of numbers: {exc}") from None
    if array.dtype.hasobject:
        for element in array.flat:
            if not isinstance(element, (numbers.Real, np.integer, np.floating)):
                raise ConfigurationError(
                    f"{what} must hold only numbers, but holds {element!r} ({type(element).__name__})"
                )
    elif array.dtype.kind not in "biuf":
        raise ConfigurationError(f"{what} must hold numbers, got an array of dtype {array.dtype}")
    return np.asarray(array, dtype=np.float32)


def check_search_args(vectors: NDArray[Any], k: int, schema: Schema) -> NDArray[np.float32]:
    """The queries as unit-length float32 rows (scores are then cosine similarity for any
    query length, as in backends that normalise); :class:`ConfigurationError` for a bad
    ``k``, another dim, NaN or infinity, or an all-zero query."""
    positive_int(k, "k")
    q = as_float32(vectors, "query vector")
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != schema.dim:
        raise ConfigurationError(
            f"query vectors must have shape (n, {schema.dim}), got {tuple(np.shape(vectors))}"
        )
    return unit_rows(q, "query vectors")


#: Bytes of query-by-stored scores one exact search holds at a time (the queries of a
#: call are scored in blocks of rows, so memory does not grow with the batch). Measured
#: here (2 cores, 50k x 2048): blocks of 64 queries cost ~2x the CPU per score of 1,024,
#: 335 (this budget at 100k) ~1.2x.
SCORES_BLOCK_BYTES = 128 << 20


def rows_per_block(stored: int) -> int:
    """Queries scored together against ``stored`` vectors within :data:`SCORES_BLOCK_BYTES`
    (at least 16, so the matrix product stays efficient)."""
    return max(16, SCORES_BLOCK_BYTES // (4 * max(1, stored)))


def check_threshold(threshold: Any) -> float:
    """A cosine similarity in (-1, 1], else :class:`ConfigurationError`."""
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, numbers.Real)
        or not -1.0 < float(threshold) <= 1.0  # NaN fails too
    ):
        raise ConfigurationError(f"threshold must be a cosine similarity in (-1, 1], got {threshold!r}")
    return float(threshold)


#: Records a store's ``similar_pairs`` compares at a time on an exact path.
PAIR_QUERIES = 1024

#: How far below a threshold a float32 cosine may fall and still count as reaching it:
#: a vector's float32 product with an exact copy of itself comes out as 0.9999995, so
#: without it ``threshold=1.0`` would miss exact copies (float32 rounding over a few
#: thousand dimensions stays well within it).
SCORE_ROUNDING = 1e-5


def exact_pairs(
    rows: Callable[[NDArray[np.intp]], NDArray[np.float32]],
    positions: NDArray[np.intp],
    start: int,
    stop: int,
    threshold: float,
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float32]]:
    """Exact pairs for ``similar_pairs``: every ``(positions[i], positions[j])`` with
    ``start <= i < stop``, ``i < j`` and cosine at least ``threshold`` (less
    :data:`SCORE_ROUNDING`), as (left, right,
    scores). ``rows(p)`` gives the vectors at positions ``p``; the later positions are read
    in blocks, so the scores held stay within :data:`SCORES_BLOCK_BYTES`. Going through
    ``start`` in steps of :data:`PAIR_QUERIES` gives every pair once (the upper triangle).
    """
    queries = rows(positions[start:stop])
    # a block of later rows and its scores each within SCORES_BLOCK_BYTES
    step = max(256, SCORES_BLOCK_BYTES // (4 * max(1, len(queries), queries.shape[1])))
    left: list[NDArray[np.intp]] = []
    right: list[NDArray[np.intp]] = []
    scores: list[NDArray[np.float32]] = []
    for at in range(start, len(positions), step):
        block = queries @ rows(positions[at : at + step]).T
        qi, cj = np.nonzero(block >= np.float32(threshold - SCORE_ROUNDING))
        later = at + cj > start + qi
        qi, cj = qi[later], cj[later]
        left.append(positions[start + qi])
        right.append(positions[at + cj])
        scores.append(block[qi, cj])
    if not left:
        return np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0, np.float32)
    return np.concatenate(left), np.concatenate(right), np.concatenate(scores).astype(np.float32)


def row_reader(matrix: NDArray[np.float32]) -> Callable[[NDArray[np.intp]], NDArray[np.float32]]:
    """Rows of ``matrix`` by positions, for :func:`exact_pairs`: a run of consecutive
    positions as a slice (no copy), scattered ones gathered."""

    def rows(positions: NDArray[np.intp]) -> NDArray[np.float32]:
        if len(positions) and int(positions[-1]) - int(positions[0]) + 1 == len(positions):
            return matrix[int(positions[0]) : int(positions[-1]) + 1]
        return matrix[positions]

    return rows


def top_k(scores: NDArray[np.float32], k: int) -> NDArray[np.intp]:
    """Indices of the ``k`` largest scores, best first (ties to the lower index, also at
    the k-th place)."""
    n = scores.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.intp)
    if k < n:
        part = np.argpartition(-scores, k - 1)[:k]
        values = scores[part]
        kth = values.min()
        if np.count_nonzero(scores == kth) == np.count_nonzero(values == kth):  # no tie left out
            return part[np.lexsort((part, -values))]
    return np.lexsort((np.arange(n), -scores))[:k]


def top_k_rows(scores: NDArray[np.float32], k: int) -> NDArray[np.intp]:
    """:func:`top_k` for every row of a ``(q, n)`` matrix at once: a ``(q, min(k, n))``
    array of column indices, each row best first, ties to the lower index (also at the
    k-th place), with no per-row Python.

    For a small ``k`` it avoids a full selection: the row's maxima over blocks of
    :data:`_TOP_K_WIDTH` columns are ``n / 64`` real scores, so their k-th largest is a
    score that at least ``k`` entries reach; only the entries at or above it (a handful
    per row) are sorted. About 6x cheaper than ``argpartition`` here, which otherwise
    costs as much as a third of an exact search's matrix product.
    """
    q, n = scores.shape
    k = min(k, n)
    if k <= 0:
        return np.zeros((q, 0), dtype=np.intp)
    blocks = -(-n // _TOP_K_WIDTH)
    if k * 8 > blocks:
        return _top_k_select(scores, k)
    maxima = np.maximum.reduceat(scores, np.arange(0, n, _TOP_K_WIDTH), axis=1)
    bound = np.partition(maxima, blocks - k, axis=1)[:, blocks - k]
    rows, cols = np.nonzero(scores >= bound[:, None])  # row by row: at least k per row
    order = np.lexsort((cols, -scores[rows, cols], rows))
    first = np.searchsorted(rows, np.arange(q))
    best: NDArray[np.intp] = cols[order[first[:, None] + np.arange(k)]]
    return best


_TOP_K_WIDTH = 64


def _top_k_select(scores: NDArray[np.float32], k: int) -> NDArray[np.intp]:
    """:func:`top_k_rows` by ``argpartition`` (for a ``k`` that is large next to ``n``)."""
    q, n = scores.shape
    if k == n:
        return np.lexsort((np.broadcast_to(np.arange(n), (q, n)), -scores), axis=1)[:, :k]
    part = np.argpartition(scores, n - k, axis=1)[:, n - k :]
    values = np.take_along_axis(scores, part, axis=1)
    best: NDArray[np.intp] = np.take_along_axis(part, np.lexsort((part, -values), axis=1), axis=1)
    # the selection is arbitrary among entries equal to the k-th score: redo those rows
    kth = values.min(axis=1)
    tied = np.flatnonzero(np.count_nonzero(scores == kth[:, None], axis=1)
                          > np.count_nonzero(values == kth[:, None], axis=1))
    for r in tied.tolist():
        best[r] = np.lexsort((np.arange(n), -scores[r]))[:k]
    return best


class ExactIndex:
    """Vectors in a growable float32 matrix with ids and metadata; exact cosine search.

    Not thread-safe on its own: stores guard it with their lock.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._matrix = np.zeros((0, dim), dtype=np.float32)
        self._size = 0
        self.ids: list[str] = []
        self.metadata: list[dict[str, Any]] = []
        self.rows: dict[str, int] = {}

    def __len__(self) -> int:
        return self._size

    @property
    def vectors(self) -> NDArray[np.float32]:
        return self._matrix[: self._size]

    def _reserve(self, extra: int) -> None:
        needed = self._size + extra
        if needed > self._matrix.shape[0]:
            capacity = max(needed, int(self._matrix.shape[0] * 1.5) + 16)
            grown = np.empty((capacity, self.dim), dtype=np.float32)
            grown[: self._size] = self._matrix[: self._size]
            self._matrix = grown

    def upsert(
        self, ids: Sequence[str], matrix: NDArray[np.float32], metadata: Sequence[Mapping[str, Any]]
    ) -> None:
        self._reserve(len(ids))
        for rid, vec, meta in zip(ids, matrix, metadata):
            row = self.rows.get(rid)
            if row is None:
                row = self._size
                self._size += 1
                self.rows[rid] = row
                self.ids.append(rid)
                self.metadata.append(dict(meta))
            else:
                self.metadata[row] = dict(meta)
            self._matrix[row] = vec

    def delete(self, ids: Sequence[str]) -> int:
        removed = 0
        for rid in dict.fromkeys(ids):
            row = self.rows.pop(rid, None)
            if row is None:
                continue
            last = self._size - 1
            if row != last:
                moved = self.ids[last]
                self._matrix[row] = self._matrix[last]
                self.ids[row] = moved
                self.metadata[row] = self.metadata[last]
                self.rows[moved] = row
            self.ids.pop()
            self.metadata.pop()
            self._size -= 1
            removed += 1
        return removed

    def get(self, ids: Sequence[str]) -> list[Record]:
        out = []
        for rid in ids:
            row = self.rows.get(rid)
            if row is not None:
                out.append(Record(rid, self._matrix[row].copy(), dict(self.metadata[row])))
        return out

    def search(
        self, queries: NDArray[np.float32], k: int, filter: NormalizedFilter | None
    ) -> list[list[Hit]]:
        matrix = self.vectors
        candidates: NDArray[np.intp] | None = None
        if filter:
            candidates = np.fromiter(
                (i for i, m in enumerate(self.metadata) if matches(m, filter)), dtype=np.intp
            )
            matrix = matrix[candidates]
        if matrix.shape[0] == 0:
            return [[] for _ in range(queries.shape[0])]
        results = []
        step = rows_per_block(matrix.shape[0])
        for start in range(0, queries.shape[0], step):
            # (q, n), each query's scores one contiguous row: unit vectors, so cosine
            scores = queries[start : start + step] @ matrix.T
            best = top_k_rows(scores, k)
            picked = np.clip(np.take_along_axis(scores, best, axis=1), -1.0, 1.0).tolist()
            found = (best if candidates is None else candidates[best]).tolist()
            ids, metadata = self.ids, self.metadata
            results += [
                [Hit.from_metadata(ids[r], s, metadata[r]) for r, s in zip(rows, row_scores)]
                for rows, row_scores in zip(found, picked)
            ]
        return results
