"""FakeEmbedder: deterministic, normalised, torch-free, and a faithful stand-in."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike import ConfigurationError, Embedder
from lookalike.embedders import FakeEmbedder

from ..conftest import make_image


def test_is_an_embedder_with_dim_and_identity() -> None:
    emb = FakeEmbedder(dim=24, seed=3)
    assert isinstance(emb, Embedder)
    assert emb.dim == 24
    assert emb.identity == "fake:v1:dim=24:seed=3"
    assert FakeEmbedder().dim == 64
    assert FakeEmbedder(seed=1).identity != FakeEmbedder(seed=2).identity
    assert FakeEmbedder(dim=8).identity != FakeEmbedder(dim=9).identity
    assert "24" in repr(emb)


def test_vectors_are_normalised_float32_and_deterministic() -> None:
    images = [make_image(i) for i in range(5)]
    first = FakeEmbedder().embed(images)
    second = FakeEmbedder().embed(images)
    assert first.shape == (5, 64) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, FakeEmbedder(seed=1).embed(images))


def test_similar_images_are_close_and_different_ones_are_not() -> None:
    emb = FakeEmbedder()
    img = make_image(1, size=(200, 160))
    variants = [img.resize((100, 80)), img.crop((2, 2, 198, 158)), img.convert("L")]
    vectors = emb.embed([img, *variants, make_image(2, size=(200, 160))])
    sims = vectors[1:] @ vectors[0]
    assert all(s > 0.9 for s in sims[:2])
    assert sims[-1] < sims[:2].min()


def test_counts_calls_and_images() -> None:
    emb = FakeEmbedder(dim=4)
    emb.embed([make_image(1), make_image(2)])
    empty = emb.embed([])
    assert empty.shape == (0, 4)
    assert emb.calls == 2 and emb.images_embedded == 2


@pytest.mark.parametrize("dim", [0, -3, 2.5, "8"])
def test_dim_is_validated(dim: object) -> None:
    with pytest.raises(ConfigurationError, match="dim"):
        FakeEmbedder(dim=dim)  # type: ignore[arg-type]
