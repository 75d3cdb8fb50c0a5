"""Quality metrics of recommendations and of the propensity model, on plain sequences.

Used by the offline evaluator (:mod:`attune.flows.evaluate`) and by the propensity
model's progressive validation (:mod:`attune.operators.propensity`). Every function is
pure and small; the tests work each one out by hand on tiny cases.

Top-k metrics score **one** held-out target item against a ranked list (the
prequential protocol: the item the user interacted with next), ranks 1-based:

- hit rate ``HR@k``: 1 if the target is among the first ``k``, else 0;
- ``NDCG@k``: ``1 / log2(rank + 1)`` if the target is at ``rank <= k``, else 0
  (with one relevant item the ideal DCG is 1, so DCG is NDCG);
- reciprocal rank (``MRR`` as a mean): ``1 / rank`` within the first ``k``, else 0
  (cut at the list length, like the other two, so a method gains nothing from
  ranks nobody sees).

>>> recs = ["a", "b", "c"]
>>> hit_rate(recs, "b", 10), round(ndcg(recs, "b", 10), 4), reciprocal_rank(recs, "b", 10)
(1.0, 0.6309, 0.5)
>>> hit_rate(recs, "c", 2), ndcg(recs, "z", 3), reciprocal_rank(recs, "z", 3)
(0.0, 0.0, 0.0)

List metrics:

- catalogue ``coverage``: distinct items ever recommended / catalogue size;
- ``intra_list_diversity``: ``1 - mean pairwise cosine similarity`` of the
  items' vectors (the evaluator uses the content vectors of
  :mod:`attune.operators.content`: category path, brand, price band, tags).

Probabilistic classifier metrics: :func:`roc_auc` (exact, rank based, ties
counted half) and :func:`log_loss` (natural log, probabilities clipped to
``[eps, 1 - eps]``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = [
    "RankingTally",
    "coverage",
    "hit_rate",
    "intra_list_diversity",
    "log_loss",
    "ndcg",
    "rank_of",
    "reciprocal_rank",
    "roc_auc",
]

LOG_LOSS_EPS = 1e-15


def rank_of(recommended: Sequence[str], target: str, k: int) -> int | None:
    """1-based rank of ``target`` within the first ``k`` of ``recommended``, else ``None``.

    >>> rank_of(["x", "y"], "y", 5), rank_of(["x", "y"], "y", 1)
    (2, None)
    """
    if k <= 0:
        raise ValueError(f"k must be >= 1, got {k}")
    for i, item in enumerate(recommended[:k]):
        if item == target:
            return i + 1
    return None


def hit_rate(recommended: Sequence[str], target: str, k: int) -> float:
    """1.0 if ``target`` is in the first ``k`` of ``recommended``, else 0.0."""
    return 0.0 if rank_of(recommended, target, k) is None else 1.0


def ndcg(recommended: Sequence[str], target: str, k: int) -> float:
    """``1 / log2(rank + 1)`` for the target's rank ``<= k``, else 0 (one relevant item)."""
    r = rank_of(recommended, target, k)
    return 0.0 if r is None else 1.0 / math.log2(r + 1)


def reciprocal_rank(recommended: Sequence[str], target: str, k: int) -> float:
    """``1 / rank`` of the target within the first ``k``, else 0."""
    r = rank_of(recommended, target, k)
    return 0.0 if r is None else 1.0 / r


def coverage(recommended_lists: Iterable[Sequence[str]], catalogue_size: int) -> float:
    """Distinct items recommended at least once, as a share of the catalogue.

    >>> coverage([["a", "b"], ["b", "c"]], 6)
    0.5
    """
    if catalogue_size <= 0:
        raise ValueError(f"catalogue_size must be >= 1, got {catalogue_size}")
    seen: set[str] = set()
    for recs in recommended_lists:
        seen.update(recs)
    return len(seen) / catalogue_size


def intra_list_diversity(vectors: npt.NDArray[np.floating]) -> float | None:
    """``1 - mean pairwise cosine similarity`` of the rows of ``vectors`` (one row per item).

    ``None`` for fewer than two items (no pair). Zero rows count as similarity 0.

    >>> intra_list_diversity(np.array([[1.0, 0.0], [0.0, 1.0]]))
    1.0
    >>> intra_list_diversity(np.array([[1.0, 0.0], [2.0, 0.0]]))
    0.0
    """
    v = np.asarray(vectors, dtype=np.float64)
    n = v.shape[0]
    if n < 2:
        return None
    norms = np.linalg.norm(v, axis=1)
    unit = np.divide(v, norms[:, None], out=np.zeros_like(v), where=norms[:, None] > 0)
    sims = unit @ unit.T
    pair_sum = (sims.sum() - np.trace(sims)) / 2.0
    return float(1.0 - pair_sum / (n * (n - 1) / 2))


def roc_auc(labels: Sequence[bool | int | float], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties half.

    ``None`` when one class is missing (undefined).

    >>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape} vs {s.shape}")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    # Mann-Whitney U with average ranks for ties.
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    i = 0
    n = len(s)
    while i < n:
        j = i
        while j + 1 < n and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def log_loss(
    labels: Sequence[bool | int | float], probs: Sequence[float], eps: float = LOG_LOSS_EPS
) -> float | None:
    """Mean negative log-likelihood (natural log); ``None`` for no samples.

    >>> round(log_loss([1, 0], [0.8, 0.4]), 4)   # -(ln 0.8 + ln 0.6) / 2
    0.367
    """
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1.0 - eps)
    if y.shape != p.shape:
        raise ValueError(f"labels and probabilities differ in length: {y.shape} vs {p.shape}")
    if len(y) == 0:
        return None
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


@dataclass(slots=True)
class RankingTally:
    """Running sums of one method's top-k metrics over evaluation points.

    >>> t = RankingTally(k=2)
    >>> t.add(["a", "b"], "b", diversity=0.5)
    1.0
    >>> t.add(["c", "a"], "z", diversity=None)
    0.0
    >>> s = t.summary(catalogue_size=4)
    >>> s["hr"], s["mrr"], s["coverage"], s["diversity"], s["points"]
    (0.5, 0.25, 0.75, 0.5, 2)
    """

    k: int
    points: int = 0
    hits: float = 0.0
    ndcg_sum: float = 0.0
    rr_sum: float = 0.0
    diversity_sum: float = 0.0
    diversity_n: int = 0
    recommended: set[str] = field(default_factory=set)

    def add(self, recommended: Sequence[str], target: str, diversity: float | None) -> float:
        """Count one evaluation point; returns its hit (1.0 or 0.0)."""
        top = recommended[: self.k]
        r = rank_of(top, target, self.k)
        self.points += 1
        self.recommended.update(top)
        if diversity is not None:
            self.diversity_sum += diversity
            self.diversity_n += 1
        if r is None:
            return 0.0
        self.hits += 1.0
        self.ndcg_sum += 1.0 / math.log2(r + 1)
        self.rr_sum += 1.0 / r
        return 1.0

    def summary(self, catalogue_size: int) -> dict[str, float | int | None]:
        n = max(self.points, 1)
        return {
            "points": self.points,
            "hr": self.hits / n,
            "ndcg": self.ndcg_sum / n,
            "mrr": self.rr_sum / n,
            "coverage": len(self.recommended) / max(catalogue_size, 1),
            "diversity": self.diversity_sum / self.diversity_n if self.diversity_n else None,
        }
