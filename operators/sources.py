"""Event sources: Kafka, an Avro container file, or the generator; decoded, with a watermark.

The first stage of the flow. Every source yields the same thing, an
:class:`~attune.operators.events.Event` or a :class:`~attune.operators.events.DeadLetter`,
in batches, and each is a Bytewax ``FixedPartitionedSource`` whose partition
state (position + watermark) is snapshotted for recovery.

Decoding happens here, in the source partition, on the batch just read: no
extra step, no per-message wrapper objects, and the original bytes are at hand
for dead letters.

Lateness is decided here too, per source partition: the partition's watermark
is the largest event time it has yielded that the partition's recent users
agree with; an event more than ``allowed_lateness_ms`` behind it is
dead-lettered with class ``LATE``. A Kafka partition's order is fixed, so the
decision is the same whatever the number of workers, their speed or a restart
(the watermark and what it remembers of recent users are part of the snapshot).
Events within the allowed lateness pass and are placed in order downstream.

A wrong client clock cannot drag the watermark forward: an event more than the
allowed lateness ahead of the watermark passes (it is applied, with its own
time, to its own user) but moves the watermark only by the vote of the
partition's last :data:`RECENT_KEYS` distinct users (:meth:`Watermark._follow`):
at least two users ahead, agreeing, and more of them than users still at the
watermark's time. A genuine jump (a quiet night, a replay that skips a day) is
followed within a few users; one phone whose clock runs days ahead, however
many events it sends, is not.

A Kafka message also says when it was received: its timestamp (the producer's, a
collector's in production, or the broker's with ``LogAppendTime``), stored in the log, so
a replay reads the same. An event dated more than :data:`MAX_AHEAD_OF_RECEIPT_MS` (1 h)
after it is dead-lettered (``INVALID_VALUE``, reason ``ahead: ...``) before the watermark
sees it; one dated up to that far after it is applied with its own time, but the
watermark counts it as of its receipt plus :data:`RECEIPT_TOLERANCE_MS`, so a clock a few
minutes ahead, even creeping further with every event, cannot drag the watermark either.
A message over :data:`MAX_MESSAGE_BYTES` is dead-lettered unread (docs/reliability.md,
"Hostile input", has the whole policy).

Kafka's own errors (other than end-of-partition) become ``SOURCE_ERROR`` dead
letters; none is dropped.

Pseudonymisation (:mod:`attune.operators.privacy`) happens here too, on each decoded
event before it leaves the partition: given a ``privacy``
:class:`~attune.operators.privacy.Pseudonymiser`, Kafka and file events are
pseudonymised on their decoded record (cheapest: plain dict updates before the
event is built) and generated events on the event, so that no later step, state,
output or log sees a direct identifier. Dead letters of events that decoded
(``LATE``, ``INVALID_VALUE``...) then keep the pseudonymised event, re-encoded,
rather than the original bytes; only undecodable input keeps its raw bytes.

>>> from attune.operators.events import Event, EventType, Search
>>> wm = Watermark(allowed_lateness_ms=60_000)
>>> e = lambda i, t: Event(f"e{i}", EventType.SEARCH, t, Search("q"), user_id="u")
>>> wm.admit(e(1, 1_767_571_200_000)) is None
True
>>> print(wm.admit(e(2, 1_767_571_100_000)))
late: event time 1767571100000 is 100000 ms behind this partition's watermark \
1767571200000 (allowed lateness 60000 ms)

One user's clock three days ahead does not move it, so the others stay in time:

>>> u = lambda i, t, user: Event(f"e{i}", EventType.SEARCH, t, Search("q"), user_id=user)
>>> wm.admit(u(3, 1_767_830_400_000, "wrong-clock")) is None
True
>>> wm.max_time, wm.admit(u(4, 1_767_571_230_000, "other")) is None
(1767571200000, True)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from time import monotonic
from typing import Any, Final

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka.admin import AdminClient
from prometheus_client import Counter

from attune.operators.codec import Codec
from attune.operators.container import read_events_file
from attune.operators.events import MAX_EVENT_TIME_MS, DeadLetter, ErrorClass, Event, Source
from attune.operators.privacy import Pseudonymiser
from attune.operators.stream_clock import STREAM_CLOCK, StreamClock

Item = Event | DeadLetter

#: Service metrics (Prometheus), counted per batch, not per event.
EVENTS_READ = Counter("attune_events_read", "Messages read by the event sources (incl. bad ones)")
DEAD_LETTERS = Counter("attune_dead_letters", "Input dead-lettered at the source", ["error_class"])


def progress() -> tuple[int, int]:
    """Messages read and dead-lettered by this process's sources so far."""
    read = sum(
        s.value for m in EVENTS_READ.collect() for s in m.samples if s.name.endswith("_total")
    )
    dead = sum(
        s.value for m in DEAD_LETTERS.collect() for s in m.samples if s.name.endswith("_total")
    )
    return int(read), int(dead)


def _count(batch: list[Item]) -> None:
    EVENTS_READ.inc(len(batch))
    for item in batch:
        if isinstance(item, DeadLetter):
            DEAD_LETTERS.labels(item.error_class.value).inc()


#: Distinct users whose latest event times the watermark remembers: its voters when an
#: event claims a time further ahead than the allowed lateness.
RECENT_KEYS = 16
#: Users ahead of the watermark vote together only if their times agree within this much
#: (clients whose clocks are wrong by random amounts do not).
AGREE_MS = 6 * 3_600_000


@dataclass(slots=True)
class Watermark:
    """The event time a partition has reached, and the lateness it allows.

    ``recent`` maps the last :data:`RECENT_KEYS` distinct users (user id, else anonymous
    id) to their latest event time, oldest first. An event more than the allowed lateness
    ahead of the watermark moves it only by their vote (:meth:`_follow`): one client's
    clock running ahead never does, however many events it sends.
    """

    allowed_lateness_ms: int
    max_time: int = 0
    recent: dict[str, int] = field(default_factory=dict)

    def admit(self, event: Event, at: int | None = None) -> str | None:
        """``None`` if the event is in time (advancing the watermark), else why it is late.

        ``at``: the time to judge it by, if not its own: an event dated ahead of its
        receipt counts as of its receipt (:func:`decode_messages`)."""
        t = event.event_time if at is None else at
        recent = self.recent
        key = event.user_id or event.anonymous_id or ""
        latest = recent.pop(key, t)  # re-inserted last: the most recently seen key
        recent[key] = t if t > latest else latest
        if len(recent) > RECENT_KEYS:
            del recent[next(iter(recent))]
        if t >= self.max_time:
            if t - self.max_time <= self.allowed_lateness_ms or self.max_time == 0:
                self.max_time = t
            else:
                self._follow()
            return None
        behind = self.max_time - t
        if behind <= self.allowed_lateness_ms:
            return None
        return (
            f"late: event time {t} is {behind} ms behind this partition's watermark "
            f"{self.max_time} (allowed lateness {self.allowed_lateness_ms} ms)"
        )

    def _follow(self) -> None:
        """Move to where the recent users are, if they agree that time has jumped.

        The recent users vote by their latest event time: those ahead (beyond the
        watermark plus the lateness; only those within :data:`AGREE_MS` of the earliest
        of them count) against those present (within the lateness of the watermark);
        users whose latest time is older do not vote. If at least two are ahead and they
        outnumber the present, the watermark moves to the lower median of their times.
        So a quiet partition follows once more users are past the quiet than were last
        seen before it, and a busy one does not follow a few wrong clocks among many
        users in time.
        """
        lateness = self.allowed_lateness_ms
        for _ in range(4):  # a move changes who is present: settle in a few steps
            w = self.max_time
            present = 0
            ahead: list[int] = []
            for v in self.recent.values():
                if v > w + lateness:
                    ahead.append(v)
                elif v >= w - lateness:
                    present += 1
            if len(ahead) < 2:
                return
            ahead.sort()
            ahead = [v for v in ahead if v <= ahead[0] + AGREE_MS]
            if len(ahead) <= max(1, present):
                return
            self.max_time = ahead[(len(ahead) - 1) // 2]

    def resume(self, state: PartitionState) -> None:
        """Take up where a snapshot left off."""
        self.max_time = state.watermark
        self.recent = dict(state.recent)


@dataclass(frozen=True, slots=True)
class PartitionState:
    """What a source partition resumes from: its position and its watermark."""

    position: int
    watermark: int
    #: The watermark's recent users and their latest event times, oldest first.
    recent: tuple[tuple[str, int], ...] = ()


def check_lateness(
    item: Item, wm: Watermark, codec: Codec, original: Callable[[], bytes], source: Source
) -> Item:
    """Pass dead letters and in-time events; turn a late event into a ``LATE`` dead letter."""
    if isinstance(item, DeadLetter):
        return item
    reason = wm.admit(item)
    if reason is None:
        return item
    return codec.dead_letter(original(), ErrorClass.LATE, reason, source, item.event_id)


# --- Kafka -----------------------------------------------------------------------------------


#: Batches a partition's contribution to the stream clock trails by.
CLOCK_LAG_BATCHES = 3
#: While the stream is live, a caught-up Kafka partition's mark is the wall clock less
#: this (ms): about what a steady stream's trailing marks lag the wall clock by (the
#: events' producer linger, the broker, three batches), so a quiet partition holds time
#: back no more than a busy one (:meth:`ClockFeed.after_batch`).
CAUGHT_UP_MARGIN_MS = 200


class ClockFeed:
    """What one source partition tells the process's stream clock after each batch.

    The mark trails the partition's watermark by :data:`CLOCK_LAG_BATCHES` batches: what
    was read before them has gone downstream, including the extra hop through the
    identity step that anonymous events take to their user (one batch was not always
    enough on a loaded machine). The clock subtracts the allowed lateness where it
    must (an event that much older may still come).
    """

    def __init__(self, name: str, wm: Watermark, clock: StreamClock = STREAM_CLOCK) -> None:
        self.name = name
        self.wm = wm
        self.stream_clock = clock
        self.marks: deque[int] = deque([wm.max_time], maxlen=CLOCK_LAG_BATCHES)

    def after_batch(self, caught_up: bool = False) -> None:
        """After a batch; ``caught_up``: it was empty, the partition has nothing unread.

        A live stream's quiet partition would hold the clock at its last event until it
        is declared idle (seconds), and every cart due meanwhile would wait for that. So
        while the stream is live, a caught-up partition's mark is the wall clock less
        :data:`CAUGHT_UP_MARGIN_MS` (an event made earlier than that is taken to have
        arrived), :data:`CLOCK_LAG_BATCHES` batches late like any mark. A replay that
        reached its end is not live: its time never jumps to the wall clock."""
        clock = self.stream_clock
        clock.advance(self.name, self.marks[0])
        mark = self.wm.max_time
        if caught_up and clock.live():
            mark = max(mark, clock.wall_ms() - CAUGHT_UP_MARGIN_MS)
        self.marks.append(mark)

    def at_end(self) -> bool:
        """The partition is over (a bounded input): tell the clock it holds nothing back,
        :data:`CLOCK_LAG_BATCHES` batches late like any mark; ``True`` once it is told."""
        self.stream_clock.advance(self.name, self.marks[0])
        if self.marks[0] >= MAX_EVENT_TIME_MS:
            return True
        self.marks.append(MAX_EVENT_TIME_MS)
        return False


#: An event may be dated at most this long after its Kafka message's timestamp (ms): the
#: time the producer (a collector, in production) or the broker wrote it. Later is a client
#: clock running ahead, dead-lettered (:func:`ahead_of_receipt`).
MAX_AHEAD_OF_RECEIPT_MS = 3_600_000
#: An event dated more than this (ms) after its Kafka message timestamp, but not more than
#: :data:`MAX_AHEAD_OF_RECEIPT_MS`, is applied with its own time, but the watermark counts
#: it as of its receipt plus this: a client clock minutes ahead cannot drag it forward.
RECEIPT_TOLERANCE_MS = 60_000
#: Messages longer than this (bytes) are dead-lettered unread. Events are ~350 bytes (at
#: most ~600 in the generated workload); a purchase of the 100 lines a cart holds is ~10 KB.
MAX_MESSAGE_BYTES = 64 * 1024
#: A dead letter of an oversized message keeps this much of it: the whole of it would not
#: fit on the dead-letter topic (the broker's 1 MB ``message.max.bytes``), and its sink
#: would stop the flow.
KEPT_OF_OVERSIZED = 1024


def oversized(value: bytes) -> str:
    """The reason a message over :data:`MAX_MESSAGE_BYTES` is dead-lettered.

    >>> oversized(bytes(70_000))
    'message of 70000 bytes is over the 65536 bytes an event may have (kept: its first 1024)'
    """
    return (
        f"message of {len(value)} bytes is over the {MAX_MESSAGE_BYTES} bytes an event may "
        f"have (kept: its first {KEPT_OF_OVERSIZED})"
    )


def ahead_of_receipt(event_time: int, timestamp: tuple[int, int]) -> str | None:
    """Why an event dated after its Kafka message was written is refused, or ``None``.

    ``timestamp`` is confluent-kafka's ``Message.timestamp()``: (type, epoch ms), type 0
    when the message has none. The message timestamp is the receipt time, as a collector
    (or, with ``LogAppendTime``, the broker) stamped it; an event claiming a time more than
    :data:`MAX_AHEAD_OF_RECEIPT_MS` after it comes from a clock running ahead. The
    decision is read from the log, so a replay makes it again, the same.

    >>> ahead_of_receipt(1_767_571_200_000 + 2 * 86_400_000, (1, 1_767_571_200_000))
    'ahead: event time 1767744000000 is 172800000 ms after its Kafka message timestamp \
1767571200000 (at most 3600000 ms): the client clock runs ahead'
    >>> ahead_of_receipt(1_767_571_200_000, (1, 1_767_571_200_000)) is None
    True
    """
    kind, received = timestamp
    if not kind or event_time - received <= MAX_AHEAD_OF_RECEIPT_MS:
        return None
    return (
        f"ahead: event time {event_time} is {event_time - received} ms after its Kafka "
        f"message timestamp {received} (at most {MAX_AHEAD_OF_RECEIPT_MS} ms): "
        "the client clock runs ahead"
    )


def decode_messages(
    msgs: Iterable[Message],
    codec: Codec,
    wm: Watermark,
    topic: str,
    partition: int,
    *,
    tail: bool,
) -> tuple[list[Item], int | None, bool]:
    """One consumed batch of a Kafka partition as events and dead letters, in order.

    Returns the items, the offset to resume from after them (``None`` if no message
    was used) and whether the partition's end was reached (``tail=False`` only: the
    messages after the end-of-partition signal are left). A function apart from the
    partition so that ``attune bench decode`` times exactly this per-message work.
    """
    out: list[Item] = []
    offset: int | None = None
    decode = codec.decode_event
    admit = wm.admit
    for msg in msgs:
        err = msg.error()
        at = msg.offset()
        if err is not None:
            if err.code() == ConfluentKafkaError._PARTITION_EOF:
                if not tail:
                    return out, offset, True
                continue
            out.append(
                codec.dead_letter(
                    msg.value() or b"",
                    ErrorClass.SOURCE_ERROR,
                    f"Kafka consumer error on {topic}[{partition}]: {err.str()}",
                    Source(topic, partition, at),
                )
            )
            continue
        value: bytes = msg.value() or b""
        if len(value) > MAX_MESSAGE_BYTES:
            out.append(
                codec.dead_letter(
                    value[:KEPT_OF_OVERSIZED],
                    ErrorClass.INVALID_VALUE,
                    oversized(value),
                    Source(topic, partition, at),
                )
            )
            offset = (at or 0) + 1
            continue
        # No origin is passed: a dead letter (rare) gets it below, so that no Source is
        # built for the messages that decode, nearly all of them.
        decoded = decode(value)
        if isinstance(decoded, Event):
            # Before the watermark sees it: an event refused as ahead neither moves the
            # watermark nor votes for moving it.
            stamp = msg.timestamp()
            ahead = None
            if stamp[0] and decoded.event_time - stamp[1] > RECEIPT_TOLERANCE_MS:
                ahead = ahead_of_receipt(decoded.event_time, stamp)
                reason = admit(decoded, stamp[1] + RECEIPT_TOLERANCE_MS) if ahead is None else ahead
            else:
                reason = admit(decoded)
            if reason is not None:
                kept = value if codec.privacy is None else codec.encode_event(decoded)
                decoded = codec.dead_letter(
                    kept,
                    ErrorClass.LATE if ahead is None else ErrorClass.INVALID_VALUE,
                    reason,
                    Source(topic, partition, at),
                    decoded.event_id,
                )
        else:
            decoded = replace(
                decoded, source_topic=topic, source_partition=partition, source_offset=at
            )
        out.append(decoded)
        offset = (at or 0) + 1
    return out, offset, False


#: How long a tailing partition waits after a poll that found nothing before it polls
#: again without waiting, while the flow drains (:data:`DRAINED_POLLS`).
IDLE_POLL: Final = timedelta(milliseconds=2)
#: Empty polls in a row after which a tailing partition's poll may wait (5 ms): by then
#: every item read has crossed the flow's steps (one step per worker pass).
DRAINED_POLLS: Final = 10
#: ... and no partition of the process has read a message for this many seconds.
DRAINED_S: Final = 0.02
#: When a Kafka partition of this process last read messages (``time.monotonic``).
_LAST_READ: list[float] = [0.0]


class _KafkaPartition(StatefulSourcePartition[Item, PartitionState]):
    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        partition: int,
        *,
        resume: PartitionState | None,
        batch_size: int,
        tail: bool,
        codec: Codec,
        wm: Watermark,
    ) -> None:
        self.offset = OFFSET_BEGINNING if resume is None else resume.position
        if resume is not None:
            wm.resume(resume)
        self.consumer = Consumer(config)
        self.consumer.assign([TopicPartition(topic, partition, self.offset)])
        self.topic = topic
        self.partition = partition
        self.batch_size = batch_size
        self.tail = tail
        self.codec = codec
        self.wm = wm
        self.clock = ClockFeed(f"{topic}:{partition}", wm)
        self.eof = False
        self.empty_polls = 0

    def next_batch(self) -> list[Item]:
        if self.eof:
            if self.clock.at_end():
                raise StopIteration
            return []
        # Tailing, the poll waits only once the flow has drained. The worker is one
        # thread, and a poll that waits out its timeout holds back every step downstream
        # of it (an item crosses a step per worker pass, and each pass polls), so a wait
        # while items are on their way is paid again at each step. After an empty poll
        # Bytewax calls again after IDLE_POLL (next_awake); once drained (_drained)
        # nothing is on its way, and the poll may wait (a quiet stream
        # then costs a sleeping thread, not a Python call a millisecond). A replay waits a
        # little: its messages are there, and a short wait fills a batch at the start.
        wait = 0.005 if not self.tail or self._drained() else 0.0
        msgs = self.consumer.consume(self.batch_size, wait)
        if msgs:
            self.empty_polls = 0
            _LAST_READ[0] = monotonic()
        else:
            self.empty_polls += 1
        out, offset, self.eof = decode_messages(
            msgs, self.codec, self.wm, self.topic, self.partition, tail=self.tail
        )
        if offset is not None:
            self.offset = offset
        _count(out)
        self.clock.after_batch(caught_up=self.tail and not msgs)
        return out

    def next_awake(self) -> datetime | None:
        """After an empty poll while tailing, the next in :data:`IDLE_POLL` (an event
        that comes meanwhile waits at most that); otherwise at once."""
        if self.tail and self.empty_polls and not self._drained():
            return datetime.now(UTC) + IDLE_POLL
        return None

    def _drained(self) -> bool:
        """Nothing read is still crossing the flow: this partition's last
        :data:`DRAINED_POLLS` polls were empty, and no partition of the process has read
        anything for :data:`DRAINED_S` (a partition of the same worker that waits would
        hold back the items of one that reads)."""
        return self.empty_polls >= DRAINED_POLLS and monotonic() - _LAST_READ[0] >= DRAINED_S

    def snapshot(self) -> PartitionState:
        return PartitionState(self.offset, self.wm.max_time, tuple(self.wm.recent.items()))

    def close(self) -> None:
        self.consumer.close()


class KafkaEventSource(FixedPartitionedSource[Item, PartitionState]):
    """User events from a Kafka topic, one Bytewax partition per Kafka partition.

    ``tail=False`` stops at the end of every partition (replays, tests, benches).
    Offsets live in Bytewax's recovery snapshots, not in a consumer group.
    """

    def __init__(
        self,
        brokers: str,
        topic: str,
        *,
        allowed_lateness_ms: int,
        config: dict[str, Any] | None = None,
        tail: bool = True,
        batch_size: int = 1000,
        codec_factory: Callable[[], Codec] = Codec,
        privacy: Pseudonymiser | None = None,
    ) -> None:
        self.brokers = brokers
        self.privacy = privacy
        self.topic = topic
        self.allowed_lateness_ms = allowed_lateness_ms
        self.extra = dict(config or {})
        self.tail = tail
        self.batch_size = batch_size
        self.codec_factory = codec_factory

    def _config(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.brokers,
            "group.id": "attune-unused",  # assign() only: no group coordination
            "enable.auto.commit": False,
            "enable.partition.eof": not self.tail,
            **CONSUMER_PREFETCH,
            **self.extra,
        }

    def list_parts(self) -> list[str]:
        admin = AdminClient({k: v for k, v in self._config().items() if k not in _CONSUMER_ONLY})
        meta = admin.list_topics(self.topic, timeout=30)
        topic = meta.topics.get(self.topic)
        if topic is None or topic.error is not None:
            raise RuntimeError(
                f"Kafka topic {self.topic!r} at {self.brokers} is not readable "
                f"({topic.error if topic else 'missing'}); create it with `attune topics create`"
            )
        parts = [str(p) for p in sorted(topic.partitions)]
        STREAM_CLOCK.expect(f"{self.topic}:{p}" for p in parts)
        return parts

    def build_part(
        self, step_id: str, for_part: str, resume_state: PartitionState | None
    ) -> _KafkaPartition:
        return _KafkaPartition(
            self._config(),
            self.topic,
            int(for_part),
            resume=resume_state,
            batch_size=self.batch_size,
            tail=self.tail,
            codec=_with_privacy(self.codec_factory(), self.privacy),
            wm=Watermark(self.allowed_lateness_ms),
        )


#: How much librdkafka reads ahead of the flow, per consumer (one per Kafka partition):
#: its defaults (``queued.min.messages`` 100,000 messages, ``queued.max.messages.kbytes``
#: 64 MiB) let the consumer's queue hold up to 100,000 messages of a backlog with
#: librdkafka's bookkeeping per message (the throughput bench's peak RSS: 363.5 -> 300.2
#: MiB with this cap; docs/reliability.md, "Memory under abuse"). Ten batches of the source
#: (1,000 events each, ~2 MB) keep it fed: a fetch from the broker takes milliseconds,
#: the flow takes a batch in tens. The source's ``config`` overrides these.
CONSUMER_PREFETCH: dict[str, Any] = {
    "queued.min.messages": 10_000,
    "queued.max.messages.kbytes": 8_192,
}

_CONSUMER_ONLY = frozenset(
    {"group.id", "enable.auto.commit", "enable.partition.eof", *CONSUMER_PREFETCH}
)


# --- file and generator ----------------------------------------------------------------------


class _IteratorPartition(StatefulSourcePartition[Item, PartitionState]):
    """A single partition over a deterministic iterator; resumes by skipping ``position``."""

    def __init__(
        self,
        name: str,
        items: Iterator[tuple[Item, Callable[[], bytes], Source]],
        *,
        resume: PartitionState | None,
        batch_size: int,
        codec: Codec,
        wm: Watermark,
    ) -> None:
        self.name = name
        self.items = items
        self.position = 0
        self.batch_size = batch_size
        self.codec = codec
        self.wm = wm
        if resume is not None:
            for _ in range(resume.position):
                next(self.items, None)
            self.position = resume.position
            wm.resume(resume)
        self.clock = ClockFeed(self.name, wm)

    def next_batch(self) -> list[Item]:
        out: list[Item] = []
        for item, original, src in self.items:
            out.append(check_lateness(item, self.wm, self.codec, original, src))
            if len(out) >= self.batch_size:
                break
        if not out:
            if self.clock.at_end():
                raise StopIteration
            return []
        self.position += len(out)
        _count(out)
        self.clock.after_batch()
        return out

    def snapshot(self) -> PartitionState:
        return PartitionState(self.position, self.wm.max_time, tuple(self.wm.recent.items()))


class FileEventSource(FixedPartitionedSource[Item, PartitionState]):
    """Replay an Avro object container file of events (one partition, file order)."""

    def __init__(
        self,
        path: Path | str,
        *,
        allowed_lateness_ms: int,
        batch_size: int = 1000,
        privacy: Pseudonymiser | None = None,
    ):
        self.path = Path(path)
        self.allowed_lateness_ms = allowed_lateness_ms
        self.batch_size = batch_size
        self.privacy = privacy

    def list_parts(self) -> list[str]:
        STREAM_CLOCK.expect([str(self.path)])
        return [str(self.path)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: PartitionState | None
    ) -> _IteratorPartition:
        codec = _with_privacy(Codec(), self.privacy)

        def items() -> Iterator[tuple[Item, Callable[[], bytes], Source]]:
            src_name = str(self.path)
            for index, value in read_events_file(self.path, codec):
                src = Source(src_name, None, index)
                yield value, _encoder(codec, value), src

        return _IteratorPartition(
            for_part,
            items(),
            resume=resume_state,
            batch_size=self.batch_size,
            codec=codec,
            wm=Watermark(self.allowed_lateness_ms),
        )


class EventListSource(FixedPartitionedSource[Item, PartitionState]):
    """Events from a deterministic, re-creatable sequence (the generator), one partition.

    ``make_events`` is called once per (re)start; on resume the first
    ``position`` events are skipped, so it must yield the same sequence again.
    """

    def __init__(
        self,
        make_events: Callable[[], Iterator[Event]],
        *,
        allowed_lateness_ms: int,
        name: str = "generator",
        batch_size: int = 1000,
        privacy: Pseudonymiser | None = None,
    ) -> None:
        self.make_events = make_events
        self.privacy = privacy
        self.allowed_lateness_ms = allowed_lateness_ms
        self.name = name
        self.batch_size = batch_size

    def list_parts(self) -> list[str]:
        STREAM_CLOCK.expect([self.name])
        return [self.name]

    def build_part(
        self, step_id: str, for_part: str, resume_state: PartitionState | None
    ) -> _IteratorPartition:
        codec = Codec()
        clean = self.privacy.event if self.privacy is not None else None

        def items() -> Iterator[tuple[Item, Callable[[], bytes], Source]]:
            for index, raw in enumerate(self.make_events()):
                event = raw if clean is None else clean(raw)
                yield event, _encoder(codec, event), Source(self.name, None, index)

        return _IteratorPartition(
            for_part,
            items(),
            resume=resume_state,
            batch_size=self.batch_size,
            codec=codec,
            wm=Watermark(self.allowed_lateness_ms),
        )


def _with_privacy(codec: Codec, privacy: Pseudonymiser | None) -> Codec:
    if privacy is not None:
        codec.privacy = privacy.record
    return codec


def _encoder(codec: Codec, value: Item) -> Callable[[], bytes]:
    """The bytes a late event's dead letter keeps: re-encoded (only built when late)."""
    if isinstance(value, DeadLetter):
        return lambda: value.original
    return lambda: codec.encode_event(value)
