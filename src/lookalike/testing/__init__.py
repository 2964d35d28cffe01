"""Test kit for apps that use lookalike, and for people who write their own store.

Importable without torch; pytest is imported only by :class:`VectorStoreContract`
(``lookalike.testing.contract``), :class:`EmbedderContract`
(``lookalike.testing.embedder_contract``) and by the pytest plugin (``lookalike.testing.plugin``).

- :class:`FakeEmbedder`: deterministic, torch-free vectors (no model download).
- :class:`InMemoryStore`: the reference store, nothing persisted.
- :func:`make_image` / :func:`make_images`: distinct synthetic pictures, as PIL images or files.
- :class:`VectorStoreContract`: the store contract suite as a pytest base class.
- :class:`EmbedderContract`: the embedder contract suite as a pytest base class.
- The pytest plugin (installed with lookalike) adds the fixtures ``lookalike_index`` and
  ``image_files``.

>>> from lookalike.testing import FakeEmbedder, InMemoryStore
>>> FakeEmbedder(dim=8).dim
8
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..embedders.fake import FakeEmbedder
from ..stores.memory import InMemoryStore
from .images import make_image, make_images

if TYPE_CHECKING:
    from .contract import VectorStoreContract
    from .embedder_contract import EmbedderContract

__all__ = ["EmbedderContract", "FakeEmbedder", "InMemoryStore", "VectorStoreContract", "make_image", "make_images"]


def __getattr__(name: str) -> Any:
    if name == "VectorStoreContract":  # imports pytest: only when asked for
        from .contract import VectorStoreContract

        return VectorStoreContract
    if name == "EmbedderContract":  # imports pytest: only when asked for
        from .embedder_contract import EmbedderContract

        return EmbedderContract
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
