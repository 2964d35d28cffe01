"""Pins of today's identities and vectors: the model-spec redesign (#15) must not change a
byte of either (identities are stored in users' stores; vectors must stay comparable)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ..conftest import make_image

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from lookalike.embedders import (  # noqa: E402
    EfficientNetLite0Embedder,
    ResNet50Embedder,
    TorchEmbedder,
    TorchvisionEmbedder,
)
from lookalike.embedders.torchvision import imagenet_preprocess  # noqa: E402

RESNET50_RANDOM = ("torchvision:resnet50:random-init:resize256-crop224-bilinear-imagenet-norm:"
                   "penultimate-l2")
LITE0 = "efficientnet-lite0:57934424:resize256-crop224-bicubic-mean0.5-std0.5:avgpool-l2"


def tiny(preprocess: Any = None, identity: str = "tiny:v1") -> TorchEmbedder:
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
    )
    return TorchEmbedder(module, preprocess or imagenet_preprocess(40, 32), dim=16, identity=identity,
                         device="cpu", streams=1)


def test_identities_of_every_shipped_embedder_are_pinned() -> None:
    assert ResNet50Embedder(weights=None).identity == RESNET50_RANDOM
    assert ResNet50Embedder(weights=None).dim == 2048 and ResNet50Embedder(weights=None).image_size == 256
    assert ResNet50Embedder().identity == (
        "torchvision:resnet50:IMAGENET1K_V2:resize256-crop224-bilinear-imagenet-norm:penultimate-l2")
    assert TorchvisionEmbedder("resnet18", weights=None).identity == (
        "torchvision:resnet18:random-init:resize256-crop224-bilinear-imagenet-norm:penultimate-l2")
    assert TorchvisionEmbedder("efficientnet_b0", weights="IMAGENET1K_V1", resize=300, crop=288).identity == (
        "torchvision:efficientnet_b0:IMAGENET1K_V1:resize300-crop288-bicubic-imagenet-norm:penultimate-l2")
    vit = TorchvisionEmbedder("vit_b_16")  # DEFAULT is resolved to its name
    assert vit.identity == ("torchvision:vit_b_16:IMAGENET1K_V1:resize256-crop224-bilinear-imagenet-norm:"
                            "penultimate-l2") and vit.dim == 768
    lite0 = EfficientNetLite0Embedder()
    assert lite0.identity == LITE0 and lite0.dim == 1280 and lite0.image_size == 256
    custom = tiny(identity="my-model:v3")
    assert custom.identity == "my-model:v3" and custom.dim == 16 and custom.image_size is None


def test_a_weights_file_identity_is_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    path.write_bytes(b"not really weights")
    assert TorchvisionEmbedder("resnet18", weights=path).identity == (
        "torchvision:resnet18:file-sha256:6bc9509551b471fd:resize256-crop224-bilinear-imagenet-norm:"
        "penultimate-l2")


def test_onnx_identities_are_the_sources() -> None:
    pytest.importorskip("onnxruntime")
    from lookalike.embedders import OnnxEmbedder

    assert OnnxEmbedder(ResNet50Embedder(weights=None)).identity == RESNET50_RANDOM
    int8 = OnnxEmbedder(EfficientNetLite0Embedder(), quantize="int8", calibration=[make_image(1)])
    assert int8.identity == LITE0 and int8.dim == 1280


# Rows 0 and 3, first 4 values, of the tiny model's vectors, recorded before the redesign
# (tolerance for other CPUs' kernels, far below what any change of preprocessing or model gives).
TINY_PINNED = np.array([[-0.23103324, 0.14520994, 0.02552072, 0.12586914],
                        [-0.42003372, 0.322327, -0.24799448, 0.29551506]], dtype=np.float32)


def pin_images() -> list[Any]:
    """Three ordinary images and a very thin one (the bounded-stretch resize)."""
    return [make_image(i, size=(70 + 9 * i, 50)) for i in range(3)] + [
        make_image(7, size=(300, 12)).resize((300, 4))]


def test_tiny_vectors_are_pinned() -> None:
    emb = tiny()
    images = pin_images()
    got = emb.embed(images)
    np.testing.assert_allclose(got[[0, 3], :4], TINY_PINNED, atol=2e-6)
    np.testing.assert_array_equal(emb.embed_pixels([emb.pixels(im) for im in images]), got)
    # the vectors are exactly the module's, on the preprocessing's uint8 pixels
    pre = imagenet_preprocess(40, 32)
    batch = pre.normalize(torch.from_numpy(np.stack([pre.pixels(im) for im in images])))
    np.testing.assert_array_equal(tiny().embed_tensor(batch), got)
