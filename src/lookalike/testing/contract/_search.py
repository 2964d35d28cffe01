"""The store contract's search and score tests (a mixin of :class:`VectorStoreContract`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ...errors import ConfigurationError
from ...protocols import VectorStore
from ...types import Record
from ._kit import (
    DIM,
    SCHEMA,
    _ids,
    brute_force,
    expect_error,
    unit_vectors,
)


class SearchTests:
    """Search: best first, cosine scores, k, the query's shape and values."""

    # -- search ----------------------------------------------------------------------------------
    def test_search_is_best_first_with_cosine_scores(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, records = filled
        queries = unit_vectors(5, seed=42)
        results = store.search(queries, 10)
        assert len(results) == 5, "search() must return one list of hits per query row"
        for query, hits in zip(queries, results):
            expected = brute_force(records, query)
            assert len(hits) == 10
            scores = [h.score for h in hits]
            assert scores == sorted(scores, reverse=True), "hits must be best first (score descending)"
            reference = dict(expected)
            for hit in hits:
                assert hit.score == pytest.approx(reference[hit.id], abs=1e-4), (
                    f"Hit.score must be the cosine similarity ({reference[hit.id]:.4f} for {hit.id}), "
                    f"got {hit.score}; convert a distance to a similarity"
                )
            # the 10 hits are the 10 best (up to ties at the cut-off)
            cutoff = expected[9][1]
            must_have = {i for i, s in expected if s > cutoff + 1e-4}
            assert must_have <= set(_ids(hits)), f"search() missed some of the 10 best: {sorted(must_have - set(_ids(hits)))}"

    @pytest.mark.parametrize("k", [1, 3, 59, 60, 61, 200])
    def test_search_returns_min_k_n_hits(self, filled: tuple[VectorStore, list[Record]], k: int) -> None:
        store, records = filled
        hits = store.search(unit_vectors(1, seed=3), k)[0]
        assert len(hits) == min(k, len(records)), f"search(k={k}) over {len(records)} records must return {min(k, len(records))} hits, got {len(hits)}"
        assert len(set(_ids(hits))) == len(hits), "search() must not return a record twice"

    def test_every_stored_vector_finds_itself_first(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, records = filled
        vectors = np.stack([r.vector for r in records])
        results = store.search(vectors, 3)
        for record, hits in zip(records, results):
            assert hits[0].id == record.id, f"a stored vector must find its own record first ({record.id}), got {hits[0].id}"
            assert hits[0].score == pytest.approx(1.0, abs=1e-4), "a vector's cosine with itself is 1.0"
            assert hits[0].path == record.metadata["path"]
            assert hits[0].metadata["label"] == record.metadata["label"]

    def test_batch_of_queries_keeps_order(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, records = filled
        order = [17, 3, 42, 3, 0]
        results = store.search(np.stack([records[i].vector for i in order]), 2)
        assert [hits[0].id for hits in results] == [records[i].id for i in order], (
            "search() must answer the query rows in order (a repeated row too)"
        )

    def test_search_accepts_a_single_1d_vector(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, records = filled
        results = store.search(records[5].vector, 1)
        assert len(results) == 1 and results[0][0].id == records[5].id, (
            "search() of a 1-d vector must treat it as one query row"
        )

    def test_scores_are_cosine_for_unnormalised_queries(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, records = filled
        query = unit_vectors(1, seed=12)[0]
        unit_hits = store.search(query[None, :], 5)[0]
        scaled_hits = store.search(7.5 * query[None, :], 5)[0]
        assert _ids(scaled_hits) == _ids(unit_hits), "scaling a query must not change the ranking"
        for a, b in zip(scaled_hits, unit_hits):
            assert a.score == pytest.approx(b.score, abs=1e-4), (
                "scores must be cosine similarity, whatever the query's length: normalise the query"
            )
        score = store.search(0.01 * records[3].vector[None, :], 1)[0][0].score
        assert score == pytest.approx(1.0, abs=1e-4), f"a short copy of a stored vector must score 1.0, got {score}"

    def test_search_with_zero_vector_raises(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, _ = filled
        with expect_error(ConfigurationError, "search() with an all-zero query", "zero"):
            store.search(np.zeros((1, DIM), dtype=np.float32), 3)

    def test_search_of_empty_store_gives_empty_lists(self, store: VectorStore) -> None:
        store.create_schema(SCHEMA)
        got = store.search(unit_vectors(2), 5)
        assert got == [[], []], f"search() of an empty store must give one empty list per query, got {got!r}"

    @pytest.mark.parametrize("k", [0, -1, 1.5, True, "3", None])
    def test_search_validates_k(self, filled: tuple[VectorStore, list[Record]], k: Any) -> None:
        store, _ = filled
        with expect_error(ConfigurationError, f"search(k={k!r})", "k must be"):
            store.search(unit_vectors(1), k)

    def test_search_with_wrong_dim_raises(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, _ = filled
        with expect_error(ConfigurationError, f"search() with a query of dim {DIM + 4} on a dim-{DIM} store", str(DIM)):
            store.search(unit_vectors(1, dim=DIM + 4), 3)

    @pytest.mark.parametrize("bad", [np.nan, np.inf])
    def test_search_with_nan_raises(self, filled: tuple[VectorStore, list[Record]], bad: float) -> None:
        store, _ = filled
        query = unit_vectors(2)
        query[1, 3] = bad
        with expect_error(ConfigurationError, f"search() with {bad} in the query", "NaN"):
            store.search(query, 3)
