"""The store contract's metadata and metadata value tests (a mixin of :class:`VectorStoreContract`)."""

from __future__ import annotations

from typing import Any

import pytest

from ...errors import ConfigurationError
from ...protocols import VectorStore
from ...types import Record, Schema
from ._kit import (
    AWKWARD_IDS,
    AWKWARD_VALUES,
    DIM,
    EDGE_VALUES,
    REFUSED_VALUES,
    SCHEMA,
    VALUE_SCHEMA,
    _describe,
    _ids,
    _stored,
    _value_outcome,
    all_records,
    expect_error,
    make_records,
    unit_vectors,
)


class MetadataTests:
    """Metadata and ids round-trip; every store keeps the same values and refuses the same ones."""

    # -- metadata --------------------------------------------------------------------------------
    def test_metadata_round_trips(self, store: VectorStore) -> None:
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
        got = {r.id: r for r in store.get(_ids(records))}
        for r in records:
            assert dict(got[r.id].metadata) == dict(r.metadata), (
                f"metadata must come back unchanged from get(): stored {dict(r.metadata)!r}, "
                f"got {dict(got[r.id].metadata)!r} (quotes, backslashes, newlines, unicode, '')"
            )
        for r in records:
            hit = store.search(r.vector[None, :], 1)[0][0]
            assert hit.id == r.id
            assert hit.path == r.metadata["path"], "Hit.path must be the record's 'path' metadata"
            assert hit.content_hash == r.metadata["sha256"], (
                "Hit.content_hash must be the record's 'sha256' metadata"
            )
            assert dict(hit.metadata) == {
                k: v for k, v in r.metadata.items() if k not in ("path", "sha256")
            }, "Hit.metadata must be the record's metadata without 'path' and 'sha256'"

    def test_awkward_ids_round_trip(self, store: VectorStore) -> None:
        store.create_schema(SCHEMA)
        vectors = unit_vectors(len(AWKWARD_IDS), seed=4)
        store.upsert([Record(rid, v, {"label": "x"}) for rid, v in zip(AWKWARD_IDS, vectors)])
        assert _ids(store.get(AWKWARD_IDS)) == AWKWARD_IDS, "ids with quotes, slashes, spaces, unicode must round-trip"
        assert [hits[0].id for hits in store.search(vectors, 1)] == AWKWARD_IDS
        assert sorted(r.id for r in all_records(store)) == sorted(AWKWARD_IDS)
        assert store.delete(AWKWARD_IDS[:2]) == 2
        assert store.count() == len(AWKWARD_IDS) - 2

    def test_number_and_bool_metadata_round_trip_with_their_types(self, store: VectorStore) -> None:
        store.create_schema(Schema(dim=DIM, identity="contract-test:v1", fields=("path", "year", "ok")))
        metadata: list[dict[str, Any]] = [
            {"year": 2024, "ok": True, "ratio": 0.25, "big": 2**40, "neg": -3},
            {"year": 1999, "ok": False, "ratio": -1.5, "big": 0, "neg": -0.0},
        ]
        vectors = unit_vectors(2, seed=6)
        store.upsert([Record(f"n{i}", v, m) for i, (v, m) in enumerate(zip(vectors, metadata))])
        for record, want in zip(store.get(["n0", "n1"]), metadata):
            got = dict(record.metadata)
            assert got == want, f"metadata must round-trip: stored {want!r}, got {got!r}"
            assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in want.items()}, (
                "int, float and bool metadata must keep their types (True is not 1, 2 is not 2.0)"
            )
        hit = store.search(vectors[:1], 1, {"year": 2024, "ok": True})[0][0]
        assert hit.id == "n0" and hit.metadata["year"] == 2024 and hit.metadata["ok"] is True
        assert store.search(vectors[:1], 2, {"year": [1999]})[0][0].id == "n1"
        assert store.search(vectors[:1], 2, {"ok": False})[0][0].id == "n1"
        assert store.search(vectors[:1], 2, {"year": "2024"}) == [[]], "a filter str must never equal a number"
        assert store.search(vectors[:1], 2, {"ok": 1}) == [[]], "a filter int must never equal a bool"

    @pytest.mark.parametrize("value", AWKWARD_VALUES[:3])
    def test_filter_on_awkward_string_values(self, store: VectorStore, value: str) -> None:
        store.create_schema(SCHEMA)
        records = make_records(10)
        special = Record("special", unit_vectors(1, seed=7)[0], {"label": value})
        store.upsert([*records, special])
        hits = store.search(records[0].vector[None, :], 5, {"label": value})[0]
        assert _ids(hits) == ["special"], f"filter {{'label': {value!r}}} must match exactly that value, got {_ids(hits)}"

    # -- metadata values: every store keeps the same ones, and refuses the same ones ----------
    @pytest.mark.parametrize("name", list(REFUSED_VALUES))
    def test_unfilterable_values_are_refused_at_upsert(self, store: VectorStore, name: str) -> None:
        value = REFUSED_VALUES[name]
        store.create_schema(VALUE_SCHEMA)
        vectors = unit_vectors(3, seed=11)
        store.upsert([Record(f"o{i}", vectors[i], {"value": f"other-{i}"}) for i in range(2)])
        with expect_error(
            ConfigurationError,
            f"upsert() of a record 'odd' with metadata {{'value': {value!r}}} ({name})",
            names=("'odd'", "'value'"),
            why="No store can keep this value and filter on it alike; refuse it before writing "
            "anything (lookalike.filters.value_problem(value) says which values, and why)",
        ):
            store.upsert([Record("odd", vectors[2], {"value": value, "label": "odd"})])
        left = sorted(r.id for r in store.get(["odd", "o0", "o1"]))
        assert left == ["o0", "o1"], (
            f"a refused upsert() must store nothing and keep the records already there, got {left}"
        )

    @pytest.mark.parametrize("name", list(REFUSED_VALUES))
    def test_unfilterable_values_are_refused_in_filters(self, store: VectorStore, name: str) -> None:
        value = REFUSED_VALUES[name]
        store.create_schema(VALUE_SCHEMA)
        store.upsert([Record("a", unit_vectors(1)[0], {"value": "x"})])
        for filter in ({"value": value}, {"value": ["x", value]}):
            with expect_error(
                ConfigurationError,
                f"search() with the filter {filter!r} ({name})",
                names=("'value'",),
                why="No store can hold this value; refuse it in a filter as upsert() does "
                "(lookalike.filters.normalize_filter checks filters so)",
            ):
                store.search(unit_vectors(1)[0], 1, filter)

    @pytest.mark.parametrize("name", list(EDGE_VALUES))
    def test_edge_values_are_kept_and_found(self, store: VectorStore, name: str) -> None:
        value = EDGE_VALUES[name]
        store.create_schema(VALUE_SCHEMA)
        got = _value_outcome(store, value, unit_vectors(3, seed=11))
        assert got == _stored(value), (
            f"metadata {{'value': {value!r}}} ({name}) is a value every store must keep exactly and "
            f"filter on: this store {_describe(got)}; it must keep it, read it back as {value!r} "
            f"({type(value).__name__}), and find ['odd'] by an equality filter and by an any-of filter"
        )

    def test_refused_value_in_a_batch_writes_nothing(self, store: VectorStore) -> None:
        store.create_schema(SCHEMA)
        vectors = unit_vectors(2)
        batch = [Record("a", vectors[0], {"label": "ok"}), Record("b", vectors[1], {"label": "bad\x00"})]
        with expect_error(
            ConfigurationError,
            "upsert() of records 'a' and 'b', with a NUL character in the 'label' of 'b'",
            names=("'b'", "'label'", "NUL"),
            why="Check every value of every record before writing any",
        ):
            store.upsert(batch)
        assert store.count() == 0, (
            "a refused upsert() must store nothing: check every value of every record before writing any"
        )
