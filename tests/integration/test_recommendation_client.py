"""The recommendation client against the real Redis: the contract values written as the
Redis sink stores them (the user's hash, docs/redis.md), and as the three-key layout
before it did, read back through the client."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
import pytest
import redis

from attune.clients import CorruptRecommendationsError, Recommendation, RecommendationClient
from attune.operators import recs_encoding
from attune.operators.redis_keys import RedisKeys, encode_profile_2
from attune.operators.redis_sink import (
    AliasWrite,
    ProfileWrite,
    RecsWrite,
    RedisOp,
    SegmentsWrite,
    plan,
)

pytestmark = pytest.mark.integration

T = 1_767_571_200_000


def recs_value(*items: tuple[str, float, str, str | None]) -> bytes:
    """Format 3, as the sink stores what the ranking step makes."""
    return recs_encoding.compact(recs_encoding.encode(items, "emb-3", T, "personalized"))


def recs_value_v1(*items: tuple[str, float, str, str | None]) -> bytes:
    """Format 1, as an older version wrote it."""
    return orjson.dumps(
        {
            "items": [
                {"item": i, "score": s, "reason": r, **({"category": c} if c else {})}
                for i, s, r, c in items
            ],
            "model_version": "emb-3",
            "generated_at": T,
            "source": "personalized",
        }
    )


def write_contract(client: redis.Redis, keys: RedisKeys) -> None:
    """What the flow writes (through the sink's ``plan``): one user's list, an alias,
    segments, trending per scope; and u5's list and segments as the layouts before the
    user's hash wrote them (format 1, a set)."""
    pipe = client.pipeline()
    written: list[RedisOp] = [
        RecsWrite(
            "u1",
            recs_value(
                ("i1", 0.83, "similar-to-viewed", "shoes/running"),
                ("i2", 0.71, "bought-together", "bags"),
                ("i3", 0.55, "trending-in-category", "shoes"),
            ),
        ),
        AliasWrite("anon-7", "u1"),
        SegmentsWrite("u2", entered=("vip", "new_visitor")),
    ]
    for command in plan(written, keys=keys, ttl_s=3600):
        pipe.execute_command(*command)
    pipe.set(keys.recs("u5"), recs_value_v1(("i1", 0.83, "similar-to-viewed", "shoes")))
    pipe.sadd(keys.segments("u5"), "vip")
    pipe.zadd(keys.trending("global"), {"g1": 90.0, "g2": 80.0, "i1": 70.0, "g3": 60.0})
    pipe.zadd(keys.trending("category:shoes"), {"s1": 30.0, "i1": 20.0, "s2": 10.0})
    pipe.zadd(keys.trending("segment:vip"), {"v1": 5.0, "g1": 4.0})
    pipe.execute()


def summary(r: Any) -> tuple[Any, ...]:
    return (r.source, r.fallback, r.fallback_reason, r.scope, r.item_ids)


def test_personalised_list_and_its_metadata(redis_client: redis.Redis) -> None:
    keys = RedisKeys()
    write_contract(redis_client, keys)
    client = RecommendationClient(redis_client)
    r = client.get_recommendations("u1", k=2)
    assert summary(r) == ("personalized", False, None, None, ["i1", "i2"])
    assert r.items[0] == Recommendation("i1", 0.83, "similar-to-viewed", "shoes/running")
    assert (r.model_version, r.generated_at, r.topped_up, r.resolved_user) == ("emb-3", T, 0, "u1")


def test_filters_and_top_up_from_trending(redis_client: redis.Redis) -> None:
    write_contract(redis_client, RedisKeys())
    client = RecommendationClient(redis_client)
    # The page shows i2: left out; 2 personal items, 3 from global trending (i1 not twice).
    r = client.get_recommendations("u1", k=5, context={"item": "i2"})
    assert summary(r) == ("personalized", False, None, "global", ["i1", "i3", "g1", "g2", "g3"])
    assert [x.reason for x in r.items] == [
        "similar-to-viewed",
        "trending-in-category",
        "trending",
        "trending",
        "trending",
    ]
    assert r.topped_up == 3 and r.items[2].score == 90.0
    # Category page: only shoes, topped up from the category's trending set, never from global.
    r = client.get_recommendations("u1", k=10, context={"category": "shoes", "exclude": ["s2"]})
    assert summary(r) == ("personalized", False, None, "category:shoes", ["i1", "i3", "s1"])
    assert r.items[2] == Recommendation("s1", 30.0, "trending", "shoes")


def test_unknown_user_gets_trending_with_the_fallback_flagged(redis_client: redis.Redis) -> None:
    write_contract(redis_client, RedisKeys())
    client = RecommendationClient(redis_client)
    r = client.get_recommendations("never-seen", k=3)
    assert summary(r) == ("trending", True, "unknown_user", "global", ["g1", "g2", "i1"])
    assert all(x.reason == "trending" for x in r.items)
    assert (r.model_version, r.generated_at, r.topped_up) == (None, None, 3)
    # A user with segments but no list: the segment's trending first, then global.
    r = client.get_recommendations("u2", k=4)
    assert summary(r) == ("trending", True, "unknown_user", "segment:vip", ["v1", "g1", "g2", "i1"])
    assert r.scopes == ("segment:vip", "global")
    # The context's category wins over the segments.
    r = client.get_recommendations("u2", k=4, context={"category": "shoes"})
    assert summary(r) == ("trending", True, "unknown_user", "category:shoes", ["s1", "i1", "s2"])


def test_values_of_the_previous_layout_read_the_same(redis_client: redis.Redis) -> None:
    write_contract(redis_client, RedisKeys())
    r = RecommendationClient(redis_client, strict=True).get_recommendations("u5", k=3)
    assert summary(r) == ("personalized", False, None, "segment:vip", ["i1", "v1", "g1"])
    assert r.items[0] == Recommendation("i1", 0.83, "similar-to-viewed", "shoes")


def test_profiles_of_both_formats_and_of_an_alias(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    keys = RedisKeys()
    write_contract(redis_client, keys)
    for command in plan([ProfileWrite("u1", {"events": "3", "device_top": "MOBILE"})], keys=keys):
        redis_client.execute_command(*command)
    # the three-key layout: a profile string (format 2), a hash before it (format 1)
    redis_client.set(keys.profile("u6"), encode_profile_2({"events": "4", "device_top": "TABLET"}))
    redis_client.hset(keys.profile("u2"), mapping={"events": "5", "device_top": ""})  # format 1
    redis_client.hset(keys.user("u3"), "P", b"19|future format")
    client = RecommendationClient(redis_client)
    u1, u2, u6 = client.get_profile("u1"), client.get_profile("u2"), client.get_profile("u6")
    assert u6 is not None and (u6["events"], u6["device_top"]) == ("4", "TABLET")
    assert u1 is not None and (u1["events"], u1["device_top"], u1["sessions"]) == (
        "3",
        "MOBILE",
        None,
    )
    assert u2 is not None and (u2["events"], u2["device_top"]) == ("5", None)
    assert client.get_profile("anon-7") == u1  # an anonymous id reads its user's
    assert client.get_profile("never-seen") is None
    with caplog.at_level(logging.WARNING, logger="attune.clients.recommendations"):
        assert client.get_profile("u3") is None
    assert any("no profile: attune:{u:u3}: " in rec.getMessage() for rec in caplog.records)
    with pytest.raises(CorruptRecommendationsError, match="profile format '9'"):
        RecommendationClient(redis_client, strict=True).get_profile("u3")


def test_anonymous_id_reads_its_user(redis_client: redis.Redis, redis_url: str) -> None:
    write_contract(redis_client, RedisKeys())
    with RecommendationClient(redis_url) as client:  # built from a URL, closed on exit
        r = client.get_recommendations("anon-7", k=1)
    assert (r.user, r.resolved_user, r.fallback, r.item_ids) == ("anon-7", "u1", False, ["i1"])


#: Generations of ~12 days: the test does not cross from one to the next.
PERIOD = 10**6


def test_an_alias_is_found_in_this_and_the_previous_generation_and_the_old_key(
    redis_client: redis.Redis,
) -> None:
    write_contract(redis_client, RedisKeys())
    keys = RedisKeys(alias_period_s=PERIOD)
    now = time.time()
    generation = keys.alias_generation(now)
    redis_client.hset(keys.alias_bucket("anon-prev", generation - 1), "anon-prev", "u1")
    redis_client.hset(keys.alias_bucket("anon-old", generation - 2), "anon-old", "u1")
    redis_client.set(keys.alias("anon-key"), "u1")  # the layout before the alias buckets
    # this generation's wins over the previous one's and the old key
    redis_client.hset(keys.alias_bucket("anon-both", generation), "anon-both", "u2")
    redis_client.hset(keys.alias_bucket("anon-both", generation - 1), "anon-both", "u1")
    redis_client.set(keys.alias("anon-both"), "u1")
    client = RecommendationClient(redis_client, ttl_s=PERIOD)
    resolved = {a: client.resolve_alias(a) for a in ("anon-prev", "anon-key", "anon-both")}
    assert resolved == {"anon-prev": "u1", "anon-key": "u1", "anon-both": "u2"}
    assert client.resolve_alias("anon-old") is None  # expired in all but name
    assert client.get_recommendations("anon-prev", k=1).resolved_user == "u1"
    assert client.get_recommendations("anon-old", k=1).resolved_user == "anon-old"
    with pytest.raises(ValueError, match="empty"):
        client.resolve_alias("")


def test_corrupt_values_fall_back_logged_or_raise_when_strict(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    keys = RedisKeys()
    write_contract(redis_client, keys)
    redis_client.set(keys.recs("u3"), b'{"items": "oops"}')
    redis_client.hset(keys.recs("u4"), "items", "[]")  # wrong Redis type
    redis_client.hset(keys.user("u6"), mapping={"R": b"3|m|1|p|", "R1": b"x"})  # R2 missing
    redis_client.set(keys.user("u7"), b"a string, not the user's hash")
    client = RecommendationClient(redis_client)
    with caplog.at_level(logging.WARNING, logger="attune.clients.recommendations"):
        r3, r4, r6, r7 = (client.get_recommendations(u, k=2) for u in ("u3", "u4", "u6", "u7"))
    for r in (r3, r4, r6, r7):
        assert summary(r) == ("trending", True, "corrupt", "global", ["g1", "g2"])
    logged = [rec.getMessage() for rec in caplog.records]
    assert any("attune:{u:u3}:recs: items is missing or not a list" in m for m in logged)
    assert any("attune:{u:u4}:recs: not a string (WRONGTYPE" in m for m in logged)
    assert any("attune:{u:u6}: recs: field R2 is missing: R says 3 pieces" in m for m in logged)
    assert any("attune:{u:u7}: WRONGTYPE" in m for m in logged)

    strict = RecommendationClient(redis_client, strict=True)
    with pytest.raises(CorruptRecommendationsError, match="items is missing or not a list"):
        strict.get_recommendations("u3")
    with pytest.raises(CorruptRecommendationsError, match="WRONGTYPE"):
        strict.get_recommendations("u4")
    redis_client.set(keys.trending("segment:vip"), "not a zset")
    with pytest.raises(CorruptRecommendationsError, match="trending:segment:vip"):
        strict.get_recommendations("u2")
    # Not strict: the bad scope is skipped, global still answers.
    assert client.get_recommendations("u2", k=1).scope == "global"


def test_prefix_and_decoded_responses(redis_url: str) -> None:
    decoded = redis.Redis.from_url(redis_url, decode_responses=True)
    decoded.flushdb()
    keys = RedisKeys("shop:")
    for command in plan([RecsWrite("u1", recs_value(("i9", 1.0, "x", None)))], keys=keys):
        decoded.execute_command(*command)
    decoded.zadd(keys.trending("global"), {"g1": 1.0})
    client = RecommendationClient(decoded, prefix="shop:")
    assert client.get_recommendations("u1", k=2).item_ids == ["i9", "g1"]
    # Nothing under the default prefix: the same user is unknown there.
    assert RecommendationClient(decoded).get_recommendations("u1", k=2).items == ()
    decoded.close()
