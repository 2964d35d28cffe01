"""Hostile images for the models: a tiny, very thin PNG must not exhaust memory (#14).

A 144-byte 20000x1 PNG once became a 5,120,000x256 image (4 GB) before the centre crop.
Every embedder's preprocessing, in threads and in the decode processes, now resizes only
what the crop keeps. The checks spy on Pillow's ``resize`` and refuse (before any
allocation) a resize larger than a bounded multiple of the output, so they never need
the gigabytes the old code took."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lookalike import ImageSearchIndex
from lookalike.stores import InMemoryStore

from ..conftest import make_image

torch = pytest.importorskip("torch")

from lookalike import _processes  # noqa: E402
from lookalike.embedders import EfficientNetLite0Embedder, TorchEmbedder  # noqa: E402
from lookalike.embedders.torchvision import imagenet_preprocess  # noqa: E402

#: the most pixels one resize may produce: 64 times ResNet50's 256x256 (the old code asked for 1.3e9)
MAX_RESIZED_PIXELS = 64 * 256 * 256
SIZES = [(20000, 1), (1, 200000), (4000, 3)]


def thin_png(width: int, height: int) -> bytes:
    ramp = (np.arange(width * height, dtype=np.uint32) * 7 % 256).astype(np.uint8)
    pixels = np.stack([ramp, 255 - ramp, ramp // 2], axis=-1).reshape(height, width, 3)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


@pytest.fixture
def resizes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int]]]:
    """Every size Pillow is asked to resize to; a resize past the bound fails at once."""
    asked: list[tuple[int, int]] = []
    original = Image.Image.resize

    def bounded(self: Image.Image, size: Any, *args: Any, **kwargs: Any) -> Image.Image:
        asked.append((int(size[0]), int(size[1])))
        if size[0] * size[1] > MAX_RESIZED_PIXELS:
            raise AssertionError(f"a {self.size} image resized to {tuple(size)}: unbounded work")
        return original(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", bounded)
    yield asked


def tiny_embedder() -> TorchEmbedder:
    """The ResNet50 preprocessing (resize 256, crop 224) in front of a tiny module."""
    module = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
    return TorchEmbedder(module, imagenet_preprocess(256, 224), dim=12, identity="tiny:v1", device="cpu",
                         streams=1)


def decoded(width: int, height: int) -> Image.Image:
    return Image.open(io.BytesIO(thin_png(width, height))).convert("RGB")


def test_the_thin_png_is_tiny() -> None:
    assert len(thin_png(20000, 1)) < 2000  # a few hundred bytes on disk


@pytest.mark.parametrize("size", SIZES)
def test_every_embedders_preprocessing_is_bounded(resizes: list[tuple[int, int]], size: tuple[int, int]) -> None:
    from lookalike.embedders import OnnxEmbedder

    image = decoded(*size)
    outputs = [tiny_embedder().prepare(image),  # ResNet50's pipeline, in a decode thread
               OnnxEmbedder(EfficientNetLite0Embedder()).prepare(image)]  # no model load needed
    tensor = tiny_embedder().preprocess(image)  # the one-image torch preprocess
    assert tuple(tensor.shape) == (3, 224, 224) and torch.isfinite(tensor).all()
    for out in outputs:
        assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert resizes and max(w * h for w, h in resizes) <= 256 * 224  # only the crop's part


def test_efficientnet_lite0_preprocessing_is_bounded(resizes: list[tuple[int, int]]) -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    emb = EfficientNetLite0Embedder(device="cpu")
    vectors = emb.embed([decoded(20000, 1), decoded(1, 200000)])
    assert vectors.shape == (2, 1280) and np.isfinite(vectors).all()


def test_the_thin_image_keeps_its_centre() -> None:
    """The bounded resize shows what the full resize would have shown around the centre."""
    pre = imagenet_preprocess(256, 224)
    wide = Image.new("RGB", (4000, 3), (0, 0, 255))
    wide.paste((255, 0, 0), (1994, 0, 2006, 3))  # a red band at the centre, 12 of 4000 columns
    out = pre.pixels(wide)  # the crop spans 224 of 341,333 resized columns: 2.6 source columns
    assert out[..., 0].min() > 200 and out[..., 2].max() < 60  # red: the centre, not an edge
    tall = wide.transpose(Image.Transpose.TRANSPOSE)
    np.testing.assert_array_equal(pre.pixels(tall), out.transpose(1, 0, 2))


def test_normal_aspect_ratios_take_the_exact_path(resizes: list[tuple[int, int]]) -> None:
    pre = imagenet_preprocess(256, 224)
    pre.pixels(make_image(1, size=(2000, 80)))  # a 25:1 banner: resized whole, as torchvision does
    assert resizes == [(6400, 256)]


def test_search_and_add_with_thin_images_in_threads(resizes: list[tuple[int, int]]) -> None:
    index = ImageSearchIndex(embedder=tiny_embedder(), store=InMemoryStore(), workers=2)
    images = [thin_png(*size) for size in SIZES]
    report = index.add_many(images + [make_image(1)])
    assert len(report.added) == 4 and not report.failed
    hits = index.search(thin_png(20000, 1), k=1)  # the 5.7 GB search
    assert hits and hits[0].score > 0.999


def test_decode_processes_preprocess_with_bounded_work(resizes: list[tuple[int, int]],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """What a decode process runs (``load_group`` with the embedder's ``pixel_function()``),
    run here so the spy sees it."""
    monkeypatch.setattr(_processes, "_PIXEL_FUNCTION", tiny_embedder().pixel_function())
    jobs = [_processes.Job(f"thin{i}", None, thin_png(*size), None, -1) for i, size in enumerate(SIZES)]
    done = _processes.load_group(jobs, 256, None, 0)
    assert [d.error for d in done] == [None] * len(SIZES)
    assert all(d.value.shape == (224, 224, 3) for d in done)


def test_decode_processes_end_to_end(tmp_path: Any) -> None:
    paths = []
    for i, size in enumerate(SIZES):
        path = tmp_path / f"thin{i}.png"
        path.write_bytes(thin_png(*size))
        paths.append(path)
    with ImageSearchIndex(embedder=tiny_embedder(), store=InMemoryStore(), workers=1, processes=True) as index:
        report = index.add_many(paths)
    assert len(report.added) == len(SIZES) and not report.failed
