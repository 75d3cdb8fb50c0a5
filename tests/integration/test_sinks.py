"""The Redis and Kafka sinks against the real servers of deploy/local.

Redis: what a batch leaves (values, a TTL on every key), replays leave Redis
byte-identical, forgetting a user leaves nothing of it, errors raise.
Kafka: every message is delivered and read back exactly once; a message the
broker refuses (a topic that does not exist, a message too large) raises
:class:`~attune.operators.kafka_sink.DeliveryError` with the count and the reason,
also out of a running dataflow.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pytest
import redis
from bytewax.dataflow import Dataflow
from bytewax.outputs import FixedPartitionedSink, Sink
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSource, run_main
from kafka import KafkaConsumer

from attune.clients.recommendations import RecommendationClient, parse_profile, parse_recs
from attune.flows import topics
from attune.operators import recs_encoding
from attune.operators.codec import Codec
from attune.operators.events import SegmentChange
from attune.operators.features import PROFILE_FIELDS
from attune.operators.kafka_sink import (
    SINK_PARTS,
    CheckedKafkaSink,
    DeliveryError,
    KafkaOut,
    keyed,
    to_kafka,
)
from attune.operators.recs_encoding import encode, encode_compact
from attune.operators.redis_keys import RedisKeys, chunks, joined, segment_names
from attune.operators.redis_sink import (
    AliasWrite,
    ForgetUser,
    JsonWrite,
    ProfileWrite,
    RecsWrite,
    RedisConfig,
    RedisOp,
    RedisSink,
    RedisSinkError,
    SegmentsWrite,
    UpgradeReport,
    upgrade_layout,
)

KEYS = RedisKeys()
TTL_S = 3600
#: The keys of the sink of these tests: alias buckets of generations of TTL_S.
SINK_KEYS = RedisKeys(alias_period_s=TTL_S)


def alias_of(client: redis.Redis, anonymous_id: str) -> bytes | None:
    """The alias the sink of these tests wrote for ``anonymous_id`` (this generation's)."""
    bucket = SINK_KEYS.alias_lookup(anonymous_id, time.time())[0]
    value = client.hget(bucket, anonymous_id)
    assert value is None or isinstance(value, bytes)
    return value


WAIT_S = 30.0


def run_flow(
    items: Iterable[Any],
    sink: Sink[Any],
    batch_size: int = 50,
    *,
    recovery: RecoveryConfig | None = None,
) -> None:
    """``items`` through ``sink`` in a dataflow (keyed first for the partitioned Kafka sink),
    one epoch per batch."""
    flow = Dataflow("sink_test")
    stream = op.input("in", flow, TestingSource(list(items), batch_size=batch_size))
    if isinstance(sink, FixedPartitionedSink):
        stream = op.map("key", stream, keyed)
    op.output("out", stream, sink)
    run_main(flow, epoch_interval=timedelta(0), recovery_config=recovery)


def profile(user: str, events: int, device: str | None = "mobile") -> ProfileWrite:
    return ProfileWrite.from_features(
        user,
        {
            "events": events,
            "page_views": events // 2,
            "first_seen_ms": 1_700_000_000_000,
            "last_seen_ms": 1_700_000_000_000 + events,
            "top_category_7d": "shoes/running",
            "device_top": device,
        },
    )


def stored_profile(client: redis.Redis, user: str) -> str:
    """The profile value in ``user``'s hash (``""`` when none)."""
    return joined(client.hgetall(KEYS.user(user)), "P") or ""


def all_keys(client: redis.Redis) -> list[bytes]:
    return sorted(client.scan_iter(count=1000))


def snapshot(client: redis.Redis) -> dict[bytes, Any]:
    """Every key: its type and content; hashes and strings also as DUMP bytes."""
    out: dict[bytes, Any] = {}
    for key in all_keys(client):
        kind = client.type(key)
        if kind == b"hash":
            out[key] = (kind, list(client.hgetall(key).items()), client.dump(key))
        elif kind == b"set":
            out[key] = (kind, sorted(client.smembers(key)))
        elif kind == b"string":
            out[key] = (kind, client.get(key), client.dump(key))
        else:
            raise AssertionError(f"unexpected type {kind!r} of {key!r}")
    return out


@pytest.fixture
def redis_config(redis_url: str) -> RedisConfig:
    return RedisConfig(redis_url, ttl_s=TTL_S)


# --- Redis ------------------------------------------------------------------------------------


@pytest.mark.integration
def test_dataflow_writes_profiles_segments_aliases_each_with_a_ttl(
    redis_client: redis.Redis, redis_config: RedisConfig
) -> None:
    ops: list[RedisOp] = []
    for i in range(200):
        user = f"user-{i}"
        ops.append(profile(user, events=1))
        ops.append(SegmentsWrite(user, entered=("browsers",)))
        ops.append(profile(user, events=2 + i))
        if i % 3 == 0:
            ops.append(SegmentsWrite(user, entered=("vip",), exited=("browsers",)))
    ops.append(ForgetUser("anon-1"))
    ops.append(AliasWrite("anon-1", "user-1"))
    ops.append(JsonWrite(KEYS.model("kmeans"), b'{"k":4}'))

    run_flow(ops, RedisSink(redis_config), batch_size=64)

    fields = redis_client.hgetall(KEYS.user("user-7"))
    stored = joined(fields, "P")
    # format 3: last_seen_ms in base 36, first_seen_ms as base-36 ms before it
    assert stored == "3|9|4|||||||9|loyw3v2h|||shoes/running|mobile"
    assert set(fields) == {b"P", b"browsers"}  # 47 bytes and the count: one piece
    assert parse_profile(stored) == {
        **dict.fromkeys(PROFILE_FIELDS),
        "events": "9",
        "page_views": "4",
        "first_seen_ms": "1700000000000",
        "last_seen_ms": "1700000000009",
        "top_category_7d": "shoes/running",
        "device_top": "mobile",
    }
    assert segment_names(redis_client.hgetall(KEYS.user("user-3"))) == ["vip"]
    assert segment_names(redis_client.hgetall(KEYS.user("user-4"))) == ["browsers"]
    assert redis_client.object("encoding", KEYS.user("user-4")) == b"listpack"
    vip = {f"user-{i}".encode() for i in range(0, 200, 3)}
    assert redis_client.smembers(KEYS.audience("vip")) == vip
    browsers = {f"user-{i}".encode() for i in range(200) if i % 3}
    assert redis_client.smembers(KEYS.audience("browsers")) == browsers
    assert alias_of(redis_client, "anon-1") == b"user-1"
    assert redis_client.get(KEYS.model("kmeans")) == b'{"k":4}'

    keys = all_keys(redis_client)
    assert len(keys) == 200 + 2 + 1 + 1  # users' hashes, audiences, alias bucket, model
    for key in keys:
        ttl = redis_client.ttl(key)
        if key == KEYS.model("kmeans").encode():
            assert ttl == -1  # shared model parameters: kept until replaced
        elif key.startswith(b"attune:alias:"):
            assert TTL_S <= ttl <= 2 * TTL_S, key  # the end of the next generation
        else:
            assert 0 < ttl <= TTL_S, key


@pytest.mark.integration
def test_replaying_batches_leaves_redis_byte_identical(
    redis_client: redis.Redis, redis_config: RedisConfig
) -> None:
    first: list[RedisOp] = [
        *(profile(f"u{i}", events=i) for i in range(50)),
        *(SegmentsWrite(f"u{i}", entered=("vip", "loyal")) for i in range(0, 50, 2)),
        AliasWrite("anon-9", "u9"),
    ]
    second: list[RedisOp] = [
        *(profile(f"u{i}", events=100 + i, device=None) for i in range(0, 50, 5)),
        *(SegmentsWrite(f"u{i}", exited=("vip",), entered=("new",)) for i in range(0, 50, 4)),
        ForgetUser("u48", audiences=("loyal", "new")),
        JsonWrite(KEYS.model("persona"), b'{"0":"bargain hunters"}', ttl_s=TTL_S),
    ]
    part = RedisSink(redis_config).build("redis", 0, 1)
    try:
        part.write_batch(first)
        part.write_batch(second)
        before = snapshot(redis_client)
        # Recovery resumes from a snapshot taken before both: they run again.
        part.write_batch(first)
        part.write_batch(second)
        after = snapshot(redis_client)
    finally:
        part.close()

    assert after == before
    # 49 users' hashes (u48 forgotten), an alias, 3 audiences, a model key.
    assert len(before) == 49 + 1 + 3 + 1


@pytest.mark.integration
def test_forget_user_removes_every_key_and_audience_membership(
    redis_client: redis.Redis, redis_config: RedisConfig
) -> None:
    awkward = "Zoë}{:x"
    part = RedisSink(redis_config).build("redis", 0, 1)
    try:
        for user in (awkward, "other"):
            part.write_batch(
                [
                    profile(user, events=5),
                    SegmentsWrite(user, entered=("vip", "loyal")),
                    AliasWrite(user, "someone"),
                    RecsWrite(user, b"3|m1|7|p||i1,500,tr,"),
                ]
            )
            # keys of the layouts before the user's hash and the alias buckets, left from
            # before an upgrade
            redis_client.set(KEYS.recs(user), b"3|m0|1|p|", ex=TTL_S)
            redis_client.set(KEYS.alias(user), b"someone", ex=TTL_S)
        assert alias_of(redis_client, awkward) == alias_of(redis_client, "other") == b"someone"

        part.write_batch([ForgetUser(awkward, audiences=("vip", "loyal"))])
    finally:
        part.close()

    left = all_keys(redis_client)
    assert not set(KEYS.user_keys(awkward)) & {k.decode() for k in left}
    bucket = SINK_KEYS.alias_lookup("other", time.time())[0]
    assert sorted(left) == sorted(
        [k.encode() for k in (KEYS.user("other"), KEYS.alias("other"), KEYS.recs("other"))]
        + [KEYS.audience("vip").encode(), KEYS.audience("loyal").encode(), bucket.encode()]
    )
    assert alias_of(redis_client, awkward) is None
    assert alias_of(redis_client, "other") == b"someone"
    for segment in ("vip", "loyal"):
        assert redis_client.smembers(KEYS.audience(segment)) == {b"other"}


@pytest.mark.integration
def test_a_refused_command_fails_the_batch_loudly(
    redis_client: redis.Redis, redis_config: RedisConfig
) -> None:
    redis_client.set(KEYS.user("u1"), b"not a hash")
    part = RedisSink(redis_config).build("redis", 0, 1)
    batch: list[RedisOp] = [SegmentsWrite("u1", ("vip",)), SegmentsWrite("u2", ("vip",))]
    try:
        with pytest.raises(RedisSinkError, match=r"refused 1 of 6 commands.*HSET.*WRONGTYPE"):
            part.write_batch(batch)
        # Every reply of the failed batch was read: the next batch sees its own.
        redis_client.delete(KEYS.user("u1"))
        part.write_batch([*batch, profile("u1", events=2)])
    finally:
        part.close()
    assert parse_profile(stored_profile(redis_client, "u1"))["events"] == "2"
    assert segment_names(redis_client.hgetall(KEYS.user("u1"))) == ["vip"]


def write_format_4_list(client: redis.Redis, user: str) -> str:
    """A hash of ``user`` with a list in format 4 (what the sink wrote before format 5)."""
    items = [(f"i{i:05d}", 0.9 - i / 20, "similar-content", "a/x") for i in range(10)]
    four = recs_encoding._format_4(encode_compact(items, "m", 7, "p").decode())
    client.hset(KEYS.user(user), mapping=dict(chunks("R", four)))
    client.expire(KEYS.user(user), TTL_S)
    return four


@pytest.mark.integration
def test_keys_of_the_three_key_layout_are_moved_into_the_users_hash(
    redis_client: redis.Redis, redis_config: RedisConfig
) -> None:
    # u1: the oldest forms (profile hash, segments set, recs format 2)
    redis_client.hset(KEYS.profile("u1"), mapping={"events": "1", "device_top": "mobile"})
    redis_client.sadd(KEYS.segments("u1"), "old", "kept")
    redis_client.expire(KEYS.segments("u1"), 50)
    recs_v2 = encode([("i1", 0.5, "trending", "a/x")], "m1", 7, "trending")
    redis_client.set(KEYS.recs("u1"), recs_v2, ex=40)
    # u2: the three-key layout (profile string, segments hash, recs format 3, long)
    long_recs = encode_compact(
        [(f"item-{i}", 0.5, "trending", None) for i in range(20)], "m", 7, "t"
    )
    redis_client.set(KEYS.profile("u2"), "2|5|1", ex=TTL_S)
    redis_client.hset(KEYS.segments("u2"), "vip", "1")
    redis_client.set(KEYS.recs("u2"), long_recs, ex=TTL_S)
    # u3: old keys, and a hash the upgraded flow has written already: the flow's values win
    redis_client.set(KEYS.profile("u3"), "2|1", ex=TTL_S)
    redis_client.sadd(KEYS.segments("u3"), "old")
    # alias keys (the layout before the alias buckets): a1 moved; a2 the flow has written
    # since (its value wins); an alias in a bucket of 4 buckets, where readers of 1024 do
    # not look (the bucket count changed)
    redis_client.set(KEYS.alias("a}1"), "u1", ex=50)
    redis_client.set(KEYS.alias("a2"), "old", ex=50)
    now = time.time()
    four_buckets = RedisKeys(alias_buckets=4, alias_period_s=TTL_S)
    misplaced = four_buckets.alias_bucket("a3", four_buckets.alias_generation(now))
    assert misplaced not in SINK_KEYS.alias_lookup("a3", now)
    redis_client.hset(misplaced, "a3", "u2")
    part = RedisSink(redis_config).build("redis", 0, 1)
    try:
        part.write_batch([profile("u3", events=9), AliasWrite("a2", "u3")])
    finally:
        part.close()

    four = write_format_4_list(redis_client, "u4")  # which upgrade rewrites in format 5

    assert upgrade_layout(redis_client, SINK_KEYS, TTL_S, now_s=now) == UpgradeReport(
        moved=2, kept=1, aliases_moved=2, aliases_rebucketed=1, recs_rewritten=1
    )
    u4 = joined(redis_client.hgetall(KEYS.user("u4")), "R")
    assert u4 is not None and u4.startswith("5|") and len(u4) == len(four) - 16
    assert parse_recs(u4) == parse_recs(four)
    assert [alias_of(redis_client, a) for a in ("a}1", "a2", "a3")] == [b"u1", b"u3", b"u2"]
    with RecommendationClient(redis_client, ttl_s=TTL_S) as client:
        assert client.get_profile("a}1") == client.get_profile("u1")
        assert client.resolve_alias("a3") == "u2"
    buckets = {SINK_KEYS.alias_lookup(a, now)[0] for a in ("a}1", "a2", "a3")}
    for bucket in buckets:
        assert redis_client.ttl(bucket) >= TTL_S
        redis_client.delete(bucket)  # the users' hashes are checked below

    with RecommendationClient(redis_client) as client:
        p1, p2, p3 = (client.get_profile(u) or {} for u in ("u1", "u2", "u3"))
        assert (p1["events"], p1["device_top"], p2["events"], p3["events"]) == (
            "1",
            "mobile",
            "5",
            "9",
        )
        assert client.get_recommendations("u1", 1).items[0].category == "a/x"
        assert client.get_recommendations("u2", 20).item_ids == [f"item-{i}" for i in range(20)]
    assert segment_names(redis_client.hgetall(KEYS.user("u1"))) == ["kept", "old"]
    assert segment_names(redis_client.hgetall(KEYS.user("u2"))) == ["vip"]
    assert segment_names(redis_client.hgetall(KEYS.user("u3"))) == []
    assert 40 < redis_client.ttl(KEYS.user("u1")) <= 50  # the longest TTL left of its keys
    assert redis_client.object("encoding", KEYS.user("u2")) == b"listpack"
    assert {k for k in all_keys(redis_client)} == {
        KEYS.user(u).encode() for u in ("u1", "u2", "u3", "u4")
    }
    assert upgrade_layout(redis_client, SINK_KEYS) == UpgradeReport(0, 0, 0, 0)  # idempotent


@pytest.mark.integration
def test_the_sink_needs_no_scripting_under_an_acl(
    redis_client: redis.Redis, redis_url: str
) -> None:
    user, password = f"attune-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    redis_client.execute_command(
        "ACL",
        "SETUSER",
        user,
        "on",
        f">{password}",
        "resetkeys",
        "~attune:*",
        "+@all",
        "-@scripting",
    )
    config = RedisConfig(redis_url, username=user, password=password, ttl_s=TTL_S)
    part = RedisSink(config).build("redis", 0, 1)
    try:
        part.write_batch(
            [
                SegmentsWrite("u1", ("vip",)),
                profile("u1", events=3),
                ForgetUser("a0"),
                AliasWrite("a1", "u1"),
            ]
        )
    finally:
        part.close()
        redis_client.execute_command("ACL", "DELUSER", user)
    assert segment_names(redis_client.hgetall(KEYS.user("u1"))) == ["vip"]
    assert alias_of(redis_client, "a1") == b"u1"


@pytest.mark.integration
def test_a_connection_closed_by_the_server_is_replaced(
    redis_client: redis.Redis, redis_config: RedisConfig
) -> None:
    part = RedisSink(redis_config).build("redis", 0, 1)
    try:
        part.write_batch([profile("u1", events=1)])
        assert redis_client.client_kill_filter(_type="normal", skipme=True) >= 1
        part.write_batch([profile("u1", events=2)])
    finally:
        part.close()
    assert parse_profile(stored_profile(redis_client, "u1"))["events"] == "2"


@pytest.mark.integration
def test_unreachable_redis_fails_at_build_naming_where(redis_url: str) -> None:
    closed_port = "redis://127.0.0.1:1/0"
    with pytest.raises(RedisSinkError, match=r"127\.0\.0\.1:1/0 is not reachable"):
        RedisSink(RedisConfig(closed_port, socket_timeout_s=2.0)).build("redis", 0, 1)


# --- Kafka ------------------------------------------------------------------------------------


def read_back(bootstrap: str, topic: str, expected: int) -> list[tuple[bytes | None, bytes]]:
    """Messages of ``topic`` from the start, until ``expected`` arrived or WAIT_S passed."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    got: list[tuple[bytes | None, bytes]] = []
    deadline = time.monotonic() + WAIT_S
    try:
        while len(got) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                got += [(r.key, r.value) for r in records]
        # Anything beyond `expected` would be a duplicate: one more short look.
        for records in consumer.poll(timeout_ms=500).values():
            got += [(r.key, r.value) for r in records]
    finally:
        consumer.close()
    return got


@pytest.mark.integration
def test_dataflow_delivers_every_message_exactly(
    kafka_bootstrap: str, fresh_topic: Callable[..., str]
) -> None:
    topic = fresh_topic(partitions=3)
    codec = Codec()
    changes = [
        SegmentChange(
            user_id=f"user-{i % 37}",
            segment="vip",
            change="ENTERED" if i % 2 else "EXITED",
            source="RULE",
            event_time=1_700_000_000_000 + i,
            emit_time=1_700_000_000_000 + i,
        )
        for i in range(1000)
    ]
    outs = [to_kafka(change, codec, topic) for change in changes]

    run_flow(outs, CheckedKafkaSink(kafka_bootstrap), batch_size=128)

    got = read_back(kafka_bootstrap, topic, len(outs))
    assert Counter(got) == Counter((o.key, o.value) for o in outs)
    decoded = [codec.decode_segment_change(value) for _, value in got]
    assert all(isinstance(change, SegmentChange) for change in decoded)
    assert sorted(decoded, key=lambda c: getattr(c, "event_time", 0)) == changes


def part_of(sink: CheckedKafkaSink) -> Any:
    """One partition of ``sink``, as Bytewax builds it (no resume state: there is none)."""
    return sink.build_part("kafka", "00", None)


@pytest.mark.integration
def test_the_flow_s_kafka_outputs_are_encoded_keyed_and_delivered(
    kafka_bootstrap: str, fresh_topic: Callable[..., str]
) -> None:
    """The wiring build_flow uses (flows/sinks.output): typed outputs encoded and keyed in
    one batch step in front of the partitioned sink, every one delivered once."""
    from attune.flows.settings import Settings
    from attune.flows.sinks import EncodingKafkaSink, output

    topic = fresh_topic(partitions=2)
    codec = Codec()
    sink = EncodingKafkaSink(Settings(kafka_bootstrap=kafka_bootstrap), lambda change: topic, codec)
    changes = [
        SegmentChange(f"user-{i % 13}", "vip", "ENTERED", "RULE", 1_700_000_000_000 + i, 0)
        for i in range(300)
    ]
    flow = Dataflow("encoding_sink_test")
    output("out", op.input("in", flow, TestingSource(changes, batch_size=64)), sink)
    run_main(flow, epoch_interval=timedelta(0))

    got = read_back(kafka_bootstrap, topic, len(changes))
    decoded = [(key, codec.decode_segment_change(value)) for key, value in got]
    assert all(isinstance(c, SegmentChange) and key == c.user_id.encode() for key, c in decoded)
    times = sorted(c.event_time for _, c in decoded if isinstance(c, SegmentChange))
    assert times == [c.event_time for c in changes]


@pytest.mark.integration
def test_missing_topic_raises_delivery_error_at_the_end_of_the_epoch(kafka_bootstrap: str) -> None:
    missing = f"test.missing.{uuid.uuid4().hex[:12]}"  # the broker does not auto-create topics
    sink = CheckedKafkaSink(kafka_bootstrap, config={"message.timeout.ms": 3000})
    part = part_of(sink)
    started = time.monotonic()
    # Producing does not wait for the broker: the batch returns at once...
    part.write_batch([KafkaOut(missing, b"u1", b"v%d" % i) for i in range(5)])
    assert time.monotonic() - started < 2.0
    # ... and the end of the epoch (before Bytewax commits it) confirms or raises.
    with pytest.raises(DeliveryError) as raised:
        part.snapshot()
    message = str(raised.value)
    assert "5 messages produced since the last check: 5 failed" in message
    assert missing in message
    assert "Unknown topic or partition" in message, message
    assert "before the epoch is committed" in message
    assert time.monotonic() - started < WAIT_S
    part.close()  # after the error: no second wait


@pytest.mark.integration
def test_too_large_message_raises_delivery_error(
    kafka_bootstrap: str, fresh_topic: Callable[..., str]
) -> None:
    topic = fresh_topic(partitions=1)
    big = KafkaOut(topic, b"u1", b"x" * 2_000_000)
    small = [KafkaOut(topic, b"u1", b"small %d" % i) for i in range(3)]

    # Refused by the producer itself (its message.max.bytes is 1 MB by default), so the
    # batch raises at once...
    part = part_of(CheckedKafkaSink(kafka_bootstrap))
    with pytest.raises(DeliveryError, match=f"1 failed .*too large.* on topic {topic}"):
        part.write_batch([small[0], big, small[1]])
    # ... or, with a larger producer limit, by the broker (message.max.bytes ~1 MB): at the
    # end of the epoch, or at the next batch if the report is in by then.
    lenient = CheckedKafkaSink(kafka_bootstrap, config={"message.max.bytes": 10_000_000})
    part = part_of(lenient)
    with pytest.raises(DeliveryError, match=f"1 failed .*too large.* on topic {topic}"):
        part.write_batch([big, small[2]])
        part.snapshot()

    # The small ones went through.
    assert Counter(read_back(kafka_bootstrap, topic, 3)) == Counter((o.key, o.value) for o in small)


@pytest.mark.integration
def test_delivery_failure_stops_the_dataflow(kafka_bootstrap: str) -> None:
    missing = f"test.missing.{uuid.uuid4().hex[:12]}"
    outs = [KafkaOut(missing, None, b"v%d" % i) for i in range(10)]
    sink = CheckedKafkaSink(kafka_bootstrap, config={"message.timeout.ms": 2000})
    with pytest.raises(Exception, match="error snapshotting StatefulSink") as raised:
        run_flow(outs, sink, batch_size=10)
    cause = raised.value.__cause__
    assert isinstance(cause, DeliveryError)
    assert "10 messages produced since the last check: 10 failed" in str(cause)


@pytest.mark.integration
def test_an_epoch_whose_messages_failed_is_not_committed_and_is_replayed(
    kafka_bootstrap: str, fresh_topic: Callable[..., str], tmp_path: Path
) -> None:
    """At least once across a failed delivery: the epoch that produced a message the
    broker refused is not committed, so the restart from the recovery store produces it
    again. Were an epoch committed before its messages were confirmed (a sink that
    checked later, or never), the restart would resume after it and lose them."""
    ok_topic = fresh_topic(partitions=1)
    late_topic = f"test.late.{uuid.uuid4().hex[:12]}"  # created only before the restart
    # 6 epochs of 10 (epoch interval 0: one batch each): 3 deliverable, then 3 that fail.
    outs = [KafkaOut(ok_topic, b"u%d" % (i % 7), b"ok %d" % i) for i in range(30)]
    outs += [KafkaOut(late_topic, b"u%d" % (i % 7), b"late %d" % i) for i in range(30)]
    init_db_dir(tmp_path, 1)
    recovery = RecoveryConfig(str(tmp_path), backup_interval=timedelta(0))
    config = {"message.timeout.ms": 2000}
    with pytest.raises(Exception, match="error snapshotting StatefulSink") as raised:
        run_flow(outs, CheckedKafkaSink(kafka_bootstrap, config=config), 10, recovery=recovery)
    assert isinstance(raised.value.__cause__, DeliveryError)

    topics.ensure_topics(kafka_bootstrap, [late_topic], 1)
    run_flow(outs, CheckedKafkaSink(kafka_bootstrap, config=config), 10, recovery=recovery)

    late = read_back(kafka_bootstrap, late_topic, 30)
    assert Counter(late) == Counter((o.key, o.value) for o in outs[30:])  # none lost
    ok = read_back(kafka_bootstrap, ok_topic, 30)
    assert set(ok) == {(o.key, o.value) for o in outs[:30]}  # at least once


# --- Kafka sink without a broker: configuration and local failures ----------------------------

NO_BROKER = "127.0.0.1:1"  # nothing listens on port 1


def test_security_options_are_translated_from_client_options() -> None:
    from attune.flows.settings import Settings
    from attune.flows.topics import client_options

    settings = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="attune",
        kafka_sasl_password="pw",
        kafka_ssl_cafile="/etc/ca.pem",
    )
    sink = CheckedKafkaSink(NO_BROKER, security=client_options(settings))
    config = sink.producer_config()
    assert {k: config[k] for k in sink.security} == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "attune",
        "sasl.password": "pw",
        "ssl.ca.location": "/etc/ca.pem",
    }
    assert config["acks"] == "all" and config["enable.idempotence"] is True
    assert config["client.id"] == "attune-sinks"
    assert CheckedKafkaSink(NO_BROKER, security=client_options(Settings())).security == {}


def test_unknown_security_option_and_weakened_guarantees_are_refused() -> None:
    with pytest.raises(ValueError, match="ssl_crlfile"):
        CheckedKafkaSink(NO_BROKER, security={"ssl_crlfile": "/crl.pem"})
    with pytest.raises(ValueError, match="weaken"):
        CheckedKafkaSink(NO_BROKER, config={"acks": 1})
    with pytest.raises(ValueError, match="weaken"):
        CheckedKafkaSink(NO_BROKER, config={"enable.idempotence": "false"})
    CheckedKafkaSink(NO_BROKER, config={"acks": -1, "linger.ms": 20})  # same guarantees
    with pytest.raises(ValueError, match="ATTUNE_KAFKA_BOOTSTRAP"):
        CheckedKafkaSink("")


def test_outputs_are_keyed_by_user_and_dead_letters_have_no_key() -> None:
    from attune.operators.events import DeadLetter, ErrorClass

    codec = Codec()
    change = SegmentChange("u7", "vip", "ENTERED", "RULE", 1_700_000_000_000, 1_700_000_000_001)
    letter = DeadLetter(b"\x00", ErrorClass.TRUNCATED, "empty", 1_700_000_000_000, "attune.events")
    assert to_kafka(change, codec, "attune.segments") == KafkaOut(
        "attune.segments", b"u7", codec.encode_output(change)
    )
    assert to_kafka(letter, codec, "attune.dlq").key is None


def test_message_larger_than_the_producer_accepts_fails_without_a_broker() -> None:
    part = part_of(CheckedKafkaSink(NO_BROKER))
    with pytest.raises(DeliveryError, match=r"1 failed .*too large.* on topic t"):
        part.write_batch([KafkaOut("t", None, b"x" * 2_000_000)])


def test_unconfirmed_messages_fail_the_epoch_after_the_flush_bound() -> None:
    part = part_of(CheckedKafkaSink(NO_BROKER, flush_timeout_s=0.5))
    started = time.monotonic()
    part.write_batch([KafkaOut("t", b"k", b"v")] * 3)  # queued, not waited for
    with pytest.raises(DeliveryError, match=r"3 still undelivered after waiting 0\.5s"):
        part.snapshot()
    assert time.monotonic() - started < 5


def test_partitions_share_one_producer_and_close_releases_it() -> None:
    sink = CheckedKafkaSink(NO_BROKER, config={"client.id": "shared-test"})
    first, second = part_of(sink), sink.build_part("kafka", "01", None)
    assert first._producer is second._producer
    other = part_of(CheckedKafkaSink(NO_BROKER, config={"client.id": "shared-test-2"}))
    assert other._producer is not first._producer
    for part in (first, second, other):
        part.close()  # nothing produced: nothing to wait for
    assert part_of(sink)._producer is not first._producer  # released with its last user


def test_keys_route_a_user_to_one_partition_and_spread_dead_letters() -> None:
    sink = CheckedKafkaSink(NO_BROKER)
    assert len(sink.list_parts()) == SINK_PARTS and len(set(sink.list_parts())) == SINK_PARTS
    key, out = keyed(KafkaOut("t", b"u7", b"v"))
    assert (key, out.key) == ("u7", b"u7")
    letters = {keyed(KafkaOut("dlq", None, b"bad %d" % i))[0] for i in range(100)}
    parts = {sink.part_fn(k) % SINK_PARTS for k in letters}
    assert len(parts) > SINK_PARTS // 2  # not one partition (one worker) for all of them


def test_a_full_local_queue_fails_the_batch_after_the_bound() -> None:
    sink = CheckedKafkaSink(
        NO_BROKER, config={"queue.buffering.max.messages": 10}, flush_timeout_s=0.5
    )
    part = part_of(sink)
    with pytest.raises(DeliveryError, match=r"local queue stayed full for 0\.5s"):
        part.write_batch([KafkaOut("t", b"k", b"v")] * 20)
