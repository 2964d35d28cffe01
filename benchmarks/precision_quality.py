"""Does reduced precision cost retrieval quality? (#7)

Embeds the reverse_image_search set (1,000 gallery + 100 queries) with the offline,
ImageNet-pretrained EfficientNet-Lite0 in fp32 and in bf16 autocast (and, with ``--onnx``,
through ONNX Runtime in fp32 and static int8), then prints the cosine between each image's
fp32 vector and its other one, and hit ratio@10 (exact cosine search, k = 10, relevant =
same class) for every variant and the two mixed pairings with fp32. int8 is calibrated on
scikit-image's sample photos (``examples/sample_photos.py``: ``calibration_images``), which
share nothing with the evaluation set. Example::

    .venv/bin/python benchmarks/precision_quality.py --dataset ../shared/datasets/reverse_image_search \
        --onnx fp32,int8
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lookalike.embedders.efficientnet_lite import EfficientNetLite0Embedder  # noqa: E402
from lookalike.images import load_image  # noqa: E402


def embed(embedder: Any, paths: list[Path]) -> Any:
    with ThreadPoolExecutor(2) as pool:
        prepared = list(pool.map(lambda p: embedder.prepare(load_image(p, min_size=256)), paths))
    started = time.perf_counter()
    vectors = embedder.embed_prepared(prepared)
    return vectors, len(paths) / (time.perf_counter() - started)


def hit_ratio(gallery: Any, queries: Any, gl: Any, ql: Any, k: int = 10) -> float:
    top = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")[:, :k]
    return float((gl[top] == ql[:, None]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--precisions", default="fp32,bf16", help="torch precisions; the first is the reference")
    ap.add_argument("--onnx", default="", help="also OnnxEmbedder: comma list of fp32, int8")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "precision_quality.json")
    args = ap.parse_args()
    gallery = sorted((args.dataset / "train").glob("*/*.JPEG"))
    queries = sorted((args.dataset / "test").glob("*/*.JPEG"))
    gl = np.array([p.parent.name for p in gallery])
    ql = np.array([p.parent.name for p in queries])
    out: dict[str, Any] = {"command": " ".join([Path(sys.executable).name, *sys.argv])}
    vecs = {}
    for precision in args.precisions.split(","):
        emb = EfficientNetLite0Embedder(device="cpu", precision=precision, batch_size=50)
        (g, g_rate), (q, _) = embed(emb, gallery), embed(emb, queries)
        vecs[precision] = (g, q)
        out[precision] = {"hit_ratio_at_10": hit_ratio(g, q, gl, ql), "forward_img_per_s": g_rate}
        print(f"{precision}: hit ratio@10 {out[precision]['hit_ratio_at_10']:.3f}, "
              f"model {g_rate:.0f} img/s (batch 50, noisy)", flush=True)
    cache = tempfile.TemporaryDirectory(prefix="precision-quality-onnx-")  # removed at exit
    for quantize in filter(None, args.onnx.split(",")):
        from lookalike.embedders import OnnxEmbedder

        calibration = None
        if quantize != "fp32":
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
            from sample_photos import calibration_images

            calibration = calibration_images()
        name = f"onnx-{quantize}"
        emb = OnnxEmbedder(EfficientNetLite0Embedder(device="cpu"), quantize=None if quantize == "fp32" else quantize,
                           calibration=calibration, cache_dir=cache.name, batch_size=50)
        started = time.perf_counter()
        emb.embed([load_image(gallery[0])])  # export (+ quantization), not timed below
        build_s = time.perf_counter() - started
        (g, g_rate), (q, _) = embed(emb, gallery), embed(emb, queries)
        vecs[name] = (g, q)
        out[name] = {"build_s": build_s, "hit_ratio_at_10": hit_ratio(g, q, gl, ql), "forward_img_per_s": g_rate,
                     "calibration_images": len(calibration or [])}
        print(f"{name}: hit ratio@10 {out[name]['hit_ratio_at_10']:.3f}, model {g_rate:.0f} img/s "
              f"(batch 50, noisy), built in {build_s:.1f} s", flush=True)
    names = list(vecs)
    ref = names[0]
    for other in names[1:]:
        (g0, q0), (g1, q1) = vecs[ref], vecs[other]
        cos = np.concatenate([(g0 * g1).sum(1), (q0 * q1).sum(1)])
        out[f"{ref}_vs_{other}"] = {
            "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
            f"hit_ratio_{other}_gallery_{ref}_queries": hit_ratio(g1, q0, gl, ql),
            f"hit_ratio_{ref}_gallery_{other}_queries": hit_ratio(g0, q1, gl, ql),
        }
        print(f"{ref} vs {other}: {json.dumps(out[f'{ref}_vs_{other}'])}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
