"""The user's profile: the features of a state, computed on access, and its Redis profile.

Every stage of the per-user step (:mod:`attune.operators.user_step`) that decides on the
user's behaviour reads it through a :class:`FeatureView` of the state at a point in event
time: rule segments and persona vectors (:mod:`attune.operators.membership`), the
propensity decision point, scores and session summaries (:mod:`attune.operators.scoring`),
and the trigger rules (:mod:`attune.operators.trigger_decisions`). The names, types and
meaning of the features are :mod:`attune.operators.features`; most are read from the
activity slice (:mod:`attune.operators.sessions`). Once per batch of a user the outputs
stage writes :func:`profile_write`, the documented subset
(:data:`~attune.operators.features.PROFILE_FIELDS`), to Redis.

>>> from attune.operators.events import Event, EventType, ProductView
>>> from attune.operators.sessions import PriceBands, count, place
>>> st = UserState("u1")
>>> view = Event("e1", EventType.PRODUCT_VIEW, 1_767_571_200_000,
...              ProductView("i1", "shoes/running", 8999, "EUR"), user_id="u1")
>>> place(st.activity, view.event_time, gap_ms=1_800_000)
True
>>> count(st.activity, view, PriceBands())
>>> an_hour_later = FeatureView(st, st.max_time + 3_600_001)
>>> compute(st, "product_views_1h"), an_hour_later["product_views_1h"]
(1, 0)
>>> profile_write(st).fields["top_category_7d"]
'shoes/running'
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import cast

from attune.operators.clock import DAY_MS, HOUR_MS
from attune.operators.events import (
    AddToCart,
    ConsentUpdate,
    Dwell,
    ErasureRequest,
    Event,
    Identify,
    PageView,
    ProductView,
    Purchase,
    RemoveFromCart,
    Search,
)
from attune.operators.features import (
    CART,
    CARTS,
    CONTEXT,
    DWELLS,
    EVERY_EVENT,
    FEATURES,
    ORDERS,
    PAGES,
    PROFILE_FIELDS,
    REMOVES,
    SEARCHES,
    SESSIONS,
    TIME,
    VIEWS,
    FeatureValue,
)
from attune.operators.redis_sink import ProfileWrite, encode_value
from attune.operators.sessions import Activity
from attune.operators.user_state import UserState


def _top(counts: Mapping[str, int]) -> str | None:
    if not counts:
        return None
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def _category_counts(a: Activity, since: int) -> Counter[str]:
    """Product views per category since ``since`` (views without a category left out);
    ``Counter`` counts in C, which is most of the cost of the 7-day category features."""
    start = bisect_left(a.views.times, since)
    counts: Counter[str | None] = Counter(a.view_categories[start:] if start else a.view_categories)
    counts.pop(None, None)
    return cast("Counter[str]", counts)


def _top_category_7d(st: UserState, now: int) -> str | None:
    return _top(_category_counts(st.activity, now - 7 * DAY_MS))


def _top_category_share_7d(st: UserState, now: int) -> float:
    counts = _category_counts(st.activity, now - 7 * DAY_MS)
    total = st.activity.views.count(now - 7 * DAY_MS)
    return round(max(counts.values()) / total, 4) if counts and total else 0.0


def _priced(a: Activity, now: int) -> list[int]:
    start = bisect_left(a.views.times, now - 7 * DAY_MS)
    return [v for v in a.views.values[start:] if v >= 0]


def _premium_share(st: UserState, now: int) -> float:
    a = st.activity
    if now == a.max_time:  # the series holds exactly the 7-day window: running totals
        priced, premium = a.views_priced, a.views_premium
    else:
        window = _priced(a, now)
        priced, premium = len(window), sum(window)
    return round(premium / priced, 4) if priced else 0.0


def _priced_views(st: UserState, now: int) -> int:
    a = st.activity
    return a.views_priced if now == a.max_time else len(_priced(a, now))


def _avg_order_value(st: UserState, now: int) -> int | None:
    a = st.activity
    return a.revenue_minor // a.purchases if a.purchases else None


def _days_since(then: int | None, now: int) -> float | None:
    return None if then is None else round((now - then) / DAY_MS, 4)


_FEATURE_FNS: dict[str, Callable[[UserState, int], FeatureValue]] = {
    "events": lambda s, n: s.activity.events,
    "page_views": lambda s, n: s.activity.page_views,
    "product_views": lambda s, n: s.activity.product_views,
    "searches": lambda s, n: s.activity.searches,
    "add_to_carts": lambda s, n: s.activity.add_to_carts,
    "remove_from_carts": lambda s, n: s.activity.remove_from_carts,
    "purchases": lambda s, n: s.activity.purchases,
    "dwells": lambda s, n: s.activity.dwells,
    "revenue_minor": lambda s, n: s.activity.revenue_minor,
    "avg_order_value_minor": _avg_order_value,
    "sessions": lambda s, n: s.activity.sessions,
    "session_events": lambda s, n: s.activity.session_events,
    "session_product_views": lambda s, n: s.activity.session_product_views,
    "session_add_to_carts": lambda s, n: s.activity.session_add_to_carts,
    "session_purchases": lambda s, n: s.activity.session_purchases,
    "session_start_ms": lambda s, n: s.activity.session_start_ms,
    "session_duration_ms": lambda s, n: n - s.activity.session_start_ms,
    "product_views_1h": lambda s, n: s.activity.views.count(n - HOUR_MS),
    "product_views_24h": lambda s, n: s.activity.views.count(n - DAY_MS),
    "product_views_7d": lambda s, n: s.activity.views.count(n - 7 * DAY_MS),
    "add_to_carts_1h": lambda s, n: s.activity.carts.count(n - HOUR_MS),
    "add_to_carts_24h": lambda s, n: s.activity.carts.count(n - DAY_MS),
    "add_to_carts_7d": lambda s, n: s.activity.carts.count(n - 7 * DAY_MS),
    "purchases_7d": lambda s, n: s.activity.orders.count(n - 7 * DAY_MS),
    "purchases_30d": lambda s, n: s.activity.orders.count(n - 30 * DAY_MS),
    "revenue_30d_minor": lambda s, n: s.activity.orders.total(n - 30 * DAY_MS),
    "top_category_7d": _top_category_7d,
    "top_category_share_7d": _top_category_share_7d,
    "premium_view_share_7d": _premium_share,
    "priced_views_7d": _priced_views,
    "first_seen_ms": lambda s, n: s.activity.first_seen_ms,
    "last_seen_ms": lambda s, n: s.activity.max_time,
    "last_purchase_ms": lambda s, n: s.activity.last_purchase_ms,
    "days_since_last_purchase": lambda s, n: _days_since(s.activity.last_purchase_ms, n),
    "days_since_first_seen": lambda s, n: _days_since(s.activity.first_seen_ms, n) or 0.0,
    "cart_units": lambda s, n: sum(q for q, _ in cart_of(s).values()),
    "cart_lines": lambda s, n: len(cart_of(s)),
    "cart_value_minor": lambda s, n: sum(q * p for q, p in cart_of(s).values()),
    "dwell_total_ms": lambda s, n: s.activity.dwell_total_ms,
    "dwell_max_ms": lambda s, n: s.activity.dwell_max_ms,
    "long_dwells": lambda s, n: s.activity.long_dwells,
    "device_top": lambda s, n: _top(s.activity.devices),
    "channel_top": lambda s, n: _top(s.activity.channels),
    "propensity_score": lambda s, n: s.models.propensity,
    "propensity_tier": lambda s, n: s.models.tier,
}
assert set(_FEATURE_FNS) == set(FEATURES), set(_FEATURE_FNS) ^ set(FEATURES)


def compute(st: UserState, name: str, now: int | None = None) -> FeatureValue:
    """One feature of ``st`` at event time ``now`` (default: the user's latest event)."""
    return _FEATURE_FNS[name](st, st.activity.max_time if now is None else now)


class FeatureView(Mapping[str, FeatureValue]):
    """The features of a state at ``now``, computed on access (rules read only a few)."""

    __slots__ = ("now", "st")

    def __init__(self, st: UserState, now: int) -> None:
        self.st = st
        self.now = now

    def __getitem__(self, name: str) -> FeatureValue:
        return _FEATURE_FNS[name](self.st, self.now)

    def get(self, name: str, default: FeatureValue = None) -> FeatureValue:  # type: ignore[override]
        fn = _FEATURE_FNS.get(name)
        return default if fn is None else fn(self.st, self.now)

    def __iter__(self) -> Iterator[str]:
        return iter(_FEATURE_FNS)

    def __len__(self) -> int:
        return len(_FEATURE_FNS)


#: Features :class:`BatchView` computes on every read: the outputs stage scores the
#: propensity between reads (:func:`attune.operators.scoring.score`).
_UNCACHED: frozenset[str] = frozenset({"propensity_score", "propensity_tier"})


class BatchView(FeatureView):
    """A :class:`FeatureView` that computes each feature once: the outputs stage of a batch
    (:func:`attune.operators.user_step.fold_batch`) reads the persona vector, the propensity
    inputs and the profile from the same state, and those overlap (the cart features fold
    the cart timeline, the 7-day category features count the views). Only for reads
    between which nothing but the propensity score changes (:data:`_UNCACHED`).

    >>> from attune.operators.events import Event, EventType, ProductView
    >>> from attune.operators.sessions import PriceBands, count, place
    >>> st = UserState("u1")
    >>> view = Event("e1", EventType.PRODUCT_VIEW, 1_000, ProductView("i1", "shoes"), user_id="u1")
    >>> place(st.activity, view.event_time, gap_ms=1_800_000)
    True
    >>> count(st.activity, view, PriceBands())
    >>> batch = BatchView(st, st.max_time)
    >>> batch["top_category_7d"], batch.get("top_category_7d"), batch.get("nope", 0)
    ('shoes', 'shoes', 0)
    """

    __slots__ = ("memo",)

    def __init__(self, st: UserState, now: int) -> None:
        super().__init__(st, now)
        self.memo: dict[str, FeatureValue] = {}

    def __getitem__(self, name: str) -> FeatureValue:
        memo = self.memo
        if name in memo:
            return memo[name]
        value = _FEATURE_FNS[name](self.st, self.now)
        if name not in _UNCACHED:
            memo[name] = value
        return value

    def get(self, name: str, default: FeatureValue = None) -> FeatureValue:  # type: ignore[override]
        return self[name] if name in _FEATURE_FNS else default


#: What each kind of event changes of the features (:data:`attune.operators.features.CHANGED_BY`)
#: besides time, sessions, window trims and context; a kind not listed: all of it.
_CHANGED_BY_PAYLOAD: dict[type, int] = {
    ProductView: VIEWS,
    PageView: PAGES,
    Search: SEARCHES,
    AddToCart: CARTS | CART,
    RemoveFromCart: REMOVES | CART,
    Purchase: ORDERS | CART,
    Dwell: DWELLS,
    ConsentUpdate: 0,
    Identify: 0,
    ErasureRequest: 0,
}
_EVERY_KIND = VIEWS | PAGES | SEARCHES | CARTS | REMOVES | ORDERS | CART | DWELLS

#: What :func:`changed` compares: the latest time, sessions, first time, window lengths.
Marks = tuple[int, int, int, int, int, int, int]


def marks(a: Activity) -> Marks:
    """The marks of the activity before an event, for :func:`changed`."""
    return (
        a.max_time,
        a.sessions,
        a.session_start_ms,
        a.first_seen_ms,
        len(a.views.times),
        len(a.carts.times),
        len(a.orders.times),
    )


def changed(a: Activity, before: Marks, event: Event) -> int:
    """What ``event`` changed of the features (bits of
    :data:`~attune.operators.features.CHANGED_BY`), from the activity's :func:`marks`
    before it and the kind of event: the features a bit does not name are as they were.

    >>> from attune.operators.events import Event, EventType, ProductView
    >>> from attune.operators.features import SESSIONS, TIME, VIEWS
    >>> from attune.operators.sessions import PriceBands, count, place
    >>> a = Activity()
    >>> view = Event("e1", EventType.PRODUCT_VIEW, 1_000, ProductView("i1"), user_id="u1")
    >>> before = marks(a)
    >>> place(a, view.event_time, gap_ms=1_800_000)
    True
    >>> count(a, view, PriceBands())
    >>> bits = changed(a, before, view)
    >>> bool(bits & TIME), bool(bits & SESSIONS), bool(bits & VIEWS), bool(bits & PAGES)
    (True, True, True, False)
    """
    max_time, sessions, start, first, views, carts, orders = before
    bits = EVERY_EVENT | _CHANGED_BY_PAYLOAD.get(type(event.payload), _EVERY_KIND)
    if a.max_time != max_time:
        bits |= TIME
    if a.sessions != sessions or a.session_start_ms != start or a.first_seen_ms != first:
        bits |= SESSIONS
    if len(a.views.times) != views:
        bits |= VIEWS
    if len(a.carts.times) != carts:
        bits |= CARTS
    if len(a.orders.times) != orders:
        bits |= ORDERS
    if event.context is not None:
        bits |= CONTEXT
    return bits


#: The getters of :data:`~attune.operators.features.PROFILE_FIELDS`, in that order.
_PROFILE_FNS: tuple[tuple[str, Callable[[UserState, int], FeatureValue]], ...] = tuple(
    (name, _FEATURE_FNS[name]) for name in PROFILE_FIELDS
)


def profile_write(st: UserState, features: BatchView | None = None) -> ProfileWrite:
    """A user's Redis profile: :data:`~attune.operators.features.PROFILE_FIELDS`, latest.

    What ``ProfileWrite.from_features(user, FeatureView(st, max_time), PROFILE_FIELDS)``
    gives, with the getters called directly: once per batch of every user, the lookups
    through the view were a good part of the cost. ``features``: the batch's
    :class:`BatchView` at the latest event, whose values computed already are reused."""
    now = st.activity.max_time
    if features is not None and features.st is st and features.now == now:
        memo = features.memo
        return ProfileWrite(
            st.user_id,
            {
                name: encode_value(memo[name] if name in memo else fn(st, now))
                for name, fn in _PROFILE_FNS
            },
        )
    return ProfileWrite(st.user_id, {name: encode_value(fn(st, now)) for name, fn in _PROFILE_FNS})


def cart_of(st: UserState) -> dict[str, tuple[int, int]]:
    """The cart now: item id -> (units, unit price in minor units)."""
    return st.cart.current()
