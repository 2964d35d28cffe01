"""The stores/local package and the Tencent error table: the pieces the redesign (#15) made."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from lookalike.errors import ConfigurationError
from lookalike.stores import LocalStore
from lookalike.stores.local import store as store_module
from lookalike.stores.local._sqlite import execute_in
from lookalike.types import Record, Schema

SCHEMA = Schema(dim=4, identity="package-test", fields=("label",))


@pytest.mark.parametrize("name", ["ann_threshold", "ann_nprobe"])
@pytest.mark.parametrize("value", [True, 0, -3, 2.0, "8"])
def test_ann_options_refuse_what_is_not_a_positive_int(tmp_path: Path, name: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=f"^{name} must be a positive int or None, got"):
        LocalStore(tmp_path / "a.lookalike", **{name: value})  # type: ignore[arg-type]
    assert not (tmp_path / "a.lookalike").exists()


def test_ann_options_take_numpy_integers(tmp_path: Path) -> None:
    with LocalStore(tmp_path / "a.lookalike", ann_threshold=np.int64(5), ann_nprobe=np.int32(2)) as store:  # type: ignore[arg-type]
        assert (store.ann_threshold, store.ann_nprobe) == (5, 2)
        assert type(store.ann_threshold) is int


def test_execute_in_runs_once_per_chunk_and_sees_every_value() -> None:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (v INTEGER)")
    db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(1500)])
    values = list(range(1500))[::-1]  # 3 chunks of at most 500 placeholders
    cursors = list(execute_in(db, "SELECT v FROM t WHERE v IN ({marks})", values))
    assert len(cursors) == 3
    assert sorted(v for cur in cursors for (v,) in cur) == list(range(1500))
    assert list(execute_in(db, "SELECT v FROM t WHERE v IN ({marks})", [])) == []


def test_get_and_delete_cross_the_in_chunk_boundary(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    records = [Record(f"r{i}", rng.standard_normal(4).astype(np.float32), {"label": "x"}) for i in range(1203)]
    with LocalStore(tmp_path / "a.lookalike") as store:
        store.create_schema(SCHEMA)
        store.upsert(records)
        store.upsert(records[:1001])  # replacing goes through the chunked delete too
        assert store.count() == 1203
        ids = [r.id for r in records][::-1] + ["missing"]
        assert [r.id for r in store.get(ids)] == ids[:-1]
        assert store.delete(ids) == 1203
        assert store.count() == 0


def test_the_old_module_path_still_names_the_store() -> None:
    assert store_module.LocalStore is LocalStore
    assert LocalStore.__module__ == "lookalike.stores.local.store"


def test_each_store_opens_from_its_url_as_the_registry_does(tmp_path: Path) -> None:
    from lookalike.registry import open_store
    from lookalike.stores import InMemoryStore

    path = tmp_path / "sub" / "a.lookalike"
    for url in (str(path), f"local:{path}"):
        with LocalStore.from_url(url, ann_threshold=7) as store, open_store(url, ann_threshold=7) as same:  # type: ignore[attr-defined]
            assert (store.path, store.ann_threshold) == (same.path, same.ann_threshold) == (path, 7)
    assert isinstance(InMemoryStore.from_url("memory:"), InMemoryStore)
    assert InMemoryStore.from_url("memory").count() == 0
    with pytest.raises(ConfigurationError, match="memory:"):
        InMemoryStore.from_url("memory:/x")
