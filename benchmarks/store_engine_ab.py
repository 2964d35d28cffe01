"""LocalStore before and after, side by side in one run (interleaved rounds): insert
rate, cold start, single-query and label-filtered p50 with their recall@10, RSS. Wall
clock and CPU time are both recorded: on a loaded machine the ratio of CPU times is the
fair one.

    git archive fd3d63f src | tar -x -C /tmp/old       # the engine before #20
    python benchmarks/store_engine.py --workdir /tmp/w  # builds /tmp/w/store.lookalike
    python benchmarks/store_engine_ab.py /tmp/old/src /tmp/w

Both engines open the same store file when its format did not change (the engine before
#20 ignores the derived files and, below its 200,000-record threshold, searches exactly).
When the derived files differ (the ``.ann`` of the engine before it is format 2), give the
older engine a copy of the work folder with its own index built
(``store_engine_ab.py OLD_SRC WORK OLD_WORK``); ``--serve-only`` skips the insert runs.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
OLD, WORK = ARGS[0], ARGS[1]
OLD_WORK = ARGS[2] if len(ARGS) > 2 else WORK
SERVE_ONLY = "--serve-only" in sys.argv
NEW = str(Path(__file__).resolve().parents[1] / "src")
INSERT = r"""
import json, sys, time, numpy as np, tempfile, shutil
from lookalike.stores import LocalStore
from lookalike.types import Record, Schema
d = tempfile.mkdtemp(dir=WORK)
v = np.load(WORK + "/vectors.npy", mmap_mode="r")
s = LocalStore(d + "/s.lookalike", ann_threshold=None)
s.create_schema(Schema(dim=2048, identity="b", fields=("path", "label")))
wall = cpu = 0.0
N = 20000
for st in range(0, N, 1000):
    x = np.array(v[st:st+1000])
    recs = [Record(f"v{st+i}", x[i], {"path": f"/p/{st+i}.jpg", "label": f"c{(st+i)%100}"}) for i in range(len(x))]
    t, c = time.perf_counter(), time.process_time(); s.upsert(recs)
    wall += time.perf_counter() - t; cpu += time.process_time() - c
s.close(); shutil.rmtree(d)
print(json.dumps({"insert_vec_per_s_wall": N / wall, "insert_vec_per_s_cpu": N / cpu}))
"""
SERVE = r"""
import json, time, resource, numpy as np
t0 = time.perf_counter()
from lookalike.stores import LocalStore
q = np.load(WORK + "/queries.npy")
t, c = time.perf_counter(), time.process_time()
s = LocalStore(WORK + "/store.lookalike")
s.search(q[:1], 10)
out = {"cold_wall_s": time.perf_counter() - t, "cold_cpu_s": time.process_time() - c, "mode": s.search_mode}
def lat(fn, n):
    w, c = [], []
    for j in range(1, n + 1):
        t0, c0 = time.perf_counter(), time.thread_time(); fn(q[j:j+1])
        w.append(time.perf_counter() - t0); c.append(time.thread_time() - c0)
    return 1000 * float(np.median(w)), 1000 * float(np.median(c))
n = 20 if s.search_mode == "exact" else 200
out["p50_wall_ms"], out["p50_cpu_ms"] = lat(lambda x: s.search(x, 10), n)
s.search(q[:1], 10, filter={"label": "c7"})
out["filtered_p50_wall_ms"], out["filtered_p50_cpu_ms"] = lat(lambda x: s.search(x, 10, filter={"label": "c7"}), n)
def recall(hits, truth):
    return float(np.mean([len({int(h.id[1:]) for h in hs} & set(t.tolist())) / len(t) for hs, t in zip(hits, truth)]))
out["recall_at_10"] = recall(s.search(q, 10), np.load(WORK + "/truth.npy"))
out["filtered_recall_at_10"] = recall(s.search(q, 10, filter={"label": "c7"}), np.load(WORK + "/ftruth.npy"))
rss = 0
for line in open("/proc/self/status"):
    if line.startswith("VmRSS"): rss = int(line.split()[1]) / 1024
out["rss_mb"] = rss; out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""
res = {"orig": [], "new": []}
for _round in range(2):
    for name, src, work in (("orig", OLD, OLD_WORK), ("new", NEW, WORK)):
        got = {"load": os.getloadavg()[0]}
        for code in (SERVE,) if SERVE_ONLY else (INSERT, SERVE):
            out = subprocess.run(
                [sys.executable, "-c", code.replace("WORK", repr(work))],
                env=dict(os.environ, PYTHONPATH=src),
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode:
                sys.exit(out.stderr[-2000:])
            got.update(json.loads(out.stdout.strip().splitlines()[-1]))
        res[name].append(got)
        print(name, json.dumps(got), flush=True)
name = "store_engine_before_after_n100000_d2048"
out = Path(__file__).resolve().parent / "results" / f"{name}{'_serve' if SERVE_ONLY else ''}.json"
out.write_text(json.dumps(res, indent=2))
