"""Per-user state and identity stitching: step functions, without Bytewax."""

from __future__ import annotations

import itertools
import pickle
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from attune.operators.clock import DAY_MS, HOUR_MS, MINUTE_MS
from attune.operators.events import (
    AddToCart,
    Dwell,
    ErasureRequest,
    Event,
    EventType,
    Identify,
    LineItem,
    PageView,
    ProductView,
    Purchase,
    RemoveFromCart,
    SegmentChange,
)
from attune.operators.features import FEATURES, PROFILE_FIELDS
from attune.operators.identity import (
    MAX_ANONYMOUS_BUFFER,
    Forget,
    HandedOver,
    Link,
    buffered,
    identity_step,
    link_of,
)
from attune.operators.profiles import cart_of, compute, profile_write
from attune.operators.redis_sink import AliasWrite, ForgetUser, ProfileWrite, SegmentsWrite
from attune.operators.rule_files import load_rules
from attune.operators.sessions import PriceBands
from attune.operators.user_config import ProfileConfig
from attune.operators.user_state import UserState
from attune.operators.user_step import apply

T0 = 1_767_571_200_000
GAP = 30 * MINUTE_MS
_ids = itertools.count()


def ev(t: int, payload: Any = None, user: str | None = "u1", anon: str | None = None) -> Event:
    payload = payload or PageView()
    etype = {
        PageView: EventType.PAGE_VIEW,
        ProductView: EventType.PRODUCT_VIEW,
        AddToCart: EventType.ADD_TO_CART,
        RemoveFromCart: EventType.REMOVE_FROM_CART,
        Purchase: EventType.PURCHASE,
        Dwell: EventType.DWELL,
        Identify: EventType.IDENTIFY,
        ErasureRequest: EventType.ERASURE,
    }[type(payload)]
    return Event(f"e{next(_ids)}", etype, t, payload, user_id=user, anonymous_id=anon)


def naive_sessions(times: list[int]) -> int:
    ts = sorted(times)
    return 1 + sum(1 for a, b in itertools.pairwise(ts) if b - a > GAP) if ts else 0


# --- sessions --------------------------------------------------------------------------------


def test_sessions_by_inactivity_gap() -> None:
    s = UserState("u1")
    cfg = ProfileConfig()
    for t in (0, 10 * MINUTE_MS, 45 * MINUTE_MS, 50 * MINUTE_MS, 3 * HOUR_MS):
        apply(s, ev(T0 + t), cfg)
    assert s.sessions == 3
    assert s.session_start_ms == T0 + 3 * HOUR_MS
    assert s.session_events == 1


def test_a_late_event_can_bridge_two_sessions() -> None:
    s = UserState("u1")
    cfg = ProfileConfig()
    apply(s, ev(T0), cfg)
    apply(s, ev(T0 + 50 * MINUTE_MS), cfg)
    assert s.sessions == 2
    apply(s, ev(T0 + 25 * MINUTE_MS), cfg)  # within 30 min of both neighbours
    assert s.sessions == 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 5 * DAY_MS), min_size=1, max_size=60),
    st.randoms(use_true_random=False),
)
def test_sessions_are_exact_in_any_arrival_order(times: list[int], rnd: random.Random) -> None:
    """The session count equals the gap rule over sorted times, whatever the order."""
    order = list(times)
    rnd.shuffle(order)
    s = UserState("u1")
    cfg = ProfileConfig()
    for t in order:
        apply(s, ev(T0 + t), cfg)
    assert s.sessions == naive_sessions(times)


# --- dedupe, counts, cart, windows -----------------------------------------------------------


def test_duplicates_are_counted_once() -> None:
    s = UserState("u1")
    cfg = ProfileConfig()
    e = ev(T0, ProductView("i1"))
    assert apply(s, e, cfg) == []
    apply(s, e, cfg)
    assert (s.product_views, s.events, s.duplicates) == (1, 1, 1)


def test_cart_and_purchase() -> None:
    s = UserState("u1")
    cfg = ProfileConfig()
    apply(s, ev(T0, AddToCart("i1", 2, 1000, "EUR")), cfg)
    apply(s, ev(T0 + 1000, AddToCart("i2", 1, 500, "EUR")), cfg)
    apply(s, ev(T0 + 2000, RemoveFromCart("i1", 1)), cfg)
    assert compute(s, "cart_value_minor") == 1500
    assert compute(s, "cart_units") == 2
    lines = (LineItem("i1", 1, 1000), LineItem("i2", 1, 500))
    apply(s, ev(T0 + 3000, Purchase("o1", lines, 1500, "EUR")), cfg)
    assert compute(s, "cart_value_minor") == 0
    assert (s.purchases, s.revenue_minor, s.last_purchase_ms) == (1, 1500, T0 + 3000)
    # an add that happened before the purchase but arrives after it is not in the cart
    apply(s, ev(T0 + 2500, AddToCart("i3", 1, 700, "EUR")), cfg)
    assert compute(s, "cart_value_minor") == 0
    assert s.add_to_carts == 3


cart_events = st.lists(
    st.tuples(
        st.integers(1, 10**6),
        st.sampled_from(["add", "add", "remove", "purchase"]),
        st.sampled_from(["i1", "i2", "i3"]),
        st.integers(1, 3),
    ),
    max_size=40,
    unique_by=lambda x: x[0],
)


@settings(max_examples=200, deadline=None)
@given(cart_events, st.randoms(use_true_random=False))
def test_the_cart_does_not_depend_on_arrival_order(
    ops: list[tuple[int, str, str, int]], rnd: random.Random
) -> None:
    def run(order: list[tuple[int, str, str, int]]) -> dict[str, tuple[int, int]]:
        s = UserState("u1")
        cfg = ProfileConfig()
        for t, kind, item, q in order:
            payload: Any = {
                "add": AddToCart(item, q, 100 * q, "EUR"),
                "remove": RemoveFromCart(item, q),
                "purchase": Purchase(f"o{t}", (LineItem(item, 1, 1),), 1, "EUR"),
            }[kind]
            e = ev(T0 + t, payload)
            apply(s, Event(f"x{t}", e.event_type, e.event_time, e.payload, user_id="u1"), cfg)
        return cart_of(s)

    shuffled = list(ops)
    rnd.shuffle(shuffled)
    assert run(shuffled) == run(sorted(ops))


def test_windows_slide_with_event_time() -> None:
    s = UserState("u1")
    cfg = ProfileConfig()
    for h in (0, 1, 2, 30):
        apply(s, ev(T0 + h * HOUR_MS, ProductView("i", "shoes/running")), cfg)
    assert compute(s, "product_views_1h") == 1
    assert compute(s, "product_views_24h") == 1
    assert compute(s, "product_views_7d") == 4
    apply(s, ev(T0 + 9 * DAY_MS), cfg)  # everything older than 7 days leaves the window
    assert compute(s, "product_views_7d") == 0
    assert compute(s, "top_category_7d") is None
    assert s.product_views == 4


def test_premium_share_and_top_category() -> None:
    bands = PriceBands({"shoes/running": 10_000, "books/kids": 2_000})
    s = UserState("u1")
    cfg = ProfileConfig(price_bands=bands)
    for price, cat in ((12_000, "shoes/running"), (15_000, "shoes/running"), (500, "books/kids")):
        apply(s, ev(T0, ProductView("i", cat, price, "EUR")), cfg)
    apply(s, ev(T0, ProductView("i", "unknown/cat", 5, "EUR")), cfg)
    assert compute(s, "priced_views_7d") == 3
    assert compute(s, "premium_view_share_7d") == round(2 / 3, 4)
    assert compute(s, "top_category_7d") == "shoes/running"


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 12 * DAY_MS), st.sampled_from([None, 50, 5_000, 20_000])),
        max_size=60,
    ),
    st.randoms(use_true_random=False),
)
def test_running_view_totals_equal_a_recount(
    views: list[tuple[int, int | None]], rnd: random.Random
) -> None:
    bands = PriceBands({"a/b": 10_000})
    s = UserState("u1")
    cfg = ProfileConfig(price_bands=bands)
    order = list(views)
    rnd.shuffle(order)
    for t, price in order:
        apply(s, ev(T0 + t, ProductView("i", "a/b", price, "EUR")), cfg)
    now = s.max_time
    window = [p for t, p in views if T0 + t >= now - 7 * DAY_MS and p is not None]
    assert compute(s, "priced_views_7d") == len(window)
    premium = sum(1 for p in window if p >= 10_000)
    assert compute(s, "premium_view_share_7d") == (
        round(premium / len(window), 4) if window else 0.0
    )


def test_dwell_counts_each_page_once() -> None:
    s = UserState("u1")
    cfg = ProfileConfig()
    for ms in (10_000, 20_000, 30_000, 40_000):
        apply(s, ev(T0 + ms, Dwell(ms, "i1", "pv1")), cfg)
    apply(s, ev(T0 + 50_000, Dwell(10_000, "i2", "pv2")), cfg)
    assert (s.dwell_total_ms, s.dwell_max_ms, s.long_dwells) == (50_000, 40_000, 1)


def test_price_bands_from_catalogue() -> None:
    from attune.operators.events import ItemUpdate

    items = [
        ItemUpdate(f"i{p}", "x", ("a", "b"), p, "EUR", True, T0, T0) for p in range(100, 1000, 100)
    ]
    bands = PriceBands.from_items(items, 2 / 3)
    assert bands.thresholds == {"a/b": 700}
    assert bands.is_premium("a/b", 700) is True
    assert bands.is_premium("a/b", 600) is False
    assert bands.is_premium("x/y", 600) is None


def test_every_feature_is_computed_and_the_profile_is_the_documented_subset() -> None:
    s = UserState("u1")
    apply(s, ev(T0, ProductView("i1", "a/b", 100, "EUR")), ProfileConfig())
    assert {name: compute(s, name) for name in FEATURES}.keys() == FEATURES.keys()
    write = profile_write(s)
    assert tuple(write.fields) == PROFILE_FIELDS
    assert write.fields["product_views"] == "1" and write.fields["last_purchase_ms"] == ""


def test_state_pickles() -> None:
    s = UserState("u1")
    cfg = ProfileConfig(rules=load_rules())
    for i in range(20):
        apply(s, ev(T0 + i * MINUTE_MS, ProductView(f"i{i}", "a/b", 100, "EUR")), cfg)
    again = pickle.loads(pickle.dumps(s))
    assert again == s


# --- segments and erasure --------------------------------------------------------------------


def test_segment_changes_are_emitted_at_the_event_that_causes_them() -> None:
    s = UserState("u1")
    cfg = ProfileConfig(rules=load_rules())
    first = apply(s, ev(T0, PageView()), cfg)
    changes = [o for o in first if isinstance(o, SegmentChange)]
    assert [(c.segment, c.change) for c in changes] == [("new_visitor", "ENTERED")]
    assert SegmentsWrite("u1", ("new_visitor",), ()) in first
    apply(s, ev(T0 + MINUTE_MS, AddToCart("i1", 1, 100, "EUR")), cfg)
    outs = [apply(s, ev(T0 + (2 + i) * MINUTE_MS, ProductView(f"i{i}")), cfg) for i in range(6)]
    entered_at = [
        i
        for i, out in enumerate(outs)
        if any(isinstance(o, SegmentChange) and o.segment == "interested_but_hesitant" for o in out)
    ]
    assert entered_at == [5]  # the sixth product view of the session
    assert "interested_but_hesitant" in s.segments


def test_erasure_forgets_the_user_everywhere() -> None:
    s = UserState("u1")
    cfg = ProfileConfig(rules=load_rules())
    apply(s, ev(T0), cfg)
    out = apply(s, ev(T0 + 1, ErasureRequest("r1")), cfg)
    assert s.erased_at == T0 + 1
    assert ForgetUser("u1", ("new_visitor",)) in out
    assert any(isinstance(o, SegmentChange) and o.change == "EXITED" for o in out)


def test_history_arriving_after_an_erasure_is_dropped_later_events_start_fresh() -> None:
    from attune.operators.user_logic import UserLogic

    logic = UserLogic(None, ProfileConfig(rules=load_rules()))
    logic.on_batch([("u1", ev(T0 + HOUR_MS, ProductView("i1")))])
    out, keep = logic.on_batch([("u1", ev(T0 + 2 * HOUR_MS, ErasureRequest("r1")))])
    assert keep is False  # retained as a tombstone
    assert logic.state is not None and logic.state.events == 0
    assert not any(isinstance(o, ProfileWrite) for o in out)
    # anonymous history handed over late, from before the erasure: dropped, nothing written
    out, _ = logic.on_batch(
        [("u1", ev(T0 + 30 * MINUTE_MS, ProductView("i2"), user=None, anon="a1"))]
    )
    assert out == [] and logic.state.events == 0
    # a later visit is a new user
    out, _ = logic.on_batch([("u1", ev(T0 + DAY_MS, PageView()))])
    (profile,) = [o for o in out if isinstance(o, ProfileWrite)]
    assert profile.fields["events"] == "1"


# --- identity --------------------------------------------------------------------------------


def test_link_hands_anonymous_history_to_the_user_once() -> None:
    anon_events = [ev(T0 + i, ProductView(f"i{i}"), user=None, anon="a1") for i in range(3)]
    state = None
    for e in anon_events:
        state, out = identity_step(state, e)
        assert out == [("a1", e)]
    login = ev(T0 + 10, Identify(), user="u1", anon="a1")
    link = link_of(login)
    assert link == Link("a1", "u1", T0 + 10)
    state, out = identity_step(state, link)
    assert out[0] == ("a1", Forget("a1", "u1", T0 + 10))
    key, handed = out[-1]  # the history, complete, in one item
    assert key == "u1" and isinstance(handed, HandedOver) and len(out) == 2
    assert (handed.anonymous_id, handed.event_time, handed.events) == ("a1", T0 + 10, 3)
    assert [buffered(kept) for kept in handed.history] == anon_events
    state, out = identity_step(state, link)  # a repeated link: the user's step decides
    assert [(key, type(item).__name__) for key, item in out] == [
        ("a1", "Forget"),  # marked again (tests/unit/test_identity_handover.py)
        ("u1", "HandOverAgain"),  # taken only by a user state that lacks the history
    ]
    later = ev(T0 + 20, user=None, anon="a1")
    assert identity_step(state, later)[1] == [("u1", later)]


def test_only_identify_with_two_different_ids_links() -> None:
    assert link_of(ev(T0, Identify(), user="u1", anon=None)) is None
    assert link_of(ev(T0, Identify(), user="u1", anon="u1")) is None
    assert link_of(ev(T0, PageView(), user="u1", anon="a1")) is None


def test_anonymous_buffer_is_bounded() -> None:
    state = None
    for i in range(MAX_ANONYMOUS_BUFFER + 10):
        state, _ = identity_step(state, ev(T0 + i, user=None, anon="a1"))
    assert state is not None
    assert len(state.buffer) == MAX_ANONYMOUS_BUFFER and state.dropped == 10


def test_forget_moves_segments_out_and_the_login_leaves_an_alias() -> None:
    s = UserState("a1")
    cfg = ProfileConfig(rules=load_rules())
    apply(s, ev(T0, user=None, anon="a1"), cfg)
    out = apply(s, Forget("a1", "u1", T0 + 5), cfg)
    # the alias key is left alone here: the user's step writes it at the IDENTIFY
    assert ForgetUser("a1", ("new_visitor",), keep_alias=True) in out
    assert not any(isinstance(o, AliasWrite) for o in out)
    assert AliasWrite("a1", "u1") in apply(UserState("u1"), ev(T0 + 5, Identify(), anon="a1"), cfg)
    exits = [o for o in out if isinstance(o, SegmentChange)]
    assert [(c.user_id, c.segment, c.change) for c in exits] == [("a1", "new_visitor", "EXITED")]
