"""The two pluggable protocols: :class:`Embedder` (images -> vectors) and :class:`VectorStore`.

Both are deliberately tiny; batching, ids, validation, image loading and error
reporting live in :class:`~lookalike.ImageSearchIndex`. Any object with these
members works: there is nothing to inherit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from .types import Filter, Hit, Record, Schema

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["CheckableStore", "Embedder", "VectorStore"]


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
