"""Congruence: every store answers like the InMemoryStore reference on the same corpus.

Ids must match and scores agree within 1e-4, allowing for tied scores to come in any order.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
from numpy.typing import NDArray

from lookalike import Hit, Record, Schema, VectorStore
from lookalike.stores import InMemoryStore

from .test_contract import unit_vectors

DIM = 32
SCHEMA = Schema(dim=DIM, identity="congruence:v1", fields=("path", "label", "group"))
TOL = 1e-4


def corpus() -> list[Record]:
    vectors = unit_vectors(240, DIM, seed=11)
    vectors[200:220] = vectors[0:20]  # exact duplicates make tied scores
    rng = np.random.default_rng(5)
    return [
        Record(
            f"c{i:03d}",
            vectors[i],
            {
                "path": f"/corpus/{i:03d}.png",
                "label": ["ant", "bee", "cow", "dog"][int(rng.integers(0, 4))],
                "group": "odd" if i % 2 else "even",
            },
        )
        for i in range(240)
    ]


def queries() -> NDArray[np.float32]:
    records = corpus()
    near = np.stack([r.vector for r in records[:6]]) + 0.05 * unit_vectors(6, DIM, seed=3)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    return np.concatenate([unit_vectors(8, DIM, seed=21), near.astype(np.float32)])


def assert_congruent(got: list[Hit], want: list[Hit]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.score == pytest.approx(w.score, abs=TOL)
    if not want:
        return
    cutoff = want[-1].score
    # ids strictly above the last score must be identical; ties at the cut-off may differ
    assert {h.id for h in got if h.score > cutoff + TOL} == {h.id for h in want if h.score > cutoff + TOL}
    want_by_id = {h.id: h for h in want}
    for h in got:
        if h.id in want_by_id:
            assert h.path == want_by_id[h.id].path
            assert dict(h.metadata) == dict(want_by_id[h.id].metadata)


@pytest.mark.parametrize(
    "flt",
    [None, {"label": "bee"}, {"label": ["ant", "cow"]}, {"label": "dog", "group": "odd"},
     {"path": "/corpus/007.png"}],
    ids=["none", "eq", "in", "and", "path"],
)
@pytest.mark.parametrize("k", [1, 10, 300])
def test_store_agrees_with_reference(
    store: VectorStore, flt: Mapping[str, object] | None, k: int
) -> None:
    reference = InMemoryStore()
    reference.create_schema(SCHEMA)
    store.create_schema(SCHEMA)
    records = corpus()
    for start in range(0, len(records), 100):  # several writes, as a real index does
        reference.upsert(records[start : start + 100])
        store.upsert(records[start : start + 100])
    assert store.count() == reference.count()
    q = queries()
    got = store.search(q, k, flt)
    want = reference.search(q, k, flt)
    assert len(got) == len(want) == len(q)
    for g, w in zip(got, want):
        assert_congruent(g, w)


def test_store_agrees_after_updates_and_deletes(store: VectorStore) -> None:
    reference = InMemoryStore()
    reference.create_schema(SCHEMA)
    store.create_schema(SCHEMA)
    records = corpus()
    moved = [Record(r.id, v, {**r.metadata, "label": "moved"})
             for r, v in zip(records[:40], unit_vectors(40, DIM, seed=77))]
    gone = [r.id for r in records[100:130]]
    for s in (reference, store):
        s.upsert(records)
        s.upsert(moved)
        assert s.delete(gone) == len(gone)
    q = queries()
    for flt in (None, {"label": "moved"}):
        for g, w in zip(store.search(q, 10, flt), reference.search(q, 10, flt)):
            assert_congruent(g, w)
