"""The subscriber client without a broker: act-once stores, decoding, and the process loop.

The loop runs against a small in-memory consumer with kafka-python's poll,
commit, seek and assignment semantics (offsets per partition, a position that
moves on poll and back on seek, commits of the next offset to read).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.errors import CommitFailedError
from kafka.structs import OffsetAndMetadata, TopicPartition

from attune.clients import subscriber as subscriber_module
from attune.clients.subscriber import (
    ActOnce,
    Delivery,
    MemoryOnceStore,
    RedisOnceStore,
    TriggerSubscriber,
    Undecodable,
    decode_record,
)
from attune.flows.settings import Settings
from attune.operators.codec import Codec
from attune.operators.events import ErrorClass, LineItem, SegmentChange, Trigger

CODEC = Codec()
SETTINGS = Settings()
TOPIC = SETTINGS.topic_trigger("cart_abandoned")


def trigger(trigger_id: str, user: str = "u1") -> Trigger:
    return Trigger(
        trigger_id=trigger_id,
        kind="cart_abandoned",
        user_id=user,
        cause_event_time=1_700_000_000_000,
        emit_time=1_700_000_001_800,
        reason="cart left 30 min without purchase",
        cart_lines=(LineItem("sku-1", 2, 1250, "shoes"),),
        cart_value_minor=2500,
        currency="EUR",
        attributes={"template_id": "cart-reminder", "offer_code": "TEN"},
    )


# --- act-once stores ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_memory_store_is_bounded_and_forgets_the_oldest_first() -> None:
    store = MemoryOnceStore(max_entries=3, ttl_s=3600)
    assert [store.claim(k) for k in "abcde"] == [True] * 5
    assert len(store) == 3
    assert [store.claim(k) for k in "cde"] == [False] * 3  # the newest three are remembered
    assert store.claim("a") is True  # evicted, so it counts as new


def test_memory_store_forgets_after_ttl_and_a_duplicate_does_not_extend_it() -> None:
    clock = FakeClock()
    store = MemoryOnceStore(ttl_s=60, clock=clock)
    assert store.claim("t1")
    clock.now += 59.9
    assert not store.claim("t1")  # still remembered; this claim must not refresh it
    clock.now += 0.1
    assert len(store) == 0
    assert store.claim("t1")


def test_memory_store_release_lets_the_next_delivery_act() -> None:
    once = ActOnce(MemoryOnceStore())
    assert once.first_time("t1")
    once.forget("t1")
    assert once.first_time("t1")
    assert not once.first_time("t1")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"max_entries": 0}, "max_entries"), ({"ttl_s": 0}, "ttl_s")],
)
def test_memory_store_rejects_bad_bounds(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MemoryOnceStore(**kwargs)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from([f"t{i}" for i in range(12)]), min_size=1, max_size=80),
    st.randoms(use_true_random=False),
)
def test_any_interleaving_of_duplicates_acts_once_per_id(ids: list[str], rnd: Any) -> None:
    rnd.shuffle(ids)
    once = ActOnce(MemoryOnceStore(max_entries=100, ttl_s=3600))
    acted = Counter(tid for tid in ids if once.first_time(tid))
    assert set(acted) == set(ids)
    assert set(acted.values()) == {1}


def test_threads_sharing_a_store_act_once_per_id() -> None:
    once = ActOnce(MemoryOnceStore())
    ids = [f"t{i % 50}" for i in range(2000)]
    acted: list[str] = []
    lock = threading.Lock()

    def work(chunk: list[str]) -> None:
        for tid in chunk:
            if once.first_time(tid):
                with lock:
                    acted.append(tid)

    threads = [threading.Thread(target=work, args=(ids[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(acted) == sorted(set(ids))


def test_redis_store_keys_and_arguments() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.keys: dict[str, str] = {}
            self.calls: list[tuple[str, bool, int]] = []

        def set(self, name: str, value: str, *, nx: bool, ex: int) -> bool | None:
            self.calls.append((name, nx, ex))
            if nx and name in self.keys:
                return None
            self.keys[name] = value
            return True

        def delete(self, *names: str) -> int:
            return sum(self.keys.pop(n, None) is not None for n in names)

    client = Recorder()
    once = ActOnce(RedisOnceStore(client, "email", prefix="shop:once:", ttl_s=120))
    assert once.first_time("t1") and not once.first_time("t1")
    assert client.calls == [("shop:once:email:t1", True, 120)] * 2
    once.forget("t1")
    assert once.first_time("t1")
    with pytest.raises(ValueError, match="namespace"):
        RedisOnceStore(client, "")
    with pytest.raises(ValueError, match="ttl_s"):
        RedisOnceStore(client, "email", ttl_s=0)


# --- decoding ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """The fields of a kafka-python ConsumerRecord that the subscriber reads."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = b"u1"
    timestamp: int = 1_700_000_002_000


def test_a_trigger_decodes_to_a_delivery_with_its_position() -> None:
    t = trigger("t1")
    item = decode_record(Record(TOPIC, 2, 41, CODEC.encode_output(t)), CODEC)
    assert item == Delivery(t, TOPIC, 2, 41, 1_700_000_002_000)


@pytest.mark.parametrize(
    ("value", "error_class", "reason"),
    [
        (b"garbage", ErrorClass.BAD_MAGIC, "wrong magic bytes"),
        (CODEC.encode_output(trigger("t1"))[:25], ErrorClass.TRUNCATED, "truncated"),
        (b"", ErrorClass.TRUNCATED, "empty message"),
        (None, ErrorClass.TRUNCATED, "tombstone"),
        (
            CODEC.encode_output(SegmentChange("u1", "vip", "ENTERED", "RULE", 1, 2)),
            ErrorClass.UNKNOWN_FINGERPRINT,
            "expected attune.output.Trigger",
        ),
    ],
)
def test_bad_bytes_become_undecodable_with_position_and_reason(
    value: bytes | None, error_class: ErrorClass, reason: str
) -> None:
    item = decode_record(Record(TOPIC, 1, 7, value), CODEC)
    assert isinstance(item, Undecodable)
    assert (item.topic, item.partition, item.offset, item.key) == (TOPIC, 1, 7, b"u1")
    assert item.original == (value or b"")
    assert item.error_class is error_class
    assert reason in item.reason
    letter = item.dead_letter(5)
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (TOPIC, 1, 7)
    assert letter.original == item.original and letter.dead_time == 5


# --- the subscriber against an in-memory consumer ----------------------------------------------


class FakeConsumer:
    """Partitions of messages, a position per partition, committed offsets."""

    def __init__(self, messages: dict[TopicPartition, list[bytes | None]]) -> None:
        self.log = messages
        self.position = dict.fromkeys(messages, 0)
        self.committed: dict[TopicPartition, int] = {}
        self.assigned = set(messages)
        self.topics: list[str] = []
        self.closed = False
        self.fail_commit = False

    def subscribe(self, topics: list[str]) -> None:
        self.topics = topics

    def poll(self, timeout_ms: int, max_records: int | None = None) -> dict[TopicPartition, Any]:
        out: dict[TopicPartition, list[Any]] = {}
        budget = max_records if max_records is not None else 1_000_000
        for tp in sorted(self.assigned):
            start = self.position[tp]
            values = self.log[tp][start : start + budget]
            if values:
                out[tp] = [
                    Record(tp.topic, tp.partition, start + i, v) for i, v in enumerate(values)
                ]
                self.position[tp] += len(values)
                budget -= len(values)
        return out

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        if self.fail_commit:
            raise CommitFailedError("rebalanced")
        self.committed.update({tp: meta.offset for tp, meta in offsets.items()})

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.position[tp] = offset

    def close(self, autocommit: bool = True) -> None:
        assert autocommit is False
        self.closed = True

    def restart(self) -> None:
        """A new member of the group: it starts from the committed offsets."""
        self.position = {tp: self.committed.get(tp, 0) for tp in self.log}


P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


def encoded(ids: Iterable[str]) -> list[bytes | None]:
    return [CODEC.encode_output(trigger(tid)) for tid in ids]


def subscriber(consumer: FakeConsumer) -> TriggerSubscriber:
    return TriggerSubscriber("", ["cart_abandoned"], "app", settings=SETTINGS, consumer=consumer)


def test_poll_returns_everything_and_commit_commits_past_it() -> None:
    consumer = FakeConsumer({P0: [*encoded(["a", "b"]), b"junk"], P1: encoded(["c"])})
    with subscriber(consumer) as sub:
        assert consumer.topics == [TOPIC]
        items = sub.poll(0.1)
        assert [type(i).__name__ for i in items] == ["Delivery"] * 2 + ["Undecodable", "Delivery"]
        assert consumer.committed == {}
        assert sub.commit()
        assert consumer.committed == {P0: 3, P1: 1}
        assert sub.poll(0.1) == [] and sub.commit()
    assert consumer.closed


def test_commit_skips_partitions_lost_in_a_rebalance() -> None:
    consumer = FakeConsumer({P0: encoded(["a"]), P1: encoded(["b"])})
    sub = subscriber(consumer)
    sub.poll(0.1)
    consumer.assigned = {P1}
    assert sub.commit() is False
    assert consumer.committed == {P1: 1}
    sub.poll(0.1)
    consumer.fail_commit = True
    assert sub.commit()  # nothing new was read: nothing to commit


def test_a_failed_commit_reports_redelivery() -> None:
    consumer = FakeConsumer({P0: encoded(["a"])})
    sub = subscriber(consumer)
    sub.poll(0.1)
    consumer.fail_commit = True
    assert sub.commit() is False


def test_process_acts_once_per_id_and_hands_over_the_undecodable() -> None:
    consumer = FakeConsumer(
        {P0: [*encoded(["a", "b", "a"]), b"junk", *encoded(["c"])], P1: encoded(["b", "d"])}
    )
    sent: list[str] = []
    bad: list[Undecodable] = []
    stats = subscriber(consumer).process(
        lambda t: sent.append(t.trigger_id),
        once=ActOnce(),
        max_messages=7,
        on_undecodable=bad.append,
    )
    assert sorted(sent) == ["a", "b", "c", "d"]
    assert [(u.partition, u.offset) for u in bad] == [(0, 3)]
    assert (stats.received, stats.acted, stats.duplicates, stats.undecodable) == (7, 4, 2, 1)
    assert consumer.committed == {P0: 5, P1: 2}


def test_process_logs_undecodable_by_default(caplog: pytest.LogCaptureFixture) -> None:
    consumer = FakeConsumer({P0: [b"junk"]})
    with caplog.at_level(logging.WARNING, logger="attune.clients.subscriber"):
        stats = subscriber(consumer).process(print, once=None, max_messages=1)
    assert stats.undecodable == 1
    assert f"undecodable message on {TOPIC}[0] at offset 0 (BAD_MAGIC)" in caplog.text


def test_process_reads_no_more_than_max_messages() -> None:
    consumer = FakeConsumer({P0: encoded(["a", "b", "c", "d", "e"])})
    sent: list[str] = []
    stats = subscriber(consumer).process(
        lambda t: sent.append(t.trigger_id), once=ActOnce(), max_messages=3
    )
    assert sent == ["a", "b", "c"] and stats.received == 3
    assert consumer.committed == {P0: 3} and consumer.position[P0] == 3


def test_process_stops_on_timeout_and_on_the_stop_flag() -> None:
    consumer = FakeConsumer({P0: []})
    assert subscriber(consumer).process(print, once=None, timeout_s=0.05).received == 0
    stop = threading.Event()
    stop.set()
    consumer = FakeConsumer({P0: encoded(["a"])})
    assert subscriber(consumer).process(print, once=None, stop=stop).received == 0
    assert consumer.position[P0] == 0


def test_a_failing_handler_is_retried_and_what_it_handled_stays_committed() -> None:
    consumer = FakeConsumer({P0: encoded(["a", "b", "c"]), P1: encoded(["d"])})
    once = ActOnce()
    sent: list[str] = []

    def send(t: Trigger) -> None:
        if t.trigger_id == "b" and "b-failed" not in sent:
            sent.append("b-failed")
            raise ConnectionError("mail server down")
        sent.append(t.trigger_id)

    sub = subscriber(consumer)
    with pytest.raises(ConnectionError):
        sub.process(send, once=once, max_messages=10, timeout_s=5)
    assert sent == ["a", "b-failed"]
    assert consumer.committed == {P0: 1}  # "a" only; P1 was not reached
    stats = sub.process(send, once=once, max_messages=3, timeout_s=5)
    assert sent == ["a", "b-failed", "b", "c", "d"]
    assert stats.acted == 3 and consumer.committed == {P0: 3, P1: 1}


def test_a_crash_before_commit_redelivers_and_act_once_skips_what_was_acted_on() -> None:
    consumer = FakeConsumer({P0: encoded(["a", "b"]), P1: encoded(["c"])})
    once = ActOnce()
    sent: list[str] = []
    sub = subscriber(consumer)
    for item in sub.poll(0.1):  # acted, then "crashed" before commit
        assert isinstance(item, Delivery)
        if once.first_time(item.trigger.trigger_id):
            sent.append(item.trigger.trigger_id)
    consumer.restart()
    stats = subscriber(consumer).process(
        lambda t: sent.append(t.trigger_id), once=once, max_messages=3
    )
    assert sent == ["a", "b", "c"]
    assert (stats.received, stats.duplicates) == (3, 3)


def test_constructor_checks_its_arguments() -> None:
    consumer = FakeConsumer({})
    with pytest.raises(TypeError, match=r"\['cart_abandoned'\]"):
        TriggerSubscriber("", "cart_abandoned", "app", consumer=consumer)
    with pytest.raises(ValueError, match="no trigger kinds"):
        TriggerSubscriber("", [], "app", consumer=consumer)
    # a misspelt kind would read a topic nothing writes (issue 16, finding 7)
    with pytest.raises(
        ValueError, match=r"unknown trigger kind\(s\) 'cart_abandon': the kinds are cart_abandoned,"
    ):
        TriggerSubscriber("", ["long_dwell", "cart_abandon"], "app", consumer=consumer)
    with pytest.raises(ValueError, match="group_id"):
        TriggerSubscriber("", ["long_dwell"], "", consumer=consumer)
    with pytest.raises(ValueError, match="enable_auto_commit"):
        TriggerSubscriber("h:1", ["long_dwell"], "app", enable_auto_commit=True)
    with pytest.raises(ValueError, match="ATTUNE_KAFKA_BOOTSTRAP"):
        TriggerSubscriber("", ["long_dwell"], "app", settings=Settings())
    sub = TriggerSubscriber(
        "",
        ["long_dwell", "cart_abandoned", "long_dwell"],
        "app",
        settings=Settings(topic_triggers_prefix="shop.t."),
        consumer=consumer,
    )
    assert sub.topics == consumer.topics == ["shop.t.long_dwell", "shop.t.cart_abandoned"]


class _Recorder:
    """Stands in for kafka-python's KafkaConsumer class: records the options it got."""

    def __init__(self, **options: Any) -> None:
        self.options = options

    def subscribe(self, topics: list[str]) -> None:
        self.topics = topics


def test_fetches_wait_50_ms_not_kafka_pythons_500_and_the_caller_can_override(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(subscriber_module, "KafkaConsumer", _Recorder)
    monkeypatch.setattr(subscriber_module, "_check_broker", lambda *args: None)  # no broker
    sub = TriggerSubscriber("k:1", ["cart_abandoned"], "app", settings=Settings())
    assert sub._consumer.options["fetch_max_wait_ms"] == 50
    sub = TriggerSubscriber(
        "k:1", ["cart_abandoned"], "app", settings=Settings(), fetch_max_wait_ms=200
    )
    assert sub._consumer.options["fetch_max_wait_ms"] == 200


def test_the_example_app_refuses_a_misspelt_kind_in_one_line() -> None:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "ATTUNE_KAFKA_BOOTSTRAP": "127.0.0.1:1", "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, str(root / "examples" / "send_messages.py"), "--kinds", "cart_abandon"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "send_messages: unknown trigger kind(s) 'cart_abandon': the kinds are cart_abandoned, "
        "long_dwell, repeat_visit, segment_entered, segment_exited, high_propensity"
    ]
