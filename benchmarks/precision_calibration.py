"""Does ``precision="auto"`` pick the precision that truly runs faster on this CPU? (#20)

For each model, in one process: the calibration of ``precision="auto"`` run ``--calibrations``
times from an empty cache (its choice, its per-image timings, how long it took); then the
true steady-state speed of fp32 and bf16 side by side: the model part of ``add_many`` (one
``embed_pixels`` call of ``batch_size`` images per stream, on the embedder's streams, in
inference mode), fp32 and bf16 alternating for ``--rounds`` rounds after a warm-up of each,
per image on the wall clock and in process CPU time (median of the rounds). For contrast it
also times the pass the calibration of CACHE_FORMAT 1 timed (2 images per stream, the stream
threads outside inference mode). Random weights (the speed does not depend on them). Example::

    .venv/bin/python benchmarks/precision_calibration.py --models resnet50,clip \\
        --json benchmarks/results/precision_calibration-epyc-avx512bf16.json

Keep the host as quiet as it can be; the CPU time column is the one other processes disturb least.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lookalike.embedders import _calibrate  # noqa: E402


def build(name: str, precision: str) -> Any:
    if name == "clip":
        from lookalike.embedders.clip import ClipEmbedder

        return ClipEmbedder(model="ViT-B-32", weights=None, device="cpu", precision=precision)
    from lookalike.embedders.torchvision import ResNet50Embedder

    return ResNet50Embedder(weights=None, device="cpu", precision=precision)


def timed(fn: Any, images: int) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return {"wall": (time.perf_counter() - wall) / images, "cpu": (time.process_time() - cpu) / images}


def calibrations(name: str, count: int) -> list[dict[str, Any]]:
    runs = []
    for _ in range(count):
        os.environ["LOOKALIKE_CACHE_DIR"] = tempfile.mkdtemp(prefix="lookalike-calib-")
        emb = build(name, "auto")
        started = time.perf_counter()
        emb.load()
        load_s = time.perf_counter() - started
        (entry,) = json.loads(_calibrate.cache_path().read_text()).values()
        runs.append({"choice": emb.precision, "load_s": load_s, **{k: entry[k] for k in (
            "per_image_s", "warm_up_s", "rounds", "images_per_pass", "calibration_s", "calibration_cpu_s")}})
        print(f"{name}: calibration -> {emb.precision} in {entry['calibration_s']:.1f} s "
              f"(CPU {entry['calibration_cpu_s']:.1f} s), rounds "
              f"{entry['rounds']}, per image {entry['per_image_s']}", flush=True)
    return runs


def steady(name: str, rounds: int) -> dict[str, Any]:
    import torch

    emb = build(name, "fp32")
    emb.load()
    n = emb.batch_size * emb.streams
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (emb._preprocess.crop, emb._preprocess.crop, 3), dtype=np.uint8)
              for _ in range(n)]
    old_batch = emb._sample_batch(2)
    streams = emb._streams_for(n)

    def add_many_pass() -> None:
        emb.embed_pixels(pixels)

    def old_calibration_pass() -> None:  # what CACHE_FORMAT 1 timed: no inference mode on the streams
        with torch.inference_mode():
            if streams is None:
                emb._eager(old_batch)
            else:
                streams.map(emb._eager, [old_batch] * streams.count)

    samples: dict[str, dict[str, list[dict[str, float]]]] = {"add_many": {}, "old_calibration": {}}
    for what, fn, images in (("add_many", add_many_pass, n), ("old_calibration", old_calibration_pass,
                                                              2 * max(emb.streams, 1))):
        for r in range(rounds + 1):
            for precision in ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32"):
                emb.precision = precision
                t = timed(fn, images)
                if r:  # round 0 is the warm-up
                    samples[what].setdefault(precision, []).append(t)
                print(f"{name}: {what} round {r} {precision}: {t['wall'] * 1000:.0f} ms/img "
                      f"(CPU {t['cpu'] * 1000:.0f})", flush=True)
    out: dict[str, Any] = {"streams": emb.streams, "batch_per_stream": emb.batch_size, "rounds": rounds}
    for what, by_precision in samples.items():
        med = {p: {c: statistics.median(s[c] for s in ts) for c in ("wall", "cpu")} for p, ts in by_precision.items()}
        out[what] = {"median_per_image_s": med, "samples": by_precision,
                     "bf16_over_fp32": {c: med["bf16"][c] / med["fp32"][c] for c in ("wall", "cpu")}}
        print(f"{name}: {what} bf16/fp32 per image: wall {out[what]['bf16_over_fp32']['wall']:.2f}, "
              f"CPU {out[what]['bf16_over_fp32']['cpu']:.2f}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50,clip", help="comma list of resnet50, clip")
    ap.add_argument("--calibrations", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ.pop(_calibrate.ENV_PRECISION, None)
    logging.basicConfig(level=logging.WARNING)
    import torch

    cpu = _calibrate.describe_cpu()
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpu_model": cpu.model, "cpu_bf16_class": cpu.bf16_class, "cpus": os.cpu_count(),
                    "torch": str(torch.__version__), "threads": torch.get_num_threads(),
                    "loadavg_start": os.getloadavg()},
        "models": {},
    }
    for name in args.models.split(","):
        result["models"][name] = {"calibrations": calibrations(name, args.calibrations),
                                  "steady": steady(name, args.rounds)}
    result["machine"]["loadavg_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
