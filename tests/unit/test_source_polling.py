"""How a Kafka source partition polls: tailing, it never waits inside the poll while
items may still be crossing the flow's steps, and waits (sleeps) once the flow has drained;
a replay always waits a little. The broker is not the point here: a stand-in consumer
records the timeouts it is given (tests/integration covers the real broker)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from attune.operators import sources
from attune.operators.codec import Codec
from attune.operators.sources import DRAINED_POLLS, IDLE_POLL, Watermark, _KafkaPartition


class RecordingConsumer:
    """Gives the batches it was built with, in turn, then nothing; records each timeout."""

    def __init__(self, batches: list[list[object]]) -> None:
        self.batches = batches
        self.timeouts: list[float] = []

    def consume(self, num_messages: int, timeout: float) -> list[object]:
        self.timeouts.append(timeout)
        return self.batches.pop(0) if self.batches else []

    def close(self) -> None:
        pass


def _partition(
    monkeypatch: pytest.MonkeyPatch, *, tail: bool, batches: list[list[object]]
) -> tuple[_KafkaPartition, RecordingConsumer]:
    # the stand-in's "messages" are markers: decoding them is decode_messages' own test
    monkeypatch.setattr(sources, "decode_messages", lambda msgs, *a, **k: ([], None, False))
    part = _KafkaPartition(
        {"bootstrap.servers": "127.0.0.1:1", "group.id": "t"},
        "t.events",
        0,
        resume=None,
        batch_size=100,
        tail=tail,
        codec=Codec(),
        wm=Watermark(60_000),
    )
    part.consumer.close()
    stub = RecordingConsumer(batches)
    part.consumer = stub  # type: ignore[assignment]
    sources._LAST_READ[0] = 0.0  # no partition of the process has read anything
    return part, stub


def test_tailing_polls_without_waiting_until_the_flow_has_drained(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    part, consumer = _partition(monkeypatch, tail=True, batches=[["m"], ["m"]])
    monkeypatch.setattr(sources, "DRAINED_S", 0.0)  # the polls alone decide here
    awake: list[Any] = []
    for _ in range(2 + DRAINED_POLLS + 2):
        part.next_batch()
        awake.append(part.next_awake())
    # two batches with messages: polled at once, called again at once
    assert consumer.timeouts[:2] == [0.0, 0.0]
    assert awake[:2] == [None, None]
    # then DRAINED_POLLS empty polls that do not wait, each asking to be called after IDLE_POLL
    empties = consumer.timeouts[2 : 2 + DRAINED_POLLS]
    assert empties == [0.0] * DRAINED_POLLS
    now = datetime.now(UTC)
    for at in awake[2 : 2 + DRAINED_POLLS - 1]:
        assert isinstance(at, datetime)
        assert now - timedelta(seconds=5) < at <= now + IDLE_POLL
    # drained: the poll waits (the thread sleeps in librdkafka), and Bytewax may call at once
    assert awake[2 + DRAINED_POLLS - 1 :] == [None] * 3
    assert consumer.timeouts[2 + DRAINED_POLLS :] == [0.005, 0.005]


def test_a_message_after_a_quiet_spell_makes_the_polls_stop_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    part, consumer = _partition(monkeypatch, tail=True, batches=[])
    monkeypatch.setattr(sources, "DRAINED_S", 0.0)  # the polls alone decide here
    for _ in range(DRAINED_POLLS):
        part.next_batch()
    consumer.batches = [["m"]]
    part.next_batch()  # waits (drained), and finds a message
    part.next_batch()  # items are on their way: no wait
    assert consumer.timeouts[-2:] == [0.005, 0.0]
    assert isinstance(part.next_awake(), datetime)


def test_a_replay_always_waits_a_little(monkeypatch: pytest.MonkeyPatch) -> None:
    part, consumer = _partition(monkeypatch, tail=False, batches=[["m"]])
    part.next_batch()
    part.next_batch()
    assert consumer.timeouts == [0.005, 0.005]
    assert part.next_awake() is None


def test_a_quiet_partition_does_not_wait_while_another_of_the_process_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    quiet, quiet_consumer = _partition(monkeypatch, tail=True, batches=[])
    for _ in range(DRAINED_POLLS):
        quiet.next_batch()
    busy, _ = _partition(monkeypatch, tail=True, batches=[["m"]])
    busy.next_batch()  # the other partition reads: items are crossing the flow
    quiet.next_batch()
    assert quiet_consumer.timeouts[-1] == 0.0
    assert isinstance(quiet.next_awake(), datetime)
