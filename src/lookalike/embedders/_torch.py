"""TorchEmbedder: any torch module plus its preprocessing as an :class:`~lookalike.Embedder`."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ConfigurationError, MissingDependencyError

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = ["TorchEmbedder", "cpu_has_native_bf16", "import_torch"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def import_torch(feature: str) -> Any:
    """Import torch, or raise :class:`MissingDependencyError` naming the extra."""
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError("torch", "torch", feature) from exc
    return torch


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True on CPUs with AMX-BF16 or AVX512-BF16 (bf16 matmuls run natively there)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"amx_bf16", "avx512_bf16"} & flags)
    except OSError:
        pass
    return False


class TorchEmbedder:
    """Wrap a torch module and a preprocessing callable as an embedder.

    The module maps a batch ``(n, 3, H, W)`` to features ``(n, ...)``; the features are
    flattened and L2-normalised. ``preprocess`` maps one RGB ``PIL.Image`` to a
    ``(3, H, W)`` tensor.

    Args:
        module: the ``torch.nn.Module`` (put in eval mode here).
        preprocess: callable ``PIL.Image -> torch.Tensor``.
        dim: length of the flattened features.
        identity: a string that names model, weights and preprocessing; change it
            whenever the vectors would change.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        precision: ``"fp32"`` (default), ``"bf16"``, ``"fp16"`` (CUDA), or ``"auto"``:
            bf16 on CPUs with native bf16 (AMX/AVX512-BF16), fp16 on CUDA, else fp32.
        batch_size: images per forward pass.
        image_size: the shorter side the preprocessing resizes to; lets large JPEGs be
            decoded at reduced scale. ``None`` disables that.

    >>> emb = TorchEmbedder(module, preprocess, dim=1280, identity="my-model:v1")  # doctest: +SKIP
    """

    def __init__(
        self,
        module: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        *,
        dim: int,
        identity: str,
        device: str = "auto",
        precision: str = "fp32",
        batch_size: int = 32,
        image_size: int | None = None,
    ) -> None:
        self._init_common(dim=dim, identity=identity, device=device, precision=precision,
                          batch_size=batch_size, image_size=image_size)
        self._module: Any = module
        self._preprocess: Callable[[Image.Image], Any] | None = preprocess

    def _init_common(
        self, *, dim: int, identity: str, device: str, precision: str, batch_size: int,
        image_size: int | None,
    ) -> None:
        if not isinstance(dim, int) or dim < 1:
            raise ConfigurationError(f"dim must be a positive int, got {dim!r}")
        if not identity:
            raise ConfigurationError("identity must be a non-empty string")
        if precision not in PRECISIONS:
            raise ConfigurationError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size must be a positive int, got {batch_size!r}")
        self._dim = dim
        self._identity = identity
        self._device_name = device
        self._precision = precision
        self.batch_size = batch_size
        self.image_size = image_size
        self._module = None
        self._preprocess = None
        self._ready = False
        self._load_lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def identity(self) -> str:
        return self._identity

    def __repr__(self) -> str:
        return f"{type(self).__name__}(identity={self._identity!r}, device={self._device_name!r}, precision={self._precision!r})"

    # Subclasses that build their module lazily override this.
    def _load(self) -> tuple[Any, Callable[[Image.Image], Any]]:
        assert self._module is not None and self._preprocess is not None
        return self._module, self._preprocess

    def _ensure_ready(self) -> None:
        if self._ready:
            return
        with self._load_lock:
            if self._ready:
                return
            torch = import_torch(type(self).__name__)
            module, preprocess = self._load()
            self.device = self._resolve_device(torch)
            self.precision = self._resolve_precision()
            module = module.eval().to(self.device)
            if self.device.type == "cpu" or self.device.type == "cuda":
                module = module.to(memory_format=torch.channels_last)
            self._module, self._preprocess = module, preprocess
            self._ready = True

    def _resolve_device(self, torch: Any) -> Any:
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

    def _resolve_precision(self) -> str:
        p = self._precision
        if p == "auto":
            if self.device.type == "cuda":
                return "fp16"
            return "bf16" if cpu_has_native_bf16() else "fp32"
        if p == "fp16" and self.device.type == "cpu":
            raise ConfigurationError("precision='fp16' needs a CUDA device; use 'bf16' on CPU")
        return p

    def preprocess(self, image: Image.Image) -> Any:
        """Turn one RGB image into the model's input tensor (thread-safe)."""
        self._ensure_ready()
        assert self._preprocess is not None
        return self._preprocess(image)

    def embed(self, images: Sequence[Image.Image]) -> NDArray[np.float32]:
        if not images:
            return np.zeros((0, self._dim), dtype=np.float32)
        self._ensure_ready()
        torch = import_torch(type(self).__name__)
        assert self._preprocess is not None
        outputs = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = torch.stack([self._preprocess(img) for img in chunk])
            outputs.append(self.embed_tensor(batch))
        return np.concatenate(outputs)

    def embed_tensor(self, batch: Any) -> NDArray[np.float32]:
        """Embed an already preprocessed batch ``(n, 3, H, W)``."""
        self._ensure_ready()
        torch = import_torch(type(self).__name__)
        batch = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with torch.inference_mode():
            if dtype is not None:
                with torch.autocast(self.device.type, dtype=dtype):
                    features = self._module(batch)
            else:
                features = self._module(batch)
            features = features.float().flatten(1)
            if features.shape[1] != self._dim:
                raise ConfigurationError(
                    f"{self!r} produced {features.shape[1]}-d features, but dim={self._dim}"
                )
            features = torch.nn.functional.normalize(features, dim=1)
        return np.ascontiguousarray(features.cpu().numpy(), dtype=np.float32)
