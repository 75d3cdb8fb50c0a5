"""The per-user features: names, types and meaning, shared by profiles, segments and Redis.

The feature view (:mod:`attune.operators.profiles`) computes these features of a user's
state at a point in event time ``now_ms`` (the user's latest event, or a timer). Rule segments
(:mod:`attune.operators.segments`) are conditions over them; the profile written to
Redis is a documented subset (:data:`PROFILE_FIELDS`). Windowed counts are over
event time: ``_1h``, ``_24h``, ``_7d``, ``_30d`` end at ``now_ms``.

``None`` means "not known yet" (e.g. no purchase, so no days since one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

FeatureValue = int | float | str | None
Features = Mapping[str, FeatureValue]

#: name -> (type, meaning). The single list of feature names; tests check that
#: the state computes exactly these.
FEATURES: dict[str, tuple[str, str]] = {
    "events": ("int", "distinct events applied (after dedupe, lateness and consent)"),
    "page_views": ("int", "page views, lifetime"),
    "product_views": ("int", "product views, lifetime"),
    "searches": ("int", "searches, lifetime"),
    "add_to_carts": ("int", "add-to-cart events, lifetime"),
    "remove_from_carts": ("int", "remove-from-cart events, lifetime"),
    "purchases": ("int", "orders, lifetime"),
    "dwells": ("int", "dwell heartbeats, lifetime"),
    "revenue_minor": ("int", "sum of order totals, minor units, lifetime"),
    "avg_order_value_minor": ("int|None", "revenue_minor // purchases"),
    "sessions": ("int", "sessions (30-minute inactivity gap), lifetime"),
    "session_events": ("int", "events in the current session"),
    "session_product_views": ("int", "product views in the current session"),
    "session_add_to_carts": ("int", "add-to-carts in the current session"),
    "session_purchases": ("int", "orders in the current session"),
    "session_start_ms": ("int", "event time the current session started"),
    "session_duration_ms": ("int", "now_ms - session_start_ms"),
    "product_views_1h": ("int", "product views in the last hour"),
    "product_views_24h": ("int", "product views in the last 24 hours"),
    "product_views_7d": ("int", "product views in the last 7 days"),
    "add_to_carts_1h": ("int", "add-to-carts in the last hour"),
    "add_to_carts_24h": ("int", "add-to-carts in the last 24 hours"),
    "add_to_carts_7d": ("int", "add-to-carts in the last 7 days"),
    "purchases_7d": ("int", "orders in the last 7 days"),
    "purchases_30d": ("int", "orders in the last 30 days"),
    "revenue_30d_minor": ("int", "order totals in the last 30 days, minor units"),
    "top_category_7d": ("str|None", "category with most product views in the last 7 days"),
    "top_category_share_7d": ("float", "share of 7-day product views in top_category_7d"),
    "premium_view_share_7d": (
        "float",
        "share of 7-day priced product views in the top price band of their category",
    ),
    "priced_views_7d": ("int", "7-day product views that carried a price and category"),
    "first_seen_ms": ("int", "event time of the first event"),
    "last_seen_ms": ("int", "event time of the latest event"),
    "last_purchase_ms": ("int|None", "event time of the latest order"),
    "days_since_last_purchase": ("float|None", "(now_ms - last_purchase_ms) in days"),
    "days_since_first_seen": ("float", "(now_ms - first_seen_ms) in days"),
    "cart_units": ("int", "units in the cart now"),
    "cart_lines": ("int", "distinct items in the cart now"),
    "cart_value_minor": ("int", "value of the cart now, minor units"),
    "dwell_total_ms": ("int", "summed final dwell time of product pages"),
    "dwell_max_ms": ("int", "longest dwell on one page"),
    "long_dwells": ("int", "page views with dwell > 30 s"),
    "device_top": ("str|None", "most used device class"),
    "channel_top": ("str|None", "most used channel"),
    "propensity_score": (
        "float|None",
        "P(the current session ends in a purchase), from the latest published propensity "
        "model, scored after the user's latest batch of events",
    ),
    "propensity_tier": ("str|None", "high (score >= 0.5), medium (>= 0.2) or low"),
}

# --- what an event can change --------------------------------------------------------------------
# Rule segments are evaluated after every event (docs/segments.md); a segment is evaluated
# again only when an event changed something one of its features reads. The parts of a
# user's state an event can change, as bits (the per-user step works out which of them an
# event changed: :func:`attune.operators.profiles.changed`):

TIME = 1 << 0  #: the user's "now" (latest event time) moved
SESSIONS = 1 << 1  #: the session intervals, the current session or the first event time
VIEWS = 1 << 2  #: product views: one more, or the 7-day window dropped some
CARTS = 1 << 3  #: adds to cart: one more, or the 7-day window dropped some
ORDERS = 1 << 4  #: orders: one more, or the 30-day window dropped some
CART = 1 << 5  #: the cart's timeline (an add, a remove or an order)
PAGES = 1 << 6  #: page views
SEARCHES = 1 << 7  #: searches
REMOVES = 1 << 8  #: removes from cart
DWELLS = 1 << 9  #: dwell heartbeats
CONTEXT = 1 << 10  #: the device and channel tallies
EVERY_EVENT = 1 << 11  #: changes with every event, or between events (the models' scores)
EVERYTHING = (1 << 12) - 1

#: Feature name -> the bits of what can change it (evaluated at the latest event time:
#: the windows of ``VIEWS``, ``CARTS`` and ``ORDERS`` are trimmed to that time, so a window
#: as long as its series' horizon changes only with them; shorter ones move with ``TIME``).
CHANGED_BY: dict[str, int] = {
    "events": EVERY_EVENT,
    "page_views": PAGES,
    "product_views": VIEWS,
    "searches": SEARCHES,
    "add_to_carts": CARTS,
    "remove_from_carts": REMOVES,
    "purchases": ORDERS,
    "dwells": DWELLS,
    "revenue_minor": ORDERS,
    "avg_order_value_minor": ORDERS,
    "sessions": SESSIONS,
    "session_events": EVERY_EVENT,
    "session_product_views": SESSIONS | VIEWS,
    "session_add_to_carts": SESSIONS | CARTS,
    "session_purchases": SESSIONS | ORDERS,
    "session_start_ms": SESSIONS,
    "session_duration_ms": SESSIONS | TIME,
    "product_views_1h": VIEWS | TIME,
    "product_views_24h": VIEWS | TIME,
    "product_views_7d": VIEWS,
    "add_to_carts_1h": CARTS | TIME,
    "add_to_carts_24h": CARTS | TIME,
    "add_to_carts_7d": CARTS,
    "purchases_7d": ORDERS | TIME,
    "purchases_30d": ORDERS,
    "revenue_30d_minor": ORDERS,
    "top_category_7d": VIEWS,
    "top_category_share_7d": VIEWS,
    "premium_view_share_7d": VIEWS,
    "priced_views_7d": VIEWS,
    "first_seen_ms": SESSIONS,
    "last_seen_ms": TIME,
    "last_purchase_ms": ORDERS,
    "days_since_last_purchase": ORDERS | TIME,
    "days_since_first_seen": SESSIONS | TIME,
    "cart_units": CART,
    "cart_lines": CART,
    "cart_value_minor": CART,
    "dwell_total_ms": DWELLS,
    "dwell_max_ms": DWELLS,
    "long_dwells": DWELLS,
    "device_top": CONTEXT,
    "channel_top": CONTEXT,
    "propensity_score": EVERY_EVENT,  # scored once per batch, between events
    "propensity_tier": EVERY_EVENT,
}
assert set(CHANGED_BY) == set(FEATURES), set(CHANGED_BY) ^ set(FEATURES)


def change_bits(names: Iterable[str]) -> int:
    """The bits of what can change any of the features ``names`` (every bit for a name
    that is not a feature).

    >>> change_bits(["purchases_30d", "sessions"]) == ORDERS | SESSIONS
    True
    """
    bits = 0
    for name in names:
        bits |= CHANGED_BY.get(name, EVERYTHING)
    return bits


#: Features written to the user's Redis profile string (compact: Redis memory is
#: budgeted at ~400 bytes per user for all of a user's keys).
PROFILE_FIELDS: tuple[str, ...] = (
    "events",
    "page_views",
    "product_views",
    "searches",
    "add_to_carts",
    "purchases",
    "revenue_minor",
    "sessions",
    "first_seen_ms",
    "last_seen_ms",
    "last_purchase_ms",
    "cart_value_minor",
    "top_category_7d",
    "device_top",
    "propensity_score",
    "propensity_tier",
)
