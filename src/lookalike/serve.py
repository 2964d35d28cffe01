"""``lookalike serve``: a web page and a small JSON API over an index.

The page (Gradio, the ``[ui]`` extra) lets a person drop, paste, upload or photograph an image and
see the most similar stored images with score, label and file name; a click shows a result large
and searches by it. The same search is a JSON endpoint for apps not written in Python::

    POST /api/search      image as multipart field "image" or as the raw body; ?k=10&filter=label=cat
    GET  /api/info        how many images, which model built the index, the limits
    GET  /api/image/{id}  a stored image, by record id (JPEG, ?size=512)

Safe by default: it binds to 127.0.0.1; the browser can send image bytes only, never a server path,
glob or URL to read; it reads stored images only by record id; uploads have byte and pixel limits;
bad input gets a one-line message, never a traceback; optional HTTP basic auth (``--auth`` or
``$LOOKALIKE_SERVE_AUTH``) covers the page and the API alike.

Gradio is imported only when the app is built, never by ``import lookalike`` or ``lookalike --help``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import contextlib
import ctypes
import functools
import io
import json
import os
import secrets
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    ConfigurationError,
    ImageLoadError,
    ImageSearchError,
    MissingDependencyError,
    NotFoundError,
    StoreError,
)
from .images import DEFAULT_MAX_PIXELS, decode_image, load_image, read_image_bytes
from .index import ImageSearchIndex
from .types import HASH_FIELD, Hit

if TYPE_CHECKING:
    import numpy as np
    from fastapi import FastAPI
    from numpy.typing import NDArray
    from PIL import Image
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "AUTH_ENV",
    "BodyLimitMiddleware",
    "ByteBudget",
    "Limits",
    "PixelBudget",
    "SearchService",
    "add_command",
    "bind_warning",
    "build_app",
    "run",
]

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
    """

    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_k: int = 100
    max_pixels_in_flight: int = 0
    max_aspect_ratio: int = 100
    max_wait_s: float = 30.0
    max_body_bytes_in_flight: int = 0

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_k", "max_aspect_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"{name} must be a positive int, got {value!r}")
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
        if capacity < 1:
            raise ConfigurationError(f"the pixel budget must be positive, got {capacity}")
        self.capacity = capacity
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


# -- the search service: everything the page and the API do, without any web framework ----------
class SearchService:
    """Searches an index by uploaded image bytes or by a stored record, within :class:`Limits`.

    Stored images are read only through a record id (id → the record's stored ``path``), so a
    client can never make the server open a file that is not in the index.
    """

    def __init__(self, index: ImageSearchIndex, limits: Limits | None = None, *, label_field: str = "label") -> None:
        self.index = index
        self.limits = limits or Limits()
        self.label_field = label_field
        self._lock = threading.RLock()
        self.budget = PixelBudget(self.limits.max_pixels_in_flight)
        self._labels: list[str] | None = None

    # -- facts about the index ----------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Size, model and limits, as ``GET /api/info`` returns them."""
        with self._lock:
            schema = self.index.store.describe()
            count = self.index.count() if schema is not None else 0
        return {
            "count": count,
            "embedder": schema.identity if schema else None,
            "dim": schema.dim if schema else None,
            "metric": schema.metric if schema else None,
            "fields": list(schema.fields) if schema else [],
            "store": type(self.index.store).__name__,
            "lookalike": __version__,
            "limits": {
                "max_upload_bytes": self.limits.max_upload_bytes,
                "max_pixels": self.limits.max_pixels,
                "max_k": self.limits.max_k,
                "max_pixels_in_flight": self.limits.max_pixels_in_flight,
                "max_aspect_ratio": self.limits.max_aspect_ratio,
            },
        }

    def filter_fields(self) -> tuple[str, ...]:
        schema = self.index.store.describe()
        return tuple(f for f in schema.fields if f != "path") if schema else ()

    def labels(self, scan_limit: int = 20_000) -> list[str]:
        """Distinct values of the label field (from the first ``scan_limit`` records; cached)."""
        if self._labels is None:
            found: set[str] = set()
            if self.label_field in self.filter_fields():
                seen = 0
                with self._lock:
                    for batch in self.index.store.scan(1000):
                        for record in batch:
                            value = record.metadata.get(self.label_field)
                            if value is not None and value != "":
                                found.add(str(value))
                        seen += len(batch)
                        if seen >= scan_limit:
                            break
            self._labels = sorted(found)
        return self._labels

    # -- checking what clients send -------------------------------------------------------------
    def check_k(self, k: object) -> int:
        try:
            value = int(str(k)) if not isinstance(k, (int, float)) else int(k)
        except ValueError:
            raise Rejected(400, f"k must be a whole number, got {k!r}") from None
        if isinstance(k, bool) or not 1 <= value <= self.limits.max_k:
            raise Rejected(400, f"k must be between 1 and {self.limits.max_k}, got {k!r}")
        return value

    def check_filter(self, pairs: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any] | None:
        """``["label=cat,dog", ...]`` or ``{"label": "cat"}`` → a store filter on filterable fields."""
        flt: dict[str, list[str]] = {}
        items = list(pairs.items()) if isinstance(pairs, Mapping) else [_split_pair(p) for p in pairs or ()]
        fields = self.filter_fields()
        for key, value in items:
            if key not in fields:
                shown = ", ".join(fields) or "none"
                raise Rejected(400, f"cannot filter on {key!r}; filterable fields: {shown}")
            values = value if isinstance(value, list) else str(value).split(",")
            flt.setdefault(key, []).extend(str(v) for v in values if str(v) != "")
        return {k: (v[0] if len(v) == 1 else v) for k, v in flt.items() if v} or None

    def check_upload(self, data: bytes) -> tuple[int, int]:
        """Bytes, pixels and shape of an upload, read from its header before anything is decoded.

        Returns its (width, height), or raises :class:`Rejected` with a readable reason.
        """
        if len(data) > self.limits.max_upload_bytes:
            raise Rejected(413, f"the image is {_size(len(data))}; the limit is {_size(self.limits.max_upload_bytes)}")
        size = probe_image(data)
        if size is None:  # Pillow refuses the header: load_image fails there too and names the reason
            try:
                load_image(data, max_pixels=self.limits.max_pixels)
            except ImageLoadError as exc:
                raise Rejected(400, f"could not read the uploaded image: {exc.reason}") from None
            raise Rejected(400, "could not read the uploaded image: not an image")
        width, height = size
        if width * height > self.limits.max_pixels:
            raise Rejected(
                400, f"could not read the uploaded image: {width}x{height} pixels exceeds the limit of "
                f"{self.limits.max_pixels} (decompression bomb guard)"
            )
        if width < 1 or height < 1:
            raise Rejected(400, "could not read the uploaded image: image has no pixels")
        ratio = self.limits.max_aspect_ratio
        if max(width, height) > ratio * min(width, height):
            raise Rejected(
                400, f"the image is {width}x{height} pixels: its long side is more than {ratio} times its "
                "short side; crop it to a less elongated picture"
            )
        return width, height

    @contextlib.contextmanager
    def decoded_upload(self, data: bytes) -> Iterator[Image.Image]:
        """The uploaded bytes as an RGB image, decoded within the pixel budget and freed after the block.

        Raises:
            Rejected: unreadable, too large, too elongated (400/413), or the server stayed busy (503).
        """
        width, height = self.check_upload(data)
        with self.budget.reserve(width * height, self.limits.max_wait_s):
            failure: Rejected | None = None
            try:
                image = load_image(data, max_pixels=self.limits.max_pixels, min_size=self._image_size())
            except ImageLoadError as exc:
                failure = Rejected(400, f"could not read the uploaded image: {exc.reason}")
            except MemoryError:  # raised below, once the traceback (and the memory it holds) is gone
                failure = Rejected(413, _OUT_OF_MEMORY)
            if failure is not None:
                raise failure
            try:
                yield image
            finally:
                image.close()  # give the decoded pixels back now, not when the last reference goes

    def embed_upload(self, data: bytes) -> NDArray[np.float32]:
        """The query vector of uploaded image bytes (see :meth:`decoded_upload`)."""
        with self.decoded_upload(data) as image:
            try:
                with self._lock:
                    vectors: NDArray[np.float32] = self.index.embed_queries([image])
                vector: NDArray[np.float32] = vectors[0].copy()
                return vector
            except ImageLoadError as exc:  # the embedder's own bound on its preprocessing
                failure = Rejected(400, f"could not read the uploaded image: {exc.reason}")
            except MemoryError:  # e.g. a thin image resized by an embedder without a bound
                failure = Rejected(413, _OUT_OF_MEMORY)
        raise failure  # out of the except block: the traceback and what it held are freed

    def _image_size(self) -> int | None:
        size = getattr(self.index.embedder, "image_size", None)
        return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None

    # -- searching --------------------------------------------------------------------------------
    def search_upload(self, data: bytes, k: object = 10, filter: Any = None) -> list[Hit]:
        self.check_k(k)
        self.check_filter(filter)  # cheap checks first: a bad k never costs a decode
        return self.search(self.embed_upload(data), k, filter)

    def search(self, query: Image.Image | Any, k: object = 10, filter: Any = None) -> list[Hit]:
        """Search by a decoded image or a vector (use :meth:`search_upload` for bytes)."""
        n = self.check_k(k)
        flt = self.check_filter(filter)
        with self._lock:
            return self.index.search(query, n, filter=flt)

    def search_similar(self, id: str, k: object = 10, filter: Any = None) -> list[Hit]:
        """The images most like the stored record ``id`` (by its stored vector)."""
        with self._lock:
            record = self.index.get(id)
        return self.search(record.vector, k, filter)

    def stored_image(self, id: str, max_side: int = 512) -> Image.Image | None:
        """The stored image of record ``id``, shrunk to ``max_side``; None if its file is unreadable.

        Raises:
            NotFoundError: no record has this id.
        """
        with self._lock:
            record = self.index.get(id)
        if not record.path:
            return None
        try:
            encoded = read_image_bytes(record.path)
        except ImageLoadError:
            return None
        size = probe_image(encoded.data)
        # A stored image larger than the whole budget is still shown: it waits to be decoded alone.
        pixels = min(size[0] * size[1], self.budget.capacity) if size else 1
        with self.budget.reserve(max(pixels, 1), self.limits.max_wait_s):
            try:
                image = decode_image(encoded, max_pixels=DEFAULT_MAX_PIXELS, min_size=max_side)
            except (ImageLoadError, MemoryError):
                return None
            del encoded
            image.thumbnail((max_side, max_side))  # in place: the full-size pixels are freed here
        return image


def _split_pair(pair: str) -> tuple[str, str]:
    key, sep, value = str(pair).partition("=")
    if not sep or not key:
        raise Rejected(400, f"filter takes KEY=VALUE[,VALUE], got {pair!r}")
    return key, value


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KB"


def hit_dict(hit: Hit) -> dict[str, Any]:
    """A hit as the JSON API returns it."""
    return {"id": hit.id, "score": round(hit.score, 6), "path": hit.path, "metadata": dict(hit.metadata)}


# -- the JSON API -------------------------------------------------------------------------------
def _add_api_routes(app: FastAPI, service: SearchService) -> None:
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    def error(status: int, message: str) -> JSONResponse:
        headers = {"Retry-After": "5"} if status == 503 else None
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    async def guarded(work: Callable[[], Any]) -> Response:
        try:
            result = await run_in_threadpool(work)
        except Rejected as exc:
            return error(exc.status, str(exc))
        except NotFoundError as exc:
            return error(404, str(exc))
        except (ConfigurationError, ImageLoadError) as exc:
            return error(400, str(exc))
        except StoreError as exc:
            return error(503, f"the index store failed: {exc}")
        except MemoryError:
            return error(503, "the server ran out of memory; try again later")
        except Exception:  # never a traceback to the client; keep it in the server log
            traceback.print_exc(file=sys.stderr)
            return error(500, "internal error; the server log has the details")
        return result if isinstance(result, Response) else JSONResponse(result)

    async def api_info(request: Request) -> Response:
        return await guarded(service.info)

    async def api_search(request: Request) -> Response:
        try:
            data, fields = await _read_search_request(request, service.limits.max_upload_bytes)
        except Rejected as exc:
            return error(exc.status, str(exc))
        k = fields.get("k", [request.query_params.get("k", "10")])[0]
        flt = fields.get("filter", []) + request.query_params.getlist("filter")

        def work() -> dict[str, Any]:
            return {"hits": [hit_dict(h) for h in service.search_upload(data, k, flt)]}

        return await guarded(work)

    async def api_image(request: Request) -> Response:
        id = str(request.path_params["id"])
        size = request.query_params.get("size", "512")

        def work() -> Response:
            if not size.isdigit() or not 16 <= int(size) <= 2048:
                raise Rejected(400, f"size must be between 16 and 2048, got {size!r}")
            image = service.stored_image(id, int(size))
            if image is None:
                raise Rejected(404, "the image file of this record is not available on the server")
            return Response(_encode_jpeg(image), media_type="image/jpeg")

        return await guarded(work)

    async def _read_search_request(request: Request, limit: int) -> tuple[bytes, dict[str, list[Any]]]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype in ("application/json", "text/plain", "application/x-www-form-urlencoded"):
            raise Rejected(415, _NOT_A_PATH)
        is_form = ctype == "multipart/form-data"
        body = await _read_capped(request, limit + (_FORM_OVERHEAD if is_form else 0))
        if not is_form:
            return body, {}

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        form = await Request(request.scope, replay).form(max_files=1, max_fields=20)
        try:
            if any(name in form for name in ("path", "url", "glob")):
                raise Rejected(400, _NOT_A_PATH)
            upload = form.get("image")
            if upload is None:
                raise Rejected(400, "no image: send it as the multipart field 'image'")
            if not isinstance(upload, UploadFile):
                raise Rejected(400, _NOT_A_PATH)
            data = await upload.read()
            fields = {key: [str(v) for v in form.getlist(key)] for key in form if key != "image"}
        finally:
            await form.close()
        return data, fields

    async def _read_capped(request: Request, limit: int) -> bytes:
        declared = request.headers.get("content-length", "")
        too_big = Rejected(413, f"the upload is larger than the limit of {_size(service.limits.max_upload_bytes)}")
        if declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks: list[bytes] = []
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise too_big
            chunks.append(chunk)
        if not total:
            raise Rejected(400, "no image: the request body is empty")
        return b"".join(chunks)

    app.add_route("/api/info", api_info, methods=["GET"])
    app.add_route("/api/search", api_search, methods=["POST"])
    app.add_route("/api/image/{id}", api_image, methods=["GET"])


def _encode_jpeg(image: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=88)
    return buf.getvalue()


# -- request bodies ----------------------------------------------------------------------------------
class _BodyTooLarge(Exception):
    pass


class ByteBudget:
    """Request-body bytes held at once by all requests (those being received and those being served).

    Taken by :class:`BodyLimitMiddleware` before a body is read, so a client waiting for its turn
    leaves its bytes in the network, not in the server's memory. Polled (the middleware may run on
    more than one event loop): :meth:`take` tries every 20 ms until ``timeout``.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ConfigurationError(f"the byte budget must be positive, got {capacity}")
        self.capacity = capacity
        self.in_flight = 0
        self.peak = 0
        self._lock = threading.Lock()

    def try_take(self, size: int) -> bool:
        """Take ``size`` bytes now if they are free (one body larger than the budget takes all of it)."""
        size = min(size, self.capacity)
        with self._lock:
            if self.in_flight + size > self.capacity:
                return False
            self.in_flight += size
            self.peak = max(self.peak, self.in_flight)
            return True

    def give_back(self, size: int) -> None:
        with self._lock:
            self.in_flight -= min(size, self.capacity)

    async def take(self, size: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``size`` bytes; False if they never came free."""
        import asyncio

        deadline = time.monotonic() + timeout
        while not self.try_take(size):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True


class BodyLimitMiddleware:
    """Refuses request bodies over a limit with 413, before the app parses any of it.

    A declared ``Content-Length`` over the limit is refused without reading the body; a body sent
    without one (chunked) is counted as it streams, and refused as soon as it passes the limit.
    ``limit_for(path)`` gives the limit of each request path. With a ``budget``, a request with a
    body first takes its size (its limit, when chunked) from it, waiting up to ``max_wait_s``,
    then 503; it gives the bytes back when its answer is sent.
    """

    def __init__(
        self, app: ASGIApp, limit_for: Callable[[str], int], budget: ByteBudget | None = None,
        max_wait_s: float = 30.0,
    ) -> None:
        self.app = app
        self.limit_for = limit_for
        self.budget = budget
        self.max_wait_s = max_wait_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(str(scope.get("path", "")))
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").strip()
        if declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, 413, f"the request body is larger than the limit of {_size(limit)}", send)
            return
        size = int(declared) if declared.isdigit() else (limit if b"transfer-encoding" in headers else 0)
        if self.budget is None or size == 0:
            await self._limited(scope, receive, send, limit)
            return
        if not await self.budget.take(size, self.max_wait_s):
            await self._refuse(scope, 503, "the server is busy receiving other large requests; try again in a moment",
                               send)
            return
        try:
            await self._limited(scope, receive, send, limit)
        finally:
            self.budget.give_back(size)

    async def _limited(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        received = 0
        overflow = False
        started = False

        async def counted_receive() -> Any:
            nonlocal received, overflow
            if overflow:  # the app asks again after the refusal: the client is gone, as far as it knows
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    overflow = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Any) -> None:
            nonlocal started
            if overflow and not started:
                return  # the app's answer to a body it never fully got: the 413 replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _BodyTooLarge:
            pass
        except Exception:
            if not overflow:
                raise
        if overflow and not started:
            await self._refuse(scope, 413, f"the request body is larger than the limit of {_size(limit)}", send)

    @staticmethod
    async def _refuse(scope: Scope, status: int, message: str, send: Send) -> None:
        from starlette.responses import JSONResponse

        headers = {"Connection": "close"}  # the unread body is not ours to drain
        if status == 503:
            headers["Retry-After"] = "5"
        await JSONResponse({"error": message}, status_code=status, headers=headers)(scope, _no_body, send)


async def _no_body() -> Any:
    return {"type": "http.disconnect"}


def body_limits(limits: Limits) -> Callable[[str], int]:
    """The body limit of each path: an image as a multipart form, or base64 in Gradio's JSON."""
    form = limits.max_upload_bytes + _FORM_OVERHEAD

    def limit_for(path: str) -> int:
        if path == "/api/search" or path.rstrip("/").endswith("/upload"):
            return form
        return limits.max_body_bytes

    return limit_for


# -- uploads ---------------------------------------------------------------------------------------
#: Seconds an upload stays on disk after the search that read it (the page still shows it as the
#: query's preview); re-searches with another k or label use the query's vector, not the file.
UPLOAD_GRACE_S = 15.0


def remove_upload(path: Path, root: Path) -> None:
    """Delete an uploaded file under ``root``, and its folder once empty; anything else is left alone."""
    path = path.resolve()
    if not path.is_relative_to(root) or path == root:
        return
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
    folder = path.parent
    while folder != root and folder.is_relative_to(root):
        try:
            folder.rmdir()  # only when empty
        except OSError:
            break
        folder = folder.parent


class UploadJanitor:
    """Deletes uploaded files once a search has read them, ``grace_s`` seconds later.

    One timer thread at most: it deletes the files whose time has come and re-arms itself while
    files are pending. Gradio's own ``delete_cache`` sweep catches uploads that were never searched.
    """

    def __init__(self, root: Path, grace_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self.grace_s = UPLOAD_GRACE_S if grace_s is None else grace_s
        self.clock = clock
        self._due: collections.deque[tuple[float, Path]] = collections.deque()
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def consumed(self, path: Path) -> None:
        """``path`` has been read: delete it once the grace period is over (now, if there is none)."""
        if self.grace_s <= 0:
            remove_upload(path, self.root)
            return
        with self._lock:
            self._due.append((self.clock() + self.grace_s, path))
            if self._timer is None:
                self._arm(self.grace_s)

    def sweep(self) -> None:
        """Delete the files whose grace period is over; re-arm for the rest."""
        now = self.clock()
        with self._lock:
            due = []
            while self._due and self._due[0][0] <= now:
                due.append(self._due.popleft()[1])
            if self._timer is not None and self._timer is not threading.current_thread():
                self._timer.cancel()  # swept by hand: the pending timer is replaced below
            self._timer = None
            if self._due:
                self._arm(max(self._due[0][0] - now, 0.05))
        for path in due:
            remove_upload(path, self.root)

    def _arm(self, delay: float) -> None:
        self._timer = threading.Timer(delay, self.sweep)
        self._timer.daemon = True
        self._timer.start()


def looks_like_image(path: Path) -> bool:
    """Whether a file starts like an image format Pillow reads (its first 16 bytes; nothing decoded)."""
    from PIL import Image

    try:
        with open(path, "rb") as fh:
            prefix = fh.read(16)
    except OSError:
        return False
    Image.init()
    # Formats with no signature (accept is None: TGA and a few rare ones) would take any file.
    return any(accept is not None and accept(prefix) for _, accept in Image.OPEN.values())


class UploadCheckMiddleware:
    """Refuses (415) and deletes files uploaded through Gradio's upload route that are not images.

    Gradio stores whatever ``POST .../gradio_api/upload`` sends; this looks at the first bytes of
    each stored file as soon as the upload ends, before any search could read it.
    """

    def __init__(self, app: ASGIApp, root: Path) -> None:
        self.app = app
        self.root = root

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] != "http" or scope.get("method") != "POST" or not path.endswith("/gradio_api/upload"):
            await self.app(scope, receive, send)
            return
        messages: list[Any] = []

        async def keep(message: Any) -> None:
            messages.append(message)

        await self.app(scope, receive, keep)
        start = next((m for m in messages if m["type"] == "http.response.start"), None)
        stored = None
        if start is not None and start["status"] == 200:
            try:
                stored = json.loads(b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body"))
            except ValueError:
                stored = None
        if isinstance(stored, list) and all(isinstance(p, str) for p in stored):
            refused = [p for p in stored if not looks_like_image(Path(p))]
            if refused:
                for p in stored:
                    remove_upload(Path(p), self.root)
                from starlette.responses import PlainTextResponse

                names = ", ".join(repr(Path(p).name) for p in refused)
                response = PlainTextResponse(
                    f"not an image: {names} (send JPEG, PNG, WebP, GIF, BMP, TIFF or another image format)",
                    status_code=415,
                )
                await response(scope, receive, send)
                return
        for message in messages:
            await send(message)


# -- basic auth ---------------------------------------------------------------------------------
def parse_auth(value: str | None) -> tuple[str, str] | None:
    """``USER:PASSWORD`` → a pair; None or "" → None."""
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ConfigurationError("--auth / $LOOKALIKE_SERVE_AUTH takes USER:PASSWORD (both non-empty)")
    return user, password


class BasicAuthMiddleware:
    """HTTP basic auth in front of everything (page, Gradio's API, the JSON API)."""

    def __init__(self, app: ASGIApp, credentials: tuple[str, str], realm: str = "lookalike") -> None:
        self.app = app
        self._expected = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode())
        self._realm = realm

    def _accepts(self, header: bytes) -> bool:
        # RFC 7617 (via RFC 7235): the scheme name is case-insensitive; one or more spaces follow it.
        scheme, _, token = header.strip().partition(b" ")
        return scheme.lower() == b"basic" and secrets.compare_digest(token.strip(), self._expected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if self._accepts(given):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        from starlette.responses import JSONResponse

        response = JSONResponse(
            {"error": "authentication required"},
            status_code=401,
            headers={"WWW-Authenticate": f'Basic realm="{self._realm}", charset="UTF-8"'},
        )
        await response(scope, receive, send)


def bind_warning(host: str, auth: tuple[str, str] | None) -> str | None:
    """The warning to print when ``host`` is reachable from other machines and no auth is set."""
    if host in _LOOPBACK or host.startswith("127.") or auth is not None:
        return None
    return (
        f"serving on {host} without authentication: anyone who can reach this port can search "
        f"the index and see its images. Set ${AUTH_ENV}=USER:PASSWORD (or --auth), or bind to 127.0.0.1."
    )


# -- the page -----------------------------------------------------------------------------------
def _import_gradio() -> Any:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "gradio":
            raise MissingDependencyError("gradio", "ui", "lookalike serve") from exc
        raise
    return gradio


def _caption(hit: Hit) -> str:
    name = Path(hit.path).name if hit.path else hit.id[:12]
    label = hit.metadata.get("label")
    return f"{hit.score:.3f} · {label} · {name}" if label not in (None, "") else f"{hit.score:.3f} · {name}"


def _placeholder(size: int = 256) -> Image.Image:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (229, 231, 235))
    ImageDraw.Draw(image).text((size // 2 - 40, size // 2 - 6), "file not available", fill=(75, 85, 99))
    return image


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _md_escape(text: object) -> str:
    out = str(text)
    for ch in "\\`*_{}[]<>()#+-!|":
        out = out.replace(ch, "\\" + ch)
    return out


# Captions carry score, label and file name: let them wrap instead of being cut off.
_CSS = "#gallery .caption-label { white-space: normal; overflow-wrap: anywhere; text-overflow: clip; }"


def _build_blocks(gr: Any, service: SearchService, default_k: int) -> Any:
    any_label = "(any label)"
    labels = service.labels()
    has_labels = service.label_field in service.filter_fields()
    upload_root = Path(gr.utils.get_upload_folder()).resolve()
    uploads = UploadJanitor(upload_root)

    def header() -> str:
        info = service.info()
        model = info["embedder"] or "none yet"
        return (
            f"## lookalike: search by image\n"
            f"**{info['count']:,}** images in the index · model `{model}` · store {info['store']}"
        )

    def label_filter(label: str | None) -> dict[str, Any] | None:
        if not label or label == any_label:
            return None
        return {service.label_field: label}

    def read_upload(payload: Any) -> bytes:
        """The bytes of an image the browser uploaded (never a path it names)."""
        if not isinstance(payload, Mapping):
            raise gr.Error("Upload an image first: drop, paste or choose one, or use the webcam.")
        url = payload.get("url") or ""
        if payload.get("path") is None and isinstance(url, str) and url.startswith("data:"):
            if len(url) > service.limits.max_upload_bytes * 4 // 3 + 1024:
                raise gr.Error(f"The image is larger than the limit of {_size(service.limits.max_upload_bytes)}.")
            try:
                return base64.b64decode(url.partition(",")[2], validate=True)
            except (binascii.Error, ValueError):
                raise gr.Error("Could not read the uploaded image: bad data URL.") from None
        path = Path(str(payload.get("path"))).resolve()
        if not path.is_relative_to(upload_root):  # defence in depth: Gradio checks too
            raise gr.Error(_sentence(_NOT_A_PATH))
        if not path.is_file():
            raise gr.Error("The uploaded image is no longer on the server: upload it again.")
        try:
            if path.stat().st_size > service.limits.max_upload_bytes:
                raise gr.Error(f"The image is larger than the limit of {_size(service.limits.max_upload_bytes)}.")
            return path.read_bytes()
        finally:
            uploads.consumed(path)  # the search keeps the query's vector, never the file

    def show(hits: list[Hit], seconds: float, what: str) -> tuple[Any, str, list[dict[str, Any]]]:
        items = []
        for hit in hits:
            thumb = None
            try:
                thumb = service.stored_image(hit.id, 256)
            except (NotFoundError, Rejected):  # gone, or the server stayed busy: a placeholder
                pass
            items.append((thumb or _placeholder(), _caption(hit)))
        status = f"{len(hits)} results for {what} in {seconds:.2f} s" if hits else f"No results for {what}."
        return items, status, [hit_dict(h) for h in hits]

    def run_guarded(work: Callable[[], list[Hit]], what: str) -> tuple[Any, str, list[dict[str, Any]]]:
        start = time.perf_counter()
        try:
            hits = work()
        except NotFoundError:
            message = "That image is no longer in the index."
        except ImageSearchError as exc:  # Rejected (bad upload, bad k or filter), store errors
            message = _sentence(str(exc))
        else:
            return show(hits, time.perf_counter() - start, what)
        gr.Warning(message)
        return [], f"**{_md_escape(message)}**", []

    def search_upload(payload: Any, k: Any, label: Any) -> tuple[Any, ...]:
        data = read_upload(payload)
        vectors: list[Any] = []

        def work() -> list[Hit]:
            service.check_k(k)
            service.check_filter(label_filter(label))  # cheap checks before the decode
            vectors.append(service.embed_upload(data))
            return service.search(vectors[0], k, label_filter(label))

        gallery, status, hits = run_guarded(work, "the uploaded image")
        vector = vectors[0].tolist() if vectors else None  # re-searches (k, label) reuse it
        return gallery, status, hits, None, vector, gr.update(visible=False)

    def search_current(payload: Any, k: Any, label: Any, query_id: Any, query_vec: Any) -> tuple[Any, ...]:
        if query_id:
            gallery, status, hits = run_guarded(
                lambda: service.search_similar(str(query_id), k, label_filter(label)), "the chosen result"
            )
            return gallery, status, hits, query_id, gr.skip(), gr.skip()
        if query_vec:
            import numpy as np

            vector = np.asarray(query_vec, dtype=np.float32)
            gallery, status, hits = run_guarded(
                lambda: service.search(vector, k, label_filter(label)), "the uploaded image"
            )
            return gallery, status, hits, None, gr.skip(), gr.skip()
        if payload is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return search_upload(payload, k, label)

    def select(hits: list[dict[str, Any]], evt: Any) -> tuple[Any, ...]:
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        if not hits or not 0 <= index < len(hits):
            return gr.skip(), gr.skip(), None, gr.update(visible=False)
        hit = hits[index]
        try:
            image = service.stored_image(hit["id"], 1024)
        except NotFoundError:
            raise gr.Error("That image is no longer in the index.") from None
        except Rejected:  # the server stayed busy with large images: the details, without the picture
            image = None
        meta = {k: v for k, v in hit["metadata"].items() if k != HASH_FIELD}
        lines = [
            f"### {_md_escape(Path(hit['path']).name if hit['path'] else hit['id'])}",
            f"score **{hit['score']:.4f}**",
            *(f"{_md_escape(key)}: **{_md_escape(value)}**" for key, value in meta.items()),
            f"id `{hit['id']}`",
        ]
        return image or _placeholder(512), "  \n".join(lines), hit["id"], gr.update(visible=True)

    # Gradio finds the event-data parameter by its (evaluated) annotation.
    select.__annotations__ = {"hits": list, "evt": gr.SelectData, "return": tuple}

    def search_by(selected: Any, k: Any, label: Any) -> tuple[Any, ...]:
        if not selected:
            raise gr.Error("Click a result first.")
        gallery, status, hits = run_guarded(
            lambda: service.search_similar(str(selected), k, label_filter(label)), "the chosen result"
        )
        try:
            query_image = service.stored_image(str(selected), 1024)
        except (NotFoundError, Rejected):
            query_image = None
        return gallery, status, hits, selected, None, query_image or gr.skip()

    def clear() -> tuple[Any, ...]:
        return [], "", [], None, None, gr.update(visible=False)

    # Uploads are deleted once searched (UploadJanitor); this sweep catches the ones never searched,
    # and the thumbnails the page showed.
    with gr.Blocks(title="lookalike", analytics_enabled=False, delete_cache=(600, 1800)) as demo:
        info_md = gr.Markdown(elem_id="info")
        with gr.Row():
            with gr.Column(scale=2, min_width=280):
                query = gr.Image(
                    label="Query image: drop, paste or upload (or use the webcam)",
                    sources=["upload", "clipboard", "webcam"],
                    type="filepath",
                    height=320,
                    elem_id="query",
                )
                k = gr.Slider(1, min(50, service.limits.max_k), value=default_k, step=1, label="Results (k)",
                              elem_id="k")
                label = gr.Dropdown(
                    [any_label, *labels], value=any_label, label="Label filter", allow_custom_value=True,
                    visible=has_labels, elem_id="label",
                )
                run = gr.Button("Search", variant="primary", elem_id="run")
                status = gr.Markdown(elem_id="status")
            with gr.Column(scale=3):
                gallery = gr.Gallery(
                    label="Most similar (click one to see it large)", columns=4, height="auto",
                    object_fit="contain", allow_preview=False, interactive=False, elem_id="gallery",
                )
                with gr.Row(visible=False, elem_id="detail") as detail:
                    big = gr.Image(label="Selected result", type="pil", interactive=False, height=360,
                                   elem_id="selected")
                    with gr.Column():
                        details = gr.Markdown(elem_id="details")
                        again = gr.Button("Search by this image", elem_id="search-by")
        hits_state = gr.State([])
        query_id = gr.State(None)
        query_vec = gr.State(None)  # the uploaded query's vector: its file is deleted once read
        selected_id = gr.State(None)

        outputs = [gallery, status, hits_state, query_id, query_vec]
        demo.load(header, None, info_md, api_name=False)
        query.upload(search_upload, [query, k, label], [*outputs, detail], preprocess=False,
                     api_name="search")
        current = [query, k, label, query_id, query_vec]
        run.click(search_current, current, [*outputs, detail], preprocess=False, api_name=False)
        k.release(search_current, current, [*outputs, detail], preprocess=False, api_name=False)
        label.input(search_current, current, [*outputs, detail], preprocess=False, api_name=False)
        query.clear(clear, None, [*outputs, detail], api_name=False)
        gallery.select(select, [hits_state], [big, details, selected_id, detail], api_name=False)
        again.click(search_by, [selected_id, k, label], [*outputs, query], api_name=False)
    return demo


def build_app(
    index: ImageSearchIndex,
    *,
    limits: Limits | None = None,
    auth: tuple[str, str] | None = None,
    default_k: int = 10,
) -> FastAPI:
    """The web app for ``index``: the page at ``/``, the JSON API under ``/api``.

    Serve it with any ASGI server, e.g. ``uvicorn.run(build_app(index), host="127.0.0.1")``.

    Raises:
        MissingDependencyError: Gradio (the ``[ui]`` extra) is not installed.
    """
    gr = _import_gradio()
    from fastapi import FastAPI

    service = SearchService(index, limits)
    default_k = service.check_k(default_k)
    app = FastAPI(title="lookalike", docs_url=None, redoc_url=None, openapi_url=None)
    _add_api_routes(app, service)
    demo = _build_blocks(gr, service, min(default_k, 50))
    mounted: FastAPI = gr.mount_gradio_app(
        app, demo, path="/", show_error=False, max_file_size=service.limits.max_upload_bytes,
        ssr_mode=False, mcp_server=False, allowed_paths=[], footer_links=[], css=_CSS,
    )
    # Gradio checks that a file named in a request was uploaded by the browser only once the app
    # "has launched", which mount_gradio_app never sets: without this line a request naming any
    # server file (the tutorial's hole) would be copied into the cache and searched.
    demo.has_launched = True
    mounted.state.search_service = service  # its limits and pixel budget, for tests and monitoring
    mounted.add_middleware(UploadCheckMiddleware, root=Path(gr.utils.get_upload_folder()).resolve())
    body_budget = ByteBudget(service.limits.max_body_bytes_in_flight)
    mounted.add_middleware(BodyLimitMiddleware, limit_for=body_limits(service.limits), budget=body_budget,
                           max_wait_s=service.limits.max_wait_s)
    mounted.state.body_budget = body_budget
    if auth is not None:  # added last, so it runs first: no body is read before auth
        mounted.add_middleware(BasicAuthMiddleware, credentials=auth)
    return mounted


def run(app: Any, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    """Serve ``app`` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)


# -- the command ----------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from .cli import open_index

    auth = parse_auth(args.auth if args.auth is not None else os.environ.get(AUTH_ENV))
    if not 1 <= args.port <= 65535:
        raise ConfigurationError(f"--port must be between 1 and 65535, got {args.port}")
    in_flight = args.max_pixels_in_flight
    if in_flight is not None and not args.max_pixels <= in_flight:
        raise ConfigurationError(
            f"--max-pixels-in-flight ({in_flight:,}) must be at least --max-pixels ({args.max_pixels:,}): "
            "otherwise an image the server accepts could never be searched"
        )
    limits = Limits(
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels, max_k=100,
        max_pixels_in_flight=in_flight or 0,
    )
    warning = bind_warning(args.host, auth)
    _import_gradio()  # fail early, before a model is loaded
    return_large_blocks()  # decoded images go back to the system when freed, not to a heap
    with open_index(args) as index:
        app = build_app(index, limits=limits, auth=auth, default_k=args.k)
        _warm_up(index)  # load the model now: the first visitor should not wait, nor see a load error
        if warning:
            print(f"lookalike: warning: {warning}", file=sys.stderr)
        host = f"[{args.host}]" if ":" in args.host else args.host
        info = SearchService(index).info()
        print(
            f"lookalike: serving {info['count']} images (model {info['embedder']}) at "
            f"http://{host}:{args.port}/ (JSON API at /api/search); Ctrl+C stops",
            flush=True,
        )
        run(app, args.host, args.port)
    return 0


def _warm_up(index: ImageSearchIndex) -> None:
    from PIL import Image

    index.embed_queries([Image.new("RGB", (64, 64), (128, 128, 128))])


def add_command(subparsers: Any) -> None:
    """Register ``lookalike serve`` (called by :mod:`lookalike.cli`)."""
    from .cli import add_index_options

    p = subparsers.add_parser(
        "serve", help="a web page (and JSON API) to search the index by image",
        description="Serve a search page over the index (needs the [ui] extra: pip install 'lookalike[ui]'). "
        f"Binds to 127.0.0.1 unless --host says otherwise; set ${AUTH_ENV}=USER:PASSWORD "
        "(or --auth) before binding to other machines.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("-k", type=int, default=10, help="results shown at first (default 10)")
    p.add_argument("--auth", default=None, metavar="USER:PASSWORD",
                   help=f"require HTTP basic auth (default: ${AUTH_ENV}; the variable keeps it out of ps)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MB (default 20)")
    p.add_argument("--max-pixels", type=int, default=50_000_000,
                   help="largest image in pixels (default 50,000,000)")
    p.add_argument("--max-pixels-in-flight", type=int, default=None, metavar="PIXELS",
                   help="most decoded pixels held by all requests at once; others wait their turn "
                   "(default: twice --max-pixels)")
    add_index_options(p)
    p.set_defaults(func=cmd_serve)
