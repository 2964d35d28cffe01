"""LocalStore at scale: insert rate, build time, size, RSS, latency and recall (issue #4).

    python benchmarks/store_scale.py --n 100000 --dim 2048
    python benchmarks/store_scale.py --n 1000000 --dim 2048 --workdir /big/disk

Data: clustered synthetic vectors (1,000+ clusters of varying spread around a shared
mean direction, like pooled CNN features, not uniform noise) plus the 1,000 train images
of the shared reverse_image_search set embedded with EfficientNetLite0Embedder (1280-d,
cached as .npy). For other dims the real embeddings go through a fixed random
*orthonormal* map (QR of a Gaussian matrix): every cosine between them is kept exactly,
so their neighbourhood structure is the real one. Queries: the 100 test images
(embedded the same way, not in the store) plus held-out synthetic draws.

Each system runs in its own child process, one after another, so each peak RSS is its
own: the store (insert, then ANN build, then a fresh process that opens and searches),
plain numpy brute force, and faiss IndexFlatIP. Recall@10 is measured against exact
search over the same vectors. Results: a JSON file in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT.parent / "shared" / "datasets" / "reverse_image_search"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lookalike" / "bench"
CHUNK = 20_000


def read_rows(work: Path, start: int, stop: int, dim: int) -> np.ndarray:
    """Rows of vectors.npy read with plain file I/O (a memmap would count in the RSS)."""
    with open(work / "vectors.npy", "rb") as fh:
        np.lib.format.read_magic(fh)
        np.lib.format.read_array_header_1_0(fh)
        fh.seek(fh.tell() + start * dim * 4)
        return np.fromfile(fh, dtype=np.float32, count=(stop - start) * dim).reshape(-1, dim)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def real_embeddings() -> tuple[np.ndarray, np.ndarray]:
    """(train, test) EfficientNet-Lite0 embeddings of the shared set, cached."""
    cache = CACHE / "effnet_lite0_reverse_image_search.npz"
    if not cache.exists():
        from lookalike.embedders import EfficientNetLite0Embedder
        from lookalike.images import load_image

        emb = EfficientNetLite0Embedder()
        out = {}
        for split in ("train", "test"):
            paths = sorted((DATASET / split).rglob("*.JPEG"))
            vecs = [
                emb.embed([load_image(p) for p in paths[i : i + 32]])
                for i in range(0, len(paths), 32)
            ]
            out[split] = np.concatenate(vecs).astype(np.float32)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **out)
    data = np.load(cache)
    return data["train"], data["test"]


def to_dim(vectors: np.ndarray, dim: int) -> np.ndarray:
    if vectors.shape[1] == dim:
        return vectors
    rng = np.random.default_rng(2048)
    q, _ = np.linalg.qr(
        rng.standard_normal((max(dim, vectors.shape[1]), min(dim, vectors.shape[1])))
    )
    mapped = (
        vectors @ q.T if dim > vectors.shape[1] else vectors @ q
    )  # isometry up, projection down
    return (mapped / np.linalg.norm(mapped, axis=1, keepdims=True)).astype(np.float32)


class Synthetic:
    """Overlapping clusters inside super-clusters; row i is the same whatever chunk asks.

    100 super-clusters (themes), each holding n/100 / 50 clusters (near-duplicate groups)
    whose centres sit close together, with per-cluster spread: a query's ten nearest
    neighbours straddle several clusters and several inverted lists, as in a photo library.
    ``clusters`` fixes their number (``store_peers.py`` uses 1,000 at every size).
    """

    def __init__(self, n: int, dim: int, clusters: int | None = None) -> None:
        rng = np.random.default_rng(7)
        self.dim = dim
        self.clusters = clusters or max(1000, n // 50)
        supers = rng.standard_normal((100, dim)).astype(np.float32)
        supers /= np.linalg.norm(supers, axis=1, keepdims=True)
        mean = rng.standard_normal(dim).astype(np.float32)
        mean /= np.linalg.norm(mean)
        own = rng.standard_normal((self.clusters, dim)).astype(np.float32)
        own /= np.linalg.norm(own, axis=1, keepdims=True)
        of = rng.integers(0, 100, self.clusters)
        self.centres = 0.5 * mean + supers[of] + 0.35 * own  # cosines mostly positive
        self.spread = rng.uniform(0.8, 1.2, self.clusters).astype(np.float32)

    def rows(self, start: int, stop: int, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng([seed, start])
        which = rng.integers(0, self.clusters, stop - start)
        noise = rng.standard_normal((stop - start, self.dim), dtype=np.float32)
        noise *= (self.spread[which] / np.sqrt(self.dim))[:, None]
        v = self.centres[which] + noise
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Write all vectors to a float32 memmap and the queries to .npy (not timed)."""
    work = Path(args.workdir)
    train, test = real_embeddings()
    train, test = to_dim(train, args.dim), to_dim(test, args.dim)
    syn = Synthetic(args.n, args.dim)
    data = np.lib.format.open_memmap(
        work / "vectors.npy", mode="w+", dtype=np.float32, shape=(args.n, args.dim)
    )
    for start in range(0, args.n, CHUNK):
        stop = min(args.n, start + CHUNK)
        data[start:stop] = syn.rows(start, stop)
    real_at = np.linspace(0, args.n - 1, len(train)).astype(np.int64)  # mixed in, spread out
    data[real_at] = train
    data.flush()
    queries = np.concatenate([test, syn.rows(0, args.queries - len(test), seed=99)])
    order = np.random.default_rng(5).permutation(len(queries))  # real and synthetic mixed
    np.save(work / "queries.npy", queries[order])
    np.save(work / "is_real.npy", order < len(test))
    return {"real_in_store": len(train), "real_queries": len(test), "clusters": syn.clusters}


def latency(search: Any, queries: np.ndarray, batch: int, single: int) -> dict[str, float]:
    search(queries[:1])  # warm
    times = []
    for q in queries[:single]:
        t = time.perf_counter()
        search(q[None, :])
        times.append(time.perf_counter() - t)
    batched = []
    for start in range(0, len(queries) - batch + 1, batch):
        t = time.perf_counter()
        search(queries[start : start + batch])
        batched.append((time.perf_counter() - t) / batch)
    return {
        "single_p50_ms": 1000 * float(np.percentile(times, 50)),
        "single_p99_ms": 1000 * float(np.percentile(times, 99)),
        "batched_ms_per_query": 1000 * float(np.median(batched)) if batched else float("nan"),
    }


def sharded(args: argparse.Namespace, make: Any) -> tuple[dict[str, Any], np.ndarray]:
    """Brute force, one resident shard at a time (at most 200k rows, 1.6 GB at 2048-d).

    ``make(rows)`` returns a function ``search(q) -> (scores, local ids)``. Latencies are
    summed over shards (loading a shard is not timed), so they are what a machine with
    room for the whole matrix would see, give or take cache effects.
    """
    work = Path(args.workdir)
    queries = np.load(work / "queries.npy")
    shard = min(args.n, 200_000)
    nq = len(queries)
    single = np.zeros(args.baseline_single)
    batched = 0.0
    all_s, all_i = [], []
    for start in range(0, args.n, shard):
        search = make(read_rows(work, start, min(args.n, start + shard), args.dim))
        search(queries[:1])  # warm
        for j in range(args.baseline_single):
            t = time.perf_counter()
            search(queries[j : j + 1])
            single[j] += time.perf_counter() - t
        parts_s, parts_i = [], []
        for i in range(0, nq, args.batch):
            t = time.perf_counter()
            sc, ix = search(queries[i : i + args.batch])
            batched += time.perf_counter() - t
            parts_s.append(sc)
            parts_i.append(ix + start)
        all_s.append(np.concatenate(parts_s))
        all_i.append(np.concatenate(parts_i))
        del search
    s, i = np.concatenate(all_s, 1), np.concatenate(all_i, 1)
    order = np.argsort(-s, axis=1, kind="stable")[:, : args.k]
    top = np.take_along_axis(i, order, 1)
    out = {
        "single_p50_ms": 1000 * float(np.percentile(single, 50)),
        "single_p99_ms": 1000 * float(np.percentile(single, 99)),
        "batched_ms_per_query": 1000 * batched / nq,
        "shards": -(-args.n // shard),
    }
    return out, top


def phase_numpy(args: argparse.Namespace) -> dict[str, Any]:
    def make(rows: np.ndarray) -> Any:
        def search(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            s = rows @ q.T
            top = np.argpartition(-s, args.k - 1, axis=0)[: args.k].T
            return np.take_along_axis(s.T, top, 1), top

        return search

    out, truth = sharded(args, make)
    np.save(Path(args.workdir) / "truth.npy", truth)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def phase_faiss(args: argparse.Namespace) -> dict[str, Any]:
    import faiss

    def make(rows: np.ndarray) -> Any:
        index = faiss.IndexFlatIP(args.dim)
        index.add(rows)
        return lambda q: index.search(q, args.k)

    out, got = sharded(args, make)
    out["recall_at_10"] = recall(got, np.load(Path(args.workdir) / "truth.npy"))
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(g.tolist()) & set(t.tolist())) / len(t) for g, t in zip(got, truth)])
    )


def open_store(args: argparse.Namespace, threshold: int | None) -> Any:
    from lookalike.stores import LocalStore

    return LocalStore(
        Path(args.workdir) / "store.lookalike", ann_threshold=threshold, ann_nprobe=args.nprobe
    )


def phase_insert(args: argparse.Namespace) -> dict[str, Any]:
    from lookalike.types import Record, Schema

    store = open_store(args, None)
    store.create_schema(Schema(dim=args.dim, identity="bench", fields=("path", "label")))
    spent = 0.0
    for start in range(0, args.n, 1000):
        vecs = read_rows(Path(args.workdir), start, min(args.n, start + 1000), args.dim)
        recs = [
            Record(
                f"v{start + i}",
                v,
                {"path": f"/photos/{start + i:07d}.jpg", "label": f"c{(start + i) % 100}"},
            )
            for i, v in enumerate(vecs)
        ]
        t = time.perf_counter()
        store.upsert(recs)  # batches of 1,000, as add_many hands them over
        spent += time.perf_counter() - t
    store.close()
    return {"vectors_per_s": args.n / spent, "seconds": spent, "peak_rss_mb": peak_rss_mb()}


def store_search(args: argparse.Namespace, store: Any, queries: np.ndarray) -> dict[str, Any]:
    def search(q: np.ndarray) -> list[list[Any]]:
        return list(store.search(q, args.k))

    out: dict[str, Any] = latency(search, queries, args.batch, args.single)
    hits = [
        h for i in range(0, len(queries), 64) for h in store.search(queries[i : i + 64], args.k)
    ]
    got = np.array([[int(h.id[1:]) for h in hs] for hs in hits])
    truth = np.load(Path(args.workdir) / "truth.npy")
    out["recall_at_10"] = recall(got, truth)
    real = np.load(Path(args.workdir) / "is_real.npy")
    out["recall_at_10_real_queries"] = recall(got[real], truth[real])
    out["recall_at_10_synthetic_queries"] = recall(got[~real], truth[~real])
    flt = [h for hs in store.search(queries[:20], args.k, filter={"label": "c7"}) for h in hs]
    out["filtered_hits_ok"] = len(flt) == 20 * args.k and all(
        h.metadata["label"] == "c7" for h in flt
    )
    return out


def phase_store_exact(args: argparse.Namespace) -> dict[str, Any]:
    queries = np.load(Path(args.workdir) / "queries.npy")
    store = open_store(args, None)
    t = time.perf_counter()
    assert store.search_mode == "exact"
    out = {"load_s": time.perf_counter() - t}
    out.update(store_search(args, store, queries))
    out["peak_rss_mb"] = peak_rss_mb()
    store.close()
    return out


def phase_store_build(args: argparse.Namespace) -> dict[str, Any]:
    store = open_store(args, 1)
    Path(store.ann_path).unlink(missing_ok=True)
    t = time.perf_counter()
    assert store.wait_for_index()  # builds it (in the background for large stores)
    out = {"build_s": time.perf_counter() - t, "peak_rss_mb": peak_rss_mb()}
    store.close()
    return out


def phase_store_ann(args: argparse.Namespace) -> dict[str, Any]:
    queries = np.load(Path(args.workdir) / "queries.npy")
    store = open_store(args, 1)
    t = time.perf_counter()
    assert store.search_mode == "ann"
    out = {
        "open_and_load_s": time.perf_counter() - t,
        "nprobe": store._mirror.ann.nprobe,
        "nlist": store._mirror.ann.nlist,
    }
    out.update(store_search(args, store, queries))
    out["peak_rss_mb"] = peak_rss_mb()
    ann = store._mirror.ann
    default, sweep = ann.nprobe, []
    truth = np.load(Path(args.workdir) / "truth.npy")
    for nprobe in sorted({max(4, ann.nlist // d) for d in (128, 64, 32, 16, 8)}):
        ann.nprobe = nprobe
        got = store.search(queries, args.k)
        lat = latency(lambda q: store.search(q, args.k), queries, args.batch, 50)
        found = np.array([[int(h.id[1:]) for h in hs] for hs in got])
        sweep.append(dict(nprobe=nprobe, recall_at_10=recall(found, truth), **lat))
    ann.nprobe = default
    out["nprobe_sweep"] = sweep
    store.close()
    return out


PHASES = {
    "prepare": prepare,
    "numpy": phase_numpy,
    "faiss": phase_faiss,
    "insert": phase_insert,
    "store_exact": phase_store_exact,
    "store_build": phase_store_build,
    "store_ann": phase_store_ann,
}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--queries", type=int, default=400)
    p.add_argument("--single", type=int, default=200, help="queries timed one by one")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument(
        "--baseline-single", type=int, default=50, help="numpy/faiss queries timed alone"
    )
    p.add_argument(
        "--nprobe", type=int, default=None, help="LocalStore ann_nprobe (default: the store's)"
    )
    p.add_argument(
        "--workdir", default=None, help="where the store and data go (default: a temp dir)"
    )
    p.add_argument("--keep", action="store_true", help="keep the workdir")
    p.add_argument("--skip", default="", help="comma-separated phases to skip")
    p.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:  # child process: run one phase, print its JSON
        print(json.dumps(PHASES[args.phase](args)))
        return
    import tempfile

    work = Path(args.workdir or tempfile.mkdtemp(prefix="lookalike-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    argv = [a for a in sys.argv[1:] if not a.startswith("--workdir")]
    if args.workdir and "--workdir" in sys.argv:  # drop the value that followed it too
        argv.remove(args.workdir)
    argv += ["--workdir", str(work)]
    report: dict[str, Any] = {"n": args.n, "dim": args.dim, "k": args.k, "queries": args.queries}
    skip = set(filter(None, args.skip.split(",")))
    try:
        for phase in PHASES:
            if phase in skip or (phase == "store_exact" and args.n * args.dim * 4 > 4 << 30):
                continue
            t = time.perf_counter()
            done = subprocess.run(
                [sys.executable, __file__, *argv, "--phase", phase],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode:
                sys.stderr.write(done.stderr)
                raise SystemExit(f"phase {phase} failed")
            report[phase] = json.loads(done.stdout.strip().splitlines()[-1])
            report[phase]["wall_s"] = time.perf_counter() - t
            if phase == "prepare":
                (work / "prep.json").write_text(json.dumps(report[phase]))
            if phase == "store_build":
                sizes = {
                    f.name: f.stat().st_size
                    for f in work.iterdir()
                    if f.name.startswith("store.lookalike")
                }
                report["disk_bytes"] = sizes
                report["disk_bytes_per_image"] = {k: v / args.n for k, v in sizes.items()}
            print(phase, json.dumps(report[phase]), flush=True)
    finally:
        out = ROOT / "benchmarks" / "results" / f"store_scale_n{args.n}_d{args.dim}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
