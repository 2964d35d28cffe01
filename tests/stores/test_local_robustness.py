"""LocalStore on hostile ground: read-only files and folders, foreign SQLite files,
deletion logs that would grow forever, and numeric options that make no sense."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import numpy as np
import pytest

from lookalike.cli import main
from lookalike.errors import ConfigurationError, StoreConnectionError, StoreCorruptError
from lookalike.stores import InMemoryStore, LocalStore
from lookalike.stores.local import _tombstones as local_module
from lookalike.stores.transfer import copy_store
from lookalike.types import Record, Schema

from .test_local_durability import DROP_DAC, child

DIM = 8
SCHEMA = Schema(dim=DIM, identity="robustness-test", fields=("label",))


def records(n: int, seed: int = 0, prefix: str = "r") -> list[Record]:
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return [Record(f"{prefix}{i}", vecs[i], {"label": f"l{i % 3}"}) for i in range(n)]


def filled(path: Path, n: int = 20) -> list[Record]:
    recs = records(n)
    with LocalStore(path) as store:
        store.create_schema(SCHEMA)
        store.upsert(recs)
    return recs


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tombstones(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM tombstones").fetchone()[0])
    finally:
        conn.close()


# -- read-only stores ---------------------------------------------------------------------


def test_read_only_option_reads_and_refuses_writes_with_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ro.lookalike"
    recs = filled(path)
    before = digest(path)
    with LocalStore(path, read_only=True) as store:
        assert store.read_only and store.count() == 20
        assert store.search(recs[5].vector, 1)[0][0].id == "r5"
        assert store.get(["r7"])[0].metadata == {"label": "l1"}
        assert sum(len(b) for b in store.scan(6)) == 20
        assert store.check() == []
        store.create_schema(SCHEMA)  # the same schema: nothing to write, so fine
        for write in (
            lambda: store.upsert(records(1, seed=5, prefix="x")),
            lambda: store.delete(["r1"]),
            lambda: store.check(fix=True),
        ):
            with pytest.raises(StoreConnectionError, match="read-only"):
                write()
    assert digest(path) == before
    with pytest.raises(StoreConnectionError, match="no lookalike store there"):
        LocalStore(tmp_path / "missing.lookalike", read_only=True)
    assert not (tmp_path / "missing.lookalike").exists()


def test_a_store_that_cannot_be_written_opens_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # CI runs as root, for whom chmod changes nothing: say the file is not writable
    path = tmp_path / "ro.lookalike"
    recs = filled(path)
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: not mode & os.W_OK and real_access(p, mode, **kw)
    )
    with LocalStore(path) as store:
        assert store.read_only
        assert store.search(recs[2].vector, 1)[0][0].id == "r2"
    assert main(["info", "--store", str(path), "--json"]) == 0
    assert '"count": 20' in capsys.readouterr().out
    assert main(["check", "--store", str(path)]) == 0
    assert capsys.readouterr().out.strip() == "ok"
    assert main(["delete", "r1", "--store", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "read-only" in err and str(path) in err


def test_sqlite_refusing_to_write_falls_back_to_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ro.lookalike"
    recs = filled(path)
    real_connect = sqlite3.connect

    class ReadOnlyFile(sqlite3.Connection):
        def execute(self, sql: str, *args: object) -> sqlite3.Cursor:  # type: ignore[override]
            if sql.startswith("PRAGMA application_id"):
                raise sqlite3.OperationalError("attempt to write a readonly database")
            return super().execute(sql, *args)  # type: ignore[arg-type]

    def connect(database: str, *args: object, **kwargs: object) -> sqlite3.Connection:
        if not kwargs.get("uri"):  # the read-write attempt
            kwargs["factory"] = ReadOnlyFile
        return real_connect(database, *args, **kwargs)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(sqlite3, "connect", connect)
    with LocalStore(path) as store:
        assert store.read_only
        assert store.search(recs[9].vector, 1)[0][0].id == "r9"


def test_real_read_only_folder_is_searched_not_written(tmp_path: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="lookalike-ro-"))
    try:
        base.chmod(0o755)
        folder = base / "ro"
        folder.mkdir()
        path = folder / "store.lookalike"
        recs = filled(path, 20)
        np.save(base / "query.npy", recs[4].vector)
        os.chmod(path, 0o444)
        folder.chmod(0o555)
        before = digest(path)
        files = {p.name: digest(p) for p in folder.iterdir()}  # the store and its .vec
        assert sorted(files) == ["store.lookalike", "store.lookalike.vec"]
        code = (
            DROP_DAC
            + """
import sys
import numpy as np
from lookalike.cli import main
from lookalike.errors import StoreConnectionError
from lookalike.stores import LocalStore
from lookalike.types import Record
store = LocalStore(sys.argv[1])
print(store.read_only, store.count(), store.search(np.load(sys.argv[2]), 1)[0][0].id)
print(len([r for b in store.scan(7) for r in b]), store.check())
try:
    store.upsert([Record("x", np.ones(8, np.float32), {})])
except StoreConnectionError as exc:
    print("refused", "read-only" in str(exc))
store.close()
sys.exit(main(["info", "--store", sys.argv[1]]))
"""
        )
        proc = child(code, str(path), str(base / "query.npy"))
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        lines = out.splitlines()
        assert lines[:3] == ["True 20 r4", "20 []", "refused True"], out
        assert any(line.strip() == "count: 20" for line in lines[3:]), out
        assert digest(path) == before
        assert {p.name: digest(p) for p in folder.iterdir()} == files  # nothing written
    finally:
        folder.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


# -- foreign SQLite files -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pragmas", "words"),
    [
        ("PRAGMA user_version=7", "user_version 7, no lookalike tables"),
        ("PRAGMA application_id=1234", "application_id 1234"),
    ],
)
def test_empty_sqlite_file_of_another_application_is_named_and_untouched(
    tmp_path: Path, pragmas: str, words: str
) -> None:
    path = tmp_path / "x.db"
    conn = sqlite3.connect(path)
    conn.execute(pragmas)
    conn.commit()
    conn.close()
    before = digest(path)
    with pytest.raises(StoreCorruptError) as info:
        LocalStore(path)
    message = str(info.value)
    assert f"{path} is a SQLite database of another application" in message
    assert words in message and "refusing to touch it" in message
    assert "newer lookalike" not in message
    assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.db"]


def test_a_store_from_a_newer_lookalike_is_still_called_that(tmp_path: Path) -> None:
    path = tmp_path / "new.lookalike"
    filled(path, 2)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=99")
    conn.commit()
    conn.close()
    with pytest.raises(StoreCorruptError, match="newer lookalike"):
        LocalStore(path)


def test_empty_sqlite_file_with_nothing_in_it_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "blank.db"
    sqlite3.connect(path).execute("PRAGMA user_version=0").close()
    with LocalStore(path) as store:
        store.create_schema(SCHEMA)
        store.upsert(records(2))
        assert store.count() == 2


# -- tombstones -------------------------------------------------------------------------------


def test_tombstones_are_compacted_and_other_handles_still_catch_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_module, "_TOMB_COMPACT_MIN", 40)
    path = tmp_path / "t.lookalike"
    recs = filled(path, 20)
    writer, reader = LocalStore(path), LocalStore(path)
    try:
        assert reader.search(recs[0].vector, 1)[0][0].id == "r0"  # reader's mirror is loaded
        rng = np.random.default_rng(1)
        for round_ in range(30):  # 30 x 5 replacements + deletions: far past the threshold
            changed = [
                Record(r.id, rng.normal(size=DIM).astype(np.float32), {"label": f"v{round_}"})
                for r in recs[5:10]
            ]
            writer.upsert(changed)
            if round_ == 10:
                writer.delete(["r0", "r1"])
            assert tombstones(path) <= 40 + 20  # never more than the threshold plus a bit
        assert tombstones(path) < 30 * 5
        # the reader missed compacted tombstones; it must still see exactly the store
        fresh = LocalStore(path)
        try:
            for rec in recs[:12]:
                seen = [(h.id, h.metadata, round(h.score, 5)) for h in reader.search(rec.vector, 18)[0]]
                truth = [(h.id, h.metadata, round(h.score, 5)) for h in fresh.search(rec.vector, 18)[0]]
                assert seen == truth
            got = {h.id for h in reader.search(recs[3].vector, 30)[0]}
            assert got == {f"r{i}" for i in range(2, 20)}
            assert reader.search(changed[0].vector, 1)[0][0].metadata["label"] == "v29"
            assert reader.search(recs[3].vector, 30, filter={"label": "v29"})[0][0].id in {
                f"r{i}" for i in range(5, 10)
            }
            assert reader.count() == 18 and fresh.check() == []
        finally:
            fresh.close()
    finally:
        writer.close()
        reader.close()


def test_ann_index_file_needs_no_tombstones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("faiss")
    monkeypatch.setattr(local_module, "_TOMB_COMPACT_MIN", 10)
    path = tmp_path / "a.lookalike"
    recs = records(300)
    with LocalStore(path, ann_threshold=100) as store:
        store.create_schema(SCHEMA)
        store.upsert(recs)
        assert store.search_mode == "ann"  # builds and saves <path>.ann
        store.delete([f"r{i}" for i in range(200, 300)])  # 100 tombstones: fewer than live
        assert store.search(recs[0].vector, 1)[0][0].id == "r0"
    with LocalStore(path, ann_threshold=100) as writer:
        writer.delete([f"r{i}" for i in range(110, 200)])  # 190 > 110 live: compacted
    assert tombstones(path) == 0  # the index file keeps none: deleted rows are masked

    def no_rebuild(*args: object) -> None:
        raise AssertionError("the index file should have been used, not rebuilt")

    monkeypatch.setattr(LocalStore, "_build_ann", no_rebuild)
    with LocalStore(path, ann_threshold=100) as store:
        assert store.search_mode == "ann"
        hits = store.search(recs[7].vector, 200)[0]
        assert hits[0].id == "r7" and {h.id for h in hits} == {f"r{i}" for i in range(110)}
        assert store.check(fix=True) == []
    assert tombstones(path) == 0


def test_a_stale_ann_file_does_not_keep_tombstones_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("faiss")
    monkeypatch.setattr(local_module, "_TOMB_COMPACT_MIN", 10)
    path = tmp_path / "a.lookalike"
    recs = records(300)
    with LocalStore(path, ann_threshold=100) as store:
        store.create_schema(SCHEMA)
        store.upsert(recs)
        assert store.search_mode == "ann"
    with LocalStore(path, ann_threshold=100) as writer:  # never searches: file not saved
        writer.delete([f"r{i}" for i in range(140, 300)])  # 160 > 140 live
    assert tombstones(path) == 0  # catching the file up would cost a rebuild anyway
    with LocalStore(path, ann_threshold=100) as store:
        assert store.search_mode == "ann"
        hits = store.search(recs[3].vector, 300)[0]
        assert hits[0].id == "r3" and {h.id for h in hits} == {f"r{i}" for i in range(140)}


def test_check_fix_compacts_tombstones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.lookalike"
    recs = filled(path, 20)
    with LocalStore(path) as store:
        reader = LocalStore(path)
        reader.search(recs[0].vector, 1)
        store.delete([f"r{i}" for i in range(10)])
        store.upsert(recs[10:15])
    assert tombstones(path) == 15
    assert main(["check", "--store", str(path), "--fix"]) == 0
    assert capsys.readouterr().out.strip() == "ok"
    assert tombstones(path) == 0
    try:
        assert {h.id for h in reader.search(recs[12].vector, 20)[0]} == {
            f"r{i}" for i in range(10, 20)
        }
    finally:
        reader.close()


# -- numbers that make no sense ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-3", "ten", "1.5"])
def test_cli_copy_batch_size_must_be_positive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    source = tmp_path / "a.lookalike"
    filled(source, 3)
    with pytest.raises(SystemExit) as exit_:
        main(["copy", "--from", str(source), "--to", str(tmp_path / "b.lookalike"),
              "--batch-size", value])
    assert exit_.value.code == 2
    assert f"--batch-size: must be a positive whole number, got {value!r}" in capsys.readouterr().err
    assert not (tmp_path / "b.lookalike").exists()


@pytest.mark.parametrize("value", [0, -1, True, 2.0])
def test_batch_size_of_scan_and_copy_must_be_positive(tmp_path: Path, value: object) -> None:
    path = tmp_path / "a.lookalike"
    filled(path, 3)
    memory = InMemoryStore()
    memory.create_schema(SCHEMA)
    with LocalStore(path) as store:
        for call in (
            lambda: next(store.scan(value)),  # type: ignore[arg-type]
            lambda: next(memory.scan(value)),  # type: ignore[arg-type]
            lambda: copy_store(store, memory, batch_size=value),  # type: ignore[arg-type]
        ):
            with pytest.raises(ConfigurationError, match="batch_size must be a positive integer"):
                call()
        assert memory.count() == 0
