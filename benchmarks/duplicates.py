"""Near-duplicate finding (issue #19): quality against imagededup's hashes, and scale.

    python benchmarks/duplicates.py quality                 # calibration + hash table
    python benchmarks/duplicates.py scale --n 20000         # exact and ANN paths, 2048-d
    python benchmarks/duplicates.py scale --n 1000000 --no-exact --ann-threshold 20000 --workdir /big/disk

quality: for photos of the shared reverse_image_search set (the first train image of
each class), generated edits -- crop, JPEG q20, half size, brightness, 4-degree
rotation, a watermark band, and every pair of two of them -- plus the next two photos of
the same class, unedited, as hard negatives. A pair is a true duplicate when both images
come from the same photo. Embedded with EfficientNet-Lite0 (default precision). The
classes are split in two: the threshold that maximises pair F1 on the even classes is
the calibrated default; precision, recall and F1 are reported on the odd classes, as
pairs above the threshold and as pairs inside the groups ``find_duplicates`` returns.
imagededup's PHash, DHash, WHash and AHash (``pip install -r
benchmarks/requirements-dupes.txt``) run on the same images: at their default Hamming
distance (10) and at their best distance on the odd classes (hindsight, in their favour).

scale: synthetic clustered 2048-d vectors (clusters around a shared mean direction,
natural neighbours below cosine 0.75) with planted near-copies (1% of rows are sources
with 1-3 copies each at cosine 0.91-0.995 to their source) in a LocalStore.
``find_duplicates(threshold=0.9)`` runs on the exact path (``ann_threshold=None``) and on
the ANN path (faiss IVF, ``--ann-threshold``, default 1), each in its own child process
(its own peak RSS; ``--no-exact`` / ``--no-ann`` skip one; ``--by-search`` also runs
each path with the store's ``similar_pairs`` hidden, so ``find_duplicates`` searches each
record's neighbours instead, alternating ``--rounds`` times). Reported: the float32 matrix
product's GFLOP/s here and the exact path's floor it implies (n x n x dim x 2 flops),
seconds (wall and CPU), peak RSS, where the pairs came from (the store's own
``similar_pairs`` or, for a store without it, its searches, counted), pairs inside the groups, their
recall against the exact path and against the planted pairs (``--exact-sample N``: against
the exact pairs of N records drawn at random, for 1M, where the exact path takes hours). ``--compare-with SRC`` also
times the exact phase with another lookalike source tree (say, an older commit's ``src``),
alternating with this one, ``--rounds`` times. Results: JSON files in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.eval.duplicates import apply_edits, pair_quality, variants

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT.parent / "shared" / "datasets" / "reverse_image_search"
RESULTS = ROOT / "benchmarks" / "results"
HASHES = ("PHash", "DHash", "WHash", "AHash")
CHUNK = 20_000
BATCH_SIZE = 1024  # lookalike.duplicates.BATCH_SIZE (not imported: the script also runs older versions)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_seconds() -> float:
    """CPU time of this process, all threads (on a shared machine, fairer than wall time)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- quality ---------------------------------------------------------------------------------
def build_quality_set(work: Path, classes: int | None) -> list[dict[str, Any]]:
    """Write the edited images; return one row per image (path, photo, class, edit, split)."""
    from PIL import Image

    rows: list[dict[str, Any]] = []
    names = sorted(p.name for p in (DATASET / "train").iterdir() if p.is_dir())[:classes]
    for ci, cls in enumerate(names):
        split = "calibrate" if ci % 2 == 0 else "evaluate"
        photos = sorted((DATASET / "train" / cls).iterdir())
        original = photos[0]
        photo = f"{cls}/{original.stem}"
        rows.append({"path": str(original), "photo": photo, "label": cls, "edit": "original", "split": split})
        img = Image.open(original).convert("RGB")
        for combo in variants():
            out = work / f"{cls}__{original.stem}__{'+'.join(combo)}.jpg"
            if not out.exists():
                edited = apply_edits(img, combo)
                edited.save(out, format="JPEG", quality=95)
            rows.append({"path": str(out), "photo": photo, "label": cls, "edit": "+".join(combo), "split": split})
        for neg in photos[1:3]:  # same class, another photo: a hard negative
            rows.append({"path": str(neg), "photo": f"{cls}/{neg.stem}", "label": cls, "edit": "negative",
                         "split": split})
    return rows


def upper(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, 1)


def hamming_matrix(hashes: list[str]) -> np.ndarray:
    values = np.array([int(h, 16) for h in hashes], dtype=np.uint64)
    x = values[:, None] ^ values[None, :]
    out: np.ndarray = np.unpackbits(x.view(np.uint8).reshape(len(values), len(values), 8), axis=2).sum(axis=2)
    return out


def quality(args: argparse.Namespace) -> dict[str, Any]:
    from lookalike import ImageSearchIndex, Item
    from lookalike.duplicates import CALIBRATED, find_duplicates
    from lookalike.embedders import EfficientNetLite0Embedder
    from lookalike.stores import InMemoryStore

    work = Path(args.workdir or tempfile.gettempdir()) / "lookalike-dupes-quality"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = build_quality_set(work, args.classes)
    print(f"{len(rows)} images ({sum(r['edit'] == 'original' for r in rows)} photos, "
          f"{len(variants())} edits each, {sum(r['edit'] == 'negative' for r in rows)} hard negatives) "
          f"in {time.perf_counter() - t0:.1f}s", flush=True)

    embedder = EfficientNetLite0Embedder(precision=args.precision)
    t0 = time.perf_counter()
    with ImageSearchIndex(embedder, InMemoryStore()) as index:
        index.create_schema()
        report = index.add_many(
            [Item(r["path"], id=str(i), metadata={"label": r["label"]}) for i, r in enumerate(rows)],
            progress=True,
        )
        assert not report.failed, report.failed
        vectors = np.zeros((len(rows), embedder.dim), dtype=np.float32)
        for batch in index.store.scan():
            for rec in batch:
                vectors[int(rec.id)] = rec.vector
    embed_s = time.perf_counter() - t0
    print(f"embedded in {embed_s:.1f}s ({len(rows) / embed_s:.1f} img/s)", flush=True)

    out: dict[str, Any] = {"images": len(rows), "photos": sum(r["edit"] == "original" for r in rows),
                           "edits": ["+".join(v) for v in variants()], "embedder": embedder.identity,
                           "precision": args.precision, "embed_s": round(embed_s, 1)}
    splits = {}
    for name in ("calibrate", "evaluate"):
        idx = np.array([i for i, r in enumerate(rows) if r["split"] == name])
        photo = np.array([rows[i]["photo"] for i in idx])
        iu, ju = upper(len(idx))
        truth = (photo[:, None] == photo[None, :])[iu, ju]
        sims = (vectors[idx] @ vectors[idx].T)[iu, ju]
        splits[name] = (idx, iu, ju, truth, sims)

    # threshold: best pair F1 on the calibration half
    _, _, _, truth, sims = splits["calibrate"]
    sweep = [(round(float(t), 3), pair_quality(sims >= t, truth)) for t in np.arange(0.50, 0.995, 0.005)]
    best_t, best = max(sweep, key=lambda tp: (tp[1]["f1"], tp[0]))
    out["calibration"] = {"threshold": best_t, **best,
                          "sweep": [{"threshold": t, **m} for t, m in sweep if abs(t * 40 - round(t * 40)) < 1e-6]}
    print(f"calibrated threshold {best_t} (F1 {best['f1']} on the calibration half)")
    shipped = CALIBRATED.get(embedder.identity)
    default_t = best_t if args.use_measured or shipped is None else shipped.threshold
    out["default_threshold"] = default_t

    idx, iu, ju, truth, sims = splits["evaluate"]
    pairs = pair_quality(sims >= default_t, truth)
    store = InMemoryStore()
    from lookalike import Record, Schema

    store.create_schema(Schema(embedder.dim, embedder.identity))
    store.upsert([Record(str(i), vectors[i], {"label": rows[i]["label"]}) for i in idx])
    t0 = time.perf_counter()
    groups = find_duplicates(store, default_t)
    find_s = time.perf_counter() - t0
    where = {int(i): n for n, i in enumerate(idx)}
    member = np.full(len(idx), -1)
    for g, group in enumerate(groups):
        for hit in group:
            member[where[int(hit.id)]] = g
    grouped = ((member[:, None] == member[None, :]) & (member[:, None] >= 0))[iu, ju]
    in_groups = pair_quality(grouped, truth)
    out["lookalike"] = {"threshold": default_t, "pairs": pairs, "groups": in_groups, "find_s": round(find_s, 3),
                        "group_count": len(groups)}
    print(f"lookalike @ {default_t}: pairs {pairs}\n  groups {in_groups} ({len(groups)} groups)")

    # per edit: recall of (original, edit) pairs on the evaluation half
    edits_eval = [rows[i]["edit"] for i in idx]
    orig_of = {rows[i]["photo"]: n for n, i in enumerate(idx) if rows[i]["edit"] == "original"}
    full = vectors[idx] @ vectors[idx].T
    per_edit: dict[str, dict[str, float]] = {}
    for e in ["+".join(v) for v in variants()]:
        cols = [n for n, name in enumerate(edits_eval) if name == e]
        origin = [orig_of[rows[idx[n]]["photo"]] for n in cols]
        per_edit[e] = {"lookalike": round(float((full[origin, cols] >= default_t).mean()), 3)}

    # negatives: highest similarity of a hard negative to its class's photo and edits
    hashes_out: dict[str, Any] = {}
    if not args.no_hashes:
        import imagededup.methods as methods  # type: ignore[import-untyped]

        for name in HASHES:
            hasher = getattr(methods, name)(verbose=False)
            t0 = time.perf_counter()
            codes = [hasher.encode_image(image_file=rows[i]["path"]) for i in idx]
            enc_s = time.perf_counter() - t0
            dist = hamming_matrix(codes)
            dsel = dist[iu, ju]
            curve = {d: pair_quality(dsel <= d, truth) for d in range(33)}
            best_d = max(curve, key=lambda d: (curve[d]["f1"], -d))
            hashes_out[name] = {"default_distance": 10, "at_default": curve[10], "best_distance": best_d,
                                "at_best": curve[best_d], "encode_s": round(enc_s, 2)}
            for e in per_edit:
                cols = [n for n, nm in enumerate(edits_eval) if nm == e]
                origin = [orig_of[rows[idx[n]]["photo"]] for n in cols]
                per_edit[e][f"{name}@10"] = round(float((dist[origin, cols] <= 10).mean()), 3)
                per_edit[e][f"{name}@{best_d}"] = round(float((dist[origin, cols] <= best_d).mean()), 3)
            print(f"{name}: default(10) {curve[10]}\n  best({best_d}) {curve[best_d]}", flush=True)
    out["imagededup"] = hashes_out
    out["per_edit_recall"] = per_edit
    return out


def print_quality(res: dict[str, Any]) -> None:
    print("\nPair quality on the evaluation half "
          f"({res['images']} images in all, threshold calibrated on the other half):")
    print(f"{'method':<34}{'precision':>10}{'recall':>8}{'F1':>7}")
    look = res["lookalike"]
    print(f"{'lookalike cosine >= ' + str(look['threshold']) + ' (pairs)':<34}"
          f"{look['pairs']['precision']:>10.3f}{look['pairs']['recall']:>8.3f}{look['pairs']['f1']:>7.3f}")
    print(f"{'lookalike find_duplicates (groups)':<34}"
          f"{look['groups']['precision']:>10.3f}{look['groups']['recall']:>8.3f}{look['groups']['f1']:>7.3f}")
    for name, h in res["imagededup"].items():
        for label, key in ((f"{name} distance <= 10 (default)", "at_default"),
                           (f"{name} distance <= {h['best_distance']} (best)", "at_best")):
            m = h[key]
            print(f"{label:<34}{m['precision']:>10.3f}{m['recall']:>8.3f}{m['f1']:>7.3f}")


# -- scale -----------------------------------------------------------------------------------
def synthetic_chunk(start: int, stop: int, dim: int, clusters: int, seed: int = 0) -> tuple[np.ndarray, list[list[int]]]:
    """Rows ``start:stop`` (``start`` a multiple of CHUNK) and the planted groups among them."""
    rng = np.random.default_rng([seed, start])
    centers_rng = np.random.default_rng([seed, 10**9])
    common = centers_rng.standard_normal(dim).astype(np.float32)
    common /= np.linalg.norm(common)
    n = stop - start
    n_src = max(1, n // 100)
    copies = rng.integers(1, 4, n_src)
    n_base = n - int(copies.sum())
    which = rng.integers(0, clusters, n_base)
    # a cluster's centre from its own generator: the same whichever chunk asks
    uniq, inverse = np.unique(which, return_inverse=True)
    centers = np.stack([np.random.default_rng([seed, 7, int(c)]).standard_normal(dim).astype(np.float32)
                        for c in uniq])
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    noise = rng.standard_normal((n_base, dim)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    base = 0.5 * common + 0.6 * centers[inverse] + 0.62 * noise
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    rows = [base]
    groups: list[list[int]] = []
    pos = start + n_base
    for s, k in enumerate(copies):
        eps = rng.uniform(0.10, 0.45, int(k)).astype(np.float32)
        jitter = rng.standard_normal((int(k), dim)).astype(np.float32)
        jitter /= np.linalg.norm(jitter, axis=1, keepdims=True)
        dup = base[s] + eps[:, None] * jitter
        dup /= np.linalg.norm(dup, axis=1, keepdims=True)
        rows.append(dup.astype(np.float32))
        groups.append([start + s, *range(pos, pos + int(k))])
        pos += int(k)
    return np.concatenate(rows).astype(np.float32), groups


def build_store(work: Path, n: int, dim: int) -> dict[str, Any]:
    from lookalike import Record, Schema
    from lookalike.stores import LocalStore

    path = work / "store.lookalike"
    meta = work / "planted.json"
    if path.exists() and meta.exists():
        return dict(json.loads(meta.read_text()))
    for p in work.glob("store.lookalike*"):
        p.unlink()
    t0 = time.perf_counter()
    clusters = max(1000, n // 100)
    planted: list[list[int]] = []
    with LocalStore(path, ann_threshold=None) as store:
        store.create_schema(Schema(dim, "synthetic-clustered:v1"))
        for start in range(0, n, CHUNK):
            vecs, groups = synthetic_chunk(start, min(n, start + CHUNK), dim, clusters)
            planted += groups
            for s in range(0, len(vecs), 2000):
                store.upsert([Record(f"v{start + s + i:07d}", v) for i, v in enumerate(vecs[s : s + 2000])])
            print(f"  stored {min(n, start + CHUNK)}/{n}", file=sys.stderr, flush=True)
    info = {"n": n, "dim": dim, "clusters": clusters, "planted": planted, "build_s": round(time.perf_counter() - t0, 1)}
    meta.write_text(json.dumps(info))
    return info


class SearchOnly:
    """A store seen without ``similar_pairs``: find_duplicates then searches each record's
    neighbours with the store's k-NN (``--by-search``: the path before the store joined
    itself, and the one a store without a join takes)."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        if name == "similar_pairs":
            raise AttributeError(name)
        return getattr(self._store, name)


def run_phase(args: argparse.Namespace) -> None:
    """Child process: one find_duplicates run; writes its figures and pairs as JSON."""
    from lookalike.duplicates import find_duplicates
    from lookalike.stores import LocalStore

    work = Path(args.workdir)
    path, _, how = args.phase.partition("-")
    ann = path == "ann"
    store = LocalStore(work / "store.lookalike", ann_threshold=args.ann_threshold if ann else None,
                       ann_nprobe=args.nprobe)
    t0 = time.perf_counter()
    if ann:
        store.wait_for_index()  # builds (in the background, waited for here) or maps the IVF index
    mode = store.search_mode  # loads the mirror
    load_s = time.perf_counter() - t0
    searches: dict[str, int] = {"calls": 0, "queries": 0, "hits_asked": 0}
    search = store.search

    def counted(vectors: Any, k: int, filter: Any = None) -> Any:
        searches["calls"] += 1
        searches["queries"] += len(vectors)
        searches["hits_asked"] += len(vectors) * k
        return search(vectors, k, filter)

    store.search = counted  # type: ignore[method-assign]
    target: Any = SearchOnly(store) if how == "search" else store
    t0, c0 = time.perf_counter(), cpu_seconds()
    groups = find_duplicates(target, args.threshold, batch_size=args.batch_size, progress=True)
    find_s, find_cpu = time.perf_counter() - t0, cpu_seconds() - c0
    pairs = sorted({(min(a.id, b.id), max(a.id, b.id)) for g in groups for a, b in itertools.combinations(g, 2)})
    result = {"mode": mode, "load_s": round(load_s, 1), "find_s": round(find_s, 1), "find_cpu_s": round(find_cpu, 1),
              "load_average_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
              "groups": len(groups), "pairs": len(pairs), "peak_rss_mb": round(peak_rss_mb()),
              "nprobe": args.nprobe, "batch_size": args.batch_size, "searches": searches,
              "pairs_from": "similar_pairs" if hasattr(target, "similar_pairs") else "search",
              "ann_threshold": args.ann_threshold if ann else None}
    if args.exact_sample:
        result["exact_sample"] = exact_sample(store, groups, args.threshold, args.exact_sample)
    store.close()
    (work / f"{args.phase}.json").write_text(json.dumps({"result": result, "pairs": pairs}))


def exact_sample(store: Any, groups: Any, threshold: float, size: int) -> dict[str, Any]:
    """Recall against exact without the exact path: the exact pairs (cosine >= threshold,
    numpy over every stored vector, read with ``scan``) of ``size`` records drawn at random,
    and how many of them ``groups`` put in one group."""
    t0 = time.perf_counter()
    group_of = {h.id: n for n, g in enumerate(groups) for h in g}
    total = store.count()
    drawn = np.random.default_rng(7).choice(total, min(size, total), replace=False)
    sample = store.get([f"v{i:07d}" for i in sorted(drawn.tolist())])  # build_store's ids
    queries = np.stack([r.vector for r in sample]).astype(np.float32)
    exact: set[tuple[str, str]] = set()
    for batch in store.scan(8192):  # every stored vector against the sample
        scores = queries @ np.stack([r.vector for r in batch]).astype(np.float32).T
        for qi, bi in zip(*np.nonzero(scores >= np.float32(threshold))):
            a, b = sample[qi].id, batch[bi].id
            if a != b:
                exact.add((min(a, b), max(a, b)))
    found = sum(1 for a, b in exact if a in group_of and group_of.get(a) == group_of.get(b))
    return {"records": len(sample), "exact_pairs": len(exact), "in_one_group": found,
            "recall_vs_exact": round(found / len(exact), 4) if exact else None,
            "seconds": round(time.perf_counter() - t0, 1)}


def gemm_ceiling(dim: int, seconds: float = 3.0) -> float:
    """float32 matrix-product GFLOP/s here (numpy's BLAS, all threads), best of a few
    (1024 x dim) @ (dim x 20000) products: what an exact all-pairs search can reach."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1024, dim), dtype=np.float32)
    b = rng.standard_normal((20_000, dim), dtype=np.float32)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        a @ b.T
        best = max(best, 2 * a.shape[0] * b.shape[0] * dim / (time.perf_counter() - t0) / 1e9)
    return best


def scale(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.workdir or tempfile.gettempdir()) / f"lookalike-dupes-scale-n{args.n}-d{args.dim}"
    work.mkdir(parents=True, exist_ok=True)
    info = build_store(work, args.n, args.dim)
    planted = {(f"v{min(a, b):07d}", f"v{max(a, b):07d}") for g in info["planted"]
               for a, b in itertools.combinations(g, 2)}
    out: dict[str, Any] = {"n": args.n, "dim": args.dim, "threshold": args.threshold, "build_s": info["build_s"],
                           "planted_pairs": len(planted), "planted_groups": len(info["planted"])}
    gflops = gemm_ceiling(args.dim)
    out["gemm_gflops"] = round(gflops, 1)
    out["exact_floor_s"] = round(2 * args.n * args.n * args.dim / (gflops * 1e9), 1)
    print(f"float32 matmul here: {gflops:.0f} GFLOP/s, so exact all-pairs costs at least "
          f"{out['exact_floor_s']} s of matrix products", flush=True)
    found: dict[str, set[tuple[str, str]]] = {}
    base = (["exact"] if args.exact else []) + (["ann"] if args.ann else [])
    phases = [p for b in base for p in ([b, f"{b}-search"] * args.rounds if args.by_search else [b])]
    for run, phase in enumerate(phases):
        cmd = [sys.executable, __file__, "_phase", phase, "--workdir", str(work), "--threshold", str(args.threshold),
               "--batch-size", str(args.batch_size), "--ann-threshold", str(args.ann_threshold)]
        cmd += ["--nprobe", str(args.nprobe)] if args.nprobe else []
        cmd += ["--exact-sample", str(args.exact_sample)] if args.exact_sample else []
        print(f"{phase}: {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True)
        data = json.loads((work / f"{phase}.json").read_text())
        pairs = {(a, b) for a, b in data["pairs"]}
        found[phase] = pairs
        res = data["result"]
        res["recall_of_planted_pairs"] = round(len(pairs & planted) / len(planted), 4)
        res["pairs_not_planted"] = len(pairs - planted)
        if phase in out:  # a later round of --by-search
            out.setdefault("rounds", []).append({"phase": phase, "order": run, **res})
        else:
            out[phase] = res
        print(f"{phase}: {res}", flush=True)
    for b in base if args.by_search else []:
        runs = [out[b], *[r for r in out.get("rounds", []) if r["phase"] == b]]
        searched = [out[f"{b}-search"], *[r for r in out.get("rounds", []) if r["phase"] == f"{b}-search"]]
        out[f"{b}_join_vs_search"] = {
            "cpu_s": [[r["find_cpu_s"] for r in runs], [r["find_cpu_s"] for r in searched]],
            "wall_s": [[r["find_s"] for r in runs], [r["find_s"] for r in searched]],
            "cpu_ratio": round(sum(r["find_cpu_s"] for r in searched) / max(1e-9, sum(r["find_cpu_s"] for r in runs)), 2),
            "same_pairs": found[b] == found[f"{b}-search"],
        }
        print(f"{b}: the store's join vs one search per record: {out[f'{b}_join_vs_search']}", flush=True)
    if args.compare_with:
        out["compare"] = compare(args, work)
    if "exact" in found and "ann" in found:
        exact = found["exact"]
        out["ann"]["recall_vs_exact"] = round(len(found["ann"] & exact) / max(1, len(exact)), 4)
        out["ann"]["pairs_not_in_exact"] = len(found["ann"] - exact)
    return out


def compare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The exact phase with another lookalike source tree (``--compare-with``, e.g. an older
    commit's ``src``) and with this one, alternating, ``--rounds`` times: on a shared
    machine only a ratio measured side by side means anything."""
    runs: dict[str, list[dict[str, Any]]] = {"other": [], "this": []}
    for _ in range(args.rounds):
        for name, src in (("other", args.compare_with), ("this", str(ROOT / "src"))):
            env = {**os.environ, "PYTHONPATH": src}
            cmd = [sys.executable, __file__, "_phase", "exact", "--workdir", str(work), "--threshold",
                   str(args.threshold), "--batch-size", str(args.other_batch_size if name == "other" else args.batch_size)]
            subprocess.run(cmd, check=True, env=env, stderr=subprocess.DEVNULL)
            res = json.loads((work / "exact.json").read_text())["result"]
            runs[name].append(res)
            print(f"compare {name}: find {res['find_s']} s wall, {res['find_cpu_s']} s CPU", flush=True)
    cpu = {name: sum(r["find_cpu_s"] for r in rs) for name, rs in runs.items()}
    wall = {name: sum(r["find_s"] for r in rs) for name, rs in runs.items()}
    return {"other_src": args.compare_with, "rounds": args.rounds, "runs": runs,
            "cpu_ratio_other_over_this": round(cpu["other"] / cpu["this"], 2),
            "wall_ratio_other_over_this": round(wall["other"] / wall["this"], 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--classes", type=int, default=None, help="classes (photos) to use (default: all 100)")
    q.add_argument("--precision", default="auto")
    q.add_argument("--use-measured", action="store_true",
                   help="evaluate at the threshold measured now rather than the shipped one")
    q.add_argument("--no-hashes", action="store_true")
    q.add_argument("--workdir", default=None)
    s = sub.add_parser("scale")
    s.add_argument("--n", type=int, default=100_000)
    s.add_argument("--dim", type=int, default=2048)
    s.add_argument("--threshold", type=float, default=0.9)
    s.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    s.add_argument("--nprobe", type=int, default=None)
    s.add_argument("--ann-threshold", type=int, default=1,
                   help="the ANN phase's LocalStore ann_threshold (below --n: the ANN path)")
    s.add_argument("--no-exact", dest="exact", action="store_false", help="ANN path only (for 1M)")
    s.add_argument("--no-ann", dest="ann", action="store_false", help="exact path only")
    s.add_argument("--tag", default="", help="suffix of the results file name")
    s.add_argument("--compare-with", default=None, metavar="SRC",
                   help="also time the exact phase with this lookalike source tree, alternating")
    s.add_argument("--other-batch-size", type=int, default=256, help="batch size for --compare-with")
    s.add_argument("--rounds", type=int, default=2, help="rounds of --compare-with or --by-search")
    s.add_argument("--by-search", action="store_true",
                   help="also run each path with one k-NN search per record (the store's join hidden), alternating")
    s.add_argument("--workdir", default=None)
    s.add_argument("--exact-sample", type=int, default=0, metavar="N",
                   help="also find the exact pairs of N records drawn at random (numpy, every stored vector) "
                        "and report how many the groups hold: recall against exact where the exact path is too slow")
    p = sub.add_parser("_phase")
    p.add_argument("phase", choices=["exact", "ann", "exact-search", "ann-search"])
    p.add_argument("--workdir", required=True)
    p.add_argument("--threshold", type=float, required=True)
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--nprobe", type=int, default=None)
    p.add_argument("--ann-threshold", type=int, default=1)
    p.add_argument("--exact-sample", type=int, default=0)
    args = parser.parse_args()
    if args.what == "_phase":
        run_phase(args)
        return 0
    flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "") \
        if Path("/proc/cpuinfo").exists() else ""
    env = {"cpu": cpu_name(), "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags, "cpu_count": os.cpu_count(), "python": platform.python_version(),
           "numpy": np.__version__, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.what == "quality":
        res = quality(args)
        print_quality(res)
        target = RESULTS / "duplicates_quality.json"
    else:
        res = scale(args)
        target = RESULTS / f"duplicates_scale_n{args.n}_d{args.dim}{args.tag}.json"
    res["environment"] = env
    res["command"] = "python " + " ".join(["benchmarks/duplicates.py", *sys.argv[1:]])
    target.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
