"""Trending: time-decayed popularity of items, overall, per category and per segment.

Forward decay in the log domain: an interaction of weight ``w`` at event time
``t`` adds ``w * 2 ** ((t - EPOCH_MS) / half_life)`` to an item's sum, and the
item's **trend score** is ``log2`` of that sum. Scores of items last touched at
different times are therefore directly comparable (higher = more trending now,
for any "now"), and an update touches one item only: no periodic rescoring of
the catalogue, no shared counter. Gaps in the score are meaningful: +1 is twice
the decayed popularity.

Sharding (the scaling rule): the per-user path sends ``(item, time, weight,
segments)`` keyed by item id; :class:`ItemTrend` is that key's state and
:meth:`ItemTrend.publish` says what to write: ``ZADD`` of the item's score to
``attune:trending:global``, ``attune:trending:category:<top>``,
``attune:trending:category:<top>/<sub>`` and
``attune:trending:segment:<name>`` for each segment it is trending in. Redis
keeps one sorted set per scope; writers of different items never contend.
Readers take ``ZREVRANGE 0 N``; the sink trims each set to
:data:`KEEP_PER_SCOPE` members.

Within one category, the order of the category set equals the order of the
global scores of the category's items, so the in-process board
(:class:`TrendingBoard`) keeps one global array and one per segment, and
derives categories by mask.

>>> a = ItemTrend("a", "toys/games")
>>> b = ItemTrend("b", "toys/games")
>>> a.update(0, 1.0); a.update(0, 1.0); b.update(HALF_LIFE_MS, 1.0)
>>> a.score == b.score        # two views a half-life ago weigh as one now
True
>>> sorted(scope for scope, _, _ in a.publish())
['category:toys', 'category:toys/games', 'global']
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = [
    "EPOCH_MS",
    "HALF_LIFE_MS",
    "ItemTrend",
    "TrendingBoard",
    "logaddexp2",
    "scope_names",
    "scopes_of",
    "segment_scope",
]

#: Reference time of the forward decay: 2020-01-01T00:00Z.
EPOCH_MS = 1_577_836_800_000
HALF_LIFE_MS = 12 * 3_600_000
#: Members a scope's sorted set keeps (the sink trims with ZREMRANGEBYRANK).
KEEP_PER_SCOPE = 1000
#: Interaction weights: a view counts 1, a cart add 3, a bought unit 5.
VIEW_W, CART_W, BUY_W = 1.0, 3.0, 5.0
NEG_INF = float("-inf")


def log_weight(t_ms: int, weight: float, half_life_ms: float = HALF_LIFE_MS) -> float:
    """``log2(weight * 2 ** ((t - EPOCH_MS) / half_life))``.

    >>> log_weight(EPOCH_MS + HALF_LIFE_MS, 2.0)
    2.0
    """
    return math.log2(weight) + (t_ms - EPOCH_MS) / half_life_ms


def logaddexp2(x: float, y: float) -> float:
    """``log2(2**x + 2**y)`` on Python floats: numpy's ``logaddexp2`` step for step (the
    same result, tested), without a numpy scalar call per interaction (~1 us each).

    >>> logaddexp2(3.0, 3.0), logaddexp2(NEG_INF, 2.0), float(np.logaddexp2(1.0, 2.5))
    (4.0, 2.0, 2.936751795439824)
    >>> logaddexp2(1.0, 2.5)
    2.936751795439824
    """
    if x == y:
        return x + 1.0  # also -inf and -inf
    diff = x - y
    if diff > 0:
        return x + _LOG2E * math.log1p(math.exp2(-diff))
    if diff <= 0:
        return y + _LOG2E * math.log1p(math.exp2(diff))
    return diff  # nan


_LOG2E = 1.4426950408889634074


def scopes_of(category: str | None) -> list[str]:
    """Scopes an item's global score is written to.

    >>> scopes_of("home/decor")
    ['global', 'category:home', 'category:home/decor']
    """
    if not category:
        return ["global"]
    top = category.split("/", 1)[0]
    out = ["global", f"category:{top}"]
    if top != category:
        out.append(f"category:{category}")
    return out


@functools.lru_cache(maxsize=4096)
def scope_names(category: str | None) -> tuple[str, ...]:
    """:func:`scopes_of`, cached (the learner's publication asks for every changed item;
    categories are few).

    >>> scope_names("home/decor") == tuple(scopes_of("home/decor"))
    True
    """
    return tuple(scopes_of(category))


@functools.lru_cache(maxsize=4096)
def segment_scope(segment: str) -> str:
    """The scope of a segment's trending set: ``segment:<name>`` (cached, as :func:`scope_names`).

    >>> segment_scope("vip")
    'segment:vip'
    """
    return f"segment:{segment}"


@dataclass(slots=True)
class ItemTrend:
    """One item's trend scores (a Bytewax key per item). Pickles; bounded by the segment count."""

    item: str
    category: str | None = None
    score: float = NEG_INF
    segments: dict[str, float] = field(default_factory=dict)
    half_life_ms: float = HALF_LIFE_MS

    def update(self, t_ms: int, weight: float, segments: tuple[str, ...] = ()) -> None:
        lw = log_weight(t_ms, weight, self.half_life_ms)
        self.score = logaddexp2(self.score, lw)
        for s in segments:
            self.segments[s] = logaddexp2(self.segments.get(s, NEG_INF), lw)

    def publish(self) -> list[tuple[str, str, float]]:
        """``(scope, item, score)`` for a ZADD each: global, its categories and segments."""
        out = [(scope, self.item, self.score) for scope in scopes_of(self.category)]
        out.extend((segment_scope(s), self.item, v) for s, v in self.segments.items())
        return out


@dataclass(slots=True)
class TrendingBoard:
    """Trend scores of every catalogue row, global and per segment, for ranking in process.

    The evaluator updates it per interaction; the live per-user path fills it
    from the published sorted sets (:meth:`set_scores`). Arrays grow with the
    catalogue (rows as in :class:`~attune.operators.content.Catalogue`).
    """

    half_life_ms: float = HALF_LIFE_MS
    scores: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    segments: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict)
    #: Bumped by every change (``update``, ``set_scores``): what caches of derived
    #: values (ranking's shares per category) compare to stay true.
    version: int = 0

    def _fit(self, arr: npt.NDArray[np.float64], n: int) -> npt.NDArray[np.float64]:
        if len(arr) >= n:
            return arr
        out = np.full(max(n, 2 * len(arr), 64), NEG_INF)
        out[: len(arr)] = arr
        return out

    def update(self, row: int, t_ms: int, weight: float, segments: tuple[str, ...] = ()) -> None:
        self.version += 1
        self.scores = self._fit(self.scores, row + 1)
        lw = log_weight(t_ms, weight, self.half_life_ms)
        self.scores[row] = np.logaddexp2(self.scores[row], lw)
        for s in segments:
            arr = self._fit(self.segments.get(s, np.zeros(0)), row + 1)
            arr[row] = np.logaddexp2(arr[row], lw)
            self.segments[s] = arr

    def set_scores(
        self, scope: str, rows: npt.NDArray[np.int64], values: npt.NDArray[np.float64], n: int
    ) -> None:
        """Load a published scope (``global`` or ``segment:<name>``) for ``n`` catalogue rows."""
        self.version += 1
        arr = np.full(n, NEG_INF)
        arr[rows] = values
        if scope == "global":
            self.scores = arr
        elif scope.startswith("segment:"):
            self.segments[scope[len("segment:") :]] = arr

    def shares(self, n: int, segment: str | None = None) -> npt.NDArray[np.float64]:
        """Each row's share of the decayed popularity (sums to 1; zeros if nothing is known)."""
        arr = self.segments.get(segment, np.zeros(0)) if segment else self.scores
        out = np.zeros(n)
        m = min(n, len(arr))
        if m == 0:
            return out
        s = arr[:m]
        finite = np.isfinite(s)
        if not finite.any():
            return out
        top = s[finite].max()
        out[:m][finite] = np.exp2(s[finite] - top)
        out /= out.sum()
        return out
