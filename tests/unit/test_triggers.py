"""Behavioural triggers from the per-user state: cart abandoned, long dwell, repeat visit."""

from __future__ import annotations

import itertools
import pickle
from typing import Any

from attune.operators.clock import DAY_MS, HOUR_MS, MINUTE_MS
from attune.operators.events import (
    AddToCart,
    ConsentUpdate,
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
    Trigger,
)
from attune.operators.identity import HandedOver, identity_step, link_of
from attune.operators.stream_clock import StreamClock
from attune.operators.trigger_decisions import due, pending
from attune.operators.triggers import HANDOVER_WAIT_MS, trigger_id
from attune.operators.user_config import ProfileConfig
from attune.operators.user_logic import Keyed, UserLogic

T0 = 1_767_571_200_000
TYPES = {
    PageView: EventType.PAGE_VIEW,
    ProductView: EventType.PRODUCT_VIEW,
    AddToCart: EventType.ADD_TO_CART,
    Purchase: EventType.PURCHASE,
    Dwell: EventType.DWELL,
    ConsentUpdate: EventType.CONSENT,
    Identify: EventType.IDENTIFY,
    RemoveFromCart: EventType.REMOVE_FROM_CART,
    ErasureRequest: EventType.ERASURE,
}
_ids = itertools.count()


class FakeClock(StreamClock):
    """A stream clock a test sets by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.ms: int | None = None

    def now_ms(self) -> int | None:
        return self.ms

    def reached_ms(self) -> int | None:
        return self.ms


class Wall:
    """A wall clock a test sets by hand."""

    def __init__(self) -> None:
        self.ms = T0

    def now_ms(self) -> int:
        return self.ms


def event(t: int, payload: Any, user: str | None = "u1", anon: str | None = None) -> Event:
    return Event(
        f"e{next(_ids)}", TYPES[type(payload)], T0 + t, payload, user_id=user, anonymous_id=anon
    )


def ev(t: int, payload: Any, user: str = "u1") -> Keyed:
    return user, event(t, payload, user)


def user(clock: StreamClock | None = None, marketing: bool = True) -> UserLogic:
    logic = UserLogic(None, ProfileConfig(stream_clock=clock or FakeClock()))
    logic.on_batch([ev(0, ConsentUpdate(True, True, marketing))])
    return logic


def triggers(out: Any, kind: str) -> list[Trigger]:
    return [o for o in out if isinstance(o, Trigger) and o.kind == kind]


def test_cart_abandonment_fires_with_the_stream_clock_when_the_user_sends_nothing() -> None:
    clock = FakeClock()
    logic = user(clock)
    out, _ = logic.on_batch([ev(MINUTE_MS, AddToCart("i1", 2, 1500, "EUR"))])
    assert triggers(out, "cart_abandoned") == []
    assert logic.notify_at() is not None  # polls the clock while the cart waits
    # not yet at the due time +31 min itself: the clock is settled time, and an order
    # at exactly the due time (still to come) would convert the cart
    clock.ms = T0 + 31 * MINUTE_MS
    assert triggers(logic.on_notify()[0], "cart_abandoned") == []
    clock.ms = T0 + 31 * MINUTE_MS + 1
    (fired,) = triggers(logic.on_notify()[0], "cart_abandoned")
    assert fired.cart_lines == (LineItem("i1", 2, 1500),)
    assert (fired.cart_value_minor, fired.currency) == (3000, "EUR")
    assert fired.cause_event_time == T0 + MINUTE_MS
    assert fired.trigger_id == trigger_id("cart_abandoned", "u1", T0 + MINUTE_MS)
    assert triggers(logic.on_notify()[0], "cart_abandoned") == []  # once


def test_a_cart_purchased_in_time_never_fires() -> None:
    clock = FakeClock()
    logic = user(clock)
    logic.on_batch([ev(MINUTE_MS, AddToCart("i1", 1, 1500, "EUR"))])
    logic.on_batch([ev(31 * MINUTE_MS, Purchase("o1", (LineItem("i1", 1, 1500),), 1500, "EUR"))])
    clock.ms = T0 + DAY_MS
    assert triggers(logic.on_notify()[0], "cart_abandoned") == []
    assert triggers(logic.on_eof()[0], "cart_abandoned") == []


def test_a_later_event_shows_the_cart_was_left() -> None:
    logic = user()
    logic.on_batch([ev(MINUTE_MS, AddToCart("i1", 1, 1500, "EUR"))])
    out, _ = logic.on_batch([ev(35 * MINUTE_MS, PageView())])
    assert triggers(out, "cart_abandoned") == []  # a late purchase could still come
    out, _ = logic.on_batch([ev(2 * HOUR_MS, PageView())])
    assert len(triggers(out, "cart_abandoned")) == 1
    # a new add restarts the wait; the old lines are still in the cart
    logic.on_batch([ev(3 * HOUR_MS, AddToCart("i2", 1, 500, "EUR"))])
    (again,) = triggers(logic.on_eof()[0], "cart_abandoned")  # end of input: timers fire
    assert again.cart_value_minor == 2000


def _handover_inputs() -> tuple[list[Keyed], list[Keyed], list[Keyed]]:
    """u1's direct events (login, an add, a later visit), and what the identity step hands
    over for a1: the anonymous history and the marker. The anonymous cart was left at
    +1 min (abandoned), changed at +60 min, and u1 added at +66 min and left."""
    history = [
        event(MINUTE_MS, AddToCart("x", 1, 100, "EUR"), user=None, anon="a1"),
        event(50 * MINUTE_MS, PageView(), user=None, anon="a1"),
        event(60 * MINUTE_MS, AddToCart("y", 1, 20, "EUR"), user=None, anon="a1"),
    ]
    login = event(65 * MINUTE_MS, Identify(), anon="a1")
    link = link_of(login)
    assert link is not None
    state = None
    for e in history:
        state, _ = identity_step(state, e)
    _, routed = identity_step(state, link)
    handed = [kv for kv in routed if kv[0] == "u1"]
    assert isinstance(handed[-1][1], HandedOver)
    direct = [
        ("u1", login),
        ev(66 * MINUTE_MS, AddToCart("z", 1, 3, "EUR")),
        ev(5 * HOUR_MS, PageView()),
    ]
    return direct[:2], direct[2:], handed


def test_cart_triggers_are_the_same_in_whichever_batch_the_handed_over_history_lands() -> None:
    first, later, handed = _handover_inputs()
    batchings = {
        "one batch": [first + later + handed],
        "history last": [first, later, handed],
        "history first": [handed, first, later],
        "history between": [first, handed, later],
    }
    seen = {}
    for name, batches in batchings.items():
        logic = user()
        out: list[Any] = []
        for batch in batches:
            out += logic.on_batch(list(batch))[0]
        out += logic.on_eof()[0]
        seen[name] = sorted(
            (t.trigger_id, t.cause_event_time - T0, t.cart_value_minor)
            for t in triggers(out, "cart_abandoned")
        )
    expected = [(1 * MINUTE_MS, 100), (66 * MINUTE_MS, 123)]
    for name, fired in seen.items():
        assert [(cause, value) for _, cause, value in fired] == expected, name
    assert len({tuple(f) for f in seen.values()}) == 1  # the same ids too


def test_judgements_wait_for_the_hand_over_but_not_forever() -> None:
    wall, stream = Wall(), FakeClock()
    first, later, _ = _handover_inputs()
    logic = UserLogic(None, ProfileConfig(stream_clock=stream, clock=wall))
    logic.on_batch([ev(0, ConsentUpdate(True, True, True))])
    logic.on_batch(first + later)
    # a linked user's events come from two partitions: only the stream clock settles time
    assert triggers(logic.on_notify()[0], "cart_abandoned") == []
    stream.ms = T0 + 5 * HOUR_MS  # the cart at +66 min is due, but a1's history
    assert triggers(logic.on_notify()[0], "cart_abandoned") == []  # ... has not arrived
    wall.ms += HANDOVER_WAIT_MS  # lost: stop waiting
    (fired,) = triggers(logic.on_notify()[0], "cart_abandoned")
    assert fired.cause_event_time == T0 + 66 * MINUTE_MS


def test_a_cart_judged_late_is_decided_as_one_judged_on_time() -> None:
    """Consent in event time: a cart due before a marketing withdrawal fires though the
    judgement waited (for a hand-over) until after the withdrawal was applied; one whose
    wait the withdrawal falls in does not, judged on time or late."""
    withdraw = ConsentUpdate(marketing=False)

    def run(wait_for_handover: bool, withdraw_at: int) -> list[int]:
        wall, stream = Wall(), FakeClock()
        logic = UserLogic(None, ProfileConfig(stream_clock=stream, clock=wall))
        logic.on_batch([ev(0, ConsentUpdate(True, True, True))])
        if wait_for_handover:  # an IDENTIFY whose hand-over is on its way: judgements wait
            logic.on_batch([("u1", event(MINUTE_MS // 2, Identify(), anon="a1"))])
        out = list(logic.on_batch([ev(MINUTE_MS, AddToCart("i1", 1, 1500, "EUR"))])[0])
        own = sorted([(2 * HOUR_MS, PageView()), (withdraw_at, withdraw)], key=lambda e: e[0])
        out += logic.on_batch([ev(t, p) for t, p in own])[0]  # one partition: in order
        if wait_for_handover:
            stream.ms = T0 + 20 * HOUR_MS
            out += logic.on_batch([("u1", HandedOver("a1", "u1", T0 + MINUTE_MS // 2, 0))])[0]
        out += logic.on_eof()[0]
        return [t.cause_event_time - T0 for t in triggers(out, "cart_abandoned")]

    after_due = 10 * HOUR_MS  # the cart was due at 31 min, long before
    assert run(False, after_due) == run(True, after_due) == [MINUTE_MS]
    within_wait = 20 * MINUTE_MS
    assert run(False, within_wait) == run(True, within_wait) == []


def test_anonymous_events_read_after_the_login_still_count_before_any_judgement() -> None:
    """The anonymous id's partition lags the user's: the login and a remove arrive first,
    the order that emptied the anonymous cart and a later add after them."""
    stream = FakeClock()
    logic = UserLogic(None, ProfileConfig(stream_clock=stream))
    logic.on_batch([ev(0, ConsentUpdate(True, True, True))])
    add = event(MINUTE_MS, AddToCart("x", 1, 100, "EUR"), user=None, anon="a1")
    order = event(2 * HOUR_MS, Purchase("o1", (LineItem("x", 1, 100),), 100, "EUR"), None, "a1")
    add_y = event(3 * HOUR_MS, AddToCart("y", 1, 20, "EUR"), user=None, anon="a1")
    login = event(5 * HOUR_MS, Identify(), anon="a1")
    remove_y = event(3 * HOUR_MS + 10 * MINUTE_MS, RemoveFromCart("y", 1), anon="a1")
    handed = HandedOver("a1", "u1", login.event_time, 1, (add,))  # the history: the add
    out = list(logic.on_batch([("u1", login), ("u1", handed)])[0])
    stream.ms = T0 + HOUR_MS
    out += logic.on_batch([("u1", remove_y), ev(9 * HOUR_MS, PageView())])[0]
    out += logic.on_batch([("u1", order), ("u1", add_y)])[0]
    stream.ms = T0 + 10 * HOUR_MS
    out += logic.on_notify()[0]
    fired = [t.cause_event_time - T0 for t in triggers(out, "cart_abandoned")]
    assert fired == [MINUTE_MS]  # the x cart, abandoned before its order; y was removed


def test_dwell_and_visit_triggers_do_not_depend_on_where_anonymous_events_interleave() -> None:
    """The user's own events come from one partition, in order; anonymous events routed
    to them after the login (another device) arrive wherever the other partition's
    batches land. Whatever the interleaving, the same dwell and repeat-visit triggers."""
    import random

    login = event(0, Identify(), anon="a1")
    own: list[Keyed] = [("u1", login)]
    for day in (1, 2, 3):
        own.append(ev(day * DAY_MS, PageView()))
    own += [ev(3 * DAY_MS + s * 10_000, Dwell(s * 10_000, "i1", "pv1")) for s in range(1, 5)]
    other: list[Keyed] = [  # the anonymous device: sessions in between, an add of i1
        ("u1", event(t, PageView(), user=None, anon="a1"))
        for t in (DAY_MS // 2, 3 * DAY_MS // 2, 5 * DAY_MS // 2)
    ]
    other.append(("u1", event(3 * DAY_MS + 5_000, AddToCart("i1", 1, 100, "EUR"), None, "a1")))

    seen = set()
    for seed in range(12):
        rng = random.Random(seed)
        merged, rest = list(own), list(other)
        for item in rest:  # keep the own order, put each anonymous event anywhere after login
            merged.insert(rng.randint(1, len(merged)), item)
        clock = FakeClock()
        logic = user(clock)
        out: list[Any] = []
        for i in range(0, len(merged), 1 + seed % 3):  # and batch it differently
            out += logic.on_batch(merged[i : i + 1 + seed % 3])[0]
        assert not [t for t in out if isinstance(t, Trigger)]  # they wait for the history
        clock.ms = T0 + 4 * DAY_MS  # the stream passed the login ...
        out += logic.on_batch([("u1", HandedOver("a1", "u1", T0, 0))])[0]  # ... it arrived
        fired = tuple(
            sorted((t.kind, t.trigger_id) for t in out if isinstance(t, Trigger)
                   and t.kind in ("long_dwell", "repeat_visit"))
        )  # fmt: skip
        seen.add(fired)
    assert len(seen) == 1
    (fired,) = seen
    assert [k for k, _ in fired] == ["long_dwell", "repeat_visit"]


def test_consent_given_while_anonymous_counts_for_triggers_caused_before_it_arrived() -> None:
    """The banner was accepted on the anonymous device; the user's own events after the
    login cause a long dwell before the hand-over brings that consent: the dwell waits
    for it, and fires as it does when the history comes first."""
    login: Keyed = ("u1", event(HOUR_MS, Identify(), anon="a1"))
    consent = event(0, ConsentUpdate(True, True, True), user=None, anon="a1")
    handed: Keyed = ("u1", HandedOver("a1", "u1", T0 + HOUR_MS, 1, (consent,)))
    beats = [ev(HOUR_MS + s * 10_000, Dwell(s * 10_000, "i1", "pv1")) for s in range(1, 5)]
    fired: list[list[str]] = []
    for order in ([login, handed, *beats], [login, *beats, handed]):
        clock = FakeClock()
        logic = UserLogic(None, ProfileConfig(stream_clock=clock))  # no consent of its own
        out: list[Any] = []
        for item in order:
            clock.ms = T0 + 2 * HOUR_MS if item is handed else clock.ms
            out += logic.on_batch([item])[0]
        fired.append([t.trigger_id for t in triggers(out, "long_dwell")])
    assert fired[0] == fired[1] and len(fired[0]) == 1


def test_triggers_waiting_for_a_login_history_are_judged_before_an_erasure() -> None:
    """A dwell caused a day before the erasure request was due before it: published
    whether its judgement waited for the login's history or not."""
    login: Keyed = ("u1", event(0, Identify(), anon="a1"))
    handed: Keyed = ("u1", HandedOver("a1", "u1", T0, 0))
    beats = [ev(HOUR_MS + s * 10_000, Dwell(s * 10_000, "i1", "pv1")) for s in range(1, 5)]
    erasure = ev(DAY_MS, ErasureRequest("r1"))
    fired: list[list[str]] = []
    for order in ([login, handed, *beats, erasure], [login, *beats, erasure, handed]):
        clock = FakeClock()
        clock.ms = T0 + 2 * DAY_MS
        logic = user(clock)
        out: list[Any] = []
        for item in order:
            out += logic.on_batch([item])[0]
        fired.append([t.trigger_id for t in triggers(out, "long_dwell")])
    assert fired[0] == fired[1] and len(fired[0]) == 1


def test_anonymous_era_dwells_do_not_fire_when_handed_over() -> None:
    logic = UserLogic(None, ProfileConfig(stream_clock=FakeClock()))
    logic.on_batch([("u1", event(HOUR_MS, Identify(), anon="a1"))])
    beats: list[Keyed] = [
        ("u1", event(s * 10_000, Dwell(s * 10_000, "i1", "pv1"), user=None, anon="a1"))
        for s in range(1, 6)
    ]
    out, _ = logic.on_batch([*beats, ("u1", HandedOver("a1", "u1", T0 + HOUR_MS, 5))])
    assert triggers(out, "long_dwell") == []
    assert logic.state is not None and logic.state.dwells == 5  # counted, not fired


def test_no_marketing_consent_no_trigger() -> None:
    logic = user(marketing=False)
    logic.on_batch([ev(MINUTE_MS, AddToCart("i1", 1, 1500, "EUR"))])
    out, _ = logic.on_batch([ev(2 * HOUR_MS, PageView())])
    assert [o for o in out if isinstance(o, Trigger)] == []
    assert [o for o in logic.on_eof()[0] if isinstance(o, Trigger)] == []


def test_long_dwell_once_per_page_and_not_after_an_add() -> None:
    logic = user()
    beats = [ev(s * 10_000, Dwell(s * 10_000, "i1", "pv1")) for s in range(1, 6)]
    out, _ = logic.on_batch(beats)
    (dwell,) = triggers(out, "long_dwell")
    assert dwell.item_id == "i1"
    logic.on_batch([ev(70_000, AddToCart("i2", 1, 100, "EUR"))])
    out, _ = logic.on_batch(
        [ev(s * 10_000 + 70_000, Dwell(s * 10_000, "i2", "pv2")) for s in (1, 4)]
    )
    assert triggers(out, "long_dwell") == []


def test_repeat_visit_at_the_third_session_in_seven_days() -> None:
    logic = user()
    fired = []
    for day in (1, 2, 3, 12):
        out, _ = logic.on_batch([ev(day * DAY_MS, PageView())])
        fired += [day for _ in triggers(out, "repeat_visit")]
    assert fired == [2]  # sessions on day 0 (consent), 1, 2: the third; day 3 is the fourth


def test_trigger_state_pickles_with_the_user() -> None:
    logic = user()
    logic.on_batch([ev(MINUTE_MS, AddToCart("i1", 1, 1500, "EUR"))])
    restored = UserLogic(logic.snapshot(), logic.cfg)
    assert restored.state == logic.state
    assert pickle.loads(logic.snapshot()).cart.next_due_ms(30 * MINUTE_MS) == T0 + 31 * MINUTE_MS


def test_an_anonymous_cart_does_not_poll_the_clock() -> None:
    """An anonymous id's cart is never judged under the id, so ``pending`` is false (no
    one-second poll, no snapshot per poll); a known user's cart polls. (At login the
    id's history is handed over: the user's own timeline holds the cart and judges it.)"""
    clock = FakeClock()
    cfg = ProfileConfig(stream_clock=clock)
    anon = UserLogic(None, cfg)
    anon.on_batch([("a1", event(MINUTE_MS, AddToCart("i1", 1, 1500, "EUR"), None, "a1"))])
    assert anon.state is not None and not anon.state.trig.known
    assert anon.state.cart.next_due_ms(cfg.triggers.abandon_after_ms) is not None
    assert not pending(anon.state, cfg)
    clock.ms = T0 + DAY_MS
    assert due(anon.state, cfg) == []
    known = user(FakeClock())
    known.on_batch([ev(MINUTE_MS, AddToCart("i1", 1, 1500, "EUR"))])
    assert known.state is not None and pending(known.state, known.cfg)
