"""The subscriber client against the real Kafka broker and Redis of deploy/local.

Encoded triggers (some ids published twice, as after Attune's recovery) and one
garbage message go to trigger topics of their own; the subscriber reads all of
them, the app acts exactly once per trigger id, the garbage comes back as
undecodable with its offset. A member that acts and dies before committing
leaves its messages to the next member of the group, and the Redis-backed
ActOnce skips what it already acted on. What is committed is not read again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from kafka import KafkaProducer

from attune.clients.subscriber import (
    ActOnce,
    Delivery,
    RedisOnceStore,
    TriggerSubscriber,
    Undecodable,
)
from attune.flows import topics
from attune.flows.settings import Settings
from attune.operators.codec import Codec
from attune.operators.events import ErrorClass, LineItem, Trigger

pytestmark = pytest.mark.integration

KINDS = ("cart_abandoned", "long_dwell")
PARTITIONS = 3
WAIT_S = 60.0
CODEC = Codec()
REPO = Path(__file__).resolve().parents[2]


def trigger(kind: str, n: int) -> Trigger:
    cart = kind == "cart_abandoned"
    return Trigger(
        trigger_id=f"{kind}-{n}",
        kind=kind,
        user_id=f"u{n % 7}",
        cause_event_time=1_700_000_000_000 + n,
        emit_time=1_700_000_001_800 + n,
        reason="test",
        cart_lines=(LineItem("sku-1", 1, 1000 + n),) if cart else (),
        cart_value_minor=1000 + n if cart else None,
        currency="EUR" if cart else None,
        item_id=None if cart else f"sku-{n}",
        attributes={"template_id": f"{kind}-v1", "offer_code": "TEN"} if cart else {},
    )


@dataclass(frozen=True)
class Published:
    settings: Settings
    ids: frozenset[str]
    messages: int  # everything sent: triggers, their duplicates, the garbage
    garbage_at: tuple[str, int, int]  # topic, partition, offset


@pytest.fixture
def trigger_settings(kafka_bootstrap: str) -> Iterator[Settings]:
    """Settings whose trigger topics are new (a unique prefix), deleted after the test."""
    settings = Settings(
        kafka_bootstrap=kafka_bootstrap,
        topic_triggers_prefix=f"test.subscriber.{uuid.uuid4().hex[:12]}.",
    )
    names = [settings.topic_trigger(kind) for kind in KINDS]
    topics.ensure_topics(kafka_bootstrap, names, PARTITIONS)
    yield settings
    topics.delete_topics(kafka_bootstrap, names)


def produce(settings: Settings, values: list[tuple[str, bytes, bytes]]) -> list[tuple[int, int]]:
    """Send (topic, key, value) messages; return each one's (partition, offset)."""
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    try:
        futures = [producer.send(topic, key=key, value=value) for topic, key, value in values]
        producer.flush(timeout=WAIT_S)
        metas = [f.get(timeout=WAIT_S) for f in futures]
    finally:
        producer.close()
    return [(m.partition, m.offset) for m in metas]


@pytest.fixture
def published(trigger_settings: Settings) -> Published:
    """20 cart and 10 dwell triggers, 5 of them twice, and one garbage message in between."""
    triggers = [trigger("cart_abandoned", n) for n in range(20)]
    triggers += [trigger("long_dwell", n) for n in range(10)]
    again = [triggers[0], triggers[1], triggers[2], triggers[20], triggers[21]]
    values = [
        (trigger_settings.topic_trigger(t.kind), t.user_id.encode(), CODEC.encode_output(t))
        for t in [*triggers, *again]
    ]
    garbage_topic = trigger_settings.topic_trigger("cart_abandoned")
    values.insert(25, (garbage_topic, b"u3", b"\xc3\x01 not a trigger"))
    positions = produce(trigger_settings, values)
    return Published(
        settings=trigger_settings,
        ids=frozenset(t.trigger_id for t in triggers),
        messages=len(values),
        garbage_at=(garbage_topic, *positions[25]),
    )


def subscriber(published: Published, group: str) -> TriggerSubscriber:
    return TriggerSubscriber(
        published.settings.kafka_bootstrap, KINDS, group, settings=published.settings
    )


def once_in(client: redis.Redis, group: str) -> ActOnce:
    return ActOnce(RedisOnceStore(client, group, prefix="test:once:", ttl_s=600))


def assert_nothing_redelivered(published: Published, group: str) -> None:
    """A new member of ``group`` reads only messages published after everything was committed.

    One new trigger goes to every partition; the member reads exactly as many
    messages and they are all new: a committed message would have come first
    in its partition.
    """
    markers = [
        (published.settings.topic_trigger(kind), f"marker-{kind}-{p}", p)
        for kind in KINDS
        for p in range(PARTITIONS)
    ]
    producer = KafkaProducer(bootstrap_servers=published.settings.kafka_bootstrap, acks="all")
    try:
        for topic, tid, p in markers:
            marker = Trigger(tid, "marker", "u0", 1_700_000_000_000, 1_700_000_000_001, "marker")
            producer.send(topic, value=CODEC.encode_output(marker), partition=p)
        producer.flush(timeout=WAIT_S)
    finally:
        producer.close()
    seen: list[str] = []
    with subscriber(published, group) as sub:
        stats = sub.process(
            lambda t: seen.append(t.trigger_id),
            once=None,
            max_messages=len(markers),
            timeout_s=WAIT_S,
        )
    assert stats.received == len(markers)
    assert sorted(seen) == sorted(tid for _, tid, _ in markers)


def test_every_trigger_is_acted_on_once_and_the_garbage_is_reported(
    published: Published, redis_client: redis.Redis
) -> None:
    acted: Counter[str] = Counter()
    bad: list[Undecodable] = []
    group = f"app-{uuid.uuid4().hex[:8]}"
    with subscriber(published, group) as sub:
        stats = sub.process(
            lambda t: acted.update([t.trigger_id]),
            once=once_in(redis_client, group),
            max_messages=published.messages,
            timeout_s=WAIT_S,
            on_undecodable=bad.append,
        )
    assert stats.received == published.messages
    assert acted == Counter(published.ids)
    assert (stats.acted, stats.duplicates, stats.undecodable) == (len(published.ids), 5, 1)
    assert [(u.topic, u.partition, u.offset) for u in bad] == [published.garbage_at]
    assert bad[0].error_class is ErrorClass.UNKNOWN_FINGERPRINT and bad[0].key == b"u3"
    for tid in published.ids:
        ttl = redis_client.ttl(f"test:once:{group}:{tid}")
        assert 0 < ttl <= 600
    assert_nothing_redelivered(published, group)


def test_a_crash_before_commit_redelivers_and_the_redis_store_acts_once(
    published: Published, redis_client: redis.Redis
) -> None:
    group = f"app-{uuid.uuid4().hex[:8]}"
    acted: Counter[str] = Counter()

    # The first member reads everything, acts on every other trigger, and dies uncommitted.
    received: list[Delivery] = []
    deadline = time.monotonic() + WAIT_S
    with subscriber(published, group) as first:
        once = once_in(redis_client, group)
        count = 0
        while count < published.messages and time.monotonic() < deadline:
            batch = first.poll(1.0)
            count += len(batch)
            received += [item for item in batch if isinstance(item, Delivery)]
        assert count == published.messages
        for item in received[::2]:
            if once.first_time(item.trigger.trigger_id):
                acted[item.trigger.trigger_id] += 1
    acted_before = set(acted)
    assert 0 < len(acted_before) < len(published.ids)

    # The next member of the group (another instance, its own store object) gets them all again.
    second_seen: list[str] = []

    def act(t: Trigger) -> None:
        second_seen.append(t.trigger_id)
        acted[t.trigger_id] += 1

    with subscriber(published, group) as second:
        stats = second.process(
            act,
            once=once_in(redis_client, group),
            max_messages=published.messages,
            timeout_s=WAIT_S,
            on_undecodable=lambda _: None,
        )
    assert stats.received == published.messages  # at-least-once: nothing committed, all again
    assert acted == Counter(published.ids)  # act-once across members
    assert set(second_seen) == published.ids - acted_before
    assert_nothing_redelivered(published, group)


def test_the_example_app_sends_one_line_per_trigger(
    published: Published, redis_client: redis.Redis, tmp_path: Path, redis_url: str
) -> None:
    out = tmp_path / "messages.jsonl"
    group = f"example-{uuid.uuid4().hex[:8]}"
    args = ["--bootstrap", published.settings.kafka_bootstrap, "--kinds", ",".join(KINDS)]
    args += ["--group", group, "--out", str(out), "--redis", redis_url]
    args += ["--max-messages", str(published.messages), "--timeout", str(WAIT_S)]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "ATTUNE_TOPIC_TRIGGERS_PREFIX": published.settings.topic_triggers_prefix,
    }
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "send_messages.py"), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=WAIT_S + 30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    summary = f"received {published.messages}, sent {len(published.ids)}, duplicates skipped 5"
    assert f"{summary}, undecodable 1" in done.stderr
    assert "skipping undecodable message" in done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["trigger_id"] for line in lines) == sorted(published.ids)
    first_cart = next(line for line in lines if line["trigger_id"] == "cart_abandoned-3")
    assert first_cart == {
        "trigger_id": "cart_abandoned-3",
        "kind": "cart_abandoned",
        "user": "u3",
        "template_id": "cart_abandoned-v1",
        "offer_code": "TEN",
        "cart_value_minor": 1003,
        "currency": "EUR",
        "item_id": None,
        "cause_event_time": 1_700_000_000_003,
        "emit_time": 1_700_000_001_803,
    }
