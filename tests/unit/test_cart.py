"""The cart timeline: the abandonment rule, once-only firing, folding, any arrival order."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from attune.operators.cart import MAX_CART_OPS, CartTimeline
from attune.operators.events import LineItem

N = 30 * 60_000  # abandon after
Fired = tuple[int, tuple[LineItem, ...]]


def timeline(*entries: tuple[int, str, int]) -> CartTimeline:
    """Entries as (time, item, signed qty); item "" is an order."""
    cart = CartTimeline()
    for i, (t, item, qty) in enumerate(entries):
        if item:
            cart.add(t, f"e{i}", item, qty, 100)
        else:
            cart.order(t, f"e{i}")
    return cart


def test_an_order_at_exactly_the_due_time_converts_and_one_after_it_does_not() -> None:
    assert timeline((0, "i1", 1), (N, "", 0)).take_due(10 * N, N) == []
    (late,) = timeline((0, "i1", 1), (N + 1, "", 0)).take_due(10 * N, N)
    assert (late.activity_ms, late.due_ms, late.lines) == (0, N, (LineItem("i1", 1, 100),))


def test_activity_within_the_wait_moves_the_cause_and_abandonment_keeps_the_lines() -> None:
    cart = timeline((0, "i1", 1), (N // 2, "i2", 2), (N // 2 + N + 5, "i3", 1))
    fired = cart.take_due(10 * N, N)
    assert [a.activity_ms for a in fired] == [N // 2, N // 2 + N + 5]
    assert [a.value_minor for a in fired] == [300, 400]  # the second still holds i1 and i2


def test_removing_everything_leaves_nothing_to_abandon() -> None:
    assert timeline((0, "i1", 1), (1000, "i1", -1)).take_due(10 * N, N) == []
    assert timeline((0, "i1", 1), (1000, "i9", -1)).take_due(10 * N, N)[0].activity_ms == 1000


def test_due_only_strictly_before_the_settled_time_and_once() -> None:
    cart = timeline((0, "i1", 1))
    assert cart.next_due_ms(N) == N
    assert cart.take_due(N, N) == []  # an order at N may still come
    assert [a.activity_ms for a in cart.take_due(N + 1, N)] == [0]
    assert cart.take_due(N + 1, N) == [] and cart.next_due_ms(N) is None


def test_an_earlier_abandonment_arriving_late_fires_and_fired_ones_do_not_repeat() -> None:
    cart = timeline((5 * N, "i2", 1))
    assert [a.activity_ms for a in cart.take_due(7 * N, N)] == [5 * N]
    cart.add(0, "late", "i1", 1, 100)  # history handed over at login
    assert [(a.activity_ms, a.value_minor) for a in cart.take_due(7 * N, N)] == [(0, 100)]


def test_orders_a_judgement_passed_are_folded_away() -> None:
    cart = timeline((0, "i1", 1), (1000, "", 0), (2000, "i2", 1))
    cart.take_due(1500, N)
    assert cart.horizon_ms == 1000 and cart.base == {} and len(cart.entries) == 1
    cart.add(500, "old", "i1", 1, 100)  # before a decided order: paid for
    assert cart.current() == {"i2": (1, 100)}


def test_the_timeline_is_bounded() -> None:
    cart = CartTimeline()
    for i in range(3 * MAX_CART_OPS):
        cart.add(i, f"e{i}", f"i{i % 5}", 1, 100)
    assert len(cart.entries) <= MAX_CART_OPS
    assert sum(q for q, _ in cart.current().values()) == 3 * MAX_CART_OPS


def test_a_zero_quantity_is_refused() -> None:
    try:
        CartTimeline().add(0, "e", "i1", 0, 100)
    except ValueError as exc:
        assert "non-zero" in str(exc)
    else:
        raise AssertionError("no error")


entries = st.lists(
    st.tuples(
        st.integers(0, 12 * N),
        st.sampled_from(["i1", "i2", "i3", ""]),
        st.sampled_from([1, 2, -1]),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(entries, st.randoms(use_true_random=False), st.integers(0, 12 * N))
def test_any_arrival_order_and_judgement_time_fires_the_same(
    raw: list[tuple[int, str, int]], rng: random.Random, midway: int
) -> None:
    ordered = [(t, f"e{i}", item, qty) for i, (t, item, qty) in enumerate(raw)]
    shuffled = list(ordered)
    rng.shuffle(shuffled)

    def run(arrivals: list[tuple[int, str, str, int]], judge_at: int | None) -> set[Fired]:
        cart = CartTimeline()
        fired: set[Fired] = set()
        for t, eid, item, qty in arrivals:
            if item:
                cart.add(t, eid, item, qty, 100)
            else:
                cart.order(t, eid)
        # a judgement only passes times no entry can still arrive before: here, the end
        for a in cart.take_due(judge_at if judge_at is not None else 10**15, N):
            fired.add((a.activity_ms, a.lines))
        return fired

    # judging midway over the entries that are settled by then, then at the end,
    # equals judging once at the end over all of them
    early = [e for e in ordered if e[0] < midway]
    later = [e for e in ordered if e[0] >= midway]
    cart = CartTimeline()
    split: set[Fired] = set()
    for batch, at in ((early, midway), (later, 10**15)):
        for t, eid, item, qty in batch:
            if item:
                cart.add(t, eid, item, qty, 100)
            else:
                cart.order(t, eid)
        split |= {(a.activity_ms, a.lines) for a in cart.take_due(at, N)}
    assert run(shuffled, None) == run(ordered, None) == split
