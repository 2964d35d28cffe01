"""Metric functions against cases computed by hand."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lookalike.eval import (
    average_precision,
    hit_ratio,
    mean_metrics,
    success_at_k,
    towhee_average_precision,
)

REL = {"a", "b", "c", "d"}


def test_perfect_ranking() -> None:
    ranked = ["a", "b", "c", "d"]
    assert hit_ratio(ranked, REL, 4) == 1.0
    assert average_precision(ranked, REL, 4) == 1.0
    assert towhee_average_precision(ranked, REL, 4) == 1.0
    assert success_at_k(ranked, REL, 1) == 1.0


def test_mixed_ranking_by_hand() -> None:
    # hits at ranks 1 and 3 of k=4: precisions 1/1 and 2/3
    ranked = ["a", "x", "b", "y"]
    assert hit_ratio(ranked, REL, 4) == 0.5
    assert math.isclose(towhee_average_precision(ranked, REL, 4), (1 + 2 / 3) / 2)
    assert math.isclose(average_precision(ranked, REL, 4), (1 + 2 / 3) / 4)


def test_towhee_ap_hides_misses_standard_ap_does_not() -> None:
    ranked = ["a", "x", "y", "z"]
    assert towhee_average_precision(ranked, REL, 4) == 1.0
    assert average_precision(ranked, REL, 4) == 0.25
    assert hit_ratio(ranked, REL, 4) == 0.25


def test_no_hits() -> None:
    ranked = ["x", "y", "z"]
    assert hit_ratio(ranked, REL, 3) == 0.0
    assert average_precision(ranked, REL, 3) == 0.0
    assert towhee_average_precision(ranked, REL, 3) == 0.0
    assert success_at_k(ranked, REL, 3) == 0.0


def test_fewer_than_k_results_count_as_misses() -> None:
    # two results, k=10, 4 relevant: standard AP divides by min(10, 4) = 4
    ranked = ["x", "a"]
    assert hit_ratio(ranked, REL, 10) == 0.25
    assert average_precision(ranked, REL, 10) == pytest.approx(0.5 / 4)
    assert towhee_average_precision(ranked, REL, 10) == 0.5
    assert hit_ratio([], REL, 10) == 0.0
    assert average_precision([], REL, 10) == 0.0


def test_only_top_k_counts() -> None:
    ranked = ["x", "y", "a", "b"]
    assert hit_ratio(ranked, REL, 2) == 0.0
    assert average_precision(ranked, REL, 2) == 0.0
    # min(k, |relevant|) = 2 when k < |relevant|
    assert average_precision(["a", "x"], REL, 2) == 0.5


def test_repeated_ids_count_once() -> None:
    assert hit_ratio(["a", "a", "a"], REL, 3) == 0.25
    # the repeat is dropped, so "b" moves up to rank 2
    assert average_precision(["a", "a", "b"], REL, 2) == 1.0


def test_ties_use_expected_order() -> None:
    # "x" and "a" tie at rank 1-2: a at rank 1 (AP 1) or rank 2 (AP 1/2), expected 3/4
    ranked, scores = ["x", "a"], [0.9, 0.9]
    assert towhee_average_precision(ranked, {"a"}, 2) == 0.5
    assert towhee_average_precision(ranked, {"a"}, 2, scores=scores) == 0.75
    assert average_precision(ranked, {"a"}, 2, scores=scores) == 0.75
    # ties do not change the hit ratio
    assert hit_ratio(ranked, {"a"}, 2) == 1.0


def test_ties_with_two_relevant_in_group() -> None:
    # ranks 2-4 tie and hold 2 of 3 relevant, a hit before them at rank 1.
    # Enumerate the 3 equally likely placements of the miss by hand:
    #   miss at 2: 1/1 + 2/3 + 3/4;  miss at 3: 1 + 2/2 + 3/4;  miss at 4: 1 + 2/2 + 3/3
    ranked = ["a", "b", "c", "x"]
    scores = [0.9, 0.5, 0.5, 0.5]
    expected_sum = ((1 + 2 / 3 + 3 / 4) + (1 + 1 + 3 / 4) + (1 + 1 + 1)) / 3
    rel = {"a", "b", "c"}
    assert towhee_average_precision(ranked, rel, 4, scores=scores) == pytest.approx(expected_sum / 3)
    assert average_precision(ranked, rel, 4, scores=scores) == pytest.approx(expected_sum / 3)


@given(st.lists(st.booleans(), min_size=1, max_size=6), st.integers(0, 3), st.integers(0, 5))
def test_tie_aware_ap_equals_mean_over_permutations(flags: list[bool], extra: int, cut: int) -> None:
    # ids[cut:] tie: the tie-aware AP is the exact average AP over all orders of that group
    ids = [f"{'r' if f else 'n'}{i}" for i, f in enumerate(flags)]
    relevant = {i for i in ids if i.startswith("r")} | {f"missing{j}" for j in range(extra)}
    if not relevant:
        return
    k, cut = len(ids), min(cut, len(ids))
    scores = [float(k - i) for i in range(cut)] + [0.0] * (k - cut)
    orders = [ids[:cut] + list(p) for p in itertools.permutations(ids[cut:])]
    for ap in (average_precision, towhee_average_precision):
        exact = sum(ap(o, relevant, k) for o in orders) / len(orders)
        assert ap(ids, relevant, k, scores=scores) == pytest.approx(exact)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        hit_ratio(["a"], set(), 1)
    with pytest.raises(ValueError):
        average_precision(["a"], set(), 1)
    with pytest.raises(ValueError):
        hit_ratio(["a"], REL, 0)
    with pytest.raises(ValueError):
        average_precision(["a", "b"], REL, 2, scores=[1.0])


def test_mean_metrics_over_queries() -> None:
    rankings = {"q1": ["a", "x"], "q2": ["y", "b"]}
    relevant = {"q1": {"a", "c"}, "q2": {"b"}}
    got = mean_metrics(rankings, relevant, 2)
    assert got["mHR"] == pytest.approx((0.5 + 1.0) / 2)
    assert got["mAP_towhee"] == pytest.approx((1.0 + 0.5) / 2)
    assert got["mAP"] == pytest.approx((1.0 / 2 + 0.5 / 1) / 2)
    assert got["recall@1"] == 0.5
    with pytest.raises(ValueError):
        mean_metrics({}, {}, 2)
    with pytest.raises(ValueError):
        mean_metrics({"q": ["a"]}, {}, 2)
