"""The ranking as it was before the candidate-sized rewrite (commit fd8f2cd), verbatim below
this docstring but for this paragraph: the reference :mod:`attune.bench.rank` replays the
captured calls through, to count the lists that :func:`attune.operators.ranking.rank`
returns differently (it must print 0). Never used by the flow. Its functions read the
models only through the methods of :class:`attune.operators.ranking.Models` it calls
(``constants``, ``trend_shares``, ``covisit_norm``, ``embedding_neighbours``, ...), so they
run on the current ``Models`` objects unchanged.


:func:`rank` is what the per-user path calls after a relevant event (product
view, cart change, purchase) with the user's :class:`UserSignals` (cheap to
build from the user's state) and the shared :class:`Models` (read-side copies
of the published models). It returns the top ``k`` :class:`Recommendation` s;
:func:`recs_value` makes the Redis value of ``attune:{u:<user>}:recs``.

Steps (all numpy over catalogue rows; no Python loop over the catalogue):

1. **Filters** (a row mask): in stock only; not purchased, not in the cart,
   not already seen (``Filters.exclude_seen``); category allow list (an item
   passes if its category path equals or starts with ``<entry>/``) and deny
   list (same match); explicit ``exclude`` ids.
2. **Candidates**: the union of the embedding neighbours of the latest recent
   items (:data:`N_EMB_NEIGHBOURS` each, kept per item and snapshot),
   co-visitation neighbours of the recent items (viewed-together and
   bought-together lists), the top :data:`N_TREND` trending items, the top
   :data:`N_CAT` items of the user's category-affinity x trending-in-category
   score, and the top :data:`N_CONTENT` never-interacted (cold) items by content
   similarity. (:func:`rank_full` scores the whole catalogue and takes the top
   :data:`N_EMB` of each user vector instead of the neighbours.)
3. **Hybrid score** of a candidate, each component scaled to [0, 1] over the
   candidates (divided by its maximum)::

       score = w_emb * emb + w_vt * viewed_together + w_bt * bought_together
             + w_cat * category + w_trend * trending + w_content * content

   - ``emb``: ``0.6 * max(0, cos(item, short)) + 0.4 * max(0, cos(item, long))``
     with the item2vec vectors (:mod:`attune.operators.embeddings`);
   - ``viewed_together`` / ``bought_together``: sum over the recent items of
     (recency weight x co-visitation score / that item's best score);
   - ``category``: ``affinity(category) x share of the item in its category's
     trending``, affinity = half short-term, half long-term decayed share of
     the user's recent items in the category (profile ``top_categories`` when
     there are none): an estimate of "P(next item)" if the user picks a
     category by taste and an item by its popularity there;
   - ``trending``: global (or the user's segments') trending share;
   - ``content``: ``max(0, cos)`` of the item's content vector with the
     user's decayed mean content vector (price band, brand, category).

   Weights: :class:`Weights` (defaults chosen on a development log, seed 3,
   never on the evaluation log; docs/models.md).
4. **Diversity** by maximal marginal relevance: pick greedily the candidate
   maximising ``lambda * score/max_score - (1 - lambda) * max content cosine
   to the items already picked`` (``lambda`` = :attr:`Weights.mmr_lambda`),
   among the :data:`MMR_POOL_PER_PICK` ``* k`` best-scored candidates.
5. **Reason**: the component with the largest weighted contribution
   (:data:`REASONS`): ``similar-to-viewed``, ``viewed-together``,
   ``bought-together``, ``trending-in-category``, ``trending`` (or
   ``trending-in-segment``), ``similar-content``.

A user with no known recent item gets the fallback: trending (per segment if
given, per top category if known; :data:`FALLBACK_WEIGHTS`), ``source ==
"trending"``.

>>> from attune.operators.events import ItemUpdate
>>> from attune.operators.content import Catalogue
>>> cat = Catalogue()
>>> for i in range(6):
...     _ = cat.update(ItemUpdate(f"i{i}", "t", ("a" if i < 3 else "b", "x"), 100, "EUR",
...                               i != 2, 0, 0))
>>> models = Models(cat)
>>> for i in range(6):
...     models.trending.update(i, 0, float(6 - i))
>>> recs = rank(UserSignals("u", now_ms=0), models, k=3)
>>> [(r.item, r.reason) for r in recs]   # i2 is out of stock
[('i0', 'trending'), ('i1', 'trending'), ('i3', 'trending')]
>>> recs = rank(UserSignals("u", 0, recent=(Interaction("i3", 0, VIEW),)), models, k=2,
...             filters=Filters(deny_categories=("a",)))
>>> [r.item for r in recs], recs[0].category
(['i4', 'i5'], 'b/x')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from attune.operators import recs_encoding
from attune.operators.content import Catalogue
from attune.operators.covisit import BOUGHT, VIEWED, CovisitIndex, NeighbourList
from attune.operators.embeddings import (
    CART_WEIGHT,
    LONG_HALF_LIFE_MS,
    SHORT_HALF_LIFE_MS,
    EmbeddingSnapshot,
    decay_weights,
    user_vectors,
)
from attune.operators.trending import TrendingBoard

__all__ = [
    "CART",
    "PURCHASE",
    "REASONS",
    "VIEW",
    "Filters",
    "Interaction",
    "Models",
    "Recommendation",
    "UserSignals",
    "Weights",
    "rank",
    "rank_full",
    "recs_value",
]

VIEW, CART, PURCHASE = "view", "cart", "purchase"
_KIND_WEIGHT = {VIEW: 1.0, CART: CART_WEIGHT, PURCHASE: CART_WEIGHT}
#: Recent interactions a UserSignals carries at most (the per-user path keeps a deque).
MAX_RECENT = 50
#: Recent items whose co-visitation lists are read per call.
COVISIT_SOURCES = 10
N_EMB, N_TREND, N_CAT, N_CONTENT, N_COVISIT = 100, 50, 100, 30, 30
#: Embedding neighbours kept per item and snapshot, all of them candidates when the item
#: is among the latest :data:`COVISIT_SOURCES` recent items (docs/models.md).
N_EMB_NEIGHBOURS = 20

REASONS: dict[str, str] = {
    "embedding": "similar-to-viewed",
    "viewed_together": "viewed-together",
    "bought_together": "bought-together",
    "category": "trending-in-category",
    "trending": "trending",
    "content": "similar-content",
}
_COMPONENTS = tuple(REASONS)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
#: Segment combinations whose trending shares one :class:`Models` keeps (two float64
#: arrays over the catalogue each); past it they are forgotten and recomputed.
MAX_TREND_COMBOS = 64


@dataclass(frozen=True, slots=True)
class Interaction:
    """One recent interaction of the user: item, event time and kind (view/cart/purchase)."""

    item: str
    time_ms: int
    kind: str = VIEW


@dataclass(frozen=True, slots=True)
class UserSignals:
    """What the per-user path knows, cheaply: recent items, exclusions, tastes.

    ``recent`` oldest first (at most :data:`MAX_RECENT`); ``seen`` further items
    to exclude when ``Filters.exclude_seen`` (recent items are excluded too);
    ``top_categories`` most viewed first (profile ``top_category_7d`` and
    beyond); ``segments`` the user's segment names.
    """

    user: str
    now_ms: int
    recent: tuple[Interaction, ...] = ()
    purchased: frozenset[str] = frozenset()
    in_cart: frozenset[str] = frozenset()
    seen: frozenset[str] = frozenset()
    top_categories: tuple[str, ...] = ()
    segments: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Filters:
    """Business rules applied before ranking (from config)."""

    in_stock_only: bool = True
    exclude_seen: bool = True
    allow_categories: tuple[str, ...] = ()
    deny_categories: tuple[str, ...] = ()
    exclude: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Weights:
    """Weights of the hybrid score and the MMR trade-off (docs/models.md).

    Defaults chosen on the development log (seed 3). Users without a known
    recent item are ranked with :data:`FALLBACK` instead (only trending and,
    with profile categories, trending-in-category carry information for them).
    """

    embedding: float = 0.1
    viewed_together: float = 0.2
    bought_together: float = 0.05
    category: float = 0.15
    trending: float = 0.02
    content: float = 0.48
    mmr_lambda: float = 0.9


#: Weights for users without a known recent item (the trending fallback).
FALLBACK_WEIGHTS = (("trending", 0.5), ("category", 0.5))


@dataclass(frozen=True, slots=True)
class Recommendation:
    """One recommended item, as written to Redis."""

    item: str
    score: float
    reason: str
    category: str | None

    def to_json(self) -> dict[str, object]:
        return {
            "item": self.item,
            "score": self.score,
            "reason": self.reason,
            "category": self.category,
        }


@dataclass(slots=True)
class _TrendShares:
    """Trending shares of one segment combination (``()``: global), read-only arrays."""

    share: F64  # each row's share of the decayed popularity
    in_cat: F64  # each row's share within its category
    reason: str
    _order: I64 | None = None  # rows with a positive share, largest first (lazily)
    # rows with a positive in_cat sorted by category code, then in_cat (largest first), and
    # where each code starts in them (lazily, once: one sort instead of one scan per code)
    _by_cat: tuple[I64, I64] | None = None

    def order(self) -> I64:
        """Rows with a positive share, largest share first (ties: lower row first)."""
        if self._order is None:
            rows = np.flatnonzero(self.share > 0)
            self._order = rows[np.argsort(-self.share[rows], kind="stable")].astype(np.int64)
        return self._order

    def in_category(self, codes: npt.NDArray[np.int32], code: int) -> I64:
        """Rows of category ``code`` with a positive share in it, largest first (ties:
        lower row first). All categories are sorted at the first call, in one pass: a scan
        of the catalogue per category cost O(catalogue) per category and snapshot."""
        if self._by_cat is None:
            rows = np.flatnonzero(self.in_cat > 0)
            # lexsort is stable: by code, then by share descending, then by row
            order = rows[np.lexsort((-self.in_cat[rows], codes[rows]))].astype(np.int64)
            n_codes = int(codes.max()) + 1 if len(codes) else 0
            starts = np.searchsorted(codes[order], np.arange(n_codes + 1)).astype(np.int64)
            order.flags.writeable = False
            self._by_cat = (order, starts)
        order, starts = self._by_cat
        if code + 1 >= len(starts):
            return order[:0]
        return order[starts[code] : starts[code + 1]]


@dataclass(slots=True)
class _Constants:
    """What :func:`rank` derives from the catalogue and the trending board alone, kept
    until either changes (in the flow: once per published snapshot, since every
    snapshot gets its own :class:`Models`)."""

    catalogue: Catalogue
    cat_version: int
    n: int
    n_codes: int
    trending: TrendingBoard
    trend_version: int
    cold: npt.NDArray[np.bool_]  # rows without a trend score (cold items)
    shares: dict[tuple[str, ...], _TrendShares] = field(default_factory=dict)
    # the cold rows sorted by category code, their content vectors in that order and where
    # each code starts (lazily, once per snapshot)
    _cold_by_code: tuple[I64, F32, I64] | None = None
    base_masks: dict[tuple[bool, tuple[str, ...], tuple[str, ...]], npt.NDArray[np.bool_]] = field(
        default_factory=dict
    )
    _vectors64: F64 | None = None

    def vectors64(self) -> F64:
        """The content vectors as float64, what :func:`rank_full`'s ``vectors @ float64``
        computes on (made on first use: :func:`rank` never needs them, and converting the
        whole matrix per snapshot cost ~40 MB of copying at 20,000 items)."""
        if self._vectors64 is None:
            self._vectors64 = _read_only(self.catalogue.vectors.astype(np.float64))
        return self._vectors64

    def cold_in(self, code: int) -> tuple[I64, F32]:
        """The cold rows of category ``code`` and their content vectors: views into one
        array per snapshot (gathering a category's vectors per call copied megabytes per
        call at 20,000 items, most of them cold)."""
        if self._cold_by_code is None:
            codes = self.catalogue.codes
            rows = np.flatnonzero(self.cold).astype(np.int64)
            rows = rows[np.argsort(codes[rows], kind="stable")]
            starts = np.searchsorted(codes[rows], np.arange(self.n_codes + 1)).astype(np.int64)
            self._cold_by_code = (rows, self.catalogue.vectors[rows], starts)
        rows, vectors, starts = self._cold_by_code
        if code + 1 >= len(starts):
            return rows[:0], vectors[:0]
        lo, hi = int(starts[code]), int(starts[code + 1])
        return rows[lo:hi], vectors[lo:hi]

    def base_mask(self, filters: Filters) -> npt.NDArray[np.bool_]:
        """Stock and category filters over the rows (read-only; cached per filter)."""
        key = (filters.in_stock_only, filters.allow_categories, filters.deny_categories)
        got = self.base_masks.get(key)
        if got is None:
            only = Filters(
                in_stock_only=key[0], exclude_seen=False, allow_categories=key[1],
                deny_categories=key[2],
            )  # fmt: skip
            got = allowed_rows(UserSignals("", 0), self.catalogue, only)
            got.flags.writeable = False
            self.base_masks[key] = got
        return got

    def fits(self, cat: Catalogue, trending: TrendingBoard) -> bool:
        return (
            self.catalogue is cat
            and self.cat_version == cat.version
            and self.n == len(cat)
            and self.n_codes == len(cat.category_names)
            and self.trending is trending
            and self.trend_version == trending.version
        )


@dataclass(slots=True)
class CovisitRows:
    """Published co-visitation lists as catalogue rows, for one catalogue state.

    Shared by the :class:`Models` of successive snapshots (``ModelReader`` hands it on):
    the learner republishes only the lists that changed, so an entry is reused while
    the snapshot's list is equal to the one it was made from.
    """

    catalogue: Catalogue | None = None
    cat_version: int = -1
    n: int = -1
    # (item, kind) -> (the published list, rows of its items in the catalogue, their
    # scores, the list's best score (None: empty))
    lists: dict[tuple[str, str], tuple[NeighbourList, I64, F64, float | None]] = field(
        default_factory=dict
    )

    def for_catalogue(
        self, cat: Catalogue
    ) -> dict[tuple[str, str], tuple[NeighbourList, I64, F64, float | None]]:
        """The entries, emptied first if the catalogue is another or changed."""
        if self.catalogue is not cat or self.cat_version != cat.version or self.n != len(cat):
            self.catalogue, self.cat_version, self.n = cat, cat.version, len(cat)
            self.lists = {}
        return self.lists


def _read_only(a: F64) -> F64:
    a.flags.writeable = False
    return a


@dataclass(slots=True)
class Models:
    """Read-side copies of the shared models, aligned on catalogue rows. Pickles.

    ``embeddings`` may be ``None`` (not published yet): the embedding component
    is then 0. ``version`` goes into the Redis value (``model_version``).
    Values that depend only on the catalogue and the trending board (shares per
    category, float64 content vectors, co-visitation rows) are cached until
    either changes (``Catalogue.version``, ``TrendingBoard.version``).
    """

    catalogue: Catalogue
    covisit: CovisitIndex = field(default_factory=CovisitIndex)
    trending: TrendingBoard = field(default_factory=TrendingBoard)
    embeddings: EmbeddingSnapshot | None = None
    _aligned_key: tuple[int, int, int] = (-1, -1, -1)
    _aligned: F32 | None = None
    _constants: _Constants | None = field(default=None, compare=False, repr=False)
    _neighbours: dict[int, I64] = field(default_factory=dict, compare=False, repr=False)
    _neighbours_key: tuple[int, int, int] = field(default=(-1, -1, -1), compare=False, repr=False)
    covisit_rows_cache: CovisitRows = field(default_factory=CovisitRows, compare=False, repr=False)
    _covisit_norm: dict[tuple[str, str], tuple[I64, F64] | None] = field(
        default_factory=dict, compare=False, repr=False
    )
    _covisit_norm_key: tuple[int, int, int] = field(default=(-1, -1, -1), compare=False, repr=False)

    @property
    def version(self) -> str:
        emb = self.embeddings.version if self.embeddings is not None else 0
        return f"c{self.catalogue.version}-e{emb}"

    def constants(self) -> _Constants:
        """The cached per-catalogue and per-trending values (rebuilt when either changed)."""
        cat, trending = self.catalogue, self.trending
        c = self._constants
        if c is not None and c.fits(cat, trending):
            return c
        n = len(cat)
        same_cat = (
            c is not None and c.catalogue is cat and c.cat_version == cat.version and c.n == n
        )
        scores = trending.scores
        cold = ~np.isfinite(scores[:n]) if len(scores) >= n else np.ones(n, np.bool_)
        c = _Constants(
            cat,
            cat.version,
            n,
            len(cat.category_names),
            trending,
            trending.version,
            cold,
            _vectors64=c._vectors64 if c is not None and same_cat else None,
        )
        self._constants = c
        return c

    def trend_shares(self, segments: tuple[str, ...]) -> _TrendShares:
        """Trending shares for the user's segments that have scores (global if none), and
        each row's share within its category; cached per combination."""
        c = self.constants()
        got = c.shares.get(segments)
        if got is not None:
            return got
        cat, n = self.catalogue, c.n
        if segments:
            share = np.mean([self.trending.shares(n, s) for s in segments], axis=0)
            reason = "trending-in-segment"
        else:
            share = self.trending.shares(n)
            reason = "trending"
        cat_total = np.bincount(cat.codes, weights=share, minlength=c.n_codes)
        in_cat = np.divide(
            share, cat_total[cat.codes], out=np.zeros(n), where=cat_total[cat.codes] > 0
        )
        if len(c.shares) >= MAX_TREND_COMBOS:
            c.shares.clear()
        got = c.shares[segments] = _TrendShares(_read_only(share), _read_only(in_cat), reason)
        return got

    def covisit_rows(
        self, item: str, kind: str, now_ms: int
    ) -> tuple[I64, F64, float, float] | None:
        """The recent item's co-visitation neighbours of ``kind`` known to the catalogue, as
        rows and scores, the best score of the whole list (its first entry, known to the
        catalogue or not) and the decay factor to apply to both at ``now_ms``; ``None``
        without a list. Scaled, the same numbers as ``covisit.neighbours(item, kind,
        N_COVISIT, now_ms)``; published lists become rows once (:class:`CovisitRows`)."""
        cat = self.catalogue
        if item in self.covisit.states:  # live learner states (the evaluator): not cached
            lst = self.covisit.neighbours(item, kind, N_COVISIT, now_ms)  # already decayed
            if not lst:
                return None
            rows, values = _known_rows(cat, lst)
            return rows, values, lst[0][1], 1.0
        published = self.covisit.published.get(item)
        if published is None:
            return None
        lists = self.covisit_rows_cache.for_catalogue(cat)
        got = lists.get((item, kind))
        if got is None or (got[0] is not published and got[0] != published):
            raw = (published.viewed if kind == VIEWED else published.bought)[:N_COVISIT]
            rows, values = _known_rows(cat, raw)
            got = (published, rows, values, raw[0][1] if raw else None)
            lists[(item, kind)] = got
        _, rows, values, best = got
        if best is None:
            return None
        return rows, values, best, published.scale(now_ms)

    def covisit_norm(self, item: str, kind: str, now_ms: int) -> tuple[I64, F64] | None:
        """:meth:`covisit_rows` as rows and ``score / best score``: the decay multiplies
        both by the same factor, so the ratio is fixed for a published list and is
        computed once per snapshot and list (a call then reads one dict entry per list,
        where it compared the snapshot's list with the cached one and decayed it).
        ``None`` without a list (or with a best score of 0)."""
        if item in self.covisit.states:  # live learner states (the evaluator): not cached
            return _normalised(self.covisit_rows(item, kind, now_ms))
        cat = self.catalogue
        key = (id(cat), cat.version, len(cat))
        if key != self._covisit_norm_key:
            self._covisit_norm, self._covisit_norm_key = {}, key
        cache = self._covisit_norm
        got = cache.get((item, kind), _MISSING)
        if got is _MISSING:
            got = cache[(item, kind)] = _normalised(self.covisit_rows(item, kind, now_ms))
        return got

    def embedding_neighbours(self, rows: Sequence[int]) -> list[I64]:
        """For each row, the :data:`N_EMB_NEIGHBOURS` rows nearest to it by embedding
        cosine (positive cosines only, the row itself excluded), best first. Computed once
        per item and snapshot (the missing ones of a call in one product), then cached
        until the snapshot or the catalogue changes."""
        emb = self.aligned_embeddings()
        if emb is None:
            return [np.zeros(0, np.int64) for _ in rows]
        if self._neighbours_key != self._aligned_key:
            self._neighbours, self._neighbours_key = {}, self._aligned_key
        cache = self._neighbours
        missing = [r for r in dict.fromkeys(rows) if r not in cache]
        if missing:
            # float32, one row per missing item (this product order is the fast one)
            sims = np.ascontiguousarray((emb @ emb[np.asarray(missing)].T).T)
            sims[np.arange(len(missing)), missing] = 0.0
            n = sims.shape[1]
            kth = max(0, n - N_EMB_NEIGHBOURS)
            for i, r in enumerate(missing):
                row = sims[i]
                # the N-th best value by a partition (faster than argpartition), then the
                # rows at or above it and positive, best first (lower row first on ties)
                cand = np.flatnonzero(row >= max(float(np.partition(row, kth)[kth]), 1e-12))
                got = cand[np.argsort(-row[cand], kind="stable")][:N_EMB_NEIGHBOURS]
                got = got.astype(np.int64)
                got.flags.writeable = False
                cache[r] = got
        return [cache[r] for r in rows]

    def aligned_embeddings(self) -> F32 | None:
        """Item vectors by catalogue row (zero rows for items the snapshot lacks), cached."""
        snap = self.embeddings
        if snap is None:
            return None
        key = (id(snap), snap.version, len(self.catalogue))
        if key != self._aligned_key or self._aligned is None:
            n = len(self.catalogue)
            m = np.zeros((n, snap.dim), np.float32)
            index = self.catalogue.index
            rows = []
            src = []
            for j, item in enumerate(snap.items):
                r = index.get(item)
                if r is not None:
                    rows.append(r)
                    src.append(j)
            if rows:
                m[np.asarray(rows)] = snap.vectors[np.asarray(src)]
            self._aligned, self._aligned_key = m, key
        return self._aligned


#: Marks a key :meth:`Models.covisit_norm` has not computed yet (``None`` is a value).
_MISSING: Final = (np.zeros(0, np.int64), np.zeros(0))


def _normalised(got: tuple[I64, F64, float, float] | None) -> tuple[I64, F64] | None:
    """Rows and ``score / best`` of a :meth:`Models.covisit_rows` answer (read-only)."""
    if got is None or got[2] <= 0:
        return None
    rows, values, best, _ = got
    return rows, _read_only(values / best)


def _known_rows(cat: Catalogue, lst: Sequence[tuple[str, float]]) -> tuple[I64, F64]:
    """Catalogue rows and scores of the listed items the catalogue knows, in list order.
    (Comprehensions, not a loop with appends: this runs for every list a snapshot
    changed, ~1,000 per snapshot of the 2,000-item bench.)"""
    get = cat.index.get
    found = [get(other, -1) for other, _ in lst]
    rows = np.asarray(found, np.int64)
    values = np.asarray([score for _, score in lst], np.float64)
    if -1 in found:
        keep = rows >= 0
        return rows[keep], values[keep]
    return rows, values


def _category_mask(categories: Sequence[str], entries: tuple[str, ...]) -> npt.NDArray[np.bool_]:
    out = np.zeros(len(categories), np.bool_)
    for i, c in enumerate(categories):
        out[i] = any(c == e or c.startswith(e + "/") for e in entries)
    return out


def allowed_rows(signals: UserSignals, cat: Catalogue, filters: Filters) -> npt.NDArray[np.bool_]:
    """The filter mask over catalogue rows (True = may be recommended)."""
    n = len(cat)
    mask = cat.in_stock.copy() if filters.in_stock_only else np.ones(n, np.bool_)
    if filters.allow_categories or filters.deny_categories:
        names = cat.category_names
        if filters.allow_categories:
            ok = _category_mask(names, filters.allow_categories)
            mask &= ok[cat.codes]
        if filters.deny_categories:
            bad = _category_mask(names, filters.deny_categories)
            mask &= ~bad[cat.codes]
    drop = set(signals.purchased) | set(signals.in_cart) | set(filters.exclude)
    if filters.exclude_seen:
        drop |= signals.seen
        drop.update(i.item for i in signals.recent)
    for item in drop:
        r = cat.index.get(item)
        if r is not None:
            mask[r] = False
    return mask


def _top(values: F64, mask: npt.NDArray[np.bool_], n: int) -> npt.NDArray[np.int64]:
    """Rows of the ``n`` largest finite positive ``values`` where ``mask``."""
    v = np.where(mask & (values > 0), values, -np.inf)
    m = int(np.count_nonzero(np.isfinite(v)))
    if m == 0:
        return np.zeros(0, np.int64)
    n = min(n, m)
    idx = np.argpartition(-v, n - 1)[:n]
    return idx.astype(np.int64)


def _scaled(x: F64) -> F64:
    top = float(x.max()) if len(x) else 0.0
    return x / top if top > 0 else np.zeros_like(x)


@dataclass(slots=True)
class _Recent:
    """The user's latest interactions (at most :data:`MAX_RECENT`) as arrays, oldest first.

    ``rows`` is -1 for items the catalogue does not know; ``weights`` the weight of
    each interaction's kind; ``wt_short`` / ``wt_long`` those weights decayed to
    ``now_ms`` with the short- and long-term half-lives (computed once per call).
    """

    interactions: tuple[Interaction, ...]
    rows: I64
    times: I64
    weights: F64
    known: npt.NDArray[np.bool_]
    any_known: bool
    wt_short: F64
    wt_long: F64


def _recent(signals: UserSignals, cat: Catalogue) -> _Recent:
    latest = signals.recent[-MAX_RECENT:]
    recent = [(cat.index.get(i.item, -1), i.time_ms, _KIND_WEIGHT.get(i.kind, 1.0)) for i in latest]
    rows = np.asarray([r for r, _, _ in recent], np.int64)
    times = np.asarray([t for _, t, _ in recent], np.int64)
    kind_w = np.asarray([x for _, _, x in recent], np.float64)
    known = rows >= 0
    now = signals.now_ms
    wt_s = decay_weights(times, now, SHORT_HALF_LIFE_MS) * kind_w
    wt_l = decay_weights(times, now, LONG_HALF_LIFE_MS) * kind_w
    return _Recent(latest, rows, times, kind_w, known, bool(known.any()), wt_s, wt_l)


def _category_affinity(signals: UserSignals, cat: Catalogue, rec: _Recent) -> F64:
    """Per category code, the user's affinity: half short-term, half long-term decayed
    share of the recent items in it (the profile's top categories when none is known)."""
    n_codes = len(cat.category_names)
    aff = np.zeros(n_codes)
    if rec.any_known:
        codes = cat.codes[rec.rows[rec.known]]
        for wt_all in (rec.wt_short, rec.wt_long):
            wt = wt_all[rec.known]  # the same floats as decaying the known ones alone
            a = np.bincount(codes, weights=wt, minlength=n_codes)
            if a.sum() > 0:
                aff += 0.5 * a / a.sum()
    else:
        for c in signals.top_categories:
            code = cat.category_code.get(c)
            if code is not None:
                aff[code] += 1.0
        if aff.sum() > 0:
            aff /= aff.sum()
    return aff


def _embedding_scores(
    models: Models, rec: _Recent, now: int, mask: npt.NDArray[np.bool_]
) -> tuple[F64, list[I64]]:
    """Per row, ``0.6 * max(0, cos(item, short)) + 0.4 * max(0, cos(item, long))``, and
    the top :data:`N_EMB` allowed rows of each user vector as candidates."""
    emb_full = np.zeros(len(mask))
    cand: list[I64] = []
    emb = models.aligned_embeddings()
    if emb is not None and rec.any_known:
        snap_rows = rec.rows.copy()
        short, long = user_vectors(emb, snap_rows, rec.times, rec.weights, now)
        for u, share_w in ((short, 0.6), (long, 0.4)):
            if u is not None:
                s = np.maximum(emb @ u, 0.0).astype(np.float64)
                emb_full += share_w * s
                cand.append(_top(s, mask, N_EMB))
    return emb_full, cand


def _content_scores(
    cat: Catalogue, consts: _Constants, rec: _Recent, now: int, mask: npt.NDArray[np.bool_]
) -> tuple[F64, list[I64]]:
    """Per row, ``max(0, cos)`` with the user's decayed mean content vector, and the top
    :data:`N_CONTENT` allowed cold rows as candidates.

    The profile is float64, so the product is taken in float64 (cached copy of the
    vectors: numpy would otherwise convert the whole float32 matrix on every call).
    """
    content_full = np.zeros(len(mask))
    if not rec.any_known:
        return content_full, []
    wt = decay_weights(rec.times[rec.known], now, LONG_HALF_LIFE_MS) * rec.weights[rec.known]
    profile = (wt[:, None] * cat.vectors[rec.rows[rec.known]]).sum(axis=0)
    norm = float(np.linalg.norm(profile))
    if norm <= 0:
        return content_full, []
    content_full = np.maximum(consts.vectors64() @ (profile / norm), 0.0)
    return content_full, [_top(content_full, mask & consts.cold, N_CONTENT)]


def _covisit_parts(
    models: Models, rec: _Recent, now: int
) -> dict[str, list[tuple[I64, F64, float]]]:
    """Per kind, the co-visitation lists of the latest :data:`COVISIT_SOURCES` distinct
    recent items as rows, ``score / best`` and the source's recency weight (the ``parts``
    of :func:`_covisit_scores`)."""
    parts: dict[str, list[tuple[I64, F64, float]]] = {VIEWED: [], BOUGHT: []}
    if not rec.any_known:
        return parts
    wt_s, wt_l = rec.wt_short, rec.wt_long  # decayed to signals.now_ms (== now)
    sources: dict[str, tuple[float, float]] = {}
    latest = rec.interactions
    for i in range(len(latest) - 1, -1, -1):
        item = latest[i].item
        if item not in sources:
            sources[item] = (float(wt_s[i]), float(wt_l[i]))
        if len(sources) >= COVISIT_SOURCES:
            break
    for item, (ws, wl) in sources.items():
        for kind, wgt in ((VIEWED, ws + 0.1 * wl), (BOUGHT, wl)):
            got = models.covisit_norm(item, kind, now)
            if got is not None:
                parts[kind].append((got[0], got[1], wgt))
    return parts


def _recommendations(
    cat: Catalogue,
    rows_c: I64,
    comps: F64,
    wts: dict[str, float],
    *,
    trend_reason: str,
    k: int,
    mmr_lambda: float,
    vectors: F32 | None = None,
) -> list[Recommendation]:
    """The hybrid score of the candidates ``rows_c``, the MMR pick of ``k`` of them and
    each one's reason (its largest weighted component). ``comps``: one row per component
    (in :data:`_COMPONENTS` order) over the candidates, each scaled here to [0, 1] by its
    maximum (all rows in a few calls: the same floats as one row at a time).
    ``vectors``: the candidates' content vectors if already gathered."""
    top = comps.max(axis=1, keepdims=True)
    scaled = np.divide(comps, top, out=np.zeros_like(comps), where=top > 0)
    weighted = np.asarray([wts[name] for name in _COMPONENTS])[:, None] * scaled
    score = weighted.sum(axis=0)
    pool = _mmr_pool(score, k)
    pool_vectors = cat.vectors[rows_c[pool]] if vectors is None else vectors[pool]
    picked = [int(pool[j]) for j in _mmr(score[pool], pool_vectors, k, mmr_lambda)]
    reason_idx = dict(zip(picked, weighted[:, picked].argmax(axis=0).tolist(), strict=True))
    out = []
    for j in picked:
        reason = REASONS[_COMPONENTS[int(reason_idx[j])]]
        if reason == "trending":
            reason = trend_reason
        r = int(rows_c[j])
        out.append(Recommendation(cat.ids[r], round(float(score[j]), 6), reason, cat.categories[r]))
    return out


def rank_full(
    signals: UserSignals,
    models: Models,
    k: int = 10,
    filters: Filters | None = None,
    weights: Weights | None = None,
) -> list[Recommendation]:
    """The top ``k`` items for the user, scoring the whole catalogue: the reference that
    :func:`rank` approximates over a bounded candidate set (kept for comparisons)."""
    filters = filters or Filters()
    w = weights or Weights()
    cat = models.catalogue
    cat.ensure_fresh()
    n = len(cat)
    if n == 0 or k <= 0:
        return []
    mask = allowed_rows(signals, cat, filters)
    now = signals.now_ms
    rec = _recent(signals, cat)

    # Trending: global, or the mean over the user's segments that have scores.
    consts = models.constants()
    seg = tuple(s for s in signals.segments if s in models.trending.segments)
    trend = models.trend_shares(seg)
    share = trend.share
    p_cat = _category_affinity(signals, cat, rec)[cat.codes] * trend.in_cat

    cand: list[I64] = [_top(share, mask, N_TREND), _top(p_cat, mask, N_CAT)]
    emb_full, emb_cand = _embedding_scores(models, rec, now, mask)
    content_full, content_cand = _content_scores(cat, consts, rec, now, mask)
    cand += emb_cand + content_cand

    # Co-visitation from the latest recent items, weighted by recency: every source's
    # contributions in one array, summed per row in the order of the sources.
    parts = _covisit_parts(models, rec, now)
    vt, vt_rows = _covisit_scores(parts[VIEWED], n)
    bt, bt_rows = _covisit_scores(parts[BOUGHT], n)
    flags = np.zeros(n, np.bool_)
    flags[vt_rows] = True
    flags[bt_rows] = True
    flags &= mask
    for c_idx in cand:
        flags[c_idx] = True
    rows_c = np.flatnonzero(flags & mask)
    if len(rows_c) == 0:
        return []
    comps = np.stack(
        [
            emb_full[rows_c],
            vt[rows_c],
            bt[rows_c],
            p_cat[rows_c],
            share[rows_c],
            content_full[rows_c],
        ]
    )
    if rec.any_known:
        wts = {name: float(getattr(w, name)) for name in _COMPONENTS}
    else:
        wts = dict.fromkeys(_COMPONENTS, 0.0) | dict(FALLBACK_WEIGHTS)
    return _recommendations(
        cat, rows_c, comps, wts, trend_reason=trend.reason, k=k, mmr_lambda=w.mmr_lambda
    )


def _mmr_pool(score: F64, k: int) -> I64:
    """The :data:`MMR_POOL_PER_PICK` ``* k`` best-scored candidates, in candidate order
    (all of them if fewer): what :func:`_mmr` picks from.

    With ``lam`` < 1 a candidate whose ``lam * rel`` is below ``lam * rel_k - (1 - lam)``
    (``rel_k`` the k-th best relevance) always loses to one of the ``k`` best, so MMR over
    the candidates above that bound picks exactly as over all; when more than the cap are
    above it, the best-scored of them are kept (the picks may then differ).
    """
    m = len(score)
    cap = MMR_POOL_PER_PICK * k
    if m <= cap:
        return np.arange(m, dtype=np.int64)
    return np.sort(np.argpartition(-score, cap - 1)[:cap]).astype(np.int64)


def _first_allowed(order: I64, mask: npt.NDArray[np.bool_], m: int) -> I64:
    """The first ``m`` rows of ``order`` that ``mask`` allows."""
    return order[mask[order]][:m]


def _drop_rows(
    mask: npt.NDArray[np.bool_], signals: UserSignals, cat: Catalogue, filters: Filters
) -> None:
    """Clear the rows of purchased, in-cart, excluded (and seen) items in ``mask``."""
    index = cat.index
    groups: list[Sequence[str] | frozenset[str]] = [
        signals.purchased,
        signals.in_cart,
        filters.exclude,
    ]
    if filters.exclude_seen:
        groups.append(signals.seen)
        groups.append([i.item for i in signals.recent])
    for items in groups:
        for item in items:
            r = index.get(item)
            if r is not None:
                mask[r] = False


def _category_candidates(
    trend: _TrendShares, cat: Catalogue, aff: F64, mask: npt.NDArray[np.bool_]
) -> I64:
    """The top :data:`N_CAT` allowed rows by ``affinity(category) x share in category``,
    from the categories the user has an affinity for (each one's best rows, cached)."""
    codes = np.flatnonzero(aff > 0)
    if len(codes) == 0:
        return np.zeros(0, np.int64)
    rows = np.concatenate(
        [_first_allowed(trend.in_category(cat.codes, int(c)), mask, N_CAT) for c in codes]
    )
    if len(rows) <= N_CAT:
        return rows
    values = aff[cat.codes[rows]] * trend.in_cat[rows]
    return rows[_top(values, np.ones(len(rows), np.bool_), N_CAT)]


def _seed_rows(rec: _Recent) -> list[int]:
    """Rows of the latest :data:`COVISIT_SOURCES` distinct recent items the catalogue
    knows, latest first: the items whose neighbours are candidates."""
    out: dict[int, None] = {}
    rows = rec.rows.tolist()
    for i in range(len(rows) - 1, -1, -1):
        r = rows[i]
        if r >= 0 and r not in out:
            out[r] = None
            if len(out) >= COVISIT_SOURCES:
                break
    return list(out)


def _content_profile(cat: Catalogue, rec: _Recent) -> F64 | None:
    """The user's decayed mean content vector, unit length (``None`` without one)."""
    if not rec.any_known:
        return None
    wt = rec.wt_long[rec.known]
    profile = (wt[:, None] * cat.vectors[rec.rows[rec.known]]).sum(axis=0)
    norm = float(np.linalg.norm(profile))
    if norm <= 0:
        return None
    unit: F64 = profile / norm
    return unit


def _embedding_candidates(
    models: Models, emb: F32 | None, rec: _Recent, *, cand: list[I64]
) -> list[tuple[F32, float]]:
    """The user vectors with their shares (0.6 short-term, 0.4 long-term); appends to
    ``cand`` the embedding neighbours of the latest recent items (kept per item and
    snapshot). The candidates are scored against the user vectors with all the others,
    so they are not ranked by them here (that took two products and two selections)."""
    if emb is None or not rec.any_known:
        return []
    # embeddings.user_vectors with the call's decay weights, both vectors in one product
    wt = np.stack([rec.wt_short[rec.known], rec.wt_long[rec.known]])
    vecs = (wt @ emb[rec.rows[rec.known]]).astype(np.float32)
    user_vecs: list[tuple[F32, float]] = []
    for u, share_w in zip(vecs, (0.6, 0.4), strict=True):
        norm = float(np.linalg.norm(u))
        if norm > 1e-6:
            user_vecs.append((u / norm, share_w))
    if user_vecs:
        cand.extend(models.embedding_neighbours(_seed_rows(rec)))
    return user_vecs


def _cold_candidates(
    consts: _Constants, profile: F32, aff: F64, mask: npt.NDArray[np.bool_]
) -> list[I64]:
    """The top :data:`N_CONTENT` allowed cold rows by content similarity to ``profile``,
    among the cold items of the user's categories (``aff > 0``): the content vector is
    mostly category (top level, path, brand and price band are all category-scoped), so
    cold items elsewhere share little more than tags with the profile."""
    parts = [consts.cold_in(int(c)) for c in np.flatnonzero(aff > 0)]
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return []
    cold_rows = np.concatenate([p[0] for p in parts])
    sims = np.maximum(np.concatenate([p[1] @ profile for p in parts]), 0.0).astype(np.float64)
    return [cold_rows[_top(sims, mask[cold_rows], N_CONTENT)]]


def rank(
    signals: UserSignals,
    models: Models,
    k: int = 10,
    filters: Filters | None = None,
    weights: Weights | None = None,
) -> list[Recommendation]:
    """The top ``k`` items for the user, with a reason each (see the module docstring).

    Scores a bounded candidate set, never the whole catalogue: trending and
    trending-in-category from orders kept per snapshot, the embedding neighbours of
    the latest recent items (kept per item and snapshot), the co-visitation lists (as
    rows and ratios to their best score, kept per list and snapshot), and the cold items
    of the user's categories by content similarity (grouped per snapshot). Per call the
    cost grows with the candidates (a few hundred), not with the catalogue.
    """
    filters = filters or Filters()
    w = weights or Weights()
    cat = models.catalogue
    cat.ensure_fresh()
    n = len(cat)
    if n == 0 or k <= 0:
        return []
    now = signals.now_ms
    consts = models.constants()
    mask = consts.base_mask(filters).copy()
    _drop_rows(mask, signals, cat, filters)
    rec = _recent(signals, cat)

    seg = tuple(s for s in signals.segments if s in models.trending.segments)
    trend = models.trend_shares(seg)
    aff = _category_affinity(signals, cat, rec)
    cand: list[I64] = [
        _first_allowed(trend.order(), mask, N_TREND),
        _category_candidates(trend, cat, aff, mask),
    ]
    emb = models.aligned_embeddings()
    user_vecs = _embedding_candidates(models, emb, rec, cand=cand)
    # Content: float32 products (the vectors are float32; the profile is rounded once).
    profile64 = _content_profile(cat, rec)
    profile = profile64.astype(np.float32) if profile64 is not None else None
    if profile is not None:
        cand.extend(_cold_candidates(consts, profile, aff, mask))

    parts = _covisit_parts(models, rec, now)
    vt, vt_rows = _covisit_scores(parts[VIEWED], n)
    bt, bt_rows = _covisit_scores(parts[BOUGHT], n)
    flags = np.zeros(n, np.bool_)
    flags[vt_rows] = True
    flags[bt_rows] = True
    for c_idx in cand:
        flags[c_idx] = True
    rows_c = np.flatnonzero(flags & mask)
    if len(rows_c) == 0:
        return []

    emb_c = np.zeros(len(rows_c))
    if user_vecs and emb is not None:
        e = emb[rows_c]
        for u, share_w in user_vecs:
            emb_c += share_w * np.maximum(e @ u, 0.0).astype(np.float64)
    vectors_c = cat.vectors[rows_c]  # the candidates' content vectors, for content and MMR
    content_c = (
        np.maximum(vectors_c @ profile, 0.0).astype(np.float64)
        if profile is not None
        else np.zeros(len(rows_c))
    )
    comps = np.stack(
        [
            emb_c,
            vt[rows_c],
            bt[rows_c],
            aff[cat.codes[rows_c]] * trend.in_cat[rows_c],
            trend.share[rows_c],
            content_c,
        ]
    )
    if rec.any_known:
        wts = {name: float(getattr(w, name)) for name in _COMPONENTS}
    else:
        wts = dict.fromkeys(_COMPONENTS, 0.0) | dict(FALLBACK_WEIGHTS)
    return _recommendations(
        cat,
        rows_c,
        comps,
        wts,
        trend_reason=trend.reason,
        k=k,
        mmr_lambda=w.mmr_lambda,
        vectors=vectors_c,
    )


def _covisit_scores(parts: Sequence[tuple[I64, F64, float]], n: int) -> tuple[F64, I64]:
    """Per row, the sum over the sources (in order) of ``weight * score / best``.

    ``parts``: per source list, its rows, ``score / best`` and the source's weight.
    Returns the dense sums and every row listed (``np.bincount`` adds in input order,
    starting from 0: the same floats as a loop over the sources).
    """
    if not parts:
        return np.zeros(n), np.zeros(0, np.int64)
    sizes = [len(p[0]) for p in parts]
    rows = np.concatenate([p[0] for p in parts])
    norm = np.concatenate([p[1] for p in parts])
    weight = np.repeat(np.asarray([p[2] for p in parts]), sizes)
    sums = np.bincount(rows, weights=weight * norm, minlength=n)  # float64 with weights
    return sums.astype(np.float64, copy=False), rows


#: MMR picks among at most this many candidates per pick, the best-scored
#: (:func:`_mmr_pool`): with ``mmr_lambda`` 0.9 the pool that gives exactly the picks
#: over all candidates held 100+ of them for most users, and MMR over them was the
#: largest single cost of :func:`rank`; a candidate past the 4k-th best score seldom
#: beats them all on diversity (docs/models.md).
MMR_POOL_PER_PICK = 4


def _mmr(score: F64, vectors: F32, k: int, lam: float) -> list[int]:
    """Greedy maximal marginal relevance over candidates (indices into ``score``): each
    pick maximises ``lam * rel - (1 - lam) * max(0, cos to the picked)`` (first maximum
    on ties).

    ``lam * rel - (1 - lam) * max_j s_j`` is ``min_j (lam * rel - (1 - lam) * s_j)`` (the
    same floats: the map is monotone), so the values are one matrix taken once and a
    pick is an argmax and a row minimum: a few numpy calls per pick, none per candidate.

    >>> v = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    >>> _mmr(np.array([1.0, 0.9, 0.5]), v, 2, 1.0), _mmr(np.array([1.0, 0.9, 0.5]), v, 2, 0.5)
    ([0, 1], [0, 2])
    """
    m = len(score)
    k = min(k, m)
    rel = lam * _scaled(score.astype(np.float64))
    if lam >= 1.0:
        return [int(i) for i in np.argsort(-rel, kind="stable")[:k]]
    if k <= 1:
        return [int(np.argmax(rel))][:k]
    value = rel.copy()
    sims = np.maximum(vectors @ vectors.T, 0.0).astype(np.float64)
    after = rel[None, :] - (1.0 - lam) * sims  # row j: the values if j were the closest pick
    picked: list[int] = []
    for _ in range(k):
        j = int(np.argmax(value))
        picked.append(j)
        if len(picked) == k:
            break  # the similarities to the last pick would decide nothing
        np.minimum(value, after[j], out=value)
        value[j] = -np.inf
    return picked


def source_of(signals: UserSignals, models: Models) -> str:
    """``personalized`` if any recent item is known to the catalogue, else ``trending``."""
    known = any(models.catalogue.index.get(i.item) is not None for i in signals.recent)
    return "personalized" if known else "trending"


def recs_value(
    recs: Sequence[Recommendation], model_version: str, generated_at_ms: int, source: str
) -> bytes:
    """The value of ``attune:{u:<user>}:recs``: format 3 of
    :mod:`attune.operators.recs_encoding` (text, items positional, reasons as codes,
    categories once; docs/redis.md), what Redis stores.

    >>> recs_value([Recommendation("i1", 0.5, "trending", "a/x")], "c1-e0", 7, "trending")
    b'3|c1-e0|7|t|a/x|i1,500,tr,0'
    """
    if source not in ("personalized", "trending"):
        raise ValueError(f"source must be 'personalized' or 'trending', got {source!r}")
    return recs_encoding.encode_compact(
        ((r.item, r.score, r.reason, r.category) for r in recs),
        model_version,
        generated_at_ms,
        source,
    )
