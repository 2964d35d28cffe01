"""Plug in your own embedder: any object with ``dim``, ``identity`` and ``embed(images)``.

This one embeds an image as its normalised colour histogram: crude, but it shows the
protocol, and it needs neither torch nor a download.

    python examples/custom_embedder.py samples/photos samples/queries/coffee-mirrored.jpg
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
from PIL import Image

from lookalike import ImageSearchIndex, sources
from lookalike.stores import InMemoryStore


class ColourHistogramEmbedder:
    """8x8x8-bin RGB histogram, L2-normalised."""

    dim = 512
    identity = "colour-histogram:8x8x8:v1"  # change it whenever the vectors would change

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for row, image in enumerate(images):
            pixels = np.asarray(image.convert("RGB").resize((64, 64))).reshape(-1, 3) // 32
            bins = pixels[:, 0] * 64 + pixels[:, 1] * 8 + pixels[:, 2]
            out[row] = np.bincount(bins, minlength=self.dim)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def main(folder: str, query: str) -> None:
    index = ImageSearchIndex(embedder=ColourHistogramEmbedder(), store=InMemoryStore())
    print(index.add_many(sources.from_dir(folder)))
    for hit in index.search(query, k=3):
        print(f"{hit.score:.3f}  {hit.path}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
