"""lookalike: reverse image search with pluggable embedders and vector stores.

>>> from lookalike import ImageSearchIndex, sources
>>> from lookalike.stores import LocalStore
>>> index = ImageSearchIndex(store=LocalStore("photos.lookalike"))   # doctest: +SKIP
>>> index.add_many(sources.from_dir("photos/"))                        # doctest: +SKIP
>>> index.search("query.jpg", k=10)                                    # doctest: +SKIP
"""

from __future__ import annotations

from . import errors, sources
from ._version import __version__
from .display import SearchResults
from .errors import (
    ConfigurationError,
    DamagedRecordWarning,
    ImageLoadError,
    ImageSearchError,
    MissingDependencyError,
    ModelLoadError,
    NotFoundError,
    SchemaMismatchError,
    StoreConnectionError,
    StoreCorruptError,
    StoreError,
    StoreTimeoutError,
)
from .images import load_image
from .index import ImageSearchIndex, path_id
from .protocols import Embedder, VectorStore
from .sources import Item
from .types import AddReport, Failure, Hit, Mix, Record, Schema, Text

__all__ = [
    "AddReport",
    "ConfigurationError",
    "DamagedRecordWarning",
    "Embedder",
    "Failure",
    "Hit",
    "ImageLoadError",
    "ImageSearchError",
    "ImageSearchIndex",
    "Item",
    "MissingDependencyError",
    "Mix",
    "ModelLoadError",
    "NotFoundError",
    "Record",
    "Schema",
    "SchemaMismatchError",
    "SearchResults",
    "StoreConnectionError",
    "StoreCorruptError",
    "StoreError",
    "StoreTimeoutError",
    "Text",
    "VectorStore",
    "__version__",
    "errors",
    "load_image",
    "path_id",
    "sources",
]
