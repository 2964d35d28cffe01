"""Query-side refinements that improve ranking without another model.

:class:`QueryExpansion` is alpha-weighted query expansion (alpha-QE, Radenović, Tolias &
Chum, TPAMI 2018): search once, replace the query vector by the normalised sum of itself
and its ``top`` nearest stored vectors weighted by ``similarity ** alpha``, search again.
It works with any store (it reads the neighbours' vectors back with ``store.get``) and
costs one extra search and one ``get`` per query, no extra embedding.

>>> from lookalike.refine import QueryExpansion
>>> qe = QueryExpansion(top=3, alpha=1.0)
>>> hits = qe.search(index, "query.jpg", k=10)              # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from .errors import ConfigurationError
from .types import Filter, Hit, QueryInput

if TYPE_CHECKING:
    from .index import ImageSearchIndex
    from .protocols import VectorStore

__all__ = ["QueryExpansion", "parse_refinement"]


class QueryExpansion:
    """alpha-QE: re-query with the query plus its ``top`` neighbours weighted by ``sim ** alpha``.

    Args:
        top: neighbours merged into the query (the query itself always counts with weight 1).
        alpha: sharpness; 0 is plain average query expansion, larger trusts close
            neighbours more. Negative similarities get weight 0.
    """

    def __init__(self, top: int = 3, alpha: float = 1.0) -> None:
        if not isinstance(top, int) or isinstance(top, bool) or top < 1:
            raise ConfigurationError(f"QueryExpansion top must be a positive int, got {top!r}")
        if not np.isfinite(alpha) or alpha < 0:
            raise ConfigurationError(f"QueryExpansion alpha must be >= 0, got {alpha!r}")
        self.top = top
        self.alpha = float(alpha)

    def __repr__(self) -> str:
        return f"QueryExpansion(top={self.top}, alpha={self.alpha:g})"

    def __str__(self) -> str:
        return f"qe:top={self.top},alpha={self.alpha:g}"

    def expand(self, store: VectorStore, vectors: NDArray[np.float32], filter: Filter | None = None) -> NDArray[np.float32]:
        """The expanded, L2-normalised query vectors (one extra search and get per call)."""
        queries = np.asarray(vectors, dtype=np.float32)
        first = store.search(queries, self.top, filter)
        wanted = list(dict.fromkeys(h.id for hits in first for h in hits))
        found = {r.id: np.asarray(r.vector, dtype=np.float32) for r in store.get(wanted)} if wanted else {}
        out = queries.copy()
        for row, hits in enumerate(first):
            for hit in hits:
                vec = found.get(hit.id)
                if vec is not None and hit.score > 0:
                    out[row] += (hit.score**self.alpha) * vec
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        expanded: NDArray[np.float32] = (out / norms).astype(np.float32)
        return expanded

    def search_vectors(
        self, store: VectorStore, vectors: NDArray[np.float32], k: int, filter: Filter | None = None
    ) -> list[list[Hit]]:
        """Expand the query vectors, then search the store with them."""
        if len(vectors) == 0:
            return []
        return store.search(self.expand(store, vectors, filter), k, filter)

    def search_many(
        self, index: ImageSearchIndex, queries: Iterable[QueryInput], k: int = 10, *, filter: Filter | None = None
    ) -> list[list[Hit]]:
        """Like :meth:`ImageSearchIndex.search_many`, with the query vectors expanded."""
        query_list = list(queries)
        index.search_many([], k)  # checks k, and that the store was built by this embedder
        if not query_list or index.count() == 0:
            return [[] for _ in query_list]
        return self.search_vectors(index.store, index.embed_queries(query_list), k, filter)

    def search(
        self, index: ImageSearchIndex, query: QueryInput, k: int = 10, *, filter: Filter | None = None
    ) -> list[Hit]:
        """Like :meth:`ImageSearchIndex.search`, with the query vector expanded."""
        return self.search_many(index, [query], k, filter=filter)[0]


def parse_refinement(spec: str) -> QueryExpansion | None:
    """``none`` -> None; ``qe`` or ``qe:top=3,alpha=1`` -> :class:`QueryExpansion`."""
    name, _, rest = spec.strip().partition(":")
    if name in ("", "none"):
        return None
    if name != "qe":
        raise ConfigurationError(f"unknown refinement {spec!r}; use none or qe[:top=N,alpha=A]")
    options: dict[str, str] = {}
    for part in filter(None, rest.split(",")):
        key, sep, value = part.partition("=")
        if not sep or key not in ("top", "alpha"):
            raise ConfigurationError(f"refinement option {part!r} in {spec!r}; use top=N,alpha=A")
        options[key] = value
    try:
        return QueryExpansion(top=int(options.get("top", 3)), alpha=float(options.get("alpha", 1.0)))
    except ValueError as exc:
        raise ConfigurationError(f"bad number in refinement {spec!r}: {exc}") from None
