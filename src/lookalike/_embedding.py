"""The embedder as add_many and search see it: a :class:`~lookalike.protocols.PixelEmbedder`.

An embedder that is one is used as it is; any other gets a :class:`PixelStandIn`, decided
once when the index is built (``isinstance`` against declared protocols, never a
``getattr`` per call).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from ._checks import unit_rows
from .errors import ConfigurationError
from .protocols import Embedder, PendingVectors, PixelEmbedder
from .stores._common import as_float32

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["DecodesJpeg", "DoneVectors", "PixelStandIn", "check_vectors", "pixel_embedder"]


@runtime_checkable
class _SplitsPixels(Protocol):
    """The least that moves preprocessing into the decode threads: ``pixels`` + ``embed_pixels``."""

    def pixels(self, image: Image.Image) -> Any: ...

    def embed_pixels(self, items: Sequence[Any]) -> NDArray[np.float32]: ...


@runtime_checkable
class _HasPixelFunction(Protocol):
    def pixel_function(self) -> Callable[[Image.Image], Any] | None: ...


@runtime_checkable
class _SubmitsPixels(Protocol):
    def submit_pixels(self, items: Sequence[Any]) -> PendingVectors: ...


@runtime_checkable
class DecodesJpeg(Protocol):
    """An embedder that may turn JPEG bytes into its pixels itself, on its device (the GPU
    pixel path of ``add_many``; :class:`~lookalike.embedders.TorchEmbedder` with ``decode``)."""

    def decodes_jpeg(self) -> bool:
        """Whether it does, for this run (may load the model to find out)."""
        ...

    def jpeg_pixels(self, encoded: Sequence[bytes]) -> list[Any]:
        """For each file's bytes: what ``embed_pixels`` takes, or ``None`` (the CPU path decodes it)."""
        ...


@runtime_checkable
class _HasImageSize(Protocol):
    @property
    def image_size(self) -> int | None: ...


class DoneVectors:
    """:class:`~lookalike.protocols.PendingVectors` computed before ``submit_pixels`` returned."""

    in_background = False

    def __init__(self, vectors: NDArray[np.float32]) -> None:
        self._vectors = vectors

    def result(self) -> NDArray[np.float32]:
        return self._vectors

    def cancel(self) -> None:
        """Nothing is left to cancel."""


class PixelStandIn:
    """A :class:`~lookalike.protocols.PixelEmbedder` made of an embedder that is not one.

    A plain :class:`~lookalike.Embedder` gets ``pixels`` = the decoded image itself and
    ``embed_pixels`` = ``embed``; one that implements part of the protocol (``pixels`` and
    ``embed_pixels`` without ``submit_pixels``, say) keeps its own members and gets the
    rest: ``submit_pixels`` embeds at once, ``pixel_function`` is ``None`` (the decode
    processes send back images), ``image_size`` is ``None``. Decided once, here.
    """

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self._pixels: Callable[[Image.Image], Any] = _same_image
        self._embed: Callable[[Sequence[Any]], Any] = embedder.embed
        self._function: Callable[[], Callable[[Image.Image], Any] | None] | None = None
        self._submit: Callable[[Sequence[Any]], PendingVectors] | None = None
        #: ``pixels`` is the image itself: nothing to run in the decode threads
        self.passes_images = not isinstance(embedder, _SplitsPixels)
        if isinstance(embedder, _SplitsPixels):
            self._pixels, self._embed = embedder.pixels, embedder.embed_pixels
            if isinstance(embedder, _HasPixelFunction):
                self._function = embedder.pixel_function
            if isinstance(embedder, _SubmitsPixels):
                self._submit = embedder.submit_pixels
        self._size_of = embedder if isinstance(embedder, _HasImageSize) else None

    @property
    def dim(self) -> int:
        return self.embedder.dim

    @property
    def identity(self) -> str:
        return self.embedder.identity

    @property
    def image_size(self) -> int | None:
        return None if self._size_of is None else self._size_of.image_size

    def embed(self, images: Sequence[Image.Image]) -> NDArray[np.float32]:
        return self.embedder.embed(images)

    def pixels(self, image: Image.Image) -> Any:
        return self._pixels(image)

    def pixel_function(self) -> Callable[[Image.Image], Any] | None:
        return None if self._function is None else self._function()

    def embed_pixels(self, items: Sequence[Any]) -> NDArray[np.float32]:
        vectors: NDArray[np.float32] = self._embed(items)
        return vectors

    def submit_pixels(self, items: Sequence[Any]) -> PendingVectors:
        if self._submit is not None:
            return self._submit(items)
        return DoneVectors(self.embed_pixels(items))

    def __repr__(self) -> str:
        return repr(self.embedder)


def pixel_embedder(embedder: Embedder) -> PixelEmbedder:
    """``embedder`` itself when it is a :class:`~lookalike.protocols.PixelEmbedder`, else
    its :class:`PixelStandIn`."""
    if isinstance(embedder, PixelEmbedder):
        return embedder
    return PixelStandIn(embedder)


def _same_image(image: Image.Image) -> Image.Image:
    return image


def check_vectors(vectors: Any, n: int, embedder: Embedder) -> NDArray[np.float32]:
    """What an embedder returned for ``n`` images, as ``(n, dim)`` float32 unit rows."""
    arr = as_float32(vectors, f"the vectors {embedder!r} returned")
    if arr.shape != (n, embedder.dim):
        raise ConfigurationError(
            f"{embedder!r} returned shape {arr.shape} for {n} images; expected ({n}, {embedder.dim})"
        )
    return unit_rows(arr, f"the vectors {embedder!r} returned")
