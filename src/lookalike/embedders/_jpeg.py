"""JPEG bytes to model pixels on the model's device: the GPU pixel path of ``add_many`` (#20).

:class:`JpegBatchDecoder` takes the encoded bytes of a chunk of files and hands back, for
each one it can take, the ``(crop, crop, 3)`` uint8 tensor that
:meth:`ImagePreprocess.pixels <lookalike.preprocess.ImagePreprocess.pixels>` would give,
already on the device: batched ``torchvision.io.decode_jpeg(list, device="cuda")`` (nvJPEG),
then EXIF orientation, resize (antialiased, the recipe's interpolation) and centre crop
there. Each file it does not take comes back as ``None`` and goes down the CPU path (Pillow,
with its error reporting): not a baseline 8-bit RGB or greyscale JPEG (PNG, CMYK, progressive,
12-bit, MPO...), too many pixels, a shape the CPU path bounds specially (very thin images,
images smaller than the crop), or a decode error. Only ever imported with torch loaded.
"""

from __future__ import annotations

import contextlib
import struct
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError
from ..images import DEFAULT_MAX_PIXELS
from ..preprocess import MAX_STRETCH, ImagePreprocess

__all__ = ["DEFAULT_BATCH_PIXELS", "JpegBatchDecoder", "gpu_decode_problem", "read_header"]

#: Decoded pixels (width x height, summed) per ``decode_jpeg`` call: bounds the device
#: memory a chunk of large photos takes at once (64 MP = 192 MiB of RGB uint8).
DEFAULT_BATCH_PIXELS = 64_000_000
#: The interpolations torch resizes like Pillow (antialiased); others stay on the CPU path.
INTERPOLATIONS = ("bilinear", "bicubic")
#: How far from the end of a file its end-of-image marker may lie (trailing bytes after it);
#: a file without one there is truncated, and the CPU path reports it as such.
_EOI_TAIL = 4096
#: EXIF orientation -> (transpose first, flip left-right, flip top-bottom), as Pillow's
#: ``ImageOps.exif_transpose`` applies it.
_ORIENT = {2: (False, True, False), 3: (False, True, True), 4: (False, False, True), 5: (True, False, False),
           6: (True, True, False), 7: (True, True, True), 8: (True, False, True)}


def gpu_decode_problem(preprocess: object) -> str | None:
    """Why the GPU pixel path cannot run this preprocessing, or ``None`` when it can."""
    if not isinstance(preprocess, ImagePreprocess):
        return "the model's preprocess is a custom callable, not an ImagePreprocess recipe"
    if preprocess.interpolation not in INTERPOLATIONS:
        return f"torch has no antialiased {preprocess.interpolation!r} resize (only {', '.join(INTERPOLATIONS)})"
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError as exc:
        return f"torchvision.io.decode_jpeg is not available ({exc})"
    return None


#: Frame markers of the JPEGs the device takes: baseline and extended sequential, Huffman.
_SEQUENTIAL = (0xC0, 0xC1)
#: Every other frame marker (progressive, lossless, arithmetic): Pillow's path.
_OTHER_FRAMES = frozenset({0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def read_header(data: bytes) -> tuple[int, int, int] | None:
    """``(width, height, EXIF orientation)`` of a JPEG the device path takes, from its markers
    alone (no pixels decoded; a few microseconds, where ``PIL.Image.open`` takes ten times
    that), or ``None``: not a JPEG, progressive or other non-sequential frame, not 8-bit, not
    1 or 3 components, RGB stored without YCbCr (Adobe transform 0, or components named
    R, G, B), a multi-picture file (MPO), or markers that do not add up. A broken EXIF block
    reads as orientation 1, as the CPU path ignores it."""
    n = len(data)
    if data[:2] != b"\xff\xd8":
        return None
    i, orientation, adobe, frame = 2, 1, -1, None
    exif_seen = False
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        if marker in (0xD8, 0xD9):
            return None
        length = (data[i + 2] << 8) | data[i + 3]
        if length < 2 or i + 2 + length > n:
            return None
        start, end = i + 4, i + 2 + length  # the segment, sliced only where it is read
        if marker == 0xDA:  # start of scan: the header is over
            break
        if marker in _SEQUENTIAL:
            if frame is not None or length < 8:
                return None
            frame = data[start:end]
        elif marker in _OTHER_FRAMES:
            return None
        elif marker == 0xE1 and not exif_seen and data.startswith(b"Exif\x00\x00", start):
            exif_seen = True  # Pillow reads the first one
            orientation = _exif_orientation(data[start + 6 : end])
        elif marker == 0xE2 and data.startswith(b"MPF\x00", start):
            return None  # Pillow opens it as MPO
        elif marker == 0xEE and length >= 14 and data.startswith(b"Adobe", start):
            adobe = data[start + 11]
        i = end
    else:
        return None  # no start of scan
    if frame is None or frame[0] != 8:
        return None
    height, width, components = (frame[1] << 8) | frame[2], (frame[3] << 8) | frame[4], frame[5]
    if components == 3:
        if adobe == 0 or frame[6 : 6 + 9 : 3] == b"RGB":
            return None
    elif components != 1:
        return None  # CMYK / YCCK
    return width, height, orientation


def _exif_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of IFD0 in an EXIF TIFF block; 1 where there is none or
    the block is broken."""
    try:
        order = {b"II": "<", b"MM": ">"}[tiff[:2]]
        (offset,) = struct.unpack(order + "I", tiff[4:8])
        (count,) = struct.unpack(order + "H", tiff[offset : offset + 2])
        for k in range(count):
            at = offset + 2 + 12 * k
            tag, kind = struct.unpack(order + "HH", tiff[at : at + 4])
            if tag == 0x0112:
                if kind == 3:  # SHORT
                    return int(struct.unpack(order + "H", tiff[at + 8 : at + 10])[0])
                if kind == 4:  # LONG
                    return int(struct.unpack(order + "I", tiff[at + 8 : at + 12])[0])
                return 1
    except (KeyError, struct.error):
        return 1
    return 1


@dataclass(frozen=True)
class _Plan:
    """What the header says about one JPEG the device path takes."""

    index: int
    width: int  # as stored, before orientation
    height: int
    orientation: int
    scale: int  # 1, 2, 4 or 8: the reduced scale Pillow decodes this file at (``draft``)
    size: tuple[int, int]  # (new_h, new_w) after orientation and resize


class JpegBatchDecoder:
    """Decode JPEG bytes in batches on ``device`` and make the recipe's pixels there.

    Args:
        preprocess: the model's recipe (resize, crop, interpolation); normalisation stays
            with the model (:meth:`ImagePreprocess.normalize`).
        device: the torch device (``cuda``: nvJPEG; ``cpu``: libjpeg-turbo, the same code
            path, which the CPU tests and the identity benchmark run).
        batch_pixels: at most this many decoded pixels per ``decode_jpeg`` call.
        max_pixels: larger images go to the CPU path (which refuses them by name).
        draft_size: the embedder's ``image_size``: where the CPU path decodes a large JPEG at
            1/2, 1/4 or 1/8 scale (:func:`lookalike.images.decode_image`), the decoded
            image is averaged over the same 2x2, 4x4 or 8x8 blocks before the resize, so both
            paths resize the same picture (docs/performance.md: without it, cosine down to
            0.96 on such files; with it, >= 0.997).
        decode: ``torchvision.io.decode_jpeg`` or a stand-in with its signature.

    Files the CPU path treats specially are declined by their header, before any decode:
    not ``FF D8 FF`` (PNG, WebP, ...), no end-of-image marker in the last 4 KiB
    (truncated), not a baseline JPEG in RGB or greyscale, more than ``max_pixels``,
    resized longer than ``MAX_STRETCH`` crops, or smaller than the crop once resized.
    """

    def __init__(
        self, preprocess: ImagePreprocess, device: Any, *, batch_pixels: int = DEFAULT_BATCH_PIXELS,
        max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None,
        decode: Callable[..., Any] | None = None,
    ) -> None:
        problem = gpu_decode_problem(preprocess)
        if problem is not None:
            raise ConfigurationError(f"decode='gpu' cannot run: {problem}")
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        self.torch: Any = torch  # used as untyped, like the runner's module-level torch
        self.preprocess = preprocess
        self.device = torch.device(device)
        self.batch_pixels = batch_pixels
        self.max_pixels = max_pixels
        self.draft_size = draft_size
        self._decode = decode or decode_jpeg
        self._rgb = ImageReadMode.RGB
        # decode + resize run on a stream of their own, from the producer thread; the runner
        # marks each tensor as used on its own stream (record_stream) before reading it
        self._stream: Any = self.torch.cuda.Stream(device=self.device) if self.device.type == "cuda" else None
        #: files taken / handed back to the CPU path since this decoder was built
        self.taken = 0
        self.declined = 0

    def __call__(self, encoded: Sequence[bytes]) -> list[Any | None]:
        """For each file: its ``(crop, crop, 3)`` uint8 pixels on the device, or ``None``
        (the CPU path decodes it). The returned tensors are ready (the work is synchronised)."""
        plans = [plan for i, data in enumerate(encoded) if (plan := self._plan(i, data)) is not None]
        out: list[Any | None] = [None] * len(encoded)
        torch = self.torch
        context: Any = torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext()
        with context, torch.inference_mode():
            for group in self._groups(plans):
                images = self._decoded([encoded[p.index] for p in group])
                kept = [(p, img) for p, img in zip(group, images) if img is not None and
                        tuple(img.shape) == (3, p.height, p.width)]
                for plan, pixels in self._pixels(kept):
                    out[plan.index] = pixels
        if self._stream is not None:
            self._stream.synchronize()
        taken = sum(x is not None for x in out)
        self.taken += taken
        self.declined += len(out) - taken
        return out

    # -- the header: which files the device takes ------------------------------------------
    def _plan(self, index: int, data: bytes) -> _Plan | None:
        if data[:3] != b"\xff\xd8\xff":
            return None  # not a JPEG: PNG, WebP, ... (or garbage, which Pillow names)
        if data.rfind(b"\xff\xd9", max(0, len(data) - _EOI_TAIL)) < 0:
            return None  # no end-of-image marker near the end: truncated; Pillow says so
        header = read_header(data)
        if header is None:
            return None  # not a baseline 8-bit RGB or greyscale JPEG (or unreadable): Pillow's path
        width, height, orientation = header
        if width * height > self.max_pixels or width == 0 or height == 0:
            return None
        scale = self._draft_scale(width, height)
        w, h = -(-width // scale), -(-height // scale)
        w, h = (h, w) if _ORIENT.get(orientation, (False,))[0] else (w, h)
        p = self.preprocess
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = p.resize, int(p.resize * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if new_long > MAX_STRETCH * max(p.resize, p.crop) or p.crop > new_w or p.crop > new_h:
            return None  # thin or smaller than the crop: the CPU path's bounded resize / padding
        return _Plan(index, width, height, orientation, scale, (new_h, new_w))

    def _draft_scale(self, width: int, height: int) -> int:
        """The reduced scale :func:`lookalike.images.decode_image` has Pillow decode at (its
        ``draft`` call, and Pillow's choice of 8, 4, 2 or 1 for it)."""
        if not self.draft_size or min(width, height) < 2 * self.draft_size:
            return 1
        scale = min(width, height) / self.draft_size
        wanted = (int(width / scale) + 1, int(height / scale) + 1)
        fits = min(width // wanted[0], height // wanted[1])
        return next(s for s in (8, 4, 2, 1) if fits >= s)

    def _groups(self, plans: list[_Plan]) -> list[list[_Plan]]:
        """Consecutive plans, at most ``batch_pixels`` decoded pixels per group (at least one file)."""
        groups: list[list[_Plan]] = []
        current: list[_Plan] = []
        pixels = 0
        for plan in plans:
            size = plan.width * plan.height
            if current and pixels + size > self.batch_pixels:
                groups.append(current)
                current, pixels = [], 0
            current.append(plan)
            pixels += size
        if current:
            groups.append(current)
        return groups

    # -- decode, orient, resize, crop ------------------------------------------------------
    def _decoded(self, datas: list[bytes]) -> list[Any | None]:
        """``decode_jpeg`` on the whole list; if that fails, file by file (``None`` where one fails)."""
        torch = self.torch
        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        try:
            return list(self._call_decode(tensors))
        except Exception:  # decode_jpeg returns nothing when one file fails: find which
            results: list[Any | None] = []
            for t in tensors:
                try:
                    results.append(self._call_decode([t])[0])
                except Exception:
                    results.append(None)
            return results

    def _call_decode(self, tensors: list[Any]) -> list[Any]:
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its decoders in favour of TorchCodec
            warnings.simplefilter("ignore", DeprecationWarning)
            got = self._decode(tensors, mode=self._rgb, device=self.device)
        return list(got)

    def _pixels(self, kept: list[tuple[_Plan, Any]]) -> list[tuple[_Plan, Any]]:
        """Orient, resize (images of one shape together) and crop: ``(crop, crop, 3)`` uint8."""
        torch = self.torch
        by_shape: dict[tuple[int, int, int, int], list[tuple[_Plan, Any]]] = {}
        for plan, img in kept:
            by_shape.setdefault((plan.width, plan.height, plan.orientation, plan.scale), []).append((plan, img))
        done: list[tuple[_Plan, Any]] = []
        p = self.preprocess
        c = p.crop
        for same in by_shape.values():
            plan = same[0][0]
            batch = torch.stack([img for _, img in same])
            if plan.scale > 1:  # Pillow's reduced-scale decode, as block means, rounded to uint8
                batch = torch.nn.functional.avg_pool2d(batch.to(torch.float32), plan.scale, plan.scale,
                                                       ceil_mode=True, count_include_pad=False).round_()
            transpose, flip_lr, flip_tb = _ORIENT.get(plan.orientation, (False, False, False))
            if transpose:
                batch = batch.transpose(2, 3)
            dims = [d for d, flip in ((3, flip_lr), (2, flip_tb)) if flip]
            if dims:
                batch = batch.flip(dims)
            new_h, new_w = plan.size
            if (new_h, new_w) != tuple(batch.shape[2:]):
                x = torch.nn.functional.interpolate(batch.to(torch.float32), size=(new_h, new_w),
                                                    mode=p.interpolation, align_corners=False, antialias=True)
                batch = x.round_().clamp_(0, 255)
            batch = batch.to(torch.uint8)
            top, left = int(round((new_h - c) / 2.0)), int(round((new_w - c) / 2.0))
            crops = batch[:, :, top : top + c, left : left + c].permute(0, 2, 3, 1).contiguous()
            done.extend((pl, crops[i]) for i, (pl, _) in enumerate(same))
        return done

