"""Retrieval metrics as pure functions over ranked id lists (no numpy, no lookalike types).

Every per-query function takes ``retrieved`` (ids best first, as a search returns them),
``relevant`` (the ids that count as correct) and ``k``. Only the first ``k`` retrieved ids
count; an id repeated in the list counts once; fewer than ``k`` results simply miss the
remaining ranks. ``scores`` (optional, one per retrieved id) makes the average precisions
tie-aware: results with equal scores have no defined order, so each tied group contributes
its expected value over all orders of the group (McSherry & Najork, ECIR 2008) instead of
whatever order a store happened to return.

>>> hit_ratio(["a", "x", "b"], {"a", "b", "c", "d"}, k=3)
0.5
>>> average_precision(["a", "x", "b"], {"a", "b"}, k=3)
0.8333333333333333
>>> towhee_average_precision(["x", "a"], {"a", "b", "c"}, k=2)
0.5
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

__all__ = [
    "average_precision",
    "hit_ratio",
    "mean_metrics",
    "success_at_k",
    "towhee_average_precision",
]


def _top(retrieved: Sequence[str], k: int, scores: Sequence[float] | None) -> tuple[list[str], list[float] | None]:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if scores is not None and len(scores) != len(retrieved):
        raise ValueError(f"{len(scores)} scores for {len(retrieved)} retrieved ids")
    ids: list[str] = []
    kept: list[float] = []
    seen: set[str] = set()
    for i, rid in enumerate(retrieved):
        if len(ids) == k:
            break
        if rid in seen:
            continue
        seen.add(rid)
        ids.append(rid)
        if scores is not None:
            kept.append(float(scores[i]))
    return ids, (kept if scores is not None else None)


def _hits(ids: Sequence[str], relevant: Collection[str]) -> int:
    return sum(1 for rid in ids if rid in relevant)


def _precision_sum(ids: Sequence[str], relevant: Collection[str], scores: Sequence[float] | None) -> float:
    """Sum of precision@rank over the ranks of relevant ids (expected value within ties)."""
    total = 0.0
    hits_before = 0
    start = 0
    while start < len(ids):
        end = start + 1
        if scores is not None:
            while end < len(ids) and scores[end] == scores[start]:
                end += 1
        n = end - start
        r = _hits(ids[start:end], relevant)
        if r:
            # position p of the group is relevant with probability r/n; given that, the
            # group's other p-1 earlier positions hold (p-1)(r-1)/(n-1) relevant ids on average
            share = (r - 1) / (n - 1) if n > 1 else 0.0
            for p in range(1, n + 1):
                total += (r / n) * (hits_before + 1 + (p - 1) * share) / (start + p)
        hits_before += r
        start = end
    return total


def hit_ratio(retrieved: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Hits in the top ``k`` divided by the number of relevant ids (recall@k).

    Averaged over queries this is Towhee's "mean hit ratio" (mHR@k).

    Raises:
        ValueError: ``relevant`` is empty (recall is undefined) or ``k`` is not positive.
    """
    if not relevant:
        raise ValueError("hit_ratio needs at least one relevant id")
    ids, _ = _top(retrieved, k, None)
    return _hits(ids, relevant) / len(relevant)


def success_at_k(retrieved: Sequence[str], relevant: Collection[str], k: int) -> float:
    """1.0 if any of the top ``k`` ids is relevant, else 0.0.

    Averaged over queries with ``k=1`` this is "recall@1" as metric-learning papers use
    it (= precision@1, top-1 accuracy of the nearest neighbour).
    """
    ids, _ = _top(retrieved, k, None)
    return 1.0 if _hits(ids, relevant) else 0.0


def average_precision(
    retrieved: Sequence[str], relevant: Collection[str], k: int, *, scores: Sequence[float] | None = None
) -> float:
    """Standard AP@k: the sum of precision@rank over hit ranks, divided by ``min(k, |relevant|)``.

    A query loses credit for every relevant id missing from the top ``k``.

    Raises:
        ValueError: ``relevant`` is empty, ``k`` is not positive, or ``scores`` has the wrong length.
    """
    if not relevant:
        raise ValueError("average_precision needs at least one relevant id")
    ids, top_scores = _top(retrieved, k, scores)
    return _precision_sum(ids, relevant, top_scores) / min(k, len(relevant))


def towhee_average_precision(
    retrieved: Sequence[str], relevant: Collection[str], k: int, *, scores: Sequence[float] | None = None
) -> float:
    """Towhee's AP@k: the sum of precision@rank over hit ranks, divided by the number of hits.

    This is the "mAP" the Towhee and Milvus examples publish. It ignores misses: one
    hit at rank 1 scores 1.0. No hits scores 0.0.
    """
    ids, top_scores = _top(retrieved, k, scores)
    hits = _hits(ids, relevant)
    return _precision_sum(ids, relevant, top_scores) / hits if hits else 0.0


def mean_metrics(
    rankings: Mapping[str, Sequence[str]],
    relevant: Mapping[str, Collection[str]],
    k: int,
    *,
    scores: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, float]:
    """The four summary figures over queries: ``{"mHR", "mAP_towhee", "mAP", "recall@1"}``.

    ``rankings`` maps a query id to its retrieved ids, ``relevant`` the query id to its
    relevant ids (every ranked query needs an entry), ``scores`` optionally the query id
    to the scores of its retrieved ids.

    Raises:
        ValueError: no queries, or a query without relevant ids.
    """
    if not rankings:
        raise ValueError("mean_metrics needs at least one query")
    sums = {"mHR": 0.0, "mAP_towhee": 0.0, "mAP": 0.0, "recall@1": 0.0}
    for qid, ids in rankings.items():
        rel = relevant.get(qid)
        if not rel:
            raise ValueError(f"query {qid!r} has no relevant ids")
        sc = None if scores is None else scores[qid]
        sums["mHR"] += hit_ratio(ids, rel, k)
        sums["mAP_towhee"] += towhee_average_precision(ids, rel, k, scores=sc)
        sums["mAP"] += average_precision(ids, rel, k, scores=sc)
        sums["recall@1"] += success_at_k(ids, rel, 1)
    return {name: value / len(rankings) for name, value in sums.items()}
