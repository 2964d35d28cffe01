"""Vector stores: :class:`InMemoryStore` (reference), :class:`LocalStore` (embedded default)
and :class:`TencentVectorStore` (Tencent Cloud VectorDB, extra ``[tencent]``).

A store is one module here with a class that meets :class:`~lookalike.VectorStore` (checked by
subclassing :class:`lookalike.testing.VectorStoreContract` in a test), maps its backend's
errors to :mod:`lookalike.errors` at one boundary, reuses the checks in ``_common`` and, to be
named by ``--store``, has a ``from_url(url, **options)`` classmethod that
:func:`lookalike.registry.open_store` calls for its URL scheme.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .local import LocalStore
from .memory import InMemoryStore
from .transfer import copy_store

if TYPE_CHECKING:
    from .tencent import TencentVectorStore

__all__ = ["InMemoryStore", "LocalStore", "TencentVectorStore", "copy_store"]


def __getattr__(name: str) -> Any:
    # Importing the Tencent store module is cheap (it imports tcvectordb only when a
    # store is built), but keep it out of `import lookalike.stores` all the same.
    if name == "TencentVectorStore":
        from .tencent import TencentVectorStore

        return TencentVectorStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
