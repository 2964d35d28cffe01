"""faiss IVF-SQ8 vs usearch HNSW (i8, f16) on store_scale.py's vectors (see docs/performance.md).

python benchmarks/store_scale.py --n 100000 --dim 2048 --workdir /tmp/bench100k
python benchmarks/ann_libraries.py /tmp/bench100k
"""

import json
import sys
import time

import faiss
import numpy as np
from usearch.index import Index

W = sys.argv[1].rstrip("/") + "/"  # a workdir kept by store_scale.py --workdir DIR
x = np.load(W + "vectors.npy")
q = np.load(W + "queries.npy")
truth = np.load(W + "truth.npy")
n = len(x)
x = x[:n]


def rec(got):
    return float(np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth)]))


def lat(f):
    f(q[:1])
    t = []
    for i in range(100):
        a = time.perf_counter()
        f(q[i : i + 1])
        t.append(time.perf_counter() - a)
    return 1000 * float(np.median(t))


out = {}

t = time.perf_counter()
nl = int(np.sqrt(n))
ix = faiss.IndexIVFScalarQuantizer(
    faiss.IndexFlatIP(2048), 2048, nl, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
)
ix.cp.niter = 10
ix.cp.min_points_per_centroid = 8
ix.cp.max_points_per_centroid = 64
ix.train(x[np.random.default_rng(0).choice(n, min(n, 40 * nl), replace=False)])
ix.add(x)
out["faiss_ivf_sq8"] = {"build_s": time.perf_counter() - t, "nlist": nl}
for npb in (max(8, nl // 32), nl // 8):
    ix.nprobe = npb
    out["faiss_ivf_sq8"][f"nprobe{npb}"] = {
        "p50_ms": lat(lambda z: ix.search(z, 40)),
        "recall_at_10_no_rerank": rec(ix.search(q, 10)[1]),
    }
print(json.dumps(out), flush=True)
for dt in ("i8", "f16"):
    u = Index(
        ndim=2048, metric="ip", dtype=dt, connectivity=16, expansion_add=128, expansion_search=64
    )
    t = time.perf_counter()
    u.add(np.arange(n), x, threads=2)
    b = time.perf_counter() - t
    got = u.search(q, 10).keys
    out[f"usearch_hnsw_{dt}"] = {
        "build_s": b,
        "p50_ms": lat(lambda z, u=u: u.search(z, 40)),
        "recall_at_10_no_rerank": rec(got),
        "memory_bytes": u.memory_usage,
    }
    print(json.dumps(out), flush=True)
    del u
