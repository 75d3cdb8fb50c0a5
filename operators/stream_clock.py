"""The stream clock: the event time the whole stream has reached, across every process.

Timers that must fire when a user sends nothing more (cart abandonment) read
it. Each source partition reports its watermark (trailing a few batches:
:class:`attune.operators.sources.ClockFeed`) to its process's :data:`STREAM_CLOCK`;
:meth:`StreamClock.reached_ms` is the smallest mark of every partition of the
input, the slowest partition holding time back (every event up to it has been
read, but for late ones), and :meth:`StreamClock.now_ms` is that less the allowed
lateness (no event older than it can still arrive).

In a cluster of several processes, a user's events may be read by one process
and judged by the one holding the user's state, so a process must not trust its
own partitions alone. With a :class:`ClockBoard` (Redis in production:
:class:`RedisClockBoard`) every process publishes the marks of the partitions
it reads, at most every ``sync_s`` and delayed by ``in_flight_s`` (time for what
was read to cross to the other process), and takes the others' marks from it.
A partition of the input (:meth:`StreamClock.expect`) that no process has
reported since this process started holds the clock back entirely, so marks
left by an earlier run (or by a run before a crash, which resumes from older
offsets) are never used.

Partitions idle for ``idle_after_s`` stop holding time back, and when every
partition is idle time moves on with the wall clock from the newest watermark
(the bounded processing-time fallback for idle streams).

>>> clock = StreamClock()
>>> clock.reset(lateness_ms=100)
>>> clock.expect(["events:0", "events:1"])
>>> clock.advance("events:0", 1_000)
>>> print(clock.now_ms())  # events:1 has not reported: time cannot move yet
None
>>> clock.advance("events:1", 5_000)
>>> clock.reached_ms(), clock.now_ms()
(1000, 900)
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_right, insort
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter, methodcaller
from typing import Any, Protocol, TypeVar

from attune.operators.events import MAX_EVENT_TIME_MS


class ClockBoard(Protocol):
    """Where the processes of a cluster exchange their partitions' marks."""

    def exchange(self, marks: dict[str, str]) -> dict[str, str]:
        """Publish this process's ``marks`` (partition -> encoded :class:`Mark`) and
        return every partition's latest mark, this process's included."""
        ...


@dataclass(frozen=True, slots=True)
class Mark:
    """A partition's watermark as its reading process last published it (wall times in ms).

    >>> Mark.decode(Mark(1_000, 2_000, 3_000).encode())
    Mark(watermark_ms=1000, seen_ms=2000, written_ms=3000)
    """

    watermark_ms: int
    #: When the watermark last moved: idle partitions stop holding time back.
    seen_ms: int
    #: When the reading process last wrote it: it is alive, and it is this run's.
    written_ms: int

    def encode(self) -> str:
        return f"{self.watermark_ms} {self.seen_ms} {self.written_ms}"

    @classmethod
    def decode(cls, raw: str) -> Mark | None:
        """The mark, or ``None`` for a value this version cannot read (never trusted)."""
        try:
            wm, seen, written = (int(x) for x in raw.split(" "))
        except ValueError:
            return None
        return cls(wm, seen, written)


#: The mark of a partition at the end of a bounded input: it holds no time back.
END_MS = MAX_EVENT_TIME_MS

#: A local partition's marks kept for the in-flight delay (one per batch that moved it).
MAX_PENDING_MARKS = 4096


@dataclass(slots=True)
class _Local:
    """A partition this process reads: its mark, when it moved, and marks not yet published."""

    watermark_ms: int
    seen: float  # monotonic
    pending: deque[tuple[float, int]] = field(
        default_factory=lambda: deque(maxlen=MAX_PENDING_MARKS)
    )
    published_ms: int | None = None


_FOREVER = float("inf")
#: Before any event time (the floor of :meth:`StreamClock.now_ms` before it went live).
_NEVER_MS = -(1 << 62)
#: Seconds a kept reading gives up early before a mark turns idle or the board is due
#: (float rounding).
_MARGIN_S = 1e-6


@dataclass(frozen=True, slots=True)
class _Reading:
    """A reading of the stream clock, and until when it holds unless a mark changes."""

    version: int
    mono_until: float  # monotonic seconds
    wall_until: float  # wall ms
    reached: int | None


class StreamClock:
    """The event time the stream has reached. Thread-safe (worker threads share it); not
    state: it is rebuilt from the sources after a restart.

    Args:
        idle_after_s: wall seconds after which a partition whose mark has not moved
            stops holding time back.
        sync_s: at most this often, the marks are exchanged through the board.
        in_flight_s: a mark is published only this long after it was reached, so
            that what was read before it has reached any other process.
        stale_after_s: a published mark not rewritten for this long (its process
            stopped refreshing it) holds the clock back, as a missing one does.
        wall_ms: the wall clock (epoch ms; shared between hosts, so keep them in
            NTP sync), injectable in tests.
        monotonic: seconds for intervals on this host, injectable in tests.
    """

    def __init__(
        self,
        idle_after_s: float = 30.0,
        *,
        sync_s: float = 0.25,
        in_flight_s: float = 1.0,
        stale_after_s: float = 10.0,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_after_s = idle_after_s
        self.sync_s = sync_s
        self.in_flight_s = in_flight_s
        self.stale_after_s = stale_after_s
        self._wall_ms = wall_ms
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._local: dict[str, _Local] = {}
        self._expected: frozenset[str] = frozenset()
        self._board: ClockBoard | None = None
        self._remote: dict[str, Mark] = {}
        self._started_ms = wall_ms()
        self._synced = float("-inf")
        self._lateness_ms = 0
        self._live_within_ms = 0
        self._settled_floor = _NEVER_MS  # now_ms never goes back
        #: Bumped by whatever changes the marks (:meth:`_changed`): a reading is kept for
        #: as long as nothing but time passed and no mark's idleness or freshness flipped.
        self._version = 0
        self._reading: _Reading | None = None

    def reset(
        self, board: ClockBoard | None = None, lateness_ms: int = 0, live_within_ms: int = 0
    ) -> None:
        """Start a new flow run: no event time, no partitions; share marks via ``board``;
        an event up to ``lateness_ms`` behind its partition's watermark may still come;
        the stream is live (:meth:`live`) while it has been read to within
        ``live_within_ms`` of the wall clock (0: never)."""
        with self._lock:
            self._local.clear()
            self._remote.clear()
            self._expected = frozenset()
            self._board = board
            self._lateness_ms = lateness_ms
            self._live_within_ms = live_within_ms
            self._settled_floor = _NEVER_MS
            self._started_ms = self._wall_ms()
            self._synced = float("-inf")
            self._changed()

    def expect(self, partitions: Iterable[str]) -> None:
        """Every partition of the input, read here or elsewhere: each one holds time back
        until some process reported it."""
        with self._lock:
            self._expected = self._expected | frozenset(partitions)
            self._changed()

    def advance(self, partition: str, watermark_ms: int) -> None:
        """A partition read here reached ``watermark_ms`` (marks never go back)."""
        with self._lock:
            now = self._monotonic()
            local = self._local.get(partition)
            moved = local is None or watermark_ms > local.watermark_ms
            if local is None:
                local = self._local[partition] = _Local(watermark_ms, now)
            elif moved:
                local.watermark_ms = watermark_ms
                local.seen = now
            if moved and self._board is not None:  # only shared marks wait out the delay
                local.pending.append((now, watermark_ms))
            if moved:
                self._changed()
            self._sync(now)

    def now_ms(self) -> int | None:
        """The settled event time: no event older than it can still arrive (the reached
        time less the allowed lateness), ``None`` while some partition has not reported.

        While the stream is :meth:`live`, the reached time itself: a live stream is read
        within seconds of its events, so waiting out the allowed lateness (minutes) would
        only delay every timer by it. That is processing time: an event later than the
        reached time can no longer change what was judged meanwhile. A replay of older
        events is never live, so its judgements stay in event time, the same in every run.
        The answer never goes back (a live stream that falls behind keeps its time)."""
        reached = self.reached_ms()
        if reached is None:
            return None
        if self._live_at(reached):
            self._settled_floor = max(self._settled_floor, reached)
            return reached
        return max(reached - self._lateness_ms, self._settled_floor)

    def wall_ms(self) -> int:
        """The wall clock this stream clock reads (epoch ms)."""
        return self._wall_ms()

    def live(self) -> bool:
        """Whether every partition has been read to within the live window of the wall clock
        (:meth:`reset`): timers then judge at the reached time (:meth:`now_ms`)."""
        if not self._live_within_ms:
            return False
        reached = self.reached_ms()
        return reached is not None and self._live_at(reached)

    def _live_at(self, reached: int) -> bool:
        return bool(self._live_within_ms) and reached >= self._wall_ms() - self._live_within_ms

    def reached_ms(self) -> int | None:
        """The event time every partition has been read to (late events aside), ``None``
        while some partition has not reported.

        Per-user steps ask this many times a batch: the answer is kept until a mark moves,
        the board is due to be asked again, or a partition turns idle or stale; only then
        is it worked out again (:meth:`_read`), the same as it would have been."""
        reading = self._reading
        if (
            reading is not None
            and reading.version == self._version
            and self._monotonic() < reading.mono_until
            and (reading.wall_until == _FOREVER or self._wall_ms() < reading.wall_until)
        ):
            return reading.reached
        return self._read()

    def _read(self) -> int | None:
        """:meth:`reached_ms` worked out from the marks, and kept with how long it holds."""
        with self._lock:
            now = self._monotonic()
            self._sync(now)
            wall = self._wall_ms()
            idle_after = self.idle_after_s
            # the reading holds until the board is due, or an active mark turns idle, or a
            # remote mark stale (a hair early, so rounding never keeps it past that)
            board_due = self._synced + self.sync_s - _MARGIN_S
            mono_until = board_due if self._board is not None else _FOREVER
            wall_until = _FOREVER
            # partition -> (watermark, seconds since it moved)
            marks: dict[str, tuple[int, float]] = {}
            for name, m in self._local.items():
                idle = now - m.seen
                marks[name] = (m.watermark_ms, idle)
                if idle < idle_after:
                    mono_until = min(mono_until, m.seen + idle_after - _MARGIN_S)
            reached: int | None = None
            for name in self._expected - marks.keys():
                mark = self._remote.get(name)
                if mark is None or not self._fresh(mark, wall):
                    break  # until the board says otherwise (stale marks stay stale)
                if mark.watermark_ms < END_MS:
                    wall_until = min(wall_until, mark.written_ms + self.stale_after_s * 1000 - 1)
                idle = max(0.0, (wall - mark.seen_ms) / 1000)
                if idle < idle_after:
                    wall_until = min(wall_until, mark.seen_ms + idle_after * 1000 - 1)
                marks[name] = (mark.watermark_ms, idle)
            else:
                reached = self._reached(marks)
                if marks and not any(idle < idle_after for _, idle in marks.values()):
                    mono_until = -_FOREVER  # moves with the wall clock: never kept
            self._reading = _Reading(self._version, mono_until, wall_until, reached)
            return reached

    def _reached(self, marks: dict[str, tuple[int, float]]) -> int | None:
        if not marks:
            return None
        active = [wm for wm, idle in marks.values() if idle < self.idle_after_s]
        if active:
            return min(active)
        top = max(wm for wm, _ in marks.values())
        least_idle = min(idle for _, idle in marks.values())
        return top + int((least_idle - self.idle_after_s) * 1000)

    def _changed(self) -> None:
        """The marks changed (the lock is held): a kept reading no longer holds."""
        self._version += 1
        self._reading = None

    def _fresh(self, mark: Mark, wall: int) -> bool:
        """Written by a process of this run that is still refreshing it (a partition at
        the end of a bounded input, :data:`END_MS`, needs no refreshing)."""
        if mark.written_ms < self._started_ms:
            return False
        return mark.watermark_ms >= END_MS or wall - mark.written_ms < self.stale_after_s * 1000

    def _sync(self, now: float) -> None:
        """Publish the local marks that are past the in-flight delay; read the others'."""
        board = self._board
        if board is None or now - self._synced < self.sync_s:
            return
        self._synced = now
        wall = self._wall_ms()
        out: dict[str, str] = {}
        for name, local in self._local.items():
            while local.pending and now - local.pending[0][0] >= self.in_flight_s:
                local.published_ms = local.pending.popleft()[1]
            if local.published_ms is not None:
                seen = wall - int((now - local.seen) * 1000)
                out[name] = Mark(local.published_ms, seen, wall).encode()
        theirs = board.exchange(out)
        self._changed()
        self._remote = {
            name: mark
            for name, raw in theirs.items()
            if name not in self._local and (mark := Mark.decode(raw)) is not None
        }


#: The process's stream clock; the sources advance it, per-user timers read it.
STREAM_CLOCK = StreamClock()


#: The shared marks outlive the last refresh by this long, then Redis drops them.
CLOCK_KEY_TTL_S = 3_600


class RedisClockBoard:
    """The marks of every process in one Redis hash (partition -> encoded :class:`Mark`).

    One pipelined round trip per exchange (``HSET``, ``EXPIRE``, ``HGETALL``); the
    client is made on first use (never pickled).
    """

    def __init__(self, connect: Callable[[], Any], key: str) -> None:
        self.connect = connect
        self.key = key
        self._client: Any = None

    def exchange(self, marks: dict[str, str]) -> dict[str, str]:
        if self._client is None:
            self._client = self.connect()
        pipe = self._client.pipeline(transaction=False)
        if marks:
            pipe.hset(self.key, mapping=marks)
        pipe.expire(self.key, CLOCK_KEY_TTL_S)
        pipe.hgetall(self.key)
        raw: dict[Any, Any] = pipe.execute()[-1]
        return {_text(k): _text(v) for k, v in raw.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def replaying(clock: Any) -> bool:
    """Whether a learner reading ``clock`` (``None``: none, learn as things come) is in a
    replay: a clock that is not live, or at the end of time (a bounded input read to its
    end: the clock calls that live, but its last messages are still on their way)."""
    return clock is not None and (not clock.live() or (clock.now_ms() or 0) >= MAX_EVENT_TIME_MS)


class Closed(Protocol):
    """What a learner keeps waiting in a replay: a session summary or a persona vector,
    with the event time of the event that closed its session and its place in the
    learner's order."""

    @property
    def closed_ms(self) -> int: ...

    def order_key(self) -> tuple[Any, ...]: ...


C = TypeVar("C", bound=Closed)
_ORDER_KEY = methodcaller("order_key")
_CLOSED_MS = attrgetter("closed_ms")


def wait_in_order(waiting: list[C], items: Iterable[C]) -> None:
    """Add ``items`` to ``waiting``, kept in ``order_key`` order (most come in order)."""
    for item in items:
        if not waiting or item.order_key() >= waiting[-1].order_key():
            waiting.append(item)
        else:
            insort(waiting, item, key=_ORDER_KEY)


def settled_count(waiting: Sequence[C], through_ms: int, final: bool) -> int:
    """How many of ``waiting`` (in order) closed at or before ``through_ms``; those of the
    end of input only when ``final`` (the learner's own end of input: a clock at the end
    of time does not say that every worker's last messages have arrived)."""
    if not final:
        through_ms = min(through_ms, MAX_EVENT_TIME_MS - 1)
    return bisect_right(waiting, through_ms, key=_CLOSED_MS)
