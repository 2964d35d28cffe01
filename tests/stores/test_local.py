"""LocalStore's own promises: persistence, refusing foreign files, several handles on one file.

Only public behaviour is tested, so the storage internals may change freely.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lookalike import Record, Schema, SchemaMismatchError, StoreCorruptError, StoreError
from lookalike.stores import LocalStore

from .test_contract import SCHEMA, make_records, unit_vectors


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "folder" / "photos.lookalike"


def test_reopen_gives_every_record_back(path: Path) -> None:
    records = make_records(120)
    with LocalStore(path) as store:
        store.create_schema(SCHEMA)
        store.upsert(records[:70])
        store.upsert(records[70:])
        store.delete(["r005", "r006"])
        store.upsert([Record("r010", unit_vectors(1, seed=9)[0], {"label": "changed"})])
    kept = {r.id: r for r in records if r.id not in ("r005", "r006")}
    kept["r010"] = Record("r010", unit_vectors(1, seed=9)[0], {"label": "changed"})

    with LocalStore(path) as reopened:
        assert reopened.describe() == SCHEMA
        assert reopened.count() == len(kept)
        scanned = {r.id: r for batch in reopened.scan(batch_size=25) for r in batch}
        assert scanned.keys() == kept.keys()
        for rid, record in kept.items():
            np.testing.assert_array_equal(scanned[rid].vector, np.asarray(record.vector, np.float32))
            assert dict(scanned[rid].metadata) == dict(record.metadata)
        hits = reopened.search(kept["r010"].vector[None, :], 1)[0]
        assert hits[0].id == "r010" and hits[0].metadata["label"] == "changed"


def test_reopen_keeps_the_schema_and_refuses_another(path: Path) -> None:
    with LocalStore(path) as store:
        store.create_schema(SCHEMA)
    with LocalStore(path) as store, pytest.raises(SchemaMismatchError, match="other-model"):
        store.create_schema(Schema(dim=SCHEMA.dim, identity="other-model", fields=SCHEMA.fields))


def test_file_that_is_not_a_store_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "thesis.docx"
    content = b"PK\x03\x04 my only copy of something important" * 100
    path.write_bytes(content)
    with pytest.raises(StoreCorruptError, match="not a lookalike store"):
        LocalStore(path)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.docx"]


def test_foreign_sqlite_database_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.execute("INSERT INTO users VALUES ('ada')")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreCorruptError, match="not a lookalike store"):
        LocalStore(path)
    assert path.read_bytes() == before
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT name FROM users").fetchall() == [("ada",)]
    conn.close()


def test_folder_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreCorruptError, match="folder"):
        LocalStore(tmp_path)


def test_second_handle_sees_committed_writes(path: Path) -> None:
    first = LocalStore(path)
    second = LocalStore(path)
    try:
        first.create_schema(SCHEMA)
        assert second.describe() == SCHEMA
        records = make_records(20)
        first.upsert(records[:10])
        assert second.count() == 10
        # the second handle searches (loading its matrix) before more writes arrive
        assert second.search(records[0].vector[None, :], 1)[0][0].id == "r000"
        first.upsert(records[10:])
        first.delete(["r000"])
        assert second.count() == 19
        hits = second.search(records[15].vector[None, :], 3)[0]
        assert hits[0].id == "r015"
        assert "r000" not in {h.id for h in second.search(records[0].vector[None, :], 20)[0]}
        assert [r.id for r in second.get(["r019", "r000"])] == ["r019"]
        # and the other way round
        second.upsert([Record("from-second", unit_vectors(1, seed=3)[0], {"label": "b"})])
        assert first.get(["from-second"])[0].metadata == {"label": "b"}
        assert first.search(unit_vectors(1, seed=3), 1)[0][0].id == "from-second"
    finally:
        first.close()
        second.close()


def test_check_is_empty_on_a_healthy_store(path: Path) -> None:
    with LocalStore(path) as store:
        assert store.check() == []
        store.create_schema(SCHEMA)
        store.upsert(make_records(30))
        assert store.check() == []


def test_closed_store_raises_store_error(path: Path) -> None:
    store = LocalStore(path)
    store.create_schema(SCHEMA)
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.count()


def test_empty_file_becomes_a_store(tmp_path: Path) -> None:
    path = tmp_path / "empty.lookalike"
    path.touch()
    with LocalStore(path) as store:
        store.create_schema(SCHEMA)
        store.upsert(make_records(2))
    with LocalStore(path) as store:
        assert store.count() == 2


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.dictionaries(
        st.text(min_size=1, max_size=12),
        st.tuples(
            st.lists(st.floats(-1e3, 1e3, width=32), min_size=4, max_size=4).filter(
                lambda v: float(np.linalg.norm(np.asarray(v, np.float32))) > 1e-3
            ),
            st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=20),  # NUL, lone surrogates are refused
        ),
        max_size=25,
    )
)
def test_property_round_trip_after_reopen(
    tmp_path_factory: pytest.TempPathFactory, data: dict[str, tuple[list[float], str]]
) -> None:
    path = tmp_path_factory.mktemp("roundtrip") / "store.lookalike"
    schema = Schema(dim=4, identity="property:v1")
    records = []
    for rid, (values, label) in data.items():
        vec = np.asarray(values, dtype=np.float32)
        records.append(Record(rid, (vec / np.linalg.norm(vec)).astype(np.float32), {"label": label}))
    with LocalStore(path) as store:
        store.create_schema(schema)
        store.upsert(records)
    with LocalStore(path) as store:
        assert store.count() == len(records)
        got = {r.id: r for r in store.get([r.id for r in records])}
        for record in records:
            np.testing.assert_array_equal(got[record.id].vector, record.vector)
            assert dict(got[record.id].metadata) == dict(record.metadata)


def test_damaged_store_file_is_reported_as_corrupt_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "damaged.lookalike"
    content = b"SQLite format 3\x00" + b"\xff\x13garbage" * 200
    path.write_bytes(content)
    with pytest.raises(StoreCorruptError):
        store = LocalStore(path)
        store.create_schema(SCHEMA)  # in case opening is lazy
    assert path.read_bytes() == content
