"""Hostile derived files beside a LocalStore: whatever sits at ``<store>.vec`` or
``<store>.ann``, or whatever was written into the tables describing them, searches stay
right and nothing raises; SQLite stays the truth."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from lookalike.stores import InMemoryStore, LocalStore
from lookalike.stores.local._ivf import _MAGIC
from lookalike.types import Record, Schema

DIM = 8
SCHEMA = Schema(dim=DIM, identity="test:hostile-store", fields=("label",))


def records(n: int, seed: int = 0, start: int = 0) -> list[Record]:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return [Record(f"r{start + i}", v[i], {"label": f"l{i % 4}"}) for i in range(n)]


def reference(recs: list[Record]) -> InMemoryStore:
    ref = InMemoryStore()
    ref.create_schema(SCHEMA)
    ref.upsert(recs)
    return ref


def same_answers(store: LocalStore, recs: list[Record]) -> None:
    ref = reference(recs)
    queries = np.stack([r.vector for r in records(12, seed=5)])
    for flt in (None, {"label": "l1"}):
        got = [[h.id for h in hs] for hs in store.search(queries, 5, filter=flt)]
        want = [[h.id for h in hs] for hs in ref.search(queries, 5, filter=flt)]
        assert got == want


def test_a_folder_where_the_vector_file_goes(tmp_path: Path) -> None:
    path = tmp_path / "s.lookalike"
    (tmp_path / "s.lookalike.vec").mkdir()
    recs = records(200)
    with LocalStore(path) as store:
        store.create_schema(SCHEMA)
        store.upsert(recs[:100])
        store.upsert(recs[100:])
        same_answers(store, recs)
    with LocalStore(path) as store:
        same_answers(store, recs)
        assert store.check() == []
    assert (tmp_path / "s.lookalike.vec").is_dir()  # left alone


@pytest.mark.parametrize(
    "content",
    [b"", b"LOOKALIKE-VEC 1\n{not json", b"LOOKALIKE-VEC 1\n[1, 2]".ljust(4096), b"\0" * 9000],
)
def test_garbage_in_the_vector_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "s.lookalike"
    recs = records(150)
    with LocalStore(path) as store:
        store.create_schema(SCHEMA)
        store.upsert(recs)
    (tmp_path / "s.lookalike.vec").write_bytes(content)
    with LocalStore(path) as store:
        same_answers(store, recs)
        store.upsert(records(3, seed=9, start=500))
        assert store.search(records(3, seed=9, start=500)[1].vector, 1)[0][0].id == "r501"
    with LocalStore(path, read_only=True) as store:
        same_answers(store, recs + records(3, seed=9, start=500))


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE meta SET value = 'garbage' WHERE key = 'vecfile'",
        'UPDATE meta SET value = \'{"token": 1, "rows": "x"}\' WHERE key = \'vecfile\'',
        "UPDATE vecsegs SET row = row + 7",  # segments naming the wrong rows
        "INSERT INTO vecsegs(pos, row, n) VALUES (3, 1, 5)",  # overlapping segments
        "DELETE FROM vecsegs",
        "UPDATE meta SET value = json_set(value, '$.rows', 10000000) WHERE key = 'vecfile'",
    ],
)
def test_tampered_tables_describing_the_vector_file(tmp_path: Path, sql: str) -> None:
    path = tmp_path / "s.lookalike"
    recs = records(150)
    with LocalStore(path) as store:
        store.create_schema(SCHEMA)
        store.upsert(recs[:70])
        store.upsert(recs[70:])
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(sql)
    conn.close()
    with LocalStore(path) as store:
        same_answers(store, recs)
        assert store.check() == []
    with LocalStore(path) as store:
        same_answers(store, recs)


@pytest.mark.parametrize(
    "tail",
    [
        _MAGIC + b'{"store": "x"}',
        _MAGIC + b'{"payload_bytes": 99999999999}',
        b"\xff" * 10,
    ],
)
def test_garbage_in_the_index_file(tmp_path: Path, tail: bytes) -> None:
    pytest.importorskip("faiss")
    path, recs, ann = _indexed_store(tmp_path)
    assert ann.exists()
    data = ann.read_bytes()
    ann.write_bytes(data[:-4096] + tail.ljust(4096, b" "))
    with LocalStore(path, ann_threshold=100) as store:
        assert store.search_mode == "ann"  # rebuilt
        top = store.search(recs[17].vector, 1)[0][0]
        assert top.id == "r17" and top.score == pytest.approx(1.0, abs=1e-5)
        assert store.check() == []


def _indexed_store(tmp_path: Path) -> tuple[Path, list[Record], Path]:
    """A store of 400 records with its index file built: (store, records, index file)."""
    path = tmp_path / "s.lookalike"
    recs = records(400)
    with LocalStore(path, ann_threshold=100) as store:
        store.create_schema(SCHEMA)
        store.upsert(recs)
    return path, recs, tmp_path / "s.lookalike.ann"


def _index_trailer(ann: Path) -> dict[str, object]:
    meta: dict[str, object] = json.loads(ann.read_bytes()[-4096:][len(_MAGIC) :])
    return meta


@pytest.mark.parametrize(
    "damage", ["previous format", "codec zeroed", "codec NaN", "codec moved", "codec cut"]
)
def test_an_index_file_whose_codec_is_wrong_is_rebuilt(tmp_path: Path, damage: str) -> None:
    """The codec (vmin, vdiff, the lists' centre) after faiss's part of <store>.ann is checked on
    every open; an index of the previous format (QT_8bit scanned by faiss) is rebuilt."""
    pytest.importorskip("faiss")
    path, recs, ann = _indexed_store(tmp_path)
    data = bytearray(ann.read_bytes())
    meta = _index_trailer(ann)
    at = int(meta["faiss_bytes"])  # type: ignore[call-overload]
    if damage == "previous format":
        data[-4096 : -4096 + 16] = b"LOOKALIKE-ANN 3\n"  # the lists before they were centred
    elif damage == "codec zeroed":
        data[at : at + 64] = bytes(64)
    elif damage == "codec NaN":
        data[at : at + 8] = b"\xff" * 8
    elif damage == "codec moved":
        blob = json.dumps(dict(meta, faiss_bytes=at - 4)).encode()
        data[-4096:] = (_MAGIC + blob).ljust(4096, b" ")
    else:
        cut = 8 * DIM
        data = data[: at + cut // 2] + data[at + cut :]  # the file is shorter than it says
    ann.write_bytes(bytes(data))
    with LocalStore(path, ann_threshold=100) as store:
        assert store.search_mode == "ann"  # rebuilt from the vectors
        assert ann.read_bytes()[-4096:].startswith(_MAGIC)
        assert _index_trailer(ann)["faiss_bytes"] == at
        for i in (17, 250):
            top = store.search(recs[i].vector, 1)[0][0]
            assert top.id == f"r{i}" and top.score == pytest.approx(1.0, abs=1e-5)
        got = store.search(recs[3].vector, 10, filter={"label": recs[3].metadata["label"]})[0]
        assert got[0].id == "r3"
        assert store.check() == []
