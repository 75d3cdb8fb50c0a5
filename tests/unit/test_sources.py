"""A Kafka batch through ``decode_messages``: events in order, and every dead letter with
its reason and its origin (topic, partition, offset), which is built only for those."""

from __future__ import annotations

from confluent_kafka import KafkaError, Message

from attune.operators.clock import FixedClock
from attune.operators.codec import Codec
from attune.operators.events import DeadLetter, ErrorClass, Event, EventType, Search, Source
from attune.operators.privacy import Pseudonymiser
from attune.operators.sources import Watermark, decode_messages

TOPIC = "attune.events"
T0 = 1_767_571_200_000
KEY = b"attune-test-sources-pseudonym-key-0123456789"


def _event(i: int, t: int, user: str = "u1") -> Event:
    return Event(f"e{i}", EventType.SEARCH, t, Search("boots"), user_id=user)


def _codec() -> Codec:
    return Codec(clock=FixedClock(T0))


def _msg(offset: int, value: bytes | None = None, error: KafkaError | None = None) -> Message:
    return Message(topic=TOPIC, partition=3, offset=offset, value=value, error=error)


def test_events_pass_in_order_and_the_offset_follows_the_last_message() -> None:
    codec = _codec()
    batch = [_msg(10 + i, codec.encode_event(_event(i, T0 + i))) for i in range(3)]
    out, offset, eof = decode_messages(batch, codec, Watermark(60_000), TOPIC, 3, tail=True)
    assert out == [_event(i, T0 + i) for i in range(3)]
    assert (offset, eof) == (13, False)


def test_undecodable_bytes_keep_the_codecs_reason_and_their_origin() -> None:
    codec = _codec()
    good = codec.encode_event(_event(1, T0))
    bad = [good[:20], b"\x07junk", good + b"\x00", b""]
    batch = [_msg(40 + i, value) for i, value in enumerate(bad)]
    out, offset, _ = decode_messages(batch, codec, Watermark(60_000), TOPIC, 3, tail=True)
    expected = [codec.decode_event(v, Source(TOPIC, 3, 40 + i)) for i, v in enumerate(bad)]
    assert out == expected
    assert all(isinstance(d, DeadLetter) and d.source_offset is not None for d in out)
    assert offset == 44


def test_a_late_event_is_dead_lettered_with_its_origin_and_pseudonymised() -> None:
    privacy = Pseudonymiser(KEY, "t1", "always")
    codec = _codec()
    codec.privacy = privacy.record
    on_time = codec.encode_event(_event(1, T0 + 600_000))
    late = codec.encode_event(_event(2, T0, user="ann@example.com"))
    out, _, _ = decode_messages(
        [_msg(7, on_time), _msg(8, late)], codec, Watermark(60_000), TOPIC, 3, tail=True
    )
    dead = out[1]
    assert isinstance(dead, DeadLetter) and dead.error_class is ErrorClass.LATE
    assert (dead.source_topic, dead.source_partition, dead.source_offset) == (TOPIC, 3, 8)
    assert dead.event_id == "e2" and b"ann@example.com" not in dead.original


def test_a_consumer_error_is_a_source_error_and_the_partition_end_stops_the_batch() -> None:
    codec = _codec()
    event = codec.encode_event(_event(1, T0))
    batch = [
        _msg(5, event),
        _msg(6, error=KafkaError(KafkaError._TRANSPORT)),
        _msg(7, error=KafkaError(KafkaError._PARTITION_EOF)),
        _msg(8, event),
    ]
    out, offset, eof = decode_messages(batch, codec, Watermark(60_000), TOPIC, 3, tail=False)
    assert out[0] == _event(1, T0) and len(out) == 2
    error = out[1]
    assert isinstance(error, DeadLetter) and error.error_class is ErrorClass.SOURCE_ERROR
    assert (error.source_topic, error.source_partition, error.source_offset) == (TOPIC, 3, 6)
    assert "Broker transport failure" in error.reason
    assert (offset, eof) == (6, True)
    tailing, _, still = decode_messages(batch, codec, Watermark(60_000), TOPIC, 3, tail=True)
    assert len(tailing) == 3 and not still


def test_the_kafka_consumer_reads_ahead_a_bounded_queue_that_its_config_overrides() -> None:
    """librdkafka's defaults read 100,000 messages ahead per consumer (~100 MB of a
    worker's memory on a backlog); the source bounds it, librdkafka accepts the names, and
    the source's own ``config`` still wins."""
    from confluent_kafka import Consumer

    from attune.operators.sources import CONSUMER_PREFETCH, KafkaEventSource

    config = KafkaEventSource("127.0.0.1:1", "events", allowed_lateness_ms=0)._config()
    assert config["queued.min.messages"] == CONSUMER_PREFETCH["queued.min.messages"] < 100_000
    assert config["queued.max.messages.kbytes"] < 65_536
    Consumer(config).close()  # an unknown or invalid property would raise here
    mine = KafkaEventSource(
        "127.0.0.1:1", "events", allowed_lateness_ms=0, config={"queued.min.messages": 50}
    )
    assert mine._config()["queued.min.messages"] == 50
