"""Image preprocessing without torch: what a model's input looks like, computed with Pillow
and numpy, so decode threads and worker processes can run it (and pickle it) torch-free.

:class:`ImagePreprocess` is the torchvision ``Resize + CenterCrop + ToTensor + Normalize``
recipe, bit-identical, split in a per-image half (:meth:`ImagePreprocess.pixels`) and a
per-batch half (``normalize`` on a torch device, ``normalize_array`` in numpy).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .errors import ConfigurationError

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MAX_STRETCH", "ImagePreprocess", "imagenet_preprocess", "norm_tag"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Resized images whose long side exceeds this many times the output's side are resized
#: only where the centre crop keeps them (bounded memory for very thin images).
MAX_STRETCH = 32
_PIL_FILTERS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


class ImagePreprocess:
    """Resize the shorter side, centre-crop, scale to 0..1 and normalise: the torchvision
    ``Resize(resize) + CenterCrop(crop) + ToTensor() + Normalize(mean, std)`` pipeline,
    with bit-identical output, split in two halves for throughput.

    * :meth:`pixels` does the per-image work with Pillow alone (which releases the GIL
      while it resizes), returning ``(crop, crop, 3)`` uint8, so decode threads run it in
      parallel without touching torch (no OpenMP thread teams fighting the model's).
    * :meth:`normalize` turns a whole ``(n, crop, crop, 3)`` uint8 batch into the model's
      float ``(n, 3, crop, crop)`` input, channels_last, on the model's device (so a GPU
      receives 4x fewer bytes and does the float maths itself).

    Calling the object on one image gives the same ``(3, crop, crop)`` float tensor as
    the torchvision pipeline, for code that wants the classic one-image preprocess.
    """

    def __init__(
        self,
        resize: int,
        crop: int,
        mean: Sequence[float],
        std: Sequence[float],
        interpolation: str = "bilinear",
    ) -> None:
        if interpolation not in _PIL_FILTERS:
            raise ConfigurationError(f"interpolation must be one of {_PIL_FILTERS}, got {interpolation!r}")
        if len(mean) != 3 or len(std) != 3:
            raise ConfigurationError("mean and std need three values (R, G, B)")
        self.resize = int(resize)
        self.crop = int(crop)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.interpolation = interpolation
        self._constants: dict[Any, tuple[Any, Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Picklable without torch (decode worker processes never import it): the cached
        # device constants are rebuilt on demand.
        return {**self.__dict__, "_constants": {}}

    def __repr__(self) -> str:
        return (f"ImagePreprocess(resize={self.resize}, crop={self.crop}, mean={self.mean}, "
                f"std={self.std}, interpolation={self.interpolation!r})")

    def pixels(self, image: Image.Image) -> NDArray[np.uint8]:
        """Resize and centre-crop one RGB image: ``(crop, crop, 3)`` uint8 (thread-safe)."""
        from PIL import Image as PILImage

        if image.mode != "RGB":
            image = image.convert("RGB")
        w, h = image.size
        # torchvision's _compute_resized_output_size for an int size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.resize, int(self.resize * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        c = self.crop
        resample = PILImage.Resampling[self.interpolation.upper()]
        if new_long > MAX_STRETCH * max(self.resize, c):
            # A very thin image (20000x1 would become 5,120,000x256: 4 GB): resize only the
            # part of it that the centre crop keeps, so the work and memory stay bounded by
            # the output's size. Normal images never come here and stay bit-identical.
            image, new_w, new_h = self._resize_centre(image, new_w, new_h, resample)
        elif (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), resample)
        if c > new_w or c > new_h:  # torchvision pads with black before cropping
            left, top = max(0, (c - new_w) // 2), max(0, (c - new_h) // 2)
            padded = PILImage.new("RGB", (max(c, new_w), max(c, new_h)))
            padded.paste(image, (left, top))
            image, new_w, new_h = padded, padded.width, padded.height
        top = int(round((new_h - c) / 2.0))
        left = int(round((new_w - c) / 2.0))
        if (new_w, new_h) != (c, c):
            image = image.crop((left, top, left + c, top + c))
        return np.array(image, dtype=np.uint8)

    def _resize_centre(
        self, image: Image.Image, new_w: int, new_h: int, resample: Any
    ) -> tuple[Image.Image, int, int]:
        """The centre ``crop`` pixels along the long side of ``image`` resized to
        ``(new_w, new_h)``, computed from the matching box of the source alone."""
        w, h = image.size
        c = self.crop
        if new_w > new_h:  # wide: keep columns [left, left + c) of the resized image
            left = int(round((new_w - c) / 2.0))
            box = (left * w / new_w, 0.0, (left + c) * w / new_w, float(h))
            return image.resize((c, new_h), resample, box=box), c, new_h
        top = int(round((new_h - c) / 2.0))
        box = (0.0, top * h / new_h, float(w), (top + c) * h / new_h)
        return image.resize((new_w, c), resample, box=box), new_w, c

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """``(n, H, W, 3)`` uint8 (any device) -> normalised float ``(n, 3, H, W)``, channels_last
        (the torch half: only a torch runner calls it, with torch already imported)."""
        import torch

        key = batch.device
        if key not in self._constants:
            self._constants[key] = (
                torch.tensor(self.mean, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1),
                torch.tensor(self.std, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1),
            )
        mean, std = self._constants[key]
        # Same float ops, in the same order, as ToTensor + Normalize: identical values.
        x = batch.permute(0, 3, 1, 2).to(torch.float32).div(255)
        return x.sub(mean).div(std).contiguous(memory_format=torch.channels_last)

    def normalize_array(self, batch: NDArray[np.uint8]) -> NDArray[np.float32]:
        """:meth:`normalize` in numpy, for runtimes without torch: ``(n, H, W, 3)`` uint8 ->
        contiguous float32 ``(n, 3, H, W)``, the same float32 operations in the same order."""
        mean = np.array(self.mean, dtype=np.float32).reshape(1, 3, 1, 1)
        std = np.array(self.std, dtype=np.float32).reshape(1, 3, 1, 1)
        x = batch.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
        return np.ascontiguousarray((x - mean) / std, dtype=np.float32)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        import torch

        return self.normalize(torch.from_numpy(self.pixels(image)[None]))[0].contiguous()


def imagenet_preprocess(
    resize: int, crop: int, mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD, interpolation: str = "bilinear",
) -> ImagePreprocess:
    """Resize shorter side to ``resize``, centre-crop ``crop``, to tensor, normalise.

    Returns an :class:`ImagePreprocess`: the same values as torchvision's
    ``Compose([Resize, CenterCrop, ToTensor, Normalize])``, but split so that
    ``add_many`` resizes in its decode threads and normalises whole batches.
    """
    return ImagePreprocess(resize, crop, mean, std, interpolation)


def norm_tag(mean: Sequence[float], std: Sequence[float]) -> str:
    """The normalisation's part of an identity: ``imagenet-norm`` or ``mean..-std..``."""
    if tuple(mean) == IMAGENET_MEAN and tuple(std) == IMAGENET_STD:
        return "imagenet-norm"
    return "mean" + ",".join(f"{m:g}" for m in mean) + "-std" + ",".join(f"{s:g}" for s in std)
