"""Embedding throughput: the tutorial's loop vs the model's ceiling vs ``add_many`` (issue #7).

In one process, on the same images:

(a) the tutorial's loop, reproduced faithfully: one image at a time, the transform
    rebuilt per call, autograd on, fp32, one single-record upsert per image;
(b) the ResNet50 forward alone (already preprocessed tensors, inference mode,
    channels_last) at the best batch size and precision (a short sweep): the ceiling;
(c) ``ImageSearchIndex.add_many`` into a fresh ``LocalStore``, end to end (read, hash,
    decode, preprocess, embed, store), once per ``--precision``.

The images are split in ``--rounds`` slices and every variant runs on each slice back to
back, so the shared machine's noise hits all variants alike. Prints img/s (median over
rounds) and peak RSS for each and the ratios (c)/(a), (c)/(b); writes JSON.
ResNet50 uses random weights (same FLOPs as IMAGENET1K_V2, which cannot be downloaded
here). Example::

    .venv/bin/python benchmarks/embed_throughput.py --images ../shared/datasets/reverse_image_search --n 300
    # what docs/performance.md records: + 12 MP copies of the same images + a 3,000-image stream
    .venv/bin/python benchmarks/embed_throughput.py --images ../shared/datasets/reverse_image_search/train \
        --n 300 --make-large /tmp/jpeg12mp --memory-stream 3000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lookalike import ImageSearchIndex  # noqa: E402
from lookalike.embedders._torch import cpu_has_native_bf16  # noqa: E402
from lookalike.images import IMAGE_EXTENSIONS  # noqa: E402
from lookalike.stores.local import LocalStore  # noqa: E402
from lookalike.types import Record, Schema  # noqa: E402


class RssMonitor:
    """Samples this process's RSS every 10 ms; peak and growth over a phase."""

    def __init__(self) -> None:
        self._proc = psutil.Process()
        self._samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._samples.append((time.perf_counter(), self._proc.memory_info().rss))
            self._stop.wait(0.01)

    def __enter__(self) -> RssMonitor:
        self.start_rss = self._proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._samples.append((time.perf_counter(), self._proc.memory_info().rss))

    def summary(self) -> dict[str, float]:
        rss = [r for _, r in self._samples]
        half = len(rss) // 2
        mib = 1 << 20
        return {
            "rss_start_mib": self.start_rss / mib,
            "rss_peak_mib": max(rss) / mib,
            "rss_peak_growth_mib": (max(rss) - self.start_rss) / mib,
            "rss_peak_first_half_mib": max(rss[: max(half, 1)]) / mib,
            "rss_peak_second_half_mib": max(rss[half:]) / mib,
        }


def list_images(root: Path, n: int) -> list[Path]:
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        sys.exit(f"no images under {root}")
    return [files[i % len(files)] for i in range(n)] if len(files) < n else files[:n]


def make_large(src: list[Path], out: Path, megapixels: float = 12.0) -> None:
    """Upscale each image to about 12 MP and save it as a quality-90 JPEG (a camera-size file)."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(src):
        target = out / f"{i:05d}_{p.stem}.jpg"
        if target.exists():
            continue
        with Image.open(p) as im:
            im = im.convert("RGB")
            scale = (megapixels * 1e6 / (im.width * im.height)) ** 0.5
            size = (round(im.width * scale), round(im.height * scale))
            im.resize(size, Image.Resampling.BICUBIC).save(target, quality=90)


# -- (a) the tutorial ---------------------------------------------------------------------
class Tutorial:
    """The tutorial's code path, image by image (only the vector DB is our LocalStore)."""

    def __init__(self, store_dir: Path) -> None:
        import torch
        import torchvision.models as models

        self.model = models.resnet50(weights=None)  # tutorial: weights=ResNet50_Weights.IMAGENET1K_V2
        self.model.fc = torch.nn.Identity()
        self.model.eval()
        self.store = LocalStore(store_dir / "tutorial.lookalike")
        self.store.create_schema(Schema(dim=2048, identity="tutorial", fields=("path",)))

    def extract_features(self, path: Path) -> list[float]:
        import torchvision.transforms as transforms
        from PIL import Image

        transform = transforms.Compose([  # rebuilt on every call, as in the tutorial
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ])
        img = Image.open(path).convert("RGB")
        tensor = transform(img).unsqueeze(0)
        features = self.model(tensor)  # autograd on, fp32, batch of one
        vector: list[float] = features.squeeze().detach().numpy().tolist()
        return vector

    def run(self, paths: list[Path]) -> float:
        started = time.perf_counter()
        for p in paths:
            vec = np.asarray(self.extract_features(p), dtype=np.float32)
            vec /= np.linalg.norm(vec)
            self.store.upsert([Record(str(uuid.uuid4()), vec, {"path": str(p)})])  # one by one
        return len(paths) / (time.perf_counter() - started)


# -- (b) the ceiling ----------------------------------------------------------------------
class Ceiling:
    """ResNet50 forward alone on ready tensors: inference mode, channels_last, best batch."""

    def __init__(self) -> None:
        import torch
        import torchvision.models as models

        model = models.resnet50(weights=None)
        model.fc = torch.nn.Identity()
        self.model = model.eval().to(memory_format=torch.channels_last)
        self.precision, self.batch = "fp32", 32

    def rate(self, batch: int, precision: str, n: int) -> float:
        import torch

        x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
        dtype = {"bf16": torch.bfloat16}.get(precision)

        def step() -> None:
            with torch.inference_mode():
                if dtype is None:
                    self.model(x)
                else:
                    with torch.autocast("cpu", dtype=dtype):
                        self.model(x)

        step()  # warm-up
        steps = max(1, round(n / batch))
        started = time.perf_counter()
        for _ in range(steps):
            step()
        return steps * batch / (time.perf_counter() - started)

    def sweep(self, batches: list[int], precisions: list[str]) -> dict[str, float]:
        found = {}
        for precision in precisions:
            for batch in batches:
                found[f"{precision}/b{batch}"] = self.rate(batch, precision, max(2 * batch, 64))
                print(f"  (b) sweep {precision} batch {batch}: {found[f'{precision}/b{batch}']:.1f} img/s",
                      flush=True)
        best = max(found, key=lambda k: found[k])
        self.precision, batch = best.split("/b")
        self.batch = int(batch)
        return found

    def run(self, paths: list[Path]) -> float:
        return self.rate(self.batch, self.precision, len(paths))


# -- (c) add_many -------------------------------------------------------------------------
class AddMany:
    """``ImageSearchIndex.add_many`` of paths into a new LocalStore, end to end."""

    def __init__(self, store_dir: Path, precision: str, batch: int, workers: int | None,
                 model_batch: int | None) -> None:
        from PIL import Image

        from lookalike.embedders import ResNet50Embedder

        self.store_dir, self.batch, self.workers = store_dir, batch, workers
        self.embedder = ResNet50Embedder(weights=None, precision=precision, batch_size=model_batch)
        self.embedder.embed([Image.new("RGB", (256, 256))] * batch)  # build + warm up the model

    def run(self, paths: list[Path]) -> float:
        store = LocalStore(self.store_dir / f"c-{uuid.uuid4().hex[:8]}.lookalike")
        index = ImageSearchIndex(embedder=self.embedder, store=store, batch_size=self.batch,
                                 workers=self.workers)
        self.resolved_workers = index.workers
        started = time.perf_counter()
        report = index.add_many(iter(paths))  # an iterator: streamed, no len()
        rate = len(paths) / (time.perf_counter() - started)
        assert len(report.added) == len(set(paths)) and not report.failed, str(report)
        index.close()
        return rate


def memory_stream(variant: AddMany, paths: list[Path], total: int) -> dict[str, Any]:
    """add_many over a long stream (the images cycled, each under its own id): RSS samples."""
    from lookalike.sources import Item

    proc = psutil.Process()
    samples: list[tuple[int, float]] = []

    def stream() -> Any:
        every = max(1, min(100, total // 20))
        for i in range(total):
            if i % every == 0:
                samples.append((i, proc.memory_info().rss / 2**20))
            yield Item(paths[i % len(paths)], id=f"img{i:07d}")

    store = LocalStore(variant.store_dir / "stream.lookalike")
    index = ImageSearchIndex(embedder=variant.embedder, store=store, batch_size=variant.batch,
                             workers=variant.workers)
    started = time.perf_counter()
    with RssMonitor() as mon:
        report = index.add_many(stream())
    seconds = time.perf_counter() - started
    assert len(report.added) == total, str(report)
    index.close()
    tenth = [r for i, r in samples if i >= total // 10]
    return {"images": total, "img_per_s": total / seconds, "rss_mib_samples": samples,
            "rss_at_10pct_mib": tenth[0], "rss_max_after_10pct_mib": max(tenth),
            "rss_peak_mib": mon.summary()["rss_peak_mib"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, required=True, help="folder of images (searched recursively)")
    ap.add_argument("--n", type=int, default=300, help="images in all")
    ap.add_argument("--rounds", type=int, default=3,
                    help="the n images are split in this many slices; each round runs every variant on "
                    "one slice, back to back, so machine noise hits all alike (default 3)")
    ap.add_argument("--precision", default="auto,fp32", help="comma list for (c)")
    ap.add_argument("--batch", type=int, default=32, help="add_many batch (chunk) size for (c)")
    ap.add_argument("--model-batch", type=int, default=None,
                    help="forward batch for (c) (default: the embedder's, 16 on CPU)")
    ap.add_argument("--workers", type=int, default=None, help="decode workers for (c) (default: the index's)")
    ap.add_argument("--skip-tutorial", action="store_true", help="skip (a)")
    ap.add_argument("--make-large", type=Path, default=None,
                    help="write ~12 MP JPEGs made from the --images used into this folder (files already "
                    "there are kept) and use it as --large")
    ap.add_argument("--large", type=Path, default=None,
                    help="a folder of camera-size JPEGs (e.g. made with --make-large): adds (c) with the "
                    "first --precision on them, in the same rounds, and the ratio to (c) on --images")
    ap.add_argument("--memory-stream", type=int, default=0, metavar="M",
                    help="then add_many M images (the --images cycled, distinct ids) with the first "
                    "--precision and report RSS along the stream")
    ap.add_argument("--json", type=Path, default=None, help="where to write results "
                    "(default benchmarks/results/embed_throughput-<folder>.json)")
    args = ap.parse_args()

    paths = list_images(args.images, args.n)
    if args.make_large is not None:
        make_large(paths, args.make_large)
        args.large = args.make_large
    large = list_images(args.large, args.n) if args.large is not None else []
    for p in paths + large:  # warm the page cache so every variant reads from memory
        p.read_bytes()
    import torch

    mean_bytes = float(np.mean([p.stat().st_size for p in paths]))
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "images": str(args.images),
        "n": len(paths), "rounds": args.rounds, "mean_file_bytes": mean_bytes,
        "machine": {"cpus": os.cpu_count(), "native_bf16": cpu_has_native_bf16(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "cuda": torch.cuda.is_available(),
                    "loadavg_start": os.getloadavg()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(f"{len(paths)} images from {results['images']} (mean {mean_bytes / 1e3:.0f} kB), "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"native bf16: {cpu_has_native_bf16()}, load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="lookalike-bench-") as tmp:
        store_dir = Path(tmp)
        variants: dict[str, Any] = {}
        if not args.skip_tutorial:
            variants["a_tutorial"] = Tutorial(store_dir)
            variants["a_tutorial"].extract_features(paths[0])  # warm-up
        ceiling = Ceiling()
        precisions = ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"]
        sweep = ceiling.sweep([8, 16, 32], precisions)
        variants["b_ceiling"] = ceiling
        for precision in args.precision.split(","):
            variants[f"c_add_many_{precision}"] = AddMany(store_dir, precision, args.batch, args.workers,
                                                          args.model_batch)
        first_c = f"c_add_many_{args.precision.split(',')[0]}"
        if large:
            variants[first_c + "_large"] = variants[first_c]
        rates: dict[str, list[float]] = {k: [] for k in variants}
        cpu_ms: dict[str, list[float]] = {k: [] for k in variants}
        proc = psutil.Process()
        peaks: dict[str, list[float]] = {k: [] for k in variants}
        start_rss: dict[str, float] = {}
        size = -(-len(paths) // args.rounds)
        for r in range(args.rounds):
            for key, variant in variants.items():
                part = (large if key.endswith("_large") else paths)[r * size : (r + 1) * size]
                cpu = proc.cpu_times()
                with RssMonitor() as mon:
                    rates[key].append(variant.run(part))
                cpu_after = proc.cpu_times()
                used = (cpu_after.user + cpu_after.system) - (cpu.user + cpu.system)
                cpu_ms[key].append(1000 * used / len(part))
                summary = mon.summary()
                start_rss.setdefault(key, summary["rss_start_mib"])
                peaks[key].append(summary["rss_peak_mib"])
                print(f"  round {r + 1}/{args.rounds} {key}: {rates[key][-1]:.1f} img/s, "
                      f"{cpu_ms[key][-1]:.0f} CPU-ms/img, peak RSS {summary['rss_peak_mib']:.0f} MiB, "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
        for key, variant in variants.items():
            row: dict[str, Any] = {
                "img_per_s": float(np.median(rates[key])), "img_per_s_best": max(rates[key]),
                "img_per_s_rounds": rates[key], "cpu_ms_per_img": float(np.median(cpu_ms[key])),
                "rss_peak_mib": max(peaks[key]),
                "rss_peak_mib_rounds": peaks[key],
                "rss_peak_growth_mib": max(peaks[key]) - start_rss[key],
            }
            if key == "b_ceiling":
                row.update(precision=ceiling.precision, batch=ceiling.batch, sweep=sweep)
            if key.startswith("c_"):
                row.update(resolved_precision=variant.embedder.precision, workers=variant.resolved_workers,
                           batch=args.batch, model_batch=variant.embedder.batch_size)
                for base, name in (("a_tutorial", "ratio_c_over_a"), ("b_ceiling", "ratio_c_over_b")):
                    if base in rates:  # ratio per round (same minute of machine noise), then median
                        row[name] = float(np.median([c / b for c, b in zip(rates[key], rates[base])]))
                if key.endswith("_large"):
                    row["images"] = str(args.large)
                    row["mean_file_bytes"] = float(np.mean([p.stat().st_size for p in large]))
                    row["ratio_large_over_small"] = float(np.median(
                        [c / b for c, b in zip(rates[key], rates[first_c])]))
            results[key] = row
        if args.memory_stream:
            got = memory_stream(variants[first_c], paths, args.memory_stream)
            results["memory_stream"] = got
            print(f"memory stream of {got['images']} images: {got['img_per_s']:.1f} img/s, RSS at 10% "
                  f"{got['rss_at_10pct_mib']:.0f} MiB, max after {got['rss_max_after_10pct_mib']:.0f} MiB, "
                  f"peak {got['rss_peak_mib']:.0f} MiB", flush=True)
    results["machine"]["loadavg_end"] = os.getloadavg()

    print(f"\n{'':22s}{'img/s':>8s}{'best':>7s}{'CPU-ms/img':>11s}{'peak RSS MiB':>14s}"
          f"{'(c)/(a)':>9s}{'(c)/(b)':>9s}")
    for key, row in results.items():
        if not isinstance(row, dict) or "img_per_s_best" not in row:
            continue
        ca, cb = row.get("ratio_c_over_a"), row.get("ratio_c_over_b")
        if "ratio_large_over_small" in row:
            key = f"{key} ({row['ratio_large_over_small']:.2f}x small)"
        print(f"{key:22s}{row['img_per_s']:8.1f}{row['img_per_s_best']:7.1f}{row['cpu_ms_per_img']:11.0f}"
              f"{row['rss_peak_mib']:14.0f}"
              f"{'' if ca is None else f'{ca:9.2f}'}{'' if cb is None else f'{cb:9.2f}'}")
    print("(median over rounds; ratios are medians of per-round ratios; "
          f"(b) = {ceiling.precision} batch {ceiling.batch})")
    out = args.json or Path(__file__).parent / "results" / f"embed_throughput-{Path(results['images']).name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
