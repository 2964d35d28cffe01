"""Measure retrieval quality: ``evaluate(index, queries)`` and the metric functions.

>>> from lookalike.eval import evaluate, Query
>>> report = evaluate(index, [Query("q.jpg", label="goldfish")], k=10)  # doctest: +SKIP
>>> print(report)                                                        # doctest: +SKIP

``lookalike eval DATASET`` runs the same from the command line (see ``docs/quality.md``).
"""

from __future__ import annotations

from .datasets import EvalDataset, LabelledImage, load_dataset
from .evaluation import EvalReport, Query, QueryLike, QueryResult, evaluate
from .metrics import (
    average_precision,
    hit_ratio,
    mean_metrics,
    success_at_k,
    towhee_average_precision,
)
from .report import format_table, render_html, write_html

__all__ = [
    "EvalDataset",
    "EvalReport",
    "LabelledImage",
    "Query",
    "QueryLike",
    "QueryResult",
    "average_precision",
    "evaluate",
    "format_table",
    "hit_ratio",
    "load_dataset",
    "mean_metrics",
    "render_html",
    "success_at_k",
    "towhee_average_precision",
    "write_html",
]
