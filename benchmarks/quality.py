"""Retrieval refinements compared on cached embeddings: flip TTA, alpha-QE, DBA.

Embeds every image of the data set once (plain and horizontally flipped) with the chosen
embedder, caches the vectors under --cache, then scores each refinement with exact
cosine search on several splits: the Towhee split (gallery train/, queries test/) and
folder-per-class splits drawn with lookalike.eval.load_dataset's seeded rule (train/
alone, 1 query per class; train/ + test/ merged, 3 per class), seeds 0-2.

    .venv/bin/python benchmarks/quality.py --dataset ../shared/datasets/reverse_image_search

The numbers for docs/quality.md came from this command. Parameters of alpha-QE were
chosen on the folder splits (not on the Towhee split) with --grid.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import ImageOps

from lookalike import load_image
from lookalike.eval import load_dataset, mean_metrics
from lookalike.registry import make_embedder

Array = NDArray[np.float32]


def normalise(x: Array) -> Array:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def embed_all(paths: list[Path], name: str, cache: Path) -> tuple[Array, Array, float, float]:
    """Plain and flipped vectors for every path, cached; plus seconds per pass when computed."""
    embedder = make_embedder(name, device="cpu", precision="fp32")
    tag = hashlib.sha256(embedder.identity.encode()).hexdigest()[:12]  # new model, new cache
    file = cache / f"{name.replace(':', '_').replace('/', '_')}-{tag}.npz"
    if file.exists():
        data = np.load(file)
        if list(data["paths"]) == [str(p) for p in paths]:
            return data["plain"], data["flip"], float(data["t_plain"]), float(data["t_flip"])
    size = getattr(embedder, "image_size", None)
    out, times = [], []
    for flip in (False, True):
        started, parts = time.perf_counter(), []
        for s in range(0, len(paths), 32):
            images = [load_image(p, min_size=size) for p in paths[s : s + 32]]
            parts.append(embedder.embed([ImageOps.mirror(i) for i in images] if flip else images))
        out.append(np.concatenate(parts))
        times.append(time.perf_counter() - started)
    np.savez(file, paths=np.array([str(p) for p in paths]), plain=out[0], flip=out[1],
             t_plain=times[0], t_flip=times[1])
    return out[0], out[1], times[0], times[1]


def score(gallery: Array, queries: Array, g_labels: list[str], q_labels: list[str], k: int = 10) -> dict[str, float]:
    sims = queries @ gallery.T
    rankings, relevant, scores = {}, {}, {}
    for i, row in enumerate(sims):
        order = np.argsort(-row, kind="stable")[:k]
        rankings[str(i)] = [str(j) for j in order]
        scores[str(i)] = [float(row[j]) for j in order]
        relevant[str(i)] = {str(j) for j, lab in enumerate(g_labels) if lab == q_labels[i]}
    return mean_metrics(rankings, relevant, k, scores=scores)


def query_expansion(gallery: Array, queries: Array, top: int, alpha: float) -> Array:
    sims = queries @ gallery.T
    out = queries.copy()
    for i, row in enumerate(sims):
        nearest = np.argsort(-row)[:top]
        out[i] += (np.clip(row[nearest], 0, None) ** alpha) @ gallery[nearest]
    return normalise(out)


def database_augmentation(gallery: Array, top: int, alpha: float) -> Array:
    """Each gallery vector replaced by its ``top`` nearest (itself included) weighted by sim ** alpha."""
    sims = gallery @ gallery.T
    out = np.zeros_like(gallery)
    for i, row in enumerate(sims):
        nearest = np.argsort(-row)[:top]
        out[i] = (np.clip(row[nearest], 0, None) ** alpha) @ gallery[nearest]
    return normalise(out)


def whitening(gallery: Array, queries: Array, dims: int, power: float) -> tuple[Array, Array]:
    """PCA whitening learned on the gallery: centre, project on ``dims`` axes, scale by eigenvalue^-power/2."""
    mean = gallery.mean(0)
    values, vectors = np.linalg.eigh(np.cov((gallery - mean).T))
    values, vectors = values[::-1][:dims], vectors[:, ::-1][:, :dims]
    projection = vectors / (values + 1e-6) ** (power / 2)
    return normalise((gallery - mean) @ projection), normalise((queries - mean) @ projection)


def search_latency(gallery: Array, queries: Array, repeats: int = 5) -> tuple[float, float]:
    """Median ms per single-query search in an InMemoryStore: plain, then alpha-QE."""
    from lookalike import Record, Schema
    from lookalike.refine import QueryExpansion
    from lookalike.stores import InMemoryStore

    store = InMemoryStore()
    store.create_schema(Schema(dim=gallery.shape[1], identity="bench"))
    store.upsert([Record(str(i), v) for i, v in enumerate(gallery)])
    qe = QueryExpansion()
    out = []
    for search in (lambda q: store.search(q, 10), lambda q: qe.search_vectors(store, q, 10)):
        times = []
        for _ in range(repeats):
            for q in queries:
                started = time.perf_counter()
                search(q[None, :])
                times.append(time.perf_counter() - started)
        out.append(1000 * float(np.median(times)))
    return out[0], out[1]


def splits(root: Path, cache: Path) -> dict[str, tuple[list[Path], list[str], list[Path], list[str]]]:
    merged = cache / "train+test"
    for sub in ("train", "test"):
        for src in sorted((root / sub).glob("*/*")):
            dst = merged / src.parent.name / src.name
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(src.resolve(), dst)
    out = {}
    sets = [("towhee train/test", root, 1, 0)]
    sets += [(f"train/ 1pc seed{s}", root / "train", 1, s) for s in range(3)]
    sets += [(f"train+test 3pc seed{s}", merged, 3, s) for s in range(3)]
    for name, folder, per_class, seed in sets:
        data = load_dataset(folder, queries_per_class=per_class, seed=seed)
        out[name] = ([g.path.resolve() for g in data.gallery], [g.label for g in data.gallery],
                     [q.path.resolve() for q in data.queries], [q.label for q in data.queries])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=os.environ.get("LOOKALIKE_DATASET", "../shared/datasets/reverse_image_search"))
    parser.add_argument("--embedder", default="efficientnet-lite0")
    parser.add_argument("--cache", default="/tmp/lookalike-quality-cache")
    parser.add_argument("--grid", action="store_true", help="also print the alpha-QE parameter grid")
    args = parser.parse_args()
    root, cache = Path(args.dataset).resolve(), Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    sets = splits(root, cache)
    paths = sorted({p for g, _, q, _ in sets.values() for p in g + q})
    plain, flip, t_plain, t_flip = embed_all(paths, args.embedder, cache)
    both = normalise(plain + flip)
    at = {p: i for i, p in enumerate(paths)}
    print(f"{args.embedder}: {len(paths)} images; embedding {t_plain:.1f} s plain, "
          f"{t_flip:.1f} s flipped (flip TTA costs both)\n")
    variants = {
        "none": lambda g, q: (plain[g], plain[q]),
        "flip TTA, both sides": lambda g, q: (both[g], both[q]),
        "flip TTA, query only": lambda g, q: (plain[g], both[q]),
        "alpha-QE top=3 alpha=1": lambda g, q: (plain[g], query_expansion(plain[g], plain[q], 3, 1.0)),
        "DBA top=3 alpha=1 + QE": lambda g, q: (
            database_augmentation(plain[g], 3, 1.0),
            query_expansion(database_augmentation(plain[g], 3, 1.0), plain[q], 3, 1.0)),
    }
    for dims in (128, 256):
        for power in (0.5, 1.0):
            variants[f"PCA whitening {dims}-d power {power:g}"] = (
                lambda g, q, d=dims, p=power: whitening(plain[g], plain[q], d, p))
    if args.grid:
        for top in (2, 3, 5, 7):
            for alpha in (0.0, 1.0, 3.0):
                variants[f"alpha-QE top={top} alpha={alpha:g}"] = (
                    lambda g, q, t=top, a=alpha: (plain[g], query_expansion(plain[g], plain[q], t, a)))
    print("| variant | " + " | ".join(sets) + " |")
    print("|---|" + "---|" * len(sets))
    base: dict[str, dict[str, float]] = {}
    for name, make in variants.items():
        cells = []
        for set_name, (g_paths, g_labels, q_paths, q_labels) in sets.items():
            g, q = [at[p] for p in g_paths], [at[p] for p in q_paths]
            gallery, queries = make(g, q)
            m = score(gallery, queries, g_labels, q_labels)
            base.setdefault(set_name, m)
            delta = m["mHR"] - base[set_name]["mHR"]
            cells.append(f"{m['mHR']:.3f} / {m['mAP']:.3f} / {m['mAP_towhee']:.3f}"
                         + (f" ({delta:+.3f})" if name != "none" else ""))
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\ncells: mHR@10 / mAP@10 / Towhee-mAP@10 (change in mHR@10 against none)")
    g_paths, _, q_paths, _ = sets["towhee train/test"]
    plain_ms, qe_ms = search_latency(plain[[at[p] for p in g_paths]], plain[[at[p] for p in q_paths]])
    print(f"\nsearch latency, one query at a time, InMemoryStore of {len(g_paths)}: "
          f"plain {plain_ms:.3f} ms, alpha-QE {qe_ms:.3f} ms (median); embedding one image "
          f"took {1000 * t_plain / len(paths):.0f} ms in this run")


if __name__ == "__main__":
    main()
