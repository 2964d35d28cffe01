"""Opening images: the one place in lookalike where image files and bytes are decoded.

Every image, whether a path, ``bytes`` or a ``PIL.Image``, goes through :func:`load_image`,
which returns an RGB ``PIL.Image`` with EXIF orientation applied, or raises
:class:`~lookalike.errors.ImageLoadError` naming the image and the reason.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import ImageLoadError

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageBytes",
    "decode_image",
    "describe_source",
    "load_image",
    "read_image_bytes",
]

#: File extensions that ``sources.from_dir`` and ``from_glob`` pick up (lower case).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".jfif", ".ppm", ".pgm"}
)
#: Images with more pixels than this are refused as possible decompression bombs.
DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own hard limit (2 x MAX_IMAGE_PIXELS)


@dataclass(frozen=True)
class ImageBytes:
    """An encoded image read into memory, with its printable name and content hash."""

    name: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def describe_source(image: object) -> str:
    """A short printable name for an image input (its path, or its kind)."""
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return f"<{len(image)} bytes>"
    filename = getattr(image, "filename", None)  # a PIL image opened from a file
    if isinstance(filename, str) and filename:
        return filename
    return f"<{type(image).__name__}>"


def read_image_bytes(path: str | os.PathLike[str]) -> ImageBytes:
    """Read an image file into memory, with a clear error when that is impossible.

    Only regular files are read: a FIFO, socket or device is refused before it is
    opened (reading one could block forever), and so is a URL string (never fetched).
    """
    name = os.fspath(path)
    try:
        mode = os.stat(path).st_mode  # follows symlinks; opens nothing
        if not stat.S_ISREG(mode):
            raise ImageLoadError(name, not_regular_reason(mode))
        # O_NONBLOCK: should the path become a FIFO between stat and open, open returns at once.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        with open(fd, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise ImageLoadError(name, not_regular_reason(mode))
            data = fh.read()
    except (FileNotFoundError, NotADirectoryError):
        raise ImageLoadError(name, URL_REASON if looks_like_url(name) else "file not found") from None
    except IsADirectoryError:
        raise ImageLoadError(name, "is a directory, not an image file") from None
    except PermissionError:
        raise ImageLoadError(name, "permission denied") from None
    except OSError as exc:
        raise ImageLoadError(name, f"cannot read file ({exc.strerror or exc})") from None
    except ValueError:  # a NUL character: no file can have this name
        raise ImageLoadError(name, "not a valid file name (it contains a NUL character)") from None
    return ImageBytes(name, data)


#: A string that names a URL rather than a file (``https://...``, ``s3://...``).
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
URL_REASON = (
    "looks like a URL; lookalike does not fetch URLs. Download the image yourself and pass "
    "its bytes or a PIL.Image (e.g. requests.get(url).content), or a local file path"
)


def looks_like_url(name: object) -> bool:
    """True for a string such as ``https://example.com/cat.jpg``."""
    return isinstance(name, str) and _URL.match(name) is not None


def not_regular_reason(mode: int) -> str:
    """Why a file that is not a regular file is not read as an image."""
    if stat.S_ISDIR(mode):
        return "is a directory, not an image file"
    kinds = [
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ]
    kind = next((text for test, text in kinds if test(mode)), "a special file")
    return f"is {kind}, not a regular file; only regular files are read as images"


def load_image(
    image: str | os.PathLike[str] | bytes | Image.Image,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_size: int | None = None,
) -> Image.Image:
    """Open ``image`` (path, bytes or PIL image) as an RGB ``PIL.Image``.

    Args:
        image: a file path, encoded image bytes, or a ``PIL.Image``.
        max_pixels: refuse larger images (decompression bomb guard).
        min_size: when set, large JPEGs are decoded at a reduced scale whose shorter
            side is still at least this many pixels (much faster; exact for models that
            resize to this size anyway).

    Raises:
        ImageLoadError: the file is missing, empty, truncated, not an image, too large
            or otherwise undecodable; the message names the file and the reason.
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        return _to_rgb(image, describe_source(image), max_pixels)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(ImageBytes(describe_source(image), bytes(image)), max_pixels=max_pixels, min_size=min_size)
    if isinstance(image, (str, os.PathLike)):
        return decode_image(read_image_bytes(image), max_pixels=max_pixels, min_size=min_size)
    raise ImageLoadError(
        describe_source(image),
        "unsupported input type; pass a path, bytes or a PIL.Image",
    )


def decode_image(
    encoded: ImageBytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_size: int | None = None
) -> Image.Image:
    """Decode in-memory image bytes to RGB; see :func:`load_image`."""
    from PIL import Image, UnidentifiedImageError

    name = encoded.name
    if not encoded.data:
        raise ImageLoadError(name, "empty file")
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 MP; max_pixels (default: Pillow's own 179 MP hard limit)
            # decides instead, so large real photos (e.g. 102 MP) still load.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(encoded.data))
            width, height = img.size
            if width * height > max_pixels:
                raise ImageLoadError(
                    name, f"{width}x{height} pixels exceeds the limit of {max_pixels} (decompression bomb guard)"
                )
            if min_size and img.format == "JPEG" and min(width, height) >= 2 * min_size:
                # Decode at 1/2, 1/4 or 1/8 scale straight from the DCT coefficients.
                scale = min(width, height) / min_size
                img.draft("RGB", (int(width / scale) + 1, int(height / scale) + 1))
            img.load()
            return _to_rgb(img, name, max_pixels)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(name, "not an image, or a format Pillow cannot read") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageLoadError(name, f"too many pixels (decompression bomb guard): {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower():
            reason = "truncated file (" + reason + ")"
        raise ImageLoadError(name, f"cannot decode: {reason}") from None


def _to_rgb(img: Image.Image, name: str, max_pixels: int) -> Image.Image:
    from PIL import Image, ImageOps

    width, height = img.size
    if width * height > max_pixels:
        raise ImageLoadError(name, f"{width}x{height} pixels exceeds the limit of {max_pixels}")
    if width == 0 or height == 0:
        raise ImageLoadError(name, "image has no pixels")
    try:
        img.load()  # a PIL image opened lazily by the caller may still be truncated or damaged
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower():
            reason = "truncated file (" + reason + ")"
        raise ImageLoadError(name, f"cannot decode: {reason}") from None
    if getattr(img, "is_animated", False):
        img.seek(0)  # animated GIF/WebP/APNG: the first frame stands for the image
    try:
        if img.getexif().get(0x0112, 1) != 1:  # Orientation; exif_transpose copies even when 1
            img = ImageOps.exif_transpose(img) or img
    except Exception:  # a broken EXIF block must not make a good picture unusable
        pass
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # High bit depth: scale into 0..255 instead of letting convert() clip.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr8 = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def pixel_digest(img: Image.Image) -> str:
    """A content hash of a PIL image's pixels (for ids of in-memory images)."""
    h = hashlib.sha256()
    h.update(f"{img.mode}:{img.size}".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def resolved_path(path: str | os.PathLike[str]) -> str:
    """The absolute, symlink-resolved form of ``path`` used for stable ids."""
    return str(Path(path).expanduser().resolve())
