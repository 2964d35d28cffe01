"""The torch runner: :class:`TorchEmbedder` runs a :class:`~lookalike.embedders.spec.ModelSpec`
with torch (eager, CPU streams, CUDA graphs).

This module imports without torch (the CLI and ``registry`` import it); torch itself is
imported once, by :func:`import_torch` when a model loads, and bound to the module-level
name ``torch`` that the running code uses.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, overload

import numpy as np
from numpy.typing import NDArray

from .._checks import positive_int
from ..errors import ConfigurationError, MissingDependencyError
from ..preprocess import MAX_STRETCH, ImagePreprocess
from . import _calibrate
from .spec import ModelSpec

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["MAX_STRETCH", "ForwardStreams", "ImagePreprocess", "ModelSpec", "PendingVectors", "TorchEmbedder",
           "cpu_has_native_bf16", "import_torch"]

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DECODES = ("cpu", "gpu", "auto")  #: where add_many decodes JPEGs for this model (docs/performance.md)
CPU_BATCH_SIZE = 16  #: default forward batch on CPU (docs/performance.md, "Batch size")
STREAM_BATCH_SIZE = 8  #: default forward batch per CPU stream (one thread each on 2 cores)
CUDA_BATCH_SIZE = 64  #: default forward batch on CUDA
#: at most this many images per stream in the passes that choose "auto" on CPU (add_many's
#: batch costs seconds more a load; a smaller batch only favours fp32, docs/performance.md)
CALIBRATION_BATCH = 4

#: torch, once a model has loaded (or :class:`ForwardStreams` started): bound by
#: :func:`import_torch`, so that ``import lookalike`` never imports it.
torch: Any = None


def import_torch(feature: str, extras: Sequence[str] = ("torch",)) -> Any:
    """Import torch, or raise :class:`MissingDependencyError` naming ``extras``: every
    extra the feature needs (e.g. ``("offline",)``, which brings torch too)."""
    global torch
    try:
        import torch as module
    except ImportError as exc:
        raise MissingDependencyError("torch", extras[0], feature, also=extras[1:]) from exc
    torch = module
    return module


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True on CPUs with AMX-BF16 or AVX512-BF16 (bf16 matmuls run natively there; whether
    faster than fp32 is another matter: ``precision="auto"`` measures that)."""
    return _calibrate.describe_cpu().native_bf16


class ForwardStreams:
    """Threads that run forward passes side by side on the CPU, each with its share of
    torch's intra-op threads (``torch.get_num_threads() // count``, at least one).

    No thread waits for the other at the end of every operator, and decode threads fill a
    core whenever a stream leaves it (figures: docs/performance.md, "CPU streams"). ``map``
    keeps the order of its inputs.
    """

    def __init__(self, count: int) -> None:
        import_torch("ForwardStreams")
        self.count = count
        self.pid = os.getpid()
        total = torch.get_num_threads()
        self.threads_each = threads_each = max(1, total // count)
        ready = threading.Barrier(count + 1)

        def start() -> None:  # refers to no self: the threads end when the pool is collected
            # torch gives a new thread its count on first use; use it now, or that first
            # use would overwrite the count set here
            torch.get_num_threads()
            torch.set_num_threads(threads_each)
            ready.wait(timeout=60)

        self._pool = ThreadPoolExecutor(count, thread_name_prefix="lookalike-forward", initializer=start)
        for _ in range(count):  # one task each starts all threads now
            self._pool.submit(int)
        ready.wait(timeout=60)
        # set_num_threads also changed the count new threads start with: put it back
        torch.set_num_threads(total)

    def map(self, fn: Callable[[Any], Any], parts: Sequence[Any]) -> list[Any]:
        return list(self._pool.map(fn, parts))

    def submit(self, fn: Callable[[Any], Any], part: Any) -> Future[Any]:
        return self._pool.submit(fn, part)


class PendingVectors:
    """Vectors being embedded on the CPU streams (:meth:`TorchEmbedder.submit_pixels`)."""

    def __init__(self, parts: list[Future[Any]], done: NDArray[np.float32] | None = None) -> None:
        self._parts, self._done = parts, done

    @property
    def in_background(self) -> bool:
        """True while batches of it may still be running on the streams."""
        return self._done is None

    def result(self) -> NDArray[np.float32]:
        """The ``(n, dim)`` vectors; waits for them and re-raises the model's error, if any."""
        if self._done is None:
            self._done = _to_numpy(torch.cat([part.result() for part in self._parts]))
            self._parts = []
        return self._done

    def cancel(self) -> None:
        """Drop the batches that have not started (after an error elsewhere)."""
        for part in self._parts:
            part.cancel()


class TorchEmbedder:
    """The torch runner: a model (a :class:`ModelSpec`, or a module and its preprocessing)
    run by torch as an :class:`~lookalike.Embedder`.

    On CUDA, batches of up to ``batch_size`` images run as a replayed CUDA graph
    (captured on first use per input shape; set ``cuda_graphs = False`` on the instance
    to run eagerly; a module that cannot be captured falls back to eager by itself).

    The module maps a batch ``(n, 3, H, W)`` to features ``(n, ...)``; the features are
    flattened and L2-normalised. ``preprocess`` maps one RGB ``PIL.Image`` to a
    ``(3, H, W)`` tensor.

    Args:
        module: a :class:`ModelSpec` (then ``preprocess``, ``dim``, ``identity`` and
            ``image_size`` come from it and are not passed), or the ``torch.nn.Module``
            (put in eval mode here).
        preprocess: callable ``PIL.Image -> torch.Tensor``.
        dim: length of the flattened features.
        identity: a string that names model, weights and preprocessing; change it
            whenever the vectors would change.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        precision: ``"fp32"`` (default here, since an arbitrary module's tolerance of
            low precision is unknown), ``"bf16"`` (autocast), ``"fp16"`` (autocast,
            CUDA only), or ``"auto"``: fp16 on CUDA; on a CPU with native bf16 (AMX or
            AVX512-BF16) whichever of fp32 and bf16 a few timed forward passes (those
            ``add_many`` runs) find faster (bf16 only when faster by more than 20% on
            both the wall clock and CPU time), cached per CPU, model, torch version,
            threads, streams and batch in the cache directory; else fp32.
            ``$LOOKALIKE_PRECISION`` overrides ``"auto"``; :attr:`precision` holds
            the choice once loaded. The ready-made model embedders
            default to ``"auto"``. Precision is not part of ``identity``: bf16/fp16
            vectors stay within about 0.5% (cosine > 0.99) of fp32 ones, so stores may
            mix them (speed and accuracy: docs/performance.md).
        batch_size: images per forward pass; ``None`` (default): 8 per stream on CPU with
            ``streams`` > 1, 16 with one stream, 64 on CUDA (docs/performance.md).
        streams: CPU only: forward passes that run side by side, each on its own thread
            with ``torch.get_num_threads() // streams`` intra-op threads (see
            :class:`ForwardStreams`). ``None`` (default): 2 when torch has 2 threads or
            more, else 1. Calls of fewer than ``2 * streams`` images (a search query)
            run on the calling thread with all of torch's threads. Ignored on CUDA.
        image_size: the shorter side the preprocessing resizes to; lets large JPEGs be
            decoded at reduced scale. ``None`` disables that.
        decode: where ``add_many`` turns JPEG files into pixels. ``"cpu"`` (default):
            Pillow in the decode threads or processes. ``"gpu"``: on the CUDA device, in
            batches (nvJPEG through ``torchvision.io.decode_jpeg``, then EXIF orientation,
            resize, crop there; :class:`~lookalike.embedders._jpeg.JpegBatchDecoder`);
            other files (PNG, CMYK, progressive, corrupt, very thin...) still go through
            Pillow, file by file. Needs a CUDA device and an
            :class:`~lookalike.preprocess.ImagePreprocess` with a bilinear or bicubic
            resize. ``"auto"``: ``"gpu"`` where that runs, else ``"cpu"``. Queries
            (``search``, ``embed``) always decode with Pillow. Not part of ``identity``
            (docs/performance.md, "GPU JPEG decode": the measured tolerance).

    >>> emb = TorchEmbedder(module, preprocess, dim=1280, identity="my-model:v1")  # doctest: +SKIP
    >>> emb = TorchEmbedder(ModelSpec("my-model:v1", 1280, preprocess, build), device="cpu")  # doctest: +SKIP
    """

    cuda_graphs: bool = True  #: replay the forward pass as a CUDA graph on GPUs

    @overload
    def __init__(
        self, module: ModelSpec, *, device: str = ..., precision: str = ...,
        batch_size: int | None = ..., streams: int | None = ..., decode: str = ...,
    ) -> None: ...
    @overload
    def __init__(
        self, module: Any, preprocess: Callable[[Image.Image], Any], *, dim: int, identity: str,
        device: str = ..., precision: str = ..., batch_size: int | None = ...,
        image_size: int | None = ..., streams: int | None = ..., decode: str = ...,
    ) -> None: ...
    def __init__(
        self,
        module: Any,
        preprocess: Callable[[Image.Image], Any] | None = None,
        *,
        dim: int | None = None,
        identity: str | None = None,
        device: str = "auto",
        precision: str = "fp32",
        batch_size: int | None = None,
        image_size: int | None = None,
        streams: int | None = None,
        decode: str = "cpu",
    ) -> None:
        if isinstance(module, ModelSpec):
            if preprocess is not None or dim is not None or identity is not None or image_size is not None:
                raise ConfigurationError("TorchEmbedder(spec) takes preprocess, dim, identity and image_size "
                                         "from the spec; pass them to ModelSpec instead")
            spec = module
        else:
            if preprocess is None:
                raise ConfigurationError("TorchEmbedder(module, preprocess, ...) needs the preprocess callable")
            spec = ModelSpec(identity=identity, dim=dim, preprocess=preprocess,  # type: ignore[arg-type]
                             build=functools.partial(_given, module), image_size=image_size)
        if precision not in PRECISIONS:
            raise ConfigurationError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        positive_int(batch_size, "batch_size", optional=True)
        positive_int(streams, "streams", optional=True)
        if decode not in DECODES:
            raise ConfigurationError(f"decode must be one of {DECODES}, got {decode!r}")
        if decode == "gpu" and not isinstance(spec.preprocess, ImagePreprocess):
            raise ConfigurationError("decode='gpu' needs the model's preprocess to be an ImagePreprocess "
                                     "recipe (resize, crop, normalise); this one is a custom callable")
        self.spec = spec
        self._device_name = device
        self._precision = precision
        self._batch_size_arg = batch_size
        self.batch_size: int = batch_size or CPU_BATCH_SIZE  # resolved per device when loaded
        self.image_size = spec.image_size
        self._preprocess = spec.preprocess
        self._module: Any = None  # the built module, on its device, once loaded
        self._ready = False
        self._load_error: BaseException | None = None
        self._load_lock = threading.Lock()
        self._graphs: dict[Any, tuple[Any, Any, Any] | None] = {}
        self._graph_lock = threading.Lock()
        self._streams_arg = streams
        self.streams: int = 1  # resolved when loaded
        self._forward_streams: ForwardStreams | None = None
        self._decode = decode
        #: what decodes JPEGs on the device for ``add_many`` once loaded (``decode`` resolved
        #: to ``"gpu"``), else ``None``; any object with its call signature works
        self.jpeg_decoder: Callable[[Sequence[bytes]], list[Any]] | None = None

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def identity(self) -> str:
        return self.spec.identity

    @property
    def extras(self) -> tuple[str, ...]:
        """The ``lookalike[...]`` extras this embedder's model needs (install hints name them all)."""
        return self.spec.extras

    def __repr__(self) -> str:
        precision = self.precision if self._ready else self._precision  # the choice, once loaded
        return f"{type(self).__name__}(identity={self.identity!r}, device={self._device_name!r}, precision={precision!r})"

    def load(self) -> None:
        """Load the model now (it is otherwise loaded on first use); thread-safe.

        The model loads once per embedder: the first caller loads it while any others
        wait. A load that failed is not retried: every later call raises the same
        :class:`~lookalike.errors.ModelLoadError` (or other error) at once, so a batch of
        images makes one download attempt, not one per image. Build a new embedder to retry.
        """
        self._ensure_ready()

    def _ensure_ready(self) -> None:
        if self._ready:
            return
        with self._load_lock:
            if self._ready:
                return
            if self._load_error is not None:
                raise self._load_error
            try:
                self._load_now()
            except Exception as exc:
                self._load_error = exc
                raise

    def _load_now(self) -> None:
        import_torch(type(self).__name__, self.extras)
        module = self.spec.build()
        self.device = self._resolve_device()
        self.precision = self._resolve_precision()
        if self.device.type == "cpu":
            self.streams = self._streams_arg or (2 if torch.get_num_threads() >= 2 else 1)
        if self._batch_size_arg is None:
            self.batch_size = (CUDA_BATCH_SIZE if self.device.type == "cuda"
                               else STREAM_BATCH_SIZE if self.streams > 1 else CPU_BATCH_SIZE)
        module = module.eval().to(self.device)
        if self.device.type == "cpu" or self.device.type == "cuda":
            module = module.to(memory_format=torch.channels_last)
        self._module = module
        self.jpeg_decoder = self._jpeg_decoder()
        if self.precision == "auto":  # only on CPU: measured on this model, or cached
            run, images = self._calibration_pass()
            self.precision = _calibrate.choose_cpu_precision(
                run, cpu=_calibrate.describe_cpu(), identity=self.identity,
                torch_version=str(torch.__version__), threads=torch.get_num_threads(),
                streams=self.streams, batch=self.batch_size, images=images)
        self._ready = True

    def _calibration_pass(self) -> tuple[Callable[[str], None], int]:
        """What ``precision="auto"`` times on the CPU, and how many images it embeds: the
        pass ``add_many`` runs, in the given precision: one forward pass per stream, side by
        side on the embedder's streams, each in inference mode on its own thread
        (:meth:`_inference`; inference mode is per thread, and CLIP's bf16 pass is 10x
        slower in it than outside: docs/performance.md), of ``batch_size`` images each, or
        :data:`CALIBRATION_BATCH` where fewer."""
        n = min(self.batch_size, CALIBRATION_BATCH)
        batch: Any = None
        streams: ForwardStreams | None = None

        def run(precision: str) -> None:
            nonlocal batch, streams
            if batch is None:
                batch = self._sample_batch(n)
                if self.streams > 1:
                    streams = self._forward_streams = ForwardStreams(self.streams)
            saved, self.precision = self.precision, precision
            try:
                if streams is None:
                    self._inference(batch)
                else:
                    streams.map(self._inference, [batch] * streams.count)
            finally:
                self.precision = saved
        return run, n * (self.streams if self.streams > 1 else 1)

    def _sample_batch(self, n: int) -> Any:
        """``n`` copies of a noise image, preprocessed: the model's input shape."""
        from PIL import Image

        rng = np.random.default_rng(0)
        image = Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), "RGB")
        if isinstance(self._preprocess, ImagePreprocess):
            host = torch.from_numpy(np.stack([self._preprocess.pixels(image)] * n))
            batch = self._preprocess.normalize(host.to(self.device))
        else:
            batch = torch.stack([self._preprocess(image)] * n)
        return batch.to(self.device).contiguous(memory_format=torch.channels_last)

    def _resolve_device(self) -> Any:
        name = self._device_name
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            device = torch.device(name)
        except RuntimeError as exc:
            raise ConfigurationError(f"unknown device {self._device_name!r}: {exc}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigurationError(f"device {self._device_name!r} asked for, but CUDA is not available")
        return device

    def _jpeg_decoder(self) -> Callable[[Sequence[bytes]], list[Any]] | None:
        """The device's JPEG decoder when ``decode`` resolves to ``"gpu"`` on this device."""
        from ._jpeg import JpegBatchDecoder, gpu_decode_problem

        if self._decode == "cpu":
            return None
        problem = ("the model runs on the CPU; decode='gpu' needs a CUDA device"
                   if self.device.type != "cuda" else gpu_decode_problem(self._preprocess))
        if problem is not None:
            if self._decode == "gpu":
                raise ConfigurationError(f"decode='gpu' cannot run: {problem}")
            return None  # auto: the CPU path
        assert isinstance(self._preprocess, ImagePreprocess)
        return JpegBatchDecoder(self._preprocess, self.device, draft_size=self.image_size)

    def decodes_jpeg(self) -> bool:
        """Whether ``add_many`` hands this model JPEG bytes (:meth:`jpeg_pixels`). With
        ``decode="cpu"`` answers at once; otherwise loads the model (the device decides)."""
        if self._decode == "cpu" and self.jpeg_decoder is None:
            return False
        self._ensure_ready()
        if self.jpeg_decoder is not None and self.device.type == "cuda" and self.cuda_graphs:
            with self._graph_lock:
                captured = bool(self._graphs)
            if not captured:  # capture the CUDA graph now, before the decoder's stream runs beside it
                self._forward(self._sample_batch(1))
        return self.jpeg_decoder is not None

    def jpeg_pixels(self, encoded: Sequence[bytes]) -> list[Any | None]:
        """For each JPEG file's bytes, its pixels made on the model's device (what
        :meth:`embed_pixels` takes, like :meth:`pixels`), or ``None`` for a file left to
        the CPU path (not a plain JPEG, or one the device could not decode)."""
        self._ensure_ready()
        if self.jpeg_decoder is None:
            return [None] * len(encoded)
        return self.jpeg_decoder(encoded)

    def _resolve_precision(self) -> str:
        """The precision to run; ``"auto"`` on CPU is left for :meth:`_load_now` to
        measure once the model is built."""
        p = self._precision
        if p == "auto":
            p = _calibrate.env_precision(PRECISIONS) or "auto"
        if p == "auto":
            if self.device.type == "cuda":
                return "fp16"
            return "auto"
        if p == "fp16" and self.device.type == "cpu":
            raise ConfigurationError("precision='fp16' needs a CUDA device; use 'bf16' on CPU")
        return p

    def preprocess(self, image: Image.Image) -> Any:
        """Turn one RGB image into the model's input tensor ``(3, H, W)`` (thread-safe)."""
        self._ensure_ready()
        return self._preprocess(image)

    def pixels(self, image: Image.Image) -> Any:
        """The per-image half of the preprocessing, for decode worker threads (thread-safe).

        With the built-in :class:`ImagePreprocess` this is Pillow resize + crop to a
        ``(crop, crop, 3)`` uint8 array (no torch, GIL mostly released); with a custom
        ``preprocess`` callable it is that callable's tensor. Pass a list of these to
        :meth:`embed_pixels`. Loads nothing: the preprocessing comes from the spec, so
        decode threads, processes and Ray tasks never build the model or read its weights.
        """
        if isinstance(self._preprocess, ImagePreprocess):
            return self._preprocess.pixels(image)
        return self._preprocess(image)

    def pixel_function(self) -> Callable[[Image.Image], Any] | None:
        """:meth:`pixels` as a picklable callable that needs no torch, for decode worker
        processes; ``None`` when the preprocessing is a custom callable. Loads nothing."""
        if isinstance(self._preprocess, ImagePreprocess):
            return self._preprocess.pixels
        return None

    def embed_pixels(self, items: Sequence[Any]) -> NDArray[np.float32]:
        """Embed the outputs of :meth:`pixels` (in batches of ``batch_size``)."""
        if not len(items):
            return np.zeros((0, self.dim), dtype=np.float32)
        self._ensure_ready()
        streams = self._streams_for(len(items))
        if streams is not None:
            return self._submit(items, streams).result()
        # Results stay on the device until every batch is queued: on CUDA the host waits
        # once per call, not once per batch, so the GPU is never left idle while Python
        # launches the next forward pass.
        outputs = [self._embed_batch(items[start : start + self.batch_size])
                   for start in range(0, len(items), self.batch_size)]
        return _to_numpy(torch.cat(outputs) if len(outputs) > 1 else outputs[0])

    def submit_pixels(self, items: Sequence[Any]) -> PendingVectors:
        """:meth:`embed_pixels` without waiting: on the CPU streams the batches queue
        behind those of earlier calls, so a caller that submits its next call before
        collecting this one keeps every stream busy across calls. Elsewhere (CUDA, one
        stream, a small call) it embeds at once."""
        self._ensure_ready()
        streams = self._streams_for(len(items))
        if streams is None:
            return PendingVectors([], self.embed_pixels(items))
        return self._submit(items, streams)

    def _submit(self, items: Sequence[Any], streams: ForwardStreams) -> PendingVectors:
        size = self._stream_batch(len(items), streams)
        return PendingVectors([streams.submit(self._embed_batch, items[start : start + size])
                               for start in range(0, len(items), size)])

    def _stream_batch(self, n: int, streams: ForwardStreams) -> int:
        """Images per forward pass when ``n`` are split across ``streams``: at most
        ``batch_size``, and small calls split evenly so every stream gets some."""
        return min(self.batch_size, -(-n // streams.count))

    def _embed_batch(self, chunk: Sequence[Any]) -> Any:
        if isinstance(self._preprocess, ImagePreprocess) and not all(isinstance(a, np.ndarray) for a in chunk) \
                and all(isinstance(a, np.ndarray) or _is_device_pixels(a) for a in chunk):
            # some pixels came from the device's JPEG decoder (jpeg_pixels), already there
            return self._forward(self._preprocess.normalize(self._mixed_batch(chunk)))
        if isinstance(self._preprocess, ImagePreprocess) and all(isinstance(a, np.ndarray) for a in chunk):
            pinned = self.device.type == "cuda"
            host = torch.empty((len(chunk), *chunk[0].shape), dtype=torch.uint8, pin_memory=pinned)
            np.stack(chunk, out=host.numpy())
            # uint8 crosses to the device (4x fewer bytes than float), asynchronously
            # from pinned memory on CUDA; the float maths then runs on the device.
            batch = self._preprocess.normalize(host.to(self.device, non_blocking=True))
        else:
            batch = torch.stack(list(chunk))
        return self._forward(batch)

    def _mixed_batch(self, chunk: Sequence[Any]) -> Any:
        """``(n, crop, crop, 3)`` uint8 on the device, in order, from host arrays and device tensors."""
        on_device = [i for i, a in enumerate(chunk) if not isinstance(a, np.ndarray)]
        if self.device.type == "cuda":
            stream = torch.cuda.current_stream(self.device)
            for i in on_device:  # made on the decoder's stream: not reused before this one reads it
                chunk[i].record_stream(stream)
        device_part = torch.stack([chunk[i] for i in on_device]).to(self.device)
        if len(on_device) == len(chunk):
            return device_part
        on_host = [i for i, a in enumerate(chunk) if isinstance(a, np.ndarray)]
        host = torch.empty((len(on_host), *chunk[on_host[0]].shape), dtype=torch.uint8,
                           pin_memory=self.device.type == "cuda")
        np.stack([chunk[i] for i in on_host], out=host.numpy())
        batch = torch.empty((len(chunk), *device_part.shape[1:]), dtype=torch.uint8, device=self.device)
        batch.index_copy_(0, torch.tensor(on_device, device=self.device), device_part)
        batch.index_copy_(0, torch.tensor(on_host, device=self.device), host.to(self.device, non_blocking=True))
        return batch

    def _streams_for(self, n: int) -> ForwardStreams | None:
        """The CPU streams for a call of ``n`` images, or ``None`` to run on this thread."""
        if self.streams < 2 or n < 2 * self.streams:
            return None
        streams = self._forward_streams
        if streams is None or streams.pid != os.getpid():  # none yet, or a forked child's copy
            with self._load_lock:
                streams = self._forward_streams
                if streams is None or streams.pid != os.getpid():
                    streams = self._forward_streams = ForwardStreams(self.streams)
        return streams

    # The names of lookalike 0.1, kept working.
    prepare = pixels
    process_prepare = pixel_function
    embed_prepared = embed_pixels
    submit_prepared = submit_pixels

    def embed(self, images: Sequence[Image.Image]) -> NDArray[np.float32]:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed_pixels([self.pixels(img) for img in images])

    def embed_tensor(self, batch: Any) -> NDArray[np.float32]:
        """Embed an already preprocessed batch ``(n, 3, H, W)`` (split across the CPU
        streams when it is large enough)."""
        self._ensure_ready()
        streams = self._streams_for(len(batch))
        if streams is None:
            return _to_numpy(self._forward(batch))
        parts = list(batch.split(self._stream_batch(len(batch), streams)))
        return _to_numpy(torch.cat(streams.map(self._forward, parts)))

    def _forward(self, batch: Any) -> Any:
        """L2-normalised float32 features ``(n, dim)`` of a preprocessed batch, on the device."""
        self._ensure_ready()
        if self.device.type == "cuda" and batch.device.type == "cpu" and not batch.is_pinned():
            batch = batch.pin_memory()  # page-locked, so the copy below is truly asynchronous
        batch = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        if self.device.type == "cuda" and self.cuda_graphs and batch.shape[0] <= self.batch_size:
            features = self._replay(batch)
            if features is not None:
                return features
        return self._inference(batch)

    def _inference(self, batch: Any) -> Any:
        """:meth:`_eager` in inference mode on this thread: every forward pass but the CUDA
        graphs' runs this, the calibration of ``precision="auto"`` included."""
        with torch.inference_mode():
            return self._eager(batch)

    def _eager(self, batch: Any, cache_enabled: bool = True) -> Any:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        if dtype is not None:
            with torch.autocast(self.device.type, dtype=dtype, cache_enabled=cache_enabled):
                features = self._module(batch)
        else:
            features = self._module(batch)
        features = features.float().flatten(1)
        if features.shape[1] != self.dim:
            raise ConfigurationError(
                f"{self!r} produced {features.shape[1]}-d features, but dim={self.dim}"
            )
        return torch.nn.functional.normalize(features, dim=1)

    def _replay(self, batch: Any) -> Any:
        """The forward pass replayed from a CUDA graph captured for ``batch_size`` images
        (one launch instead of hundreds, so decode threads holding the GIL cannot stall
        the GPU between kernels); ``None`` where capture failed (then eager is used)."""
        key = (tuple(batch.shape[1:]), batch.dtype)
        with self._graph_lock, torch.inference_mode():
            if key not in self._graphs:
                self._graphs[key] = self._capture(batch)
            captured = self._graphs[key]
            if captured is None:
                return None
            static_in, static_out, graph = captured
            n = batch.shape[0]
            static_in[:n].copy_(batch)  # rows past n hold stale images; their outputs are dropped
            graph.replay()
            return static_out[:n].clone()

    def _capture(self, batch: Any) -> tuple[Any, Any, Any] | None:
        try:
            static_in = torch.zeros((self.batch_size, *batch.shape[1:]), dtype=batch.dtype,
                                    device=self.device).contiguous(memory_format=torch.channels_last)
            static_in[: batch.shape[0]].copy_(batch)
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(3):  # warm up (cuDNN picks its kernels) outside the capture
                    self._eager(static_in, cache_enabled=False)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
                static_out = self._eager(static_in, cache_enabled=False)
            return static_in, static_out, graph
        except ConfigurationError:
            raise
        except Exception as exc:  # any capture failure: eager still works
            log.warning("lookalike: CUDA graph capture failed for %r (%s); running eagerly", self, exc)
            return None


def _is_device_pixels(item: Any) -> bool:
    """A ``(H, W, 3)`` uint8 torch tensor: pixels made by the device's JPEG decoder."""
    return (torch is not None and isinstance(item, torch.Tensor) and item.dtype == torch.uint8
            and item.dim() == 3 and item.shape[-1] == 3)


def _to_numpy(features: Any) -> NDArray[np.float32]:
    return np.ascontiguousarray(features.cpu().numpy(), dtype=np.float32)


def _given(module: Any) -> Any:
    """The ``build`` of a spec made from a module the caller already built."""
    return module
