"""The source partitions' watermark: lateness decided per partition, and not dragged
forward by a client whose clock runs ahead (docs/architecture.md, stage 1)."""

from __future__ import annotations

from attune.operators.events import Event, EventType, Search
from attune.operators.sources import RECENT_KEYS, PartitionState, Watermark

T0 = 1_767_571_200_000
MINUTE = 60_000
DAY = 24 * 60 * MINUTE
LATENESS = 10 * MINUTE


def ev(i: int, t: int, user: str) -> Event:
    return Event(f"e{i}", EventType.SEARCH, t, Search("q"), user_id=user)


def steady(wm: Watermark, start: int, users: int, n: int, first_id: int = 0) -> list[str | None]:
    """``n`` in-order events, a second apart, round-robin over ``users`` users."""
    return [wm.admit(ev(first_id + i, start + i * 1000, f"u{i % users}")) for i in range(n)]


def test_one_clock_days_ahead_does_not_make_everyone_late() -> None:
    wm = Watermark(LATENESS)
    assert steady(wm, T0, 20, 100) == [None] * 100
    reached = wm.max_time
    # the wrong phone sends a burst: all of it is admitted, none of it moves the watermark
    for i in range(50):
        assert wm.admit(ev(1000 + i, T0 + 3 * DAY + i, "wrong-clock")) is None
    assert wm.max_time == reached
    # everyone else goes on in time, and the watermark follows them
    assert steady(wm, T0 + 100_000, 20, 500, first_id=2000) == [None] * 500
    assert wm.max_time == T0 + 100_000 + 499_000
    # a truly late event is still late
    assert wm.admit(ev(9999, wm.max_time - LATENESS - 1, "u1")) is not None


def test_a_genuine_jump_is_followed_once_the_recent_users_vote_for_it() -> None:
    wm = Watermark(LATENESS)
    steady(wm, T0, RECENT_KEYS, 2 * RECENT_KEYS)
    before = wm.max_time
    later = T0 + 5 * 3_600_000  # a quiet five hours, then traffic again
    seen = [wm.max_time]
    for i in range(RECENT_KEYS):
        assert wm.admit(ev(500 + i, later + i * 1000, f"u{i}")) is None
        seen.append(wm.max_time)
    # the first of them moved nothing; once they outvote the users present, it is with them
    assert seen[1] == before
    assert wm.max_time >= later
    # so an event from before the quiet hours is now late
    assert wm.admit(ev(999, before, "u3")) is not None


def test_a_few_scattered_wrong_clocks_never_move_it() -> None:
    wm = Watermark(LATENESS)
    t = T0
    for block in range(20):
        steady(wm, t, 30, 60, first_id=block * 100)
        t += 60_000
        # one wrong clock per block, each a different phone and a different lead
        wm.admit(ev(block * 100 + 99, t + (block + 1) * DAY, f"phone{block}"))
    assert wm.max_time < T0 + 21 * 60_000


def test_resuming_from_a_snapshot_decides_as_the_uninterrupted_run() -> None:
    events = [ev(i, T0 + i * 1000, f"u{i % 12}") for i in range(40)]
    events += [ev(100 + i, T0 + 2 * DAY + i * 1000, f"u{i % 12}") for i in range(12)]
    events += [ev(200 + i, T0 + 40_000 + i, f"u{i}") for i in range(5)]

    whole = Watermark(LATENESS)
    expected = [whole.admit(e) for e in events]
    assert any(r is not None for r in expected)  # the run does dead-letter something

    first = Watermark(LATENESS)
    decided = [first.admit(e) for e in events[:45]]
    state = PartitionState(45, first.max_time, tuple(first.recent.items()))
    second = Watermark(LATENESS)
    second.resume(state)
    decided += [second.admit(e) for e in events[45:]]
    assert decided == expected


def test_a_quiet_partition_follows_once_more_users_are_past_the_quiet() -> None:
    wm = Watermark(LATENESS)
    steady(wm, T0, 3, 6)  # three users last seen before the quiet
    reached = wm.max_time
    morning = T0 + 6 * 3_600_000  # nobody for six hours, then new users
    for i in range(3):
        assert wm.admit(ev(50 + i, morning + i * MINUTE, f"early{i}")) is None
        assert wm.max_time == reached
    assert wm.admit(ev(53, morning + 3 * MINUTE, "early3")) is None
    assert wm.max_time >= morning
    assert wm.admit(ev(54, T0, "u1")) is not None  # last night's event is now late


def test_two_wrong_clocks_that_disagree_do_not_move_it() -> None:
    wm = Watermark(LATENESS)
    steady(wm, T0, 3, 6)
    reached = wm.max_time
    wm.admit(ev(60, T0 + 2 * DAY, "phone-a"))
    wm.admit(ev(61, T0 + 300 * DAY, "phone-b"))
    assert wm.max_time == reached
