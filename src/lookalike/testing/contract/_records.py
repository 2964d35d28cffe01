"""The store contract's upsert/get/delete/scan tests (a mixin of :class:`VectorStoreContract`)."""

from __future__ import annotations

import numpy as np
import pytest

from ...errors import ConfigurationError
from ...protocols import VectorStore
from ...types import Record
from ._kit import (
    INVALID_RECORDS,
    SCHEMA,
    _ids,
    expect_error,
    make_records,
    unit_vectors,
)


class RecordTests:
    """Writing and reading: upsert, get, delete, scan; invalid records refused."""

    # -- writing and reading ---------------------------------------------------------------------
    def test_upsert_then_get_returns_vectors_and_metadata(self, store: VectorStore) -> None:
        store.create_schema(SCHEMA)
        records = make_records(5)
        store.upsert(records)
        assert store.count() == 5, f"count() after upserting 5 records must be 5, got {store.count()}"
        got = store.get([r.id for r in records])
        assert _ids(got) == _ids(records), "get(ids) must return the records in the order asked"
        for g, r in zip(got, records):
            np.testing.assert_allclose(g.vector, r.vector, atol=1e-6, err_msg=f"get() changed the vector of {r.id}")
            assert dict(g.metadata) == dict(r.metadata), f"get() changed the metadata of {r.id}"

    def test_upsert_empty_list_is_a_no_op(self, store: VectorStore) -> None:
        store.create_schema(SCHEMA)
        store.upsert([])
        assert store.count() == 0, "upsert([]) must store nothing"

    def test_upsert_replaces_by_id(self, store: VectorStore) -> None:
        store.create_schema(SCHEMA)
        store.upsert(make_records(4))
        new_vector = unit_vectors(1, seed=99)[0]
        store.upsert([Record("r001", new_vector, {"label": "owl"})])
        assert store.count() == 4, "upsert() of an existing id must replace it, not add a second record"
        (got,) = store.get(["r001"])
        np.testing.assert_allclose(got.vector, new_vector, atol=1e-6, err_msg="upsert() must replace the vector")
        assert dict(got.metadata) == {"label": "owl"}, (
            f"upsert() must wholly replace the metadata (not merge it), got {dict(got.metadata)!r}"
        )
        hits = store.search(new_vector[None, :], 1)[0]
        assert hits[0].id == "r001", "search() must use the replaced vector"
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)

    def test_get_keeps_requested_order_and_leaves_out_missing(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, _ = filled
        got = store.get(["r010", "nope", "r002", "r033", "also-missing"])
        assert _ids(got) == ["r010", "r002", "r033"], (
            f"get() must return existing records in the order asked and leave missing ids out, got {_ids(got)}"
        )
        assert store.get([]) == [], "get([]) must return []"
        assert store.get(["missing"]) == [], "get() of a missing id must return [] (not raise)"

    def test_get_with_repeated_id_returns_it_once(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, _ = filled
        got = _ids(store.get(["r004", "r004", "r001"]))
        assert got == ["r004", "r001"], f"get() with a repeated id must return that record once, got {got}"

    def test_delete_returns_number_removed(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, records = filled
        removed = store.delete(["r000", "r001", "missing", "r001"])
        assert removed == 2, f"delete() must return how many records it removed (2), got {removed!r}"
        assert store.count() == len(records) - 2
        assert store.get(["r000", "r001"]) == [], "get() must not return deleted records"
        assert store.delete(["r000"]) == 0, "delete() of an id already deleted must return 0"
        assert store.delete([]) == 0, "delete([]) must return 0"
        hits = store.search(records[0].vector[None, :], len(records))[0]
        assert {"r000", "r001"}.isdisjoint(_ids(hits)), "search() must not return deleted records"

    def test_scan_yields_every_record_once(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, records = filled
        batches = list(store.scan(batch_size=7))
        assert all(0 < len(b) <= 7 for b in batches), "scan(batch_size=7) must yield non-empty batches of <= 7"
        ids = [r.id for b in batches for r in b]
        assert sorted(ids) == sorted(r.id for r in records), "scan() must yield every record exactly once"
        by_id = {r.id: r for r in records}
        for r in (r for b in batches for r in b):
            np.testing.assert_allclose(r.vector, by_id[r.id].vector, atol=1e-6, err_msg=f"scan() changed {r.id}")
            assert dict(r.metadata) == dict(by_id[r.id].metadata), f"scan() changed the metadata of {r.id}"

    def test_scan_of_empty_store_yields_nothing(self, store: VectorStore) -> None:
        store.create_schema(SCHEMA)
        assert list(store.scan()) == [], "scan() of an empty store must yield no batch (not an empty one)"

    @pytest.mark.parametrize("bad", sorted(INVALID_RECORDS))
    def test_invalid_records_are_refused(self, store: VectorStore, bad: str) -> None:
        store.create_schema(SCHEMA)
        with expect_error(ConfigurationError, f"upsert() of an invalid record ({bad})"):
            store.upsert([make_records(1)[0], INVALID_RECORDS[bad]])
        assert store.count() == 0, (
            "a refused upsert() must store nothing: validate every record before writing any"
        )

    def test_duplicate_ids_in_one_upsert_are_refused(self, store: VectorStore) -> None:
        store.create_schema(SCHEMA)
        one = make_records(1)[0]
        with expect_error(ConfigurationError, "upsert() with the same id twice in one call", "duplicate"):
            store.upsert([one, Record(one.id, unit_vectors(1, seed=5)[0], {})])
