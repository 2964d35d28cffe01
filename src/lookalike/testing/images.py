"""Synthetic test images: distinct pictures made from a seed, as PIL images or files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["make_image", "make_images"]

MAX_PIXELS = 64_000_000  #: make_image refuses bigger pictures (a typo must not exhaust memory)
_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "bmp": "BMP", "gif": "GIF"}


def make_image(
    seed: int = 0,
    size: tuple[int, int] = (96, 80),
    *,
    mode: str = "RGB",
    path: str | os.PathLike[str] | None = None,
) -> Image.Image:
    """A distinct synthetic picture: a coloured background and six shapes placed by ``seed``.

    The same seed always gives the same pixels; different seeds give pictures that
    :class:`~lookalike.embedders.FakeEmbedder` (and real models) embed far apart. With
    ``path``, the picture is also saved there (format from the suffix: .jpg, .png, .webp,
    .bmp, .gif; parent folders are created).

    >>> make_image(3).size
    (96, 80)
    """
    from PIL import Image, ImageDraw

    _check_seed(seed)
    try:
        w, h = size
    except (TypeError, ValueError):
        raise ConfigurationError(f"make_image: size must be (width, height), got {size!r}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (w, h)):
        raise ConfigurationError(f"make_image: size must be two ints, got {size!r}")
    if w < 16 or h < 16:
        raise ConfigurationError(f"make_image: size must be at least 16x16, got {size!r}")
    if w * h > MAX_PIXELS:
        raise ConfigurationError(
            f"make_image: {w}x{h} is more than {MAX_PIXELS:,} pixels; use a smaller size"
        )
    rng = np.random.default_rng(seed)
    base = tuple(int(c) for c in rng.integers(0, 256, 3))
    img = Image.new("RGB", (w, h), base)
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
        x1, y1 = x0 + int(rng.integers(8, w // 2 + 9)), y0 + int(rng.integers(8, h // 2 + 9))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
    out = img.convert(mode) if mode != "RGB" else img
    if path is not None:
        _save(out, Path(path))
    return out


def make_images(
    folder: str | os.PathLike[str],
    n: int,
    *,
    size: tuple[int, int] = (96, 80),
    ext: str = "jpg",
    seed: int = 0,
) -> list[Path]:
    """Write ``n`` distinct images into ``folder`` (created if missing); return their paths.

    Files are named ``img000.jpg``, ``img001.jpg``, ... (sorted order is creation order) from
    seeds ``seed``, ``seed + 1``, ...; no two embed to the same vector with ``FakeEmbedder``.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ConfigurationError(f"make_images: n must be a non-negative int, got {n!r}")
    _check_seed(seed)
    ext = ext.lower().lstrip(".")
    if ext not in _FORMATS:
        raise ConfigurationError(f"make_images: ext must be one of {sorted(_FORMATS)}, got {ext!r}")
    root = Path(folder)
    if root.exists() and not root.is_dir():
        raise ConfigurationError(f"make_images: {str(root)!r} exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(n - 1)))
    paths = [root / f"img{i:0{width}d}.{ext}" for i in range(n)]
    for i, path in enumerate(paths):
        make_image(seed + i, size, path=path)
    return paths


def _check_seed(seed: object) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigurationError(f"seed must be a non-negative int, got {seed!r}")


def _save(img: Image.Image, path: Path) -> None:
    fmt = _FORMATS.get(path.suffix.lower().lstrip("."))
    if fmt is None:
        raise ConfigurationError(
            f"make_image: cannot tell the format of {str(path)!r}; use one of "
            + ", ".join(f".{e}" for e in sorted(_FORMATS))
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "JPEG" and img.mode not in ("RGB", "L", "CMYK"):
        img = img.convert("RGB")
    img.save(path, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
