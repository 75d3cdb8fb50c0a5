"""The online models in the flow: session summaries, one learner, a published snapshot, boards.

Stage 7 of the flow (docs/architecture.md, docs/models.md). The scaling rule
forbids funnelling every event through one key, so the models are split like
the personas (:mod:`attune.operators.clustering`):

1. The per-user state keeps what ranking and propensity need, bounded
   (:class:`UserModels`: recent interactions, purchased items, the current
   session's interactions and orders, the propensity decision-point features)
   and emits **one** :class:`SessionSummary` per closed session (with analytics
   consent), not one message per event.
2. **One** learner key (:class:`ModelLearnerLogic` around :class:`ModelLearner`)
   learns from the summaries, mirroring ``attune evaluate``
   (:mod:`attune.flows.evaluate`): item2vec on the session's items, co-visitation
   pairs, trending updates (views 1, carts 3, bought units 5), propensity
   (progressive validation, drift). Every ``publish_every`` summaries, every
   ``publish_s`` seconds with something new, and at the end of input it publishes
   a :class:`ModelSnapshot` (versioned bytes), the trending scores that changed
   (:class:`TrendingWrite`, sorted sets per scope) and the propensity metrics.
3. Every worker reads the latest snapshot through a board (:class:`RedisModelBoard`,
   checking the version at most every 2 s; :class:`LocalModelBoard` in process),
   and :class:`ModelReader` turns it into ranking :class:`~attune.operators.ranking.Models`
   over the flow's catalogue, once per version. The per-user step then ranks and
   scores propensity once per batch of a user (:mod:`attune.operators.scoring`).

Staleness: an interaction reaches the shared models when its session closes
(the session gap after the user's last event, 30 min by default), then at most
one publish interval, then at most one board refresh (2 s). The user's own
latest interactions are never stale: ranking reads them from the user's state.

>>> learner = ModelLearner(categories={"i1": "a/x", "i2": "a/x", "i3": "b/y"})
>>> s = SessionSummary("u1", 0, 60_000, (SessionTouch("i1", 0, "view"),
...     SessionTouch("i2", 30_000, "cart", 1)), ((60_000, ("i2",)),), {"cart_lines": 1}, True,
...     ("vip",))
>>> learner.learn(s)
>>> published = learner.publish(now_ms=60_000)
>>> snap = ModelSnapshot.from_bytes(published.snapshot)
>>> snap.version, sorted(snap.trending), [n for n, _ in snap.covisit["i1"].viewed]
(1, ['i1', 'i2'], ['i2'])
>>> sorted({w.scope for w in published.trending})
['category:a', 'category:a/x', 'global', 'segment:vip']
"""

from __future__ import annotations

import logging
import math
import pickle
import struct
import sys
import time
from array import array
from bisect import insort
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any, Final, Protocol

import numpy as np
import orjson
from bytewax.operators import StatefulBatchLogic
from prometheus_client import Gauge

from attune.operators.content import Catalogue
from attune.operators.covisit import (
    BOUGHT,
    HALF_LIFE_MS,
    VIEWED,
    CovisitIndex,
    ItemNeighbours,
    NeighbourList,
    purchase_pairs,
    session_pairs,
)
from attune.operators.embeddings import EmbeddingSnapshot, Item2Vec
from attune.operators.events import (
    MAX_EVENT_TIME_MS,
    AddToCart,
    Event,
    ItemUpdate,
    ProductView,
    Purchase,
    RemoveFromCart,
)
from attune.operators.features import FeatureValue
from attune.operators.propensity import FeatureRow, PropensityModel, PropensityScorer, tier
from attune.operators.ranking import (
    CART,
    COVISIT_SOURCES,
    MAX_RECENT,
    PURCHASE,
    VIEW,
    Filters,
    Interaction,
    Models,
    UserSignals,
    rank_many,
    recs_value,
    source_of,
)
from attune.operators.redis_sink import RecsWrite, TrendingWrite
from attune.operators.stream_clock import replaying, settled_count, wait_in_order
from attune.operators.trending import (
    BUY_W,
    CART_W,
    KEEP_PER_SCOPE,
    VIEW_W,
    ItemTrend,
    TrendingBoard,
    scope_names,
    segment_scope,
)

__all__ = [
    "LiveModels",
    "LocalModelBoard",
    "ModelBoard",
    "ModelLearner",
    "ModelLearnerLogic",
    "ModelReader",
    "ModelSnapshot",
    "PublishModels",
    "RecsConfig",
    "RedisModelBoard",
    "SessionSummary",
    "SessionTouch",
    "UserModels",
    "catalogue_of",
]

log = logging.getLogger(__name__)

#: Items whose purchase a user's state remembers (excluded from recommendations).
MAX_PURCHASED: Final = 200
#: Interactions of one session kept for its summary (the latest ones).
MAX_SESSION_TOUCHES: Final = 100
#: Orders of one session kept for its summary.
MAX_SESSION_ORDERS: Final = 10
#: Summaries the learner waits for before publishing (and the embedding step).
PUBLISH_EVERY: Final = 200
#: Seconds (wall clock) after which the learner publishes what it learnt anyway.
PUBLISH_S: Final = 10.0
#: Items per scope whose trend scores go into the snapshot (the per-user path ranks
#: from them; the Redis sorted sets keep :data:`~attune.operators.trending.KEEP_PER_SCOPE`).
SNAPSHOT_TRENDING: Final = 20_000
#: Items the learner tracks trends and co-visitation for (bounded memory).
MAX_ITEMS: Final = 500_000
#: Summaries a replay's learner keeps waiting for the stream clock, at most
#: (:meth:`ModelLearner.wait`); beyond it the oldest are learnt at once (and the order is
#: no longer the replay's). A summary takes ~2.6 KB in memory and ~500 bytes in the
#: learner's snapshot, which Bytewax takes every epoch: 20,000 are ~50 MB and ~10 MB.
#: The learner waits for the allowed lateness and the clock's lag: 10 minutes of a shop
#: closing 2 million sessions a day are ~14,000.
MAX_WAITING: Final = 20_000
#: Sessions learnt before the propensity model is published for scoring.
PROPENSITY_MIN_SESSIONS: Final = 100
#: Neighbours per item and kind in the snapshot (what ranking reads, ranking.N_COVISIT).
SNAPSHOT_NEIGHBOURS: Final = 30
#: Event-time age after which a user's recommendations are recomputed even if nothing
#: they are computed from changed (the recency weights decay: the short half-life).
RECS_MAX_AGE_MS: Final = 30 * 60 * 1000

_MAGIC: Final = b"ATMOD2"
_HEAD: Final = struct.Struct("<6sQ")  # magic, version: what a board reads to see a change
_LEN: Final = struct.Struct("<I")  # length of the section that follows
_I4: Final = np.dtype("<i4")
_I8: Final = np.dtype("<i8")
_F8: Final = np.dtype("<f8")
#: dtypes of the snapshot's arrays, in order (see :class:`ModelSnapshot`).
_ARRAYS: Final[tuple[np.dtype[Any], ...]] = (_I4, _I8, _I4, _I4, _F8, _I4, _F8, _I4, _I4, _F8)

MODEL_VERSION = Gauge("attune_model_version", "Version of the published recommendation models")
MODEL_SESSIONS = Gauge("attune_model_sessions", "Session summaries learnt by the shared models")
PROPENSITY_AUC = Gauge("attune_propensity_auc", "Propensity ROC AUC, rolling window")
PROPENSITY_LOG_LOSS = Gauge("attune_propensity_log_loss", "Propensity log loss, rolling window")
PROPENSITY_DRIFTS = Gauge("attune_propensity_drifts", "Propensity drift resets (ADWIN)")

_WEIGHT = {VIEW: VIEW_W, CART: CART_W, PURCHASE: BUY_W}


# --- what the per-user path sends --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionTouch:
    """One interaction of a session: item, event time, kind (view/cart/purchase), units."""

    item: str
    time_ms: int
    kind: str = VIEW
    quantity: int = 1
    category: str | None = None


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """A closed session of one user, sent to the one model learner (analytics consent).

    ``touches`` in arrival order (at most :data:`MAX_SESSION_TOUCHES`), ``orders``
    the session's orders as ``(time, item ids)``, ``features`` the propensity
    features at the decision point (before the first cart/checkout page or
    purchase, else at the session's last event), ``purchased`` the label,
    ``segments`` the user's audiences (trending per segment), ``closed_ms`` the event
    time of the event that closed the session (the next session's first event;
    :data:`~attune.operators.events.MAX_EVENT_TIME_MS`: the end of a bounded input), by
    which the learner orders what it learns in a replay (:class:`ModelLearnerLogic`).
    """

    user: str
    start_ms: int
    end_ms: int
    touches: tuple[SessionTouch, ...]
    orders: tuple[tuple[int, tuple[str, ...]], ...]
    features: Mapping[str, FeatureValue]
    purchased: bool
    segments: tuple[str, ...] = ()
    closed_ms: int = MAX_EVENT_TIME_MS

    def order_key(self) -> tuple[int, str, int]:
        """Where the summary stands in the learner's replay order: (closed, user, start)."""
        return (self.closed_ms, self.user, self.start_ms)

    def items(self) -> list[str]:
        """The session's viewed/carted items in order, repeats in a row collapsed (item2vec)."""
        out: list[str] = []
        for t in self.touches:
            if t.kind != PURCHASE and (not out or out[-1] != t.item):
                out.append(t.item)
        return out


# --- the per-user part -------------------------------------------------------------------------


@dataclass(slots=True)
class UserModels:
    """What one user's state keeps for the models. Bounded, pickles.

    ``recent`` is sorted by event time (the hand-over at login delivers older
    events late) and holds at most :data:`~attune.operators.ranking.MAX_RECENT`.
    """

    recent: list[Interaction] = field(default_factory=list)
    purchased: dict[str, None] = field(default_factory=dict)  # insertion ordered, bounded
    touches: list[SessionTouch] = field(default_factory=list)
    orders: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)
    decision: Mapping[str, FeatureValue | None] | None = None
    bought: bool = False
    recs_due: bool = False  # a relevant event since the last recommendations
    summarised_start: int | None = None  # the session a summary was sent for at end of input
    summaries: int = 0  # summaries sent to the shared models
    propensity: float | None = None
    tier: str | None = None
    high_session: int | None = None  # session start of the last high_propensity trigger
    # what the last recommendations were computed from (ModelReader.recs_key) and when
    recs_key: tuple[object, ...] | None = None
    recs_at: int = 0
    recs_cart: bool = False  # a cart change or purchase since the last recommendations

    def observe(self, event: Event, current: bool) -> None:
        """Note a product view, cart change or purchase (``current``: in the latest session)."""
        p, t = event.payload, event.event_time
        if isinstance(p, ProductView):
            self._touch(SessionTouch(p.item_id, t, VIEW, 1, p.category), current)
        elif isinstance(p, AddToCart):
            self._touch(SessionTouch(p.item_id, t, CART, p.quantity, p.category), current)
            self.recs_cart = True
        elif isinstance(p, RemoveFromCart):
            self.recs_due = self.recs_cart = True
        elif isinstance(p, Purchase):
            self.recs_due = self.recs_cart = True
            for line in p.lines:
                self._touch(
                    SessionTouch(line.item_id, t, PURCHASE, line.quantity, line.category), current
                )
                self.purchased.pop(line.item_id, None)
                self.purchased[line.item_id] = None
                if len(self.purchased) > MAX_PURCHASED:
                    del self.purchased[next(iter(self.purchased))]
            if current:
                self.bought = True
                self.orders.append((t, tuple(line.item_id for line in p.lines)))
                del self.orders[:-MAX_SESSION_ORDERS]

    def _touch(self, touch: SessionTouch, current: bool) -> None:
        self.recs_due = True
        interaction = Interaction(touch.item, touch.time_ms, touch.kind)
        recent = self.recent
        if not recent or touch.time_ms >= recent[-1].time_ms:
            recent.append(interaction)
        else:
            insort(recent, interaction, key=_time_of)
        if len(recent) > MAX_RECENT:
            del recent[0]
        if current:
            self.touches.append(touch)
            if len(self.touches) > MAX_SESSION_TOUCHES:
                del self.touches[0]

    def decide(self, features: Mapping[str, FeatureValue]) -> None:
        """The session reached its outcome funnel: keep its decision-point features (once)."""
        if self.decision is None:
            self.decision = FeatureRow.of(features)

    def close(
        self,
        user: str,
        start_ms: int,
        end_ms: int,
        features: Mapping[str, FeatureValue],
        segments: tuple[str, ...],
        *,
        closed_ms: int = MAX_EVENT_TIME_MS,
    ) -> SessionSummary:
        """The summary of the session that just closed (by an event at ``closed_ms``); the
        session part is reset."""
        decision = self.decision
        if decision is None:
            decision = FeatureRow.of(features)
        out = SessionSummary(
            user,
            start_ms,
            end_ms,
            tuple(self.touches),
            tuple(self.orders),
            decision,
            self.bought,
            segments,
            closed_ms,
        )
        self.new_session()
        self.summaries += 1
        return out

    def new_session(self) -> None:
        self.touches = []
        self.orders = []
        self.decision = None
        self.bought = False

    def signals(
        self,
        user: str,
        now_ms: int,
        in_cart: Iterable[str],
        top_categories: tuple[str, ...],
        segments: tuple[str, ...],
    ) -> UserSignals:
        return UserSignals(
            user,
            now_ms,
            recent=tuple(self.recent),
            purchased=frozenset(self.purchased),
            in_cart=frozenset(in_cart),
            top_categories=top_categories,
            segments=segments,
        )


def _time_of(i: Interaction) -> int:
    return i.time_ms


@dataclass(frozen=True, slots=True)
class RecsConfig:
    """How the per-user step ranks (settings feed it): list length, business filters, and
    the least event time between two lists of a user (0: a list per relevant batch)."""

    k: int = 10
    filters: Filters = field(default_factory=Filters)
    min_gap_ms: int = 0

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"recommendation list length must be >= 1, got {self.k}")
        if self.min_gap_ms < 0:
            raise ValueError(f"ATTUNE_RECS_MIN_GAP_S must be >= 0, got {self.min_gap_ms / 1000}")


# --- the snapshot ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelSnapshot:
    """What the learner publishes and every worker reads.

    ``to_bytes`` (``ATMOD2``): the version (8 bytes, little-endian: a board reads
    14 bytes to see a change), then length-prefixed sections (u32 LE length each):

    1. the embedding snapshot (:meth:`EmbeddingSnapshot.to_bytes`, float16; empty: none);
    2. orjson of the small parts: ``created_ms``, ``sessions``, ``propensity``
       (:meth:`PropensityModel.publish` parameters or null), ``metrics``, ``items``
       (the item ids every array below indexes), ``segments`` (names, in order) and
       ``counts`` (the lengths of the arrays);
    3. the arrays, little-endian, back to back (a worker decodes each with one
       ``np.frombuffer``): co-visitation ``cv_item`` (i4, the listed items),
       ``cv_at`` (i8, their ``at_ms``), ``cv_end`` (i4, where each item's viewed and
       then bought neighbours end, cumulative), ``cv_nb`` (i4) and ``cv_score`` (f8);
       global trending ``tr_item`` (i4) and ``tr_score`` (f8); per segment
       ``st_end`` (i4, cumulative), ``st_item`` (i4) and ``st_score`` (f8).

    Scores stay float64, so a worker reads exactly what the learner published;
    ``ATMOD1`` spelt the same content as orjson lists of lists, whose decoding cost
    every worker a Python object per number. No pickle crosses Redis: whoever can
    write the key cannot run code in the workers.
    """

    version: int
    created_ms: int
    sessions: int
    embeddings: EmbeddingSnapshot | None
    covisit: dict[str, NeighbourList]
    trending: dict[str, float]
    segment_trending: dict[str, dict[str, float]]
    propensity: dict[str, Any] | None  # PropensityModel.publish() parameters
    metrics: dict[str, Any]
    #: In a replay, the summaries it holds are every one closed up to this event time
    #: (:meth:`SessionSummary.order_key`) and some closed at it; ``None``: learnt as they
    #: came (tailing live), or a snapshot from before the field.
    through_ms: int | None = None
    #: The decoded co-visitation arrays (item table, ``cv_item``, ``cv_at``, ``cv_end``,
    #: ``cv_nb``, ``cv_score`` as int64 bits) when made by :meth:`from_bytes`: what the
    #: next snapshot's decoding compares its lists with, to reuse the unchanged ones.
    cv_arrays: tuple[Any, ...] | None = field(default=None, compare=False, repr=False)

    def to_bytes(self) -> bytes:
        encoder = SnapshotEncoder()
        for item, lst in self.covisit.items():
            encoder.put(item, lst)
        return encoder.encode(self)

    @staticmethod
    def peek_version(head: bytes) -> int | None:
        """The version in the first 14 bytes, ``None`` if they are not a snapshot's."""
        if len(head) < _HEAD.size or head[:6] != _MAGIC:
            return None
        version: int = _HEAD.unpack_from(head)[1]
        return version

    @classmethod
    def from_bytes(cls, data: bytes, previous: ModelSnapshot | None = None) -> ModelSnapshot:
        """Raises ``ValueError`` for bytes that are not a snapshot.

        ``previous``: the snapshot decoded before (a board's); its neighbour lists that
        are equal to this one's (the same item, ``at_ms``, neighbours and score bits:
        the learner re-encodes only the changed ones) are reused, not built again."""
        version = cls.peek_version(data)
        if version is None:
            raise ValueError("not an Attune model snapshot (bad magic or too short)")
        try:
            return cls._decode(version, data, previous)
        except (struct.error, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"model snapshot {version} is corrupt: {exc!r}") from exc

    @classmethod
    def _decode(cls, version: int, data: bytes, previous: ModelSnapshot | None) -> ModelSnapshot:
        pos = _HEAD.size
        sections: list[bytes] = []
        for _ in range(3):
            (n,) = _LEN.unpack_from(data, pos)
            pos += _LEN.size
            if pos + n > len(data):
                raise ValueError(f"a section of {n} bytes runs past the end ({len(data)} bytes)")
            sections.append(data[pos : pos + n])
            pos += n
        if pos != len(data):
            raise ValueError(f"{len(data) - pos} bytes after the last section")
        emb_bytes, meta_bytes, body = sections
        meta = orjson.loads(meta_bytes)
        counts = [int(c) for c in meta["counts"]]
        if len(counts) != len(_ARRAYS) or sum(
            c * t.itemsize for c, t in zip(counts, _ARRAYS, strict=True)
        ) != len(body):
            raise ValueError(f"array lengths {counts} do not match {len(body)} bytes of arrays")
        arrays: list[Any] = []
        at = 0
        for count, dtype in zip(counts, _ARRAYS, strict=True):
            arrays.append(np.frombuffer(body, dtype, count, at))
            at += count * dtype.itemsize
        cv_item, cv_at, cv_end, cv_nb, cv_score, tr_item, tr_score, st_end, st_item, st_score = (
            arrays
        )
        table = meta["items"]
        names = np.empty(len(table), dtype=object)
        names[:] = table
        if len(cv_end) != 2 * len(cv_item) or len(st_end) != len(meta["segments"]):
            raise ValueError("co-visitation or segment offsets do not match their items")
        cv_bits = cv_score.view(_I8)
        cv_arrays = (table, cv_item, cv_at, cv_end, cv_nb, cv_bits)
        same = _unchanged_lists(previous, cv_arrays)
        ends = cv_end.tolist()
        starts = [0, *ends][:-1]
        item_names = names[cv_item].tolist()
        at_list = cv_at.tolist()
        if same is None or previous is None:  # nothing to reuse: every list built in bulk
            pairs = list(zip(names[cv_nb].tolist(), cv_score.tolist(), strict=True))
            covisit = {
                item: NeighbourList(
                    item,
                    at_ms,
                    tuple(pairs[starts[2 * k] : ends[2 * k]]),
                    tuple(pairs[starts[2 * k + 1] : ends[2 * k + 1]]),
                )
                for k, (item, at_ms) in enumerate(zip(item_names, at_list, strict=True))
            }
        else:
            covisit = _reuse_lists(
                previous.covisit, same, names, item_names, at_list, starts, ends, cv_nb, cv_score
            )
        seg_names = names[st_item].tolist()
        seg_values = st_score.tolist()
        seg_ends = st_end.tolist()
        seg_starts = [0, *seg_ends][:-1]
        return cls(
            version,
            int(meta["created_ms"]),
            int(meta["sessions"]),
            EmbeddingSnapshot.from_bytes(emb_bytes) if emb_bytes else None,
            covisit,
            dict(zip(names[tr_item].tolist(), tr_score.tolist(), strict=True)),
            {
                str(seg): dict(zip(seg_names[a:b], seg_values[a:b], strict=True))
                for seg, a, b in zip(meta["segments"], seg_starts, seg_ends, strict=True)
            },
            meta["propensity"],
            dict(meta["metrics"]),
            meta.get("through_ms"),
            cv_arrays,
        )


def _reuse_lists(  # noqa: PLR0917 - the decoder's locals, handed over
    reused: dict[str, NeighbourList],
    same: Any,
    names: Any,
    item_names: list[str],
    at_list: list[int],
    starts: list[int],
    ends: list[int],
    cv_nb: Any,
    cv_score: Any,
) -> dict[str, NeighbourList]:
    """The lists of a snapshot in its order: the previous snapshot's where ``same``, the
    others built (their (name, score) pairs in bulk; each list is a slice of them)."""
    todo: list[int] = np.flatnonzero(~same).tolist()
    spans = [(starts[2 * k], ends[2 * k + 1]) for k in todo]
    take = _ranges(spans)
    pairs = list(zip(names[cv_nb[take]].tolist(), cv_score[take].tolist(), strict=True))
    built: dict[int, NeighbourList] = {}
    at = 0
    for k, (a, _) in zip(todo, spans, strict=True):
        v, b = ends[2 * k] - a, ends[2 * k + 1] - a
        built[k] = NeighbourList(
            item_names[k], at_list[k], tuple(pairs[at : at + v]), tuple(pairs[at + v : at + b])
        )
        at += b
    covisit: dict[str, NeighbourList] = {}
    for k, item in enumerate(item_names):
        lst = built.get(k)
        covisit[item] = lst if lst is not None else reused[item]
    return covisit


def _ranges(spans: list[tuple[int, int]]) -> Any:
    """The positions ``a, a + 1, ..., b - 1`` of each span, concatenated.

    >>> _ranges([(2, 4), (7, 7), (0, 1)]).tolist()
    [2, 3, 0]
    """
    if not spans:
        return np.zeros(0, np.int64)
    bounds = np.array(spans, np.int64).reshape(-1, 2)
    lengths = bounds[:, 1] - bounds[:, 0]
    total = int(lengths.sum())
    firsts = np.repeat(bounds[:, 0] - (np.cumsum(lengths) - lengths), lengths)
    return firsts + np.arange(total)


def _unchanged_lists(previous: ModelSnapshot | None, arrays: tuple[Any, ...]) -> Any:
    """For each listed item, whether ``previous`` holds the same lists (the same item
    code and ``at_ms``, as many neighbours of each kind, the same neighbour codes and
    score bits; codes compare only if the previous item table is a prefix of this
    one's); ``None`` if nothing can be reused."""
    if previous is None or previous.cv_arrays is None:
        return None
    p_table, p_item, p_at, p_end, p_nb, p_bits = previous.cv_arrays
    table, cv_item, cv_at, cv_end, cv_nb, cv_bits = arrays
    if len(p_table) > len(table) or table[: len(p_table)] != p_table:
        return None
    n = len(cv_item)
    if n == 0 or len(p_item) == 0:
        return None
    where = np.full(len(table), -1, np.int64)
    where[p_item] = np.arange(len(p_item))
    old = where[cv_item]
    known = old >= 0
    o = np.where(known, old, 0)
    starts = np.concatenate(([0], cv_end[1::2][:-1])).astype(np.int64)
    mids, stops = cv_end[0::2].astype(np.int64), cv_end[1::2].astype(np.int64)
    p_starts = np.concatenate(([0], p_end[1::2][:-1])).astype(np.int64)[o]
    p_mids, p_stops = p_end[0::2].astype(np.int64)[o], p_end[1::2].astype(np.int64)[o]
    same = (
        known
        & (p_at[o] == cv_at)
        & (p_mids - p_starts == mids - starts)
        & (p_stops - p_mids == stops - mids)
    )
    cand = np.flatnonzero(same)
    lengths = (stops - starts)[cand]
    total = int(lengths.sum())
    if total:
        owner = np.repeat(np.arange(len(cand)), lengths)
        offset = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        new_at = starts[cand][owner] + offset
        old_at = p_starts[cand][owner] + offset
        differs = (cv_nb[new_at] != p_nb[old_at]) | (cv_bits[new_at] != p_bits[old_at])
        bad = np.bincount(owner, weights=differs, minlength=len(cand)) > 0
        same[cand[bad]] = False
    return same


@dataclass(slots=True)
class SnapshotEncoder:
    """Writes ``ATMOD2`` (:class:`ModelSnapshot`), keeping what it can between publications.

    The learner keeps one encoder: its item id table only grows (codes stay valid),
    and each item's neighbour lists are encoded once, when they change
    (:meth:`put`), so a publication joins bytes instead of re-encoding ~10^5 scores
    (at 20,000 items that was most of a publication's cost). Pickles.
    """

    codes: dict[str, int] = field(default_factory=dict)
    table: list[str] = field(default_factory=list)
    # item -> (its code, at_ms, viewed count, bought count, neighbour codes, scores)
    lists: dict[str, tuple[int, int, int, int, bytes, bytes]] = field(default_factory=dict)

    def code(self, items: Iterable[str]) -> list[int]:
        """The codes of ``items``, new ones appended to the table."""
        codes, table = self.codes, self.table
        items = items if isinstance(items, (list, tuple, dict)) else list(items)
        try:
            return list(map(codes.__getitem__, items))  # known items: the loop runs in C
        except KeyError:
            pass
        # New items get codes in the order they first appear (dict.fromkeys keeps it),
        # then the lookup runs in C again: a publication's ~20,000 names hold a few new ones.
        for item in dict.fromkeys(items):
            if item not in codes:
                codes[item] = len(table)
                table.append(item)
        return list(map(codes.__getitem__, items))

    def put(self, item: str, lst: NeighbourList) -> None:
        """Encode ``item``'s lists (replacing the previous ones; the order of items stays)."""
        pairs = lst.viewed + lst.bought
        self.lists[item] = (
            self.code((item,))[0],
            lst.at_ms,
            len(lst.viewed),
            len(lst.bought),
            _le_bytes("i", self.code([name for name, _ in pairs])),
            _le_bytes("d", [score for _, score in pairs]),
        )

    def put_state(self, item: str, state: ItemNeighbours, at_ms: int, n: int) -> None:
        """:meth:`put` of ``state.publish(at_ms, n)``, the same bytes, without building the
        :class:`NeighbourList` (the learner's publication runs this for every item whose
        co-visitation changed: ~30,000 times in a 2,000-user week)."""
        names: list[str] = []
        scores: list[float] = []
        counts = [0, 0]
        t0 = state.t0
        if t0 is not None:
            scale = 2.0 ** (-(at_ms - t0) / HALF_LIFE_MS)  # as ItemNeighbours._published
            for k, kind in enumerate((VIEWED, BOUGHT)):
                w = state.weights[kind]
                if w:
                    top = sorted(w.items(), key=_second, reverse=True)[:n]
                    counts[k] = len(top)
                    names.extend(map(_first, top))
                    scores.extend([round(v * scale, 6) for _, v in top])
        code = self.codes.get(item)
        if code is None:
            code = self.code((item,))[0]
        self.lists[item] = (
            code,
            at_ms,
            counts[0],
            counts[1],
            _le_bytes("i", self.code(names)),
            _le_bytes("d", scores),
        )

    def put_states(self, states: list[ItemNeighbours], at_ms: int, n: int) -> None:
        """:meth:`put_state` of every state in ``states``, in order, the same bytes, in bulk.

        The learner's publication runs this for every item whose co-visitation changed
        (~650 items of ~60 weights each per publication in a 2,000-user week): one numpy
        sort of their weights as padded rows (best first; ties in the dict's order, as
        ``sorted(reverse=True)`` keeps them), one rounding pass and one code lookup in C
        instead of a Python sort, ~60 ``round`` calls and two small arrays per item.
        """
        if not states:
            return
        ws: list[dict[str, float]] = []
        scale: list[float] = []
        for st in states:
            if st.t0 is None:  # never updated: no neighbours (put_state lists none)
                ws.append({})
                ws.append({})
                scale.append(1.0)
            else:
                w = st.weights
                ws.append(w[VIEWED])
                ws.append(w[BOUGHT])
                scale.append(2.0 ** (-(at_ms - st.t0) / HALF_LIFE_MS))  # as put_state
        lengths = np.fromiter(map(len, ws), np.int64, len(ws))
        total = int(lengths.sum())
        names = list(chain.from_iterable(ws))
        values = np.fromiter(chain.from_iterable(map(dict.values, ws)), _F8, total)
        group = np.repeat(np.arange(len(ws)), lengths)
        starts = np.cumsum(lengths) - lengths
        # One row per list, padded (a list holds at most 2 * TOP_N weights): numpy sorts
        # each short row (stable: ties keep the dict's order), ~2x faster than one
        # lexsort of (list, weight) over all of them.
        width = int(lengths.max()) if total else 0
        rows = np.full((len(ws), width), np.inf)
        rows[group, np.arange(total) - starts[group]] = -values
        top = np.argsort(rows, axis=1, kind="stable")[:, :n]
        counts_arr = np.minimum(lengths, n)
        keep = (top + starts[:, None])[np.arange(top.shape[1]) < counts_arr[:, None]]
        counts = counts_arr.tolist()
        scores = np.round(values[keep] * np.asarray(scale)[group[keep] // 2], 6)
        kept = list(map(names.__getitem__, keep.tolist()))
        items = [st.item for st in states]
        known = self.codes
        if not all(map(known.__contains__, chain(items, kept))):
            # New ids get codes in the order put_state gives them: each item, then its
            # neighbours (the item table's order is part of the snapshot's bytes).
            seq: list[str] = []
            at = 0
            for k, item in enumerate(items):
                m = counts[2 * k] + counts[2 * k + 1]
                seq.append(item)
                seq.extend(kept[at : at + m])
                at += m
            self.code(seq)
        item_codes = list(map(known.__getitem__, items))
        nb_bytes = np.fromiter(map(known.__getitem__, kept), _I4, len(kept)).tobytes()
        score_bytes = scores.astype(_F8).tobytes()
        ends = np.cumsum(counts_arr.reshape(-1, 2).sum(axis=1)).tolist()
        lists = self.lists
        at = 0
        for k, item in enumerate(items):
            end = ends[k]
            lists[item] = (
                item_codes[k],
                at_ms,
                counts[2 * k],
                counts[2 * k + 1],
                nb_bytes[4 * at : 4 * end],
                score_bytes[8 * at : 8 * end],
            )
            at = end

    def encode(self, snap: ModelSnapshot) -> bytes:
        """``snap`` as bytes, its co-visitation lists being those :meth:`put` here."""
        emb = snap.embeddings.to_bytes() if snap.embeddings is not None else b""
        entries = list(self.lists.values())
        lens = np.array(list(chain.from_iterable(map(_lens, entries))), _I4)
        cv_nb = b"".join(map(_nb_codes, entries))
        cv_score = b"".join(map(_nb_scores, entries))
        segments = list(snap.segment_trending)
        seg_scores = [snap.segment_trending[s] for s in segments]
        seg_items = list(chain.from_iterable(seg_scores))
        arrays = (
            np.fromiter(map(_first, entries), _I4, len(entries)).tobytes(),
            np.fromiter(map(_second, entries), _I8, len(entries)).tobytes(),
            np.cumsum(lens, dtype=_I4).tobytes(),
            cv_nb,
            cv_score,
            np.array(self.code(snap.trending), _I4).tobytes(),
            np.fromiter(snap.trending.values(), _F8, len(snap.trending)).tobytes(),
            np.cumsum(np.fromiter(map(len, seg_scores), _I4, len(segments)), dtype=_I4).tobytes(),
            np.array(self.code(seg_items), _I4).tobytes(),
            np.fromiter(
                chain.from_iterable(v.values() for v in seg_scores), _F8, len(seg_items)
            ).tobytes(),
        )
        meta = orjson.dumps(
            {
                "created_ms": snap.created_ms,
                "sessions": snap.sessions,
                "through_ms": snap.through_ms,
                "propensity": snap.propensity,
                "metrics": snap.metrics,
                "items": self.table,
                "segments": segments,
                "counts": [len(a) // t.itemsize for a, t in zip(arrays, _ARRAYS, strict=True)],
            }
        )
        body = b"".join(arrays)
        return b"".join(
            (
                _HEAD.pack(_MAGIC, snap.version),
                _LEN.pack(len(emb)),
                emb,
                _LEN.pack(len(meta)),
                meta,
                _LEN.pack(len(body)),
                body,
            )
        )


def _le_bytes(typecode: str, values: list[int] | list[float]) -> bytes:
    """``values`` as little-endian int32 (``"i"``) or float64 (``"d"``) bytes, as
    ``np.array(values, "<i4" / "<f8").tobytes()`` gives them, at a fraction of its cost
    for the short lists of one item (the stdlib array, no numpy call per list).

    >>> _le_bytes("i", [1, -2]) == np.array([1, -2], _I4).tobytes()
    True
    >>> _le_bytes("d", [0.5, 1e300]) == np.array([0.5, 1e300], _F8).tobytes()
    True
    """
    arr = array(typecode, values)
    if arr.itemsize != (4 if typecode == "i" else 8):  # a C int that is not 32 bits
        return np.array(values, _I4 if typecode == "i" else _F8).tobytes()
    if _BIG_ENDIAN:
        arr.byteswap()
    return arr.tobytes()


_BIG_ENDIAN: Final = sys.byteorder == "big"


def _lens(entry: tuple[int, int, int, int, bytes, bytes]) -> tuple[int, int]:
    return entry[2], entry[3]


_first: Final = itemgetter(0)
_score_of: Final = attrgetter("score")
_second: Final = itemgetter(1)
_nb_codes: Final = itemgetter(4)
_nb_scores: Final = itemgetter(5)


@dataclass(frozen=True, slots=True)
class PublishModels:
    """One publication: the snapshot bytes, changed trend scores, propensity metrics JSON."""

    version: int
    snapshot: bytes
    trending: tuple[TrendingWrite, ...]
    metrics: bytes
    through_ms: int | None = None  # ModelSnapshot.through_ms


# --- the one learner ---------------------------------------------------------------------------


@dataclass(slots=True)
class ModelLearner:
    """The shared models, learnt from session summaries as ``attune evaluate`` learns them.

    ``categories`` maps catalogue items to their category path (trending scopes;
    an event's own category is used for items the catalogue lacks). Pickles.
    """

    categories: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    item2vec: Item2Vec = field(init=False)
    covisit: CovisitIndex = field(default_factory=CovisitIndex)
    trends: dict[str, ItemTrend] = field(default_factory=dict)
    propensity: PropensityModel = field(init=False)
    pending: list[list[str]] = field(default_factory=list)
    changed: dict[str, None] = field(default_factory=dict)  # items with new trend scores
    # Items whose co-visitation state changed since the last publication: only their
    # lists are rebuilt and encoded (decayed scores keep their ratios); the others
    # stay in the encoder as they were published.
    covisit_changed: dict[str, None] = field(default_factory=dict)
    sessions: int = 0
    version: int = 0
    latest_ms: int = 0
    embeddings: EmbeddingSnapshot | None = None
    encoder: SnapshotEncoder = field(default_factory=SnapshotEncoder)
    # The trend scores published so far (global in the order of ``trends``, and per
    # segment), brought up to date at each publication for the changed items only.
    scores: dict[str, float] = field(default_factory=dict)
    segment_scores: dict[str, dict[str, float]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)  # the last publication's
    #: In a replay: summaries received and not learnt yet, in their order
    #: (:meth:`SessionSummary.order_key`), learnt once the stream clock has settled past
    #: their closing time (:meth:`settled`). Bounded by :data:`MAX_WAITING`.
    waiting: list[SessionSummary] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.item2vec = Item2Vec(seed=self.seed)
        self.propensity = PropensityModel(seed=self.seed)

    def __getstate__(self) -> tuple[str, dict[str, Any]]:
        """What Bytewax's snapshot pickles: every field, the co-visitation states and
        the trends as flat lists and float64 bytes (:func:`_pack_covisit`,
        :func:`_pack_trends`) instead of ~2 x items small objects, each pickled through
        a Python ``__getstate__`` (half of a 2,000-item learner's snapshot time)."""
        state = {name: getattr(self, name) for name in _LEARNER_FIELDS}
        state["covisit"] = _pack_covisit(self.covisit)
        state["trends"] = _pack_trends(self.trends)
        return _LEARNER_STATE, state

    def __setstate__(self, got: tuple[str | None, dict[str, Any]]) -> None:
        tag, state = got
        if tag is None:  # object's own (None, slots) state: snapshots before session 9
            for name, value in state.items():
                setattr(self, name, value)
            return
        if tag != _LEARNER_STATE:
            raise ValueError(f"not a model learner state: {tag!r}")
        state["covisit"] = _unpack_covisit(state["covisit"])
        state["trends"] = _unpack_trends(state["trends"])
        state.setdefault("waiting", [])  # added in session 12
        for name in _LEARNER_FIELDS:
            setattr(self, name, state[name])

    def learn(self, s: SessionSummary) -> None:
        """Fold one session in: co-visitation and trends per touch, its items for item2vec
        (trained at the next publish), one propensity example."""
        seen: list[str] = []
        segments = s.segments
        states, learn_pairs = self.covisit.states, self.covisit.learn
        trends, changed, categories = self.trends, self.changed, self.categories
        for touch in s.touches:
            item, kind = touch.item, touch.kind
            if kind != PURCHASE:
                if not seen:
                    seen.append(item)
                else:
                    if len(states) < MAX_ITEMS or item in states:
                        learn_pairs(session_pairs(seen, item), VIEWED, touch.time_ms)
                    if seen[-1] != item:
                        seen.append(item)
            # trends, inline (one per touch): views 1, carts 3, bought units 5
            trend = trends.get(item)
            if trend is None:
                if len(trends) >= MAX_ITEMS:
                    continue
                trend = trends[item] = ItemTrend(item, categories.get(item) or touch.category)
            weight = _WEIGHT[kind] * (touch.quantity if kind == PURCHASE else 1)
            trend.update(touch.time_ms, weight, segments)
            changed[item] = None
        for t, items in s.orders:
            learn_pairs(purchase_pairs(items), BOUGHT, t)
            self.covisit_changed.update(dict.fromkeys(items))
        self.covisit_changed.update(dict.fromkeys(seen))
        if seen:
            self.pending.append(seen)
        self.propensity.learn(s.features, s.purchased)
        self.sessions += 1
        self.latest_ms = max(self.latest_ms, s.end_ms)

    def wait(self, summaries: Iterable[SessionSummary]) -> None:
        """Keep ``summaries`` for :meth:`settled`, in their order (the oldest beyond
        :data:`MAX_WAITING` are learnt at once: a stream clock that stands still must not
        hold the learner's memory)."""
        wait_in_order(self.waiting, summaries)

    def settled(self, through_ms: int, final: bool = False) -> list[SessionSummary]:
        """The waiting summaries closed at or before ``through_ms``, in order, taken out;
        and the oldest beyond :data:`MAX_WAITING`. Those of the end of input only when
        ``final`` (the learner's own end of input): a clock at the end of time does not
        say that every worker's last summaries have arrived."""
        waiting = self.waiting
        n = max(settled_count(waiting, through_ms, final), len(waiting) - MAX_WAITING)
        out = waiting[:n]
        del waiting[:n]
        return out

    def publish(self, now_ms: int | None = None, through_ms: int | None = None) -> PublishModels:
        """Train item2vec on the pending sessions, then the snapshot and the changed trends
        (``through_ms``: :attr:`ModelSnapshot.through_ms`)."""
        at = self.latest_ms if now_ms is None else now_ms
        if self.pending:
            self.item2vec.learn_sessions(self.pending)
            self.pending = []
            self.embeddings = self.item2vec.snapshot(at)
        self.version += 1
        metrics = self.metrics = self.propensity.metrics()  # computed once per publication
        scopes = self._changed_trends()
        self.changed = {}
        scores, segment_scores = self.scores, self.segment_scores
        self._neighbour_lists(at)
        snapshot = ModelSnapshot(
            version=self.version,
            created_ms=at,
            sessions=self.sessions,
            embeddings=self.embeddings,
            covisit={},  # the encoder holds the lists
            trending=_best(scores, SNAPSHOT_TRENDING),
            segment_trending={seg: _best(v, KEEP_PER_SCOPE) for seg, v in segment_scores.items()},
            propensity=(
                self.propensity.publish(metrics)
                if self.propensity.n >= PROPENSITY_MIN_SESSIONS
                else None
            ),
            metrics=metrics,
            through_ms=through_ms,
        )
        return PublishModels(
            self.version,
            self.encoder.encode(snapshot),
            tuple(TrendingWrite(scope, tuple(m)) for scope, m in scopes.items()),
            orjson.dumps({**metrics, "model_version": self.version, "at": at}),
            through_ms,
        )

    def _changed_trends(self) -> dict[str, list[tuple[str, float]]]:
        """The ZADDs of the changed items, by scope (:meth:`ItemTrend.publish` of each, in
        order), and the published scores brought up to date. The scope names come from
        caches (a category's scopes, a segment's scope): a publication runs this for
        every changed item (~650), with ~2 segments each."""
        scopes: dict[str, list[tuple[str, float]]] = {}
        segment_scores = self.segment_scores
        changed = list(self.changed)
        trends = list(map(self.trends.__getitem__, changed))
        pairs = list(zip(changed, map(_score_of, trends), strict=True))
        self.scores.update(pairs)  # new items arrive in the order of self.trends
        for pair, trend in zip(pairs, trends, strict=True):
            for scope in scope_names(trend.category):
                members = scopes.get(scope)
                if members is None:
                    scopes[scope] = [pair]
                else:
                    members.append(pair)
            segments = trend.segments
            if not segments:
                continue
            item = pair[0]
            for seg, score in segments.items():
                scope = segment_scope(seg)
                members = scopes.get(scope)
                if members is None:
                    scopes[scope] = [(item, score)]
                else:
                    members.append((item, score))
                by_item = segment_scores.get(seg)
                if by_item is None:
                    segment_scores[seg] = {item: score}
                else:
                    by_item[item] = score
        return scopes

    def _neighbour_lists(self, at: int) -> None:
        states = self.covisit.states
        changed = [st for st in map(states.get, self.covisit_changed) if st is not None]
        self.encoder.put_states(changed, at, SNAPSHOT_NEIGHBOURS)
        self.covisit_changed = {}


_LEARNER_STATE: Final = "attune-model-learner-1"
_LEARNER_FIELDS: Final = tuple(f.name for f in fields(ModelLearner))
_KINDS: Final = (VIEWED, BOUGHT)


def _floats(values: Iterable[float]) -> bytes:
    return array("d", values).tobytes()  # native float64: a pickle of the same machine


def _unfloats(data: bytes) -> list[float]:
    out = array("d")
    out.frombytes(data)
    return out.tolist()


def _pack_covisit(index: CovisitIndex) -> tuple[Any, ...]:
    """``index``'s states as flat lists (the order of every dict kept: it breaks ties);
    the index itself if a state's kinds are not exactly viewed, bought."""
    states = list(index.states.values())
    if any(tuple(st.weights) != _KINDS for st in states):
        return ("index", index)
    lengths: list[int] = []
    names: list[str] = []
    values = array("d")  # native float64: a pickle of the same machine
    for st in states:
        for kind in _KINDS:
            w = st.weights[kind]
            lengths.append(len(w))
            names.extend(w)
            values.extend(w.values())
    return (
        "flat",
        list(index.states),
        [st.item for st in states],
        [st.t0 for st in states],
        [st.updates for st in states],
        lengths,
        names,
        values.tobytes(),
        index.published,
    )


def _unpack_covisit(packed: tuple[Any, ...]) -> CovisitIndex:
    if packed[0] == "index":
        index: CovisitIndex = packed[1]
        return index
    _, keys, items, t0s, updates, lengths, names, values, published = packed
    vals = _unfloats(values)
    states: dict[str, ItemNeighbours] = {}
    at = 0
    for i, key in enumerate(keys):
        weights: dict[str, dict[str, float]] = {}
        for k, kind in enumerate(_KINDS):
            n = lengths[2 * i + k]
            weights[kind] = dict(zip(names[at : at + n], vals[at : at + n], strict=True))
            at += n
        states[key] = ItemNeighbours(items[i], t0s[i], weights, updates[i])
    return CovisitIndex(states, published)


def _pack_trends(trends: dict[str, ItemTrend]) -> tuple[Any, ...]:
    """``trends`` as flat lists and float64 bytes, in order (segments in theirs)."""
    values = list(trends.values())
    lengths = [len(t.segments) for t in values]
    return (
        list(trends),
        [t.item for t in values],
        [t.category for t in values],
        _floats(t.score for t in values),
        _floats(t.half_life_ms for t in values),
        lengths,
        [seg for t in values for seg in t.segments],
        _floats(v for t in values for v in t.segments.values()),
    )


def _unpack_trends(packed: tuple[Any, ...]) -> dict[str, ItemTrend]:
    keys, items, categories, scores, half_lives, lengths, seg_names, seg_values = packed
    score, half, seg_v = _unfloats(scores), _unfloats(half_lives), _unfloats(seg_values)
    out: dict[str, ItemTrend] = {}
    at = 0
    for i, key in enumerate(keys):
        n = lengths[i]
        segs = dict(zip(seg_names[at : at + n], seg_v[at : at + n], strict=True))
        at += n
        out[key] = ItemTrend(items[i], categories[i], score[i], segs, half[i])
    return out


def _best(scores: dict[str, float], n: int) -> dict[str, float]:
    """The ``n`` best scores, best first, ties in the dict's order (a stable sort, as
    ``sorted(key=-score)``; numpy's, as this runs over every item at each publication)."""
    if len(scores) <= n:
        return dict(scores)
    items = list(scores)
    values = np.fromiter(scores.values(), _F8, len(items))
    top = np.argsort(-values, kind="stable")[:n].tolist()
    return dict(zip(map(items.__getitem__, top), values[top].tolist(), strict=True))


class ModelLearnerLogic(StatefulBatchLogic[SessionSummary, PublishModels, bytes]):
    """The one model learner (a single key): learns per batch, publishes periodically.

    Tailing live (or without a ``clock``), it learns the summaries as they come and
    publishes after ``publish_every`` new summaries, after ``publish_s`` wall
    seconds with unpublished ones (a quiet stream still gets fresh models), and at
    the end of input; never twice within ``publish_min_s`` seconds (a publication
    costs O(items): at high session rates the count alone would publish many
    times per board refresh). One message per user session reaches it, not per event.

    In a replay (a ``clock``, the stream clock, that is not live) what it learns and
    publishes does not depend on batching or timing: it keeps the summaries
    (:meth:`ModelLearner.wait`) until the clock's settled time has passed their closing
    time (in a replay every summary closed before it has then arrived: the event that
    closed it was read), learns them in :meth:`SessionSummary.order_key` order, and
    publishes after the first ``publish_every`` summaries of that order, then after every
    ``replay_publish_every`` (default ``publish_every``; the flow's
    ``ATTUNE_MODELS_REPLAY_PUBLISH_EVERY``: fewer versions than tailing live, as each costs
    O(items), but the first as soon), so each version
    holds the same summaries in every run, with the time it was learnt through
    (:attr:`PublishModels.through_ms`); at the end of input the rest, in order, then
    what is left. The wall-clock publications and ``publish_min_s`` do not apply
    there. When the clock turns live, what waits is learnt first, in order.
    """

    def __init__(
        self,
        resume: bytes | None,
        categories: dict[str, str],
        *,
        seed: int = 0,
        publish_every: int = PUBLISH_EVERY,
        publish_s: float = PUBLISH_S,
        publish_min_s: float = 0.0,
        clock: Any = None,
        replay_publish_every: int | None = None,
    ) -> None:
        if replay_publish_every is not None and replay_publish_every < 1:
            raise ValueError(
                f"the model learner publishes every {replay_publish_every} summaries in a "
                "replay: set ATTUNE_MODELS_REPLAY_PUBLISH_EVERY >= 1"
            )
        if publish_every < 1 or publish_s < 0:
            raise ValueError(
                f"the model learner publishes every {publish_every} summaries and "
                f"{publish_s} s: set ATTUNE_MODELS_PUBLISH_EVERY >= 1 and "
                "ATTUNE_MODELS_PUBLISH_S >= 0"
            )
        if publish_min_s < 0:
            raise ValueError(
                f"the model learner publishes at most every {publish_min_s} s: set "
                "ATTUNE_MODELS_PUBLISH_MIN_S >= 0"
            )
        self.learner: ModelLearner = (
            pickle.loads(resume) if resume else ModelLearner(categories, seed)
        )
        self.publish_every = publish_every
        #: In a replay: after every this many summaries of event-time order.
        self.replay_every = replay_publish_every or publish_every
        self.publish_s = publish_s
        self.publish_min_s = publish_min_s
        self.published_at = -math.inf  # the last publication (monotonic), for publish_min_s
        self.unpublished = 0
        self.last_publish = time.monotonic()
        #: The stream clock (``now_ms()``: settled time, ``live()``); ``None``: as they come.
        self.clock = clock

    def _replaying(self) -> bool:
        """In a replay (:func:`~attune.operators.stream_clock.replaying`)."""
        return replaying(self.clock)

    def on_batch(self, values: list[SessionSummary]) -> tuple[Iterable[PublishModels], bool]:
        learner = self.learner
        if self._replaying():
            learner.wait(values)
            return self._learn_through(self.clock.now_ms()), StatefulBatchLogic.RETAIN
        out = self._learn_through(MAX_EVENT_TIME_MS, True) if learner.waiting else []
        for summary in values:
            learner.learn(summary)
        self.unpublished += len(values)
        if self.unpublished >= self.publish_every and self._since_publish() >= self.publish_min_s:
            out += self._publish()
        return out, StatefulBatchLogic.RETAIN

    def _learn_through(self, through_ms: int | None, final: bool = False) -> list[PublishModels]:
        """Learn the waiting summaries closed at or before ``through_ms`` (``None``: none
        yet), in order, publishing after the first ``publish_every`` of them and then after
        every ``replay_every``: at counts of learnt sessions that do not depend on batching
        (a version's summaries are the same in every replay). ``final``:
        those of the end of input too (:meth:`ModelLearner.settled`)."""
        if through_ms is None:
            return []
        learner = self.learner
        out: list[PublishModels] = []
        every, first = self.replay_every, self.publish_every
        for summary in learner.settled(through_ms, final):
            learner.learn(summary)
            self.unpublished += 1
            if learner.sessions % every == 0 or learner.sessions == first:
                out += self._publish(summary.closed_ms)
        return out

    def _since_publish(self) -> float:
        return time.monotonic() - self.published_at

    def on_notify(self) -> tuple[Iterable[PublishModels], bool]:
        if self._replaying():  # a poll of the clock
            return self._learn_through(self.clock.now_ms()), StatefulBatchLogic.RETAIN
        out = self._learn_through(MAX_EVENT_TIME_MS, True) if self.learner.waiting else []
        return out + (self._publish() if self.unpublished else []), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[PublishModels], bool]:
        out = self._learn_through(MAX_EVENT_TIME_MS, True) if self.learner.waiting else []
        if self.unpublished:  # the end of input: everything is learnt
            out += self._publish(MAX_EVENT_TIME_MS if self.clock is not None else None)
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self._replaying():  # poll the clock while summaries wait for it
            return datetime.now(UTC) + timedelta(seconds=1) if self.learner.waiting else None
        if not self.unpublished and not self.learner.waiting:
            return None
        wait = self.publish_s - (time.monotonic() - self.last_publish)
        if self.unpublished >= self.publish_every:  # held back by publish_min_s only
            wait = min(wait, self.publish_min_s - self._since_publish())
        return datetime.now(UTC) + timedelta(seconds=max(0.0, wait))

    def _publish(self, through_ms: int | None = None) -> list[PublishModels]:
        self.unpublished = 0
        self.last_publish = self.published_at = time.monotonic()
        out = self.learner.publish(through_ms=through_ms)
        m = self.learner.metrics
        MODEL_VERSION.set(out.version)
        MODEL_SESSIONS.set(self.learner.sessions)
        for gauge, value in ((PROPENSITY_AUC, m["auc"]), (PROPENSITY_LOG_LOSS, m["log_loss"])):
            if value is not None:
                gauge.set(value)
        PROPENSITY_DRIFTS.set(m["drifts"])
        return [out]

    def snapshot(self) -> bytes:
        return pickle.dumps(self.learner, protocol=pickle.HIGHEST_PROTOCOL)


# --- the read side: boards and the per-process reader ------------------------------------------


class ModelBoard(Protocol):
    """Where the per-user step reads the latest published :class:`ModelSnapshot`."""

    def get(self) -> ModelSnapshot | None: ...


class LocalModelBoard:
    """In-process board, for the embedded default (one process); the store puts bytes."""

    def __init__(self) -> None:
        self.snapshot: ModelSnapshot | None = None

    def get(self) -> ModelSnapshot | None:
        return self.snapshot

    def put(self, data: bytes) -> None:
        self.snapshot = ModelSnapshot.from_bytes(data, self.snapshot)


class RedisModelBoard:
    """Reads the snapshot the learner published to Redis: at most every ``refresh_s`` it
    reads the 14-byte header (``GETRANGE``) and fetches the whole value only when the
    version changed. One per worker process; the client is made on first use."""

    def __init__(self, connect: Callable[[], Any], key: str, refresh_s: float = 2.0) -> None:
        self.connect = connect
        self.key = key
        self.refresh_s = refresh_s
        self._client: Any = None
        self._snapshot: ModelSnapshot | None = None
        self._checked = -math.inf

    def get(self) -> ModelSnapshot | None:
        now = time.monotonic()
        if now - self._checked >= self.refresh_s:
            self._checked = now
            if self._client is None:
                self._client = self.connect()
            head = self._client.getrange(self.key, 0, _HEAD.size - 1)
            version = ModelSnapshot.peek_version(head or b"")
            current = self._snapshot.version if self._snapshot is not None else None
            if version is not None and version != current:
                raw = self._client.get(self.key)
                try:
                    self._snapshot = ModelSnapshot.from_bytes(raw or b"", self._snapshot)
                except ValueError as exc:  # keep ranking with the previous models
                    log.warning("ignoring model snapshot at %s: %s", self.key, exc)
        return self._snapshot


@dataclass(frozen=True, slots=True)
class LiveModels:
    """The ranking models of one snapshot (or of none) over the catalogue, and the
    propensity scorer."""

    version: str
    models: Models
    propensity: PropensityScorer | None


@dataclass(frozen=True, slots=True)
class RecsRequest:
    """A user's recommendation list, due but not ranked yet: what the per-user step emits
    instead of the :class:`~attune.operators.redis_sink.RecsWrite` bytes, so that one
    stateless step after it ranks all the lists of a Bytewax batch together
    (:func:`resolve_recs`, :func:`~attune.operators.ranking.rank_many`): most of the cost
    of one ranking is numpy's fixed cost per call, which a batch shares.

    ``live``: the snapshot :meth:`ModelReader.current` gave when the step decided the
    list (the one it would have been ranked on at once); ``now_ms`` the wall-clock time of
    the list (``generated_at``). An output, never state: the per-user state keeps only
    ``recs_key`` / ``recs_at``, so nothing pending is in a recovery snapshot, and a
    request lives only from the step to the end of its batch (it does not pickle cheaply:
    it holds the snapshot's models, shared by reference)."""

    signals: UserSignals
    live: LiveModels
    cfg: RecsConfig
    now_ms: int


def resolve_recs(outputs: list[Any]) -> list[Any]:
    """``outputs`` with every :class:`RecsRequest` replaced in place by its
    :class:`~attune.operators.redis_sink.RecsWrite` (the order kept: the Redis sink
    applies a user's writes in order, an erasure after a list included). The requests
    are ranked per snapshot and config, in one :func:`~attune.operators.ranking.rank_many`
    call each; the same lists as :func:`~attune.operators.ranking.rank` one at a time."""
    at = [i for i, o in enumerate(outputs) if type(o) is RecsRequest]
    if not at:
        return outputs
    groups: dict[tuple[int, int, Filters], list[int]] = {}
    for i in at:
        r: RecsRequest = outputs[i]
        groups.setdefault((id(r.live), r.cfg.k, r.cfg.filters), []).append(i)
    out = list(outputs)
    for members in groups.values():
        first: RecsRequest = outputs[members[0]]
        live, cfg = first.live, first.cfg
        models = live.models
        signals = [outputs[i].signals for i in members]
        for i, sig, recs in zip(
            members, signals, rank_many(signals, models, cfg.k, cfg.filters), strict=True
        ):
            req: RecsRequest = outputs[i]
            out[i] = RecsWrite(
                sig.user, recs_value(recs, live.version, req.now_ms, source_of(sig, models))
            )
    return out


def catalogue_of(items: Iterable[ItemUpdate]) -> Catalogue:
    """The catalogue the per-user path ranks over (latest version of each item)."""
    cat = Catalogue()
    for item in sorted(items, key=lambda i: (i.updated_time, i.item_id)):
        cat.update(item)
    cat.refresh()
    return cat


class ModelReader:
    """Per process: the board's latest snapshot as :class:`LiveModels`, built once per
    version over the flow's catalogue (shared by the process's workers; read-only)."""

    def __init__(self, board: ModelBoard, catalogue: Catalogue) -> None:
        self.board = board
        self.catalogue = catalogue
        self._live = LiveModels(f"m0-c{catalogue.version}", Models(catalogue), None)
        self._version = 0

    def current(self) -> LiveModels:
        snap = self.board.get()
        if snap is not None and snap.version != self._version:
            self._live = self._build(snap)
            self._version = snap.version
        return self._live

    def _build(self, snap: ModelSnapshot) -> LiveModels:
        cat = self.catalogue
        n = len(cat)
        trending = TrendingBoard()
        for scope, scores in (
            ("global", snap.trending),
            *((f"segment:{s}", v) for s, v in snap.segment_trending.items()),
        ):
            rows: list[int | None] = list(map(cat.index.get, scores))
            values = list(scores.values())
            if None in rows:  # items the catalogue lacks
                kept = [(r, v) for r, v in zip(rows, values, strict=True) if r is not None]
                rows, values = [r for r, _ in kept], [v for _, v in kept]
            trending.set_scores(scope, np.asarray(rows, np.int64), np.asarray(values), n)
        models = Models(
            cat,
            CovisitIndex(published=dict(snap.covisit)),
            trending,
            snap.embeddings,
            covisit_rows_cache=self._live.models.covisit_rows_cache,  # unchanged lists reused
            covisit_arrays=snap.cv_arrays,  # every list's block at once, at its first use
        )
        scorer = None
        if snap.propensity is not None:
            try:
                scorer = PropensityScorer.from_params(snap.propensity)
            except ValueError as exc:  # rank all the same; no score until the next snapshot
                log.warning("ignoring the propensity model of snapshot %d: %s", snap.version, exc)
        return LiveModels(f"m{snap.version}-{models.version}", models, scorer)

    def recs_key(self, signals: UserSignals) -> tuple[object, ...]:
        """What a user's recommendations depend on, but for time: the snapshot, the
        items seeding the candidates (the latest :data:`~.ranking.COVISIT_SOURCES`
        distinct recent items, as a set), the cart, the purchases, the profile's top
        categories and the segments. Equal keys within :data:`RECS_MAX_AGE_MS` give
        (nearly) the same list, so the step keeps the last one."""
        seeds: dict[str, None] = {}
        for i in reversed(signals.recent):
            seeds[i.item] = None
            if len(seeds) >= COVISIT_SOURCES:
                break
        return (
            self.current().version,
            tuple(sorted(seeds)),
            tuple(sorted(signals.in_cart)),
            tuple(sorted(signals.purchased)),
            signals.top_categories,
            signals.segments,
        )

    def request(self, signals: UserSignals, cfg: RecsConfig, now_ms: int) -> RecsRequest:
        """The user's recommendations to rank (:func:`resolve_recs` ranks them, with the
        batch's other requests): the snapshot is the one :meth:`current` gives now, kept
        in the request, so the list is ranked on the models it would have been ranked on
        at once. ``now_ms``: the wall-clock time the list is generated at."""
        return RecsRequest(signals, self.current(), cfg, now_ms)

    def propensity(self, features: Mapping[str, FeatureValue]) -> tuple[float, str] | None:
        """Score and tier of the user's current session, ``None`` before a model is published."""
        scorer = self.current().propensity
        if scorer is None:
            return None
        score = scorer.score(features)
        return score, tier(score)
