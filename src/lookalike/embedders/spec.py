"""What a model is, apart from how it runs: :class:`ModelSpec` (torch-free).

A spec says how to build the model (with its weights), how images become its input, what
its vectors are called (``identity``) and how long they are. Runners take a spec and run
it: :class:`~lookalike.embedders.TorchEmbedder` (torch eager, CPU streams, CUDA graphs)
and :class:`~lookalike.embedders.OnnxEmbedder` (ONNX Runtime, fp32 or int8). timm's
pretrained configs are the model for this split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._checks import positive_int
from ..errors import ConfigurationError
from ..preprocess import ImagePreprocess

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["ModelSpec"]


@dataclass(frozen=True)
class ModelSpec:
    """A model's description: enough to run it, known without loading it.

    Args:
        identity: names model, weights and preprocessing; stores record it, so change it
            whenever the vectors would change (and never otherwise).
        dim: length of the model's flattened features.
        preprocess: one RGB ``PIL.Image`` -> the model's input. An
            :class:`~lookalike.preprocess.ImagePreprocess` (resize, crop, normalise) lets
            ``add_many`` resize in decode threads or processes without torch, and lets
            :class:`~lookalike.embedders.OnnxEmbedder` run the model; any other callable
            returns a ``(3, H, W)`` tensor.
        build: returns the ``torch.nn.Module`` with its weights (features ``(n, ...)`` from
            a batch ``(n, 3, H, W)``). Called by a runner when it loads, not before.
        image_size: the shorter side the preprocessing resizes to (large JPEGs are then
            decoded at a reduced scale); ``None`` disables that.
        extras: the ``lookalike[...]`` extras ``build`` needs (install hints name them all).

    >>> spec = ModelSpec("my-model:v1", 512, imagenet_preprocess(256, 224), build_my_model)  # doctest: +SKIP
    >>> TorchEmbedder(spec, device="cpu")                                                    # doctest: +SKIP
    """

    identity: str
    dim: int
    preprocess: ImagePreprocess | Callable[[Image.Image], Any]
    build: Callable[[], Any]
    image_size: int | None = None
    extras: tuple[str, ...] = ("torch",)

    def __post_init__(self) -> None:
        positive_int(self.dim, "dim")
        if not isinstance(self.identity, str) or not self.identity:
            raise ConfigurationError("identity must be a non-empty string")
        if not callable(self.preprocess):
            raise ConfigurationError(f"preprocess must be callable, got {self.preprocess!r}")
        positive_int(self.image_size, "image_size", optional=True)
