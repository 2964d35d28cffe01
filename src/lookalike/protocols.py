"""The pluggable protocols: :class:`Embedder` (images -> vectors) and :class:`VectorStore`,
and the optional ones an embedder or a store may add.

The two required ones are deliberately tiny; batching, ids, validation, image loading
and error reporting live in :class:`~lookalike.ImageSearchIndex`. Any object with these
members works: there is nothing to inherit. The optional protocols are checked once,
when an index is built (``isinstance``), never probed member by member:

- :class:`PixelEmbedder`: an embedder that splits its preprocessing off, so
  ``add_many`` runs it in the decode threads or processes (the torch and ONNX ones);
  it hands back :class:`PendingVectors`.
- :class:`TextEmbedder`: an embedder with a text tower, for ``search(Text(...))``.
- :class:`LoadableEmbedder`: an embedder that can load its model up front.
- :class:`CheckableStore`: a store that can check (and repair) its own integrity.
- :class:`PairSearchStore`: a store that finds its own similar pairs (a self-join), which
  ``find_duplicates`` uses instead of one k-NN search per record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from .types import Filter, Hit, Record, Schema, SimilarPairs

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "CheckableStore",
    "Embedder",
    "LoadableEmbedder",
    "PairSearchStore",
    "PendingVectors",
    "PixelEmbedder",
    "TextEmbedder",
    "VectorStore",
]


@runtime_checkable
class Embedder(Protocol):
    """Turns RGB images into L2-normalised float32 vectors.

    Contract:
        - ``dim``: length of every vector.
        - ``identity``: a string naming model, weights and preprocessing; it changes
          whenever the vectors would. Stores record it and refuse other identities.
          Reading it must be cheap (no model download or load).
        - ``embed(images)``: a sequence of RGB ``PIL.Image`` -> ``float32`` array of
          shape ``(len(images), dim)``, each row L2-normalised. Deterministic.
    """

    @property
    def dim(self) -> int: ...

    @property
    def identity(self) -> str: ...

    def embed(self, images: Sequence[Image.Image]) -> NDArray[np.float32]: ...


@runtime_checkable
class PendingVectors(Protocol):
    """Vectors an embedder is still computing (:meth:`PixelEmbedder.submit_pixels`).

    Contract:
        - ``result()``: waits and returns the ``(n, dim)`` float32 vectors; re-raises the
          model's error, if any.
        - ``in_background``: ``True`` while the work may still be running elsewhere (CPU
          streams), so ``add_many`` submits the next batch before collecting this one;
          ``False`` when it was done before ``submit_pixels`` returned.
        - ``cancel()``: drops the work not yet started (after an error elsewhere).
    """

    @property
    def in_background(self) -> bool: ...

    def result(self) -> NDArray[np.float32]: ...

    def cancel(self) -> None: ...


@runtime_checkable
class PixelEmbedder(Embedder, Protocol):
    """An :class:`Embedder` whose per-image preprocessing can run away from the model.

    ``add_many`` runs ``pixels`` in its decode threads (or ``pixel_function()`` in its
    decode processes), so the model's thread only stacks ready arrays. The torch and
    ONNX embedders are PixelEmbedders; any other embedder gets a stand-in where
    ``pixels`` is the decoded image itself and ``embed_pixels`` is ``embed``.

    Contract (``embed_pixels([pixels(im) for im in images])`` equals ``embed(images)``):
        - ``image_size``: the shorter side the preprocessing resizes to, or ``None``; lets
          large JPEGs decode at a reduced size (never below it).
        - ``pixels(image)``: one RGB ``PIL.Image`` -> what ``embed_pixels`` takes (e.g. a
          ``(crop, crop, 3)`` uint8 array). Thread-safe.
        - ``pixel_function()``: ``pixels`` as a picklable callable free of torch, for the
          decode processes, or ``None`` when there is none (they then send back images).
        - ``embed_pixels(items)``: a list of ``pixels`` outputs -> ``(n, dim)`` float32.
        - ``submit_pixels(items)``: the same as a :class:`PendingVectors`, so several
          batches may be queued at once; embedders without background work return one
          whose result is already there (``in_background`` ``False``).
    """

    @property
    def image_size(self) -> int | None: ...

    def pixels(self, image: Image.Image) -> Any: ...

    def pixel_function(self) -> Callable[[Image.Image], Any] | None: ...

    def embed_pixels(self, items: Sequence[Any]) -> NDArray[np.float32]: ...

    def submit_pixels(self, items: Sequence[Any]) -> PendingVectors: ...


@runtime_checkable
class TextEmbedder(Embedder, Protocol):
    """An :class:`Embedder` with a text tower (e.g. CLIP): text queries land in the same
    space as its image vectors, for ``index.search(lookalike.Text("a red bicycle"))``.

    Contract:
        - ``embed_text(texts)``: a sequence of ``str`` -> ``float32`` array of shape
          ``(len(texts), dim)``, each row L2-normalised. Deterministic.

    :class:`~lookalike.embedders.ClipEmbedder` implements it.
    """

    def embed_text(self, texts: Sequence[str]) -> NDArray[np.float32]: ...


@runtime_checkable
class LoadableEmbedder(Embedder, Protocol):
    """An :class:`Embedder` that can load its model up front (``load()``: download or
    read its weights; raises :class:`~lookalike.errors.ModelLoadError` when it cannot).
    The index loads it before binding a store to it, so no store is bound to a model
    that never loaded."""

    def load(self) -> None: ...


@runtime_checkable
class VectorStore(Protocol):
    """Keeps vectors with metadata and answers k-nearest-neighbour queries.

    Contract (all rules and errors: docs/api.md, "The VectorStore rules"; checked, for
    lookalike's stores and yours, by :class:`lookalike.testing.VectorStoreContract`):
        - ``create_schema(schema)``: creates the store's schema; a no-op when the same
          schema exists; :class:`~lookalike.errors.SchemaMismatchError` when another one does.
        - ``describe()``: the stored schema, or ``None`` before ``create_schema``.
        - ``upsert(records)``: inserts or wholly replaces records by id, atomically per
          call where the backend allows. Vectors are float32, L2-normalised, of ``schema.dim``.
        - ``search(vectors, k, filter)``: for each row of ``vectors`` (shape ``(n, dim)``)
          the up to ``k`` best records as :class:`~lookalike.Hit`, best first, where
          ``score`` is cosine similarity. Only records matching ``filter`` are returned.
        - ``get(ids)``: the records that exist, in the order asked; missing ids are left out
          and a repeated id gives its record once.
        - ``delete(ids)``: removes those that exist; returns how many were removed.
        - ``scan(batch_size)``: every record exactly once, in batches (order unspecified;
          concurrent writes may or may not be seen).
        - ``count()``: number of records. ``close()``: releases resources; idempotent.
        - Operations other than ``create_schema``/``describe``/``close`` before a schema
          exists raise :class:`~lookalike.errors.ConfigurationError` (``count`` returns 0).
    """

    def create_schema(self, schema: Schema) -> None: ...

    def describe(self) -> Schema | None: ...

    def upsert(self, records: Sequence[Record]) -> None: ...

    def search(
        self, vectors: NDArray[np.float32], k: int, filter: Filter | None = None
    ) -> list[list[Hit]]: ...

    def get(self, ids: Sequence[str]) -> list[Record]: ...

    def delete(self, ids: Sequence[str]) -> int: ...

    def scan(self, batch_size: int = 1000) -> Iterator[list[Record]]: ...

    def count(self) -> int: ...

    def close(self) -> None: ...


@runtime_checkable
class CheckableStore(Protocol):
    """A :class:`VectorStore` that can verify (and repair) its own integrity (optional).

    ``check(fix=, rebuild=)`` returns the problems found, one line each (empty when
    healthy); ``fix`` drops damaged records, ``rebuild`` rebuilds derived indexes.
    Nothing is written without either. :class:`~lookalike.stores.LocalStore` is one.
    """

    def check(self, *, fix: bool = False, rebuild: bool = False) -> list[str]: ...


@runtime_checkable
class PairSearchStore(Protocol):
    """A :class:`VectorStore` that finds every pair of its own records at or above a
    cosine similarity itself (optional): a self-join the store can run far faster than
    one k-NN search per record. ``find_duplicates`` uses it when a store has it.

    ``similar_pairs(threshold, filter)`` yields :class:`~lookalike.types.SimilarPairs`
    batches. Over all of them, each unordered pair of records matching ``filter`` whose
    cosine similarity is at least ``threshold`` (computed in float32: an exact copy must
    reach 1.0) comes once (an approximate store may miss
    some, as its ``search`` may), never a record paired with itself, and ``scanned`` adds
    up to the records matching ``filter``. Records written during the iteration may or may
    not be paired. :class:`~lookalike.stores.LocalStore` and
    :class:`~lookalike.stores.InMemoryStore` are ones.
    """

    def similar_pairs(
        self, threshold: float, filter: Filter | None = None
    ) -> Iterator[SimilarPairs]: ...
