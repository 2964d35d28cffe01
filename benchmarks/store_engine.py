"""LocalStore's engine at 100k (issue #20 part 2): cold start, latency, recall, filtered
search, insert rate, index build, RSS, inverted-list balance.

    python benchmarks/store_engine.py --n 100000 --dim 2048

Data: the clustered generator of ``store_scale.py`` with 1,000 clusters (L2-normalised,
grouped in 100 themes, so clusters overlap and outnumber the inverted lists), a
``label`` field of 100 values, 400 held-out queries; ground truth by exact numpy search.
Each phase runs in a fresh child process (cold start is a new process; each RSS is its
own), one after another in one run:

- ``insert``: a new store, ``upsert`` in batches of 1,000 (durable: each batch a
  committed SQLite transaction, vectors in ``<store>.vec``), then ``close()``, which
  builds the approximate index before it returns: the index is ready when it returns.
- ``cold``: new processes that open the store and answer one query (page cache warm:
  the files were just written), three times; ``import lookalike`` timed apart.
- ``serve``: single-query p50/p99, batched q/s, recall@10, label-filtered p50 and
  recall, RSS, list sizes and codes scanned per query, an nprobe sweep.
- ``rebuild``: the index file deleted; a new process answers exactly (recall 1.0) while
  the index builds in the background, then uses it.
- ``exact_sizes``: exact search over the mapped vectors at growing sizes (where it
  stops meeting 1 ms per query).

The JSON goes to ``benchmarks/results/store_engine_n{n}_d{dim}.json``.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))

LABELS = 100


def cpu_class() -> str:
    flags = ""
    model = platform.processor()
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line
                break
    have = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    return f"{model} ({os.cpu_count()} cores; {', '.join(have)})"


def rss_mb() -> dict[str, float]:
    current = 0.0
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024
    return {
        "rss_mb": current,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def synthetic(n: int, dim: int, clusters: int) -> Any:
    from store_scale import Synthetic

    syn = Synthetic(n, dim)
    syn.clusters = clusters
    syn.centres = syn.centres[:clusters]
    syn.spread = syn.spread[:clusters]
    return syn


def label(i: int) -> str:
    return f"c{i % LABELS}"


def recall(got: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(t.tolist())) / len(t) for g, t in zip(got, truth)]))


# -- phases (each in its own process) -----------------------------------------------------


def phase_prepare(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.workdir)
    syn = synthetic(args.n, args.dim, args.clusters)
    data = np.lib.format.open_memmap(
        work / "vectors.npy", mode="w+", dtype=np.float32, shape=(args.n, args.dim)
    )
    for start in range(0, args.n, 20_000):
        data[start : start + 20_000] = syn.rows(start, min(args.n, start + 20_000))
    data.flush()
    queries = syn.rows(0, args.queries, seed=99)
    np.save(work / "queries.npy", queries)
    scores = np.asarray(data) @ queries.T  # (n, q)
    part = np.argpartition(-scores, args.k, axis=0)[: args.k].T  # (q, k), unordered
    order = np.argsort(-np.take_along_axis(scores.T, part, 1), axis=1)
    truth = np.take_along_axis(part, order, 1)
    np.save(work / "truth.npy", truth)
    labels = np.arange(args.n) % LABELS
    ftruth = []
    for j in range(len(queries)):
        rows = np.flatnonzero(labels == 7)
        ftruth.append(rows[np.argsort(-scores[rows, j])[: args.k]])
    np.save(work / "ftruth.npy", np.array(ftruth))
    return {"clusters": args.clusters}


def open_store(args: argparse.Namespace) -> Any:
    from lookalike.stores import LocalStore

    return LocalStore(Path(args.workdir) / "store.lookalike", ann_nprobe=args.nprobe)


def phase_insert(args: argparse.Namespace) -> dict[str, Any]:
    from lookalike.types import Record, Schema

    data = np.load(Path(args.workdir) / "vectors.npy", mmap_mode="r")
    store = open_store(args)
    store.create_schema(Schema(dim=args.dim, identity="bench", fields=("path", "label")))
    spent = 0.0
    for start in range(0, args.n, 1000):
        vecs = np.array(data[start : start + 1000])
        recs = [
            Record(f"v{start + i}", v, {"path": f"/p/{start + i}.jpg", "label": label(start + i)})
            for i, v in enumerate(vecs)
        ]
        t = time.perf_counter()
        store.upsert(recs)
        spent += time.perf_counter() - t
    t = time.perf_counter()
    store.close()  # a writer builds the index before close returns
    ready = time.perf_counter() - t
    return {
        "vectors_per_s": args.n / spent,
        "insert_s": spent,
        "index_ready_after_last_insert_s": ready,
        **rss_mb(),
    }


def phase_cold(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    from lookalike.stores import LocalStore  # noqa: F401 - timed apart

    imported = time.perf_counter() - t0
    q = np.load(Path(args.workdir) / "queries.npy")[:1]
    t, c = time.perf_counter(), time.process_time()
    store = open_store(args)
    hits = store.search(q, args.k)
    cold, cold_cpu = time.perf_counter() - t, time.process_time() - c
    mode = store.search_mode
    store.close()
    return {
        "import_s": imported,
        "open_and_first_query_s": cold,
        "open_and_first_query_cpu_s": cold_cpu,
        "mode": mode,
        "hits": len(hits[0]),
    }


def _latency(fn: Any, queries: np.ndarray, single: int) -> dict[str, float]:
    """Wall-clock p50/p99, and the median CPU time of the calling thread (on a loaded
    machine the wall clock counts the time other jobs held the cores)."""
    fn(queries[:1])
    times, cpu = [], []
    for q in queries[:single]:
        t, c = time.perf_counter(), time.thread_time()
        fn(q[None, :])
        times.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c)
    return {
        "p50_ms": 1000 * float(np.percentile(times, 50)),
        "p99_ms": 1000 * float(np.percentile(times, 99)),
        "cpu_p50_ms": 1000 * float(np.percentile(cpu, 50)),
    }


def phase_serve(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.workdir)
    queries = np.load(work / "queries.npy")
    truth = np.load(work / "truth.npy")
    ftruth = np.load(work / "ftruth.npy")
    store = open_store(args)
    out: dict[str, Any] = {"mode": store.search_mode}
    search = lambda q: store.search(q, args.k)  # noqa: E731
    out.update(_latency(search, queries, args.single))
    got = [[int(h.id[1:]) for h in hs] for hs in store.search(queries, args.k)]
    out["recall_at_10"] = recall(got, truth)
    t = time.perf_counter()
    for start in range(0, len(queries), 64):
        store.search(queries[start : start + 64], args.k)
    out["batched_q_per_s"] = len(queries) / (time.perf_counter() - t)
    flt = lambda q: store.search(q, args.k, filter={"label": "c7"})  # noqa: E731
    lat = _latency(flt, queries, args.single)
    out["filtered_p50_ms"], out["filtered_p99_ms"] = lat["p50_ms"], lat["p99_ms"]
    out["filtered_cpu_p50_ms"] = lat["cpu_p50_ms"]
    fgot = [[int(h.id[1:]) for h in hs] for hs in flt(queries)]
    out["filtered_recall_at_10"] = recall(fgot, ftruth)
    out.update(rss_mb())
    ann = store._mirror.ann if store._mirror is not None else None
    if ann is not None:
        sizes = ann.list_sizes()
        out["nlist"], out["nprobe"] = ann.nlist, ann.nprobe
        out["list_sizes"] = {
            "max": int(sizes.max()),
            "p99": float(np.percentile(sizes, 99)),
            "median": float(np.median(sizes)),
            "min": int(sizes.min()),
            "mean": float(sizes.mean()),
        }
        out["codes_per_query"] = float(ann.codes_scanned(queries).mean())
        sweep = []
        default = ann.nprobe
        for nprobe in sorted({max(4, default // 2), default, default * 2, default * 4}):
            ann.nprobe = nprobe
            got = [[int(h.id[1:]) for h in hs] for hs in store.search(queries, args.k)]
            lat = _latency(search, queries, 100)
            sweep.append(
                {
                    "nprobe": nprobe,
                    "recall_at_10": recall(got, truth),
                    "codes_per_query": float(ann.codes_scanned(queries, nprobe).mean()),
                    **lat,
                }
            )
        ann.nprobe = default
        out["nprobe_sweep"] = sweep
    store.close()
    return out


def phase_rebuild(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.workdir)
    queries = np.load(work / "queries.npy")
    truth = np.load(work / "truth.npy")
    (work / "store.lookalike.ann").unlink()
    t = time.perf_counter()
    store = open_store(args)
    first = store.search(queries[:1], args.k)
    out: dict[str, Any] = {"open_and_first_query_s": time.perf_counter() - t}
    out["mode_while_building"] = store.search_mode
    times = []
    got = []
    for j in range(20):
        t1 = time.perf_counter()
        got += [[int(h.id[1:]) for h in hs] for hs in store.search(queries[j : j + 1], args.k)]
        times.append(time.perf_counter() - t1)
    out["exact_p50_ms_while_building"] = 1000 * float(np.median(times))
    out["recall_while_building"] = recall(got, truth[:20])
    assert store.wait_for_index(600)
    out["index_ready_s"] = time.perf_counter() - t
    out["mode_after"] = store.search_mode
    got = [[int(h.id[1:]) for h in hs] for hs in store.search(queries, args.k)]
    out["recall_after"] = recall(got, truth)
    out["first_hits"] = len(first[0])
    store.close()
    return out


def phase_exact_sizes(args: argparse.Namespace) -> dict[str, Any]:
    from lookalike.stores.local._vecfile import HEADER_BYTES

    work = Path(args.workdir)
    queries = np.load(work / "queries.npy")
    size = (work / "store.lookalike.vec").stat().st_size
    rows = (size - HEADER_BYTES) // (4 * args.dim)
    with open(work / "store.lookalike.vec", "rb") as fh:
        mm = mmap.mmap(fh.fileno(), HEADER_BYTES + rows * 4 * args.dim, access=mmap.ACCESS_READ)
    mapped = np.frombuffer(mm, dtype=np.float32, offset=HEADER_BYTES).reshape(rows, args.dim)
    wall, cpu = {}, {}
    for n in (1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000):
        if n > len(mapped):
            break
        part = mapped[:n]
        part @ queries[0]  # map it in
        times, spent = [], []
        for q in queries[:50]:
            t, c = time.perf_counter(), time.thread_time()
            s = part @ q
            np.argpartition(-s, args.k)[: args.k]
            times.append(time.perf_counter() - t)
            spent.append(time.thread_time() - c)
        wall[str(n)] = 1000 * float(np.median(times))
        cpu[str(n)] = 1000 * float(np.median(spent))
    return {"exact_p50_ms_by_rows": wall, "exact_cpu_p50_ms_by_rows": cpu}


PHASES = {
    "prepare": phase_prepare,
    "insert": phase_insert,
    "cold": phase_cold,
    "serve": phase_serve,
    "rebuild": phase_rebuild,
    "exact_sizes": phase_exact_sizes,
}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--queries", type=int, default=400)
    p.add_argument("--single", type=int, default=200)
    p.add_argument("--nprobe", type=int, default=None)
    p.add_argument("--workdir", default=None)
    p.add_argument("--skip", default="")
    p.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        print(json.dumps(PHASES[args.phase](args)))
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lookalike-engine-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "n": args.n,
        "dim": args.dim,
        "k": args.k,
        "queries": args.queries,
        "cpu": cpu_class(),
    }
    skip = set(filter(None, args.skip.split(",")))
    base = [sys.executable, __file__, "--n", str(args.n), "--dim", str(args.dim)]
    base += ["--clusters", str(args.clusters), "--k", str(args.k), "--queries", str(args.queries)]
    base += ["--single", str(args.single), "--workdir", str(work)]
    if args.nprobe:
        base += ["--nprobe", str(args.nprobe)]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = ROOT / "benchmarks" / "results" / f"store_engine_n{args.n}_d{args.dim}.json"
    try:
        for phase in PHASES:
            if phase in skip:
                continue
            runs = 3 if phase == "cold" else 1
            for _ in range(runs):
                t = time.perf_counter()
                done = subprocess.run(
                    [*base, "--phase", phase], capture_output=True, text=True, env=env, check=False
                )
                if done.returncode:
                    sys.stderr.write(done.stderr)
                    raise SystemExit(f"phase {phase} failed")
                got = json.loads(done.stdout.strip().splitlines()[-1])
                got["wall_s"] = time.perf_counter() - t
                got["load_average"] = os.getloadavg()[0]
                if runs > 1:
                    report.setdefault(phase, []).append(got)
                else:
                    report[phase] = got
                print(phase, json.dumps(got), flush=True)
            if phase == "insert":
                report["disk_bytes"] = {
                    f.name: f.stat().st_size for f in work.iterdir() if f.name.startswith("store")
                }
    finally:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
