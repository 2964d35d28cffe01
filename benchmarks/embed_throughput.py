"""Embedding throughput: the tutorial's loop vs the model's ceiling vs ``add_many`` (issue #7).

In one process, on the same images:

(a) the tutorial's loop, reproduced faithfully: one image at a time, the transform
    rebuilt per call, autograd on, fp32, one single-record upsert per image (on a GPU
    machine its model is moved to the GPU);
(b) the ResNet50 forward alone (already preprocessed tensors, inference mode,
    channels_last) at the best batch size, precision and number of CPU streams (a short
    sweep): the ceiling;
(c) ``ImageSearchIndex.add_many`` into a fresh ``LocalStore``, end to end (read, hash,
    decode, preprocess, embed, store), once per ``--precision`` and per ``--configs``;
(c) with ``--onnx fp32,int8``: the same with :class:`~lookalike.embedders.OnnxEmbedder`
    around the same model (export, and quantization calibrated on the first 32 images,
    timed apart as ``onnx_build_s``);
(d) with ``--decode-ceiling``: the same per-image reading and decoding with no model, in
    add_many's worker threads and in one process per CPU (what the CPUs can feed).
(e) with ``--gpu-decode`` (issue #20; CUDA only, recorded as skipped with the reason
    elsewhere): (c) with ``decode="gpu"`` (the JPEGs decoded, resized and cropped on the
    GPU in batches), and the GPU decode ceiling: files read and hashed in threads,
    decoded and cropped on the GPU, no model; printed beside the CPU decode (c), the
    model-only ceiling (b) and (d); with ``--memory-stream`` the stream runs on the GPU
    path too, sampling host RSS and GPU memory.

The images are split in ``--rounds`` slices and every variant runs on each slice back to
back, so the shared machine's noise hits all variants alike. Prints img/s (median over
rounds) and peak RSS for each and the ratios (c)/(a), (c)/(b), (c)/(d); writes JSON.
ResNet50 uses random weights (same FLOPs as IMAGENET1K_V2, which cannot be downloaded
here); ``--model efficientnet-lite0`` runs (b) and (c) with the offline EfficientNet-Lite0
instead ((a) stays the tutorial's ResNet50). Examples::

    .venv/bin/python benchmarks/embed_throughput.py --images ../shared/datasets/reverse_image_search --n 300
    # what docs/performance.md records: + 12 MP copies of the same images + a 3,000-image stream
    .venv/bin/python benchmarks/embed_throughput.py --images ../shared/datasets/reverse_image_search/train \
        --n 300 --make-large /tmp/jpeg12mp --memory-stream 3000
    # ONNX Runtime fp32 / int8 against torch bf16, end to end (docs/performance.md)
    .venv/bin/python benchmarks/embed_throughput.py --images ../shared/datasets/reverse_image_search/train \
        --n 300 --skip-tutorial --precision auto --onnx fp32,int8 --model efficientnet-lite0
    # CLIP ViT-B-32 beside ResNet50 through add_many, and CLIP text queries/s (#17)
    .venv/bin/python benchmarks/embed_throughput.py --images ../shared/datasets/reverse_image_search/train \
        --n 96 --rounds 3 --precision auto --clip
    # on a GPU machine (docs/performance.md, "On a GPU"); benchmarks/gpu_check.sh adds --gpu-decode
    python benchmarks/embed_throughput.py --images DIR --n 300 --copies 20 --tutorial-n 100 \
        --decode-ceiling --make-large /tmp/large --memory-stream 20000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lookalike import ImageSearchIndex  # noqa: E402
from lookalike.embedders._calibrate import describe_cpu  # noqa: E402
from lookalike.embedders._torch import ForwardStreams, cpu_has_native_bf16  # noqa: E402
from lookalike.images import IMAGE_EXTENSIONS  # noqa: E402
from lookalike.index import default_workers  # noqa: E402
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


def _make_one_large(job: tuple[Path, Path, float]) -> None:
    from PIL import Image

    src, target, megapixels = job
    with Image.open(src) as im:
        im = im.convert("RGB")
        scale = (megapixels * 1e6 / (im.width * im.height)) ** 0.5
        size = (round(im.width * scale), round(im.height * scale))
        im.resize(size, Image.Resampling.BICUBIC).save(target, quality=90)


def make_large(src: list[Path], out: Path, megapixels: float = 12.0) -> None:
    """Upscale each image to about 12 MP and save it as a quality-90 JPEG (a camera-size file)."""
    from concurrent.futures import ProcessPoolExecutor

    out.mkdir(parents=True, exist_ok=True)
    jobs = [(p, out / f"{i:05d}_{p.stem}.jpg", megapixels) for i, p in enumerate(src)]
    jobs = [j for j in jobs if not j[1].exists()]
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(_make_one_large, jobs, chunksize=4))


def with_copies(paths: list[Path], copies: int, into: Path) -> list[Path]:
    """``copies`` hard links of every file under distinct paths (distinct ids, same bytes),
    for machines that embed the data set faster than a benchmark can time it."""
    if copies <= 1:
        return paths
    out = []
    for c in range(copies):
        folder = into / f"copy{c:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, p in enumerate(paths):
            target = folder / f"{i:05d}_{p.name}"
            if not target.exists():
                try:
                    os.link(p, target)
                except OSError:  # another file system: copy
                    target.write_bytes(p.read_bytes())
            out.append(target)
    return out


# -- (a) the tutorial ---------------------------------------------------------------------
class Tutorial:
    """The tutorial's code path, image by image (only the vector DB is our LocalStore)."""

    def __init__(self, store_dir: Path, device: str, limit: int | None) -> None:
        import torch
        import torchvision.models as models

        self.device, self.limit = device, limit
        self.model = models.resnet50(weights=None)  # tutorial: weights=ResNet50_Weights.IMAGENET1K_V2
        self.model.fc = torch.nn.Identity()
        self.model.eval().to(device)  # the tutorial runs on the CPU; on a GPU machine, moved there
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
        tensor = transform(img).unsqueeze(0).to(self.device)
        features = self.model(tensor)  # autograd on, fp32, batch of one
        vector: list[float] = features.squeeze().detach().cpu().numpy().tolist()
        return vector

    def run(self, paths: list[Path]) -> float:
        paths = paths[: self.limit] if self.limit else paths
        self.last_n = len(paths)
        started = time.perf_counter()
        for p in paths:
            vec = np.asarray(self.extract_features(p), dtype=np.float32)
            vec /= np.linalg.norm(vec)
            self.store.upsert([Record(str(uuid.uuid4()), vec, {"path": str(p)})])  # one by one
        return len(paths) / (time.perf_counter() - started)


# -- (b) the ceiling ----------------------------------------------------------------------
class Ceiling:
    """The model's forward alone on ready tensors: inference mode, channels_last, best batch."""

    def __init__(self, device: str, model_name: str = "resnet50") -> None:
        import torch

        if model_name == "resnet50":
            import torchvision.models as models

            model = models.resnet50(weights=None)
            model.fc = torch.nn.Identity()
        else:
            embedder = torch_embedder(model_name, device="cpu", precision="fp32")
            model = embedder.spec.build()
        self.device = torch.device(device)
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        self.precision, self.batch, self.streams = "fp32", 32, 1
        self._streams: dict[int, ForwardStreams] = {}

    def _sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def rate(self, batch: int, precision: str, n: int, streams: int = 1) -> float:
        import torch

        x = torch.randn(batch, 3, 224, 224, device=self.device).contiguous(memory_format=torch.channels_last)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

        def step(_: object = None) -> None:
            with torch.inference_mode():
                if dtype is None:
                    self.model(x)
                else:
                    with torch.autocast(self.device.type, dtype=dtype):
                        self.model(x)

        steps = max(1, round(n / batch))
        if streams > 1:  # side by side on the CPU, as TorchEmbedder(streams=...) runs them
            pool = self._streams.setdefault(streams, ForwardStreams(streams))
            pool.map(step, [None] * streams)  # warm-up
            started = time.perf_counter()
            pool.map(step, [None] * steps)
            return steps * batch / (time.perf_counter() - started)
        for _ in range(3 if self.device.type == "cuda" else 1):  # warm-up
            step()
        self._sync()
        started = time.perf_counter()
        for _ in range(steps):
            step()
        self._sync()
        return steps * batch / (time.perf_counter() - started)

    def sweep(self, batches: list[int], precisions: list[str], streams: tuple[int, ...] = (1,)) -> dict[str, float]:
        found = {}
        for precision in precisions:
            for count in streams:
                for batch in batches:
                    n = max(2 * batch * count, 64) if self.device.type == "cpu" else max(8 * batch, 2048)
                    key = f"{precision}/b{batch}/s{count}"
                    found[key] = self.rate(batch, precision, n, count)
                    print(f"  (b) sweep {precision} batch {batch} streams {count}: {found[key]:.1f} img/s",
                          flush=True)
        best = max(found, key=lambda k: found[k])
        precision, batch, count = best.split("/")
        self.precision, self.batch, self.streams = precision, int(batch[1:]), int(count[1:])
        return found

    def run(self, paths: list[Path]) -> float:
        n = len(paths) if self.device.type == "cpu" else max(len(paths), 8 * self.batch)
        self.last_n = max(1, round(n / self.batch)) * self.batch
        return self.rate(self.batch, self.precision, n, self.streams)


# -- (d) the decode ceiling -----------------------------------------------------------
def _decode_one(path: Path) -> int:
    from lookalike.embedders._torch import ImagePreprocess
    from lookalike.images import decode_image, read_image_bytes

    global _PREPROCESS
    if _PREPROCESS is None:
        _PREPROCESS = ImagePreprocess(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    encoded = read_image_bytes(path)
    encoded.sha256  # noqa: B018  (add_many hashes every file)
    return int(_PREPROCESS.pixels(decode_image(encoded, min_size=256)).shape[0])


_PREPROCESS: Any = None


class DecodeCeiling:
    """What the CPUs can read, hash, decode, resize and crop with no model at all: the same
    per-image work as add_many's workers, in a thread pool of ``workers`` (as add_many) and
    in one process per CPU (no GIL: the machine's true ceiling)."""

    def __init__(self, workers: int, processes: bool) -> None:
        from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

        self.workers = workers
        spawn = multiprocessing.get_context("spawn")  # no fork of a process running CUDA threads
        self.pool: Any = (ProcessPoolExecutor(max_workers=os.cpu_count(), mp_context=spawn) if processes
                          else ThreadPoolExecutor(max_workers=workers))

    def run(self, paths: list[Path]) -> float:
        list(self.pool.map(_decode_one, paths[: 4 * (os.cpu_count() or 1)]))  # warm the pool
        started = time.perf_counter()
        list(self.pool.map(_decode_one, paths, chunksize=4))
        return len(paths) / (time.perf_counter() - started)


# -- (c) add_many -------------------------------------------------------------------------
MODELS = ("resnet50", "efficientnet-lite0")


def torch_embedder(model: str, **options: Any) -> Any:
    """ResNet50 with random weights (same FLOPs as IMAGENET1K_V2) or the offline EfficientNet-Lite0."""
    from lookalike.embedders import EfficientNetLite0Embedder, ResNet50Embedder

    if model == "efficientnet-lite0":
        return EfficientNetLite0Embedder(**options)
    return ResNet50Embedder(weights=None, **options)


class AddMany:
    """``ImageSearchIndex.add_many`` of paths into a new LocalStore, end to end."""

    def __init__(self, store_dir: Path, precision: str, batch: int, workers: int | None,
                 model_batch: int | None, device: str = "auto", processes: bool = False,
                 cuda_graphs: bool = True, model: str = "resnet50", onnx: str | None = None,
                 calibration: list[Path] | None = None, streams: int | None = None,
                 overlap: bool = True) -> None:
        from PIL import Image

        self.store_dir, self.batch, self.workers, self.processes = store_dir, batch, workers, processes
        self.embedder: Any = torch_embedder(model, precision=precision, batch_size=model_batch,
                                            device=device, streams=streams)
        self.embedder.cuda_graphs = cuda_graphs
        if not overlap:  # add_many then embeds each chunk to the end before it starts the next
            self.embedder.submit_pixels = None
        if onnx is not None:  # the same model run by ONNX Runtime (exported into store_dir)
            from lookalike.embedders import OnnxEmbedder

            started = time.perf_counter()
            self.embedder = OnnxEmbedder(self.embedder, quantize=None if onnx == "fp32" else onnx,
                                         calibration=calibration, cache_dir=store_dir / "onnx",
                                         batch_size=model_batch)
            self.embedder.embed([Image.new("RGB", (256, 256))])
            self.onnx_build_s = time.perf_counter() - started
        self.embedder.embed([Image.new("RGB", (256, 256))] * batch)  # build + warm up the model

    def run(self, paths: list[Path]) -> float:
        store = LocalStore(self.store_dir / f"c-{uuid.uuid4().hex[:8]}.lookalike")
        index = ImageSearchIndex(embedder=self.embedder, store=store, batch_size=self.batch,
                                 workers=self.workers, processes=self.processes)
        self.resolved_workers = index.workers
        index.add_many(paths[:1])  # start the decode processes, if any (once per index) ...
        if index._decoder is not None:
            index._decoder.wait_started()  # ... and time none of their start-up
        started = time.perf_counter()
        report = index.add_many(iter(paths[1:]))  # an iterator: streamed, no len()
        rate = (len(paths) - 1) / (time.perf_counter() - started)
        self.used_processes = index._decoder is not None
        assert len(report.added) == len(set(paths[1:])) and not report.failed, str(report)
        index.close()
        return rate


def streamed(variant: AddMany, paths: list[Path], total: int, store_name: str,
             also: Callable[[], float] | None = None) -> tuple[float, list[tuple[float, ...]], float]:
    """add_many over a long stream (the images cycled, each under its own id) into its own
    store ``store_name``: (seconds, samples ``(i, rss_mib[, also()])``, peak RSS MiB)."""
    from lookalike.sources import Item

    proc = psutil.Process()
    samples: list[tuple[float, ...]] = []
    every = max(1, min(100, total // 20))

    def stream() -> Any:
        for i in range(total):
            if i % every == 0:
                rss = proc.memory_info().rss / 2**20
                samples.append((i, rss) if also is None else (i, rss, also()))
            yield Item(paths[i % len(paths)], id=f"img{i:07d}")

    store = LocalStore(variant.store_dir / store_name)
    index = ImageSearchIndex(embedder=variant.embedder, store=store, batch_size=variant.batch,
                             workers=variant.workers, processes=variant.processes)
    started = time.perf_counter()
    with RssMonitor() as mon:
        report = index.add_many(stream())
    seconds = time.perf_counter() - started
    assert len(report.added) == total, str(report)
    index.close()
    return seconds, samples, mon.summary()["rss_peak_mib"]


def memory_stream(variant: AddMany, paths: list[Path], total: int) -> dict[str, Any]:
    """add_many over a long stream: RSS samples (flat after the first chunks = bounded)."""
    seconds, samples, peak = streamed(variant, paths, total, "stream.lookalike")
    tenth = [r for i, r in samples if i >= total // 10]
    return {"images": total, "img_per_s": total / seconds, "processes": variant.processes, "rss_mib_samples": samples,
            "rss_at_10pct_mib": tenth[0], "rss_max_after_10pct_mib": max(tenth),
            "rss_peak_mib": peak}


# -- (e) the GPU pixel path (#20) ------------------------------------------------------------
def gpu_decode_unavailable(device: str, mode: str) -> str | None:
    """Why (e) cannot run here, or ``None`` (``mode`` ``cpu-twin``: a dry run on the CPU)."""
    import torch

    if mode == "cpu-twin":
        return None
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return f"no CUDA device (device {device!r}): the GPU decode path and its ceiling need one"
    return None


class AddManyGpuDecode(AddMany):
    """(c) with the JPEGs decoded on the GPU (``decode="gpu"``): the same embedder settings."""

    def __init__(self, store_dir: Path, precision: str, batch: int, workers: int | None,
                 model_batch: int | None, device: str, model: str) -> None:
        super().__init__(store_dir, precision, batch, workers, model_batch, device, processes=False, model=model)
        from lookalike.embedders._jpeg import JpegBatchDecoder

        emb = self.embedder  # loaded by the warm-up: now decode its JPEGs on the device, as decode="gpu" does
        emb.jpeg_decoder = JpegBatchDecoder(emb.spec.preprocess, emb.device, draft_size=emb.image_size)

    def run(self, paths: list[Path]) -> float:
        decoder = self.embedder.jpeg_decoder
        taken, declined = decoder.taken, decoder.declined
        rate = super().run(paths)
        self.taken, self.declined = decoder.taken - taken, decoder.declined - declined  # this round's
        return rate


class GpuDecodeCeiling:
    """(e) what the GPU pixel path can feed with no model: read + sha256 in ``workers``
    threads, then ``JpegBatchDecoder`` on chunks of ``batch`` files (pixels left on the GPU)."""

    def __init__(self, device: str, workers: int, batch: int, model: str) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from lookalike.embedders._jpeg import JpegBatchDecoder

        emb = torch_embedder(model, device=device)
        self.decoder = JpegBatchDecoder(emb.spec.preprocess, device, draft_size=emb.image_size)
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.batch = batch

    @staticmethod
    def _read(path: Path) -> bytes:
        from lookalike.images import read_image_bytes

        encoded = read_image_bytes(path)
        encoded.sha256  # noqa: B018  (add_many hashes every file)
        return encoded.data

    def run(self, paths: list[Path]) -> float:
        import torch

        self.decoder([self._read(p) for p in paths[: self.batch]])  # warm up nvJPEG
        started = time.perf_counter()
        chunks = [paths[i : i + self.batch] for i in range(0, len(paths), self.batch)]
        reading = self.pool.map(lambda chunk: list(map(self._read, chunk)), chunks)  # reads run ahead
        for datas in reading:
            self.decoder(datas)
        if self.decoder.device.type == "cuda":
            torch.cuda.synchronize()
        return len(paths) / (time.perf_counter() - started)


def gpu_memory_stream(variant: AddMany, paths: list[Path], total: int) -> dict[str, Any]:
    """:func:`memory_stream` on the GPU path (its own store), sampling host RSS and the GPU
    memory torch holds along the stream: both flat after the first chunks = bounded."""
    import torch

    def gpu_mib() -> float:
        return torch.cuda.memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    seconds, samples, peak = streamed(variant, paths, total, "stream-gpu-decode.lookalike", also=gpu_mib)
    tenth = [(r, g) for i, r, g in samples if i >= total // 10]
    return {"images": total, "img_per_s": total / seconds, "samples_i_rss_mib_gpu_mib": samples,
            "rss_at_10pct_mib": tenth[0][0], "rss_max_after_10pct_mib": max(r for r, _ in tenth),
            "rss_peak_mib": peak,
            "gpu_allocated_at_10pct_mib": tenth[0][1], "gpu_allocated_max_after_10pct_mib": max(g for _, g in tenth),
            "gpu_peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None}


def add_gpu_decode(variants: dict[str, Any], results: dict[str, Any], args: Any, store_dir: Path,
                   device: str, first_precision: str) -> None:
    """Add (e) to ``variants`` (same rounds as the others), or record why it is skipped."""
    why = gpu_decode_unavailable(device, args.gpu_decode)
    if why is not None:
        results["e_gpu_decode"] = {"skipped": why}
        print(f"  (e) GPU decode skipped: {why}", flush=True)
        return
    if args.gpu_decode == "cpu-twin":
        results["e_gpu_decode"] = {"dry_run": "cpu-twin: decode_jpeg on the CPU; checks the script, not a figure"}
    variants["e_add_many_gpu_decode"] = AddManyGpuDecode(store_dir, first_precision, args.batch, args.workers,
                                                         args.model_batch, device, args.model)
    variants["e_decode_gpu"] = GpuDecodeCeiling(device, args.workers or default_workers(), args.batch, args.model)


def print_gpu_decode(results: dict[str, Any], first_c: str) -> None:
    """CPU decode, GPU decode and the model-only ceiling, side by side."""
    row = results.get("e_add_many_gpu_decode")
    if row is None:
        return
    names = [("(b) model only", "b_ceiling"), ("(c) add_many, CPU decode", first_c),
             ("(c) add_many, GPU decode", "e_add_many_gpu_decode"),
             ("(d) decode ceiling, CPU processes", "d_decode_processes"),
             ("(e) decode ceiling, GPU", "e_decode_gpu")]
    print("\nGPU pixel path (#20):")
    for label, key in names:
        if key in results and "img_per_s" in results[key]:
            print(f"  {label:36s}{results[key]['img_per_s']:10.1f} img/s")
    for key in ("ratio_gpu_over_cpu_decode", "ratio_c_over_b"):
        if key in row:
            print(f"  {key}: {row[key]:.2f}")
# -- CLIP (#17): image throughput beside ResNet50, and text queries per second ----------------
CLIP_QUERIES = ["a dog", "a red car on a beach", "a bird on a branch", "two cats sleeping", "a mountain lake",
                "a plate of food", "a person riding a bicycle", "a white boat", "a crocodile in a river",
                "an old church"]


class ClipAddMany(AddMany):
    """:class:`AddMany` with ``ClipEmbedder`` (open_clip ``model``, random weights: same FLOPs
    as the pretrained ones, which cannot be downloaded here)."""

    def __init__(self, store_dir: Path, precision: str, batch: int, device: str, model: str = "ViT-B-32") -> None:
        from PIL import Image

        from lookalike.embedders import ClipEmbedder

        self.store_dir, self.batch, self.workers, self.processes = store_dir, batch, None, False
        self.embedder = ClipEmbedder(model, weights=None, precision=precision, device=device)
        self.embedder.embed([Image.new("RGB", (256, 256))] * batch)  # build + warm up the model


def text_queries_per_s(embedder: Any, store_dir: Path, paths: list[Path], repeat: int = 3) -> dict[str, float]:
    """Text queries answered one at a time (``index.search(Text(q), k=10)`` on an index of
    ``paths``, as a person searches), and texts embedded per second in one batch of 64."""
    from lookalike import Text

    index = ImageSearchIndex(embedder=embedder, store=LocalStore(store_dir / f"t-{uuid.uuid4().hex[:8]}.lookalike"))
    index.add_many(paths)
    index.search(Text("warm up"), k=10)
    started = time.perf_counter()
    for _ in range(repeat):
        for query in CLIP_QUERIES:
            index.search(Text(query), k=10)
    one_by_one = repeat * len(CLIP_QUERIES) / (time.perf_counter() - started)
    batch = (CLIP_QUERIES * 7)[:64]
    started = time.perf_counter()
    embedder.embed_text(batch)
    batched = len(batch) / (time.perf_counter() - started)
    index.close()
    return {"text_queries_per_s": one_by_one, "texts_per_s_batch64": batched}


def clip_section(paths: list[Path], args: argparse.Namespace, device: str) -> dict[str, Any]:
    """ResNet50 and CLIP ``--clip-model`` through ``add_many`` side by side (same images, same
    rounds, interleaved, so the machine's noise hits both alike), then CLIP's text queries/s."""
    precision = args.precision.split(",")[0]
    out: dict[str, Any] = {"precision": precision, "clip_model": args.clip_model}
    with tempfile.TemporaryDirectory(prefix="lookalike-bench-clip-") as tmp:
        store_dir = Path(tmp)
        variants: dict[str, Any] = {
            "resnet50": AddMany(store_dir, precision, args.batch, None, None, device, model="resnet50"),
            f"clip_{args.clip_model}": ClipAddMany(store_dir, precision, args.batch, device, args.clip_model),
        }
        rates: dict[str, list[float]] = {k: [] for k in variants}
        size = -(-len(paths) // args.rounds)
        for r in range(args.rounds):
            for key, variant in variants.items():
                rates[key].append(variant.run(paths[r * size : (r + 1) * size]))
                print(f"  clip round {r + 1}/{args.rounds} {key}: {rates[key][-1]:.1f} img/s, "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
        clip_key = f"clip_{args.clip_model}"
        for key, variant in variants.items():
            out[key] = {"img_per_s": float(np.median(rates[key])), "img_per_s_rounds": rates[key],
                        "resolved_precision": variant.embedder.precision, "streams": variant.embedder.streams,
                        "identity": variant.embedder.identity}
        out[clip_key]["ratio_over_resnet50"] = float(np.median(
            [c / b for c, b in zip(rates[clip_key], rates["resnet50"])]))
        out[clip_key].update(text_queries_per_s(variants[clip_key].embedder, store_dir, paths[: min(len(paths), 50)]))
    c = out[clip_key]
    print(f"\n{'':28s}{'img/s':>8s}\n{'resnet50 (random weights)':28s}{out['resnet50']['img_per_s']:8.1f}\n"
          f"{clip_key + ' (random weights)':28s}{c['img_per_s']:8.1f}  ({c['ratio_over_resnet50']:.2f}x ResNet50)\n"
          f"text queries, one at a time: {c['text_queries_per_s']:.1f}/s; texts embedded in a batch of 64: "
          f"{c['texts_per_s_batch64']:.1f}/s (precision {c['resolved_precision']}, {device})", flush=True)
    return out


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
    ap.add_argument("--processes", action="store_true",
                    help="(c) decodes in worker processes (ImageSearchIndex(processes=True)); --configs "
                    "variants choose for themselves with the p flag")
    ap.add_argument("--skip-tutorial", action="store_true", help="skip (a)")
    ap.add_argument("--skip-ceiling", action="store_true", help="skip (b) and its sweep")
    ap.add_argument("--make-large", type=Path, default=None,
                    help="write ~12 MP JPEGs made from the --images used into this folder (files already "
                    "there are kept) and use it as --large")
    ap.add_argument("--large", type=Path, default=None,
                    help="a folder of camera-size JPEGs (e.g. made with --make-large): adds (c) with the "
                    "first --precision on them, in the same rounds, and the ratio to (c) on --images")
    ap.add_argument("--memory-stream", type=int, default=0, metavar="M",
                    help="then add_many M images (the --images cycled, distinct ids) with the first "
                    "--precision and report RSS along the stream")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda; for (a), (b), (c)")
    ap.add_argument("--copies", type=int, default=1,
                    help="hard-link every image this many times under distinct paths (distinct ids), for "
                    "GPU machines that embed --n images faster than they can be timed")
    ap.add_argument("--tutorial-n", type=int, default=None,
                    help="run (a) on at most this many images per round (it is the slowest by far)")
    ap.add_argument("--configs", default="",
                    help="extra (c) variants with the first --precision, comma list of "
                    "CHUNK/MODEL_BATCH/WORKERS[/FLAGS] (e.g. 256/128/16/pe); 0 keeps a default; flags: p "
                    "decode in processes (default: threads), e: no CUDA graphs, 1: one CPU stream (streams=1), o: no overlap of consecutive chunks on the CPU streams")
    ap.add_argument("--model", choices=MODELS, default="resnet50",
                    help="the model of (b) and (c) ((a) is always the tutorial's ResNet50)")
    ap.add_argument("--onnx", default="",
                    help="extra (c) variants with OnnxEmbedder around the same model: comma list of "
                    "fp32, int8 (int8 calibrated on the first 32 images)")
    ap.add_argument("--decode-ceiling", action="store_true",
                    help="add (d): read + hash + decode + resize + crop with no model, in add_many's worker "
                    "threads and in one process per CPU")
    ap.add_argument("--gpu-decode", nargs="?", const="cuda", choices=["cuda", "cpu-twin"], default=None,
                    help="add (e): add_many with decode='gpu' and the GPU decode ceiling (CUDA only; "
                    "recorded as skipped otherwise); =cpu-twin runs the same code with decode_jpeg on the "
                    "CPU, a dry run of this script")
    ap.add_argument("--clip", action="store_true",
                    help="only the CLIP section: add_many img/s of ResNet50 and of CLIP --clip-model side by side "
                    "(random weights), and CLIP text queries/s (#17)")
    ap.add_argument("--clip-model", default="ViT-B-32", help="the open_clip model of --clip (default ViT-B-32)")
    ap.add_argument("--json", type=Path, default=None, help="where to write results "
                    "(default benchmarks/results/embed_throughput-<folder>.json)")
    args = ap.parse_args()

    paths = list_images(args.images, args.n)
    if args.make_large is not None:
        make_large(paths, args.make_large)
        args.large = args.make_large
    large = list_images(args.large, args.n) if args.large is not None else []
    links = Path(tempfile.mkdtemp(prefix="lookalike-copies-"))
    paths = with_copies(paths, args.copies, links / "small")
    large = with_copies(large, args.copies, links / "large")
    for p in paths + large:  # warm the page cache so every variant reads from memory
        p.read_bytes()
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device

    mean_bytes = float(np.mean([p.stat().st_size for p in paths]))
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "images": str(args.images),
        "n": len(paths), "copies": args.copies, "rounds": args.rounds, "mean_file_bytes": mean_bytes,
        "device": device,
        "machine": {"cpus": os.cpu_count(), "native_bf16": cpu_has_native_bf16(),
                    "cpu_model": describe_cpu().model, "cpu_bf16_class": describe_cpu().bf16_class,
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "cuda": torch.cuda.is_available(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "loadavg_start": os.getloadavg()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(f"{len(paths)} images from {results['images']} (mean {mean_bytes / 1e3:.0f} kB), "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"CPU {describe_cpu().model!r} (bf16 class: {describe_cpu().bf16_class}), load average {os.getloadavg()[0]:.1f}", flush=True)
    if args.clip:
        results["clip"] = clip_section(paths, args, device)
        out = args.json or Path(__file__).parent / "results" / f"embed_throughput-clip-{Path(args.images).name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {out}")
        return
    with tempfile.TemporaryDirectory(prefix="lookalike-bench-") as tmp:
        store_dir = Path(tmp)
        variants: dict[str, Any] = {}
        if not args.skip_tutorial:
            variants["a_tutorial"] = Tutorial(store_dir, device, args.tutorial_n)
            variants["a_tutorial"].extract_features(paths[0])  # warm-up
        if not args.skip_ceiling:
            ceiling = Ceiling(device, args.model)
            if device == "cpu":
                precisions = ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"]
                sweep = ceiling.sweep([8, 16, 32], precisions, (1, 2) if torch.get_num_threads() >= 2 else (1,))
            else:
                sweep = ceiling.sweep([64, 128, 256], ["fp16", "bf16"])
            variants["b_ceiling"] = ceiling
        build_s: dict[str, float] = {}
        for precision in args.precision.split(","):
            started = time.perf_counter()  # build + warm-up (+ the calibration of "auto" on CPU)
            variants[f"c_add_many_{precision}"] = AddMany(store_dir, precision, args.batch, args.workers,
                                                          args.model_batch, device, args.processes,
                                                          model=args.model)
            build_s[f"c_add_many_{precision}"] = time.perf_counter() - started
        first_precision = args.precision.split(",")[0]
        first_c = f"c_add_many_{first_precision}"
        for config in filter(None, args.configs.split(",")):
            chunk, model_batch, workers, *kind = config.split("/")
            flags = kind[0] if kind else ""
            processes = "p" in flags
            variants[f"{first_c}_c{chunk}_m{model_batch}_w{workers}{flags}"] = AddMany(
                store_dir, first_precision, int(chunk) or args.batch, int(workers) or args.workers,
                int(model_batch) or args.model_batch, device, processes, cuda_graphs="e" not in flags,
                model=args.model, streams=1 if "1" in flags else None, overlap="o" not in flags)
        for quantize in filter(None, args.onnx.split(",")):
            variants[f"c_add_many_onnx_{quantize}"] = AddMany(
                store_dir, "fp32", args.batch, args.workers, args.model_batch, "cpu", model=args.model,
                onnx=quantize, calibration=paths[:32])
            print(f"  (c) onnx {quantize}: export{' + quantization' if quantize != 'fp32' else ''} "
                  f"{variants[f'c_add_many_onnx_{quantize}'].onnx_build_s:.1f} s", flush=True)
        if args.decode_ceiling:
            workers = args.workers or default_workers()
            variants["d_decode_threads"] = DecodeCeiling(workers, processes=False)
            variants["d_decode_processes"] = DecodeCeiling(workers, processes=True)
        if args.gpu_decode:
            add_gpu_decode(variants, results, args, store_dir, device, first_precision)
        if large:
            variants[first_c + "_large"] = variants[first_c]
            if args.decode_ceiling:
                variants["d_decode_processes_large"] = variants["d_decode_processes"]
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
                cpu_ms[key].append(1000 * used / getattr(variant, "last_n", len(part)))
                summary = mon.summary()
                start_rss.setdefault(key, summary["rss_start_mib"])
                peaks[key].append(summary["rss_peak_mib"])
                print(f"  round {r + 1}/{args.rounds} {key}: {rates[key][-1]:.1f} img/s, "
                      f"{cpu_ms[key][-1]:.2f} CPU-ms/img, peak RSS {summary['rss_peak_mib']:.0f} MiB, "
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
                row.update(precision=ceiling.precision, batch=ceiling.batch, streams=ceiling.streams, sweep=sweep)
            if key.startswith("c_"):
                emb = variant.embedder
                if key in build_s:
                    row["build_and_warm_up_s"] = build_s[key]
                if key != "c_add_many_fp32" and "c_add_many_fp32" in rates:  # per round, same minute
                    row["ratio_over_fp32_rounds"] = [c / b for c, b in zip(rates[key], rates["c_add_many_fp32"])]
                row.update(resolved_precision=getattr(emb, "precision", None) or f"onnx-{emb.quantize or 'fp32'}",
                           workers=variant.resolved_workers, batch=variant.batch, model_batch=emb.batch_size,
                           streams=getattr(emb, "streams", None),
                           device=str(getattr(emb, "device", "cpu")), processes=variant.used_processes,
                           cuda_graphs=getattr(emb, "cuda_graphs", False), model=args.model)
                if hasattr(variant, "onnx_build_s"):  # and its speed-up over torch, round by round
                    row["onnx_build_s"] = variant.onnx_build_s
                    row["ratio_over_torch"] = float(np.median(
                        [c / b for c, b in zip(rates[key], rates[first_c])]))
                decode = "d_decode_processes" + ("_large" if key.endswith("_large") else "")
                for base, name in (("a_tutorial", "ratio_c_over_a"), ("b_ceiling", "ratio_c_over_b"),
                                   (decode, "ratio_c_over_d")):
                    if base in rates:  # ratio per round (same minute of machine noise), then median
                        row[name] = float(np.median([c / b for c, b in zip(rates[key], rates[base])]))
                if key.endswith("_large"):
                    row["images"] = str(args.large)
                    row["mean_file_bytes"] = float(np.mean([p.stat().st_size for p in large]))
                    row["ratio_large_over_small"] = float(np.median(
                        [c / b for c, b in zip(rates[key], rates[first_c])]))
            if key == "e_add_many_gpu_decode":
                row.update(files_taken_by_gpu_last_round=variant.taken, files_left_to_pillow_last_round=variant.declined,
                           ratio_gpu_over_cpu_decode=float(np.median(
                               [c / b for c, b in zip(rates[key], rates[first_c])])))
                if "b_ceiling" in rates:
                    row["ratio_c_over_b"] = float(np.median([c / b for c, b in zip(rates[key], rates["b_ceiling"])]))
            results[key] = row
        if args.memory_stream and "e_add_many_gpu_decode" in variants:
            got = gpu_memory_stream(variants["e_add_many_gpu_decode"], paths, args.memory_stream)
            results["e_memory_stream_gpu_decode"] = got
            print(f"memory stream (GPU decode) of {got['images']} images: {got['img_per_s']:.1f} img/s, RSS at 10% "
                  f"{got['rss_at_10pct_mib']:.0f} MiB, max after {got['rss_max_after_10pct_mib']:.0f} MiB; GPU "
                  f"allocated at 10% {got['gpu_allocated_at_10pct_mib']:.0f} MiB, max after "
                  f"{got['gpu_allocated_max_after_10pct_mib']:.0f} MiB", flush=True)
        if args.memory_stream:
            got = memory_stream(variants[first_c], paths, args.memory_stream)
            results["memory_stream"] = got
            print(f"memory stream of {got['images']} images: {got['img_per_s']:.1f} img/s, RSS at 10% "
                  f"{got['rss_at_10pct_mib']:.0f} MiB, max after {got['rss_max_after_10pct_mib']:.0f} MiB, "
                  f"peak {got['rss_peak_mib']:.0f} MiB", flush=True)
    results["machine"]["loadavg_end"] = os.getloadavg()
    if device.startswith("cuda"):
        results["machine"]["gpu_peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20

    print(f"\n{'':40s}{'img/s':>8s}{'best':>8s}{'CPU-ms/img':>11s}{'peak RSS MiB':>14s}"
          f"{'(c)/(a)':>9s}{'(c)/(b)':>9s}{'(c)/(d)':>9s}")
    for key, row in results.items():
        if not isinstance(row, dict) or "img_per_s_best" not in row:
            continue
        ratios = [row.get(f"ratio_c_over_{x}") for x in "abd"]
        if "ratio_large_over_small" in row:
            key = f"{key} ({row['ratio_large_over_small']:.2f}x small)"
        print(f"{key:40s}{row['img_per_s']:8.1f}{row['img_per_s_best']:8.1f}{row['cpu_ms_per_img']:11.2f}"
              f"{row['rss_peak_mib']:14.0f}" + "".join("" if r is None else f"{r:9.2f}" for r in ratios))
    print("(median over rounds; ratios are medians of per-round ratios"
          + ("" if args.skip_ceiling else
             f"; (b) = {ceiling.precision} batch {ceiling.batch}, {ceiling.streams} stream(s)") + ")")
    print_gpu_decode(results, first_c)
    out = args.json or Path(__file__).parent / "results" / f"embed_throughput-{Path(results['images']).name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
