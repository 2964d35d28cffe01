"""The search service: everything the page and the JSON API do, without any web framework."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._embedding import pixel_embedder
from .._queries import text_embedder
from .._version import __version__
from ..errors import ConfigurationError, ImageLoadError
from ..images import DEFAULT_MAX_PIXELS, decode_image, load_image, read_image_bytes
from ..index import ImageSearchIndex
from ..protocols import TextEmbedder
from ..types import Hit, Text
from .limits import _OUT_OF_MEMORY, Limits, PixelBudget, Rejected, probe_image

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray
    from PIL import Image


# -- the search service: everything the page and the API do, without any web framework ----------
class SearchService:
    """Searches an index by uploaded image bytes, by a stored record or by text (a CLIP
    model), within :class:`Limits`.

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
            "text_search": self.has_text,
            "lookalike": __version__,
            "limits": {
                "max_upload_bytes": self.limits.max_upload_bytes,
                "max_pixels": self.limits.max_pixels,
                "max_k": self.limits.max_k,
                "max_pixels_in_flight": self.limits.max_pixels_in_flight,
                "max_aspect_ratio": self.limits.max_aspect_ratio,
                "max_text_chars": self.limits.max_text_chars,
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
        return pixel_embedder(self.index.embedder).image_size  # checked once, like the index does

    # -- searching --------------------------------------------------------------------------------
    def search_upload(self, data: bytes, k: object = 10, filter: Any = None) -> list[Hit]:
        self.check_k(k)
        self.check_filter(filter)  # cheap checks first: a bad k never costs a decode
        return self.search(self.embed_upload(data), k, filter)

    @property
    def has_text(self) -> bool:
        """True when the index's model has a text tower (search by words works)."""
        return isinstance(self.index.embedder, TextEmbedder)

    def embed_text(self, text: object) -> NDArray[np.float32]:
        """The query vector of a text (a CLIP model's text tower); :class:`Rejected` (400) when
        the text is empty or too long, or the model has no text tower."""
        if not isinstance(text, str) or not text.strip():
            raise Rejected(400, "the text is empty: type what the picture shows, e.g. 'a red car'")
        if len(text) > self.limits.max_text_chars:
            raise Rejected(400, f"the text is {len(text):,} characters long; the limit is {self.limits.max_text_chars:,}")
        try:
            text_embedder(self.index.embedder)
        except ConfigurationError as exc:
            raise Rejected(400, str(exc)) from None
        with self._lock:
            vectors: NDArray[np.float32] = self.index.embed_queries([Text(text)])
        vector: NDArray[np.float32] = vectors[0].copy()
        return vector

    def search_text(self, text: object, k: object = 10, filter: Any = None) -> list[Hit]:
        """The stored images that best match ``text`` (checks k and filter before the model runs)."""
        self.check_k(k)
        self.check_filter(filter)
        return self.search(self.embed_text(text), k, filter)

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
