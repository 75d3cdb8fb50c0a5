"""The cluster-wide stream clock through the real Redis server.

Two :class:`StreamClock` objects stand for two flow processes sharing one
:class:`RedisClockBoard`: each holds back for the other's partitions, and marks
left in Redis by an earlier run are never used. Time is a hand-set fake so the
test needs no sleeps; the board and the server are real.
"""

from __future__ import annotations

import pytest
import redis

from attune.operators.redis_keys import RedisKeys
from attune.operators.stream_clock import CLOCK_KEY_TTL_S, Mark, RedisClockBoard, StreamClock
from tests.unit.test_stream_clock import Time

pytestmark = pytest.mark.integration


def process(t: Time, redis_url: str, key: str) -> StreamClock:
    clock = StreamClock(wall_ms=t.wall_ms, monotonic=t.monotonic, in_flight_s=1.0, sync_s=0.25)
    clock.reset(RedisClockBoard(lambda: redis.Redis.from_url(redis_url), key))
    clock.expect(["events:0", "events:1"])
    return clock


def test_processes_share_the_slowest_partition_through_redis(
    redis_client: redis.Redis, redis_url: str
) -> None:
    key = RedisKeys().clock("events")
    t = Time()
    redis_client.hset(key, "events:0", Mark(9_000_000, t.wall, t.wall).encode())  # earlier run
    t.advance(5)
    a = process(t, redis_url, key)
    b = process(t, redis_url, key)
    a.advance("events:0", 10_000)
    b.advance("events:1", 90_000)
    assert b.now_ms() is None  # the earlier run's 9,000 s of events:0 are not this run's

    t.advance(1.0)
    a.advance("events:0", 20_000)  # publishes 10 s: reached over a second ago
    t.advance(0.3)
    assert b.now_ms() == 10_000  # not B's own 90 s
    assert a.now_ms() == 20_000
    raw: dict[bytes, bytes] = redis_client.hgetall(key)  # type: ignore[assignment]
    stored = {k.decode(): Mark.decode(v.decode()) for k, v in raw.items()}
    assert {k: m.watermark_ms for k, m in stored.items() if m} == {
        "events:0": 10_000,
        "events:1": 90_000,
    }
    assert 0 < redis_client.ttl(key) <= CLOCK_KEY_TTL_S

    t.advance(11)  # A stops refreshing: B's clock holds rather than guess
    b.advance("events:1", 95_000)
    assert b.now_ms() is None
