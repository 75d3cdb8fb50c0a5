"""Each shipped rule segment is entered and exited at the right *event* (through the state)."""

from __future__ import annotations

import itertools
from typing import Any

from attune.operators.clock import DAY_MS, HOUR_MS, MINUTE_MS
from attune.operators.events import (
    AddToCart,
    Event,
    EventType,
    LineItem,
    PageView,
    ProductView,
    Purchase,
    SegmentChange,
)
from attune.operators.rule_files import load_rules
from attune.operators.sessions import PriceBands
from attune.operators.user_config import ProfileConfig
from attune.operators.user_state import UserState
from attune.operators.user_step import apply

T0 = 1_767_571_200_000
CFG = ProfileConfig(rules=load_rules(), price_bands=PriceBands({"shoes/run": 10_000}))
_ids = itertools.count()
TYPES = {
    PageView: EventType.PAGE_VIEW,
    ProductView: EventType.PRODUCT_VIEW,
    AddToCart: EventType.ADD_TO_CART,
    Purchase: EventType.PURCHASE,
}


class User:
    """Feeds events to one user's state and records the segment changes of each step."""

    def __init__(self) -> None:
        self.state = UserState("u1")
        self.log: list[tuple[int, str, str]] = []  # (step, segment, change)
        self.step = 0

    def send(self, t: int, payload: Any) -> list[tuple[str, str]]:
        event = Event(f"e{next(_ids)}", TYPES[type(payload)], T0 + t, payload, user_id="u1")
        out = apply(self.state, event, CFG)
        changes = [(o.segment, o.change) for o in out if isinstance(o, SegmentChange)]
        self.log += [(self.step, seg, ch) for seg, ch in changes]
        self.step += 1
        return changes

    def steps(self, segment: str) -> list[tuple[int, str]]:
        return [(step, ch) for step, seg, ch in self.log if seg == segment]


def order(total: int, t: int) -> Purchase:
    return Purchase(f"o{t}", (LineItem("i1", 1, total),), total, "EUR")


def test_new_visitor_until_the_second_session() -> None:
    u = User()
    u.send(0, PageView())
    u.send(5 * MINUTE_MS, PageView())
    u.send(2 * HOUR_MS, PageView())  # a new session
    assert u.steps("new_visitor") == [(0, "ENTERED"), (2, "EXITED")]


def test_interested_but_hesitant_from_the_sixth_view_to_the_purchase() -> None:
    u = User()
    u.send(0, AddToCart("i1", 1, 1000, "EUR"))
    for i in range(6):
        u.send((i + 1) * MINUTE_MS, ProductView(f"i{i}"))
    u.send(10 * MINUTE_MS, order(1000, 1))
    # more than 5 views in the session with a cart and no purchase: entered at the 6th view
    assert u.steps("interested_but_hesitant") == [(6, "ENTERED"), (7, "EXITED")]


def test_interested_but_hesitant_ends_with_the_session() -> None:
    u = User()
    u.send(0, AddToCart("i1", 1, 1000, "EUR"))
    for i in range(6):
        u.send((i + 1) * MINUTE_MS, ProductView(f"i{i}"))
    u.send(3 * HOUR_MS, PageView())  # next session: its counters start from zero
    assert u.steps("interested_but_hesitant") == [(6, "ENTERED"), (7, "EXITED")]


def test_frequent_buyer_at_the_third_order_in_30_days_until_one_leaves_the_window() -> None:
    u = User()
    for d in (0, 2, 4):
        u.send(d * DAY_MS, order(1000, d))
    u.send(31 * DAY_MS, PageView())  # the order of day 0 left the 30-day window
    assert u.steps("frequent_buyer") == [(2, "ENTERED"), (3, "EXITED")]


def test_high_value_at_500_eur_in_30_days() -> None:
    u = User()
    u.send(0, order(30_000, 0))
    u.send(DAY_MS, order(20_000, 1))
    u.send(32 * DAY_MS, PageView())
    assert u.steps("high_value") == [(1, "ENTERED"), (2, "EXITED")]


def test_lapsed_after_30_days_without_an_order_until_the_next_one() -> None:
    u = User()
    u.send(0, order(1000, 0))
    u.send(29 * DAY_MS, PageView())
    u.send(30 * DAY_MS, PageView())
    u.send(30 * DAY_MS + MINUTE_MS, order(1000, 30))
    assert u.steps("lapsed") == [(2, "ENTERED"), (3, "EXITED")]


def test_browsing_premium_while_most_recent_views_are_top_band() -> None:
    u = User()
    for i in range(5):  # five views at or above the category's top-band price
        u.send(i * MINUTE_MS, ProductView(f"p{i}", "shoes/run", 12_000, "EUR"))
    for i in range(3):  # cheaper views: 5 of 8 = 0.625 still >= 0.6, then 5 of 9 < 0.6
        u.send((10 + i) * MINUTE_MS, ProductView(f"c{i}", "shoes/run", 2_000, "EUR"))
    u.send(20 * MINUTE_MS, ProductView("c9", "shoes/run", 2_000, "EUR"))
    assert u.steps("browsing_premium") == [(4, "ENTERED"), (8, "EXITED")]
