"""Behavioural triggers from the per-user state: cart abandoned, long dwell, repeat visit."""

from __future__ import annotations

import itertools
import pickle
from typing import Any

from operators.events import (
    AddToCart,
    ConsentUpdate,
    Dwell,
    Event,
    EventType,
    LineItem,
    PageView,
    ProductView,
    Purchase,
    Trigger,
)
from operators.profiles import DAY_MS, HOUR_MS, MINUTE_MS, Keyed, ProfileConfig, UserLogic
from operators.triggers import StreamClock, trigger_id

T0 = 1_767_571_200_000
TYPES = {
    PageView: EventType.PAGE_VIEW,
    ProductView: EventType.PRODUCT_VIEW,
    AddToCart: EventType.ADD_TO_CART,
    Purchase: EventType.PURCHASE,
    Dwell: EventType.DWELL,
    ConsentUpdate: EventType.CONSENT,
}
_ids = itertools.count()


class FakeClock(StreamClock):
    """A stream clock a test sets by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.ms: int | None = None

    def now_ms(self) -> int | None:
        return self.ms


def ev(t: int, payload: Any, user: str = "u1") -> Keyed:
    return user, Event(f"e{next(_ids)}", TYPES[type(payload)], T0 + t, payload, user_id=user)


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
    clock.ms = T0 + 30 * MINUTE_MS  # not yet: due at +31 min (the clock is settled time)
    assert triggers(logic.on_notify()[0], "cart_abandoned") == []
    clock.ms = T0 + 31 * MINUTE_MS
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
    assert pickle.loads(logic.snapshot()).trig.cart_activity_ms == T0 + MINUTE_MS


def test_stream_clock_is_the_slowest_partition_and_falls_back_to_wall_time_when_idle() -> None:
    import time as _time

    clock = StreamClock(idle_after_s=0.05)
    assert clock.now_ms() is None
    clock.advance("p0", 1_000)
    clock.advance("p1", 5_000)
    assert clock.now_ms() == 1_000  # a partition that is behind holds time back
    clock.advance("p0", 900)  # watermarks never go back
    assert clock.now_ms() == 1_000
    deadline = _time.monotonic() + 5
    while clock.now_ms() == 1_000 and _time.monotonic() < deadline:
        _time.sleep(0.01)  # waiting on a condition, bounded: both partitions go idle
    now = clock.now_ms()
    assert now is not None and now >= 5_000  # idle: moves on from the newest watermark
    clock.reset()
    assert clock.now_ms() is None
