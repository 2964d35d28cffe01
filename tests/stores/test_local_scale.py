"""LocalStore at scale, in miniature: the ANN path, its derived file, filters, incremental sync.

A low ``ann_threshold`` makes a few thousand small vectors take the path a million
real ones would; speed targets live in ``benchmarks/store_scale.py``, not here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lookalike.stores import InMemoryStore, LocalStore
from lookalike.types import Hit, Record, Schema

pytest.importorskip("faiss")

DIM = 32
SCHEMA = Schema(dim=DIM, identity="test:scale", fields=("path", "label", "shard"))


def clustered(n: int, seed: int = 0, clusters: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM)).astype(np.float32)
    vecs = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, DIM)).astype(
        np.float32
    )
    return (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)


def records(vectors: np.ndarray, start: int = 0) -> list[Record]:
    return [
        Record(
            f"r{start + i}",
            v,
            {
                "path": f"/p/{start + i}.jpg",
                "label": f"c{(start + i) % 7}",
                "shard": (start + i) % 500,
            },
        )
        for i, v in enumerate(vectors)
    ]


def fill(store: LocalStore | InMemoryStore, n: int, seed: int = 0) -> np.ndarray:
    store.create_schema(SCHEMA)
    vecs = clustered(n, seed)
    for start in range(0, n, 1000):
        store.upsert(records(vecs[start : start + 1000], start))
    return vecs


def recall(got: list[list[str]], want: list[list[str]]) -> float:
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want)]))


@pytest.fixture
def pair(tmp_path: Path) -> tuple[LocalStore, InMemoryStore, np.ndarray]:
    store = LocalStore(tmp_path / "big.lookalike", ann_threshold=2000)
    ref = InMemoryStore()
    vecs = fill(store, 6000)
    fill(ref, 6000)
    yield store, ref, vecs
    store.close()


def test_ann_recall_and_exact_scores(pair: tuple[LocalStore, InMemoryStore, np.ndarray]) -> None:
    store, ref, vecs = pair
    assert store.search_mode == "ann"
    assert store.ann_path.exists()
    queries = clustered(50, seed=9)
    got = store.search(queries, 10)
    want = ref.search(queries, 10)
    assert recall([[h.id for h in hs] for hs in got], [[h.id for h in hs] for hs in want]) >= 0.95
    for hits in got:  # re-ranked: scores are exact cosines, best first
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        for h in hits:
            assert h.score == pytest.approx(
                float(vecs[int(h.id[1:])] @ queries[got.index(hits)]), abs=1e-5
            )
    hit = store.search(vecs[123], 1)[0][0]
    assert hit.id == "r123" and hit.path == "/p/123.jpg" and hit.metadata["label"] == "c4"


@pytest.mark.parametrize(
    "flt", [{"shard": 17}, {"shard": [3, 4]}, {"label": "c2"}, {"label": ["c1", "c2", "c3"]}]
)
def test_filters_on_ann_path_lose_nothing(
    pair: tuple[LocalStore, InMemoryStore, np.ndarray], flt: dict[str, object]
) -> None:
    store, ref, _ = pair
    queries = clustered(20, seed=5)
    got = store.search(queries, 30, filter=flt)
    want = ref.search(queries, 30, filter=flt)
    for g, w in zip(got, want):
        assert len(g) == len(w)  # a selective filter (12 of 6000) still fills the list
        assert all(
            h.metadata[name] in (v if isinstance(v, list) else [v])
            for h in g
            for name, v in flt.items()
        )
    assert recall([[h.id for h in hs] for hs in got], [[h.id for h in hs] for hs in want]) >= 0.95


def test_filter_values_keep_their_types(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "t.lookalike", ann_threshold=None)
    store.create_schema(Schema(dim=4, identity="t", fields=("v",)))
    vals: list[object] = [1, True, "1", 1.0, False, 0]
    store.upsert(
        [Record(f"r{i}", np.eye(4, dtype=np.float32)[i % 4], {"v": v}) for i, v in enumerate(vals)]
    )
    q = np.ones(4, dtype=np.float32) / 2
    assert sorted(h.id for h in store.search(q, 10, filter={"v": 1})[0]) == ["r0", "r3"]
    assert [h.id for h in store.search(q, 10, filter={"v": True})[0]] == ["r1"]
    assert [h.id for h in store.search(q, 10, filter={"v": "1"})[0]] == ["r2"]
    assert sorted(h.id for h in store.search(q, 10, filter={"v": [False, 0]})[0]) == ["r4", "r5"]
    store.close()


def test_writes_reach_ann_incrementally_and_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.lookalike"
    store = LocalStore(path, ann_threshold=2000)
    vecs = fill(store, 3000)
    assert store.search_mode == "ann"
    built = store.ann_path.stat().st_mtime_ns
    # add, replace and delete after the build: the next search sees all three
    extra = clustered(10, seed=77)
    store.upsert(records(extra, 3000))
    store.upsert([Record("r5", vecs[6], {"label": "moved"})])
    assert store.delete(["r7", "nope"]) == 1
    assert store.search(extra[3], 1)[0][0].id == "r3003"
    top = store.search(vecs[6], 2)[0]
    assert {h.id for h in top} == {"r5", "r6"} and all(h.score > 0.999 for h in top)
    assert all(h.id != "r7" for h in store.search(vecs[7], 5)[0])
    assert store.search(vecs[6], 5, filter={"label": "moved"})[0][0].id == "r5"
    store.close()  # 12 changes: the index file is kept, they are searched exactly
    assert store.ann_path.stat().st_mtime_ns == built
    again = LocalStore(path, ann_threshold=2000)
    assert again.search_mode == "ann"
    mirror = again._mirror
    assert mirror is not None and mirror.ann.last_rowid < mirror.last_rowid  # loaded, not rebuilt
    assert again.search(extra[3], 1)[0][0].id == "r3003"
    assert all(h.id != "r7" for h in again.search(vecs[7], 5)[0])
    assert again.count() == 3009
    again.close()
    assert store.ann_path.stat().st_mtime_ns == built


def test_index_is_rebuilt_once_a_tenth_of_the_rows_are_outside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lookalike.stores.local import _annfile

    monkeypatch.setattr(_annfile, "_STALE_MIN", 50)
    path = tmp_path / "s.lookalike"
    store = LocalStore(path, ann_threshold=1000)
    vecs = fill(store, 2000)
    assert store.search_mode == "ann"
    first = store._mirror.ann.last_rowid
    store.upsert(records(clustered(150, seed=8), 2000))  # under a tenth: searched exactly
    assert store.search(clustered(150, seed=8)[4], 1)[0][0].id == "r2004"
    assert store._mirror.ann.last_rowid == first
    store.delete([f"r{i}" for i in range(100)])  # 250 rows outside or dead: rebuilt
    assert store.search(vecs[150], 1)[0][0].id == "r150"
    assert store._mirror.ann.last_rowid > first and store._mirror.ann.ntotal == 2050
    store.close()
    header = json.loads(store.ann_path.read_bytes()[-4096:][16:].decode().strip())
    assert header["ntotal"] == 2050 and header["last_rowid"] == store_count_last(path)


def store_count_last(path: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT max(rowid) FROM records").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated", "other-store", "stale"])
def test_derived_index_is_rebuilt_when_unusable(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "s.lookalike"
    store = LocalStore(path, ann_threshold=1000)
    vecs = fill(store, 2000)
    assert store.search_mode == "ann"
    store.close()
    ann = Path(str(path) + ".ann")
    if damage == "missing":
        ann.unlink()
    elif damage == "garbage":
        data = bytearray(ann.read_bytes())
        data[5000:5100] = b"\xff" * 100
        ann.write_bytes(bytes(data))
    elif damage == "truncated":
        ann.write_bytes(ann.read_bytes()[:6000])
    elif damage == "other-store":
        other = LocalStore(tmp_path / "o.lookalike", ann_threshold=1000)
        fill(other, 1500, seed=3)
        assert other.search_mode == "ann"
        other.close()
        ann.write_bytes(Path(str(tmp_path / "o.lookalike") + ".ann").read_bytes())
    elif damage == "stale":  # written behind the index's back, by a store without ANN
        plain = LocalStore(path, ann_threshold=None)
        plain.upsert(records(clustered(5, seed=11), 5000))
        plain.delete(["r1"])
        plain.close()
    store = LocalStore(path, ann_threshold=1000)
    assert store.search_mode == "ann"
    assert store.search(vecs[42], 1)[0][0].id == "r42"
    if damage == "stale":
        assert store.search(clustered(5, seed=11)[2], 1)[0][0].id == "r5002"
        assert all(h.id != "r1" for h in store.search(vecs[1], 5)[0])
    assert store.check() == []
    store.close()
    header = json.loads(ann.read_bytes()[-4096:][16:].decode().strip())
    # a stale index is kept: the 6 changes made behind its back are searched exactly
    assert header["ntotal"] == (2000 if damage == "stale" else store_count(path))


def store_count(path: Path) -> int:
    with LocalStore(path, ann_threshold=None) as s:
        return s.count()


def test_check_rebuilds_on_request_and_reports_damage(tmp_path: Path) -> None:
    path = tmp_path / "s.lookalike"
    store = LocalStore(path, ann_threshold=1000)
    fill(store, 1500)
    leftover = store.ann_path.with_name(store.ann_path.name + ".4194999.tmp")  # a killed save
    leftover.write_bytes(b"partial")
    assert store.check(rebuild=True) == []
    assert not leftover.exists()
    assert store.ann_path.exists() and store.search_mode == "ann"
    store._db.execute("UPDATE records SET vector = x'00' WHERE id = 'r3'")  # damage behind its back
    problems = store.check()
    assert problems == ["record 'r3': vector of 1 bytes, expected 128"]
    store.close()


def test_other_process_writes_are_read_incrementally(tmp_path: Path) -> None:
    path = tmp_path / "s.lookalike"
    reader = LocalStore(path, ann_threshold=None)
    vecs = fill(reader, 500)
    writer = LocalStore(path, ann_threshold=None)
    assert reader.search(vecs[0], 1)[0][0].id == "r0"
    loaded = reader._mirror
    writer.upsert(records(clustered(3, seed=4), 900))
    writer.delete(["r0"])
    assert reader.search(clustered(3, seed=4)[1], 1)[0][0].id == "r901"
    assert reader.search(vecs[0], 1)[0][0].id != "r0"
    assert reader._mirror is loaded  # caught up in place, not reloaded
    writer.close()
    reader.close()


def test_format_1_store_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.lookalike"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute(
        "CREATE TABLE records (rowid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, vector BLOB NOT NULL, "
        "metadata TEXT NOT NULL)"
    )
    conn.execute("INSERT INTO meta VALUES ('schema', ?)", (json.dumps(SCHEMA.to_dict()),))
    vecs = clustered(3)
    for i, v in enumerate(vecs):
        conn.execute(
            "INSERT INTO records(id, vector, metadata) VALUES (?, ?, ?)",
            (f"r{i}", v.tobytes(), "{}"),
        )
    conn.execute(f"PRAGMA application_id={0x4C4B4C4B}")
    conn.execute("PRAGMA user_version=1")
    conn.close()
    with LocalStore(path) as store:
        assert store.count() == 3 and store.check() == []
        assert store.search(vecs[2], 1)[0][0].id == "r2"


def _ids(hits: list[list[Hit]]) -> list[list[str]]:
    return [[h.id for h in hs] for hs in hits]


@pytest.mark.parametrize(
    "flt", [{"label": "c2"}, {"label": ["c1", "c2"]}, {"shard": [1, 2, 3, 4, 5, 6]}]
)
def test_filtered_search_scores_the_matches_codes_and_equals_exact(
    pair: tuple[LocalStore, InMemoryStore, np.ndarray], flt: dict[str, object]
) -> None:
    """Matches (more than the 256 read outright) are scored by their 8-bit codes read from
    the mapped index, then re-ranked: the same hits and scores as exact search."""
    store, ref, _ = pair
    assert store.search_mode == "ann"
    ann = store._mirror.ann  # type: ignore[union-attr]
    assert ann.has_codes()  # mapped from <store>.ann: codes found by rowid
    queries = clustered(25, seed=11)
    got, want = store.search(queries, 10, filter=flt), ref.search(queries, 10, filter=flt)
    assert _ids(got) == _ids(want)
    for g, w in zip(got, want):
        assert [h.score for h in g] == pytest.approx([h.score for h in w], abs=1e-5)


def test_filtered_codes_path_with_rows_written_and_deleted_after_the_build(
    pair: tuple[LocalStore, InMemoryStore, np.ndarray],
) -> None:
    """Rows added after the index was built are scored exactly, deleted ones never
    return, and a match the index does not hold is still found."""
    store, ref, _ = pair
    store.search_mode  # noqa: B018 - loads the index
    extra = records(clustered(300, seed=21), start=6000)
    for target in (store, ref):
        target.upsert(extra)
        target.delete([f"r{i}" for i in range(0, 6000, 5)])  # 1,200 deleted, inside the index
    ann = store._mirror.ann  # type: ignore[union-attr]
    assert ann.has_codes() and ann.last_rowid < 6300  # the new rows are outside it
    queries = np.concatenate([clustered(10, seed=12), np.stack([r.vector for r in extra[:5]])])
    flt = {"label": "c3"}
    got, want = store.search(queries, 10, filter=flt), ref.search(queries, 10, filter=flt)
    assert _ids(got) == _ids(want)
    assert extra[2].id == "r6002" and got[12][0].id == "r6002"  # a new row, label c3
    # a match the index lost (never expected): found exactly all the same
    from lookalike.stores.local import _ivf

    (rowid,) = store._db.execute("SELECT rowid FROM records WHERE id = 'r17'").fetchone()
    codes = ann._codes_by_rowid()
    keep = codes.ids != rowid  # r17 (label c3) missing from the codes map
    ann._codes = _ivf._Codes(codes.ids[keep], codes.addresses[keep], codes.rows, codes.scratch)
    lost = store.get(["r17"])[0].vector
    assert store.search(lost, 1, filter=flt)[0][0].id == "r17"
    assert _ids(store.search(queries, 10, filter=flt)) == _ids(want)


def test_filtered_search_without_a_mapped_index_visits_the_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An index held in memory (its file could not be saved) has no codes by rowid:
    filters go through the lists, with the same exact results."""
    from lookalike.stores.local import _annfile

    monkeypatch.setattr(_annfile, "save", lambda *args: False)
    store = LocalStore(tmp_path / "mem.lookalike", ann_threshold=2000)
    ref = InMemoryStore()
    fill(store, 4000)
    fill(ref, 4000)
    try:
        assert store.search_mode == "ann" and not store.ann_path.exists()
        assert not store._mirror.ann.has_codes()  # type: ignore[union-attr]
        queries = clustered(10, seed=13)
        flt = {"label": "c5"}
        assert _ids(store.search(queries, 10, filter=flt)) == _ids(
            ref.search(queries, 10, filter=flt)
        )
    finally:
        store.close()


def test_damaged_codes_in_the_index_file_are_found_by_check_and_rebuilt(tmp_path: Path) -> None:
    """Codes the filter reads live in <store>.ann: bytes changed past the part checked on
    every open are found by check(), which rebuilds the file; results stay exact."""
    path = tmp_path / "d.lookalike"
    ref = InMemoryStore()
    with LocalStore(path, ann_threshold=2000) as store:
        fill(store, 4000)
    fill(ref, 4000)
    ann_path = path.with_name(path.name + ".ann")
    size = ann_path.stat().st_size
    with open(ann_path, "r+b") as fh:  # inside the last lists' codes, before the trailer
        fh.seek(size - 4096 - 20_000)
        fh.write(bytes(4000))
    with LocalStore(path, ann_threshold=2000) as store:
        assert store.check() == []
        assert store.search_mode == "ann" and store._mirror.ann.has_codes()  # type: ignore[union-attr]
        queries = clustered(10, seed=14)
        flt = {"label": ["c0", "c6"]}
        assert _ids(store.search(queries, 10, filter=flt)) == _ids(
            ref.search(queries, 10, filter=flt)
        )


def test_index_codes_are_faiss_8bit_codes_scanned_with_the_same_order() -> None:
    """The bytes stored are faiss's QT_8bit codes; scanning them as signed direct codes
    against the scaled, rounded query ranks them as their decoded vectors do."""
    import faiss

    from lookalike.stores.local._ivf import IvfIndex

    x = clustered(3000, seed=3)
    ann = IvfIndex.train(DIM, x, 3000)
    ann.add(np.arange(1, 3001, dtype=np.int64), x)
    sq = faiss.ScalarQuantizer(DIM, faiss.ScalarQuantizer.QT_8bit)
    faiss.copy_array_to_vector(ann.codec[: 2 * DIM], sq.trained)  # vmin, vdiff (then the centre)
    want = sq.compute_codes(x)
    got = (ann._encode(x) + 128).astype(np.uint8)
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999  # float rounding at a boundary
    queries = clustered(30, seed=4)
    _, ids = ann.search(queries, 10, ann.nlist)  # every list: the codec alone decides
    decoded = sq.decode(want)
    ref = np.argsort(-(decoded @ queries.T), axis=0)[:10].T + 1
    assert recall(ids.tolist(), ref.tolist()) >= 0.97  # the query rounded to 8 bits
    assert [int(i[0]) for i in ids] == [int(r[0]) for r in ref]


def test_a_faiss_without_the_signed_direct_codec_keeps_search_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """faiss older than 1.9 lacks QT_8bit_direct_signed: the store searches exactly
    (right answers, never an error) instead of building an index it cannot scan."""
    import faiss

    monkeypatch.delattr(faiss.ScalarQuantizer, "QT_8bit_direct_signed")
    store = LocalStore(tmp_path / "old-faiss.lookalike", ann_threshold=1000)
    ref = InMemoryStore()
    fill(store, 2000)
    fill(ref, 2000)
    try:
        assert store.search_mode == "exact" and not store.ann_path.exists()
        queries = clustered(5, seed=15)
        assert _ids(store.search(queries, 10)) == _ids(ref.search(queries, 10))
        flt = {"label": "c4"}
        assert _ids(store.search(queries, 10, filter=flt)) == _ids(
            ref.search(queries, 10, filter=flt)
        )
    finally:
        store.close()
