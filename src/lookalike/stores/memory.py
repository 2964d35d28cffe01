"""InMemoryStore: exact cosine search over a numpy matrix; the reference store."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ConfigurationError
from ..filters import matches, normalize_filter
from ..types import Filter, Hit, Record, Schema, SimilarPairs
from ._common import (
    PAIR_QUERIES,
    ExactIndex,
    check_batch_size,
    check_same_schema,
    check_search_args,
    check_threshold,
    exact_pairs,
    require_schema,
    row_reader,
    validate_records,
)

__all__ = ["InMemoryStore"]


class InMemoryStore:
    """Keeps everything in process memory; nothing is persisted.

    The reference implementation of :class:`~lookalike.VectorStore` and the store to use
    in your own tests. Search is exact (brute-force cosine).

    >>> store = InMemoryStore()
    """

    def __init__(self) -> None:
        self._schema: Schema | None = None
        self._index: ExactIndex | None = None
        self._lock = threading.RLock()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> InMemoryStore:
        """A new empty store for ``memory:`` (options, meant for other stores, are ignored)."""
        if url not in ("memory", "memory:"):
            raise ConfigurationError(f"an in-memory store is named 'memory:', not {url!r}")
        return cls()

    def __repr__(self) -> str:
        return f"InMemoryStore(count={self.count()})"

    def create_schema(self, schema: Schema) -> None:
        with self._lock:
            if self._schema is not None:
                check_same_schema(self._schema, schema, "this InMemoryStore")
                return
            self._schema = schema
            self._index = ExactIndex(schema.dim)

    def describe(self) -> Schema | None:
        return self._schema

    def upsert(self, records: Sequence[Record]) -> None:
        with self._lock:
            schema = require_schema(self._schema, "this InMemoryStore")
            matrix = validate_records(records, schema)
            assert self._index is not None
            self._index.upsert([r.id for r in records], matrix, [r.metadata for r in records])

    def search(
        self, vectors: NDArray[np.float32], k: int, filter: Filter | None = None
    ) -> list[list[Hit]]:
        with self._lock:
            schema = require_schema(self._schema, "this InMemoryStore")
            queries = check_search_args(vectors, k, schema)
            assert self._index is not None
            return self._index.search(queries, int(k), normalize_filter(filter, schema.fields))

    def get(self, ids: Sequence[str]) -> list[Record]:
        with self._lock:
            require_schema(self._schema, "this InMemoryStore")
            assert self._index is not None
            return self._index.get(list(dict.fromkeys(ids)))  # each record once, as asked

    def delete(self, ids: Sequence[str]) -> int:
        with self._lock:
            require_schema(self._schema, "this InMemoryStore")
            assert self._index is not None
            return self._index.delete(list(ids))

    def scan(self, batch_size: int = 1000) -> Iterator[list[Record]]:
        check_batch_size(batch_size)
        with self._lock:
            require_schema(self._schema, "this InMemoryStore")
            assert self._index is not None
            ids = list(self._index.ids)
        for start in range(0, len(ids), batch_size):
            with self._lock:
                batch = self._index.get(ids[start : start + batch_size])
            if batch:
                yield batch

    def similar_pairs(self, threshold: float, filter: Filter | None = None) -> Iterator[SimilarPairs]:
        """Every pair of records (matching ``filter``) at or above cosine ``threshold``,
        exactly (see :class:`~lookalike.protocols.PairSearchStore`). Compares the records
        there were when iteration began, copied then."""
        with self._lock:
            schema = require_schema(self._schema, "this InMemoryStore")
            threshold = check_threshold(threshold)
            flt = normalize_filter(filter, schema.fields)
            assert self._index is not None
            index = self._index
            rows = [i for i, meta in enumerate(index.metadata) if flt is None or matches(meta, flt)]
            ids = [index.ids[i] for i in rows]
            matrix = index.vectors[rows]  # a copy
        everything = np.arange(len(ids))
        for start in range(0, len(ids), PAIR_QUERIES):
            stop = min(start + PAIR_QUERIES, len(ids))
            left, right, scores = exact_pairs(row_reader(matrix), everything, start, stop, threshold)
            yield SimilarPairs([ids[i] for i in left], [ids[j] for j in right], scores, stop - start)

    def count(self) -> int:
        return 0 if self._index is None else len(self._index)

    def close(self) -> None:
        pass

    def __enter__(self) -> InMemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
