"""Limits on what the server accepts and holds at once: :class:`Limits`, the pixel budget of decoded images, and giving freed memory back to the system."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import io
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .._checks import positive_int
from ..errors import ConfigurationError, ImageSearchError

#: Environment variable holding ``USER:PASSWORD`` for HTTP basic auth (safer than ``--auth``).
AUTH_ENV = "LOOKALIKE_SERVE_AUTH"
DEFAULT_PORT = 7860
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "ip6-localhost"})
_NOT_A_PATH = (
    "send the image itself (multipart field 'image', or the raw bytes as the request body); "
    "this server never reads paths, globs or URLs sent to it"
)
_FORM_OVERHEAD = 64 * 1024  # multipart headers and small fields on top of the image bytes
_OUT_OF_MEMORY = "the server does not have the memory to search this image; send a smaller one"


@dataclass(frozen=True)
class Limits:
    """What the server accepts from a browser or an API client.

    Attributes:
        max_upload_bytes: largest upload, in bytes (the page and the API).
        max_pixels: largest image, in pixels (a decompression-bomb guard).
        max_k: most results one search may ask for.
        max_pixels_in_flight: most decoded pixels held at once by all requests together
            (0: twice ``max_pixels``); a request waits for its share, see ``max_wait_s``.
        max_aspect_ratio: most times the long side of an uploaded image may be its short side.
        max_wait_s: how long a request waits for its share of ``max_pixels_in_flight`` (or of
            ``max_body_bytes_in_flight``) before it is refused with 503.
        max_body_bytes_in_flight: most request-body bytes held at once by all requests together
            (0: four times :attr:`max_body_bytes`).
        max_text_chars: longest text query, in characters (the model reads only its first
            few dozen tokens anyway).
    """

    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_k: int = 100
    max_pixels_in_flight: int = 0
    max_aspect_ratio: int = 100
    max_wait_s: float = 30.0
    max_body_bytes_in_flight: int = 0
    max_text_chars: int = 1000

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_k", "max_aspect_ratio", "max_text_chars"):
            object.__setattr__(self, name, positive_int(getattr(self, name), name))
        budget = self.max_pixels_in_flight
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 0:
            raise ConfigurationError(f"max_pixels_in_flight must be a positive int (or 0: twice max_pixels), got {budget!r}")
        if budget == 0:
            object.__setattr__(self, "max_pixels_in_flight", 2 * self.max_pixels)
        elif budget < self.max_pixels:
            raise ConfigurationError(
                f"max_pixels_in_flight ({budget}) must be at least max_pixels ({self.max_pixels}): "
                "otherwise an image the server accepts could never be searched"
            )
        body_budget = self.max_body_bytes_in_flight
        if not isinstance(body_budget, int) or isinstance(body_budget, bool) or body_budget < 0:
            raise ConfigurationError(
                f"max_body_bytes_in_flight must be a positive int (or 0: four times max_body_bytes), got {body_budget!r}"
            )
        if body_budget == 0:
            object.__setattr__(self, "max_body_bytes_in_flight", 4 * self.max_body_bytes)
        elif body_budget < self.max_body_bytes:
            raise ConfigurationError(
                f"max_body_bytes_in_flight ({body_budget}) must be at least max_body_bytes ({self.max_body_bytes})"
            )
        wait = self.max_wait_s
        if not isinstance(wait, (int, float)) or isinstance(wait, bool) or not 0 <= wait < float("inf"):
            raise ConfigurationError(f"max_wait_s must be a number of seconds >= 0, got {wait!r}")

    @property
    def max_body_bytes(self) -> int:
        """Largest request body the server reads: an image as a form, or as a base64 data URL in JSON."""
        return self.max_upload_bytes * 4 // 3 + _FORM_OVERHEAD


class Rejected(ImageSearchError):
    """A request the server refuses; ``status`` is the HTTP status, the message is for the user."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class PixelBudget:
    """Decoded pixels in flight: at most ``capacity`` at once, shared by every request.

    A counting semaphore by pixel with a first-come, first-served queue (a large image is not
    starved by a stream of small ones). :meth:`reserve` waits for a share, or raises
    :class:`Rejected` (503) after ``timeout`` seconds; a reservation larger than the whole budget
    is refused at once (413), so nothing ever waits forever. Each time reservations of
    ``trim_after`` pixels or more in all have been released, freed memory is handed back to the
    operating system (``malloc_trim`` on glibc).
    """

    def __init__(self, capacity: int, *, trim_after: int = 4_000_000) -> None:
        self.capacity = positive_int(capacity, "the pixel budget")
        self.trim_after = trim_after
        self.in_flight = 0
        self.peak = 0  # the most pixels ever held at once (never above capacity)
        self._since_trim = 0
        self._queue: collections.deque[object] = collections.deque()
        self._cond = threading.Condition()

    @property
    def waiting(self) -> int:
        """How many reservations are queued for their share."""
        with self._cond:
            return len(self._queue)

    def wait_until(self, predicate: Callable[[PixelBudget], bool], timeout: float) -> bool:
        """Block until ``predicate(self)`` holds (checked at every change); False after ``timeout``."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    @contextlib.contextmanager
    def reserve(self, pixels: int, timeout: float) -> Iterator[None]:
        """Hold ``pixels`` of the budget for the ``with`` block."""
        if pixels > self.capacity:
            raise Rejected(
                413, f"the image has {pixels:,} pixels, more than the server decodes at once ({self.capacity:,})"
            )
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            self._cond.notify_all()
            admitted = self._cond.wait_for(
                lambda: self._queue[0] is ticket and self.in_flight + pixels <= self.capacity, timeout
            )
            self._queue.remove(ticket)
            if admitted:
                self.in_flight += pixels
                self.peak = max(self.peak, self.in_flight)
                self._since_trim += pixels
            self._cond.notify_all()
        if not admitted:
            raise Rejected(503, "the server is busy with other large images; try again in a moment")
        try:
            yield
        finally:
            with self._cond:
                self.in_flight -= pixels
                # Not only when idle: under a steady load freed images pile up in each thread's arena.
                trim = self._since_trim >= self.trim_after
                if trim:
                    self._since_trim = 0
                self._cond.notify_all()
            if trim:
                release_memory()


def return_large_blocks(threshold: int = 4 * 1024 * 1024) -> bool:
    """Make glibc give every block of ``threshold`` bytes or more straight back when freed.

    glibc raises its mmap threshold after large blocks are freed, so later decoded images land in
    per-thread heaps that keep their peak; a fixed threshold (``mallopt(M_MMAP_THRESHOLD)``) keeps
    images in blocks of their own. Process-wide: ``lookalike serve`` sets it; False off glibc.
    """
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(-3, threshold))  # -3: M_MMAP_THRESHOLD


def release_memory() -> bool:
    """Hand freed heap memory back to the operating system (glibc ``malloc_trim``); False elsewhere."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


@functools.cache
def _glibc() -> Any:
    """The C library when it is glibc (it has ``malloc_trim`` and ``mallopt``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):  # another C library (musl has no malloc_trim)
        return None
    libc.malloc_trim.restype = libc.mallopt.restype = ctypes.c_int
    return libc


def probe_image(data: bytes) -> tuple[int, int] | None:
    """An encoded image's width and height from its header (nothing is decoded); None if unreadable."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
    except Exception:  # whatever Pillow makes of a hostile header (or a bomb): load_image names it
        return None
    return int(width), int(height)
