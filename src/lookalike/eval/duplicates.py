"""Measure near-duplicate finding: generated edits, pair precision/recall/F1, threshold calibration.

Used by ``benchmarks/duplicates.py`` (which calibrated the shipped thresholds) and by the
tests; use it to calibrate a model of your own (docs/quality.md, Duplicates)::

    from lookalike.eval.duplicates import EDITS, apply_edits, calibrate, variants
    # embed every photo and its variants, note which photo each image came from, then
    threshold, quality = calibrate(vectors, photo_of_each_row)
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["EDITS", "apply_edits", "calibrate", "edit", "pair_quality", "variants"]

#: The edits of the calibration: crop, JPEG quality 20, half size, brightness +40%,
#: 4-degree rotation, a semi-transparent watermark band with text.
EDITS = ("crop", "jpeg20", "half", "bright", "rot4", "band")


def edit(img: Image.Image, name: str) -> Image.Image:
    """One edit of an RGB image (see :data:`EDITS`)."""
    from PIL import Image, ImageDraw, ImageEnhance

    w, h = img.size
    if name == "crop":  # off-centre, about 72% of the area kept
        return img.crop((int(0.10 * w), int(0.05 * h), int(0.95 * w), int(0.90 * h)))
    if name == "jpeg20":
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=20)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if name == "half":
        return img.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BICUBIC)
    if name == "bright":
        return ImageEnhance.Brightness(img).enhance(1.4)
    if name == "rot4":
        return img.rotate(4, resample=Image.Resampling.BICUBIC)
    if name == "band":  # the bottom sixth under a white band with a line of text
        overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(overlay)
        top = int(0.83 * h)
        draw.rectangle((0, top, w, h), fill=(255, 255, 255, 160))
        draw.text((10, top + 5), "(c) lookalike stock photos - do not copy", fill=(0, 0, 0, 255))
        return Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB")
    raise ValueError(f"unknown edit {name!r}; known: {', '.join(EDITS)}")


def variants() -> list[tuple[str, ...]]:
    """Every edit alone, then every pair of two (JPEG applied last: it is how a file is saved)."""
    singles = [(e,) for e in EDITS]
    pairs = [tuple(sorted(p, key=lambda e: (e == "jpeg20", EDITS.index(e))))
             for p in itertools.combinations(EDITS, 2)]
    return singles + pairs


def apply_edits(img: Image.Image, names: Sequence[str]) -> Image.Image:
    """``img`` with the edits applied in order."""
    out = img.convert("RGB")
    for name in names:
        out = edit(out, name)
    return out


def pair_quality(predicted: NDArray[np.bool_], truth: NDArray[np.bool_]) -> dict[str, Any]:
    """Precision, recall and F1 of predicted duplicate pairs against the true ones."""
    tp = int((predicted & truth).sum())
    fp = int((predicted & ~truth).sum())
    fn = int((~predicted & truth).sum())
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4), "tp": tp, "fp": fp, "fn": fn}


def calibrate(
    vectors: NDArray[np.float32], source: Sequence[Any], thresholds: Sequence[float] | None = None
) -> tuple[float, dict[str, Any], list[tuple[float, dict[str, Any]]]]:
    """The cosine threshold with the best pair F1, its quality, and the whole sweep.

    ``vectors``: L2-normalised rows; ``source[i]``: what row ``i`` is a copy of (two rows
    are true duplicates when their sources are equal). All pairs are compared: keep it to
    a few thousand rows.
    """
    src = np.asarray(source)
    iu, ju = np.triu_indices(len(src), 1)
    truth = (src[:, None] == src[None, :])[iu, ju]
    sims = (vectors @ vectors.T)[iu, ju]
    grid = thresholds if thresholds is not None else [round(float(t), 3) for t in np.arange(0.5, 0.995, 0.005)]
    sweep = [(float(t), pair_quality(sims >= t, truth)) for t in grid]
    best_t, best = max(sweep, key=lambda tq: (tq[1]["f1"], tq[0]))
    return best_t, best, sweep
