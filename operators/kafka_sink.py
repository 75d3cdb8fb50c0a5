"""Kafka sink that never loses output silently: every batch is confirmed delivered or raises.

The flow's outputs to Kafka (trigger topics, ``attune.segments``, the
dead-letter topic) go through :class:`CheckedKafkaSink` as :class:`KafkaOut`
messages; :func:`to_kafka` encodes an output with the codec and keys it.

Bytewax's own ``KafkaSink`` flushes without looking at delivery reports, so a
message the broker refused (unknown topic, too large, authorisation) vanishes
while the dataflow carries on. This sink produces with ``acks=all`` and
idempotence, records every failed delivery report, and at the end of every
batch flushes with a bound: if any message failed, or is still undelivered when
the bound runs out, it raises :class:`DeliveryError`. Bytewax then stops, and
recovery replays from the last snapshot: output is delivered at least once,
never lost. (After a replay, consumers may see a message twice; triggers carry
a ``trigger_id`` to deduplicate by.)

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

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from attune.operators.codec import Codec
from attune.operators.events import DeadLetter, ErasureConfirmation, SegmentChange, Trigger

log = logging.getLogger(__name__)

#: How long the end-of-batch flush may wait for delivery reports.
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


class _KafkaPartition(StatelessSinkPartition[KafkaOut]):
    def __init__(self, producer: Producer, failures: _Failures, flush_timeout_s: float) -> None:
        self._producer = producer
        self._failures = failures
        self._flush_timeout_s = flush_timeout_s

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
        self._check(len(items))

    def _produce_when_room(self, item: KafkaOut) -> None:
        """The local queue is full: serve delivery reports until there is room, bounded."""
        deadline = time.monotonic() + self._flush_timeout_s
        while True:
            self._producer.poll(0.1)
            try:
                self._producer.produce(item.topic, item.value, item.key)
            except BufferError:
                if time.monotonic() >= deadline:
                    raise DeliveryError(
                        f"the producer's local queue stayed full for {self._flush_timeout_s:g}s "
                        f"({len(self._producer)} messages waiting) while producing to "
                        f"{item.topic}: is the broker reachable?"
                    ) from None
            else:
                return

    def _check(self, batch_size: int) -> None:
        """Flush (bounded) and raise :class:`DeliveryError` unless every message was delivered."""
        undelivered = self._producer.flush(self._flush_timeout_s)
        failures = self._failures
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
                f"Kafka delivery failed for a batch of {batch_size} messages: "
                + "; ".join(parts)
                + ". The dataflow stops; recovery replays from the last snapshot."
            )
            # Reset, so a caller that catches this error counts the next batch afresh.
            failures.reset()
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
        self._check(0)


class CheckedKafkaSink(DynamicSink[KafkaOut]):
    """Produces :class:`KafkaOut` messages: each batch is delivered, or raises DeliveryError.

    Args:
        bootstrap: ``host:port,...`` of the brokers.
        security: security options as ``attune.operators.settings.client_options(settings)``
            builds them (kafka-python names; translated by :func:`librdkafka_security`).
        config: further librdkafka producer settings, applied last (e.g.
            ``{"message.timeout.ms": 5000}``).
        flush_timeout_s: how long the end-of-batch flush may wait.
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

    def producer_config(self, step_id: str, worker_index: int) -> dict[str, Any]:
        """The librdkafka settings of one worker's producer (without the callback)."""
        return {
            "bootstrap.servers": self.bootstrap,
            "client.id": f"attune-{step_id}-{worker_index}",
            **PRODUCER_DEFAULTS,
            **self.security,
            **self.config,
        }

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _KafkaPartition:
        failures = _Failures()
        config = self.producer_config(step_id, worker_index)
        config["on_delivery"] = failures
        config["error_cb"] = _log_client_error
        return _KafkaPartition(Producer(config), failures, self.flush_timeout_s)


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
