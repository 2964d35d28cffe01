"""LocalStore's derived files as the engine uses them: the memory-mapped vector file
``<store>.vec`` (opening reads no vectors), its repair, the index built in the background
while searches stay exact, and SIGKILL with both derived files present."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lookalike.stores import InMemoryStore, LocalStore
from lookalike.stores.local import _annfile, _vecfile
from lookalike.stores.local import store as store_module
from lookalike.types import Hit, Record, Schema

from .test_local_durability import child

DIM = 16
SCHEMA = Schema(dim=DIM, identity="test:vec", fields=("label",))


def vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def records(n: int, seed: int = 0, start: int = 0) -> list[Record]:
    return [
        Record(f"r{start + i}", v, {"label": f"l{(start + i) % 3}"})
        for i, v in enumerate(vectors(n, seed))
    ]


def filled(path: Path, n: int, **options: object) -> list[Record]:
    recs = records(n)
    with LocalStore(path, **options) as store:  # type: ignore[arg-type]
        store.create_schema(SCHEMA)
        for start in range(0, n, 100):
            store.upsert(recs[start : start + 100])
    return recs


def ids(hits: list[list[Hit]]) -> list[list[str]]:
    return [[h.id for h in hs] for hs in hits]


def test_open_maps_the_vectors_instead_of_reading_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lookalike.stores.local import _mirror

    path = tmp_path / "s.lookalike"
    recs = filled(path, 300)
    assert (tmp_path / "s.lookalike.vec").stat().st_size >= 4096 + 300 * DIM * 4
    decoded: list[int] = []
    real_decode = _mirror.decode_block
    monkeypatch.setattr(
        _mirror,
        "decode_block",
        lambda rows, dim: decoded.append(len(rows)) or real_decode(rows, dim),
    )
    statements: list[str] = []
    with LocalStore(path) as store:
        store._db.set_trace_callback(statements.append)
        assert store.search(recs[42].vector, 1)[0][0].id == "r42"
        mirror = store._mirror
        assert mirror is not None and mirror.vec is not None
        assert mirror.base == mirror.size == 300 and len(mirror.tail) == 0  # nothing in RAM
    # the only vectors read from SQLite are the few rows compared with the file
    reads = [s for s in statements if "SELECT vector FROM records" in s]
    assert 0 < len(reads) <= 6
    assert decoded == []  # no block of vectors read out of SQLite


def test_writes_reach_other_handles_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.lookalike"
    recs = filled(path, 200)
    reader, writer = LocalStore(path), LocalStore(path)
    try:
        assert reader.search(recs[0].vector, 1)[0][0].id == "r0"
        loaded = reader._mirror
        extra = records(50, seed=5, start=500)
        writer.upsert(extra)
        writer.upsert([Record("r3", recs[9].vector, {"label": "moved"})])  # replaced
        writer.delete(["r4"])
        assert reader.search(extra[7].vector, 1)[0][0].id == "r507"
        top = reader.search(recs[9].vector, 2)[0]
        assert {h.id for h in top} == {"r3", "r9"}
        assert all(h.id != "r4" for h in reader.search(recs[4].vector, 5)[0])
        assert reader.search(recs[9].vector, 1, filter={"label": "moved"})[0][0].id == "r3"
        mirror = reader._mirror
        assert mirror is loaded and mirror is not None
        assert mirror.base == mirror.size == 251  # taken from the file, none read into RAM
        assert mirror.live == 249
    finally:
        writer.close()
        reader.close()


@pytest.mark.parametrize("damage", ["missing", "foreign", "changed-row", "short"])
def test_a_bad_vector_file_is_rebuilt_from_sqlite(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "s.lookalike"
    recs = filled(path, 300)
    vec = tmp_path / "s.lookalike.vec"
    if damage == "missing":
        vec.unlink()
    elif damage == "foreign":
        other = tmp_path / "o.lookalike"
        filled(other, 300)
        vec.write_bytes((tmp_path / "o.lookalike.vec").read_bytes())
    elif damage == "changed-row":  # the last row is always among those compared
        data = bytearray(vec.read_bytes())
        data[4096 + 299 * DIM * 4 : 4096 + 300 * DIM * 4] = vectors(1, seed=9)[0].tobytes()
        vec.write_bytes(bytes(data))
    else:
        vec.write_bytes(vec.read_bytes()[: 4096 + 100 * DIM * 4])
    ref = InMemoryStore()
    ref.create_schema(SCHEMA)
    ref.upsert(recs)
    queries = vectors(20, seed=3)
    with LocalStore(path) as store:
        assert ids(store.search(queries, 5)) == ids(ref.search(queries, 5))
        assert store.search(recs[299].vector, 1)[0][0].id == "r299"  # rebuilt, mapped again
        mirror = store._mirror
        assert mirror is not None and mirror.base == mirror.size == 300
    with LocalStore(path) as store:
        assert store.check() == []


def test_check_finds_damage_anywhere_in_the_vector_file_and_rebuilds_it(tmp_path: Path) -> None:
    path = tmp_path / "s.lookalike"
    recs = filled(path, 300)
    vec = tmp_path / "s.lookalike.vec"
    data = bytearray(vec.read_bytes())
    row = 123  # not one of the rows compared on open
    data[4096 + row * DIM * 4 : 4096 + (row + 1) * DIM * 4] = recs[0].vector.tobytes()
    vec.write_bytes(bytes(data))
    with LocalStore(path) as store:
        assert store.check() == []  # a derived file repaired is not a problem of the store
        hits = store.search(recs[0].vector, 2)[0]
        assert [h.id for h in hits][:1] == ["r0"] and hits[1].score < 0.99
        assert store.search(recs[row].vector, 1)[0][0].id == f"r{row}"


def test_read_only_handle_without_a_vector_file_reads_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "s.lookalike"
    recs = filled(path, 150)
    (tmp_path / "s.lookalike.vec").unlink()
    with LocalStore(path, read_only=True) as store:
        assert store.search(recs[77].vector, 1)[0][0].id == "r77"
        mirror = store._mirror
        assert mirror is not None and mirror.vec is None and mirror.size == 150
    assert not (tmp_path / "s.lookalike.vec").exists()


def test_rows_an_older_writer_left_out_of_the_file_are_appended_by_the_next(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.lookalike"
    recs = filled(path, 100)
    conn = sqlite3.connect(path, isolation_level=None)  # as lookalike 0.x would write
    extra = records(5, seed=4, start=900)
    for r in extra:
        conn.execute(
            "INSERT INTO records(id, metadata, vector) VALUES (?, '{}', ?)",
            (r.id, r.vector.tobytes()),
        )
    conn.close()
    with LocalStore(path) as store:
        assert store.search(extra[2].vector, 1)[0][0].id == "r902"  # from SQLite, in RAM
        store.upsert(records(3, seed=6, start=950))
        assert store.search(extra[3].vector, 1)[0][0].id == "r903"
    with LocalStore(path) as store:
        assert store.search(extra[4].vector, 1)[0][0].id == "r904"
        assert store.search(recs[5].vector, 1)[0][0].id == "r5"
        mirror = store._mirror
        assert mirror is not None and mirror.base == mirror.size == 108  # all in the file


def test_a_failed_vector_write_rolls_the_upsert_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lookalike.errors import StoreError

    path = tmp_path / "s.lookalike"
    recs = filled(path, 50)

    def full(*args: object) -> int:
        raise OSError(28, "No space left on device")

    with LocalStore(path) as store:
        monkeypatch.setattr(os, "pwrite", full)
        with pytest.raises(StoreError, match=r"s\.lookalike\.vec: No space left on device.*disk"):
            store.upsert(records(5, seed=2, start=100))
        monkeypatch.undo()
        assert store.count() == 50
        assert store.search(recs[3].vector, 1)[0][0].id == "r3"
        store.upsert(records(5, seed=2, start=100))
        assert store.count() == 55 and store.check() == []


def test_compacting_tombstones_drops_the_deleted_rows_from_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lookalike.stores.local import _tombstones

    monkeypatch.setattr(_tombstones, "_TOMB_COMPACT_MIN", 50)
    path = tmp_path / "s.lookalike"
    recs = filled(path, 100)
    vec = tmp_path / "s.lookalike.vec"
    with LocalStore(path) as store:
        reader = LocalStore(path)
        assert reader.search(recs[0].vector, 1)[0][0].id == "r0"
        store.delete([f"r{i}" for i in range(45)])
        assert _tombstones.tomb_floor(store._db) == 0
        store.upsert([Record(r.id, r.vector, {"label": "again"}) for r in recs[45:65]])
        assert _tombstones.tomb_floor(store._db) > 0  # 65 tombstones > 55 live: compacted
        assert vec.stat().st_size == 4096 + 55 * DIM * 4  # only the live rows are left
        hits = reader.search(recs[50].vector, 60)[0]  # the reader maps the new file
        assert hits[0].id == "r50" and hits[0].metadata["label"] == "again"
        assert {h.id for h in hits} == {f"r{i}" for i in range(45, 100)}
        reader.close()
    with LocalStore(path) as store:
        assert store.search(recs[99].vector, 1)[0][0].id == "r99"
        mirror = store._mirror
        assert mirror is not None and mirror.base == mirror.size == mirror.live == 55
        assert store.check() == []


def test_tombstones_compacted_behind_the_files_back_are_read_from_the_rows(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.lookalike"
    recs = filled(path, 100)
    with LocalStore(path) as store:
        store.delete(["r3", "r50"])
    conn = sqlite3.connect(path, isolation_level=None)  # an older lookalike compacting
    conn.execute("DELETE FROM tombstones")
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('tomb_floor', '2')")
    conn.close()
    with LocalStore(path) as store:
        hits = store.search(recs[3].vector, 100)[0]
        assert len(hits) == 98 and {"r3", "r50"}.isdisjoint(h.id for h in hits)


# -- the index built in the background ----------------------------------------------------


def test_searches_stay_exact_while_the_index_builds_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("faiss")
    path = tmp_path / "s.lookalike"
    recs = filled(path, 600, ann_threshold=None)
    release = threading.Event()
    started = threading.Event()
    real_build = _annfile.build

    def held_build(*args: object, **kwargs: object) -> object:
        started.set()
        assert release.wait(30)
        return real_build(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store_module, "_SYNC_BUILD_FLOATS", 0)  # every build in the background
    monkeypatch.setattr(_annfile, "build", held_build)
    ref = InMemoryStore()
    ref.create_schema(SCHEMA)
    ref.upsert(recs)
    queries = vectors(30, seed=8)
    store = LocalStore(path, ann_threshold=500)
    try:
        assert store.search_mode == "exact"  # the build started and is held
        assert started.wait(30)
        got = store.search(queries, 10)
        want = ref.search(queries, 10)
        assert ids(got) == ids(want)  # exact, never wrong, never an error
        assert [h.score for h in got[0]] == pytest.approx([h.score for h in want[0]], abs=1e-6)
        store.upsert(records(5, seed=12, start=700))  # writes go on meanwhile
        release.set()
        assert store.wait_for_index(30) and store.search_mode == "ann"
        assert store.ann_path.exists()
        assert store.search(records(5, seed=12, start=700)[1].vector, 1)[0][0].id == "r701"
        assert store.search(recs[10].vector, 1)[0][0].id == "r10"
    finally:
        release.set()
        store.close()


def test_a_writer_leaves_the_index_ready_when_it_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("faiss")
    monkeypatch.setattr(store_module, "_SYNC_BUILD_FLOATS", 0)
    path = tmp_path / "s.lookalike"
    filled(path, 600, ann_threshold=500)  # never searched: the index is built by close()
    assert Path(str(path) + ".ann").exists()
    with LocalStore(path, ann_threshold=500) as store:
        assert store.search_mode == "ann"
        assert store._builder is None  # mapped from the file, nothing to build
    Path(str(path) + ".ann").unlink()
    with LocalStore(path, ann_threshold=500) as store:
        assert store.wait_for_index(30)  # starts the build in the background, waits
        assert store._builder is not None and store.search_mode == "ann"


# -- SIGKILL with both derived files present ----------------------------------------------

WRITER = """
import sys
import numpy as np
from lookalike.stores import LocalStore
from lookalike.types import Hit, Record, Schema
store = LocalStore(sys.argv[1], ann_threshold=300)
store.create_schema(Schema(dim=16, identity="test:vec", fields=("label",)))
print("ready", flush=True)
b = 0
while True:
    v = np.random.default_rng(b).standard_normal((50, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    store.upsert([Record(f"b{b}-{i}", v[i], {"label": f"b{b}"}) for i in range(50)])
    if b % 3 == 0:
        store.delete([f"b{b - 1}-{i}" for i in range(10)])
    store.search(v[:2], 5)
    b += 1
"""


def _writer_deletes(rid: str) -> bool:
    """Whether WRITER deletes record ``rid`` at some point (``b{k}-{i}``, k = 2 mod 3, i < 10)."""
    batch, _, i = rid[1:].partition("-")
    return int(batch) % 3 == 2 and int(i) < 10


def test_sigkill_with_the_vector_and_index_files_present(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    path = tmp_path / "k.lookalike"
    rng = random.Random(2)
    seen = kills = 0
    before: set[str] = set()
    while kills < 4 or (seen <= 350 and kills < 40):  # however slow the machine is
        kills += 1
        proc = child(WRITER, str(path))
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.2, 0.8))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        with LocalStore(path, ann_threshold=300) as store:
            assert store.check() == []
            stored = [r for batch in store.scan(200) for r in batch]
            now = {r.id for r in stored}
            # nothing committed is lost but what the writer deletes: a run killed after
            # writing a batch b = 2 (mod 3) again, before deleting its 10, leaves 50 that
            # the next run deletes again
            assert all(_writer_deletes(i) for i in before - now), sorted(before - now)[:5]
            seen, before = len(stored), now
            labels: dict[str, int] = {}
            for r in stored:
                name = str(r.metadata["label"])
                labels[name] = labels.get(name, 0) + 1
            assert set(labels.values()) <= {40, 50}, "a batch was stored in part"
            for r in stored[:: max(1, len(stored) // 25)]:
                assert store.search(r.vector, 1)[0][0].id == r.id
    assert seen > 350 and Path(str(path) + ".vec").exists()
    assert Path(str(path) + ".ann").exists()
    assert _vecfile.HEADER_BYTES == 4096


def test_a_failing_build_never_fails_a_search_or_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("faiss")

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("faiss ran out of memory")

    monkeypatch.setattr(store_module, "_SYNC_BUILD_FLOATS", 0)
    monkeypatch.setattr(_annfile, "build", broken)
    path = tmp_path / "s.lookalike"
    recs = filled(path, 600, ann_threshold=500)  # close() tried to build: no error
    assert not Path(str(path) + ".ann").exists()
    with LocalStore(path, ann_threshold=500) as store:
        assert store.search(recs[5].vector, 1)[0][0].id == "r5"  # exact meanwhile
        assert store.wait_for_index(30) is False and store.search_mode == "exact"
        assert store.search(recs[6].vector, 1)[0][0].id == "r6"
    with LocalStore(path, ann_threshold=None) as store:
        assert store.wait_for_index() is False  # below (no) threshold: nothing to wait for


def test_without_positional_file_io_the_vectors_come_from_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_vecfile, "SUPPORTED", False)  # a platform without pread/pwrite
    path = tmp_path / "s.lookalike"
    recs = filled(path, 120)
    assert not (tmp_path / "s.lookalike.vec").exists()
    with LocalStore(path) as store:
        assert store.search(recs[33].vector, 1)[0][0].id == "r33"
        mirror = store._mirror
        assert mirror is not None and mirror.vec is None and mirror.size == 120


def test_rows_are_read_in_order_without_preadv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vf = _vecfile.create(tmp_path / "g.vec", "u", 4)
    rows = np.arange(40, dtype=np.float32).reshape(10, 4)
    vf.write(0, rows, "g")
    pos = np.array([7, 2, 3, 4, 9, 0, 0])
    assert np.array_equal(_vecfile.gather(vf, pos), rows[pos])
    monkeypatch.setattr(_vecfile, "_PREADV", None)
    assert np.array_equal(_vecfile.gather(vf, pos), rows[pos])
    with pytest.raises(_vecfile.VecFileError, match="shorter"):
        _vecfile.gather(vf, np.array([3, 12]))
    vf.close()
