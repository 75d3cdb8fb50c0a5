"""The per-user features: names, types and meaning, shared by profiles, segments and Redis.

The feature view (:mod:`attune.operators.profiles`) computes these features of a user's
state at a point in event time ``now_ms`` (the user's latest event, or a timer). Rule segments
(:mod:`attune.operators.segments`) are conditions over them; the profile written to
Redis is a documented subset (:data:`PROFILE_FIELDS`). Windowed counts are over
event time: ``_1h``, ``_24h``, ``_7d``, ``_30d`` end at ``now_ms``.

``None`` means "not known yet" (e.g. no purchase, so no days since one).
"""

from __future__ import annotations

from collections.abc import Mapping

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

#: Features written to the user's Redis profile hash (compact: Redis memory is
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
