"""``evaluate(index, queries)``: retrieval quality of an index on labelled queries."""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

from ..errors import ConfigurationError
from ..images import describe_source
from ..types import Hit, ImageInput, Text
from .metrics import average_precision, hit_ratio, success_at_k, towhee_average_precision

if TYPE_CHECKING:
    from ..index import ImageSearchIndex
    from ..refine import QueryExpansion

__all__ = ["EvalReport", "Query", "QueryLike", "QueryResult", "evaluate"]


@dataclass(frozen=True)
class Query:
    """A query (an image, or a :class:`~lookalike.Text` for a model with a text tower) and
    what counts as a correct answer: ``relevant`` ids or a ``label``.

    With ``label``, the relevant items are the stored records whose ``label`` metadata
    (or ``label_field`` of :func:`evaluate`) equals it. ``name`` is shown in reports
    (default: the image's path).
    """

    image: ImageInput | Text
    relevant: Collection[str] | None = None
    label: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if (self.relevant is None) == (self.label is None):
            raise ConfigurationError("a Query needs exactly one of relevant= or label=")


#: A :class:`Query`, or ``(image, label)`` / ``(image, relevant_ids)`` (the image may be a ``Text``).
QueryLike = Union[Query, "tuple[ImageInput | Text, str | Collection[str]]"]


@dataclass
class QueryResult:
    """One query's outcome: its hits, which of them are relevant, and its scores."""

    name: str
    label: str | None
    relevant: int  #: number of relevant stored items
    hits: list[Hit]
    is_relevant: list[bool]
    hit_ratio: float
    average_precision: float
    towhee_average_precision: float
    top1: float
    path: str | None = None  #: the query image file, when it was given as a path

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.name, "label": self.label, "relevant": self.relevant,
            "hit_ratio": self.hit_ratio, "ap": self.average_precision,
            "ap_towhee": self.towhee_average_precision, "top1": self.top1,
            "hits": [
                {"id": h.id, "score": round(h.score, 6), "path": h.path,
                 "label": h.metadata.get("label"), "relevant": rel}
                for h, rel in zip(self.hits, self.is_relevant)
            ],
        }


@dataclass
class EvalReport:
    """Summary figures, timings and per-query rows of one evaluation.

    ``mhr`` is mHR@k (mean of hits / relevant), ``map_towhee`` Towhee's mAP@k (AP divided
    by the hits in the top k), ``map`` standard mAP@k (AP divided by min(k, relevant)),
    ``recall_at_1`` the share of queries whose first hit is relevant.
    """

    name: str
    embedder: str
    store: str
    k: int
    gallery: int
    mhr: float
    map_towhee: float
    map: float
    recall_at_1: float
    embed_seconds: float
    search_seconds: float
    rows: list[QueryResult] = field(default_factory=list)
    refine: str | None = None
    index_seconds: float | None = None  #: time to embed and store the gallery, when known

    @property
    def queries(self) -> int:
        return len(self.rows)

    def worst_first(self) -> list[QueryResult]:
        """Rows ordered worst first: by AP, then hit ratio, then name."""
        return sorted(self.rows, key=lambda r: (r.average_precision, r.hit_ratio, r.name))

    def summary(self) -> dict[str, Any]:
        """The figures without the per-query rows."""
        return {
            "name": self.name, "embedder": self.embedder, "store": self.store,
            "refine": self.refine, "k": self.k, "gallery": self.gallery, "queries": self.queries,
            f"mHR@{self.k}": self.mhr, f"mAP@{self.k}": self.map,
            f"towhee_mAP@{self.k}": self.map_towhee, "recall@1": self.recall_at_1,
            "index_seconds": self.index_seconds, "embed_seconds": self.embed_seconds,
            "search_seconds": self.search_seconds,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "rows": [r.to_dict() for r in self.rows]}

    def __str__(self) -> str:
        return (
            f"{self.name}: mHR@{self.k} {self.mhr:.3f}, mAP@{self.k} {self.map:.3f}, "
            f"Towhee-mAP@{self.k} {self.map_towhee:.3f}, recall@1 {self.recall_at_1:.3f} "
            f"({self.queries} queries, {self.gallery} gallery)"
        )


def _as_query(q: QueryLike) -> Query:
    if isinstance(q, Query):
        return q
    if isinstance(q, tuple) and len(q) == 2:
        image, target = q
        if isinstance(target, str):
            return Query(image, label=target)
        return Query(image, relevant=frozenset(target))
    raise ConfigurationError(f"a query must be a Query or (image, label_or_ids), got {q!r}")


def _labels(index: ImageSearchIndex, field_name: str) -> dict[str, set[str]]:
    by_label: dict[str, set[str]] = {}
    for batch in index.store.scan():
        for record in batch:
            value = record.metadata.get(field_name)
            if value is not None:
                by_label.setdefault(str(value), set()).add(record.id)
    return by_label


def evaluate(
    index: ImageSearchIndex,
    queries: Iterable[QueryLike],
    *,
    k: int = 10,
    refine: QueryExpansion | None = None,
    label_field: str = "label",
    name: str | None = None,
    progress: bool = False,
) -> EvalReport:
    """Search ``index`` with every query and score the rankings.

    Args:
        index: a filled index (the gallery).
        queries: :class:`Query` objects, or ``(image, label)`` / ``(image, relevant_ids)`` pairs.
        k: results per query.
        refine: a query-side refinement such as :class:`~lookalike.refine.QueryExpansion`
            (default: none, plain search).
        label_field: the metadata field a query's ``label`` is matched against.
        name: the report's name in tables (default: the embedder's identity).
        progress: show a progress bar while embedding the queries.

    Returns:
        An :class:`EvalReport`. Average precisions are tie-aware (equal scores count in
        expectation over their orders), so they do not depend on how a store orders ties.

    Raises:
        ConfigurationError: no queries, a bad ``k``, or a query with no relevant stored item.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigurationError(f"k must be a positive int, got {k!r}")
    items = [_as_query(q) for q in queries]
    if not items:
        raise ConfigurationError("evaluate needs at least one query")
    by_label = _labels(index, label_field) if any(q.label is not None for q in items) else {}
    relevant: list[frozenset[str]] = []
    for q in items:
        rel = frozenset(q.relevant) if q.relevant is not None else frozenset(by_label.get(str(q.label), ()))
        if not rel:
            what = f"label {q.label!r}" if q.label is not None else "an empty relevant set"
            raise ConfigurationError(
                f"query {q.name or _describe(q.image)} has {what}: no stored item counts as relevant"
            )
        relevant.append(rel)

    from ..display import tqdm_bar  # a widget in notebooks with ipywidgets, else text

    started = time.perf_counter()
    vectors = []
    with tqdm_bar(total=len(items), unit="query", desc="queries", disable=not progress) as bar:
        for start in range(0, len(items), index.batch_size):
            chunk = items[start : start + index.batch_size]
            vectors.append(index.embed_queries([q.image for q in chunk]))
            bar.update(len(chunk))
    import numpy as np

    matrix = np.concatenate(vectors)
    embed_seconds = time.perf_counter() - started
    started = time.perf_counter()
    index.search_many([], k)  # checks that the store was built by this embedder
    if refine is None:
        results = index.store.search(matrix, k)
    else:
        results = refine.search_vectors(index.store, matrix, k)
    search_seconds = time.perf_counter() - started
    rows = [_row(q, rel, hits, k) for q, rel, hits in zip(items, relevant, results)]
    n = len(rows)
    return EvalReport(
        name=name or index.embedder.identity,
        embedder=index.embedder.identity,
        store=repr(index.store),
        k=k,
        gallery=index.count(),
        mhr=sum(r.hit_ratio for r in rows) / n,
        map_towhee=sum(r.towhee_average_precision for r in rows) / n,
        map=sum(r.average_precision for r in rows) / n,
        recall_at_1=sum(r.top1 for r in rows) / n,
        embed_seconds=embed_seconds,
        search_seconds=search_seconds,
        rows=rows,
        refine=None if refine is None else str(refine),
    )


def _describe(query: ImageInput | Text) -> str:
    return repr(query.text) if isinstance(query, Text) else describe_source(query)


def _row(q: Query, rel: frozenset[str], hits: Sequence[Hit], k: int) -> QueryResult:
    ids = [h.id for h in hits]
    scores = [h.score for h in hits]
    path = os.fspath(q.image) if isinstance(q.image, (str, os.PathLike)) else None
    return QueryResult(
        name=q.name or _describe(q.image),
        label=q.label,
        relevant=len(rel),
        hits=list(hits),
        is_relevant=[h.id in rel for h in hits],
        hit_ratio=hit_ratio(ids, rel, k),
        average_precision=average_precision(ids, rel, k, scores=scores),
        towhee_average_precision=towhee_average_precision(ids, rel, k, scores=scores),
        top1=success_at_k(ids, rel, 1),
        path=path,
    )
