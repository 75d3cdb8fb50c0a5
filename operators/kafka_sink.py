"""Kafka sink that never loses output silently: every epoch's output is confirmed or raises.

The flow's outputs to Kafka (trigger topics, ``attune.segments``, the
dead-letter topic) go through :class:`CheckedKafkaSink` as :class:`KafkaOut`
messages; :func:`to_kafka` encodes an output with the codec and keys it.

Bytewax's own ``KafkaSink`` flushes without looking at delivery reports, so a
message the broker refused (unknown topic, too large, authorisation) vanishes
while the dataflow carries on. This sink produces with ``acks=all`` and
idempotence and records every failed delivery report; it does not wait for the
broker after each batch (that wait, a flush per batch, blocked the worker for
about 2 ms a batch on loopback). At the end of every epoch, before Bytewax commits it,
it flushes with a bound: if any message failed, or is still undelivered when
the bound runs out, it raises :class:`DeliveryError` (a failure reported
earlier raises at the next batch). Bytewax then stops, the epoch is not
committed, and recovery replays from the last snapshot: output is delivered at
least once, never lost. (After a replay, consumers may see a message twice;
triggers carry a ``trigger_id`` to deduplicate by.)

A message that can never be delivered (larger than the broker accepts, a topic
that does not exist) fails again on every replay: that is deliberate, an
operator must see it; upstream steps keep outputs within bounds.

Keys (design.md, "Contracts"): triggers and segment changes are keyed by their
user id, so one user's outputs stay in order on one partition. Dead letters
have no key: they carry no trustworthy user (the input could not be decoded),
and an unkeyed message is spread over the partitions.

>>> from attune.operators.codec import Codec
>>> from attune.operators.events import SegmentChange
>>> change = SegmentChange(user_id="u1", segment="vip", change="ENTERED", source="RULE",
...                        event_time=1_700_000_000_000, emit_time=1_700_000_000_005)
>>> out = to_kafka(change, Codec(), "attune.segments")
>>> out.topic, out.key, out.value[:2].hex()
('attune.segments', b'u1', 'c301')
"""

from __future__ import annotations

import json
import logging
import threading
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from attune.operators.codec import Codec
from attune.operators.events import DeadLetter, ErasureConfirmation, SegmentChange, Trigger

log = logging.getLogger(__name__)
#: librdkafka's own log lines of the sinks' producer (a line per reconnect attempt), through
#: Python logging instead of the process's stderr: the producer is shared and lives as long
#: as a flow of the process uses it, so its lines must not land on whatever prints after
#: (the CLI shows them with --verbose only, ``flows.cli.QUIET_LOGGERS``). Errors that matter
#: reach ``error_cb`` and the delivery reports.
LIBRDKAFKA_LOG = "attune.kafka_sink.librdkafka"

#: How long the end-of-epoch flush may wait for delivery reports.
FLUSH_TIMEOUT_S = 30.0

#: Serve delivery reports every this many produced messages within a batch.
POLL_EVERY = 1000

#: Producer settings the guarantees depend on; ``config`` may tune others.
PRODUCER_DEFAULTS: dict[str, str | int | bool] = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 5,
    # Only failures call back into Python: no per-message cost when all is well.
    "delivery.report.only.error": True,
}

#: Settings of :data:`PRODUCER_DEFAULTS` that ``config`` may not change.
_GUARANTEES = ("acks", "enable.idempotence")

#: kafka-python option names (as ``attune.operators.settings.client_options`` builds them) and
#: their librdkafka names, so that the security options are built in one place.
_LIBRDKAFKA_NAMES: dict[str, str] = {
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_password": "ssl.key.password",
}


def librdkafka_security(options: Mapping[str, Any]) -> dict[str, str]:
    """kafka-python security options (``attune.operators.settings.client_options``) in
    librdkafka names.

    >>> librdkafka_security({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
    ...                      "sasl_plain_username": "u", "sasl_plain_password": "p"})
    {'security.protocol': 'SASL_SSL', 'sasl.mechanism': 'PLAIN', 'sasl.username': 'u', \
'sasl.password': 'p'}

    An option without a known librdkafka name raises ``ValueError`` rather than
    being dropped: a producer that silently ignored a security setting could
    connect without it.
    """
    unknown = sorted(set(options) - _LIBRDKAFKA_NAMES.keys())
    if unknown:
        raise ValueError(
            f"Kafka client options {unknown} have no librdkafka equivalent in "
            "attune.operators.kafka_sink._LIBRDKAFKA_NAMES; add them there"
        )
    return {_LIBRDKAFKA_NAMES[name]: str(value) for name, value in options.items()}


@dataclass(frozen=True, slots=True)
class KafkaOut:
    """One message for :class:`CheckedKafkaSink`: topic, key (``None``: no key) and value."""

    topic: str
    key: bytes | None
    value: bytes


def to_kafka(
    out: Trigger | SegmentChange | DeadLetter | ErasureConfirmation, codec: Codec, topic: str
) -> KafkaOut:
    """Encode an output for ``topic``: keyed by its user id; dead letters have no key."""
    key = None if isinstance(out, DeadLetter) else out.user_id.encode()
    return KafkaOut(topic, key, codec.encode_output(out))


class DeliveryError(RuntimeError):
    """Messages were not delivered: the broker refused them or did not confirm them in time."""


class _Failures:
    """Failed delivery reports since the last check; the producer's delivery callback."""

    __slots__ = ("count", "first_code", "first_error", "first_topic")

    def __init__(self) -> None:
        self.count = 0
        self.first_code: int | None = None
        self.first_error = ""
        self.first_topic = ""

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            return
        self.record(str(err.str()), msg.topic() or "?", err.code())

    def record(self, error: str, topic: str, code: int | None = None) -> None:
        if not self.count:
            self.first_error, self.first_topic, self.first_code = error, topic, code
        self.count += 1

    def reset(self) -> None:
        self.count = 0
        self.first_code = None
        self.first_error = self.first_topic = ""


class _SharedProducer:
    """One producer for every Kafka sink partition of a process that has the same settings.

    librdkafka's producer is thread-safe and batches per broker, so the sinks of the
    trigger, segment, dead-letter and erasure topics (and their partitions on every
    worker thread) share one: one set of client threads, one request per broker for
    all topics. Built on first use (:func:`_acquire`), dropped when the last partition
    using it closes.
    """

    __slots__ = ("failed", "failures", "key", "produced", "producer", "users")

    def __init__(self, key: str, producer: Producer, failures: _Failures) -> None:
        self.key = key
        self.producer = producer
        self.failures = failures
        self.users = 0
        #: Messages produced since the last check (for the error message).
        self.produced = 0
        #: A DeliveryError was raised: the flow is stopping, closing checks no more.
        self.failed = False


_SHARED: dict[str, _SharedProducer] = {}
_SHARED_LOCK = threading.Lock()


def _acquire(config: dict[str, Any]) -> _SharedProducer:
    """The process's producer for ``config`` (built on first use), one more user counted."""
    key = json.dumps(sorted(config.items()), default=str)
    with _SHARED_LOCK:
        shared = _SHARED.get(key)
        # One that raised belongs to a flow that stopped (and may not have closed it).
        if shared is None or shared.failed:
            failures = _Failures()
            full = {
                **config,
                "on_delivery": failures,
                "error_cb": _log_client_error,
                "logger": logging.getLogger(LIBRDKAFKA_LOG),
            }
            shared = _SHARED[key] = _SharedProducer(key, Producer(full), failures)
        shared.users += 1
        return shared


def _release(shared: _SharedProducer) -> None:
    with _SHARED_LOCK:
        shared.users -= 1
        if shared.users <= 0 and _SHARED.get(shared.key) is shared:
            del _SHARED[shared.key]


class _KafkaPartition(StatefulSinkPartition[KafkaOut, None]):
    """Produces without waiting; :meth:`snapshot`, at the end of each epoch, confirms."""

    def __init__(self, shared: _SharedProducer, flush_timeout_s: float) -> None:
        self._shared = shared
        self._producer = shared.producer
        self._failures = shared.failures
        self._flush_timeout_s = flush_timeout_s
        self._closed = False

    def write_batch(self, items: list[KafkaOut]) -> None:
        producer = self._producer
        produce = producer.produce
        for i, item in enumerate(items, 1):
            try:
                produce(item.topic, item.value, item.key)
            except BufferError:
                self._produce_when_room(item)
            except KafkaException as exc:
                # Refused before queueing, e.g. larger than the producer's message.max.bytes.
                self._failures.record(_reason(exc), item.topic)
            if not i % POLL_EVERY:
                producer.poll(0)
        self._shared.produced += len(items)
        # Serve the delivery reports that are in (only failures call back): a failure
        # seen now stops the flow now rather than at the end of the epoch.
        producer.poll(0)
        if self._failures.count:
            self._check()

    def _produce_when_room(self, item: KafkaOut) -> None:
        """The local queue is full: serve delivery reports until there is room, bounded."""
        deadline = time.monotonic() + self._flush_timeout_s
        while True:
            self._producer.poll(0.1)
            try:
                self._producer.produce(item.topic, item.value, item.key)
            except BufferError:
                if time.monotonic() >= deadline:
                    self._shared.failed = True
                    raise DeliveryError(
                        f"the producer's local queue stayed full for {self._flush_timeout_s:g}s "
                        f"({len(self._producer)} messages waiting) while producing to "
                        f"{item.topic}: is the broker reachable?"
                    ) from None
            else:
                return

    def snapshot(self) -> None:
        """End of the epoch, before Bytewax commits it: every message produced so far is
        confirmed delivered, or :class:`DeliveryError` stops the flow (no state to keep)."""
        self._check()

    def _check(self) -> None:
        """Flush (bounded) and raise :class:`DeliveryError` unless every message was delivered."""
        undelivered = self._producer.flush(self._flush_timeout_s)
        failures = self._failures
        produced, self._shared.produced = self._shared.produced, 0
        if failures.count or undelivered:
            parts = []
            if failures.count:
                parts.append(
                    f"{failures.count} failed (first: {failures.first_error} "
                    f"on topic {failures.first_topic}{self._topic_problem(failures)})"
                )
            if undelivered:
                parts.append(
                    f"{undelivered} still undelivered after waiting {self._flush_timeout_s:g}s"
                )
            message = (
                f"Kafka delivery failed for {produced} messages produced since the last "
                "check: "
                + "; ".join(parts)
                + ". The dataflow stops before the epoch is committed; recovery replays "
                "from the last snapshot."
            )
            # Reset, so a caller that catches this error counts the next messages afresh.
            failures.reset()
            self._shared.failed = True
            raise DeliveryError(message)

    def _topic_problem(self, failures: _Failures) -> str:
        """Why a message timed out, when its topic's metadata says (e.g. it does not exist)."""
        if failures.first_code != KafkaError._MSG_TIMED_OUT:
            return ""
        try:
            metadata = self._producer.list_topics(failures.first_topic, timeout=5.0)
        except KafkaException:
            return ""
        topic = metadata.topics.get(failures.first_topic)
        if topic is None or topic.error is None:
            return ""
        return (
            f"; the topic's metadata says: {topic.error.str()} (topics are not created on "
            "first use: create it, e.g. with `attune topics create`)"
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            # After a DeliveryError the flow is stopping (Bytewax closes partitions as it
            # unwinds): no second wait on a broker that already failed.
            if not self._shared.failed:
                self._check()
        finally:
            _release(self._shared)


class CheckedKafkaSink(FixedPartitionedSink[KafkaOut, None]):
    """Produces :class:`KafkaOut` messages; every epoch's messages are delivered before
    Bytewax commits the epoch, or :class:`DeliveryError` stops the flow.

    A Bytewax *partitioned* sink, because only those are told when an epoch ends: Bytewax
    0.21 calls a partition's ``snapshot()`` at the end of every epoch in which it was
    written, before the epoch's snapshots are committed, recovery on or not (and its
    ``close()`` at the end of a bounded input). ``write_batch`` produces and returns at
    once; ``snapshot()`` flushes (bounded by ``flush_timeout_s``) and raises if any
    message failed or is left. So the worker thread no longer waits for the broker's
    acknowledgements after every batch, and nothing an epoch produced can be lost: an
    epoch is committed only after its messages were confirmed.

    The stream it writes is keyed (``(key, KafkaOut)``, :func:`keyed`): Bytewax routes
    each key to one of :data:`SINK_PARTS` partitions (one user's messages stay on one,
    in order) and each partition to one worker. With one worker, nothing moves; with
    several, a message may move to the worker of its partition first. Every partition
    of a process produces through one shared producer (:class:`_SharedProducer`).

    Args:
        bootstrap: ``host:port,...`` of the brokers.
        security: security options as ``attune.operators.settings.client_options(settings)``
            builds them (kafka-python names; translated by :func:`librdkafka_security`).
        config: further librdkafka producer settings, applied last (e.g.
            ``{"message.timeout.ms": 5000}``).
        flush_timeout_s: how long the end-of-epoch flush may wait.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        security: Mapping[str, Any] | None = None,
        config: Mapping[str, str | int | float | bool] | None = None,
        flush_timeout_s: float = FLUSH_TIMEOUT_S,
    ) -> None:
        if not bootstrap:
            raise ValueError(
                "no Kafka bootstrap servers: set ATTUNE_KAFKA_BOOTSTRAP "
                "(or start local servers with `attune local up`)"
            )
        weakened = {
            name: value
            for name, value in (config or {}).items()
            if name in _GUARANTEES and _norm(value) != _norm(PRODUCER_DEFAULTS[name])
        }
        if weakened:
            raise ValueError(
                f"producer settings {weakened} would weaken delivery guarantees "
                "(acks=all, enable.idempotence=true); leave them out of config"
            )
        self.bootstrap = bootstrap
        self.security = librdkafka_security(security or {})  # unknown options fail here
        self.config = dict(config or {})
        self.flush_timeout_s = flush_timeout_s

    def producer_config(self) -> dict[str, Any]:
        """The librdkafka settings of the process's shared producer (without callbacks)."""
        return {
            "bootstrap.servers": self.bootstrap,
            "client.id": "attune-sinks",
            **PRODUCER_DEFAULTS,
            **self.security,
            **self.config,
        }

    def list_parts(self) -> list[str]:
        # Every worker can reach the broker: each lists every partition and Bytewax
        # spreads them over the workers.
        return list(_PART_NAMES)

    def part_fn(self, item_key: str) -> int:
        # Consistent across processes and runs (Python's hash() is not); adler32 is
        # Bytewax's default too.
        return zlib.adler32(item_key.encode())

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _KafkaPartition:
        # Nothing to resume: what an epoch produced was confirmed before it committed.
        return _KafkaPartition(_acquire(self.producer_config()), self.flush_timeout_s)


#: Partitions of each Kafka sink. Fixed: Bytewax keeps a snapshot per partition and routes
#: by the partition list, which must not change between runs. More than a cluster has
#: workers, so every worker gets some (Bytewax balances them).
SINK_PARTS = 16
_PART_NAMES = tuple(f"{i:02d}" for i in range(SINK_PARTS))


def keyed(out: KafkaOut) -> tuple[str, KafkaOut]:
    """``out`` with the key Bytewax routes it by: its Kafka key (the user), or for an
    unkeyed message (a dead letter) a hash of its value, so they spread over partitions.

    >>> keyed(KafkaOut("t", b"u1", b"v"))[0], keyed(KafkaOut("t", None, b"v"))[0]
    ('u1', '#6b643b84')
    """
    if out.key is not None:
        return out.key.decode(errors="replace"), out
    return f"#{zlib.crc32(out.value):08x}", out


def _norm(value: object) -> str:
    text = str(value).lower()
    return "all" if text == "-1" else text


def _reason(exc: KafkaException) -> str:
    err = exc.args[0] if exc.args else None
    return str(err.str()) if isinstance(err, KafkaError) else str(exc)


def _log_client_error(err: KafkaError) -> None:
    # Client-level errors (broker down, authentication); deliveries that they
    # prevent still fail or time out, and raise from the batch check.
    log.warning("Kafka producer: %s", err)
