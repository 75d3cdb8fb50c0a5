"""Ranking and classifier metrics on tiny hand-made cases whose answers are worked out here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attune.operators.metrics import (
    RankingTally,
    coverage,
    hit_rate,
    intra_list_diversity,
    log_loss,
    ndcg,
    rank_of,
    reciprocal_rank,
    roc_auc,
)

RECS = ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("target", "k", "hr", "ndcg_value", "rr"),
    [
        # rank 1: log2(2) = 1
        ("a", 4, 1.0, 1.0, 1.0),
        # rank 3: 1 / log2(4) = 0.5; 1 / 3
        ("c", 4, 1.0, 0.5, 1 / 3),
        # rank 4 but k = 3: outside the list that counts
        ("d", 3, 0.0, 0.0, 0.0),
        # rank 4 with k = 4: 1 / log2(5)
        ("d", 4, 1.0, 1 / math.log2(5), 0.25),
        # not recommended at all
        ("z", 4, 0.0, 0.0, 0.0),
    ],
)
def test_top_k_metrics_by_hand(
    target: str, k: int, hr: float, ndcg_value: float, rr: float
) -> None:
    assert hit_rate(RECS, target, k) == hr
    assert ndcg(RECS, target, k) == pytest.approx(ndcg_value)
    assert reciprocal_rank(RECS, target, k) == pytest.approx(rr)


def test_rank_of_rejects_bad_k() -> None:
    with pytest.raises(ValueError, match="k must be >= 1"):
        rank_of(RECS, "a", 0)


def test_coverage_counts_distinct_items_over_catalogue() -> None:
    # lists cover {a, b, c, e} = 4 of 10 items
    assert coverage([["a", "b"], ["b", "c"], ["e", "a"]], 10) == 0.4
    assert coverage([], 5) == 0.0
    with pytest.raises(ValueError, match="catalogue_size"):
        coverage([["a"]], 0)


def test_intra_list_diversity_by_hand() -> None:
    # Three unit vectors: x, x, y. Pairs: (x,x)=1, (x,y)=0, (x,y)=0 -> mean 1/3 -> 2/3.
    v = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    assert intra_list_diversity(v) == pytest.approx(2 / 3)
    # 45 degrees apart: cos = sqrt(2)/2
    v = np.array([[1.0, 0.0], [1.0, 1.0]])
    assert intra_list_diversity(v) == pytest.approx(1 - math.sqrt(2) / 2)
    # one item: no pair, undefined
    assert intra_list_diversity(np.array([[1.0, 0.0]])) is None
    # a zero vector counts as dissimilar to everything
    assert intra_list_diversity(np.array([[0.0, 0.0], [1.0, 0.0]])) == 1.0


def test_roc_auc_by_hand_with_ties() -> None:
    # positives 0.8 and 0.35, negatives 0.4 and 0.1: pairs won: (0.8>0.4), (0.8>0.1),
    # (0.35>0.1) = 3 of 4
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    # a tie between a positive and a negative counts half: pairs (0.5 vs 0.5) = 0.5,
    # (0.5 > 0.2) = 1 -> 1.5 / 2
    assert roc_auc([1, 0, 0], [0.5, 0.5, 0.2]) == 0.75
    assert roc_auc([1, 1], [0.1, 0.2]) is None
    with pytest.raises(ValueError, match="differ in length"):
        roc_auc([1, 0], [0.5])


def test_log_loss_by_hand() -> None:
    # -(ln 0.8 + ln(1 - 0.4)) / 2
    assert log_loss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    # certainty that is wrong is clipped, not infinite
    assert math.isfinite(log_loss([1], [0.0]) or 0.0)
    assert log_loss([], []) is None


def test_ranking_tally_sums_points() -> None:
    t = RankingTally(k=3)
    assert t.add(["a", "b", "c"], "c", diversity=0.2) == 1.0  # rank 3
    assert t.add(["d", "a", "e"], "a", diversity=0.4) == 1.0  # rank 2
    assert t.add(["a", "f", "g"], "z", diversity=None) == 0.0
    s = t.summary(catalogue_size=14)
    assert s["points"] == 3
    assert s["hr"] == pytest.approx(2 / 3)
    assert s["ndcg"] == pytest.approx((0.5 + 1 / math.log2(3)) / 3)
    assert s["mrr"] == pytest.approx((1 / 3 + 1 / 2) / 3)
    assert s["coverage"] == pytest.approx(7 / 14)  # a b c d e f g
    assert s["diversity"] == pytest.approx(0.3)
