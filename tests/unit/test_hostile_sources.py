"""Hostile input at the source (issue 15, item 3; docs/reliability.md, "Hostile input"):
events dated after their Kafka message was written, oversized messages, and one user's
flood, through ``decode_messages`` and the partition's watermark."""

from __future__ import annotations

from confluent_kafka import Message

from attune.operators.clock import DAY_MS, HOUR_MS, MINUTE_MS
from attune.operators.codec import Codec
from attune.operators.events import DeadLetter, ErrorClass, Event, EventType, PageView, Search
from attune.operators.sources import (
    KEPT_OF_OVERSIZED,
    MAX_AHEAD_OF_RECEIPT_MS,
    MAX_MESSAGE_BYTES,
    RECEIPT_TOLERANCE_MS,
    RECENT_KEYS,
    Watermark,
    decode_messages,
)
from tests.unit.test_sources import _codec

TOPIC = "attune.events"
T0 = 1_767_571_200_000
LATENESS = 10 * MINUTE_MS


def _event(i: int, t: int, user: str = "u1") -> Event:
    return Event(f"e{i}", EventType.SEARCH, t, Search("boots"), user_id=user)


def _msg(offset: int, value: bytes, received: int | None) -> Message:
    stamp = (0, 0) if received is None else (1, received)  # 1: CreateTime
    return Message(topic=TOPIC, partition=2, offset=offset, value=value, timestamp=stamp)


def _run(codec: Codec, wm: Watermark, msgs: list[Message]) -> list[Event | DeadLetter]:
    out, _, _ = decode_messages(msgs, codec, wm, TOPIC, 2, tail=True)
    return out


def test_an_event_dated_after_its_receipt_by_more_than_an_hour_is_dead_lettered() -> None:
    codec, wm = _codec(), Watermark(LATENESS)
    steady = [_msg(i, codec.encode_event(_event(i, T0 + i, f"u{i}")), T0 + i) for i in range(5)]
    ahead = [
        _msg(10, codec.encode_event(_event(10, T0 + 3 * DAY_MS, "wrong")), T0 + 5),
        _msg(11, codec.encode_event(_event(11, T0 + 5 * 365 * DAY_MS, "wrong")), T0 + 5),
        _msg(12, codec.encode_event(_event(12, T0 + MAX_AHEAD_OF_RECEIPT_MS + 6, "w2")), T0 + 5),
    ]
    out = _run(codec, wm, steady + ahead)
    assert all(isinstance(e, Event) for e in out[:5])
    for dead, offset in zip(out[5:], (10, 11, 12), strict=True):
        assert isinstance(dead, DeadLetter) and dead.error_class is ErrorClass.INVALID_VALUE
        assert dead.reason.startswith("ahead: ") and "client clock runs ahead" in dead.reason
        assert (dead.source_topic, dead.source_partition, dead.source_offset) == (TOPIC, 2, offset)
        assert dead.event_id == f"e{offset}"
    # refused before the watermark saw them: it did not move, and they cannot vote
    assert wm.max_time == T0 + 4
    assert "wrong" not in wm.recent and "w2" not in wm.recent


def test_within_an_hour_of_receipt_or_without_a_timestamp_the_event_is_taken() -> None:
    codec, wm = _codec(), Watermark(LATENESS)
    msgs = [_msg(i, codec.encode_event(_event(i, T0, f"a{i}")), T0) for i in range(4)]
    msgs += [
        # 40 and 60 minutes ahead of their receipt (phones' clocks): applied to their
        # users, with their own times; the watermark counts them as of their receipt
        _msg(4, codec.encode_event(_event(4, T0 + 40 * MINUTE_MS, "b")), T0),
        _msg(5, codec.encode_event(_event(5, T0 + MAX_AHEAD_OF_RECEIPT_MS, "c")), T0),
        # no timestamp (a file, or a broker message without one): nothing to compare with
        _msg(6, codec.encode_event(_event(6, T0 + 3 * DAY_MS, "d")), None),
    ]
    out = _run(codec, wm, msgs)
    assert [type(e) for e in out] == [Event] * 7
    assert [e.event_time for e in out if isinstance(e, Event)][4:6] == [
        T0 + 40 * MINUTE_MS,
        T0 + MAX_AHEAD_OF_RECEIPT_MS,
    ]
    # and the one without a timestamp, alone ahead, is outvoted by the users at T0
    assert wm.max_time == T0 + RECEIPT_TOLERANCE_MS


def test_a_clock_creeping_ahead_within_the_lateness_does_not_drag_the_watermark() -> None:
    """Each event 9 minutes after the previous one (within the allowed lateness of it):
    without its receipt time, every one would move the watermark, and an hour later the
    other users' events, two minutes late, would all be late."""
    codec, wm = _codec(), Watermark(LATENESS)
    msgs = [_msg(i, codec.encode_event(_event(i, T0 + i, f"u{i}")), T0 + i) for i in range(5)]
    creep = [
        _msg(10 + k, codec.encode_event(_event(10 + k, T0 + k * 9 * MINUTE_MS, "creep")), T0)
        for k in range(1, 7)
    ]
    assert [type(e) for e in _run(codec, wm, msgs + creep)] == [Event] * 11
    assert wm.max_time == T0 + RECEIPT_TOLERANCE_MS
    two_minutes_late = _event(99, T0 - 2 * MINUTE_MS, "u1")
    out = _run(codec, wm, [_msg(99, codec.encode_event(two_minutes_late), T0)])
    assert out == [two_minutes_late]
    # the same events without timestamps (a file) show what the receipt time prevents
    blind = Watermark(LATENESS)
    for k in range(1, 7):
        blind.admit(_event(10 + k, T0 + k * 9 * MINUTE_MS, "creep"))
    assert blind.max_time == T0 + 54 * MINUTE_MS


def test_an_oversized_message_is_dead_lettered_unread_with_a_prefix_of_it() -> None:
    codec, wm = _codec(), Watermark(LATENESS)
    big = Event("big", EventType.PAGE_VIEW, T0, PageView(title="x" * MAX_MESSAGE_BYTES), "u1")
    value = codec.encode_event(big)
    small = codec.encode_event(_event(1, T0 + 1))
    out, offset, _ = decode_messages(
        [_msg(7, value, T0), _msg(8, small, T0)], codec, wm, TOPIC, 2, tail=True
    )
    dead = out[0]
    assert isinstance(dead, DeadLetter) and dead.error_class is ErrorClass.INVALID_VALUE
    assert dead.original == value[:KEPT_OF_OVERSIZED]
    assert f"message of {len(value)} bytes is over the {MAX_MESSAGE_BYTES}" in dead.reason
    assert (dead.source_partition, dead.source_offset) == (2, 7)
    assert out[1] == _event(1, T0 + 1) and offset == 9
    # just under the limit still decodes
    fits = Event("fits", EventType.PAGE_VIEW, T0, PageView(title="x" * 60_000), "u1")
    assert isinstance(_run(codec, wm, [_msg(9, codec.encode_event(fits), T0)])[0], Event)


def test_a_flood_from_one_user_keeps_the_other_users_votes() -> None:
    """The watermark remembers users, not events: one user's 10,000 events (some of them
    ahead) take one of its :data:`RECENT_KEYS` places, so the others still decide."""
    wm = Watermark(LATENESS)
    others = [f"u{i}" for i in range(RECENT_KEYS - 1)]
    for i, user in enumerate(others):
        assert wm.admit(_event(i, T0 + i * 1000, user)) is None
    for j in range(10_000):
        t = T0 + 20_000 + j + (2 * HOUR_MS if j % 100 == 0 else 0)
        assert wm.admit(_event(100 + j, t, "flood")) is None
    assert set(wm.recent) == {*others, "flood"}
    assert wm.max_time < T0 + 20_000 + 10_000  # its two-hours-ahead events moved nothing
    # and when the others do move on (a genuine jump), their vote still carries
    later = T0 + 5 * HOUR_MS
    for i, user in enumerate(others):
        wm.admit(_event(20_000 + i, later + i, user))
    assert wm.max_time >= later
