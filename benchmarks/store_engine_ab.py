"""LocalStore before and after issue #20, side by side in one run (interleaved rounds):
insert rate, cold start, single-query and label-filtered p50, RSS. Wall clock and CPU
time are both recorded: on a loaded machine the ratio of CPU times is the fair one.

    git archive fd3d63f src | tar -x -C /tmp/old       # the engine before #20
    python benchmarks/store_engine.py --workdir /tmp/w  # builds /tmp/w/store.lookalike
    python benchmarks/store_engine_ab.py /tmp/old/src /tmp/w

Both engines open the same store file (the format did not change; the old one ignores the
derived files and, below its 200,000-record threshold, searches exactly).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

OLD, WORK = sys.argv[1], sys.argv[2]
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
n = 20 if s.search_mode == "exact" else 100
out["p50_wall_ms"], out["p50_cpu_ms"] = lat(lambda x: s.search(x, 10), n)
s.search(q[:1], 10, filter={"label": "c7"})
out["filtered_p50_wall_ms"], out["filtered_p50_cpu_ms"] = lat(lambda x: s.search(x, 10, filter={"label": "c7"}), n)
rss = 0
for line in open("/proc/self/status"):
    if line.startswith("VmRSS"): rss = int(line.split()[1]) / 1024
out["rss_mb"] = rss; out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""
res = {"orig": [], "new": []}
for _round in range(2):
    for name, src in (("orig", OLD), ("new", NEW)):
        got = {"load": os.getloadavg()[0]}
        for code in (INSERT, SERVE):
            out = subprocess.run(
                [sys.executable, "-c", code.replace("WORK", repr(WORK))],
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
out = Path(__file__).resolve().parent / "results" / "store_engine_before_after_n100000_d2048.json"
out.write_text(json.dumps(res, indent=2))
