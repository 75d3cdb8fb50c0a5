"""``attune generate --kafka``: generated events through a real broker and back, unchanged.

Produces with :func:`attune.flows.generate.produce`, consumes every partition from
the beginning with confluent-kafka, decodes each message with the codec and
compares with what the generator made, per message key, in order.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from attune.flows.generate import ProduceError, produce
from attune.operators.codec import Codec
from attune.operators.events import DeadLetter, Event, ItemUpdate, Source
from attune.workload.generator import GeneratorConfig, generate

WAIT_S = 60.0
CONFIG = GeneratorConfig(users=150, days=6, seed=21)  # 12,305 events


def consume_all(
    bootstrap: str, topic: str, expected: int
) -> list[tuple[bytes, int, bytes, Source]]:
    """Every message of ``topic`` as (key, partition, value, source), waiting for ``expected``."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-generate-{topic}",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        out: list[tuple[bytes, int, bytes, Source]] = []
        deadline = time.monotonic() + WAIT_S
        while len(out) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                assert msg.error() is None, msg.error()
                key, partition, value = msg.key(), msg.partition(), msg.value()
                assert key is not None and partition is not None and value is not None
                out.append((key, partition, value, Source(msg.topic(), partition, msg.offset())))
        return out
    finally:
        consumer.close()


@pytest.mark.integration
def test_generated_events_round_trip_through_kafka(
    kafka_bootstrap: str, fresh_topic: Callable[..., str]
) -> None:
    events_topic = fresh_topic(partitions=3)
    items_topic = fresh_topic(partitions=1)
    codec = Codec()
    generated = generate(CONFIG)
    sent = list(generate(CONFIG).events)  # the same events: the generator is deterministic
    assert len(sent) >= 10_000

    report = produce(
        generated, kafka_bootstrap, events_topic, items_topic, None, codec, progress=False
    )

    assert (report.events, report.items) == (len(sent), len(generated.items))
    received = consume_all(kafka_bootstrap, events_topic, len(sent))
    assert len(received) == len(sent)
    by_key: dict[bytes, list[Event]] = defaultdict(list)
    partition_of: dict[bytes, set[int]] = defaultdict(set)
    for key, partition, value, source in received:
        decoded = codec.decode_event(value, source)
        assert not isinstance(decoded, DeadLetter), decoded.reason
        by_key[key].append(decoded)
        partition_of[key].add(partition)
    expected: dict[bytes, list[Event]] = defaultdict(list)
    for event in sent:
        expected[event.user_key.encode()].append(event)
    assert by_key.keys() == expected.keys()
    for key, events in expected.items():
        assert by_key[key] == events, key  # same events, in the order they were produced
    assert all(len(p) == 1 for p in partition_of.values())
    assert len({p for ps in partition_of.values() for p in ps}) == 3

    items = consume_all(kafka_bootstrap, items_topic, len(generated.items))
    decoded_items = [codec.decode_item(value, source) for _, _, value, source in items]
    assert all(isinstance(i, ItemUpdate) for i in decoded_items)
    assert decoded_items == generated.items  # one partition: produced order
    assert all(
        key == i.item_id.encode() for (key, *_), i in zip(items, generated.items, strict=True)
    )


@pytest.mark.integration
def test_paced_produce_holds_the_rate(
    kafka_bootstrap: str, fresh_topic: Callable[..., str]
) -> None:
    topic = fresh_topic(partitions=1)
    cfg = GeneratorConfig(users=10, days=1, seed=3)
    n = sum(1 for _ in generate(cfg).events)
    rate = n / 1.5  # about 1.5 s of events

    report = produce(generate(cfg), kafka_bootstrap, topic, None, rate, Codec(), progress=False)

    assert report.events == n
    assert report.events_per_s <= rate * 1.1
    assert len(consume_all(kafka_bootstrap, topic, n)) == n


@pytest.mark.integration
def test_produce_to_a_missing_topic_raises(kafka_bootstrap: str) -> None:
    cfg = GeneratorConfig(users=2, days=1)
    with pytest.raises(ProduceError, match=r"topic attune\.no\.such\.topic is not available"):
        produce(
            generate(cfg), kafka_bootstrap, "attune.no.such.topic", None, None, Codec(),
            progress=False,
        )  # fmt: skip
