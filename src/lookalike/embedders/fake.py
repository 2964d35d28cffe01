"""FakeEmbedder: deterministic, torch-free vectors for tests, docs and quick experiments."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from .._checks import positive_int

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["FakeEmbedder"]

_THUMB = 16  # images are reduced to 16x16 RGB before projection


class FakeEmbedder:
    """Embeds an image as a fixed random projection of its 16x16 thumbnail.

    No model, no torch, microseconds per image, and the same image always gives the
    same vector. Visually similar images (resized, recompressed, slightly cropped)
    get similar vectors, so "an image finds itself first" holds, which makes it a
    faithful stand-in in tests. It knows nothing about what images show.

    >>> FakeEmbedder(dim=8).dim
    8
    """

    def __init__(self, dim: int = 64, *, seed: int = 0) -> None:
        self._dim = positive_int(dim, "dim")
        self._seed = seed
        rng = np.random.default_rng(seed)
        self._projection = rng.standard_normal((_THUMB * _THUMB * 3, dim)).astype(np.float32)
        self.calls = 0  #: number of embed() calls, handy for asserting caching in tests
        self.images_embedded = 0  #: total images embedded

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def identity(self) -> str:
        return f"fake:v1:dim={self._dim}:seed={self._seed}"

    def __repr__(self) -> str:
        return f"FakeEmbedder(dim={self._dim}, seed={self._seed})"

    def embed(self, images: Sequence[Image.Image]) -> NDArray[np.float32]:
        from PIL import Image

        self.calls += 1
        self.images_embedded += len(images)
        if not images:
            return np.zeros((0, self._dim), dtype=np.float32)
        thumbs = np.stack(
            [
                np.asarray(
                    img.convert("RGB").resize((_THUMB, _THUMB), Image.Resampling.BILINEAR),
                    dtype=np.float32,
                ).reshape(-1)
                / 255.0
                for img in images
            ]
        )
        thumbs -= 0.5  # centre, so dark and bright images are not all alike
        vectors = thumbs @ self._projection
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        normalised: NDArray[np.float32] = (vectors / norms).astype(np.float32)
        return normalised
