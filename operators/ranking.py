"""Ranking: candidates, a hybrid score, business filters, diversity and a reason per item.

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

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Final, cast

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
    "rank_many",
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


#: What :meth:`_Constants.base_mask` depends on: stock only, allow list, deny list.
_FilterKey = tuple[bool, tuple[str, ...], tuple[str, ...]]


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
    # order() and in_category() restricted to the rows a filter's stock and category rules
    # allow, per filter key (and code): a call then masks only their heads
    _allowed: dict[tuple[object, ...], I64] = field(default_factory=dict)

    def allowed_order(self, key: _FilterKey, base: npt.NDArray[np.bool_]) -> I64:
        """:meth:`order` without the rows ``base`` (the filter ``key``'s mask) excludes."""
        got = self._allowed_cache().get(key)
        if got is None:
            order = self.order()
            got = self._allowed[key] = order[base[order]]
        return got

    def allowed_in_category(
        self, codes: npt.NDArray[np.int32], code: int, key: _FilterKey, base: npt.NDArray[np.bool_]
    ) -> I64:
        """:meth:`in_category` without the rows ``base`` (the filter ``key``'s mask) excludes."""
        got = self._allowed_cache().get((key, code))
        if got is None:
            rows = self.in_category(codes, code)
            got = self._allowed[(key, code)] = rows[base[rows]]
        return got

    def _allowed_cache(self) -> dict[tuple[object, ...], I64]:
        try:
            return self._allowed
        except AttributeError:  # unpickled from a version without it
            self._allowed = {}
            return self._allowed

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
    # the content vectors' non-zeros per row, padded (column 0, value 0), lazily
    _sparse: tuple[npt.NDArray[np.int32], F32] | None = None

    def sparse(self) -> tuple[npt.NDArray[np.int32], F32]:
        """The content vectors as at most a few non-zeros per row (hashed features: ~7 of
        :data:`~attune.operators.content.CONTENT_DIM`): columns and values, each row padded
        with column 0 and value 0 to the widest row. A candidate's dot product with a
        profile is then a gather of a few floats, not of a 1 KiB row (once per snapshot)."""
        if self._sparse is None:
            vectors = self.catalogue.vectors[: self.n]
            at, col = np.nonzero(vectors)
            counts = np.bincount(at, minlength=len(vectors))
            width = max(1, int(counts.max()) if len(counts) else 1)
            starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
            pos = np.arange(len(at)) - starts[at]
            idx = np.zeros((len(vectors), width), np.int32)
            val = np.zeros((len(vectors), width), np.float32)
            idx[at, pos] = col
            val[at, pos] = vectors[at, col]
            self._sparse = (idx, val)
        return self._sparse

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
        """Stock and category filters over the rows and the padding row ``n`` of the
        :class:`SeedBlocks` (always False), read-only, cached per filter."""
        key: _FilterKey = (filters.in_stock_only, filters.allow_categories, filters.deny_categories)
        got = self.base_masks.get(key)
        if got is None:
            only = Filters(
                in_stock_only=key[0], exclude_seen=False, allow_categories=key[1],
                deny_categories=key[2],
            )  # fmt: skip
            # one more row, always False: the padding row n of the neighbour blocks
            got = np.append(allowed_rows(UserSignals("", 0), self.catalogue, only), False)
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


#: Columns of a row's co-visitation block: its viewed-together neighbours, then its
#: bought-together ones (at most :data:`N_COVISIT` each), padded.
CV_WIDTH: Final = 2 * N_COVISIT


@dataclass(slots=True)
class SeedBlocks:
    """Each catalogue row's candidate neighbours, as fixed-width rows of arrays, for one
    snapshot and catalogue state: what :func:`rank` gathers for its seeds (the user's
    latest recent items) with one index per array instead of a few numpy calls per seed.

    Row ``n`` (one past the catalogue) is the padding: a block's unused columns hold
    row ``n`` with ratio 0, so that a gather needs no lengths; :meth:`_Constants.base_mask`
    is False there, so it is never a candidate, and its bins add only zeros. A row is
    filled the first time it is a seed (``cv_filled`` / ``emb_filled``), the co-visitation
    part of all rows at once when the snapshot's arrays are at hand
    (:meth:`Models.prime_covisit`). Arrays start empty (``np.empty``): a snapshot costs
    no memory for rows no user touches.

    - ``cv_rows``: viewed-together rows in columns ``0..N_COVISIT-1``, bought-together
      rows after them, each in its list's order (the catalogue's items only);
    - ``cv_bins``: the same rows, the bought ones offset by ``n + 1``: the bins of one
      ``np.bincount`` for both kinds;
    - ``cv_ratio``: each neighbour's ``score / best`` (:meth:`Models.covisit_norm`);
    - ``emb_rows``: the :data:`N_EMB_NEIGHBOURS` rows nearest by embedding cosine
      (:meth:`Models.embedding_neighbours`).
    """

    n: int
    cv_rows: I64
    cv_bins: I64
    cv_ratio: F64
    cv_filled: npt.NDArray[np.bool_]
    emb_rows: I64
    emb_filled: npt.NDArray[np.bool_]
    emb_key: tuple[int, int, int] = (-1, -1, -1)

    @classmethod
    def empty(cls, n: int) -> SeedBlocks:
        cv_rows = np.empty((n + 1, CV_WIDTH), np.int64)
        cv_bins = np.empty((n + 1, CV_WIDTH), np.int64)
        cv_ratio = np.empty((n + 1, CV_WIDTH))
        cv_rows[n] = cv_bins[n] = n
        cv_ratio[n] = 0.0
        filled = np.zeros(n + 1, np.bool_)
        filled[n] = True
        emb_rows = np.empty((n + 1, N_EMB_NEIGHBOURS), np.int64)
        emb_rows[n] = n
        return cls(n, cv_rows, cv_bins, cv_ratio, filled, emb_rows, filled.copy())

    def covisit_row(self, pair: tuple[I64, F64, I64, I64, F64] | None) -> tuple[I64, I64, F64]:
        """A block row (rows, bins, ratios) from a :meth:`Models.covisit_pairs` entry."""
        n = self.n
        rows = np.full(CV_WIDTH, n, np.int64)
        bins = np.full(CV_WIDTH, n, np.int64)
        ratio = np.zeros(CV_WIDTH)
        if pair is not None:
            v_rows, v_norm, b_rows, _, b_norm = pair
            lv, lb = len(v_rows), len(b_rows)
            rows[:lv] = bins[:lv] = v_rows
            ratio[:lv] = v_norm
            rows[N_COVISIT : N_COVISIT + lb] = b_rows
            bins[N_COVISIT : N_COVISIT + lb] = b_rows + (n + 1)
            ratio[N_COVISIT : N_COVISIT + lb] = b_norm
        return rows, bins, ratio


def _read_only(a: F64) -> F64:
    a.flags.writeable = False
    return a


@dataclass(slots=True)
class Models:
    """Read-side copies of the shared models, aligned on catalogue rows. Pickles.

    ``embeddings`` may be ``None`` (not published yet): the embedding component
    is then 0. ``version`` goes into the Redis value (``model_version``).
    Values that depend only on the catalogue and the trending board (shares per
    category, float64 and sparse content vectors, co-visitation rows) are cached until
    either changes (``Catalogue.version``, ``TrendingBoard.version``).
    """

    catalogue: Catalogue
    covisit: CovisitIndex = field(default_factory=CovisitIndex)
    trending: TrendingBoard = field(default_factory=TrendingBoard)
    embeddings: EmbeddingSnapshot | None = None
    _aligned_key: tuple[int, int, int] = (-1, -1, -1)
    _aligned: F32 | None = None
    _constants: _Constants | None = field(default=None, compare=False, repr=False)
    covisit_rows_cache: CovisitRows = field(default_factory=CovisitRows, compare=False, repr=False)
    _covisit_norm: dict[tuple[str, str], tuple[I64, F64] | None] = field(
        default_factory=dict, compare=False, repr=False
    )
    _covisit_norm_key: tuple[int, int, int] = field(default=(-1, -1, -1), compare=False, repr=False)
    # item -> its covisit_pairs entry (None: no list), for the catalogue state _covisit_pairs_key
    _covisit_pairs: dict[str, tuple[I64, F64, I64, I64, F64] | None] = field(
        default_factory=dict, compare=False, repr=False
    )
    _covisit_pairs_key: tuple[int, int, int] = field(
        default=(-1, -1, -1), compare=False, repr=False
    )
    _blocks: SeedBlocks | None = field(default=None, compare=False, repr=False)
    #: The snapshot's co-visitation arrays (:attr:`ModelSnapshot.cv_arrays
    #: <attune.operators.models.ModelSnapshot>`) when ``covisit`` holds its lists: then
    #: the co-visitation blocks of all listed items are made at once (:func:`_prime_covisit`).
    covisit_arrays: tuple[Any, ...] | None = field(default=None, compare=False, repr=False)
    _blocks_key: tuple[int, int, int] = field(default=(-1, -1, -1), compare=False, repr=False)

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
            _sparse=c._sparse if c is not None and same_cat else None,
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

    def covisit_pairs(
        self, items: Sequence[str], now_ms: int
    ) -> list[tuple[I64, F64, I64, I64, F64] | None]:
        """Per item, both kinds of :meth:`covisit_norm` in one entry: the viewed-together
        rows and ratios, the bought-together rows, the same plus the catalogue size (the
        bins of a sum over both kinds at once) and ratios; empty arrays for a kind without
        a list, ``None`` with neither. Cached per snapshot and item like covisit_norm."""
        cat = self.catalogue
        key = (id(cat), cat.version, len(cat))
        if key != getattr(self, "_covisit_pairs_key", None):  # (None: unpickled from older)
            self._covisit_pairs, self._covisit_pairs_key = {}, key
        cache, states, n = self._covisit_pairs, self.covisit.states, len(cat)
        out = []
        for item in items:
            live = item in states  # live learner states (the evaluator): not cached
            if not live and item in cache:
                out.append(cache[item])
                continue
            got = _pair(
                self.covisit_norm(item, VIEWED, now_ms), self.covisit_norm(item, BOUGHT, now_ms), n
            )
            if not live:
                cache[item] = got
            out.append(got)
        return out

    def blocks(self) -> SeedBlocks:
        """The :class:`SeedBlocks` of this snapshot and catalogue (new ones when items were
        added: rows are append-only, so a refresh that adds none changes no neighbour
        row), the co-visitation part filled from the snapshot's arrays when given."""
        cat = self.catalogue
        key = (id(cat), len(cat), 0)
        b = getattr(self, "_blocks", None)  # (unset: unpickled from an older version)
        if b is None or key != self._blocks_key:
            b = self._blocks = SeedBlocks.empty(len(cat))
            self._blocks_key = key
            if self.covisit_arrays is not None and not self.covisit.states:
                _prime_covisit(b, cat, self.covisit_arrays)
        return b

    def covisit_block(
        self, sources: Sequence[tuple[str, int]], now_ms: int
    ) -> tuple[I64, I64, F64]:
        """The co-visitation block rows of ``sources`` (``(item, catalogue row or -1)``,
        one block row each, in order): :attr:`SeedBlocks.cv_rows`, ``cv_bins`` and
        ``cv_ratio``, filled on first use per snapshot from :meth:`covisit_norm`; built
        per call for items the catalogue lacks and for live learner states (the
        evaluator), which change between calls."""
        b = self.blocks()
        states = self.covisit.states
        rows = [r for _, r in sources]
        if not states and min(rows, default=0) >= 0:
            idx = np.asarray(rows, np.int64)
            missing = idx[~b.cv_filled[idx]].tolist()
            if missing:
                self._fill_covisit(b, missing, now_ms)
            return b.cv_rows[idx], b.cv_bins[idx], b.cv_ratio[idx]
        parts = []
        for item, r in sources:
            if r >= 0 and item not in states:
                if not b.cv_filled[r]:
                    self._fill_covisit(b, [r], now_ms)
                parts.append((b.cv_rows[r], b.cv_bins[r], b.cv_ratio[r]))
            else:
                parts.append(b.covisit_row(self._covisit_pair(item, now_ms)))
        return (
            np.stack([p[0] for p in parts]),
            np.stack([p[1] for p in parts]),
            np.stack([p[2] for p in parts]),
        )

    def _covisit_pair(self, item: str, now_ms: int) -> tuple[I64, F64, I64, I64, F64] | None:
        n = len(self.catalogue)
        return _pair(
            self.covisit_norm(item, VIEWED, now_ms), self.covisit_norm(item, BOUGHT, now_ms), n
        )

    def _fill_covisit(self, b: SeedBlocks, rows: Sequence[int], now_ms: int) -> None:
        ids = self.catalogue.ids
        for r in rows:
            b.cv_rows[r], b.cv_bins[r], b.cv_ratio[r] = b.covisit_row(
                self._covisit_pair(ids[r], now_ms)
            )
            b.cv_filled[r] = True

    def neighbour_block(self, rows: Sequence[int]) -> I64:
        """:attr:`SeedBlocks.emb_rows` of ``rows`` (one block row each, padded with the
        catalogue size), filled on first use per snapshot (all missing rows in one
        product: :meth:`embedding_neighbours`); all padding without embeddings."""
        b = self.blocks()
        emb = self.aligned_embeddings()
        idx = np.asarray(rows, np.int64)
        if emb is None:
            return np.full((len(idx), N_EMB_NEIGHBOURS), b.n, np.int64)
        if b.emb_key != self._aligned_key:  # new embeddings over the same catalogue
            b.emb_filled[: b.n] = False
            b.emb_key = self._aligned_key
        missing = list(dict.fromkeys(idx[~b.emb_filled[idx]].tolist()))
        if missing:
            _fill_neighbours(b, emb, missing)
        return b.emb_rows[idx]

    def embedding_neighbours(self, rows: Sequence[int]) -> list[I64]:
        """For each row, the :data:`N_EMB_NEIGHBOURS` rows nearest to it by embedding
        cosine (positive cosines only, the row itself excluded), best first (lower row
        first on ties). Computed once per item and snapshot (the missing ones of a call
        in one product), then kept in :attr:`SeedBlocks.emb_rows` until the snapshot or
        the catalogue changes."""
        block = self.neighbour_block(rows)
        n = len(self.catalogue)
        return [r[r < n] for r in block]

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


def _pair(
    viewed: tuple[I64, F64] | None, bought: tuple[I64, F64] | None, n: int
) -> tuple[I64, F64, I64, I64, F64] | None:
    """:meth:`Models.covisit_pairs` entry from the two :meth:`Models.covisit_norm` answers."""
    if viewed is None and bought is None:
        return None
    v_rows, v_norm = viewed if viewed is not None else (_EMPTY_ROWS, _EMPTY_F64)
    b_rows, b_norm = bought if bought is not None else (_EMPTY_ROWS, _EMPTY_F64)
    return v_rows, v_norm, b_rows, b_rows + n, b_norm


def _prime_covisit(b: SeedBlocks, cat: Catalogue, arrays: tuple[Any, ...]) -> None:
    """Fill the co-visitation blocks of every listed item the catalogue knows from a
    snapshot's arrays (``table, cv_item, cv_at, cv_end, cv_nb, cv_bits``: item codes,
    cumulative ends of each item's viewed then bought list, neighbour codes, score bits),
    in a few numpy calls over all the lists: the same rows and ratios as
    :meth:`Models.covisit_norm` makes list by list (the first :data:`N_COVISIT` entries,
    those the catalogue knows, ``score / the list's first score``; nothing for a list
    whose first score is not positive)."""
    table, cv_item, _, cv_end, cv_nb, cv_bits = arrays
    n_lists = len(cv_end)
    if n_lists == 0:
        return
    get = cat.index.get
    lut = np.fromiter((get(x, -1) for x in table), np.int64, len(table))
    scores = cv_bits.view(np.float64)
    ends = cv_end.astype(np.int64)
    starts = np.concatenate(([0], ends[:-1]))
    lengths = ends - starts
    owner = np.repeat(np.arange(n_lists), lengths)  # the list of each entry
    first = starts[owner]
    pos = np.arange(len(owner)) - first  # place in its list
    item_rows = lut[cv_item.astype(np.int64)]
    nb_rows = lut[cv_nb.astype(np.int64)]
    best = scores[first]
    sel = (pos < N_COVISIT) & (nb_rows >= 0) & (best > 0) & (item_rows[owner // 2] >= 0)
    csel = np.cumsum(sel)
    before = np.concatenate(([0], csel))[starts]  # selected entries before each list
    at = np.flatnonzero(sel)
    lst = owner[at]
    kind = lst % 2  # 0 viewed, 1 bought
    col = csel[at] - 1 - before[lst] + kind * N_COVISIT
    target = item_rows[lst // 2]
    listed = item_rows[item_rows >= 0]
    n = b.n
    b.cv_rows[listed] = n
    b.cv_bins[listed] = n
    b.cv_ratio[listed] = 0.0
    nb = nb_rows[at]
    b.cv_rows[target, col] = nb
    b.cv_bins[target, col] = nb + kind * (n + 1)
    b.cv_ratio[target, col] = scores[at] / best[at]
    b.cv_filled[listed] = True


def _fill_neighbours(b: SeedBlocks, emb: F32, missing: list[int]) -> None:
    """Fill :attr:`SeedBlocks.emb_rows` of the ``missing`` rows (distinct): the rows'
    cosines with every row in one float32 product (the vectors are unit or zero), the
    row itself left out; per row the N-th best value by a partition (all rows in one
    call), then the rows at or above it and positive, best first (lower row first on
    ties): one sort of all of them by (row, -value, column), each row's first N kept."""
    sims = np.ascontiguousarray((emb @ emb[np.asarray(missing)].T).T)
    sims[np.arange(len(missing)), missing] = 0.0
    n = sims.shape[1]
    kth = max(0, n - N_EMB_NEIGHBOURS)
    floor = np.float32(1e-12)  # what a row >= 1e-12 comparison compares with
    kth_best = np.partition(sims, kth, axis=1)[:, kth]
    # (flat indices, then divmod: np.nonzero of a 2-d mask cost ~10x more)
    flat = np.flatnonzero(sims >= np.maximum(kth_best, floor)[:, None])
    at, col = np.divmod(flat, n)
    order = np.lexsort((col, -sims.ravel()[flat], at))
    at, col = at[order], col[order]
    starts = np.searchsorted(at, np.arange(len(missing)))
    pos = np.arange(len(at)) - starts[at]  # each one's place in its row's list
    keep = pos < N_EMB_NEIGHBOURS
    target = np.asarray(missing, np.int64)
    b.emb_rows[target] = b.n
    b.emb_rows[target[at[keep]], pos[keep]] = col[keep]
    b.emb_filled[target] = True


_EMPTY_ROWS: Final = np.zeros(0, np.int64)
_EMPTY_F64: Final = np.zeros(0)


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


def _top(values: F64, mask: npt.NDArray[np.bool_] | None, n: int) -> npt.NDArray[np.int64]:
    """Rows of the ``n`` largest finite positive ``values`` where ``mask`` (everywhere
    without one)."""
    ok = values > 0
    if mask is not None:
        ok &= mask
    v = np.where(ok, values, -np.inf)
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
    # rows, wt_short and wt_long of the known interactions only
    known_rows: I64
    known_short: F64
    known_long: F64


def _recent(signals: UserSignals, cat: Catalogue) -> _Recent:
    latest = signals.recent[-MAX_RECENT:]
    get = cat.index.get
    rows = np.asarray([get(i.item, -1) for i in latest], np.int64)
    times = np.asarray([i.time_ms for i in latest], np.int64)
    kind_w = np.asarray([_KIND_WEIGHT.get(i.kind, 1.0) for i in latest], np.float64)
    known = rows >= 0
    # embeddings.decay_weights for both half-lives from one age: the same floats
    neg_age = -np.maximum(signals.now_ms - times, 0).astype(np.float64)
    wt_s = np.exp2(neg_age / SHORT_HALF_LIFE_MS) * kind_w
    wt_l = np.exp2(neg_age / LONG_HALF_LIFE_MS) * kind_w
    n_known = int(np.count_nonzero(known))
    if n_known == len(rows):
        k_rows, k_s, k_l = rows, wt_s, wt_l
    else:
        k_rows, k_s, k_l = rows[known], wt_s[known], wt_l[known]
    return _Recent(latest, rows, times, kind_w, known, n_known > 0, wt_s, wt_l, k_rows, k_s, k_l)


def _category_affinity(signals: UserSignals, cat: Catalogue, rec: _Recent) -> F64:
    """Per category code, the user's affinity: half short-term, half long-term decayed
    share of the recent items in it (the profile's top categories when none is known)."""
    n_codes = len(cat.category_names)
    aff = np.zeros(n_codes)
    if rec.any_known:  # both half-lives in one bincount (long-term bins offset by n_codes)
        codes = cat.codes[rec.known_rows]
        short, long = rec.known_short, rec.known_long
        totals = [float(short.sum()), float(long.sum())]
        scale = np.asarray([0.5 / t if t > 0 else 0.0 for t in totals])
        both = np.bincount(
            np.concatenate((codes, codes + n_codes)),
            weights=np.concatenate((short * scale[0], long * scale[1])),
            minlength=2 * n_codes,
        ).astype(np.float64, copy=False)
        aff = both[:n_codes] + both[n_codes:]
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
    c = _scored(cat, rows_c, comps, wts, trend_reason=trend_reason, k=k, vectors=vectors)
    return c.listed(cat, c.picked(_mmr(c.pool_score, c.pool_vectors, k, mmr_lambda)))


@dataclass(slots=True)
class _Scored:
    """One user's scored candidates, before the MMR pick: the candidates ``rows_c``, their
    components and hybrid ``score``, the weight / maximum per component (``factor``), and
    the MMR pool (``pool``: indices into the candidates, ``None``: all of them) with its
    scores and content vectors."""

    rows_c: I64
    comps: F64
    factor: F64
    score: F64
    pool: I64 | None
    pool_score: F64
    pool_vectors: F32
    trend_reason: str

    def picked(self, in_pool: list[int]) -> list[int]:
        """The MMR picks (indices into the pool) as indices into the candidates."""
        if self.pool is None:
            return in_pool
        got: list[int] = self.pool[in_pool].tolist()
        return got

    def listed(self, cat: Catalogue, picked: list[int]) -> list[Recommendation]:
        """The picked candidates as recommendations, each with its reason."""
        comps, factor, score = self.comps, self.factor, self.score
        reasons = (factor[:, None] * comps[:, picked]).argmax(axis=0).tolist()
        ids, categories = cat.ids, cat.categories
        out = []
        rows = self.rows_c[picked].tolist()
        for r, value, c in zip(rows, score[picked].tolist(), reasons, strict=True):
            reason = REASONS[_COMPONENTS[c]]
            if reason == "trending":
                reason = self.trend_reason
            out.append(Recommendation(ids[r], round(value, 6), reason, categories[r]))
        return out


def _scored(
    cat: Catalogue,
    rows_c: I64,
    comps: F64,
    wts: dict[str, float],
    *,
    trend_reason: str,
    k: int,
    vectors: F32 | None = None,
) -> _Scored:
    """The hybrid score of the candidates and the MMR pool (see :func:`_recommendations`)."""
    # weight / maximum per component (0 for a component without a positive value): the
    # score is one product, and the weighted components are only taken for the picks
    top = comps.max(axis=1)
    w = np.asarray([wts[name] for name in _COMPONENTS])
    factor = np.divide(w, top, out=np.zeros_like(w), where=top > 0)
    score = factor @ comps
    if len(score) <= MMR_POOL_PER_PICK * k:  # the pool is every candidate
        if vectors is None:
            vectors = cat.vectors[rows_c]
        return _Scored(rows_c, comps, factor, score, None, score, vectors, trend_reason)
    pool = _mmr_pool(score, k)
    pool_vectors = vectors[pool] if vectors is not None else cat.vectors[rows_c[pool]]
    return _Scored(rows_c, comps, factor, score, pool, score[pool], pool_vectors, trend_reason)


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


def _head(order: I64, mask: npt.NDArray[np.bool_], m: int, dropped: int) -> I64:
    """The first ``m`` rows of ``order`` that ``mask`` allows, when ``order`` already
    excludes all the rows ``mask`` excludes but at most ``dropped``: they lie in the first
    ``m + dropped`` rows of ``order``, and only those are masked."""
    head = order[: m + dropped]
    return head[mask[head]][:m] if dropped else head[:m]


def _dropped_rows(signals: UserSignals, cat: Catalogue, filters: Filters) -> list[int]:
    """Rows of the purchased, in-cart, excluded (and seen) items (with repeats)."""
    get = cat.index.get
    items: list[str] = [*signals.purchased, *signals.in_cart, *filters.exclude]
    if filters.exclude_seen:
        items += signals.seen
        items += [i.item for i in signals.recent]
    return [r for r in map(get, items) if r is not None]


def _category_candidates(
    trend: _TrendShares,
    cat: Catalogue,
    aff: F64,
    codes: list[int],
    heads: tuple[_FilterKey, npt.NDArray[np.bool_], npt.NDArray[np.bool_], int],
) -> I64 | None:
    """The top :data:`N_CAT` allowed rows by ``affinity(category) x share in category``,
    from the categories ``codes`` the user has an affinity for (each one's best rows,
    cached per filter). ``heads``: the filter key, its mask, the call's mask and how many
    rows the call's mask drops at most beyond it."""
    if not codes:
        return None
    key, base, mask, dropped = heads
    parts = [
        _head(trend.allowed_in_category(cat.codes, c, key, base), mask, N_CAT, dropped)
        for c in codes
    ]
    rows = np.concatenate(parts) if len(parts) > 1 else parts[0]
    if len(rows) <= N_CAT:
        return rows
    values = aff[cat.codes[rows]] * trend.in_cat[rows]
    return rows[_top(values, None, N_CAT)]


def _seed_rows(rec: _Recent, sources: list[tuple[str, int, int]]) -> list[int]:
    """Rows of the latest :data:`COVISIT_SOURCES` distinct recent items the catalogue
    knows, latest first: the items whose neighbours are candidates (the rows of the
    co-visitation ``sources`` when the catalogue knows them all)."""
    known = [r for _, r, _ in sources if r >= 0]
    if len(known) == len(sources):
        return known
    out: dict[int, None] = {}
    for r in reversed(rec.known_rows.tolist()):
        if r not in out:
            out[r] = None
            if len(out) >= COVISIT_SOURCES:
                break
    return list(out)


def _content_profile(cat: Catalogue, consts: _Constants, rec: _Recent) -> F32 | None:
    """The user's decayed mean content vector, unit length, rounded to float32 once (the
    vectors are float32; ``None`` without one), summed from the sparse rows."""
    if not rec.any_known:
        return None
    idx, val = consts.sparse()
    rows = rec.known_rows
    weights = (rec.known_long[:, None] * val[rows]).ravel()
    profile = np.bincount(idx[rows].ravel(), weights=weights, minlength=cat.vectors.shape[1])
    norm = math.sqrt(float(profile @ profile))  # np.linalg.norm of a vector, in one call
    if norm <= 0:
        return None
    unit: F32 = (profile / norm).astype(np.float32)
    return unit


def _user_vectors(emb: F32 | None, rec: _Recent) -> tuple[F32, F64] | None:
    """The user vectors (unit length, one column each) and their shares (0.6
    short-term, 0.4 long-term): embeddings.user_vectors with the call's decay weights,
    both vectors in one product; a vector of norm <= 1e-6 is left out (``None``: none)."""
    if emb is None or not rec.any_known:
        return None
    wt = np.stack([rec.known_short, rec.known_long])
    vecs = (wt @ emb[rec.known_rows]).astype(np.float32)
    norms = np.sqrt((vecs * vecs).sum(axis=1)).tolist()
    keep = [i for i in (0, 1) if norms[i] > 1e-6]
    if not keep:
        return None
    if len(keep) == 2:
        unit = vecs / np.asarray(norms, np.float32)[:, None]
        return unit.T, _SHARES
    i = keep[0]
    return (vecs[i] / np.float32(norms[i]))[:, None], _SHARES[i : i + 1]


_SHARES: Final = np.asarray([0.6, 0.4])


def _cold_candidates(
    consts: _Constants, profile: F32, codes: list[int], mask: npt.NDArray[np.bool_]
) -> I64 | None:
    """The top :data:`N_CONTENT` allowed cold rows by (positive) content similarity to
    ``profile``, among the cold items of the user's categories ``codes``: the content
    vector is mostly category (top level, path, brand and price band are all
    category-scoped), so cold items elsewhere share little more than tags with the
    profile."""
    parts = [consts.cold_in(c) for c in codes]
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return None
    if len(parts) == 1:
        cold_rows, sims = parts[0][0], parts[0][1] @ profile
    else:
        cold_rows = np.concatenate([p[0] for p in parts])
        sims = np.concatenate([p[1] @ profile for p in parts])
    ok = mask[cold_rows] & (sims > 0)
    cold_rows, sims = cold_rows[ok], sims[ok]
    if len(cold_rows) <= N_CONTENT:
        return cold_rows
    return cold_rows[np.argpartition(-sims, N_CONTENT - 1)[:N_CONTENT]]


def _sources(rec: _Recent) -> list[tuple[str, int, int]]:
    """The latest :data:`COVISIT_SOURCES` distinct recent items, latest first, whose
    co-visitation lists are summed: ``(item, catalogue row or -1, index of its latest
    interaction)``. The co-visitation sum of a row is, over these sources in order,
    ``recency weight x score / best`` (the weight ``wt_short + 0.1 wt_long`` viewed,
    ``wt_long`` bought); ``np.bincount`` adds in input order from 0: the same floats as
    a loop over the sources, each kind in its own bins."""
    rows = rec.rows.tolist()
    latest = rec.interactions
    out: dict[str, tuple[str, int, int]] = {}
    for i in range(len(latest) - 1, -1, -1):
        item = latest[i].item
        if item not in out:
            out[item] = (item, rows[i], i)
            if len(out) >= COVISIT_SOURCES:
                break
    return list(out.values())


def _covisit_sums(
    models: Models, rec: _Recent, sources: list[tuple[str, int, int]], now: int
) -> tuple[F64, I64]:
    """Viewed-together sums (bins ``0..n``) and bought-together sums (bins ``n+1..2n+1``;
    ``n``: the padding row) per row over the sources' co-visitation blocks, in one
    ``np.bincount`` (see :func:`_sources`), and every row listed (padding included)."""
    rows, bins, ratio = models.covisit_block([(i, r) for i, r, _ in sources], now)
    wt_s, wt_l = rec.wt_short.tolist(), rec.wt_long.tolist()
    wt = [(wt_s[i] + 0.1 * wt_l[i], wt_l[i]) for _, _, i in sources]
    weight = np.repeat(np.asarray(wt), N_COVISIT, axis=1)  # one column per neighbour
    n_bins = 2 * (models.blocks().n + 1)
    sums = np.bincount(bins.ravel(), weights=(weight * ratio).ravel(), minlength=n_bins)
    return sums.astype(np.float64, copy=False), rows.ravel()


def _components(
    rows_c: I64,
    cat: Catalogue,
    embedding: tuple[F32 | None, tuple[F32, F64] | None],
    covisit: tuple[F64 | None, int],
    trending: tuple[F64, _TrendShares],
    *,
    profile: F32 | None,
    sparse: tuple[npt.NDArray[np.int32], F32],
) -> F64:
    """The components of the candidates ``rows_c`` (one row each, :data:`_COMPONENTS`
    order); content from the sparse content vectors ``sparse``."""
    emb, user_vecs = embedding
    sums, n = covisit
    aff, trend = trending
    m = len(rows_c)
    comps = np.zeros((len(_COMPONENTS), m))
    if user_vecs is not None and emb is not None:  # both user vectors in one product
        unit, shares = user_vecs
        comps[0] = np.maximum(emb[rows_c] @ unit, 0.0) @ shares
    if sums is not None:
        comps[1:3] = sums.reshape(2, n)[:, rows_c]
    codes_c = cat.codes[rows_c]
    comps[3] = aff[codes_c] * trend.in_cat[rows_c]
    comps[4] = trend.share[rows_c]
    if profile is not None:
        idx, val = sparse
        comps[5] = np.maximum((profile[idx[rows_c]] * val[rows_c]).sum(axis=1), 0.0)
    return comps


def rank(
    signals: UserSignals,
    models: Models,
    k: int = 10,
    filters: Filters | None = None,
    weights: Weights | None = None,
) -> list[Recommendation]:
    """The top ``k`` items for the user, with a reason each (see the module docstring).

    Scores a bounded candidate set, never the whole catalogue: trending and
    trending-in-category from orders kept per snapshot (and filter), the embedding
    neighbours of the latest recent items (kept per item and snapshot), the co-visitation
    lists (as rows and ratios to their best score, kept per item and snapshot), and the
    cold items of the user's categories by content similarity (grouped per snapshot).
    Per call the cost grows with the candidates (a few hundred), not with the catalogue
    (but for a few catalogue-sized boolean and float arrays, cheap next to the rest).
    """
    w = weights or Weights()
    got = _score_user(signals, models, k, filters or Filters(), w)
    if got is None:
        return []
    cat = models.catalogue
    return got.listed(cat, got.picked(_mmr(got.pool_score, got.pool_vectors, k, w.mmr_lambda)))


def _score_user(
    signals: UserSignals, models: Models, k: int, filters: Filters, w: Weights
) -> _Scored | None:
    """:func:`rank` up to the MMR pick: the user's scored candidates (``None``: none)."""
    cat = models.catalogue
    cat.ensure_fresh()
    n = len(cat)
    if n == 0 or k <= 0:
        return None
    now = signals.now_ms
    consts = models.constants()
    base = consts.base_mask(filters)
    key: _FilterKey = (filters.in_stock_only, filters.allow_categories, filters.deny_categories)
    drop = _dropped_rows(signals, cat, filters)
    mask = base.copy()
    if drop:
        mask[drop] = False
    rec = _recent(signals, cat)

    seg = tuple(s for s in signals.segments if s in models.trending.segments)
    trend = models.trend_shares(seg)
    aff = _category_affinity(signals, cat, rec)
    codes = np.flatnonzero(aff > 0).tolist()
    cand: list[I64] = [_head(trend.allowed_order(key, base), mask, N_TREND, len(drop))]
    got = _category_candidates(trend, cat, aff, codes, (key, base, mask, len(drop)))
    if got is not None:
        cand.append(got)
    emb = models.aligned_embeddings()
    user_vecs = _user_vectors(emb, rec)
    sources = _sources(rec) if rec.any_known else []
    if user_vecs is not None:
        cand.append(models.neighbour_block(_seed_rows(rec, sources)).ravel())
    profile = _content_profile(cat, consts, rec)
    if profile is not None:
        got = _cold_candidates(consts, profile, codes, mask)
        if got is not None:
            cand.append(got)
    sums = None
    if sources:
        sums, listed = _covisit_sums(models, rec, sources, now)
        cand.append(listed)
    flags = np.zeros(n + 1, np.bool_)
    flags[np.concatenate(cand)] = True
    flags &= mask
    rows_c = np.flatnonzero(flags)
    m = len(rows_c)
    if m == 0:
        return None

    comps = _components(
        rows_c,
        cat,
        (emb, user_vecs),
        (sums, n + 1),
        (aff, trend),
        profile=profile,
        sparse=consts.sparse(),
    )
    if rec.any_known:
        wts = {name: float(getattr(w, name)) for name in _COMPONENTS}
    else:
        wts = dict.fromkeys(_COMPONENTS, 0.0) | dict(FALLBACK_WEIGHTS)
    return _scored(cat, rows_c, comps, wts, trend_reason=trend.reason, k=k)


#: Fewer users than this are ranked one by one (:func:`rank`): the batched stages of
#: :func:`rank_many` cost a fixed ~250 us per call, so one user costs ~1.4x :func:`rank`,
#: two about 1.1x, three the same (rank bench, 2,000 items: what a live stream's small
#: batches hand it).
RANK_MANY_MIN: Final = 3


def rank_many(
    signals: Sequence[UserSignals],
    models: Models,
    k: int = 10,
    filters: Filters | None = None,
    weights: Weights | None = None,
) -> list[list[Recommendation]]:
    """:func:`rank` of each user of ``signals`` over the same models, k and filters: the
    same lists (items, order, scores, reasons). Most of :func:`rank`'s cost is numpy's
    fixed cost per call (a few hundred small calls per user), so the stages whose floats
    do not depend on the batch run once for all the users: the filter masks, the union
    of the candidates, most components (:func:`_score_many`) and the MMR picks
    (:func:`_mmr_many`); what goes through BLAS is computed per user with :func:`rank`'s
    shapes."""
    if len(signals) < RANK_MANY_MIN:
        return [rank(s, models, k, filters, weights) for s in signals]
    f = filters or Filters()
    w = weights or Weights()
    scored = _score_many(signals, models, k, f, w)
    cat = models.catalogue
    lam = w.mmr_lambda
    batch = [
        i
        for i, c in enumerate(scored)
        if c is not None and lam < 1.0 and min(k, len(c.pool_score)) > 1
    ]
    picks: dict[int, list[int]] = {}
    if batch:
        got = _mmr_many([cast(_Scored, scored[i]) for i in batch], k, lam)
        picks = dict(zip(batch, got, strict=True))
    chosen: list[tuple[_Scored, list[int]] | None] = []
    for i, c in enumerate(scored):
        if c is None:
            chosen.append(None)
            continue
        in_pool = picks.get(i)
        if in_pool is None:
            in_pool = _mmr(c.pool_score, c.pool_vectors, k, lam)
        chosen.append((c, c.picked(in_pool)))
    return _listed_many(cat, chosen)


def _listed_many(
    cat: Catalogue, chosen: Sequence[tuple[_Scored, list[int]] | None]
) -> list[list[Recommendation]]:
    """:meth:`_Scored.listed` of each user's picks (``None``: no list): the picks' rows,
    scores and weighted components gathered per user, the reasons (an element-wise
    product and a column ``argmax``: the same values) of all the users at once."""
    users = [c for c in chosen if c is not None and c[1]]
    if not users:
        return [[] for _ in chosen]
    comps = np.concatenate([c.comps[:, p] for c, p in users], axis=1)
    factor = np.repeat(np.stack([c.factor for c, _ in users]).T, [len(p) for _, p in users], axis=1)
    reasons = iter((factor * comps).argmax(axis=0).tolist())
    rows = iter(np.concatenate([c.rows_c[p] for c, p in users]).tolist())
    scores = iter(np.concatenate([c.score[p] for c, p in users]).tolist())
    ids, categories = cat.ids, cat.categories
    out: list[list[Recommendation]] = []
    for got in chosen:
        if got is None:
            out.append([])
            continue
        c, picked = got
        recs = []
        for _ in picked:
            r, value, reason = next(rows), next(scores), REASONS[_COMPONENTS[next(reasons)]]
            if reason == "trending":
                reason = c.trend_reason
            recs.append(Recommendation(ids[r], round(value, 6), reason, categories[r]))
        out.append(recs)
    return out


@dataclass(slots=True)
class _Pending:
    """One user of :func:`_score_many` between the per-user stages and the batched ones."""

    cand: list[I64]
    aff: F64
    trend: _TrendShares
    user_vecs: tuple[F32, F64] | None
    rec: _Recent
    sources: list[tuple[str, int, int]]
    now_ms: int


def _recent_many(signals: Sequence[UserSignals], cat: Catalogue) -> tuple[list[_Recent], I64]:
    """:func:`_recent` of each user: the arrays of all of them made in one pass, each
    user's a slice of them (the same element-wise operations: the same floats), and the
    number of known interactions per user."""
    latest = [s.recent[-MAX_RECENT:] for s in signals]
    get = cat.index.get
    flat = [i for lst in latest for i in lst]
    lengths = [len(lst) for lst in latest]
    rows = np.asarray([get(i.item, -1) for i in flat], np.int64)
    times = np.asarray([i.time_ms for i in flat], np.int64)
    kind_w = np.asarray([_KIND_WEIGHT.get(i.kind, 1.0) for i in flat], np.float64)
    now = np.repeat(np.asarray([s.now_ms for s in signals], np.int64), lengths)
    known = rows >= 0
    neg_age = -np.maximum(now - times, 0).astype(np.float64)
    wt_s = np.exp2(neg_age / SHORT_HALF_LIFE_MS) * kind_w
    wt_l = np.exp2(neg_age / LONG_HALF_LIFE_MS) * kind_w
    user = np.repeat(np.arange(len(signals)), lengths)
    n_known = np.bincount(user[known], minlength=len(signals))
    k_rows, k_s, k_l = rows[known], wt_s[known], wt_l[known]
    out = []
    lo = k_lo = 0
    for u, lst in enumerate(latest):
        hi, k_hi = lo + lengths[u], k_lo + int(n_known[u])
        rec = _Recent(
            lst, rows[lo:hi], times[lo:hi], kind_w[lo:hi], known[lo:hi], k_hi > k_lo,
            wt_s[lo:hi], wt_l[lo:hi], k_rows[k_lo:k_hi], k_s[k_lo:k_hi], k_l[k_lo:k_hi],
        )  # fmt: skip
        out.append(rec)
        lo, k_lo = hi, k_hi
    return out, n_known


def _profiles(
    cat: Catalogue, consts: _Constants, recs: Sequence[_Recent], n_known: I64
) -> list[F32 | None]:
    """:func:`_content_profile` of each user: the sums of all the users in one
    ``np.bincount`` (each user's bins offset by the vector width: each bin adds the same
    terms in the same order), the norm one dot product per user as there."""
    dim = cat.vectors.shape[1]
    out: list[F32 | None] = [None] * len(recs)
    if not int(n_known.sum()):
        return out
    idx, val = consts.sparse()
    rows = np.concatenate([r.known_rows for r in recs])
    long = np.concatenate([r.known_long for r in recs])
    user = np.repeat(np.arange(len(recs)), n_known)
    weights = (long[:, None] * val[rows]).ravel()
    bins = (idx[rows] + (user * dim)[:, None]).ravel()
    sums = np.bincount(bins, weights=weights, minlength=len(recs) * dim).reshape(len(recs), dim)
    norms = np.zeros(len(recs))
    for u, r in enumerate(recs):
        if r.any_known:
            p = sums[u]
            norms[u] = math.sqrt(float(p @ p))
    ok = norms > 0
    units = (sums[ok] / norms[ok][:, None]).astype(np.float32)
    for j, u in enumerate(np.flatnonzero(ok).tolist()):
        out[u] = units[j]
    return out


def _covisit_many(
    models: Models, pending: Sequence[_Pending], width: int
) -> tuple[F64, list[I64]] | None:
    """:func:`_covisit_sums` of each user: one row of sums per user (``2 * width`` bins)
    and each user's listed rows. The blocks of all the users' sources in one gather, the
    sums in one ``np.bincount`` (each user's bins offset: the same additions in the same
    order). ``None`` when no user has a source."""
    counts = [len(p.sources) for p in pending]
    if not any(counts):
        return None
    if models.covisit.states:  # live learner states (the evaluator): per user, at its time
        blocks = [
            models.covisit_block([(i, r) for i, r, _ in p.sources], p.now_ms)
            for p in pending
            if p.sources
        ]
        rows = np.concatenate([b[0] for b in blocks])
        bins = np.concatenate([b[1] for b in blocks])
        ratio = np.concatenate([b[2] for b in blocks])
    else:
        # (the time matters only for live states: a published list's ratios do not decay)
        rows, bins, ratio = models.covisit_block(
            [(i, r) for p in pending for i, r, _ in p.sources], pending[0].now_ms
        )
    wt = []
    for p in pending:
        wt_s, wt_l = p.rec.wt_short.tolist(), p.rec.wt_long.tolist()
        wt += [(wt_s[i] + 0.1 * wt_l[i], wt_l[i]) for _, _, i in p.sources]
    weight = np.repeat(np.asarray(wt), N_COVISIT, axis=1)  # one column per neighbour
    n_bins = 2 * width
    offset = np.repeat(np.arange(len(pending)) * n_bins, counts)
    sums = np.bincount(
        (bins + offset[:, None]).ravel(),
        weights=(weight * ratio).ravel(),
        minlength=len(pending) * n_bins,
    ).reshape(len(pending), n_bins)
    listed = np.split(rows, np.cumsum(counts)[:-1])
    return sums.astype(np.float64, copy=False), [x.ravel() for x in listed]


def _score_many(
    signals: Sequence[UserSignals], models: Models, k: int, filters: Filters, w: Weights
) -> list[_Scored | None]:
    """:func:`_score_user` of each user. What is a gather, an element-wise operation or
    a ``np.bincount`` runs once for all the users (each element the same operation on
    the same operands, each bin the same additions in the same order: the same floats):
    the recent arrays, the filter masks, the content profiles, the co-visitation sums,
    the candidate union and most components. Reductions and BLAS products stay per user
    with :func:`rank`'s shapes (their summation order depends on the shape)."""
    cat = models.catalogue
    cat.ensure_fresh()
    n = len(cat)
    n_users = len(signals)
    if n == 0 or k <= 0 or n_users == 0:
        return [None] * n_users
    consts = models.constants()
    base = consts.base_mask(filters)
    key: _FilterKey = (filters.in_stock_only, filters.allow_categories, filters.deny_categories)
    drops = [_dropped_rows(sig, cat, filters) for sig in signals]
    masks = np.repeat(base[None, :], n_users, axis=0)  # each user's mask: a row
    n_drop = [len(d) for d in drops]
    if any(n_drop):
        at = np.repeat(np.arange(n_users), n_drop)
        masks[at, np.fromiter(chain.from_iterable(drops), np.int64, len(at))] = False
    emb = models.aligned_embeddings()
    recs, n_known = _recent_many(signals, cat)
    profiles = _profiles(cat, consts, recs, n_known)
    # the embedding neighbours of every user's seeds in one block (one fill per batch)
    user_vecs = [_user_vectors(emb, rec) for rec in recs]
    sources = [_sources(rec) if rec.any_known else [] for rec in recs]
    seeds = [
        _seed_rows(rec, src) if vecs is not None else []
        for rec, src, vecs in zip(recs, sources, user_vecs, strict=True)
    ]
    n_seeds = [len(x) for x in seeds]
    block = models.neighbour_block(list(chain.from_iterable(seeds))) if any(n_seeds) else None
    seed_at = 0
    pending: list[_Pending] = []
    for u, sig in enumerate(signals):
        mask, dropped, rec = masks[u], n_drop[u], recs[u]
        seg = tuple(s for s in sig.segments if s in models.trending.segments)
        trend = models.trend_shares(seg)
        aff = _category_affinity(sig, cat, rec)
        codes = np.flatnonzero(aff > 0).tolist()
        cand: list[I64] = [_head(trend.allowed_order(key, base), mask, N_TREND, dropped)]
        got = _category_candidates(trend, cat, aff, codes, (key, base, mask, dropped))
        if got is not None:
            cand.append(got)
        if user_vecs[u] is not None and block is not None:
            cand.append(block[seed_at : seed_at + n_seeds[u]].ravel())
            seed_at += n_seeds[u]
        profile = profiles[u]
        if profile is not None:
            got = _cold_candidates(consts, profile, codes, mask)
            if got is not None:
                cand.append(got)
        pending.append(_Pending(cand, aff, trend, user_vecs[u], rec, sources[u], sig.now_ms))
    width = n + 1
    covisit = _covisit_many(models, pending, width)
    if covisit is not None:
        for p, listed in zip(pending, covisit[1], strict=True):
            if p.sources:
                p.cand.append(listed)
    return _components_many(
        cat,
        pending,
        masks,
        (emb, covisit[0] if covisit is not None else None, profiles, consts.sparse()),
        k=k,
        w=w,
    )


def _content_many(
    profiles: list[F32 | None],
    user_of: I64,
    rows: I64,
    sparse: tuple[npt.NDArray[np.int32], F32],
) -> tuple[npt.NDArray[np.bool_], F32] | None:
    """The content component of the candidates ``rows`` (of the users ``user_of``) whose
    user has a profile: which ones, and the values (:func:`_components`' row sums, one
    row per candidate of the same width: the same floats)."""
    with_profile = [u for u, p in enumerate(profiles) if p is not None]
    if not with_profile:
        return None
    idx, val = sparse
    has = np.zeros(len(profiles), np.bool_)
    has[with_profile] = True
    units = np.zeros((len(profiles), len(cast(F32, profiles[with_profile[0]]))), np.float32)
    units[with_profile] = [profiles[u] for u in with_profile]
    sel = has[user_of]
    r, uo = rows[sel], user_of[sel]
    gathered = units.ravel()[(uo * units.shape[1])[:, None] + idx[r]]
    values: F32 = np.maximum((gathered * val[r]).sum(axis=1), 0.0)
    return sel, values


def _trend_columns(pending: Sequence[_Pending], user_of: I64, rows: I64, n: int) -> tuple[F64, F64]:
    """Each candidate's share within its category and its trending share, from its
    user's trending shares (the arrays of the batch's distinct segment combinations one
    after the other: one gather)."""
    distinct = {id(p.trend): p.trend for p in pending}
    if len(distinct) == 1:
        t = pending[0].trend
        return t.in_cat[rows], t.share[rows]
    tids = {t: i * n for i, t in enumerate(distinct)}
    at = np.asarray([tids[id(p.trend)] for p in pending])[user_of] + rows
    in_cat = np.concatenate([t.in_cat for t in distinct.values()])[at]
    share = np.concatenate([t.share for t in distinct.values()])[at]
    return in_cat, share


def _components_many(
    cat: Catalogue,
    pending: Sequence[_Pending],
    masks: npt.NDArray[np.bool_],
    inputs: tuple[F32 | None, F64 | None, list[F32 | None], tuple[npt.NDArray[np.int32], F32]],
    *,
    k: int,
    w: Weights,
) -> list[_Scored | None]:
    """The candidates of each user (its union, masked, in row order: one 2-d flag
    array), their components (:func:`_components`: each user's a contiguous block of one
    buffer, laid out as there) and the scored users (:func:`_scored`). ``inputs``: the
    aligned embeddings, the co-visitation sums (a row per user), the content profiles
    and the sparse content vectors."""
    emb, sums_of, profiles, (idx, val) = inputs
    n_users, width = masks.shape
    flags = np.zeros((n_users, width), np.bool_)
    sizes = [sum(len(c) for c in p.cand) for p in pending]
    cand = np.concatenate([c for p in pending for c in p.cand])
    # (flat indices: a 1-d scatter or gather costs a fraction of a 2-d one)
    flags.ravel()[np.repeat(np.arange(n_users) * width, sizes) + cand] = True
    flags &= masks
    user_of, rows = np.divmod(np.flatnonzero(flags), width)
    counts = np.bincount(user_of, minlength=n_users)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    # component c of flat candidate f (user u, the o-th of its m) is buf[6 lo + c m + o]
    n_comp = len(_COMPONENTS)
    buf = np.zeros(n_comp * len(rows))
    lo = starts[user_of]
    step = counts[user_of]
    pos = n_comp * lo + (np.arange(len(rows)) - lo)
    if sums_of is not None:
        at = user_of * (2 * width) + rows
        flat_sums = sums_of.ravel()
        buf[pos + step] = flat_sums[at]
        buf[pos + 2 * step] = flat_sums[at + width]
    in_cat, share = _trend_columns(pending, user_of, rows, width - 1)
    affs = np.concatenate([p.aff for p in pending])
    n_codes = len(pending[0].aff)
    buf[pos + 3 * step] = affs[user_of * n_codes + cat.codes[rows]] * in_cat
    buf[pos + 4 * step] = share
    content = _content_many(profiles, user_of, rows, (idx, val))
    if content is not None:
        sel, values = content
        buf[(pos + 5 * step)[sel]] = values

    out: list[_Scored | None] = []
    fallback = dict.fromkeys(_COMPONENTS, 0.0) | dict(FALLBACK_WEIGHTS)
    weighted = {name: float(getattr(w, name)) for name in _COMPONENTS}
    for u, p in enumerate(pending):
        m = int(counts[u])
        if m == 0:
            out.append(None)
            continue
        first = int(starts[u])
        rows_c = rows[first : first + m]
        comps = buf[n_comp * first : n_comp * (first + m)].reshape(n_comp, m)
        if p.user_vecs is not None and emb is not None:
            unit, shares = p.user_vecs
            comps[0] = np.maximum(emb[rows_c] @ unit, 0.0) @ shares
        wts = weighted if p.rec.any_known else fallback
        out.append(_scored(cat, rows_c, comps, wts, trend_reason=p.trend.reason, k=k))
    return out


def _mmr_many(users: Sequence[_Scored], k: int, lam: float) -> list[list[int]]:
    """:func:`_mmr` of each user's pool (``lam`` < 1, at least two picks each), all users
    in one loop over picks: the pools padded to the largest (relevance ``-inf``,
    similarity 0), so that a pick is one ``argmax`` along the rows and one row-wise
    minimum for all the users. Each user's values are the very floats of :func:`_mmr`
    (the same element-wise operations; the similarities one product per user, with
    :func:`_mmr`'s shapes, so BLAS sums them in the same order), so are the picks; a
    user with fewer picks than the largest ignores the extra rounds."""
    n_users = len(users)
    sizes = [len(u.pool_score) for u in users]
    width = max(sizes)
    ks = [min(k, m) for m in sizes]
    k_max = max(ks)
    scores = np.zeros((n_users, width))
    sims = np.zeros((n_users, width, width), np.float32)
    for i, u in enumerate(users):
        m = sizes[i]
        scores[i, :m] = u.pool_score
        v = u.pool_vectors
        sims[i, :m, :m] = v @ v.T
    np.maximum(sims, 0.0, out=sims)
    best = scores.max(axis=1)  # the scores are >= 0: the padding changes no maximum
    rel = lam * np.divide(scores, best[:, None], out=np.zeros_like(scores), where=best[:, None] > 0)
    rel[np.arange(width)[None, :] >= np.asarray(sizes)[:, None]] = -np.inf
    after = rel[:, None, :] - (1.0 - lam) * sims
    value = rel
    at = np.arange(n_users)
    picked = np.empty((n_users, k_max), np.int64)
    minimum, neg_inf = np.minimum, -np.inf
    for t in range(k_max - 1):
        j = value.argmax(axis=1)
        picked[:, t] = j
        minimum(value, after[at, j], out=value)
        value[at, j] = neg_inf
    picked[:, k_max - 1] = value.argmax(axis=1)
    rows = picked.tolist()
    return [rows[i][: ks[i]] for i in range(n_users)]


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
#: largest single cost of :func:`rank`; a candidate past the 3k-th best score seldom
#: beats them all on diversity (4k until branch rank-fast: 3k left HR@10 within 0.1
#: point on seeds 4 and 9, docs/models.md).
MMR_POOL_PER_PICK = 3


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
    best = float(score.max()) if m else 0.0
    rel = lam * (score / best) if best > 0 else np.zeros(m)
    if lam >= 1.0:
        top: list[int] = np.argsort(-rel, kind="stable")[:k].tolist()
        return top
    if k <= 1:
        return [int(rel.argmax())][:k]
    sims = np.maximum(vectors @ vectors.T, 0.0)
    after = rel[None, :] - (1.0 - lam) * sims  # float64; row j: the values if j were the closest
    value = rel
    picked: list[int] = []
    minimum, neg_inf = np.minimum, -np.inf
    for _ in range(k - 1):
        j = int(value.argmax())
        picked.append(j)
        minimum(value, after[j], out=value)
        value[j] = neg_inf
    picked.append(int(value.argmax()))  # the similarities to the last pick decide nothing
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
