"""The user's activity: sessions by the inactivity gap, lifetime counts, windows, dwell.

The sessions-and-windows stage of the per-user step (:mod:`attune.operators.user_step`),
after the privacy gate and before the cart. It owns :class:`Activity`, the slice of the
user's state most features (:mod:`attune.operators.profiles`) are read from: when the
user was first and last seen, the session intervals, lifetime and per-session counts,
windowed series of product views (with the catalogue's price band), adds to cart and
orders, dwell per page, and device and channel tallies.

Order does not matter. Everything is event time, and "now" for a user is the latest event
time placed (``max_time``). Sessions are kept as sorted ``(start, end)`` intervals
(:func:`place_in_sessions`), so an event joins, extends, bridges (two sessions become
one) or opens a session by the gap rule whatever the arrival order; windowed counts are
over sorted series.

Bounded. Series keep 30 days (7 for views) and at most :data:`MAX_SERIES` entries; the
latest :data:`MAX_SESSIONS` session intervals are kept (an event older than all of them
opens a session of its own); dwell keeps the latest :data:`MAX_DWELL_PAGES` pages and the
tallies :data:`MAX_TALLY_KEYS` keys.

>>> from attune.operators.events import Event, EventType, ProductView
>>> a = Activity()
>>> [place(a, t, gap_ms=1_800_000) for t in (0, 60_000, 7_200_000)]
[True, False, True]
>>> count(a, Event("e1", EventType.PRODUCT_VIEW, 7_200_000, ProductView("i1"), "u1"), PriceBands())
>>> a.sessions, a.session_start_ms, a.product_views, a.views.count(0)
(2, 7200000, 1, 1)
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from attune.operators.clock import DAY_MS
from attune.operators.events import (
    AddToCart,
    Context,
    Dwell,
    Event,
    ItemUpdate,
    PageView,
    ProductView,
    Purchase,
    RemoveFromCart,
    Search,
)

MAX_SESSIONS = 128
MAX_SERIES = 2000
MAX_TALLY_KEYS = 8
MAX_DWELL_PAGES = 16
LONG_DWELL_MS = 30_000

#: Where an event time fell among session intervals (:func:`place_in_sessions`).
JOINED, BRIDGED, NEW_EARLIER, NEW_LATEST = range(4)


def place_in_sessions(starts: list[int], ends: list[int], t: int, gap_ms: int, cap: int) -> int:
    """Place event time ``t`` among sorted session intervals by the gap rule, in any
    arrival order: it joins or extends one (``JOINED``), bridges two into one
    (``BRIDGED``), or opens a session (``NEW_LATEST`` when it is the latest, else
    ``NEW_EARLIER``). At most ``cap`` intervals are kept (the oldest go).

    >>> starts, ends = [], []
    >>> [place_in_sessions(starts, ends, t, 10, 8) for t in (0, 5, 30, 50, 40, 20, -50)]
    [3, 0, 3, 3, 1, 0, 2]
    >>> starts, ends
    ([-50, 0, 20], [-50, 5, 50])
    """
    if starts and t >= starts[-1] and t - ends[-1] <= gap_ms:  # most events: the latest
        ends[-1] = max(ends[-1], t)
        return JOINED
    i = bisect_right(starts, t)  # sessions [0, i) start at or before t
    joins_left = i > 0 and t - ends[i - 1] <= gap_ms
    joins_right = i < len(starts) and starts[i] - t <= gap_ms
    if joins_left and joins_right:
        ends[i - 1] = ends[i]
        del starts[i], ends[i]
        return BRIDGED
    if joins_left:
        ends[i - 1] = max(ends[i - 1], t)
        return JOINED
    if joins_right:
        starts[i] = t
        return JOINED
    latest = i == len(starts)
    starts.insert(i, t)
    ends.insert(i, t)
    if len(starts) > cap:
        del starts[0], ends[0]
    return NEW_LATEST if latest else NEW_EARLIER


@dataclass(frozen=True, slots=True)
class PriceBands:
    """The price from which an item is in the top band of its category (catalogue quantile)."""

    thresholds: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_items(cls, items: Iterable[ItemUpdate], quantile: float = 0.8) -> PriceBands:
        """Thresholds at ``quantile`` of each category's latest item prices."""
        latest: dict[str, ItemUpdate] = {}
        for item in items:
            latest[item.item_id] = item
        prices: dict[str, list[int]] = {}
        for item in latest.values():
            prices.setdefault("/".join(item.category_path), []).append(item.price_minor)
        out = {}
        for cat, ps in prices.items():
            ps.sort()
            out[cat] = ps[min(len(ps) - 1, int(quantile * len(ps)))]
        return cls(out)

    def is_premium(self, category: str | None, price_minor: int | None) -> bool | None:
        """``None`` when the category or price is unknown."""
        if category is None or price_minor is None:
            return None
        threshold = self.thresholds.get(category)
        return None if threshold is None else price_minor >= threshold


@dataclass(slots=True)
class Series:
    """Event times (sorted) with a parallel value, bounded; windowed sums by bisect."""

    times: list[int] = field(default_factory=list)
    values: list[int] = field(default_factory=list)

    def add(self, t: int, value: int = 1) -> int | None:
        """Insert in time order; returns the value of the oldest entry if the cap dropped it."""
        if not self.times or t >= self.times[-1]:
            self.times.append(t)
            self.values.append(value)
        else:
            i = bisect_right(self.times, t)
            self.times.insert(i, t)
            self.values.insert(i, value)
        if len(self.times) > MAX_SERIES:
            del self.times[0]
            return self.values.pop(0)
        return None

    def trim(self, before: int) -> int:
        """Drop entries older than ``before``; returns how many went."""
        n = bisect_left(self.times, before)
        if n:
            del self.times[:n]
            del self.values[:n]
        return n

    def count(self, since: int) -> int:
        return len(self.times) - bisect_left(self.times, since)

    def total(self, since: int) -> int:
        return sum(self.values[bisect_left(self.times, since) :])


@dataclass(slots=True)
class Activity:
    """The user's activity in event time. Pickles; bounded (see the module docstring)."""

    max_time: int = 0  # the latest event time placed: the user's "now"
    first_seen_ms: int = 0
    # lifetime counts
    events: int = 0
    page_views: int = 0
    product_views: int = 0
    searches: int = 0
    add_to_carts: int = 0
    remove_from_carts: int = 0
    purchases: int = 0
    dwells: int = 0
    revenue_minor: int = 0
    last_purchase_ms: int | None = None
    # sessions: the latest session intervals, sorted, separated by more than the gap
    sessions: int = 0
    session_starts: list[int] = field(default_factory=list)
    session_ends: list[int] = field(default_factory=list)
    session_start_ms: int = 0
    session_events: int = 0
    session_product_views: int = 0
    session_add_to_carts: int = 0
    session_purchases: int = 0
    # windows (event time)
    views: Series = field(default_factory=Series)  # value: 1 premium / 0 not / -1 unknown
    view_categories: list[str | None] = field(default_factory=list)  # parallel to views
    views_priced: int = 0  # entries of views with a known band (value >= 0)
    views_premium: int = 0  # entries of views in the top band (value == 1)
    carts: Series = field(default_factory=Series)
    orders: Series = field(default_factory=Series)  # value: order total
    # dwell: page view id -> max dwell seen
    dwell_pages: dict[str, int] = field(default_factory=dict)
    dwell_total_ms: int = 0
    dwell_max_ms: int = 0
    long_dwells: int = 0
    devices: dict[str, int] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)


def ends_latest(a: Activity, t: int, gap_ms: int) -> bool:
    """Whether event time ``t`` opens a session after the latest one, which is so over (a
    session boundary: the models summarise it, the persona learner gets a vector)."""
    return bool(a.session_ends) and t - a.session_ends[-1] > gap_ms


def place(a: Activity, t: int, gap_ms: int) -> bool:
    """Place event time ``t`` on the user's timeline: first seen, sessions (the gap rule, in
    any arrival order), the latest time. Returns whether ``t`` opened a new latest session.
    """
    if not a.events or t < a.first_seen_ms:
        a.first_seen_ms = t
    placed = place_in_sessions(a.session_starts, a.session_ends, t, gap_ms, MAX_SESSIONS)
    if placed == BRIDGED:
        a.sessions -= 1
    elif placed != JOINED:
        a.sessions += 1
    if placed == NEW_LATEST:
        a.session_events = 0
        a.session_product_views = 0
        a.session_add_to_carts = 0
        a.session_purchases = 0
    a.session_start_ms = a.session_starts[-1]
    a.max_time = max(a.max_time, t)
    return placed == NEW_LATEST


def in_current_session(a: Activity, t: int) -> bool:
    """Whether event time ``t`` is in the latest session."""
    return t >= a.session_start_ms


def count(a: Activity, event: Event, bands: PriceBands) -> None:
    """Count a placed event: lifetime and session counts, windows, dwell, tallies; then
    trim the windows to their horizon."""
    t = event.event_time
    a.events += 1
    current = t >= a.session_start_ms  # in_current_session
    if current:
        a.session_events += 1
    ctx = event.context
    if ctx is not None:
        _tally_context(a, ctx)
    p = event.payload
    if isinstance(p, ProductView):
        a.product_views += 1
        if current:
            a.session_product_views += 1
        premium = bands.is_premium(p.category, p.price_minor)
        _add_view(a, t, -1 if premium is None else int(premium), p.category)
    elif isinstance(p, Dwell):
        _count_dwell(a, p)
    elif isinstance(p, PageView):
        a.page_views += 1
    elif isinstance(p, Search):
        a.searches += 1
    elif isinstance(p, AddToCart):
        a.add_to_carts += 1
        if current:
            a.session_add_to_carts += 1
        a.carts.add(t)
    elif isinstance(p, RemoveFromCart):
        a.remove_from_carts += 1
    elif isinstance(p, Purchase):
        _count_purchase(a, p, t, current)
    _trim(a)


def _tally_context(a: Activity, ctx: Context) -> None:
    device, channel = ctx.device, ctx.channel
    if device is not None:
        devices = a.devices
        if device in devices:
            devices[device] += 1
        elif len(devices) < MAX_TALLY_KEYS:
            devices[device] = 1
    if channel is not None:
        channels = a.channels
        if channel in channels:
            channels[channel] += 1
        elif len(channels) < MAX_TALLY_KEYS:
            channels[channel] = 1


def _count_purchase(a: Activity, p: Purchase, t: int, current: bool) -> None:
    a.purchases += 1
    if current:
        a.session_purchases += 1
    a.revenue_minor += p.total_minor
    a.orders.add(t, p.total_minor)
    if a.last_purchase_ms is None or t > a.last_purchase_ms:
        a.last_purchase_ms = t


def _count_dwell(a: Activity, p: Dwell) -> None:
    """A dwell event reports the time so far on a page: count only its growth."""
    a.dwells += 1
    page = p.page_view_id or p.item_id or ""
    before = a.dwell_pages.get(page, 0)
    if p.dwell_ms > before:
        a.dwell_total_ms += p.dwell_ms - before
        a.dwell_pages[page] = p.dwell_ms
        if before <= LONG_DWELL_MS < p.dwell_ms:
            a.long_dwells += 1
        if len(a.dwell_pages) > MAX_DWELL_PAGES:
            del a.dwell_pages[next(iter(a.dwell_pages))]
    a.dwell_max_ms = max(a.dwell_max_ms, p.dwell_ms)


def _add_view(a: Activity, t: int, premium: int, category: str | None) -> None:
    views = a.views
    if not views.times or t >= views.times[-1]:
        a.view_categories.append(category)
    else:
        a.view_categories.insert(bisect_right(views.times, t), category)
    dropped = views.add(t, premium)
    if premium >= 0:
        a.views_priced += 1
        a.views_premium += premium
    if dropped is not None:  # the series hit its cap and dropped its oldest entry
        del a.view_categories[0]
        _forget_views(a, (dropped,))


def _forget_views(a: Activity, values: Iterable[int]) -> None:
    for v in values:
        if v >= 0:
            a.views_priced -= 1
            a.views_premium -= v


def _trim(a: Activity) -> None:
    now = a.max_time
    week = now - 7 * DAY_MS
    times = a.views.times
    if times and times[0] < week:  # something to drop (most events: nothing)
        n = bisect_left(times, week)
        _forget_views(a, a.views.values[:n])
        a.views.trim(week)
        del a.view_categories[:n]
    times = a.carts.times
    if times and times[0] < week:
        a.carts.trim(week)
    times = a.orders.times
    if times and times[0] < now - 30 * DAY_MS:
        a.orders.trim(now - 30 * DAY_MS)
