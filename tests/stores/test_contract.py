"""The VectorStore contract: one suite that every store in STORE_FACTORIES passes.

Only the public ``VectorStore`` protocol is used here, never a backend's internals, and the
data stays small (<= 300 vectors, dim <= 64) so remote backends stay fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from lookalike import ConfigurationError, Record, Schema, SchemaMismatchError, VectorStore
from lookalike.errors import ImageSearchError

DIM = 16
FIELDS = ("path", "label", "colour")
SCHEMA = Schema(dim=DIM, identity="contract-test:v1", fields=FIELDS)


def unit_vectors(n: int, dim: int = DIM, seed: int = 0) -> NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    out: NDArray[np.float32] = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    return out


def make_records(
    n: int, dim: int = DIM, seed: int = 0, labels: tuple[str, ...] = ("cat", "dog", "fish")
) -> list[Record]:
    vectors = unit_vectors(n, dim, seed)
    return [
        Record(
            f"r{i:03d}",
            vectors[i],
            {
                "path": f"/photos/{i:03d}.jpg",
                "label": labels[i % len(labels)],
                "colour": "red" if i % 2 == 0 else "blue",
            },
        )
        for i in range(n)
    ]


@pytest.fixture
def filled(store: VectorStore) -> tuple[VectorStore, list[Record]]:
    store.create_schema(SCHEMA)
    records = make_records(60)
    store.upsert(records)
    return store, records


def all_records(store: VectorStore, batch_size: int = 1000) -> list[Record]:
    return [r for batch in store.scan(batch_size) for r in batch]


def brute_force(records: list[Record], query: NDArray[np.float32]) -> list[tuple[str, float]]:
    """Reference ranking: (id, cosine) pairs, best first."""
    matrix = np.stack([np.asarray(r.vector, dtype=np.float64) for r in records])
    q = np.asarray(query, dtype=np.float64)
    scores = matrix @ q / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(q))
    order = np.argsort(-scores, kind="stable")
    return [(records[i].id, float(scores[i])) for i in order]


# -- schema ------------------------------------------------------------------------------
def test_describe_is_none_before_create_schema(store: VectorStore) -> None:
    assert store.describe() is None
    assert store.count() == 0


def test_create_schema_is_described(store: VectorStore) -> None:
    store.create_schema(SCHEMA)
    described = store.describe()
    assert described == SCHEMA
    assert described is not None and "path" in described.fields


def test_create_schema_twice_is_a_no_op(store: VectorStore) -> None:
    store.create_schema(SCHEMA)
    store.upsert(make_records(3))
    store.create_schema(Schema(dim=DIM, identity="contract-test:v1", fields=FIELDS))
    assert store.describe() == SCHEMA
    assert store.count() == 3


@pytest.mark.parametrize(
    ("other", "named"),
    [
        (Schema(dim=DIM + 1, identity="contract-test:v1", fields=FIELDS), str(DIM + 1)),
        (Schema(dim=DIM, identity="another-model:v2", fields=FIELDS), "another-model:v2"),
        (Schema(dim=DIM, identity="contract-test:v1", fields=("path", "label")), "colour"),
    ],
    ids=["dim", "identity", "fields"],
)
def test_create_schema_with_another_schema_raises(store: VectorStore, other: Schema, named: str) -> None:
    store.create_schema(SCHEMA)
    store.upsert(make_records(2))
    with pytest.raises(SchemaMismatchError) as info:
        store.create_schema(other)
    assert named in str(info.value)
    assert store.describe() == SCHEMA
    assert store.count() == 2


def test_identity_mismatch_message_names_both(store: VectorStore) -> None:
    store.create_schema(SCHEMA)
    with pytest.raises(SchemaMismatchError) as info:
        store.create_schema(Schema(dim=DIM, identity="another-model:v2", fields=FIELDS))
    assert "contract-test:v1" in str(info.value)
    assert "another-model:v2" in str(info.value)


# -- before a schema exists ----------------------------------------------------------------
BEFORE_SCHEMA: dict[str, Callable[[VectorStore], object]] = {
    "upsert": lambda s: s.upsert(make_records(1)),
    "search": lambda s: s.search(unit_vectors(1), 3),
    "get": lambda s: s.get(["r000"]),
    "delete": lambda s: s.delete(["r000"]),
    "scan": lambda s: list(s.scan()),
}


@pytest.mark.parametrize("operation", sorted(BEFORE_SCHEMA))
def test_operations_before_schema_raise_configuration_error(store: VectorStore, operation: str) -> None:
    with pytest.raises(ConfigurationError, match="schema"):
        BEFORE_SCHEMA[operation](store)
    assert store.count() == 0
    assert store.describe() is None


def test_close_is_idempotent(store: VectorStore) -> None:
    store.create_schema(SCHEMA)
    store.close()
    store.close()


# -- writing and reading -------------------------------------------------------------------
def test_upsert_then_get_returns_vectors_and_metadata(store: VectorStore) -> None:
    store.create_schema(SCHEMA)
    records = make_records(5)
    store.upsert(records)
    assert store.count() == 5
    got = store.get([r.id for r in records])
    assert [g.id for g in got] == [r.id for r in records]
    for g, r in zip(got, records):
        np.testing.assert_allclose(g.vector, r.vector, atol=1e-6)
        assert dict(g.metadata) == dict(r.metadata)


def test_upsert_empty_list_is_a_no_op(store: VectorStore) -> None:
    store.create_schema(SCHEMA)
    store.upsert([])
    assert store.count() == 0


def test_upsert_replaces_by_id(store: VectorStore) -> None:
    store.create_schema(SCHEMA)
    store.upsert(make_records(4))
    new_vector = unit_vectors(1, seed=99)[0]
    store.upsert([Record("r001", new_vector, {"label": "owl"})])
    assert store.count() == 4
    (got,) = store.get(["r001"])
    np.testing.assert_allclose(got.vector, new_vector, atol=1e-6)
    assert dict(got.metadata) == {"label": "owl"}  # wholly replaced, not merged
    hits = store.search(new_vector[None, :], 1)[0]
    assert hits[0].id == "r001"
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_get_keeps_requested_order_and_leaves_out_missing(filled: tuple[VectorStore, list[Record]]) -> None:
    store, _ = filled
    got = store.get(["r010", "nope", "r002", "r033", "also-missing"])
    assert [r.id for r in got] == ["r010", "r002", "r033"]
    assert store.get([]) == []
    assert store.get(["missing"]) == []


def test_get_with_repeated_id_returns_it_once(filled: tuple[VectorStore, list[Record]]) -> None:
    store, _ = filled
    assert [r.id for r in store.get(["r004", "r004", "r001"])] == ["r004", "r001"]


def test_delete_returns_number_removed(filled: tuple[VectorStore, list[Record]]) -> None:
    store, records = filled
    assert store.delete(["r000", "r001", "missing", "r001"]) == 2
    assert store.count() == len(records) - 2
    assert store.get(["r000", "r001"]) == []
    assert store.delete(["r000"]) == 0
    assert store.delete([]) == 0
    hits = store.search(records[0].vector[None, :], len(records))[0]
    assert {"r000", "r001"}.isdisjoint(h.id for h in hits)


def test_scan_yields_every_record_once(filled: tuple[VectorStore, list[Record]]) -> None:
    store, records = filled
    batches = list(store.scan(batch_size=7))
    assert all(0 < len(b) <= 7 for b in batches)
    ids = [r.id for b in batches for r in b]
    assert sorted(ids) == sorted(r.id for r in records)
    by_id = {r.id: r for r in records}
    for r in (r for b in batches for r in b):
        np.testing.assert_allclose(r.vector, by_id[r.id].vector, atol=1e-6)
        assert dict(r.metadata) == dict(by_id[r.id].metadata)


def test_scan_of_empty_store_yields_nothing(store: VectorStore) -> None:
    store.create_schema(SCHEMA)
    assert list(store.scan()) == []


@pytest.mark.parametrize(
    "bad",
    [
        Record("", unit_vectors(1)[0], {}),
        Record("x", unit_vectors(1, dim=DIM + 2)[0], {}),
        Record("x", np.full(DIM, np.nan, dtype=np.float32), {}),
        Record("x", unit_vectors(1)[0], {"label": ["a", "list"]}),  # type: ignore[dict-item]
        Record("x", unit_vectors(1)[0], {"not an identifier": "v"}),
    ],
    ids=["empty-id", "wrong-dim", "nan", "list-metadata", "bad-key"],
)
def test_invalid_records_are_refused(store: VectorStore, bad: Record) -> None:
    store.create_schema(SCHEMA)
    with pytest.raises(ConfigurationError):
        store.upsert([make_records(1)[0], bad])
    assert store.count() == 0  # the whole call was refused


def test_duplicate_ids_in_one_upsert_are_refused(store: VectorStore) -> None:
    store.create_schema(SCHEMA)
    one = make_records(1)[0]
    with pytest.raises(ConfigurationError, match="duplicate"):
        store.upsert([one, Record(one.id, unit_vectors(1, seed=5)[0], {})])


# -- metadata ------------------------------------------------------------------------------
AWKWARD_VALUES = [
    'say "cheese"',
    "back\\slash and \\\" both",
    "ünïcødé — 日本語 🐟",
    "single 'quotes' and \n newline",
    "",
]


def test_metadata_round_trips(store: VectorStore) -> None:
    store.create_schema(SCHEMA)
    records = [
        Record(
            f"m{i}",
            vec,
            {
                "path": f"/data/ph\u00f6tos/{i} \"x\".jpg",
                "sha256": f"{i:064x}",
                "label": value,
                "extra": value,
            },
        )
        for i, (vec, value) in enumerate(zip(unit_vectors(len(AWKWARD_VALUES)), AWKWARD_VALUES))
    ]
    store.upsert(records)
    got = {r.id: r for r in store.get([r.id for r in records])}
    for r in records:
        assert dict(got[r.id].metadata) == dict(r.metadata)
    for hit, r in ((store.search(r.vector[None, :], 1)[0][0], r) for r in records):
        assert hit.id == r.id
        assert hit.path == r.metadata["path"]
        assert hit.content_hash == r.metadata["sha256"]
        assert dict(hit.metadata) == {k: v for k, v in r.metadata.items() if k not in ("path", "sha256")}


AWKWARD_IDS = ['quote"id', "back\\slash", "ünïcødé-日本", "with space", "a/b/../c.jpg", "sha256-" + "f" * 32]


def test_awkward_ids_round_trip(store: VectorStore) -> None:
    store.create_schema(SCHEMA)
    vectors = unit_vectors(len(AWKWARD_IDS), seed=4)
    store.upsert([Record(rid, v, {"label": "x"}) for rid, v in zip(AWKWARD_IDS, vectors)])
    assert [r.id for r in store.get(AWKWARD_IDS)] == AWKWARD_IDS
    assert [hits[0].id for hits in store.search(vectors, 1)] == AWKWARD_IDS
    assert sorted(r.id for r in all_records(store)) == sorted(AWKWARD_IDS)
    assert store.delete(AWKWARD_IDS[:2]) == 2
    assert store.count() == len(AWKWARD_IDS) - 2


def test_number_and_bool_metadata_round_trip_with_their_types(store: VectorStore) -> None:
    store.create_schema(Schema(dim=DIM, identity="contract-test:v1", fields=("path", "year", "ok")))
    metadata: list[dict[str, Any]] = [
        {"year": 2024, "ok": True, "ratio": 0.25, "big": 2**40, "neg": -3},
        {"year": 1999, "ok": False, "ratio": -1.5, "big": 0, "neg": -0.0},
    ]
    vectors = unit_vectors(2, seed=6)
    store.upsert([Record(f"n{i}", v, m) for i, (v, m) in enumerate(zip(vectors, metadata))])
    for record, want in zip(store.get(["n0", "n1"]), metadata):
        got = dict(record.metadata)
        assert got == want
        assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in want.items()}
    hit = store.search(vectors[:1], 1, {"year": 2024, "ok": True})[0][0]
    assert hit.id == "n0" and hit.metadata["year"] == 2024 and hit.metadata["ok"] is True
    assert store.search(vectors[:1], 2, {"year": [1999]})[0][0].id == "n1"
    assert store.search(vectors[:1], 2, {"ok": False})[0][0].id == "n1"
    assert store.search(vectors[:1], 2, {"year": "2024"}) == [[]]  # a str never equals a number
    assert store.search(vectors[:1], 2, {"ok": 1}) == [[]]  # nor a bool an int


@pytest.mark.parametrize("value", AWKWARD_VALUES[:3])
def test_filter_on_awkward_string_values(store: VectorStore, value: str) -> None:
    store.create_schema(SCHEMA)
    records = make_records(10)
    special = Record("special", unit_vectors(1, seed=7)[0], {"label": value})
    store.upsert([*records, special])
    hits = store.search(records[0].vector[None, :], 5, {"label": value})[0]
    assert [h.id for h in hits] == ["special"]


# -- search --------------------------------------------------------------------------------
def test_search_is_best_first_with_cosine_scores(filled: tuple[VectorStore, list[Record]]) -> None:
    store, records = filled
    queries = unit_vectors(5, seed=42)
    results = store.search(queries, 10)
    assert len(results) == 5
    for query, hits in zip(queries, results):
        expected = brute_force(records, query)
        assert len(hits) == 10
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        reference = dict(expected)
        for hit in hits:
            assert hit.score == pytest.approx(reference[hit.id], abs=1e-4)
        # the 10 hits are the 10 best (up to ties at the cut-off)
        cutoff = expected[9][1]
        must_have = {i for i, s in expected if s > cutoff + 1e-4}
        assert must_have <= {h.id for h in hits}


@pytest.mark.parametrize("k", [1, 3, 59, 60, 61, 200])
def test_search_returns_min_k_n_hits(filled: tuple[VectorStore, list[Record]], k: int) -> None:
    store, records = filled
    hits = store.search(unit_vectors(1, seed=3), k)[0]
    assert len(hits) == min(k, len(records))
    assert len({h.id for h in hits}) == len(hits)


def test_every_stored_vector_finds_itself_first(filled: tuple[VectorStore, list[Record]]) -> None:
    store, records = filled
    vectors = np.stack([r.vector for r in records])
    results = store.search(vectors, 3)
    for record, hits in zip(records, results):
        assert hits[0].id == record.id
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert hits[0].path == record.metadata["path"]
        assert hits[0].metadata["label"] == record.metadata["label"]


def test_batch_of_queries_keeps_order(filled: tuple[VectorStore, list[Record]]) -> None:
    store, records = filled
    order = [17, 3, 42, 3, 0]
    results = store.search(np.stack([records[i].vector for i in order]), 2)
    assert [hits[0].id for hits in results] == [records[i].id for i in order]


def test_search_accepts_a_single_1d_vector(filled: tuple[VectorStore, list[Record]]) -> None:
    store, records = filled
    results = store.search(records[5].vector, 1)
    assert len(results) == 1 and results[0][0].id == records[5].id


def test_scores_are_cosine_for_unnormalised_queries(filled: tuple[VectorStore, list[Record]]) -> None:
    store, records = filled
    query = unit_vectors(1, seed=12)[0]
    unit_hits = store.search(query[None, :], 5)[0]
    scaled_hits = store.search(7.5 * query[None, :], 5)[0]
    assert [h.id for h in scaled_hits] == [h.id for h in unit_hits]
    for a, b in zip(scaled_hits, unit_hits):
        assert a.score == pytest.approx(b.score, abs=1e-4)
    assert store.search(0.01 * records[3].vector[None, :], 1)[0][0].score == pytest.approx(1.0, abs=1e-4)


def test_search_with_zero_vector_raises(filled: tuple[VectorStore, list[Record]]) -> None:
    store, _ = filled
    with pytest.raises(ConfigurationError, match="zero"):
        store.search(np.zeros((1, DIM), dtype=np.float32), 3)


def test_search_of_empty_store_gives_empty_lists(store: VectorStore) -> None:
    store.create_schema(SCHEMA)
    assert store.search(unit_vectors(2), 5) == [[], []]


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "3", None])
def test_search_validates_k(filled: tuple[VectorStore, list[Record]], k: Any) -> None:
    store, _ = filled
    with pytest.raises(ConfigurationError, match="k must be"):
        store.search(unit_vectors(1), k)


def test_search_with_wrong_dim_raises(filled: tuple[VectorStore, list[Record]]) -> None:
    store, _ = filled
    with pytest.raises(ConfigurationError, match=str(DIM)):
        store.search(unit_vectors(1, dim=DIM + 4), 3)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_search_with_nan_raises(filled: tuple[VectorStore, list[Record]], bad: float) -> None:
    store, _ = filled
    query = unit_vectors(2)
    query[1, 3] = bad
    with pytest.raises(ConfigurationError, match="NaN"):
        store.search(query, 3)


# -- filters -------------------------------------------------------------------------------
def test_filter_equality(filled: tuple[VectorStore, list[Record]]) -> None:
    store, records = filled
    hits = store.search(unit_vectors(1, seed=8), 100, {"label": "dog"})[0]
    assert {h.id for h in hits} == {r.id for r in records if r.metadata["label"] == "dog"}
    assert all(h.metadata["label"] == "dog" for h in hits)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_filter_in_list(filled: tuple[VectorStore, list[Record]]) -> None:
    store, records = filled
    hits = store.search(unit_vectors(1, seed=8), 100, {"label": ["dog", "fish"]})[0]
    assert {h.id for h in hits} == {r.id for r in records if r.metadata["label"] in ("dog", "fish")}


def test_filter_and_of_two_fields(filled: tuple[VectorStore, list[Record]]) -> None:
    store, records = filled
    hits = store.search(unit_vectors(1, seed=8), 100, {"label": "cat", "colour": "blue"})[0]
    expected = {r.id for r in records if r.metadata["label"] == "cat" and r.metadata["colour"] == "blue"}
    assert expected and {h.id for h in hits} == expected


def test_filter_on_path(filled: tuple[VectorStore, list[Record]]) -> None:
    store, _ = filled
    hits = store.search(unit_vectors(1), 5, {"path": "/photos/007.jpg"})[0]
    assert [h.id for h in hits] == ["r007"]
    assert hits[0].path == "/photos/007.jpg"


def test_filter_with_no_match_gives_empty_lists(filled: tuple[VectorStore, list[Record]]) -> None:
    store, _ = filled
    assert store.search(unit_vectors(3), 5, {"label": "unicorn"}) == [[], [], []]


def test_filter_on_undeclared_field_raises(filled: tuple[VectorStore, list[Record]]) -> None:
    store, _ = filled
    with pytest.raises(ConfigurationError, match="undeclared|not a declared"):
        store.search(unit_vectors(1), 5, {"undeclared": "x"})


def test_selective_filter_still_returns_k_hits(store: VectorStore) -> None:
    store.create_schema(SCHEMA)
    records = make_records(300, labels=("common",))
    rare = {i for i in range(0, 300, 50)}  # 6 rare records among 300
    records = [
        Record(r.id, r.vector, {**r.metadata, "label": "rare"}) if i in rare else r
        for i, r in enumerate(records)
    ]
    store.upsert(records)
    query = records[1].vector[None, :]  # a common record: the rare ones are far from it
    hits = store.search(query, 5, {"label": "rare"})[0]
    assert len(hits) == 5
    expected = brute_force([records[i] for i in sorted(rare)], query[0])
    assert [h.id for h in hits] == [i for i, _ in expected[:5]]
    assert len(store.search(query, 50, {"label": "rare"})[0]) == len(rare)


# -- the same misuse raises the same error everywhere ----------------------------------------
MISUSE: dict[str, tuple[Callable[[VectorStore], object], type[ImageSearchError]]] = {
    "k=0": (lambda s: s.search(unit_vectors(1), 0), ConfigurationError),
    "wrong-dim-query": (lambda s: s.search(unit_vectors(1, dim=3), 1), ConfigurationError),
    "nan-query": (lambda s: s.search(np.full((1, DIM), np.nan, np.float32), 1), ConfigurationError),
    "filter-undeclared": (lambda s: s.search(unit_vectors(1), 1, {"nope": 1}), ConfigurationError),
    "filter-not-mapping": (lambda s: s.search(unit_vectors(1), 1, "label=cat"), ConfigurationError),  # type: ignore[arg-type]
    "filter-empty-list": (lambda s: s.search(unit_vectors(1), 1, {"label": []}), ConfigurationError),
    "wrong-dim-record": (lambda s: s.upsert([Record("x", unit_vectors(1, dim=3)[0])]), ConfigurationError),
    "other-schema": (lambda s: s.create_schema(Schema(dim=DIM + 1, identity="x")), SchemaMismatchError),
}


@pytest.mark.parametrize("misuse", sorted(MISUSE))
def test_same_misuse_same_error(filled: tuple[VectorStore, list[Record]], misuse: str) -> None:
    store, records = filled
    action, error = MISUSE[misuse]
    with pytest.raises(error) as info:
        action(store)
    assert type(info.value).__module__ == "lookalike.errors"
    assert store.count() == len(records)  # a refused call changes nothing


# -- properties ------------------------------------------------------------------------------
PROPERTY_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPERTY_SETTINGS
@given(
    n=st.integers(1, 40),
    k=st.integers(1, 50),
    seed=st.integers(0, 2**32 - 1),
    dim=st.sampled_from([2, 8, 64]),
)
def test_property_self_top1_sorted_and_length(
    store_factory: Callable[[], VectorStore], n: int, k: int, seed: int, dim: int
) -> None:
    store = store_factory()
    store.create_schema(Schema(dim=dim, identity="property:v1"))
    vectors = unit_vectors(n, dim, seed)
    store.upsert([Record(f"p{i}", v, {"label": str(i % 3)}) for i, v in enumerate(vectors)])
    results = store.search(vectors, k)
    for i, hits in enumerate(results):
        assert len(hits) == min(k, n)
        scores = [h.score for h in hits]
        assert all(a >= b for a, b in zip(scores, scores[1:]))
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        # ties with exact duplicates are allowed; otherwise the record itself is first
        same = [h.id for h in hits if h.score >= 1.0 - 1e-4]
        assert f"p{i}" in same or len(same) == min(k, n)


@PROPERTY_SETTINGS
@given(
    rows=st.lists(
        st.lists(st.integers(-3, 3), min_size=4, max_size=4).filter(lambda r: any(r)),
        min_size=1,
        max_size=30,
    ),
    k=st.integers(1, 35),
)
def test_property_ties_and_duplicates(
    store_factory: Callable[[], VectorStore], rows: list[list[int]], k: int
) -> None:
    """Small integer vectors make many exact duplicates and tied scores."""
    store = store_factory()
    store.create_schema(Schema(dim=4, identity="property:v1"))
    matrix = np.asarray(rows, dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    records = [Record(f"t{i}", v) for i, v in enumerate(matrix)]
    store.upsert(records)
    for i, hits in enumerate(store.search(matrix, k)):
        assert len(hits) == min(k, len(rows))
        reference = dict(brute_force(records, matrix[i]))
        scores = [h.score for h in hits]
        assert all(a >= b - 1e-6 for a, b in zip(scores, scores[1:]))
        for hit in hits:
            assert hit.score == pytest.approx(reference[hit.id], abs=1e-4)
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)


def _iterate(store: VectorStore) -> Iterator[str]:
    for batch in store.scan(batch_size=3):
        for record in batch:
            yield record.id


@PROPERTY_SETTINGS
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["upsert", "delete"]), st.lists(st.integers(0, 15), max_size=5)),
        max_size=12,
    )
)
def test_property_upserts_and_deletes_match_a_dict(
    store_factory: Callable[[], VectorStore], ops: list[tuple[str, list[int]]]
) -> None:
    store = store_factory()
    store.create_schema(SCHEMA)
    model: dict[str, NDArray[np.float32]] = {}
    for step, (op, keys) in enumerate(ops):
        ids = list(dict.fromkeys(f"k{key}" for key in keys))
        if op == "upsert":
            vectors = unit_vectors(len(ids), seed=step)
            store.upsert([Record(i, v, {"label": f"step{step}"}) for i, v in zip(ids, vectors)])
            model.update(zip(ids, vectors))
        else:
            assert store.delete(ids) == sum(i in model for i in ids)
            for i in ids:
                model.pop(i, None)
    assert store.count() == len(model)
    assert sorted(_iterate(store)) == sorted(model)
    for record in store.get(sorted(model)):
        np.testing.assert_allclose(record.vector, model[record.id], atol=1e-6)
