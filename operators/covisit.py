"""Co-visitation: people who viewed this also viewed (and bought together), sharded by item.

The per-user path knows a user's current session, so it turns each product
view or add-to-cart into a few **pairs** (:func:`session_pairs`): the new item
with each of the last :data:`PAIR_WINDOW` distinct items of the session, both
ways; a purchase gives every pair of its lines (``bought`` kind). Each pair is
keyed by its **source item** and folded into that item's
:class:`ItemNeighbours`, so the work spreads over items (Bytewax key = item id)
and nothing per event funnels through one key. An item's state publishes its
top-N neighbours (:meth:`ItemNeighbours.publish`), which the per-user path
reads when it ranks.

Scores decay (half-life :data:`HALF_LIFE_MS`, forward decay: a weight at
``t`` counts ``2 ** ((t - t0) / half_life)``, so an update touches one entry,
and the reference ``t0`` moves forward when exponents grow). Memory is bounded:
when an item has more than ``2 * TOP_N`` neighbours of a kind, the weakest are
pruned to ``TOP_N``.

>>> a = ItemNeighbours("a")
>>> for t, other in [(0, "b"), (1, "b"), (2, "c")]:
...     a.update(other, VIEWED, t)
>>> [n for n, _ in a.top(VIEWED, 5, now_ms=2)]
['b', 'c']
>>> session_pairs(["x", "y", "x"], "z")
[('z', 'x'), ('x', 'z'), ('z', 'y'), ('y', 'z')]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter

__all__ = [
    "BOUGHT",
    "HALF_LIFE_MS",
    "PAIR_WINDOW",
    "TOP_N",
    "VIEWED",
    "CovisitIndex",
    "ItemNeighbours",
    "NeighbourList",
    "purchase_pairs",
    "session_pairs",
]

VIEWED = "viewed"
BOUGHT = "bought"
KINDS = (VIEWED, BOUGHT)
#: Neighbours published (and kept after pruning) per item and kind.
TOP_N = 50
#: A new item pairs with this many of the latest distinct items of the session.
PAIR_WINDOW = 5
HALF_LIFE_MS = 7 * 24 * 3_600_000
#: Rebase forward-decay weights when an exponent passes this (2**40 is far from overflow).
_REBASE_EXP = 40.0


def session_pairs(session_items: Sequence[str], new_item: str) -> list[tuple[str, str]]:
    """Pairs for a new interaction: with the last ``PAIR_WINDOW`` distinct other items, both ways.

    ``session_items`` are the session's earlier items, oldest first.
    """
    out: list[tuple[str, str]] = []
    seen = {new_item}
    for item in reversed(session_items):
        if item in seen:
            continue
        seen.add(item)
        out.append((new_item, item))
        out.append((item, new_item))
        if len(seen) > PAIR_WINDOW:
            break
    return out


def purchase_pairs(items: Sequence[str]) -> list[tuple[str, str]]:
    """Every ordered pair of distinct items bought in one order (capped at 20 items).

    >>> purchase_pairs(["a", "b"])
    [('a', 'b'), ('b', 'a')]
    """
    distinct = list(dict.fromkeys(items))[:20]
    return [(a, b) for a in distinct for b in distinct if a != b]


@dataclass(frozen=True, slots=True)
class NeighbourList:
    """What an item's shard publishes: its top neighbours per kind, scores decayed to ``at_ms``.

    Redis value (the lead's sink): ``attune:model:covisit:<item>``, orjson
    ``{"item":..,"at":ms,"viewed":[[item,score],..],"bought":[[item,score],..]}``.
    """

    item: str
    at_ms: int
    viewed: tuple[tuple[str, float], ...]
    bought: tuple[tuple[str, float], ...]

    def scale(self, now_ms: int) -> float:
        """The decay factor of the published scores at ``now_ms`` (1 before ``at_ms``)."""
        return 2.0 ** (-(now_ms - self.at_ms) / HALF_LIFE_MS) if now_ms > self.at_ms else 1.0

    def to_json(self) -> dict[str, object]:
        return {
            "item": self.item,
            "at": self.at_ms,
            "viewed": [list(x) for x in self.viewed],
            "bought": [list(x) for x in self.bought],
        }


@dataclass(slots=True)
class ItemNeighbours:
    """One item's co-visitation state (a Bytewax key per item). Bounded, pickles."""

    item: str
    t0: int | None = None
    weights: dict[str, dict[str, float]] = field(default_factory=lambda: {VIEWED: {}, BOUGHT: {}})
    updates: int = 0

    def update(self, other: str, kind: str, t_ms: int, weight: float = 1.0) -> None:
        """Add ``weight`` at event time ``t_ms`` to the pair (this item, ``other``) of ``kind``."""
        if self.t0 is None:
            self.t0 = t_ms
        exp = (t_ms - self.t0) / HALF_LIFE_MS
        if exp > _REBASE_EXP:
            self._rebase(t_ms)
            exp = 0.0
        w = self.weights[kind]
        w[other] = w.get(other, 0.0) + weight * 2.0**exp
        self.updates += 1
        if len(w) > 2 * TOP_N:
            self.weights[kind] = dict(_strongest(w, TOP_N))

    def _rebase(self, t_ms: int) -> None:
        assert self.t0 is not None
        factor = 2.0 ** (-(t_ms - self.t0) / HALF_LIFE_MS)
        for w in self.weights.values():
            for k in w:
                w[k] *= factor
        self.t0 = t_ms

    def top(self, kind: str, n: int, now_ms: int) -> list[tuple[str, float]]:
        """The ``n`` strongest neighbours of ``kind``, scores decayed to ``now_ms``."""
        w = self.weights[kind]
        if not w or self.t0 is None:
            return []
        scale = 2.0 ** (-(now_ms - self.t0) / HALF_LIFE_MS)
        return [(k, v * scale) for k, v in _strongest(w, n)]

    def publish(self, now_ms: int, n: int = TOP_N) -> NeighbourList:
        """The top ``n`` neighbours of each kind, to write to Redis (see :class:`NeighbourList`)."""
        return NeighbourList(
            self.item,
            now_ms,
            self._published(VIEWED, n, now_ms),
            self._published(BOUGHT, n, now_ms),
        )

    def _published(self, kind: str, n: int, now_ms: int) -> tuple[tuple[str, float], ...]:
        """:meth:`top`, scores rounded to 6 decimals, in one pass (the learner's publication
        runs it for every item whose co-visitation changed)."""
        w = self.weights[kind]
        if not w or self.t0 is None:
            return ()
        scale = 2.0 ** (-(now_ms - self.t0) / HALF_LIFE_MS)
        return tuple([(k, round(v * scale, 6)) for k, v in _strongest(w, n)])


_weight = itemgetter(1)


def _strongest(w: dict[str, float], n: int) -> list[tuple[str, float]]:
    """The ``n`` largest weights, ties in insertion order (``reverse`` keeps sorts stable);
    the key is a C function, not a lambda: this runs for every published list."""
    return sorted(w.items(), key=_weight, reverse=True)[:n]


@dataclass(slots=True)
class CovisitIndex:
    """The read side: neighbour lists by item, for ranking (and the in-process evaluator).

    In the live flow it is filled from published :class:`NeighbourList` values;
    in the evaluator it holds the :class:`ItemNeighbours` states themselves
    (:meth:`learn` folds pairs in directly), so both paths rank from the same
    lists.
    """

    states: dict[str, ItemNeighbours] = field(default_factory=dict)
    published: dict[str, NeighbourList] = field(default_factory=dict)

    def learn(self, pairs: Sequence[tuple[str, str]], kind: str, t_ms: int) -> None:
        """:meth:`ItemNeighbours.update` of each pair ``(a, b)`` at ``t_ms`` (weight 1), in
        order; the common case inlined (the one learner folds ~30 pairs per session)."""
        states = self.states
        for a, b in pairs:
            st = states.get(a)
            if st is None:
                st = states[a] = ItemNeighbours(a)
            t0 = st.t0
            if t0 is None or (t_ms - t0) / HALF_LIFE_MS > _REBASE_EXP:
                st.update(b, kind, t_ms)  # the first update, or a rebase
                continue
            w = st.weights[kind]
            w[b] = w.get(b, 0.0) + 2.0 ** ((t_ms - t0) / HALF_LIFE_MS)  # as update(weight=1)
            st.updates += 1
            if len(w) > 2 * TOP_N:
                st.weights[kind] = dict(_strongest(w, TOP_N))

    def put(self, lst: NeighbourList) -> None:
        self.published[lst.item] = lst

    def neighbours(self, item: str, kind: str, n: int, now_ms: int) -> list[tuple[str, float]]:
        st = self.states.get(item)
        if st is not None:
            return st.top(kind, n, now_ms)
        lst = self.published.get(item)
        if lst is None:
            return []
        scale = lst.scale(now_ms)
        got = lst.viewed if kind == VIEWED else lst.bought
        return [(k, v * scale) for k, v in got[:n]]
