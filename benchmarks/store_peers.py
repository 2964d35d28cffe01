"""LocalStore side by side with the embedded stores a Python user would pick instead (#20).

Setup (the peers are NOT a lookalike extra: CI must not install chromadb), in a venv of its
own made with a Python whose ``sqlite3`` can load extensions (sqlite-vec needs it; pyenv's
builds usually cannot, Debian's ``/usr/bin/python3.11`` can; else ``pip install
pysqlite3-binary`` and the benchmark uses that):

    /usr/bin/python3.11 -m venv /tmp/peers-venv
    /tmp/peers-venv/bin/pip install -r benchmarks/requirements-peers.txt
    PYTHONPATH=$PWD/src /tmp/peers-venv/bin/python benchmarks/store_peers.py --quick
    PYTHONPATH=$PWD/src /tmp/peers-venv/bin/python benchmarks/store_peers.py --n 100000

lookalike is imported from ``src/`` (PYTHONPATH) through its public API only
(``LocalStore(path)``, ``create_schema``, ``upsert``, ``search``, ``close``), so the same
script measures whatever engine the checkout has.

Data (one generator for every system): ``store_scale.Synthetic`` with 1,000 clusters, n
L2-normalised 2048-d vectors and a ``label`` field (``c{i % 100}``: a label filter keeps 1%
of the records, spread over every cluster); 1,000 held-out queries drawn from the same
clusters (not in the stores); exact top-10 by cosine as ground truth, and exact top-10
among the label's records for the filtered queries.

Each system is persisted on local disk with its default settings (the library's own
defaults for index type and parameters; metric cosine or L2, which rank normalised
vectors alike). Per round, for each system in turn (the order rotates each round):

- insert (its own process, the first ``--insert-rounds`` rounds): batches of 1,000 as
  ``add_many`` hands them over, timed from the first batch until the data is durable on
  disk and the index is ready to answer (saved and fsynced for the index libraries).
- serve (a new process): cold start = open + first query (the import is timed apart);
  single queries one at a time (p50/p99, k=10); batched queries (64 a call) where the
  library takes a batch; label-filtered single queries and their recall; recall@10 over
  every query answered; the process's RSS after all that; list sizes and codes scanned
  per query for any faiss IVF index found inside the store (best effort, not timed).

Every measurement stops early after ``--budget`` seconds (then its count says how many
queries it holds). Figures are medians over rounds. The OS page cache is warm (the files
were just written or read); "cold" means a new process. Results: a JSON file in
benchmarks/results/ (written after every phase) and a markdown table on stdout;
``--table RESULTS.json`` prints the table of a results file again, even a partial one.
The exit status is 1 when a system failed (its error is in the JSON; the others still run).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from store_scale import Synthetic, read_rows

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
K = 10
INSERT_BATCH = 1000
QUERY_BATCH = 64
CHUNK = 20_000


def label_of(i: int, labels: int) -> str:
    return f"c{i % labels}"


def recall(got: Sequence[Sequence[int]], truth: np.ndarray) -> float:
    """Mean share of each query's true ids (the -1 padding of a short truth left out) found."""
    shares = []
    for g, t in zip(got, truth):
        want = {int(i) for i in t if i >= 0}
        if want:
            shares.append(len(want & {int(i) for i in g}) / len(want))
    return float(np.mean(shares)) if shares else float("nan")


def rss_mb() -> float:
    """Resident set size now (Linux), else the peak."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM (Linux), else ru_maxrss.

    Not ru_maxrss on Linux: a child started by vfork + exec inherits the parent's peak
    in it, so every phase would report at least the parent's (which held the data).
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fsync_tree(path: Path) -> None:
    for f in [path, *path.rglob("*")]:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def disk_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


# --- the systems ------------------------------------------------------------------------
#
# Each one: ``load()`` imports the library; ``create``/``insert``/``finish`` build the
# store (finish leaves it durable and ready); ``open``/``search``/``close`` serve it.
# ``search`` takes a (b, dim) float32 array and returns b lists of integer ids.


class System:
    name = ""
    title = ""
    package = ""  # distribution name, for the version
    batched = True  # takes a batch of queries in one call
    filters = True  # answers a label filter

    def __init__(self, dim: int, labels: int) -> None:
        self.dim = dim
        self.labels = labels

    def load(self) -> None:
        raise NotImplementedError

    def create(self, path: Path, n: int) -> None:
        raise NotImplementedError

    def insert(self, ids: np.ndarray, vecs: np.ndarray, labels: list[str]) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError

    def open(self, path: Path) -> None:
        raise NotImplementedError

    def search(self, q: np.ndarray, k: int) -> list[list[int]]:
        raise NotImplementedError

    def search_filtered(self, q: np.ndarray, k: int, label: str) -> list[int]:
        raise NotImplementedError

    def info(self, queries: np.ndarray) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


class Lookalike(System):
    name, title, package = "lookalike", "lookalike LocalStore", "lookalike"

    def load(self) -> None:
        from lookalike.stores import LocalStore
        from lookalike.types import Record, Schema

        self.LocalStore, self.Record, self.Schema = LocalStore, Record, Schema

    def create(self, path: Path, n: int) -> None:
        self.store = self.LocalStore(path / "store.lookalike")
        self.store.create_schema(
            self.Schema(dim=self.dim, identity="bench", fields=("path", "label"))
        )

    def insert(self, ids: np.ndarray, vecs: np.ndarray, labels: list[str]) -> None:
        R = self.Record
        self.store.upsert(
            [R(str(i), v, {"label": lb}) for i, v, lb in zip(ids.tolist(), vecs, labels)]
        )

    def finish(self) -> None:
        self.store.close()

    def open(self, path: Path) -> None:
        self.store = self.LocalStore(path / "store.lookalike")

    def search(self, q: np.ndarray, k: int) -> list[list[int]]:
        return [[int(h.id) for h in hs] for hs in self.store.search(q, k)]

    def search_filtered(self, q: np.ndarray, k: int, label: str) -> list[int]:
        return [int(h.id) for h in self.store.search(q, k, filter={"label": label})[0]]

    def info(self, queries: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {}
        mode = getattr(self.store, "search_mode", None)  # public where the engine has it
        if isinstance(mode, str):
            out["search_mode"] = mode
        ivf = ivf_lists(self.store, queries)
        if ivf:
            out["ivf"] = ivf
        return out

    def close(self) -> None:
        self.store.close()


def ivf_lists(root: object, queries: np.ndarray) -> dict[str, Any] | None:
    """List sizes and codes scanned per query of the first faiss IVF index inside ``root``.

    Walks the object's attributes (a few levels deep) without knowing the engine's
    layout, so it keeps working when the engine is rewritten; None when there is none.
    The lists probed are the ``nprobe`` of the object holding the index when it has one
    (an engine may pass nprobe per search rather than set it on the index), else the
    index's own.
    """
    faiss = sys.modules.get("faiss")
    if faiss is None:
        return None
    seen: set[int] = set()
    todo: list[tuple[object, int, object]] = [(root, 0, None)]
    while todo:
        obj, depth, holder = todo.pop()
        if id(obj) in seen or depth > 4:
            continue
        seen.add(id(obj))
        if isinstance(obj, faiss.Index):
            try:
                ivf = faiss.extract_index_ivf(obj)
            except RuntimeError:
                continue
            sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)])
            nprobe = getattr(holder, "nprobe", None)
            if not isinstance(nprobe, int) or isinstance(nprobe, bool) or nprobe < 1:
                nprobe = int(ivf.nprobe)
            nprobe = min(nprobe, int(ivf.nlist))
            scanned = getattr(holder, "codes_scanned", None)  # an engine that files vectors its own way
            if callable(scanned):
                codes = np.asarray(scanned(np.ascontiguousarray(queries, dtype=np.float32), nprobe))
            else:
                codes = sizes[ivf.quantizer.search(np.ascontiguousarray(queries), nprobe)[1]].sum(1)
            return {
                "nlist": int(ivf.nlist),
                "nprobe": nprobe,
                "list_largest": int(sizes.max()),
                "list_median": float(np.median(sizes)),
                "list_mean": float(sizes.mean()),
                "codes_per_query_mean": float(codes.mean()),
                "codes_per_query_max": int(codes.max()),
            }
        children: list[object] = []
        if isinstance(obj, dict):
            children = list(obj.values())
        elif isinstance(obj, (list, tuple)):
            children = list(obj)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            children = list(vars(obj).values())
        todo.extend(
            (c, depth + 1, obj) for c in children if not isinstance(c, (str, bytes, int, float))
        )
    return None


class Chroma(System):
    name, title, package = "chromadb", "chromadb (HNSW)", "chromadb"

    def load(self) -> None:
        import chromadb
        from chromadb.config import Settings

        self.chromadb, self.settings = chromadb, Settings(anonymized_telemetry=False)

    def create(self, path: Path, n: int) -> None:
        self.client = self.chromadb.PersistentClient(path=str(path), settings=self.settings)
        self.col = self.client.create_collection("items")

    def insert(self, ids: np.ndarray, vecs: np.ndarray, labels: list[str]) -> None:
        self.col.add(
            ids=[str(i) for i in ids.tolist()],
            embeddings=vecs,
            metadatas=[{"label": lb} for lb in labels],
        )

    def finish(self) -> None:
        pass  # each add is committed; the HNSW segment is persisted as it goes

    def open(self, path: Path) -> None:
        self.client = self.chromadb.PersistentClient(path=str(path), settings=self.settings)
        self.col = self.client.get_collection("items")

    def search(self, q: np.ndarray, k: int) -> list[list[int]]:
        got = self.col.query(query_embeddings=q, n_results=k, include=["distances"])
        return [[int(i) for i in ids] for ids in got["ids"]]

    def search_filtered(self, q: np.ndarray, k: int, label: str) -> list[int]:
        got = self.col.query(
            query_embeddings=q, n_results=k, where={"label": label}, include=["distances"]
        )
        return [int(i) for i in got["ids"][0]]


class Lance(System):
    name, title, package = "lancedb", "LanceDB", "lancedb"

    def load(self) -> None:
        import lancedb
        import pyarrow as pa

        self.lancedb, self.pa = lancedb, pa
        self.table: Any = None

    def create(self, path: Path, n: int) -> None:
        self.db = self.lancedb.connect(str(path))

    def insert(self, ids: np.ndarray, vecs: np.ndarray, labels: list[str]) -> None:
        pa = self.pa
        data = pa.table(
            {
                "id": pa.array(ids, pa.int64()),
                "label": pa.array(labels, pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(vecs.ravel(), pa.float32()), self.dim
                ),
            }
        )
        if self.table is None:
            self.table = self.db.create_table("items", data=data)
        else:
            self.table.add(data)

    def finish(self) -> None:
        pass  # each add writes a new version of the table on disk

    def open(self, path: Path) -> None:
        self.db = self.lancedb.connect(str(path))
        self.table = self.db.open_table("items")

    def search(self, q: np.ndarray, k: int) -> list[list[int]]:
        if len(q) == 1:
            got = self.table.search(q[0]).limit(k).select(["id"]).to_arrow()
            return [got["id"].to_pylist()]
        got = self.table.search(list(q)).limit(k).select(["id"]).to_arrow()
        out: list[list[int]] = [[] for _ in range(len(q))]
        for qi, i in zip(got["query_index"].to_pylist(), got["id"].to_pylist()):
            out[qi].append(i)
        return out

    def search_filtered(self, q: np.ndarray, k: int, label: str) -> list[int]:
        got = self.table.search(q[0]).where(f"label = '{label}'").limit(k).select(["id"])
        return list(got.to_arrow()["id"].to_pylist())

    def info(self, queries: np.ndarray) -> dict[str, Any]:
        return {"indices": [str(i) for i in self.table.list_indices()]}


class SqliteVec(System):
    name, title, package = "sqlite-vec", "sqlite-vec (exact)", "sqlite-vec"
    batched = False

    def load(self) -> None:
        import sqlite3

        import sqlite_vec

        self.sqlite_vec = sqlite_vec
        self.sqlite3: Any = sqlite3
        if not hasattr(sqlite3.Connection, "enable_load_extension"):
            try:
                self.sqlite3 = importlib.import_module("pysqlite3.dbapi2")
            except ImportError:
                raise SystemExit(
                    "this Python's sqlite3 cannot load extensions, which sqlite-vec needs: "
                    "make the venv with a Python built with loadable extensions (e.g. "
                    "/usr/bin/python3.11) or pip install pysqlite3-binary"
                ) from None

    def connect(self, path: Path) -> Any:
        conn = self.sqlite3.connect(str(path / "vec.db"))
        conn.enable_load_extension(True)
        self.sqlite_vec.load(conn)
        conn.enable_load_extension(False)
        return conn

    def create(self, path: Path, n: int) -> None:
        self.conn = self.connect(path)
        self.conn.execute(
            f"CREATE VIRTUAL TABLE items USING vec0(embedding float[{self.dim}], label text)"
        )
        self.conn.commit()

    def insert(self, ids: np.ndarray, vecs: np.ndarray, labels: list[str]) -> None:
        with self.conn:  # one transaction a batch
            self.conn.executemany(
                "INSERT INTO items(rowid, embedding, label) VALUES (?, ?, ?)",
                [(i + 1, v.tobytes(), lb) for i, v, lb in zip(ids.tolist(), vecs, labels)],
            )

    def finish(self) -> None:
        self.conn.close()

    def open(self, path: Path) -> None:
        self.conn = self.connect(path)

    def search(self, q: np.ndarray, k: int) -> list[list[int]]:
        sql = "SELECT rowid FROM items WHERE embedding MATCH ? AND k = ? ORDER BY distance"
        return [[r[0] - 1 for r in self.conn.execute(sql, (v.tobytes(), k))] for v in q]

    def search_filtered(self, q: np.ndarray, k: int, label: str) -> list[int]:
        sql = (
            "SELECT rowid FROM items WHERE embedding MATCH ? AND k = ? AND label = ? "
            "ORDER BY distance"
        )
        return [r[0] - 1 for r in self.conn.execute(sql, (q[0].tobytes(), k, label))]

    def close(self) -> None:
        self.conn.close()


class USearch(System):
    name, title, package = "usearch", "usearch (HNSW)", "usearch"
    filters = False  # no predicate search in its Python API

    def load(self) -> None:
        from usearch.index import Index

        self.Index = Index

    def create(self, path: Path, n: int) -> None:
        self.path = path
        self.index = self.Index(ndim=self.dim, metric="cos")

    def insert(self, ids: np.ndarray, vecs: np.ndarray, labels: list[str]) -> None:
        self.index.add(ids, vecs)

    def finish(self) -> None:
        self.index.save(str(self.path / "index.usearch"))
        fsync_tree(self.path)

    def open(self, path: Path) -> None:
        self.index = self.Index.restore(str(path / "index.usearch"))

    def search(self, q: np.ndarray, k: int) -> list[list[int]]:
        keys = np.atleast_2d(self.index.search(q, k).keys)
        return [[int(i) for i in row] for row in keys]

    def info(self, queries: np.ndarray) -> dict[str, Any]:
        ix = self.index
        return {
            "dtype": str(ix.dtype).rsplit(".", 1)[-1].lower(),  # ScalarKind.BF16 -> bf16
            "connectivity": int(ix.connectivity),
            "expansion_add": int(ix.expansion_add),
            "expansion_search": int(ix.expansion_search),
        }


class LabelFile(System):
    """An index library with no metadata: the labels go in a .npy beside the index."""

    def create(self, path: Path, n: int) -> None:
        self.path = path
        self.all_labels: list[str] = []

    def save_labels(self) -> None:
        np.save(self.path / "labels.npy", np.array(self.all_labels))

    def load_labels(self, path: Path) -> None:
        self.codes = np.load(path / "labels.npy")


class HnswLib(LabelFile):
    name, title, package = "hnswlib", "hnswlib", "hnswlib"

    def load(self) -> None:
        import hnswlib

        self.hnswlib = hnswlib

    def create(self, path: Path, n: int) -> None:
        super().create(path, n)
        self.index = self.hnswlib.Index(space="cosine", dim=self.dim)
        self.index.init_index(max_elements=n)

    def insert(self, ids: np.ndarray, vecs: np.ndarray, labels: list[str]) -> None:
        self.index.add_items(vecs, ids)
        self.all_labels.extend(labels)

    def finish(self) -> None:
        self.index.save_index(str(self.path / "index.bin"))
        self.save_labels()
        fsync_tree(self.path)

    def open(self, path: Path) -> None:
        self.index = self.hnswlib.Index(space="cosine", dim=self.dim)
        self.index.load_index(str(path / "index.bin"))
        self.load_labels(path)

    def search(self, q: np.ndarray, k: int) -> list[list[int]]:
        return self.index.knn_query(q, k)[0].astype(int).tolist()  # type: ignore[no-any-return]

    def search_filtered(self, q: np.ndarray, k: int, label: str) -> list[int]:
        codes = self.codes
        got = self.index.knn_query(q, k, filter=lambda i: codes[i] == label)
        return got[0][0].astype(int).tolist()  # type: ignore[no-any-return]

    def info(self, queries: np.ndarray) -> dict[str, Any]:
        ix = self.index
        return {"M": int(ix.M), "ef_construction": int(ix.ef_construction), "ef": int(ix.ef)}


class FaissHNSW(LabelFile):
    name, title, package = "faiss", "faiss HNSW32", "faiss-cpu"

    def load(self) -> None:
        import faiss

        self.faiss = faiss

    def create(self, path: Path, n: int) -> None:
        super().create(path, n)
        self.index = self.faiss.IndexHNSWFlat(self.dim, 32, self.faiss.METRIC_INNER_PRODUCT)

    def insert(self, ids: np.ndarray, vecs: np.ndarray, labels: list[str]) -> None:
        assert ids[0] == self.index.ntotal, "faiss numbers the vectors in order"
        self.index.add(vecs)
        self.all_labels.extend(labels)

    def finish(self) -> None:
        self.faiss.write_index(self.index, str(self.path / "index.faiss"))
        self.save_labels()
        fsync_tree(self.path)

    def open(self, path: Path) -> None:
        self.index = self.faiss.read_index(str(path / "index.faiss"))
        self.load_labels(path)

    def search(self, q: np.ndarray, k: int) -> list[list[int]]:
        return self.index.search(q, k)[1].tolist()  # type: ignore[no-any-return]

    def search_filtered(self, q: np.ndarray, k: int, label: str) -> list[int]:
        faiss = self.faiss
        ids = np.flatnonzero(self.codes == label).astype(np.int64)
        sel = faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids))
        got = self.index.search(q, k, params=faiss.SearchParametersHNSW(sel=sel))[1]
        return [int(i) for i in got[0] if i >= 0]

    def info(self, queries: np.ndarray) -> dict[str, Any]:
        hnsw = self.index.hnsw
        return {"M": 32, "efConstruction": int(hnsw.efConstruction), "efSearch": int(hnsw.efSearch)}


class Qdrant(System):
    name, title, package = "qdrant", "Qdrant (local mode)", "qdrant-client"

    def load(self) -> None:
        from qdrant_client import QdrantClient, models

        self.QdrantClient, self.models = QdrantClient, models

    def create(self, path: Path, n: int) -> None:
        m = self.models
        self.client = self.QdrantClient(path=str(path))
        self.client.create_collection(
            "items", vectors_config=m.VectorParams(size=self.dim, distance=m.Distance.COSINE)
        )

    def insert(self, ids: np.ndarray, vecs: np.ndarray, labels: list[str]) -> None:
        self.client.upsert(
            "items",
            points=self.models.Batch(
                ids=ids.tolist(), vectors=vecs.tolist(), payloads=[{"label": lb} for lb in labels]
            ),
        )

    def finish(self) -> None:
        self.client.close()

    def open(self, path: Path) -> None:
        self.client = self.QdrantClient(path=str(path))

    def search(self, q: np.ndarray, k: int) -> list[list[int]]:
        m = self.models
        got = self.client.query_batch_points(
            "items", requests=[m.QueryRequest(query=v.tolist(), limit=k) for v in q]
        )
        return [[int(p.id) for p in r.points] for r in got]

    def search_filtered(self, q: np.ndarray, k: int, label: str) -> list[int]:
        m = self.models
        flt = m.Filter(must=[m.FieldCondition(key="label", match=m.MatchValue(value=label))])
        got = self.client.query_points("items", query=q[0].tolist(), limit=k, query_filter=flt)
        return [int(p.id) for p in got.points]

    def close(self) -> None:
        self.client.close()


SYSTEMS: dict[str, type[System]] = {
    s.name: s for s in (Lookalike, Chroma, Lance, SqliteVec, USearch, HnswLib, FaissHNSW, Qdrant)
}
DEFAULT_SYSTEMS = [s for s in SYSTEMS if s != "qdrant"]  # Qdrant local mode: name it


# --- data -------------------------------------------------------------------------------


def prepare(cfg: dict[str, Any]) -> dict[str, Any]:
    """Vectors on disk, held-out queries, exact ground truth (whole and label-filtered)."""
    work, n, dim, nq, labels = (
        Path(cfg["workdir"]),
        cfg["n"],
        cfg["dim"],
        cfg["queries"],
        cfg["labels"],
    )
    syn = Synthetic(n, dim, clusters=cfg["clusters"])
    data = np.lib.format.open_memmap(
        work / "vectors.npy", mode="w+", dtype=np.float32, shape=(n, dim)
    )
    queries = syn.rows(0, nq, seed=99)  # another seed: drawn from the clusters, not stored
    nf = min(cfg["filtered"], nq)
    want = np.arange(nf) % labels  # filtered query j asks for label c{j % labels}
    best_s = np.full((nq, K), -np.inf, np.float32)
    best_i = np.zeros((nq, K), np.int64)
    fbest_s = np.full((nf, K), -np.inf, np.float32)
    fbest_i = np.zeros((nf, K), np.int64)

    def merge(bs: np.ndarray, bi: np.ndarray, s: np.ndarray, i: np.ndarray) -> None:
        allS, allI = np.concatenate([bs, s], 1), np.concatenate([bi, i], 1)
        top = np.argsort(-allS, axis=1, kind="stable")[:, :K]
        bs[:] = np.take_along_axis(allS, top, 1)
        bi[:] = np.take_along_axis(allI, top, 1)

    for start in range(0, n, CHUNK):
        rows = syn.rows(start, min(n, start + CHUNK))
        data[start : start + len(rows)] = rows
        s = queries @ rows.T  # (nq, chunk)
        ids = np.arange(start, start + len(rows))
        kk = min(K, len(rows))
        top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        merge(best_s, best_i, np.take_along_axis(s, top, 1), ids[top])
        for j in range(nf):
            mine = ids % labels == want[j]
            sj, ij = s[j, mine], ids[mine]
            kj = min(K, len(sj))
            if kj:
                t = np.argpartition(-sj, kj - 1)[:kj]
                pad = K - kj
                merge(
                    fbest_s[j : j + 1],
                    fbest_i[j : j + 1],
                    np.pad(sj[t], (0, pad), constant_values=-np.inf)[None],
                    np.pad(ij[t], (0, pad), constant_values=-1)[None],
                )
    data.flush()
    del data
    np.save(work / "queries.npy", queries)
    np.save(work / "truth.npy", best_i)
    np.save(work / "truth_filtered.npy", fbest_i)
    return {"clusters": syn.clusters, "filtered_queries": nf}


# --- the two phases, each in its own process -------------------------------------------


def phase_insert(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    work, n, dim = Path(cfg["workdir"]), cfg["n"], cfg["dim"]
    system = SYSTEMS[name](dim, cfg["labels"])
    system.load()
    path = work / "stores" / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    spent = 0.0
    t = time.perf_counter()
    system.create(path, n)
    spent += time.perf_counter() - t
    for start in range(0, n, INSERT_BATCH):
        stop = min(n, start + INSERT_BATCH)
        vecs = read_rows(work, start, stop, dim)  # not timed
        ids = np.arange(start, stop, dtype=np.int64)
        labels = [label_of(i, cfg["labels"]) for i in range(start, stop)]
        t = time.perf_counter()
        system.insert(ids, vecs, labels)
        spent += time.perf_counter() - t
    t = time.perf_counter()
    system.finish()
    finish = time.perf_counter() - t
    spent += finish
    return {
        "vec_per_s": n / spent,
        "seconds": spent,
        "finish_s": finish,
        "peak_rss_mb": peak_rss_mb(),
        "disk_mb": disk_mb(path),
    }


def timed(
    fn: Callable[[int], Any], count: int, budget: float, least: int
) -> tuple[list[float], list[Any]]:
    """Call fn(0), fn(1), ... up to count times, stopping after budget s (but >= least)."""
    times, out = [], []
    began = time.perf_counter()
    for j in range(count):
        if j >= least and time.perf_counter() - began > budget:
            break
        t = time.perf_counter()
        out.append(fn(j))
        times.append(time.perf_counter() - t)
    return times, out


def phase_serve(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    work = Path(cfg["workdir"])
    queries = np.load(work / "queries.npy")
    truth = np.load(work / "truth.npy")
    ftruth = np.load(work / "truth_filtered.npy")
    budget, nq, labels = cfg["budget"], len(queries), cfg["labels"]
    system = SYSTEMS[name](cfg["dim"], labels)
    t = time.perf_counter()
    system.load()
    out: dict[str, Any] = {"import_s": time.perf_counter() - t}
    t = time.perf_counter()
    system.open(work / "stores" / name)
    out["open_s"] = time.perf_counter() - t
    t = time.perf_counter()
    answers: dict[int, list[int]] = {0: system.search(queries[:1], K)[0]}
    out["first_query_s"] = time.perf_counter() - t
    out["cold_start_s"] = out["open_s"] + out["first_query_s"]
    out["rss_after_first_query_mb"] = rss_mb()

    # single queries, from the second on (the first was the cold one)
    single = min(cfg["single"], nq - 1)
    times, got = timed(lambda j: system.search(queries[j + 1 : j + 2], K)[0], single, budget, 10)
    answers.update({j + 1: g for j, g in enumerate(got)})
    out["single_count"] = len(times)
    out["single_p50_ms"] = 1000 * float(np.percentile(times, 50))
    out["single_p99_ms"] = 1000 * float(np.percentile(times, 99))

    if system.batched:
        starts = list(range(0, nq, QUERY_BATCH))
        times, got = timed(
            lambda j: system.search(queries[starts[j] : starts[j] + QUERY_BATCH], K),
            len(starts),
            budget,
            1,
        )
        done = sum(len(g) for g in got)
        out["batched_count"] = done
        out["batched_qps"] = done / sum(times)
        for j, g in enumerate(got):
            answers.update({starts[j] + i: a for i, a in enumerate(g)})
    asked = sorted(answers)
    out["recall_at_10"] = recall([answers[i] for i in asked], truth[asked])
    out["recall_count"] = len(asked)

    if system.filters:
        want = [label_of(j, labels) for j in range(len(ftruth))]
        times, got = timed(
            lambda j: system.search_filtered(queries[j : j + 1], K, want[j]), len(want), budget, 5
        )
        out["filtered_count"] = len(times)
        out["filtered_p50_ms"] = 1000 * float(np.percentile(times, 50))
        out["filtered_recall_at_10"] = recall(got, ftruth[: len(got)])
        out["filtered_labels_ok"] = all(
            label_of(i, labels) == want[j] for j, g in enumerate(got) for i in g
        )
    out["serve_rss_mb"] = rss_mb()
    out["serve_peak_rss_mb"] = peak_rss_mb()
    out.update(system.info(queries))  # not timed
    system.close()
    return out


# --- the parent: rounds, summary, table ------------------------------------------------


def cpu_class() -> dict[str, Any]:
    out: dict[str, Any] = {"machine": platform.machine(), "cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("model name"):
            out["model"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            out["flags"] = sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
            break
    return out


def versions(names: Sequence[str]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        if name == "lookalike":
            rev = subprocess.run(
                ["git", "describe", "--always", "--dirty"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            out[name] = f"src/ at {rev}" if rev else "src/"
            continue
        try:
            out[name] = version(SYSTEMS[name].package)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def child(cfg_path: Path, phase: str, name: str, timeout: float) -> dict[str, Any]:
    """Run one phase in a new process; its last stdout line is the JSON result."""
    t = time.perf_counter()
    try:
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--phase",
                phase,
                "--system",
                name,
                "--config",
                str(cfg_path),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {done.returncode}: " + " | ".join(tail)}
    result: dict[str, Any] = json.loads(lines[-1])
    result["wall_s"] = time.perf_counter() - t
    return result


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each number over the rounds that have it; the rest from the last round."""
    out: dict[str, Any] = {}
    for phase in ("insert", "serve"):
        runs = [r[phase] for r in rounds if phase in r and "error" not in r[phase]]
        for key in {k for r in runs for k in r}:
            vals = [r[key] for r in runs if key in r]
            nums = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if nums and len(nums) == len(vals):
                out[f"{phase}_{key}" if phase == "insert" else key] = float(np.median(nums))
            else:
                out[key] = vals[-1]
    errors = [r[p]["error"] for r in rounds for p in ("insert", "serve") if "error" in r.get(p, {})]
    if errors:
        out["errors"] = errors
    return out


def table(report: dict[str, Any]) -> str:
    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    head = (
        "| system | insert vec/s (durable, index ready) | cold start: open + first query "
        "| single p50 / p99 (k=10) | recall@10 | batched q/s | label-filtered p50 (recall) "
        "| serve RSS |\n|---|---|---|---|---|---|---|---|"
    )
    rows = [head]
    for name, entry in report["systems"].items():
        s = entry["summary"]
        title = SYSTEMS[name].title
        if s.get("search_mode"):
            title += f" ({s['search_mode']})"
        if "dtype" in s:
            title += f" ({s['dtype']})"
        if "error" in entry or not s.get("single_p50_ms"):
            reason = entry.get("error") or "; ".join(s.get("errors", [])) or "no result"
            rows.append(f"| {title} | {reason[:120]} | | | | | | |")
            continue
        filt = "-"
        if s.get("filtered_p50_ms") is not None:
            filt = f"{s['filtered_p50_ms']:.1f} ms ({s['filtered_recall_at_10']:.3f})"
        rows.append(
            f"| {title} | {num(s.get('insert_vec_per_s'), ',.0f')} | {s['cold_start_s']:.2f} s "
            f"| {s['single_p50_ms']:.1f} / {s['single_p99_ms']:.1f} ms | {s['recall_at_10']:.3f} "
            f"| {num(s.get('batched_qps'), ',.0f')} | {filt} | {s['serve_rss_mb']:,.0f} MB |"
        )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=None, help="stored vectors (100,000; --quick 2,000)")
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--labels", type=int, default=100, help="distinct label values (c0, c1, ...)")
    p.add_argument("--queries", type=int, default=None, help="held-out queries (1,000; quick 100)")
    p.add_argument("--single", type=int, default=None, help="queries timed one by one (300)")
    p.add_argument("--filtered", type=int, default=None, help="label-filtered queries (100)")
    p.add_argument("--budget", type=float, default=None, help="seconds per measurement (20)")
    p.add_argument(
        "--systems",
        default=",".join(DEFAULT_SYSTEMS),
        help=f"comma-separated: {', '.join(SYSTEMS)}",
    )
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (3; quick 1)")
    p.add_argument("--insert-rounds", type=int, default=1, help="rounds that rebuild the stores")
    p.add_argument(
        "--timeout", type=float, default=1800, help="seconds for one phase of one system"
    )
    p.add_argument(
        "--quick", action="store_true", help="a smoke run: small n, 1 round, short budgets"
    )
    p.add_argument("--out", default=None, help="results JSON (default benchmarks/results/...)")
    p.add_argument("--workdir", default=None, help="where data and stores go (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the workdir")
    p.add_argument(
        "--table", metavar="JSON", help="print the table of a results file (even a partial one)"
    )
    p.add_argument("--phase", choices=("insert", "serve"), help=argparse.SUPPRESS)
    p.add_argument("--system", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:  # a child: one phase of one system
        cfg = json.loads(Path(args.config).read_text())
        fn = phase_insert if args.phase == "insert" else phase_serve
        print(json.dumps(fn(cfg, args.system)))
        return
    if args.table:
        report = json.loads(Path(args.table).read_text())
        for entry in report["systems"].values():
            entry["summary"] = summarise(entry["rounds"])
        print(table(report))
        return

    quick = args.quick
    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in names if s not in SYSTEMS]
    if unknown:
        p.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    n = args.n or (2000 if quick else 100_000)
    cfg: dict[str, Any] = {
        "n": n,
        "dim": args.dim,
        "clusters": args.clusters,
        "labels": args.labels,
        "queries": args.queries or (100 if quick else 1000),
        "single": args.single or (30 if quick else 300),
        "filtered": args.filtered or (20 if quick else 100),
        "budget": args.budget or (2.0 if quick else 20.0),
        "rounds": args.rounds or (1 if quick else 3),
        "insert_rounds": args.insert_rounds,
        "systems": names,
    }
    tmp = args.workdir is None
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lookalike-peers-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg["workdir"] = str(work)
    cfg_path = work / "config.json"
    cfg_path.write_text(json.dumps(cfg))
    out_path = Path(args.out) if args.out else RESULTS / f"store_peers_n{n}_d{args.dim}.json"
    report: dict[str, Any] = {
        "config": {k: v for k, v in cfg.items() if k != "workdir"},
        "command": "python benchmarks/store_peers.py " + " ".join(sys.argv[1:]),
        "cpu": cpu_class(),
        "load_average_start": os.getloadavg(),
        "versions": versions(names),
        "systems": {name: {"rounds": []} for name in names},
    }

    def save() -> None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=2))

    status = 0
    try:
        t = time.perf_counter()
        report["prepare"] = prepare(cfg)
        report["prepare"]["seconds"] = time.perf_counter() - t
        print(f"prepared {n} x {args.dim} in {report['prepare']['seconds']:.1f} s", flush=True)
        built: set[str] = set()
        for r in range(cfg["rounds"]):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                entry: dict[str, Any] = {"round": r}
                if r < cfg["insert_rounds"] or name not in built:
                    entry["insert"] = child(cfg_path, "insert", name, args.timeout)
                    print(f"round {r} {name} insert {json.dumps(entry['insert'])}", flush=True)
                    if "error" in entry["insert"]:
                        report["systems"][name]["rounds"].append(entry)
                        continue
                    built.add(name)
                entry["serve"] = child(cfg_path, "serve", name, args.timeout)
                print(f"round {r} {name} serve {json.dumps(entry['serve'])}", flush=True)
                report["systems"][name]["rounds"].append(entry)
                report["systems"][name]["summary"] = summarise(report["systems"][name]["rounds"])
                save()
        for entry in report["systems"].values():
            entry["summary"] = summarise(entry["rounds"])
        report["load_average_end"] = os.getloadavg()
        report["table"] = table(report)
        print(report["table"])
        failed = [n for n, e in report["systems"].items() if "errors" in e["summary"]]
        if failed:
            print(f"failed: {', '.join(failed)} (see errors in the JSON)", file=sys.stderr)
            status = 1
    finally:
        save()
        print(f"wrote {out_path}", flush=True)
        if tmp and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    raise SystemExit(status)


if __name__ == "__main__":
    main()
