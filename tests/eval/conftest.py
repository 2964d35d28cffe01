"""Fixtures for the eval tests: small labelled data sets on disk and in an index."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import make_image


def variant(seed: int, n: int) -> Image.Image:
    """The ``n``-th variant of picture ``seed``: a slight crop, so the fake embedder sees it as similar."""
    img = make_image(seed, size=(120, 100))
    return img.crop((n, n, 120 - n, 100 - n)).resize((120, 100))


@pytest.fixture
def variant_image() -> Callable[[int, int], Image.Image]:
    return variant


def write_class_folders(root: Path, classes: dict[str, int], per_class: int) -> Path:
    for label, seed in classes.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            variant(seed, n).save(root / label / f"{label}_{n}.png")
    return root


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    """Folder-per-class layout: 3 classes of 5 PNGs each."""
    return write_class_folders(tmp_path / "folders", {"cat": 1, "dog": 2, "eel": 3}, 5)


@pytest.fixture
def towhee_dataset(tmp_path: Path) -> Path:
    """Towhee layout: train/ 4 per class, test/ 1 per class, and the CSV."""
    root = tmp_path / "towhee"
    classes = {"cat": 1, "dog": 2, "eel": 3}
    rows = ["id,path,label"]
    for label, seed in classes.items():
        for sub, ns in (("train", range(4)), ("test", [4])):
            (root / sub / label).mkdir(parents=True, exist_ok=True)
            for n in ns:
                variant(seed, n).save(root / sub / label / f"{label}_{n}.png")
                if sub == "train":
                    rows.append(f"{len(rows) - 1},./train/{label}/{label}_{n}.png,{label}")
    (root / "reverse_image_search.csv").write_text("\n".join(rows) + "\n")
    return root
