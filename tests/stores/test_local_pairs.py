"""LocalStore.similar_pairs on the approximate index: the join over the lists finds what
the exact path finds, with rows written after the build, deletions, filters and writes
made while the pairs are read. A low ``ann_threshold`` puts a few thousand small vectors
on the path a million take."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lookalike import Record, Schema
from lookalike.duplicates import find_duplicates
from lookalike.stores import InMemoryStore, LocalStore
from lookalike.stores.local import _ivf, _pairs

from ..conftest import SearchOnly

pytestmark = pytest.mark.skipif(not _ivf.ann_available(), reason="needs faiss (extra [ann])")

DIM = 32
SCHEMA = Schema(dim=DIM, identity="test:pairs", fields=("label",))


def unit(v: np.ndarray) -> np.ndarray:
    out: np.ndarray = (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)
    return out


def collection(n: int, seed: int, start: int = 0) -> list[Record]:
    """Clustered vectors (cosine ~0.5 within a cluster), a tenth of them followed by a
    near copy (cosine ~0.97)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, DIM))
    vecs = unit(centres[rng.integers(0, 40, n)] + rng.standard_normal((n, DIM)))
    out = []
    for i, v in enumerate(vecs):
        out.append(Record(f"r{start + i}", v, {"label": f"c{(start + i) % 7}"}))
        if i % 10 == 0:
            copy = unit(v + 0.25 * rng.standard_normal(DIM) / np.sqrt(DIM))
            out.append(Record(f"r{start + i}-copy", copy, {"label": f"c{(start + i) % 7}"}))
    return out


def pairs_of(store: Any, threshold: float, flt: Any = None) -> dict[tuple[str, str], float]:
    found: dict[tuple[str, str], float] = {}
    for batch in store.similar_pairs(threshold, flt):
        for a, b, s in zip(batch.left, batch.right, batch.scores):
            key = (min(a, b), max(a, b))
            assert key not in found and a != b
            found[key] = float(s)
    return found


def reference(records: list[Record], threshold: float) -> dict[tuple[str, str], float]:
    """The exact pairs (InMemoryStore) down to just below ``threshold``, with their scores."""
    ref = InMemoryStore()
    ref.create_schema(SCHEMA)
    ref.upsert(records)
    return pairs_of(ref, threshold - 1e-5)


def truth(records: list[Record], threshold: float) -> set[tuple[str, str]]:
    """The exact pairs, less those within 1e-5 of the threshold, whose float32 scores
    may fall either side of it."""
    return {k for k, s in reference(records, threshold).items() if abs(s - threshold) > 1e-5}


def same(found: dict[tuple[str, str], float] | set[tuple[str, str]], records: list[Record], threshold: float) -> bool:
    """``found`` holds the exact pairs, give or take those within 1e-5 of the threshold."""
    exact = reference(records, threshold)
    near = {k for k, s in exact.items() if abs(s - threshold) <= 1e-5}
    return set(found) - near == set(exact) - near


@pytest.fixture
def indexed(tmp_path: Path) -> tuple[LocalStore, list[Record]]:
    store = LocalStore(tmp_path / "s.lookalike", ann_threshold=2000)
    store.create_schema(SCHEMA)
    records = collection(4000, seed=1)
    store.upsert(records)
    assert store.wait_for_index() and store.search_mode == "ann"
    return store, records


def counting_joins(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of queries each ``candidates_above`` call gets."""
    calls: list[int] = []
    real = _ivf.IvfIndex.candidates_above

    def spy(self: Any, queries: np.ndarray, floor: float, nprobe: int | None = None) -> Any:
        calls.append(len(queries))
        return real(self, queries, floor, nprobe)

    monkeypatch.setattr(_ivf.IvfIndex, "candidates_above", spy)
    return calls


def test_the_join_over_the_lists_finds_the_exact_pairs(
    indexed: tuple[LocalStore, list[Record]], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, records = indexed
    calls = counting_joins(monkeypatch)
    found = pairs_of(store, 0.9)
    want = truth(records, 0.9)
    assert 400 <= len(want) < 600 and same(found, records, 0.9)
    assert calls == [len(records)]  # one step: the index was joined, not searched per record
    vectors = {r.id: r.vector for r in records}
    for (a, b), score in found.items():  # exact float32 scores, not the 8-bit ones
        assert score == pytest.approx(float(vectors[a] @ vectors[b]), abs=1e-5)


def test_steps_of_the_join_give_each_pair_once(
    indexed: tuple[LocalStore, list[Record]], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, records = indexed
    monkeypatch.setattr(_pairs, "PAIR_QUERIES_ANN", 300)  # both records of a pair search
    calls = counting_joins(monkeypatch)
    batches = list(store.similar_pairs(0.9))
    assert len(calls) == len(batches) == -(-len(records) // 300)
    assert sum(b.scanned for b in batches) == len(records)
    found = [tuple(sorted(p)) for b in batches for p in zip(b.left, b.right)]
    assert len(found) == len(set(found)) and same(set(found), records, 0.9)


def test_rows_written_after_the_build_and_deleted_rows(indexed: tuple[LocalStore, list[Record]]) -> None:
    store, records = indexed
    newer = collection(150, seed=2, start=10_000)  # near copies among themselves
    rng = np.random.default_rng(3)
    of_indexed = [Record(f"{r.id}-late", unit(r.vector + 0.2 * rng.standard_normal(DIM) / np.sqrt(DIM)),
                         dict(r.metadata)) for r in records[1:400:40]]
    store.upsert(newer + of_indexed)
    gone = [r.id for r in records[:200:20]]
    store.delete(gone)
    assert store.search_mode == "ann"
    assert store._mirror is not None and store._mirror.ann.last_rowid < store._mirror.rowids[store._mirror.size - 1]
    live = [r for r in records + newer + of_indexed if r.id not in set(gone)]
    found = set(pairs_of(store, 0.9))
    assert same(found, live, 0.9)
    assert {(min(r.id, r.id[:-5]), max(r.id, r.id[:-5])) for r in of_indexed} <= found
    assert not {i for key in found for i in key} & set(gone)


def test_a_filter_with_few_matches_is_paired_exactly(
    indexed: tuple[LocalStore, list[Record]], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, records = indexed
    calls = counting_joins(monkeypatch)
    matching = [r for r in records if r.metadata["label"] == "c3"]
    assert len(matching) < 2000  # below ann_threshold: exact, as a filtered search is
    assert same(pairs_of(store, 0.5, {"label": "c3"}), matching, 0.5)
    assert calls == []


def test_records_written_while_pairs_are_read_are_not_paired(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s.lookalike")
    store.create_schema(SCHEMA)
    records = collection(2500, seed=4)
    store.upsert(records)
    batches = store.similar_pairs(0.9)
    first = next(batches)
    late = Record("late-copy", records[-1].vector, {"label": "c0"})
    store.upsert([late])
    rest = list(batches)
    found = {tuple(sorted(p)) for b in [first, *rest] for p in zip(b.left, b.right)}
    assert same(found, records, 0.9)
    assert sum(b.scanned for b in [first, *rest]) == len(records)
    assert any(p == ("late-copy", records[-1].id) for p in pairs_of(store, 0.9))  # a new call pairs it


def test_candidates_above_is_a_range_search_over_the_probed_lists(
    indexed: tuple[LocalStore, list[Record]]
) -> None:
    """Every vector of a query's probed lists whose cosine is clearly above the floor
    comes back, and none clearly below it: the 8-bit score is recovered as a cosine."""
    store, records = indexed
    mirror = store._mirror
    assert mirror is not None
    ann = mirror.ann
    queries = np.stack([r.vector for r in records[:300]])
    floor = 0.6
    asking, found = ann.candidates_above(queries, floor)
    got = set(zip(asking.tolist(), found.tolist()))
    _, probes = ann._nearest_lists(queries, ann.nprobe)
    members = {i: ann._list_contents(i)[1].tolist() for i in set(probes.reshape(-1).tolist())}
    rowids = mirror.rowids[: mirror.size]
    matrix = mirror.matrix
    clearly_in, clearly_out = set(), set()
    for q, lists in enumerate(probes.tolist()):
        ids = np.array(list(itertools.chain.from_iterable(members[i] for i in lists)), dtype=np.int64)
        scores = matrix[np.searchsorted(rowids, ids)] @ queries[q]
        clearly_in |= {(q, int(i)) for i in ids[scores >= floor + 0.01]}
        clearly_out |= {(q, int(i)) for i in ids[scores < floor - 0.01]}
    assert clearly_in and clearly_in <= got
    assert not got & clearly_out


def test_find_duplicates_uses_the_join_and_groups_as_the_search_does(
    indexed: tuple[LocalStore, list[Record]], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = indexed
    calls = counting_joins(monkeypatch)
    joined = find_duplicates(store, 0.9)
    assert calls

    searched = find_duplicates(SearchOnly(store), 0.9)  # one k-NN search per record
    assert [[(h.id, round(h.score, 5)) for h in g] for g in joined] == [
        [(h.id, round(h.score, 5)) for h in g] for g in searched
    ]


def test_steps_without_the_index_in_a_joined_call_still_give_each_pair_once(
    indexed: tuple[LocalStore, list[Record]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call planned on the index whose index goes away for some steps (dropped and
    being rebuilt) pairs those steps exactly, and no pair comes twice."""
    store, records = indexed
    monkeypatch.setattr(_pairs, "PAIR_QUERIES_ANN", 500)
    mirror = store._mirror
    assert mirror is not None and mirror.ann is not None
    db = store._db
    plan = _pairs.plan(db, mirror, None, None, store.ann_threshold)
    assert not plan.exact and len(plan.steps) > 4
    index, seen = mirror.ann, set()
    found: list[tuple[int, int]] = []
    scanned = 0
    for n, bounds in enumerate(plan.steps):
        mirror.ann = None if n % 2 else index
        (left, right, _), count = _pairs.step(db, mirror, None, None, bounds, plan, 0.9, seen)
        found += zip(left.tolist(), right.tolist())
        scanned += count
    mirror.ann = index
    assert len(found) == len(set(found)) and scanned == len(records)
    names = dict(_pairs.ids_of(db, np.array([r for pair in found for r in pair], dtype=np.int64)))
    assert same({tuple(sorted((names[a], names[b]))) for a, b in found}, records, 0.9)  # type: ignore[misc]
