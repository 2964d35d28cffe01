"""Hostile input for the stores: copying a store onto itself, damaged records.

A copy onto the same store used to re-read the rows it had just re-inserted and never
end; a damaged record (metadata that is not JSON, a vector of the wrong size) used to
fail every search, get and re-index that touched it.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lookalike import ImageSearchIndex
from lookalike.cli import main
from lookalike.embedders import FakeEmbedder
from lookalike.errors import ConfigurationError, DamagedRecordWarning
from lookalike.stores import InMemoryStore, LocalStore
from lookalike.stores.transfer import copy_store, same_store
from lookalike.types import Record, Schema

from ..conftest import make_image

DIM = 8
SCHEMA = Schema(dim=DIM, identity="hostile-test", fields=("label",))


def records(n: int, seed: int = 0, prefix: str = "r") -> list[Record]:
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return [Record(f"{prefix}{i}", vecs[i], {"label": f"l{i % 3}"}) for i in range(n)]


def filled(path: Path, n: int = 30) -> list[Record]:
    recs = records(n)
    with LocalStore(path) as store:
        store.create_schema(SCHEMA)
        store.upsert(recs)
    return recs


def damage(path: Path, sql: str) -> None:
    """Write behind lookalike's back, as a bad disk or another tool would."""
    conn = sqlite3.connect(path)
    conn.execute(sql)
    conn.commit()
    conn.close()


@pytest.fixture
def bounded_upserts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Fail, instead of hanging, when a copy keeps writing (the defect being tested)."""
    calls: list[int] = []
    original = LocalStore.upsert

    def upsert(self: LocalStore, recs: Any) -> None:
        calls.append(len(recs))
        if len(calls) > 50:
            raise AssertionError("the copy never ends: it keeps re-reading what it wrote")
        original(self, recs)

    monkeypatch.setattr(LocalStore, "upsert", upsert)
    yield calls


# -- copying a store onto itself --------------------------------------------------------


def _same_file_spellings(tmp_path: Path, path: Path) -> dict[str, str]:
    (tmp_path / "link.lookalike").symlink_to(path)
    os.link(path, tmp_path / "hard.lookalike")
    return {
        "same path": str(path),
        "relative path": os.path.relpath(path),
        "dotted path": str(tmp_path / "." / "sub" / ".." / path.name),
        "symlink": str(tmp_path / "link.lookalike"),
        "hard link": str(tmp_path / "hard.lookalike"),
    }


@pytest.mark.parametrize(
    "spelling", ["same path", "relative path", "dotted path", "symlink", "hard link"]
)
def test_cli_copy_onto_the_same_store_is_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    bounded_upserts: list[int],
    spelling: str,
) -> None:
    path = tmp_path / "photos.lookalike"
    filled(path, 30)
    (tmp_path / "sub").mkdir()
    target = _same_file_spellings(tmp_path, path)[spelling]
    size = path.stat().st_size
    bounded_upserts.clear()
    code = main(["copy", "--from", str(path), "--to", target, "--batch-size", "10"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("lookalike: error: cannot copy a store onto itself") and err.count("\n") == 1
    assert bounded_upserts == []  # refused before writing anything
    assert path.stat().st_size == size
    with LocalStore(path) as store:
        assert store.count() == 30 and store.check() == []


def test_copy_store_refuses_one_handle_and_two_handles_on_one_file(
    tmp_path: Path, bounded_upserts: list[int]
) -> None:
    path = tmp_path / "a.lookalike"
    filled(path, 5)
    os.link(path, tmp_path / "b.lookalike")
    with LocalStore(path) as one, LocalStore(tmp_path / "b.lookalike") as other:
        with pytest.raises(ConfigurationError, match="onto itself"):
            copy_store(one, one)
        with pytest.raises(ConfigurationError, match="same store file"):
            copy_store(one, other)
    memory = InMemoryStore()
    memory.create_schema(SCHEMA)
    with pytest.raises(ConfigurationError, match="onto itself"):
        copy_store(memory, memory)


def test_a_copy_of_the_file_is_another_store(tmp_path: Path) -> None:
    # same content (even the same store uuid) but another file: copying is legitimate
    path = tmp_path / "a.lookalike"
    filled(path, 5)
    (tmp_path / "b.lookalike").write_bytes(path.read_bytes())
    with LocalStore(path) as a, LocalStore(tmp_path / "b.lookalike") as b:
        assert same_store(a, b) is None
        assert copy_store(a, b) == 5 and b.count() == 5


def test_same_file_out_of_sight_of_paths_is_caught_by_the_store_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bounded_upserts: list[int]
) -> None:
    # A path the OS cannot match (say a network mount of the same folder) is caught by
    # the store id plus a mark written through one handle and read through the other.
    path = tmp_path / "a.lookalike"
    filled(path, 5)
    bounded_upserts.clear()
    monkeypatch.setattr(os.path, "samefile", lambda a, b: False)
    calls = itertools.count()
    monkeypatch.setattr(os.path, "realpath", lambda p: f"{p}#{next(calls)}")  # never equal
    with (
        LocalStore(path) as one,
        LocalStore(path) as other,
        pytest.raises(ConfigurationError, match="same store file"),
    ):
        copy_store(one, other)
    assert bounded_upserts == []
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM meta WHERE key = 'probe'").fetchone()[0] == 0
    conn.close()


def test_tencent_stores_are_the_same_by_url_database_and_collection() -> None:
    pytest.importorskip("tcvectordb")
    from lookalike.stores import TencentVectorStore

    from ..stores.tencent_server import FakeTencentServer

    with FakeTencentServer(key="k") as server:

        def open_(url: str, collection: str = "images") -> TencentVectorStore:
            return TencentVectorStore(url, key="k", database="db", collection=collection, timeout=5)

        a, b, c = open_(server.url), open_(server.url.upper() + "/"), open_(server.url, "other")
        a.create_schema(SCHEMA)
        a.upsert(records(3))
        assert same_store(a, b) is not None
        with pytest.raises(ConfigurationError, match="onto itself"):
            copy_store(a, b)
        assert same_store(a, c) is None
        assert copy_store(a, c) == 3


def test_scan_does_not_see_rows_written_behind_it(tmp_path: Path, bounded_upserts: list[int]) -> None:
    # What a copy onto itself did: each batch re-inserted (new rowids) while scanning.
    with LocalStore(tmp_path / "s.lookalike") as store:
        store.create_schema(SCHEMA)
        store.upsert(records(40))
        seen = []
        for batch in store.scan(7):
            seen += [r.id for r in batch]
            store.upsert(batch)  # replaced: new rows behind the scan
            store.upsert(records(1, seed=len(seen), prefix=f"new{len(seen)}-"))
            store.delete(["r39"])  # deleted ahead of the scan: still in its snapshot
        assert sorted(seen) == sorted(f"r{i}" for i in range(40))
        assert len(seen) == 40
        assert store.count() == 39 + 6


def test_abandoned_scan_releases_its_snapshot(tmp_path: Path) -> None:
    with LocalStore(tmp_path / "s.lookalike") as store:
        store.create_schema(SCHEMA)
        store.upsert(records(20))
        scan = store.scan(5)
        assert len(next(scan)) == 5
        scan.close()
        store.upsert(records(3, seed=9, prefix="x"))
        assert store.count() == 23


# -- damaged records ------------------------------------------------------------------


def test_damaged_metadata_is_skipped_by_search_named_and_dropped_by_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "d.lookalike"
    recs = filled(path, 10)
    with LocalStore(path) as store:
        assert store.search(recs[3].vector, 10)[0][0].id == "r3"  # loaded before the damage
        damage(path, "UPDATE records SET metadata = '{\"label\": ' WHERE id = 'r3'")
        with pytest.warns(DamagedRecordWarning, match="record 'r3' is damaged"):
            hits = store.search(recs[3].vector, 10)[0]
        assert [h.id for h in hits] == [h for h in [h.id for h in hits] if h != "r3"]
        assert "r3" not in {h.id for h in hits} and len(hits) == 9
    with LocalStore(path) as fresh:  # a new process loads the damaged row: skipped too
        with pytest.warns(DamagedRecordWarning, match="'r3'"):
            hits = fresh.search(recs[3].vector, 10, filter={"label": "l0"})[0]
        assert {h.id for h in hits} == {"r0", "r6", "r9"}
        with pytest.warns(DamagedRecordWarning, match="'r3'"):
            assert fresh.get(["r3", "r4"])[0].id == "r4"
        with pytest.warns(DamagedRecordWarning):
            assert sum(len(b) for b in fresh.scan(4)) == 9
    assert main(["check", "--store", str(path)]) == 1
    out = capsys.readouterr().out
    assert "record 'r3': unreadable metadata" in out
    with LocalStore(path) as store:
        assert store.count() == 10  # check without --fix wrote nothing
    assert main(["check", "--store", str(path), "--fix"]) == 0
    out = capsys.readouterr().out
    assert "record 'r3': unreadable metadata" in out and "dropped" in out and "after the fix: ok" in out
    with LocalStore(path) as store, warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.count() == 9 and store.check() == []
        assert store.search(recs[4].vector, 1)[0][0].id == "r4"


@pytest.mark.parametrize("meta", ["[1, 2]", "null", "not json at all"])
def test_metadata_that_is_not_an_object_is_damage_too(tmp_path: Path, meta: str) -> None:
    path = tmp_path / "d.lookalike"
    recs = filled(path, 4)
    damage(path, f"UPDATE records SET metadata = '{meta}' WHERE id = 'r1'")
    with LocalStore(path) as store:
        with pytest.warns(DamagedRecordWarning, match="'r1'"):
            assert [h.id for h in store.search(recs[1].vector, 4)[0]][:1] != ["r1"]
        assert any("'r1'" in p for p in store.check())


def test_wrong_size_vector_does_not_block_search_or_reindexing(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        make_image(i, size=(24, 20)).save(folder / f"{i}.png")
    path = tmp_path / "v.lookalike"
    embedder = FakeEmbedder(dim=16)
    with ImageSearchIndex(embedder=embedder, store=LocalStore(path), workers=1) as index:
        first = index.add_many(sorted(folder.glob("*.png")))
        assert len(first.added) == 4
        bad = index.search(folder / "2.png", k=1)[0].id
    damage(path, f"UPDATE records SET vector = x'0000803f' WHERE id = '{bad}'")
    with LocalStore(path) as store:
        assert store.check() == [f"record {bad!r}: vector of 4 bytes, expected 64"]
    with ImageSearchIndex(embedder=embedder, store=LocalStore(path), workers=1) as index:
        with pytest.warns(DamagedRecordWarning, match=repr(bad)):
            hits = index.search(folder / "1.png", k=4)
        assert len(hits) == 3 and bad not in {h.id for h in hits}
        with pytest.warns(DamagedRecordWarning, match=repr(bad)):  # read as absent
            report = index.add_many(sorted(folder.glob("*.png")))  # re-index: replaces it
        assert report.failed == [] and len(report.unchanged) == 3
        assert report.added + report.updated == [bad]
        assert index.search(folder / "2.png", k=1)[0].id == bad
        assert index.count() == 4
    with LocalStore(path) as store:
        assert store.check() == []


def test_check_fix_on_a_vector_of_the_wrong_size(tmp_path: Path) -> None:
    path = tmp_path / "v.lookalike"
    filled(path, 6)
    damage(path, "UPDATE records SET vector = zeroblob(12) WHERE id IN ('r1', 'r4')")
    with LocalStore(path) as store:
        problems = store.check(fix=True)
        assert problems == [
            "record 'r1': vector of 12 bytes, expected 32; dropped",
            "record 'r4': vector of 12 bytes, expected 32; dropped",
        ]
        assert store.check() == [] and store.count() == 4


def test_damaged_records_in_an_approximate_index_are_skipped(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    path = tmp_path / "ann.lookalike"
    recs = records(300)
    with LocalStore(path, ann_threshold=100) as store:
        store.create_schema(SCHEMA)
        store.upsert(recs)
    damage(path, "UPDATE records SET vector = zeroblob(3) WHERE id = 'r5'")
    damage(path, "UPDATE records SET metadata = 'oops' WHERE id = 'r6'")
    with LocalStore(path, ann_threshold=100) as store:
        with pytest.warns(DamagedRecordWarning):
            assert store.search_mode == "ann"
            hits = store.search(recs[6].vector, 300)[0]
        assert {h.id for h in hits} == {r.id for r in recs} - {"r5", "r6"}
        assert [p.split(":")[0] for p in store.check()] == ["record 'r5'", "record 'r6'"]


def test_cli_search_warns_in_one_line_and_still_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(3):
        make_image(i, size=(24, 20)).save(tmp_path / f"{i}.png")
    store = str(tmp_path / "w.lookalike")
    assert main(["index", str(tmp_path), "--store", store, "--embedder", "fake", "-q"]) == 0
    damage(Path(store), "UPDATE records SET metadata = 'x' WHERE rowid = 1")
    capsys.readouterr()
    assert main(["search", str(tmp_path / "0.png"), "--store", store, "-k", "3"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2
    assert err.startswith("lookalike: warning: ") and err.count("\n") == 1
    assert "is damaged (unreadable metadata" in err and "check --fix" in err
