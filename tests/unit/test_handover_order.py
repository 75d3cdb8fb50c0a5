"""Issue 15: a login's history lands at the same point of the user's stream however the
stream is batched, and however the IDENTIFY and its hand-over interleave on their way to
the user's key (:func:`attune.operators.identity.handover_order`)."""

from __future__ import annotations

import itertools
import random
import re

from attune.operators.clock import MINUTE_MS
from attune.operators.events import Event, EventType, Identify, PageView, SegmentChange, Trigger
from attune.operators.identity import (
    HANDOVER_HOLD_MS,
    HandedOver,
    HandOverAgain,
    UserInput,
    close_handovers,
    handover_order,
)
from attune.operators.rule_files import load_rules
from attune.operators.stream_clock import StreamClock
from attune.operators.user_config import ProfileConfig
from attune.operators.user_state import UserState
from attune.operators.user_step import end_of_input, fold_batch

T0 = 1_767_571_200_000


def own(i: int, user: str = "u1") -> Event:
    return Event(f"u{i}", EventType.PAGE_VIEW, T0 + i * MINUTE_MS, PageView(), user)


def login(i: int, anon: str) -> Event:
    return Event(f"l{i}", EventType.IDENTIFY, T0 + i * MINUTE_MS, Identify(), "u1", anon)


def history(anon: str, at: int, n: int) -> HandedOver:
    kept = tuple(
        Event(f"{anon}-{j}", EventType.PAGE_VIEW, T0 + j, PageView(), None, anon) for j in range(n)
    )
    return HandedOver(anon, "u1", T0 + at * MINUTE_MS, n, kept)


def names(items: list[UserInput]) -> list[str]:
    return [i.event_id if isinstance(i, Event) else f"history:{i.anonymous_id}" for i in items]


#: The user's own stream (one partition, this order) with two logins, and their histories.
OWN: list[UserInput] = [own(1), login(2, "a1"), own(3), own(4), login(5, "a2"), own(6)]
HANDED: list[UserInput] = [history("a1", 2, 3), history("a2", 5, 0)]
EXPECTED = ["u1", "l2", "history:a1", "u3", "u4", "l5", "history:a2", "u6"]


def arrivals(seed: int) -> list[list[UserInput]]:
    """The own stream in its order with each hand-over anywhere (even before its IDENTIFY),
    cut into batches at random."""
    rng = random.Random(seed)
    merged = list(OWN)
    for h in HANDED:
        merged.insert(rng.randint(0, len(merged)), h)
    cuts = sorted(rng.sample(range(1, len(merged)), rng.randint(0, len(merged) - 1)))
    return [merged[a:b] for a, b in itertools.pairwise([0, *cuts, len(merged)])]


def test_every_history_lands_right_after_its_identify_however_it_arrives() -> None:
    for seed in range(200):
        wait, folded = None, []
        for batch in arrivals(seed):
            wait, ready = handover_order(wait, batch, 0)
            folded += ready
        assert names(folded) == EXPECTED, seed
        assert wait is None


def test_the_user_state_is_the_same_however_the_history_arrives() -> None:
    # clocks of their own (here and below): the process-wide one keeps what an earlier
    # test's flow read (a flow run live would make this one fold as it comes, not hold)
    cfg = ProfileConfig(rules=load_rules(), stream_clock=StreamClock())
    states = set()
    for seed in range(30):
        st: UserState | None = UserState("u1")
        out = []
        for batch in arrivals(seed):
            assert st is not None
            st, found = fold_batch(st, batch, cfg)
            out += [  # segment changes and triggers, without the wall clock they were made at
                re.sub(r"emit_time=\d+", "", repr(o))
                for o in found
                if isinstance(o, (SegmentChange, Trigger))
            ]
        assert st is not None and st.handover is None
        states.add((st.activity.events, st.activity.sessions, tuple(out)))
    assert len(states) == 1
    ((events, _, changes),) = states
    assert events == 9  # 6 own events and 3 of a1's history
    assert changes  # the comparison compares something (new_visitor entered)


def test_a_history_that_never_comes_holds_the_user_for_a_bounded_time() -> None:
    wait, ready = handover_order(None, [login(1, "a1"), own(2)], 1_000)
    assert names(ready) == ["l1"] and wait is not None
    wait, ready = handover_order(wait, [own(3)], 1_000 + HANDOVER_HOLD_MS - 1)
    assert ready == [] and wait is not None  # still waiting
    wait, ready = handover_order(wait, [own(4)], 1_000 + HANDOVER_HOLD_MS)
    assert names(ready) == ["u2", "u3", "u4"]  # given up: in their order
    wait, ready = handover_order(wait, [history("a1", 1, 1), own(5)], 2_000 + HANDOVER_HOLD_MS)
    assert names(ready) == ["history:a1", "u5"] and wait is None  # late: folded as it comes


def test_a_history_whose_identify_never_comes_is_folded_after_the_hold() -> None:
    wait, ready = handover_order(None, [history("a1", 1, 1)], 0)
    assert ready == [] and wait is not None
    wait, ready = handover_order(wait, [own(2)], HANDOVER_HOLD_MS)
    assert names(ready) == ["history:a1", "u2"] and wait is None


def test_the_end_of_input_folds_what_was_held() -> None:
    cfg = ProfileConfig(rules=load_rules(), stream_clock=StreamClock())
    st, _ = fold_batch(UserState("u1"), [login(1, "a1"), own(2), own(3)], cfg)
    assert st is not None and st.handover is not None and st.activity.events == 1
    end_of_input(st, cfg)
    assert st.activity.events == 3 and st.handover is None
    assert close_handovers(None) is None


def test_a_link_sent_again_is_placed_like_the_first() -> None:
    again = HandOverAgain("a1", "u1", T0 + 2 * MINUTE_MS, ())
    wait, ready = handover_order(None, [again, own(1), login(2, "a1"), own(3)], 0)
    assert names(ready) == ["u1", "l2", "history:a1", "u3"] and wait is None


def test_a_live_stream_folds_every_input_as_it_comes() -> None:
    """Live (``hold=False``): no wait for the history, and what a replay's wait held goes
    at once, before the new inputs."""
    batch: list[UserInput] = [login(1, "a1"), own(2), history("a1", 1, 1)]
    wait, ready = handover_order(None, batch, 0, hold=False)
    assert ready == batch and wait is None
    wait, ready = handover_order(None, [login(1, "a1"), own(2)], 0)
    assert wait is not None
    wait, ready = handover_order(wait, [own(3)], 0, hold=False)
    assert names(ready) == ["u2", "u3"] and wait is None


def test_inputs_held_for_a_login_after_an_erasure_are_not_lost() -> None:
    """The erasure leaves a tombstone (a new state): the wait it did not hold moves with it."""
    from attune.operators.events import ErasureRequest

    cfg = ProfileConfig(rules=load_rules(), stream_clock=StreamClock())
    erase = Event("x1", EventType.ERASURE, T0, ErasureRequest("r1"), "u1")
    st, _ = fold_batch(UserState("u1"), [erase, login(1, "a1"), own(2)], cfg)
    assert st is not None and st.handover is not None and st.handover.held == [own(2)]
    st, _ = fold_batch(st, [history("a1", 1, 2)], cfg)
    assert st is not None and st.handover is None
    # the login, the one held, and a1's event after the erasure (the other is at its time)
    assert st.activity.events == 3 and "u2" in st.seen and "a1-1" in st.seen
