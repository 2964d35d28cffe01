"""LocalStore under SIGKILL, concurrent readers, a full disk, a read-only folder and foreign files.

Each scenario runs real child processes; vectors are small and images tiny so the whole
module stays within a few tens of seconds on two cores.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from lookalike import ImageSearchIndex, path_id
from lookalike.embedders import FakeEmbedder
from lookalike.errors import StoreCorruptError
from lookalike.stores import LocalStore
from lookalike.types import Record, Schema

from ..conftest import make_image

SRC = str(Path(__file__).resolve().parents[2] / "src")
BATCH = 50
N_IMAGES = 2000


def child(code: str, *args: str, **kwargs: object) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,  # type: ignore[arg-type]
    )


# -- SIGKILL during add_many ------------------------------------------------------------

ADDER = """
import sys
from pathlib import Path
from lookalike import ImageSearchIndex
from lookalike.embedders import FakeEmbedder
from lookalike.stores import LocalStore
paths = sorted(Path(sys.argv[1]).glob("*.png"))
index = ImageSearchIndex(embedder=FakeEmbedder(dim=16), store=LocalStore(sys.argv[2]), workers=1)
print("ready", flush=True)
report = index.add_many(paths, batch_size=int(sys.argv[3]))
print("done", len(report.added), flush=True)
"""


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("tiny")
    for i in range(N_IMAGES):
        make_image(i, size=(16, 16)).save(root / f"{i:04d}.png")
    return sorted(root.glob("*.png"))


def test_sigkill_during_add_many_keeps_whole_batches(
    tiny_images: list[Path], tmp_path: Path
) -> None:
    store_path = tmp_path / "killed.lookalike"
    block_of = {path_id(p): i // BATCH for i, p in enumerate(tiny_images)}
    rng = random.Random(4)
    kills = finished = partial = 0
    stored_before = 0
    while kills < 20:
        proc = child(ADDER, str(tiny_images[0].parent), str(store_path), str(BATCH))
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
        time.sleep(rng.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        kills += 1
        if proc.returncode == 0:
            finished += 1
        with LocalStore(store_path) as store:
            assert store.check() == []
            # killed before the first batch landed: the store records no model yet (#14)
            bound = store.describe() is not None
            ids = {r.id for batch in store.scan(500) for r in batch} if bound else set()
            assert ids <= block_of.keys()
            per_block: dict[int, int] = {}
            for rid in ids:
                per_block[block_of[rid]] = per_block.get(block_of[rid], 0) + 1
            assert set(per_block.values()) <= {BATCH}, "a batch was stored in part"
            for rec in store.get(sorted(ids)[:50]) if bound else []:  # records are whole: vector and metadata
                assert (
                    rec.vector.shape == (16,) and abs(float(np.linalg.norm(rec.vector)) - 1) < 1e-5
                )
                assert set(rec.metadata) == {"path", "sha256"}
            assert len(ids) >= stored_before  # nothing committed is ever lost
            stored_before = len(ids)
            partial += 0 < len(ids) < N_IMAGES
    assert finished < kills and partial >= 3, "the kills did not land in the middle of add_many"
    embedder = FakeEmbedder(dim=16)
    with ImageSearchIndex(embedder=embedder, store=LocalStore(store_path), workers=1) as index:
        report = index.add_many(tiny_images, batch_size=BATCH)
        assert embedder.images_embedded == N_IMAGES - stored_before  # nothing re-embedded
        assert len(report.unchanged) == stored_before
        assert index.count() == N_IMAGES
        assert index.store.check() == []  # type: ignore[attr-defined]


# -- readers while a writer adds ------------------------------------------------------

VEC = """
import numpy as np
def vec(i, dim=16):
    v = np.random.default_rng(i).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)
"""

WRITER = (
    VEC
    + """
import sys, time
from lookalike.stores import LocalStore
from lookalike.types import Record
store = LocalStore(sys.argv[1])
for b in range(100):
    store.upsert([Record(f"r{i}", vec(i), {"n": i, "label": f"b{b}"}) for i in range(b * 100, b * 100 + 100)])
    time.sleep(0.01)
store.close()
"""
)

READER = (
    VEC
    + """
import sys, os, random
from lookalike.stores import LocalStore
threshold = None if sys.argv[3] == "none" else int(sys.argv[3])
store = LocalStore(sys.argv[1], ann_threshold=threshold)
stop = sys.argv[2]
rng = random.Random(os.getpid())
last, rounds, counts = 0, 0, set()
while True:
    final = os.path.exists(stop)
    n = store.count()
    assert n % 100 == 0 and n >= last, f"partial batch or lost rows: {n} after {last}"
    last = n
    counts.add(n)
    q = vec(10_000 + rng.randrange(10**6))
    for hits in store.search(q[None, :], 5):
        for h in hits:
            i = int(h.id[1:])
            assert h.metadata["n"] == i and h.metadata["label"] == f"b{i // 100}", h
            assert abs(h.score - float(vec(i) @ q)) < 1e-4, (h, float(vec(i) @ q))
    rounds += 1
    if final:
        break
assert store.count() == 10_000, store.count()
top = store.search(vec(9_999)[None, :], 1)[0][0]
assert top.id == "r9999" and top.score > 0.999, top
print(rounds, len(counts), store.search_mode, flush=True)
"""
)


def test_readers_never_see_partial_writes(tmp_path: Path) -> None:
    path = tmp_path / "shared.lookalike"
    with LocalStore(path) as store:
        store.create_schema(Schema(dim=16, identity="test:rw", fields=("path", "label")))
    stop = tmp_path / "writer-done"
    readers = [child(READER, str(path), str(stop), t) for t in ("none", "3000")]
    time.sleep(0.5)
    writer = child(WRITER, str(path))
    _, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    stop.touch()  # readers do one more round, which must see all 10,000 records
    for reader in readers:
        out, err = reader.communicate(timeout=120)
        assert reader.returncode == 0, err
        rounds, distinct, mode = out.split()
        assert int(rounds) > 5 and int(distinct) > 2  # they really read while it wrote
    # the second reader crossed its threshold mid-way and caught up through the ANN index
    assert out.split()[2] == ("ann" if importlib.util.find_spec("faiss") else "exact")


# -- disk full, read-only, not ours ----------------------------------------------------


def _filled(path: Path, n: int = 200) -> list[Record]:
    recs = [
        Record(f"r{i}", np.eye(256, dtype=np.float32)[i % 256], {"label": f"l{i}"})
        for i in range(n)
    ]
    with LocalStore(path) as store:
        store.create_schema(Schema(dim=256, identity="test:full"))
        store.upsert(recs)
    return recs


def _intact(path: Path, recs: list[Record]) -> None:
    with LocalStore(path) as store:
        assert store.check() == []
        got = store.get([r.id for r in recs])
        assert [r.id for r in got] == [r.id for r in recs]
        assert all(
            np.array_equal(g.vector, r.vector) and g.metadata == r.metadata
            for g, r in zip(got, recs)
        )
        assert store.search(recs[7].vector, 1)[0][0].id == "r7"


def test_disk_full_is_a_clear_error_and_damages_nothing(tmp_path: Path) -> None:
    path = tmp_path / "full.lookalike"
    recs = _filled(path)
    # The file size limit makes writes fail with EFBIG, as a full disk would (no root
    # or loop device needed); SIGXFSZ is ignored so the write call returns the error.
    code = """
    import resource, signal, sys
    import numpy as np
    from lookalike.errors import StoreError
    from lookalike.stores import LocalStore
    from lookalike.types import Record
    store = LocalStore(sys.argv[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = 256 * 1024 + __import__("os").path.getsize(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    try:
        store.upsert([Record(f"new{i}", np.ones(256, np.float32) / 16, {}) for i in range(3000)])
    except StoreError as exc:
        print(type(exc).__name__, "|", exc)
    else:
        print("no error")
    """
    proc = child(code, str(path))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.startswith("StoreError |") and "disk" in out, out
    _intact(path, recs)
    with LocalStore(path) as store:
        assert store.count() == len(recs)  # the failed call left nothing behind


DROP_DAC = """
import ctypes, os
if os.geteuid() == 0:  # root ignores file modes: drop the capabilities that let it
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
    libc = ctypes.CDLL(None, use_errno=True)
    hdr, data = Header(0x20080522, 0), (Data * 2)()
    assert libc.capget(ctypes.byref(hdr), data) == 0
    for d in data:  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        d.effective &= ~0b1110
        d.permitted &= ~0b1110
    assert libc.capset(ctypes.byref(hdr), data) == 0, ctypes.get_errno()
"""


def test_read_only_location(tmp_path: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="lookalike-ro-"))
    try:
        base.chmod(0o755)
        folder = base / "ro"
        folder.mkdir()
        path = folder / "store.lookalike"
        recs = _filled(path, 20)
        os.chmod(path, 0o444)
        folder.chmod(0o555)
        before = hashlib.sha256(path.read_bytes()).hexdigest()
        code = (
            DROP_DAC
            + """
import sys
import numpy as np
from lookalike.errors import StoreConnectionError
from lookalike.stores import LocalStore
from lookalike.types import Record
for target in (sys.argv[1], sys.argv[1] + ".new"):
    try:
        store = LocalStore(target)
        found = store.search(np.eye(256, dtype=np.float32)[3], 1)[0][0].id
        store.upsert([Record("x", np.ones(256, np.float32) / 16, {})])
        print("wrote")
    except StoreConnectionError as exc:
        print("refused", "read-only" in str(exc))
"""
        )
        proc = child(code, str(path))
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.split("\n")[:2] == ["refused True", "refused True"], out
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before
        folder.chmod(0o755)
        os.chmod(path, 0o644)
        _intact(path, recs)
    finally:
        folder.chmod(0o755)
        import shutil

        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("kind", ["text", "random", "foreign-sqlite", "empty-sqlite-folder"])
def test_a_file_that_is_not_ours_is_refused_untouched(tmp_path: Path, kind: str) -> None:
    import sqlite3

    path = tmp_path / "thing.db"
    if kind == "text":
        path.write_text("my shopping list\n")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(10_000))
    elif kind == "foreign-sqlite":
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE records (id TEXT, vector BLOB, metadata TEXT)")
        conn.execute("INSERT INTO records VALUES ('a', x'00', '{}')")
        conn.commit()
        conn.close()
    else:
        path.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    digest = None if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(StoreCorruptError, match="not a lookalike store|is a folder"):
        LocalStore(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no -wal/-shm left behind
    if digest is not None:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_cli_check_verifies_and_rebuilds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lookalike.cli import main

    path = tmp_path / "c.lookalike"
    _filled(path, 30)
    assert main(["check", "--store", str(path)]) == 0
    assert capsys.readouterr().out.strip() == "ok"
    with LocalStore(path) as store:
        store._db.execute("UPDATE records SET metadata = 'oops' WHERE id = 'r3'")
    assert main(["check", "--store", str(path)]) == 1
    assert "record 'r3': unreadable metadata" in capsys.readouterr().out
