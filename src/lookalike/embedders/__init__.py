"""Embedders: turn images into L2-normalised vectors.

A model is described by a :class:`ModelSpec` (identity, dim, preprocessing, how to build
it) and run by a runner that takes the spec: :class:`TorchEmbedder` (torch) or
:class:`OnnxEmbedder` (ONNX Runtime). ``ResNet50Embedder``, ``TorchvisionEmbedder`` and
``EfficientNetLite0Embedder`` are ready-made specs run by ``TorchEmbedder``.

``ClipEmbedder`` (open_clip, ``[clip]`` extra) embeds text too, into its image vectors'
space. ``FakeEmbedder`` and ``ModelSpec`` need nothing; the others need the ``[torch]`` extra
(``EfficientNetLite0Embedder`` the ``[offline]`` extra, ``OnnxEmbedder`` the ``[onnx]``
extra). torch and onnxruntime are imported only when one of them is constructed or
used, never by ``import lookalike``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .fake import FakeEmbedder
from .spec import ModelSpec

if TYPE_CHECKING:
    from ._torch import TorchEmbedder
    from .clip import ClipEmbedder
    from .efficientnet_lite import EfficientNetLite0Embedder
    from .onnx import OnnxEmbedder
    from .torchvision import ResNet50Embedder, TorchvisionEmbedder

__all__ = [
    "ClipEmbedder",
    "EfficientNetLite0Embedder",
    "FakeEmbedder",
    "ModelSpec",
    "OnnxEmbedder",
    "ResNet50Embedder",
    "TorchEmbedder",
    "TorchvisionEmbedder",
]

_LAZY = {
    "ClipEmbedder": ".clip",
    "TorchEmbedder": "._torch",
    "ResNet50Embedder": ".torchvision",
    "TorchvisionEmbedder": ".torchvision",
    "EfficientNetLite0Embedder": ".efficientnet_lite",
    "OnnxEmbedder": ".onnx",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
