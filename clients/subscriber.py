"""Subscriber client for downstream apps: typed triggers from Attune's trigger topics.

The dataflow publishes each behavioural trigger, Avro-encoded and keyed by
user, to ``attune.triggers.<kind>`` (:meth:`attune.operators.settings.Settings.topic_trigger`).
Apps that send the email, the push or the on-site message read them here,
with kafka-python only (no native dependency):

- :class:`TriggerSubscriber` consumes one or more trigger topics in a consumer
  group with auto-commit off. :meth:`~TriggerSubscriber.poll` returns
  :class:`Delivery` items (a decoded :class:`~attune.operators.events.Trigger` and
  where it was read) and :class:`Undecodable` items (bytes the Avro codec could
  not turn into a trigger, with topic/partition/offset and the reason: never
  skipped silently, never raised). :meth:`~TriggerSubscriber.commit` commits
  what was returned once the app has acted: **at-least-once** delivery.
- :class:`ActOnce` turns at-least-once delivery into acting once per trigger
  id. Ids are deterministic from the trigger's cause, so redeliveries and the
  triggers Attune replays after recovery carry the same id. The record of ids
  acted on lives in a store: :class:`MemoryOnceStore` (one process, bounded,
  TTL) or :class:`RedisOnceStore` (``SET key NX EX``; several instances).
- :meth:`TriggerSubscriber.process` is the loop most apps want: poll, call the
  handler for each first-time trigger, commit after the batch, stop after a
  number of messages, a timeout or a stop flag.

>>> once = ActOnce(MemoryOnceStore(max_entries=1000, ttl_s=3600))
>>> [once.first_time(tid) for tid in ["t1", "t2", "t1", "t2", "t3"]]
[True, True, False, False, True]

docs/subscriber.md has the delivery semantics in full and an example app.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from kafka import KafkaConsumer
from kafka.errors import CommitFailedError
from kafka.structs import OffsetAndMetadata, TopicPartition

from attune.operators.codec import Codec
from attune.operators.events import DeadLetter, ErrorClass, Source, Trigger
from attune.operators.schema_registry import SchemaRegistryClient
from attune.operators.settings import Settings, client_options
from attune.operators.triggers import KINDS

log = logging.getLogger(__name__)

#: How long an id is remembered by default: long enough to cover a redelivery
#: after a crash and a replay after Attune's recovery, short enough to stay small.
DEFAULT_MEMORY_TTL_S = 24 * 3600
#: The longest the broker may hold a subscriber's fetch waiting for data (triggers are
#: for acting within seconds: an idle poll every 50 ms costs the broker little).
SUBSCRIBER_FETCH_MAX_WAIT_MS = 50
DEFAULT_MEMORY_ENTRIES = 100_000
DEFAULT_REDIS_TTL_S = 7 * 24 * 3600
DEFAULT_REDIS_PREFIX = "attune:once:"


# --- what a poll returns ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """A decoded trigger and where it was read (``timestamp_ms``: the Kafka record time)."""

    trigger: Trigger
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A message of a trigger topic that is not a usable trigger; the app decides what to do.

    ``original`` holds the bytes as read (``b""`` for a tombstone), ``key`` the
    Kafka key (the user id, when the producer set one), ``error_class`` and
    ``reason`` what the codec found wrong.
    """

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    original: bytes
    error_class: ErrorClass
    reason: str

    def dead_letter(self, dead_time_ms: int) -> DeadLetter:
        """The same, as an ``attune.output.DeadLetter`` (to forward to a dead-letter topic)."""
        return DeadLetter(
            original=self.original,
            error_class=self.error_class,
            reason=self.reason,
            dead_time=dead_time_ms,
            source_topic=self.topic,
            source_partition=self.partition,
            source_offset=self.offset,
        )


#: One item of :meth:`TriggerSubscriber.poll`.
Received = Delivery | Undecodable


class KafkaRecord(Protocol):
    """The fields of a kafka-python ``ConsumerRecord`` that the subscriber reads."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


def decode_record(record: KafkaRecord, codec: Codec) -> Received:
    """One Kafka record of a trigger topic as a :class:`Delivery` or an :class:`Undecodable`.

    Never raises on bad bytes; operator errors (a schema registry that cannot
    be reached) do raise, since every message would otherwise look bad.

    >>> from types import SimpleNamespace
    >>> bad = SimpleNamespace(topic="attune.triggers.long_dwell", partition=0, offset=7,
    ...                       timestamp=0, key=b"u1", value=b"not avro")
    >>> item = decode_record(bad, Codec())
    >>> item.offset, item.error_class.value
    (7, 'BAD_MAGIC')
    """
    data = record.value if record.value is not None else b""
    source = Source(record.topic, record.partition, record.offset)
    try:
        decoded = codec.decode_trigger(data, source)
        error_class, reason = (
            (decoded.error_class, decoded.reason) if isinstance(decoded, DeadLetter) else (None, "")
        )
    except (KeyError, TypeError, ValueError) as exc:  # a record that does not map to a Trigger
        decoded, error_class = None, ErrorClass.MALFORMED
        reason = f"record does not map to a Trigger: {type(exc).__name__}: {exc}"
    if isinstance(decoded, Trigger):
        return Delivery(decoded, record.topic, record.partition, record.offset, record.timestamp)
    if record.value is None:
        reason = "tombstone (message without a value)"
    return Undecodable(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp,
        key=record.key,
        original=data,
        error_class=error_class or ErrorClass.OTHER,
        reason=reason,
    )


# --- acting once -----------------------------------------------------------------------------


class OnceStore(Protocol):
    """Remembers which ids were claimed: :meth:`claim` is atomic test-and-set."""

    def claim(self, key: str) -> bool:
        """Mark ``key``; ``True`` if it was not marked before (the caller acts)."""
        ...

    def release(self, key: str) -> None:
        """Forget ``key`` (the action failed and should happen on redelivery)."""
        ...


class MemoryOnceStore:
    """Ids claimed in this process, each kept ``ttl_s`` seconds, at most ``max_entries``.

    When full, the oldest claim is forgotten first, so size it to hold every
    id that can still be redelivered (a consumer's uncommitted batches and
    Attune's replay window). A repeated claim does not extend an id's life,
    exactly as ``SET NX`` in :class:`RedisOnceStore`. ``clock`` returns
    seconds (default :func:`time.monotonic`). Thread-safe.

    >>> now = [0.0]
    >>> store = MemoryOnceStore(max_entries=2, ttl_s=10, clock=lambda: now[0])
    >>> store.claim("a"), store.claim("a"), store.claim("b"), store.claim("c"), len(store)
    (True, False, True, True, 2)
    >>> store.claim("a")  # evicted: the store holds only the two newest
    True
    >>> now[0] = 10.0
    >>> store.claim("c"), len(store)  # every entry has expired
    (True, 1)
    """

    def __init__(
        self,
        max_entries: int = DEFAULT_MEMORY_ENTRIES,
        ttl_s: float = DEFAULT_MEMORY_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        # id -> expiry; insertion order is expiry order (one TTL, a clock that does not go back).
        self._expiry: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def claim(self, key: str) -> bool:
        now = self._clock()
        with self._lock:
            self._expire(now)
            if key in self._expiry:
                return False
            self._expiry[key] = now + self.ttl_s
            if len(self._expiry) > self.max_entries:
                self._expiry.popitem(last=False)
            return True

    def release(self, key: str) -> None:
        with self._lock:
            self._expiry.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._expiry)

    def _expire(self, now: float) -> None:
        expiry = self._expiry
        while expiry:
            first = next(iter(expiry))
            if expiry[first] > now:
                break
            del expiry[first]


class RedisCommands(Protocol):
    """The two commands :class:`RedisOnceStore` uses (``redis.Redis``, ``RedisCluster``)."""

    def set(self, name: str, value: str, *, nx: bool, ex: int) -> Any: ...
    def delete(self, *names: str) -> Any: ...


class RedisOnceStore:
    """Claims in Redis, shared by every instance of an app: ``SET <key> <ms> NX EX <ttl_s>``.

    Keys are ``<prefix><namespace>:<trigger id>``, built by :meth:`key` only.
    ``namespace`` names the app (its consumer group is a good choice): two
    apps that both act on a trigger (email and push) need separate namespaces.
    The value is the claim time in epoch ms, for people looking at Redis.
    """

    def __init__(
        self,
        client: RedisCommands,
        namespace: str,
        *,
        prefix: str = DEFAULT_REDIS_PREFIX,
        ttl_s: int = DEFAULT_REDIS_TTL_S,
    ) -> None:
        if not namespace:
            raise ValueError("namespace is empty; name the app, e.g. its consumer group")
        if ttl_s < 1:
            raise ValueError(f"ttl_s must be at least 1 second, got {ttl_s}")
        self.client = client
        self.namespace = namespace
        self.prefix = prefix
        self.ttl_s = ttl_s

    def key(self, trigger_id: str) -> str:
        """The Redis key of one trigger id.

        >>> import redis
        >>> RedisOnceStore(redis.Redis(), "email").key("t-42")  # connects on first command only
        'attune:once:email:t-42'
        """
        return f"{self.prefix}{self.namespace}:{trigger_id}"

    def claim(self, key: str) -> bool:
        stamp = str(time.time_ns() // 1_000_000)
        return bool(self.client.set(self.key(key), stamp, nx=True, ex=self.ttl_s))

    def release(self, key: str) -> None:
        self.client.delete(self.key(key))


class ActOnce:
    """Act once per trigger id although delivery is at-least-once.

    :meth:`first_time` claims the id atomically *before* the app acts; a
    failed action should :meth:`forget` it so that the redelivery acts.
    (:meth:`TriggerSubscriber.process` does both.) A process killed between
    the claim and the action loses that one action: the choice that never
    sends a message twice.

    Args:
        store: where claims live; default a :class:`MemoryOnceStore`.
    """

    def __init__(self, store: OnceStore | None = None) -> None:
        self.store: OnceStore = store if store is not None else MemoryOnceStore()

    def first_time(self, trigger_id: str) -> bool:
        """``True`` the first time ``trigger_id`` is seen (within the store's memory)."""
        return self.store.claim(trigger_id)

    def forget(self, trigger_id: str) -> None:
        """Undo a claim, so that the next delivery of ``trigger_id`` acts."""
        self.store.release(trigger_id)


# --- the subscriber --------------------------------------------------------------------------


@dataclass(slots=True)
class ProcessStats:
    """What :meth:`TriggerSubscriber.process` did: messages read, triggers acted on, ..."""

    received: int = 0
    acted: int = 0
    duplicates: int = 0
    undecodable: int = 0
    commits: int = 0


def _log_undecodable(item: Undecodable) -> None:
    log.warning(
        "undecodable message on %s[%d] at offset %d (%s): %s",
        item.topic,
        item.partition,
        item.offset,
        item.error_class.value,
        item.reason,
    )


class TriggerSubscriber:
    """Typed triggers from ``attune.triggers.<kind>`` for each of ``kinds``, in a consumer group.

    Args:
        bootstrap: Kafka bootstrap servers; empty: ``settings.kafka_bootstrap``.
        kinds: trigger kinds, e.g. ``["cart_abandoned"]``; topic names come
            from ``settings.topic_trigger(kind)``.
        group_id: the consumer group. Instances of one app share it (Kafka
            spreads the partitions over them); different apps use different
            groups, each getting every trigger.
        settings: topic prefix, Kafka security (SASL/TLS) and schema registry;
            default ``Settings.from_env()``.
        codec: decodes triggers; default one for ``settings`` (with the schema
            registry when ``settings.schema_registry_url`` is set).
        auto_offset_reset: where a group without committed offsets starts:
            ``"earliest"`` (default: nothing retained is missed) or ``"latest"``.
        consumer: a KafkaConsumer-compatible object to use instead of building
            one (tests); it is subscribed to the topics here.
        consumer_options: further ``KafkaConsumer`` options (``client_id``,
            ``max_poll_records``, ``session_timeout_ms``...). Auto-commit
            stays off.

    Offsets are committed only by :meth:`commit` (or :meth:`process`), for the
    messages returned so far: a crash before the commit means redelivery.
    """

    def __init__(
        self,
        bootstrap: str,
        kinds: Sequence[str],
        group_id: str,
        *,
        settings: Settings | None = None,
        codec: Codec | None = None,
        auto_offset_reset: str = "earliest",
        consumer: Any = None,
        **consumer_options: Any,
    ) -> None:
        if isinstance(kinds, str):
            raise TypeError(f"kinds must be a sequence of trigger kinds, e.g. [{kinds!r}]")
        if not kinds:
            raise ValueError("no trigger kinds to subscribe to")
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:  # a misspelt kind would subscribe to a topic nothing writes
            raise ValueError(
                f"unknown trigger kind(s) {', '.join(map(repr, unknown))}: the kinds are "
                + ", ".join(KINDS)
            )
        if not group_id:
            raise ValueError("group_id is empty: offsets are committed per consumer group")
        if consumer_options.get("enable_auto_commit"):
            raise ValueError("enable_auto_commit=True would commit before the app acted")
        self.settings = settings if settings is not None else Settings.from_env()
        self.codec = codec if codec is not None else _codec_for(self.settings)
        self.group_id = group_id
        self.topics: list[str] = list(dict.fromkeys(self.settings.topic_trigger(k) for k in kinds))
        if consumer is None:
            bootstrap = bootstrap or self.settings.kafka_bootstrap
            if not bootstrap:
                raise ValueError(
                    "no Kafka bootstrap servers: pass bootstrap or set ATTUNE_KAFKA_BOOTSTRAP"
                )
            _check_broker(bootstrap, self.settings)
            options: dict[str, Any] = {
                "client_id": f"attune-subscriber-{group_id}",
                # kafka-python's 500 ms default lets the broker hold a fetch that long
                # while it waits for data, so a trigger that arrives meanwhile can reach
                # the app up to ~0.5 s late; a keyword argument still overrides it.
                "fetch_max_wait_ms": SUBSCRIBER_FETCH_MAX_WAIT_MS,
                **client_options(self.settings),
                **consumer_options,
            }
            consumer = KafkaConsumer(
                bootstrap_servers=bootstrap,
                group_id=group_id,
                enable_auto_commit=False,
                auto_offset_reset=auto_offset_reset,
                **options,
            )
        self._consumer: Any = consumer
        self._consumer.subscribe(self.topics)
        # Next offset to commit per partition: one past the last message returned.
        self._pending: dict[TopicPartition, int] = {}
        self._closed = False

    # reading

    def poll(self, timeout_s: float = 1.0, max_records: int | None = None) -> list[Received]:
        """The messages that arrive within ``timeout_s`` (possibly none), decoded, in offset order
        per partition; at most ``max_records``."""
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        out: list[Received] = []
        for tp, records in batches.items():
            for record in records:
                out.append(decode_record(record, self.codec))
            if records:
                self._pending[tp] = records[-1].offset + 1
        return out

    def __iter__(self) -> Iterator[Received]:
        """Messages as they come, until :meth:`close`; commit as you go with :meth:`commit`."""
        while not self._closed:
            yield from self.poll(1.0)

    # committing

    def commit(self) -> bool:
        """Commit the offsets of every message returned so far: call it after acting on them.

        Returns ``False`` (and logs) when the group rebalanced in between: the
        partitions moved to another member, which will get those messages
        again (at-least-once; :class:`ActOnce` keeps the action single).
        """
        if not self._pending:
            return True
        assigned = self._consumer.assignment()
        offsets = {
            tp: OffsetAndMetadata(offset, "", -1)
            for tp, offset in self._pending.items()
            if tp in assigned
        }
        lost = sorted(f"{tp.topic}[{tp.partition}]" for tp in self._pending if tp not in assigned)
        self._pending.clear()
        if lost:
            log.warning("not committing %s: no longer assigned to this member", ", ".join(lost))
        if not offsets:
            return not lost
        try:
            self._consumer.commit(offsets=offsets)
        except CommitFailedError as exc:
            log.warning("commit failed after a rebalance; messages will be redelivered: %s", exc)
            return False
        return not lost

    # the loop

    def process(
        self,
        handler: Callable[[Trigger], object],
        *,
        once: ActOnce | None,
        max_messages: int | None = None,
        timeout_s: float | None = None,
        stop: threading.Event | None = None,
        on_undecodable: Callable[[Undecodable], object] | None = None,
        poll_timeout_s: float = 1.0,
    ) -> ProcessStats:
        """Poll, act on each first-time trigger, commit after each batch; return what was done.

        ``handler(trigger)`` is called for triggers ``once`` has not seen (for
        every trigger when ``once`` is ``None``). ``on_undecodable(item)`` is
        called for each undecodable message (default: log a warning); both
        are committed past once the call returns. If either raises, the
        triggers handled before it are committed, the claim of the failing
        one is forgotten, the consumer is rewound to it (it comes again on
        the next poll) and the exception propagates.

        Stops after ``max_messages`` messages (decoded or not), after
        ``timeout_s`` seconds, or once ``stop`` is set, whichever comes
        first; with none of them it runs until the process ends.
        """
        stats = ProcessStats()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        report = on_undecodable if on_undecodable is not None else _log_undecodable
        while not self._closed and not (stop is not None and stop.is_set()):
            wait = poll_timeout_s
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    break
            remaining = None if max_messages is None else max_messages - stats.received
            if remaining is not None and remaining <= 0:
                break
            batch = self.poll(wait, max_records=remaining)
            for index, item in enumerate(batch):
                try:
                    self._handle(item, handler, once, report, stats)
                except BaseException:
                    self._rewind(batch, index)
                    self.commit()
                    raise
                stats.received += 1
            if batch:
                self.commit()
                stats.commits += 1
        return stats

    @staticmethod
    def _handle(
        item: Received,
        handler: Callable[[Trigger], object],
        once: ActOnce | None,
        report: Callable[[Undecodable], object],
        stats: ProcessStats,
    ) -> None:
        if isinstance(item, Undecodable):
            report(item)
            stats.undecodable += 1
            return
        trigger_id = item.trigger.trigger_id
        if once is not None and not once.first_time(trigger_id):
            stats.duplicates += 1
            return
        try:
            handler(item.trigger)
        except BaseException:
            if once is not None:
                once.forget(trigger_id)
            raise
        stats.acted += 1

    def _rewind(self, batch: list[Received], failed: int) -> None:
        """After ``batch[failed]`` failed: commit only what came before it, re-read the rest."""
        restart: dict[TopicPartition, int] = {}
        for item in batch[failed:]:
            tp = TopicPartition(item.topic, item.partition)
            restart[tp] = min(item.offset, restart.get(tp, item.offset))
        for tp, offset in restart.items():
            self._consumer.seek(tp, offset)
            self._pending[tp] = offset
        # A partition whose first message in the batch failed has nothing new to commit.
        firsts: dict[TopicPartition, int] = {}
        for item in batch:
            tp = TopicPartition(item.topic, item.partition)
            firsts.setdefault(tp, item.offset)
        for tp, offset in restart.items():
            if firsts[tp] == offset:
                del self._pending[tp]

    # lifecycle

    def close(self) -> None:
        """Leave the group without committing (commit first if the app has acted)."""
        if not self._closed:
            self._closed = True
            self._consumer.close(autocommit=False)

    def __enter__(self) -> TriggerSubscriber:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _check_broker(bootstrap: str, settings: Settings) -> None:
    """Raise :class:`~attune.operators.connect_check.ConnectionCheckError` with one line
    when the broker refuses the credentials or the TLS handshake, or does not answer
    (kafka-python would retry for 30 s and say only "Unable to bootstrap"). The check uses
    librdkafka (confluent-kafka, installed with Attune); where it cannot be imported, the
    subscriber goes on without it, with kafka-python alone."""
    try:
        from attune.operators.connect_check import check_kafka
    except ImportError:  # pragma: no cover - confluent-kafka is a dependency of attune
        return
    check_kafka(bootstrap, settings)


def _codec_for(settings: Settings) -> Codec:
    if settings.schema_registry_url:
        return Codec(registry=SchemaRegistryClient(settings.schema_registry_url))
    return Codec()
