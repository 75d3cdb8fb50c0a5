"""The stream clock: the slowest partition of the whole input, across processes.

Two clocks sharing one board stand for two processes of a cluster; the board here is
a dict (the Redis one is tested against the real server in
tests/integration/test_stream_clock.py). Time is a hand-set fake: no sleeps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from attune.operators.stream_clock import END_MS, STREAM_CLOCK, Mark, StreamClock


@dataclass
class Time:
    """Wall and monotonic time a test moves by hand."""

    wall: int = 1_800_000_000_000  # epoch ms
    mono: float = 100.0

    def wall_ms(self) -> int:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += int(seconds * 1000)
        self.mono += seconds


@dataclass
class DictBoard:
    """The board's contract (publish mine, return everyone's) over a dict."""

    marks: dict[str, str] = field(default_factory=dict)
    exchanges: int = 0

    def exchange(self, marks: dict[str, str]) -> dict[str, str]:
        self.exchanges += 1
        self.marks.update(marks)
        return dict(self.marks)


def clock(t: Time, board: DictBoard | None = None, **kw: float) -> StreamClock:
    c = StreamClock(wall_ms=t.wall_ms, monotonic=t.monotonic, **kw)
    c.reset(board)
    return c


def two_processes(t: Time, **kw: float) -> tuple[StreamClock, StreamClock, DictBoard]:
    """Two processes' clocks sharing one board, both expecting partitions p0 and p1."""
    board = DictBoard()
    a, b = clock(t, board, **kw), clock(t, board, **kw)
    for c in (a, b):
        c.expect(["p0", "p1"])
    return a, b, board


def test_the_slowest_partition_holds_time_back_and_marks_never_go_back() -> None:
    t = Time()
    c = clock(t)
    assert c.now_ms() is None
    c.advance("p0", 1_000)
    c.advance("p1", 5_000)
    assert c.now_ms() == 1_000
    c.advance("p0", 900)
    assert c.now_ms() == 1_000
    c.advance("p0", 7_000)
    assert c.now_ms() == 5_000


def test_idle_partitions_stop_holding_back_then_time_moves_with_the_wall_clock() -> None:
    t = Time()
    c = clock(t, idle_after_s=30)
    c.advance("p0", 1_000)
    t.advance(20)
    c.advance("p1", 5_000)
    t.advance(15)  # p0 idle for 35 s, p1 for 15 s
    assert c.now_ms() == 5_000
    t.advance(20)  # both idle: 5 s past p1's idle bound
    assert c.now_ms() == 5_000 + 5_000
    c.reset()
    assert c.now_ms() is None


def test_an_expected_partition_that_never_reported_holds_the_clock() -> None:
    t = Time()
    c = clock(t)
    c.expect(["p0", "p1"])
    c.advance("p0", 1_000)
    assert c.now_ms() is None  # nobody reads p1 yet (or it is read by a process without a board)
    t.advance(60)
    assert c.now_ms() is None  # idleness does not excuse a partition nobody reported
    c.advance("p1", 2_000)
    assert c.now_ms() == 2_000  # p0, idle for a minute, no longer holds time back
    c.advance("p0", 1_500)
    assert c.now_ms() == 1_500


def test_two_processes_share_the_slowest_partition_through_the_board() -> None:
    t = Time()
    a, b, board = two_processes(t, in_flight_s=1.0, sync_s=0.25)
    a.advance("p0", 10_000)  # process A reads p0 ...
    b.advance("p1", 90_000)  # ... and B reads p1, far ahead
    assert b.now_ms() is None  # B knows nothing of p0 yet: it must not judge by p1 alone
    t.advance(1.0)  # past the in-flight delay: A publishes p0, B reads it
    a.advance("p0", 20_000)
    t.advance(0.3)
    assert b.now_ms() == 10_000  # p0's mark as of a second ago, not B's own 90 s
    assert a.now_ms() == 20_000  # A's own p0 is read here: no delay; B's p1 is ahead
    t.advance(1.0)
    a.advance("p0", 25_000)  # publishes 20 s, reached more than in_flight_s ago
    t.advance(0.3)
    assert b.now_ms() == 20_000
    assert Mark.decode(board.marks["p1"]) is not None


def test_marks_of_an_earlier_run_or_a_stopped_process_are_not_trusted() -> None:
    t = Time()
    board = DictBoard()
    old = clock(t, board, in_flight_s=0.0, sync_s=0.0)
    old.advance("p0", 500_000)  # an earlier run got far
    old.now_ms()
    t.advance(5)
    b = clock(t, board, in_flight_s=0.0, sync_s=0.0)  # a new run starts after it
    b.expect(["p0", "p1"])
    b.advance("p1", 1_000)
    assert b.now_ms() is None  # p0's mark was written before this run started
    a = clock(t, board, in_flight_s=0.0, sync_s=0.0)  # this run's reader of p0 ...
    a.advance("p0", 2_000)  # ... starts from the beginning again (a replay)
    t.advance(0.1)
    assert b.now_ms() == 1_000  # the new run's p0 (2 s) is past p1 (1 s)
    t.advance(11)  # A stops refreshing its mark for longer than stale_after_s (10 s)
    b.advance("p1", 3_000)
    assert b.now_ms() is None


def test_an_unreadable_mark_is_not_trusted() -> None:
    t = Time()
    board = DictBoard({"p0": "garbage"})
    b = clock(t, board, sync_s=0.0)
    b.expect(["p0", "p1"])
    b.advance("p1", 1_000)
    assert b.now_ms() is None
    assert Mark.decode("1 2") is None and Mark.decode("a b c") is None


def test_the_board_is_asked_at_most_every_sync_interval() -> None:
    t = Time()
    board = DictBoard()
    c = clock(t, board, sync_s=0.25)
    c.expect(["p0"])
    for _ in range(100):
        c.advance("p0", 1_000)
        c.now_ms()
    assert board.exchanges == 1
    t.advance(0.25)
    c.now_ms()
    assert board.exchanges == 2


def test_an_idle_cluster_moves_on_with_the_wall_clock() -> None:
    t = Time()
    a, b, _ = two_processes(t, in_flight_s=0.0, sync_s=0.0, idle_after_s=30)
    a.advance("p0", 10_000)
    b.advance("p1", 40_000)
    a.now_ms()
    assert b.now_ms() == 10_000
    for _ in range(8):  # both keep polling (refreshing their marks), no data moves
        t.advance(5)
        a.advance("p0", 10_000)
        b.advance("p1", 40_000)
    assert b.now_ms() == 40_000 + 10_000  # idle 40 s: 10 s past the idle bound
    assert a.now_ms() == 40_000 + 10_000


def test_a_partition_at_the_end_of_a_bounded_input_holds_nothing_back_unrefreshed() -> None:
    t = Time()
    a, b, _ = two_processes(t, in_flight_s=0.0, sync_s=0.0)
    a.advance("p0", END_MS)  # A read p0 to its end, and stops refreshing
    b.advance("p1", 5_000)
    assert b.reached_ms() == 5_000
    t.advance(60)  # long past stale_after_s
    b.advance("p1", 6_000)
    assert b.reached_ms() == 6_000  # p0 is over: it never holds time back again


def test_a_source_partition_tells_the_clock_its_end_three_batches_late() -> None:
    from attune.operators.events import Event, EventType, PageView
    from attune.operators.sources import CLOCK_LAG_BATCHES, EventListSource

    def events() -> Iterator[Event]:
        for i in range(5):
            yield Event(f"e{i}", EventType.PAGE_VIEW, 1_767_571_200_000 + i, PageView(), "u")

    STREAM_CLOCK.reset()
    source = EventListSource(events, allowed_lateness_ms=0, batch_size=2)
    (name,) = source.list_parts()
    part = source.build_part("events", name, None)
    sizes: list[int] = []
    reached: list[int | None] = []
    with contextlib.suppress(StopIteration):
        while True:
            sizes.append(len(part.next_batch()))
            reached.append(STREAM_CLOCK.reached_ms())
    assert sizes == [2, 2, 1] + [0] * CLOCK_LAG_BATCHES  # empty batches until it is told
    assert END_MS not in reached  # told only as the partition stops
    assert STREAM_CLOCK.reached_ms() == END_MS
    STREAM_CLOCK.reset()


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["advance", "wait", "read", "read_other"]),
        st.sampled_from(["p0", "p1"]),
        st.integers(0, 40_000),
        st.sampled_from([0.0, 0.1, 0.25, 1.0, 5.0, 10.0, 29.9, 30.0, 30.1]),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops=_OPS, shared=st.booleans(), sync_s=st.sampled_from([0.25, 20.0]))
def test_a_kept_reading_is_the_reading_worked_out_again(
    ops: list[tuple[str, str, int, float]], shared: bool, sync_s: float
) -> None:
    """Reads between changes are kept (cheap for per-user steps), and are always what the
    marks say at that moment: partitions turning idle, the board's interval, stale marks."""
    t = Time()
    board = DictBoard() if shared else None
    a = clock(t, board, in_flight_s=1.0, sync_s=sync_s, idle_after_s=30)
    b = clock(t, board, in_flight_s=1.0, sync_s=sync_s, idle_after_s=30)
    for c in (a, b):
        c.expect(["p0", "p1"] if shared else ["p0"])
    for op, part, mark, seconds in ops:
        if op == "advance":
            (a if part == "p0" else b).advance(part, mark)
        elif op == "wait":
            t.advance(seconds)
        else:
            c = a if op == "read" else b
            kept = c.reached_ms()
            assert kept == c._read()  # worked out from the marks again
            assert c.now_ms() == (None if kept is None else kept - c._lateness_ms)


def test_a_kept_reading_ends_when_a_remote_mark_turns_stale_or_idle() -> None:
    t = Time()
    board = DictBoard()
    a = clock(t, board, in_flight_s=0.0, sync_s=50.0, stale_after_s=10.0, idle_after_s=30)
    b = clock(t, board, in_flight_s=0.0, sync_s=50.0, stale_after_s=10.0, idle_after_s=30)
    for c in (a, b):
        c.expect(["p0", "p1"])
    a.advance("p0", 1_000)  # published at once, then A stops refreshing it
    b.advance("p1", 5_000)  # B reads A's mark
    assert b.reached_ms() == 1_000
    t.advance(11)
    assert b.reached_ms() is None  # A's mark went stale between two board exchanges

    t = Time()
    board = DictBoard()
    a = clock(t, board, in_flight_s=0.0, sync_s=50.0, stale_after_s=100.0, idle_after_s=30)
    b = clock(t, board, in_flight_s=0.0, sync_s=50.0, stale_after_s=100.0, idle_after_s=30)
    for c in (a, b):
        c.expect(["p0", "p1"])
    a.advance("p0", 1_000)
    b.advance("p1", 5_000)
    t.advance(20)
    b.advance("p1", 6_000)
    assert b.reached_ms() == 1_000
    t.advance(11)
    assert b.reached_ms() == 6_000  # p0 turned idle: it no longer holds time back


def test_a_live_stream_settles_at_the_time_read_and_a_replay_waits_out_the_lateness() -> None:
    t = Time()
    clock = StreamClock(wall_ms=t.wall_ms, monotonic=t.monotonic)
    clock.reset(lateness_ms=600_000, live_within_ms=30_000)
    clock.expect(["events:0"])
    old = t.wall - 86_400_000  # a replay of yesterday's events
    clock.advance("events:0", old)
    assert not clock.live() and clock.now_ms() == old - 600_000
    clock.advance("events:0", t.wall - 200)  # caught up: read to 0.2 s behind the wall
    assert clock.live() and clock.now_ms() == t.wall - 200
    t.advance(60)  # the flow stalls for a minute: no longer live, but time does not go back
    assert not clock.live() and clock.now_ms() == t.wall - 60_000 - 200


def test_without_a_live_window_the_stream_clock_is_event_time_only() -> None:
    t = Time()
    clock = StreamClock(wall_ms=t.wall_ms, monotonic=t.monotonic)
    clock.reset(lateness_ms=600_000)
    clock.expect(["events:0"])
    clock.advance("events:0", t.wall)
    assert not clock.live() and clock.now_ms() == t.wall - 600_000


def test_a_caught_up_partition_of_a_live_stream_moves_with_the_wall_clock() -> None:
    """A quiet live partition would hold the clock at its last event until declared idle;
    caught up (an empty batch) its mark is the wall clock less CAUGHT_UP_MARGIN_MS, as
    late as any mark (CLOCK_LAG_BATCHES batches). A replay at its end never jumps."""
    from attune.operators.sources import (
        CAUGHT_UP_MARGIN_MS,
        CLOCK_LAG_BATCHES,
        ClockFeed,
        Watermark,
    )

    wall0 = 1_767_571_200_000
    t = Time(wall=wall0)
    live = StreamClock(wall_ms=t.wall_ms, monotonic=t.monotonic)
    live.reset(live_within_ms=30_000)
    live.expect(["p0"])
    wm = Watermark(allowed_lateness_ms=0, max_time=wall0 - 50)  # read to 50 ms ago
    feed = ClockFeed("p0", wm, live)
    for _ in range(CLOCK_LAG_BATCHES):
        feed.after_batch()
    assert live.now_ms() == wall0 - 50 and live.live()
    t.advance(5.0)  # five quiet seconds: every batch empty
    for _ in range(CLOCK_LAG_BATCHES):
        feed.after_batch(caught_up=True)
    assert live.now_ms() == wall0 - 50  # not yet: the caught-up marks trail like any
    feed.after_batch(caught_up=True)
    assert live.now_ms() == wall0 + 5_000 - CAUGHT_UP_MARGIN_MS

    # a replay of old events that reached the end of its partition: not live, no jump
    t2 = Time(wall=wall0)
    replay = StreamClock(wall_ms=t2.wall_ms, monotonic=t2.monotonic)
    replay.reset(live_within_ms=30_000)
    replay.expect(["p0"])
    old = Watermark(allowed_lateness_ms=0, max_time=wall0 - 86_400_000)
    feed = ClockFeed("p0", old, replay)
    for _ in range(2 * CLOCK_LAG_BATCHES):
        feed.after_batch(caught_up=True)
    assert not replay.live() and replay.now_ms() == wall0 - 86_400_000
