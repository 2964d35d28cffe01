"""TorchEmbedder around a tiny torch module: fast checks of the real torch code path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lookalike import ConfigurationError, Embedder, ImageSearchIndex, path_id
from lookalike.stores import InMemoryStore

from ..conftest import encode, make_image

torch = pytest.importorskip("torch")
transforms = pytest.importorskip("torchvision.transforms")


def tiny_module() -> Any:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    )


def tiny_preprocess() -> Any:
    return transforms.Compose([transforms.Resize(40), transforms.CenterCrop(32), transforms.ToTensor()])


@pytest.fixture
def embedder() -> Any:
    from lookalike.embedders import TorchEmbedder

    return TorchEmbedder(tiny_module(), tiny_preprocess(), dim=16, identity="tiny:v1", device="cpu")


def test_wraps_a_module_as_an_embedder(embedder: Any) -> None:
    assert isinstance(embedder, Embedder)
    assert embedder.dim == 16 and embedder.identity == "tiny:v1"
    images = [make_image(i) for i in range(5)]
    vectors = embedder.embed(images)
    assert vectors.shape == (5, 16) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors, embedder.embed(images))
    assert embedder.embed([]).shape == (0, 16)


def test_vectors_equal_the_module_output(embedder: Any) -> None:
    images = [make_image(i) for i in range(3)]
    module, preprocess = tiny_module().eval(), tiny_preprocess()
    with torch.inference_mode():
        expected = module(torch.stack([preprocess(img) for img in images]))
    expected = torch.nn.functional.normalize(expected, dim=1).numpy()
    np.testing.assert_allclose(embedder.embed(images), expected, atol=1e-5)


def test_batches_give_the_same_vectors() -> None:
    from lookalike.embedders import TorchEmbedder

    images = [make_image(i) for i in range(7)]
    small = TorchEmbedder(tiny_module(), tiny_preprocess(), dim=16, identity="t", device="cpu", batch_size=2)
    large = TorchEmbedder(tiny_module(), tiny_preprocess(), dim=16, identity="t", device="cpu", batch_size=32)
    np.testing.assert_allclose(small.embed(images), large.embed(images), atol=1e-5)


def test_wrong_dim_is_reported_on_first_use() -> None:
    from lookalike.embedders import TorchEmbedder

    emb = TorchEmbedder(tiny_module(), tiny_preprocess(), dim=99, identity="t", device="cpu")
    with pytest.raises(ConfigurationError, match="16-d features, but dim=99"):
        emb.embed([make_image(1)])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"dim": 0}, "dim"), ({"identity": ""}, "identity"), ({"precision": "fp8"}, "precision"),
     ({"batch_size": 0}, "batch_size")],
)
def test_arguments_are_validated(kwargs: dict[str, Any], match: str) -> None:
    from lookalike.embedders import TorchEmbedder

    args: dict[str, Any] = {"dim": 16, "identity": "t", **kwargs}
    with pytest.raises(ConfigurationError, match=match):
        TorchEmbedder(tiny_module(), tiny_preprocess(), **args)


def test_unavailable_device_is_a_configuration_error() -> None:
    from lookalike.embedders import TorchEmbedder

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    emb = TorchEmbedder(tiny_module(), tiny_preprocess(), dim=16, identity="t", device="cuda")
    with pytest.raises(ConfigurationError, match="CUDA"):
        emb.embed([make_image(1)])


def test_index_with_a_torch_embedder_and_mixed_inputs(embedder: Any, tmp_path: Path) -> None:
    paths = []
    for i in range(4):
        path = tmp_path / f"{i}.png"
        make_image(i).save(path)
        paths.append(path)
    index = ImageSearchIndex(embedder=embedder, store=InMemoryStore(), batch_size=3, workers=2)
    pil, data = make_image(10), encode(make_image(11), "PNG")
    report = index.add_many([paths[0], pil, paths[1], data, paths[2], paths[3]])
    assert report.failed == [] and len(report.added) == 6
    for p in paths:
        assert index.search(p, k=1)[0].id == path_id(p)
    assert index.search(pil, k=1)[0].score == pytest.approx(1.0, abs=1e-4)
    # vectors stored through the pipeline equal those of a direct embed() call
    stored = index.get(path_id(paths[2])).vector
    from PIL import Image

    np.testing.assert_allclose(stored, embedder.embed([Image.open(paths[2]).convert("RGB")])[0], atol=1e-5)
