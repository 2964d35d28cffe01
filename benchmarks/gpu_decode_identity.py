"""Do device-decoded vectors agree with Pillow-decoded ones? (#20, the identity question)

Embeds the reverse_image_search set (1,000 gallery + 100 queries) with the offline,
ImageNet-pretrained EfficientNet-Lite0 in fp32 twice, on the same model and device:

- **cpu path**: what ``add_many`` does today: Pillow decode (large JPEGs at reduced DCT
  scale, ``draft``), Pillow resize + crop (``ImagePreprocess.pixels``);
- **tensor path**: what ``decode="gpu"`` does: ``JpegBatchDecoder`` (``decode_jpeg`` in
  batches on ``--device``, EXIF orientation, antialiased torch resize, crop on the tensor),
  and the Pillow path for the files it declines, as ``add_many`` would.

Then prints, for the images the tensor path took: the cosine between each image's two
vectors (mean, min, 0.1th percentile), split by whether Pillow decoded at reduced scale;
hit ratio@10 (exact cosine search, k = 10, relevant = same class) for each path and both
mixed pairings (a store built on one path, queried on the other); how often an image's
vector from one path finds that same image first in a store built on the other; and the
near-duplicate pairs (the model's calibrated threshold) each path finds among the gallery.
It applies the issue's tolerance (mean cosine >= 0.999, min >= 0.99, hit ratios within
0.005) and says whether the two paths may share one identity.

With ``--device cpu`` (no GPU) the tensor path runs libjpeg-turbo through torchvision: it
measures the recipe (full decode + torch resize against Pillow's draft decode + Pillow
resize), not nvJPEG's own IDCT, which only a CUDA run measures. Example::

    .venv/bin/python benchmarks/gpu_decode_identity.py --dataset ../shared/datasets/reverse_image_search
    python benchmarks/gpu_decode_identity.py --dataset DIR --device cuda --json $OUT/gpu_decode_identity-cuda.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lookalike.duplicates import default_threshold  # noqa: E402
from lookalike.embedders._calibrate import describe_cpu  # noqa: E402
from lookalike.embedders._jpeg import JpegBatchDecoder  # noqa: E402
from lookalike.embedders.efficientnet_lite import EfficientNetLite0Embedder  # noqa: E402
from lookalike.images import load_image  # noqa: E402

#: The issue's tolerance for one identity shared by both paths.
TOLERANCE = {"mean_cosine": 0.999, "min_cosine": 0.99, "hit_ratio_delta": 0.005}
CHUNK = 128  # files per decoder call, as add_many's chunks on a GPU


def hit_ratio(gallery: Any, queries: Any, gl: Any, ql: Any, k: int = 10) -> float:
    top = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")[:, :k]
    return float((gl[top] == ql[:, None]).mean())


def self_first(store: Any, queries: Any) -> float:
    """Share of rows whose best match in ``store`` (the other path's vectors) is the same image."""
    return float((np.argmax(queries @ store.T, axis=1) == np.arange(len(queries))).mean())


def duplicate_pairs(vectors: Any, threshold: float) -> set[tuple[int, int]]:
    sims = vectors @ vectors.T
    i, j = np.nonzero(np.triu(sims >= threshold, k=1))
    return set(zip(i.tolist(), j.tolist()))


def cpu_pixels(emb: Any, datas: list[bytes]) -> list[Any]:
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda d: emb.pixels(load_image(d, min_size=emb.image_size)), datas))


def tensor_pixels(emb: Any, decoder: JpegBatchDecoder, datas: list[bytes]) -> tuple[list[Any], list[bool]]:
    """The tensor path, chunk by chunk, with the Pillow path for what it declines."""
    out: list[Any] = []
    for start in range(0, len(datas), CHUNK):
        part = datas[start : start + CHUNK]
        got = decoder(part)
        left = [i for i, g in enumerate(got) if g is None]
        for i, px in zip(left, cpu_pixels(emb, [part[i] for i in left])):
            got[i] = px
        out.extend(got)
    taken = [not isinstance(px, np.ndarray) for px in out]
    return out, taken


def drafted(data: bytes, size: int) -> bool:
    """Whether the cpu path decodes this JPEG at reduced DCT scale (images.decode_image)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.format == "JPEG" and min(img.size) >= 2 * size


def stats(cos: Any) -> dict[str, float]:
    if len(cos) == 0:
        return {"n": 0}
    return {"n": len(cos), "mean": float(cos.mean()), "min": float(cos.min()),
            "p0_1": float(np.percentile(cos, 0.1)), "p1": float(np.percentile(cos, 1))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--device", default="cpu", help="where the tensor path decodes and the model runs")
    ap.add_argument("--full-decode", action="store_true",
                    help="decode large JPEGs at full scale on the tensor path (no emulation of Pillow's "
                    "reduced-scale decode): the first version, for comparison")
    ap.add_argument("--json", type=Path, default=None,
                    help="default benchmarks/results/gpu_decode_identity-<device>.json")
    args = ap.parse_args()
    import torch

    gallery = sorted((args.dataset / "train").glob("*/*.JPEG"))
    queries = sorted((args.dataset / "test").glob("*/*.JPEG"))
    paths = gallery + queries
    gl = np.array([p.parent.name for p in gallery])
    ql = np.array([p.parent.name for p in queries])
    datas = [p.read_bytes() for p in paths]
    emb = EfficientNetLite0Embedder(device=args.device, precision="fp32", batch_size=50)
    emb.load()
    recipe = emb.spec.preprocess
    decoder = JpegBatchDecoder(recipe, emb.device, draft_size=None if args.full_decode else emb.image_size)
    started = time.perf_counter()
    cpu = emb.embed_pixels(cpu_pixels(emb, datas))
    cpu_s = time.perf_counter() - started
    started = time.perf_counter()
    pixels, taken_list = tensor_pixels(emb, decoder, datas)
    tensor = emb.embed_pixels(pixels)
    tensor_s = time.perf_counter() - started
    taken = np.array(taken_list)
    draft = np.array([drafted(d, recipe.resize) for d in datas])
    cos = (cpu * tensor).sum(1)
    n_gallery = len(gallery)
    g_cpu, q_cpu, g_gpu, q_gpu = cpu[:n_gallery], cpu[n_gallery:], tensor[:n_gallery], tensor[n_gallery:]
    threshold = default_threshold(emb.identity)
    pairs_cpu, pairs_gpu = duplicate_pairs(g_cpu, threshold), duplicate_pairs(g_gpu, threshold)
    hits = {
        "cpu_gallery_cpu_queries": hit_ratio(g_cpu, q_cpu, gl, ql),
        "tensor_gallery_tensor_queries": hit_ratio(g_gpu, q_gpu, gl, ql),
        "cpu_gallery_tensor_queries": hit_ratio(g_cpu, q_gpu, gl, ql),
        "tensor_gallery_cpu_queries": hit_ratio(g_gpu, q_cpu, gl, ql),
    }
    delta = max(abs(v - hits["cpu_gallery_cpu_queries"]) for v in hits.values())
    taken_cos = cos[taken]
    within = (bool(taken_cos.mean() >= TOLERANCE["mean_cosine"]) if len(taken_cos) else True) and \
        (bool(taken_cos.min() >= TOLERANCE["min_cosine"]) if len(taken_cos) else True) and \
        delta <= TOLERANCE["hit_ratio_delta"]
    out: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": str(emb.device),
        "decoder": "nvJPEG (torchvision.io.decode_jpeg on CUDA)" if emb.device.type == "cuda"
        else "libjpeg-turbo (torchvision.io.decode_jpeg on the CPU): the recipe only, not nvJPEG's IDCT",
        "machine": {"cpus": os.cpu_count(), "cpu_model": describe_cpu().model,
                    "cpu_bf16_class": describe_cpu().bf16_class, "torch": torch.__version__,
                    "python": platform.python_version(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "model": emb.identity, "precision": "fp32", "full_decode": args.full_decode,
        "images": len(paths), "taken_by_tensor_path": int(taken.sum()),
        "declined_to_pillow": int((~taken).sum()),
        "cosine_taken": stats(taken_cos),
        "cosine_taken_pillow_full_scale": stats(cos[taken & ~draft]),
        "cosine_taken_pillow_reduced_scale": stats(cos[taken & draft]),
        "hit_ratio_at_10": hits, "hit_ratio_max_delta": delta,
        "self_first": {"cpu_store_tensor_queries": self_first(cpu, tensor),
                       "tensor_store_cpu_queries": self_first(tensor, cpu)},
        "near_duplicates": {"threshold": threshold, "pairs_cpu": len(pairs_cpu), "pairs_tensor": len(pairs_gpu),
                            "pairs_both": len(pairs_cpu & pairs_gpu),
                            "jaccard": len(pairs_cpu & pairs_gpu) / max(1, len(pairs_cpu | pairs_gpu))},
        "tolerance": TOLERANCE, "within_tolerance": within,
        "seconds": {"cpu_path": cpu_s, "tensor_path": tensor_s},
    }
    print(json.dumps({k: v for k, v in out.items() if k not in ("machine", "command")}, indent=1))
    print(f"verdict: {'within' if within else 'OUTSIDE'} the tolerance {TOLERANCE}: "
          + ("one identity for both paths" if within else "the tensor path needs its own identity"))
    path = args.json or Path(__file__).parent / "results" / f"gpu_decode_identity-{emb.device.type}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
