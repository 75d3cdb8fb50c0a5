"""A test's own topics, and reading the flow's output topics back (shared by tests)."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, Message, TopicPartition

from attune.clients.subscriber import ActOnce, Delivery, MemoryOnceStore, TriggerSubscriber
from attune.flows.generate import ProduceReport, produce
from attune.flows.settings import Settings
from attune.operators.codec import Codec
from attune.operators.events import Trigger
from attune.workload.generator import Generated


def fresh_topics(prefix: str) -> dict[str, str]:
    """Settings naming every topic of the flow afresh (``<prefix>.<topic>.<random tag>``),
    for ``Settings.replace``: each test module gets topics of its own."""
    tag = uuid.uuid4().hex[:8]
    return {
        "topic_events": f"{prefix}.events.{tag}",
        "topic_items": f"{prefix}.items.{tag}",
        "topic_segments": f"{prefix}.segments.{tag}",
        "topic_dlq": f"{prefix}.dlq.{tag}",
        "topic_erasures": f"{prefix}.erasures.{tag}",
        "topic_triggers_prefix": f"{prefix}.triggers.{tag}.",
    }


def read_all(settings: Settings, kind: str) -> tuple[list[Trigger], list[Trigger]]:
    """Every delivered trigger, and the ones the app acted on (act-once by trigger id)."""
    delivered: list[Trigger] = []
    acted: list[Trigger] = []
    once = ActOnce(MemoryOnceStore())
    with TriggerSubscriber(
        settings.kafka_bootstrap, [kind], f"app-{uuid.uuid4().hex[:6]}", settings=settings
    ) as sub:
        idle = 0
        while idle < 5:  # bounded: stop after 5 empty polls in a row
            batch = sub.poll(timeout_s=1.0)
            idle = 0 if batch else idle + 1
            for rec in batch:
                assert isinstance(rec, Delivery), rec
                delivered.append(rec.trigger)
                if once.first_time(rec.trigger.trigger_id):
                    acted.append(rec.trigger)
            sub.commit()
    return delivered, acted


def consume_messages(settings: Settings, topic: str) -> list[Message]:
    """Every message on ``topic`` now, all partitions read to their end (60 s at most)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"check-{uuid.uuid4().hex}",
            "enable.partition.eof": True,
        }
    )
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
    done: set[int] = set()
    out: list[Message] = []
    deadline = time.monotonic() + 60
    while len(done) < len(meta.partitions) and time.monotonic() < deadline:
        for msg in consumer.consume(1000, 1.0):
            if msg.error() is not None:
                done.add(msg.partition() or 0)
            else:
                out.append(msg)
    consumer.close()
    assert len(done) == len(meta.partitions), f"{topic} not read to its end within 60 s"
    return out


def consume_records(settings: Settings, topic: str) -> list[tuple[bytes, bytes]]:
    """Every ``(key, value)`` on ``topic`` now (:func:`consume_messages`)."""
    return [(m.key() or b"", m.value() or b"") for m in consume_messages(settings, topic)]


def consume_all(settings: Settings, topic: str) -> list[bytes]:
    """Every value on ``topic`` now (:func:`consume_records`)."""
    return [value for _, value in consume_records(settings, topic)]


def produce_generated(settings: Settings, g: Generated) -> ProduceReport:
    """The generated workload ``g`` on the settings' events and items topics (project codec,
    no schema registry, no progress lines)."""
    return produce(
        g,
        settings.kafka_bootstrap,
        settings.topic_events,
        settings.topic_items,
        None,
        Codec(),
        progress=False,
    )
