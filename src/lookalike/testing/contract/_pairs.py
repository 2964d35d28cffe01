"""The store contract's ``similar_pairs`` tests (a mixin of :class:`VectorStoreContract`),
for stores that have it (:class:`~lookalike.protocols.PairSearchStore`); skipped otherwise."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from ...errors import ConfigurationError
from ...protocols import PairSearchStore, VectorStore
from ...types import Record
from ._kit import SCHEMA, expect_error, make_records


def _pair_store(store: VectorStore) -> Any:
    if not isinstance(store, PairSearchStore):
        pytest.skip("the store has no similar_pairs (optional: PairSearchStore)")
    return store


def _with_near_copies(records: list[Record]) -> list[Record]:
    """``records`` plus a near copy (cosine ~0.95) of every fifth one, with its metadata."""
    rng = np.random.default_rng(11)
    extra = []
    for r in records[::5]:
        v = np.asarray(r.vector, dtype=np.float32) + 0.3 * rng.standard_normal(len(r.vector)).astype(np.float32) / np.sqrt(len(r.vector))
        extra.append(Record(f"{r.id}-copy", (v / np.linalg.norm(v)).astype(np.float32), dict(r.metadata)))
    return records + extra


def _truth(records: list[Record], threshold: float) -> dict[tuple[str, str], float]:
    matrix = np.stack([np.asarray(r.vector, dtype=np.float64) for r in records])
    scores = matrix @ matrix.T
    return {
        tuple(sorted((records[i].id, records[j].id))): float(scores[i, j])  # type: ignore[misc]
        for i, j in itertools.combinations(range(len(records)), 2)
        if scores[i, j] >= threshold
    }


def _collect(store: Any, threshold: float, flt: Any = None) -> tuple[dict[tuple[str, str], float], int]:
    found: dict[tuple[str, str], float] = {}
    scanned = 0
    for batch in store.similar_pairs(threshold, flt):
        assert len(batch.left) == len(batch.right) == len(batch.scores), "SimilarPairs: left, right and scores must be as long"
        scanned += batch.scanned
        for a, b, s in zip(batch.left, batch.right, batch.scores):
            assert a != b, f"similar_pairs must never pair a record with itself ({a})"
            key = (min(a, b), max(a, b))
            assert key not in found, f"similar_pairs must give each pair once; {key} came twice"
            found[key] = float(s)
    return found, scanned


class PairTests:
    """similar_pairs: every pair at or above the threshold once, with cosine scores."""

    @pytest.mark.parametrize("threshold", [0.9, 0.3])
    def test_similar_pairs_equal_brute_force(self, store: VectorStore, threshold: float) -> None:
        pairs = _pair_store(store)
        records = _with_near_copies(make_records(100))
        store.create_schema(SCHEMA)
        store.upsert(records)
        truth = _truth(records, threshold)
        found, scanned = _collect(pairs, threshold)
        near = {k for k, s in truth.items() if s >= threshold + 1e-4}  # ties at the threshold may go either way
        assert near <= set(found), f"similar_pairs({threshold}) missed {sorted(near - set(found))[:5]}"
        assert set(found) <= {k for k, s in truth.items() if s >= threshold - 1e-4}, "similar_pairs gave pairs below the threshold"
        for key, score in found.items():
            assert score == pytest.approx(truth.get(key, threshold), abs=1e-4), f"the score of {key} must be its cosine similarity"
        assert scanned == len(records), f"the batches' scanned must add up to the {len(records)} records, got {scanned}"

    def test_similar_pairs_threshold_one_pairs_exact_copies(self, store: VectorStore) -> None:
        pairs = _pair_store(store)
        records = make_records(30)
        copies = [Record(f"{r.id}-same", r.vector, dict(r.metadata)) for r in records[:10]]
        store.create_schema(SCHEMA)
        store.upsert(records + copies)
        found, _ = _collect(pairs, 1.0)
        assert set(found) == {(r.id, f"{r.id}-same") for r in records[:10]}, (
            "similar_pairs(1.0) must pair every exact copy (a float32 cosine of 0.9999995 is 1.0 "
            "up to rounding: compare with a tolerance of about 1e-5) and nothing else"
        )

    def test_similar_pairs_filter_limits_both_sides(self, store: VectorStore) -> None:
        pairs = _pair_store(store)
        records = _with_near_copies(make_records(100))
        store.create_schema(SCHEMA)
        store.upsert(records)
        dogs = [r for r in records if r.metadata["label"] == "dog"]
        found, scanned = _collect(pairs, 0.3, {"label": "dog"})
        truth = _truth(dogs, 0.3)
        assert {k for k, s in truth.items() if s >= 0.3 + 1e-4} <= set(found) <= set(_truth(dogs, 0.3 - 1e-4))
        assert scanned == len(dogs), "with a filter, scanned adds up to the records that match it"

    def test_similar_pairs_of_an_empty_store_and_after_deletes(self, store: VectorStore) -> None:
        pairs = _pair_store(store)
        store.create_schema(SCHEMA)
        assert _collect(pairs, 0.5) == ({}, 0), "an empty store has no pairs"
        records = _with_near_copies(make_records(20))
        store.upsert(records)
        gone = {r.id for r in records[:5]}
        store.delete(sorted(gone))
        found, scanned = _collect(pairs, 0.5)
        assert not {i for key in found for i in key} & gone, "deleted records must not be paired"
        assert scanned == len(records) - len(gone)

    @pytest.mark.parametrize("bad", [1.5, -1.0, float("nan"), True, "0.9"])
    def test_similar_pairs_refuses_a_threshold_that_is_not_a_cosine(self, store: VectorStore, bad: Any) -> None:
        pairs = _pair_store(store)
        store.create_schema(SCHEMA)
        with expect_error(ConfigurationError, f"similar_pairs({bad!r})", match="threshold"):
            list(pairs.similar_pairs(bad))
