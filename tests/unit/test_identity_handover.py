"""A link that arrives again sends the login's history again, and only a user state
that lacks it takes it (the recovery case end to end: test_identity_recovery.py)."""

from __future__ import annotations

from datetime import timedelta

from bytewax.operators import StatefulBatchLogic

from attune.operators.clock import MINUTE_MS, FixedClock
from attune.operators.consent import ConsentPolicy
from attune.operators.events import ConsentUpdate, Event, EventType, Identify, PageView
from attune.operators.identity import (
    HANDOVER_KEEP,
    Forget,
    HandedOver,
    HandOverAgain,
    IdentityLogic,
    IdentityState,
    Link,
    buffered,
    identity_step,
)
from attune.operators.redis_sink import ForgetUser
from attune.operators.rule_files import load_rules
from attune.operators.user_config import ProfileConfig
from attune.operators.user_logic import UserLogic
from attune.operators.user_state import UserState
from attune.operators.user_step import fold_batch

T0 = 1_767_571_200_000
LINK = Link("a1", "u1", T0 + 10 * MINUTE_MS)
KEEP_MS = int(HANDOVER_KEEP.total_seconds() * 1000)


def view(i: int, user: str | None = None, anon: str | None = "a1") -> Event:
    return Event(f"e{i}", EventType.PAGE_VIEW, T0 + i * MINUTE_MS, PageView(), user, anon)


def anonymous(n: int) -> IdentityState:
    st: IdentityState | None = None
    for i in range(n):
        st, _ = identity_step(st, view(i))
    assert st is not None
    return st


def test_the_same_link_again_sends_a_forget_and_the_history_again() -> None:
    st = anonymous(3)
    consent = Event("c1", EventType.CONSENT, T0 + 5 * MINUTE_MS, ConsentUpdate(True), None, "a1")
    st, _ = identity_step(st, consent)
    st, first = identity_step(st, LINK)
    assert first[0] == ("a1", Forget("a1", "u1", LINK.event_time))
    key, handed = first[-1]
    assert key == "u1" and isinstance(handed, HandedOver) and len(first) == 2
    assert (handed.anonymous_id, handed.event_time, handed.events) == ("a1", LINK.event_time, 4)
    # consent events first, then the kept copies in their order
    assert [buffered(kept) for kept in handed.history] == [consent, *(view(i) for i in range(3))]
    st, again = identity_step(st, LINK)
    assert again[0] == ("a1", Forget("a1", "u1", LINK.event_time, again=True))
    key, item = again[1]
    assert key == "u1" and isinstance(item, HandOverAgain) and len(again) == 2
    # the same inputs as the first hand-over, in its order
    assert item.history == handed.history


def test_a_link_to_another_user_hands_nothing_over_and_drops_the_copies() -> None:
    st, _ = identity_step(anonymous(3), LINK)
    st, out = identity_step(st, Link("a1", "u2", LINK.event_time + 1))
    assert out == [("u2", HandedOver("a1", "u2", LINK.event_time + 1, 0))]
    assert st.buffer == [] and st.user_id == "u2"
    st, out = identity_step(st, Link("a1", "u2", LINK.event_time + 2))  # nothing kept
    assert out[1] == ("u2", HandedOver("a1", "u2", LINK.event_time + 2, 0))


def cfg() -> ProfileConfig:
    return ProfileConfig(rules=load_rules())


def handed_over_twice(user: UserState) -> tuple[UserState | None, UserState | None]:
    """The user's state after the first hand-over, then after the same history again (each
    after its IDENTIFY, which the user's step waits for: every hand-over has one)."""
    login = Event("login", EventType.IDENTIFY, LINK.event_time, Identify(), "u1", "a1")
    st, routed = identity_step(anonymous(4), LINK)
    to_user = [item for key, item in routed if key == "u1"]
    once, _ = fold_batch(user, [login, *to_user], cfg())
    assert once is not None and once.handover is None
    _, again = identity_step(st, LINK)
    twice, _ = fold_batch(once, [login, *(item for key, item in again if key == "u1")], cfg())
    assert twice is not None and twice.handover is None
    return once, twice


def test_a_user_state_that_has_the_history_drops_it_when_it_comes_again() -> None:
    once, twice = handed_over_twice(UserState("u1"))
    assert once is twice and twice is not None
    assert twice.activity.events == 5 and twice.duplicates == 1  # the IDENTIFY


def test_a_user_state_that_lacks_the_history_takes_it_when_it_comes_again() -> None:
    st, _ = identity_step(anonymous(4), LINK)
    _, again = identity_step(st, LINK)
    user, _ = fold_batch(UserState("u1"), [view(20, user="u1", anon=None)], cfg())
    assert user is not None
    login = Event("login", EventType.IDENTIFY, LINK.event_time, Identify(), "u1", "a1")
    user, _ = fold_batch(user, [login], cfg())
    assert user is not None and "a1" in user.trig.awaiting  # judgements wait for it
    user, _ = fold_batch(user, [item for key, item in again if key == "u1"], cfg())
    assert user is not None and user.activity.events == 1 + 1 + 4
    assert "a1" in user.trig.handed and not user.trig.awaiting


def test_a_forget_sent_again_forgets_a_state_that_came_back_and_nothing_else() -> None:
    again = ("a1", Forget("a1", "u1", LINK.event_time, again=True))
    fresh = UserLogic(None, cfg())
    assert fresh.on_batch([again]) == ([], StatefulBatchLogic.DISCARD)
    back = UserLogic(None, cfg())
    back.on_batch([("a1", view(1))])
    out, discard = back.on_batch([again])
    assert discard is StatefulBatchLogic.DISCARD
    assert any(isinstance(o, ForgetUser) and o.user == "a1" for o in out)


def test_the_copies_stay_for_the_keep_time_of_the_running_process() -> None:
    clock = FixedClock(T0)
    logic = IdentityLogic(None, timedelta(days=30), ConsentPolicy(), clock)
    logic.on_batch([view(i) for i in range(3)])
    logic.on_batch([LINK])
    assert logic.state is not None and len(logic.state.buffer) == 3
    assert logic.notify_at().timestamp() * 1000 == T0 + KEEP_MS  # type: ignore[union-attr]
    clock.advance(KEEP_MS - 1)
    logic.on_notify()
    assert len(logic.state.buffer) == 3
    # A process that loads this state (down for any time) counts the keep time afresh.
    clock.advance(10 * KEEP_MS)
    loaded = IdentityLogic(logic.snapshot(), timedelta(days=30), ConsentPolicy(), clock)
    assert loaded.on_notify() == ([], False) and loaded.state is not None
    assert len(loaded.state.buffer) == 3
    assert loaded.on_batch([LINK])[0][1][1].history  # type: ignore[index]
    clock.advance(KEEP_MS - 1)  # ... rounded up to the second
    loaded.on_notify()
    assert len(loaded.state.buffer) == 3
    clock.advance(1000)
    loaded.on_notify()
    assert loaded.state.buffer == [] and loaded.state.user_id == "u1"
    out, _ = loaded.on_batch([LINK])
    assert list(out)[1] == ("u1", HandedOver("a1", "u1", LINK.event_time, 0))
