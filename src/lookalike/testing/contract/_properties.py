"""The store contract's property tests (a mixin of :class:`VectorStoreContract`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from ...stores.memory import InMemoryStore
from ...types import Record, Schema
from ._kit import (
    SCHEMA,
    VALUE_SCHEMA,
    _describe,
    _stored,
    _value_outcome,
    brute_force,
    unit_vectors,
)
from ._property import (
    _TIE_ROWS,
    _Fresh,
    _ops_strategies,
    _property,
    _self_top1_strategies,
    _ties_strategies,
    _values_strategies,
)


class PropertyTests:
    """Property tests (hypothesis, or fixed examples without it) against reference models."""

    # -- properties ------------------------------------------------------------------------------
    @_property(
        _self_top1_strategies,
        [
            {"n": 1, "k": 1, "seed": 0, "dim": 2},
            {"n": 40, "k": 50, "seed": 1, "dim": 2},
            {"n": 17, "k": 5, "seed": 2, "dim": 8},
            {"n": 40, "k": 40, "seed": 3, "dim": 64},
            {"n": 3, "k": 10, "seed": 2**32 - 1, "dim": 64},
        ],
    )
    def test_property_self_top1_sorted_and_length(self, fresh: _Fresh, n: int, k: int, seed: int, dim: int) -> None:
        store = fresh(Schema(dim=dim, identity="property:v1"))
        vectors = fresh.pad(unit_vectors(n, dim, seed))
        store.upsert([Record(f"p{i}", v, {"label": str(i % 3)}) for i, v in enumerate(vectors)])
        results = store.search(vectors, k)
        for i, hits in enumerate(results):
            assert len(hits) == min(k, n), f"search(k={k}) over {n} records must return {min(k, n)} hits"
            scores = [h.score for h in hits]
            assert all(a >= b for a, b in zip(scores, scores[1:])), "hits must be best first"
            assert hits[0].score == pytest.approx(1.0, abs=1e-4)
            # ties with exact duplicates are allowed; otherwise the record itself is first
            same = [h.id for h in hits if h.score >= 1.0 - 1e-4]
            assert f"p{i}" in same or len(same) == min(k, n), f"p{i} must find itself among its top hits"

    @_property(_ties_strategies, [{"rows": rows, "k": k} for rows in _TIE_ROWS for k in (1, 4, 35)])
    def test_property_ties_and_duplicates(self, fresh: _Fresh, rows: list[list[int]], k: int) -> None:
        """Small integer vectors make many exact duplicates and tied scores."""
        store = fresh(Schema(dim=4, identity="property:v1"))
        matrix = np.asarray(rows, dtype=np.float32)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        matrix = fresh.pad(matrix)
        records = [Record(f"t{i}", v) for i, v in enumerate(matrix)]
        store.upsert(records)
        for i, hits in enumerate(store.search(matrix, k)):
            assert len(hits) == min(k, len(rows))
            reference = dict(brute_force(records, matrix[i]))
            scores = [h.score for h in hits]
            assert all(a >= b - 1e-6 for a, b in zip(scores, scores[1:])), "hits must be best first, ties too"
            for hit in hits:
                assert hit.score == pytest.approx(reference[hit.id], abs=1e-4), "Hit.score must be the cosine"
            assert hits[0].score == pytest.approx(1.0, abs=1e-4)

    @_property(
        _ops_strategies,
        [
            {"ops": []},
            {"ops": [("upsert", [1, 2, 3]), ("delete", [2, 9]), ("upsert", [2, 3]), ("delete", [1, 1])]},
            {"ops": [("delete", [0]), ("upsert", [0, 15, 7, 7]), ("upsert", [15]), ("delete", [15, 0, 7])]},
            {"ops": [("upsert", list(range(5))), ("upsert", list(range(3, 8))), ("delete", [4, 5, 6])]},
        ],
    )
    def test_property_upserts_and_deletes_match_a_dict(self, fresh: _Fresh, ops: list[tuple[str, list[int]]]) -> None:
        store = fresh(SCHEMA)
        model: dict[str, NDArray[np.float32]] = {}
        for step, (op, keys) in enumerate(ops):
            ids = list(dict.fromkeys(f"k{key}" for key in keys))
            if op == "upsert":
                vectors = fresh.pad(unit_vectors(len(ids), seed=step))
                store.upsert([Record(i, v, {"label": f"step{step}"}) for i, v in zip(ids, vectors)])
                model.update(zip(ids, vectors))
            else:
                removed = store.delete(ids)
                assert removed == sum(i in model for i in ids), "delete() must return how many existed"
                for i in ids:
                    model.pop(i, None)
        assert store.count() == len(model), f"count() must be {len(model)} after these upserts and deletes"
        ids_seen = [r.id for batch in store.scan(batch_size=3) for r in batch]
        assert sorted(ids_seen) == sorted(model), "scan() must yield exactly the records that remain"
        for record in store.get(sorted(model)):
            np.testing.assert_allclose(record.vector, model[record.id], atol=1e-6)

    @_property(
        _values_strategies,
        [
            {"value": v}
            for v in ["plain", "", 7, 1, True, False, 2.5, -0.0, "a\x00b", "\ud800", 2**64, -(2**63), float("nan")]
        ],
    )
    def test_property_metadata_values_behave_like_the_reference(self, fresh: _Fresh, value: Any) -> None:
        """Any value is refused at upsert, or kept with its type and found by an equality
        and an any-of filter, in every store exactly as in InMemoryStore (the reference)."""
        reference_store = InMemoryStore()
        reference_store.create_schema(VALUE_SCHEMA)
        reference = _value_outcome(reference_store, value, unit_vectors(3, seed=11))
        assert reference[0] == "refused" or reference == _stored(value), f"InMemoryStore {_describe(reference)}"
        store = fresh(VALUE_SCHEMA)
        got = _value_outcome(store, value, fresh.pad(unit_vectors(3, seed=11)))
        assert got == reference, (
            f"with metadata {{'value': {value!r}}} this store {_describe(got)}; InMemoryStore, the "
            f"reference, {_describe(reference)}. Every store must refuse what "
            "lookalike.filters.value_problem refuses and keep the rest exactly"
        )
