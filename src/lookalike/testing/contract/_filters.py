"""The store contract's filter and misuse tests (a mixin of :class:`VectorStoreContract`)."""

from __future__ import annotations

import pytest

from ...errors import ConfigurationError
from ...protocols import VectorStore
from ...types import Record
from ._kit import (
    MISUSE,
    SCHEMA,
    _ids,
    brute_force,
    expect_error,
    make_records,
    unit_vectors,
)


class FilterTests:
    """Filters (equality, any-of, AND, selective); the same misuse raises the same error."""

    # -- filters ---------------------------------------------------------------------------------
    def test_filter_equality(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, records = filled
        hits = store.search(unit_vectors(1, seed=8), 100, {"label": "dog"})[0]
        want = {r.id for r in records if r.metadata["label"] == "dog"}
        assert set(_ids(hits)) == want, f"filter {{'label': 'dog'}} must return exactly the {len(want)} dogs, got {len(hits)} hits"
        assert all(h.metadata["label"] == "dog" for h in hits)
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True), "filtered hits must be best first too"

    def test_filter_in_list(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, records = filled
        hits = store.search(unit_vectors(1, seed=8), 100, {"label": ["dog", "fish"]})[0]
        want = {r.id for r in records if r.metadata["label"] in ("dog", "fish")}
        assert set(_ids(hits)) == want, (
            f"a list in a filter means any of: {{'label': ['dog', 'fish']}} must return the {len(want)} "
            f"dogs and fish, got {len(hits)} hits"
        )

    def test_filter_and_of_two_fields(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, records = filled
        hits = store.search(unit_vectors(1, seed=8), 100, {"label": "cat", "colour": "blue"})[0]
        expected = {r.id for r in records if r.metadata["label"] == "cat" and r.metadata["colour"] == "blue"}
        assert expected and set(_ids(hits)) == expected, "several filter keys must all match (AND)"

    def test_filter_on_path(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, _ = filled
        hits = store.search(unit_vectors(1), 5, {"path": "/photos/007.jpg"})[0]
        assert _ids(hits) == ["r007"], f"a filter on 'path' must match the record's path, got {_ids(hits)}"
        assert hits[0].path == "/photos/007.jpg"

    def test_filter_with_no_match_gives_empty_lists(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, _ = filled
        got = store.search(unit_vectors(3), 5, {"label": "unicorn"})
        assert got == [[], [], []], f"a filter that matches nothing must give one empty list per query, got {got!r}"

    def test_filter_on_undeclared_field_raises(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, _ = filled
        with expect_error(ConfigurationError, "search() filtering on a field the schema does not declare", "undeclared|not a declared"):
            store.search(unit_vectors(1), 5, {"undeclared": "x"})

    def test_selective_filter_still_returns_k_hits(self, store: VectorStore) -> None:
        store.create_schema(SCHEMA)
        records = make_records(300, labels=("common",))
        rare = set(range(0, 300, 50))  # 6 rare records among 300
        records = [
            Record(r.id, r.vector, {**r.metadata, "label": "rare"}) if i in rare else r
            for i, r in enumerate(records)
        ]
        store.upsert(records)
        query = records[1].vector[None, :]  # a common record: the rare ones are far from it
        hits = store.search(query, 5, {"label": "rare"})[0]
        assert len(hits) == 5, (
            f"a selective filter must still return k hits when k records match, got {len(hits)}: "
            "filter before taking the top k, not after"
        )
        expected = brute_force([records[i] for i in sorted(rare)], query[0])
        assert _ids(hits) == [i for i, _ in expected[:5]]
        assert len(store.search(query, 50, {"label": "rare"})[0]) == len(rare)

    # -- the same misuse raises the same error everywhere ----------------------------------------
    @pytest.mark.parametrize("misuse", sorted(MISUSE))
    def test_same_misuse_same_error(self, filled: tuple[VectorStore, list[Record]], misuse: str) -> None:
        store, records = filled
        action, error = MISUSE[misuse]
        with expect_error(error, f"misuse {misuse!r}"):
            action(store)
        assert store.count() == len(records), "a refused call must change nothing"
