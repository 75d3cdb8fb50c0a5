"""Recommendations while the flow runs: real Kafka, real Redis, the flow as its own process.

The flow tails the events topic (``ATTUNE_KAFKA_TAIL=true``). A generated
background stream trains the shared models (trending, co-visitation, item
vectors, propensity) and the learner publishes them; then one user views items
of one category, and the test reads the user's recommendations from Redis
through :class:`attune.clients.RecommendationClient` while the same flow process goes
on; the user then views items of another category and the list changes to
favour it. An unknown user gets trending, flagged as a fallback.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import orjson
import pytest
import redis
from confluent_kafka import Producer

from attune.clients.recommendations import RecommendationClient, Recommendations
from attune.flows import topics
from attune.flows.settings import Settings, env_name
from attune.operators.codec import Codec
from attune.operators.events import Event, EventType, ItemUpdate, ProductView
from attune.operators.ranking import REASONS
from attune.operators.redis_keys import RedisKeys
from attune.workload.generator import GeneratorConfig, generate
from tests.integration.reading import fresh_topics, produce_generated
from tests.integration.test_personalize import flow_env as personalize_env

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
#: Reason codes the ranking writes (operators/ranking.py).
KNOWN_REASONS = {*REASONS.values(), "trending-in-segment"}
WAIT_S = 180.0


def wait_for(what: str, probe: Callable[[], T | None], proc: subprocess.Popen[bytes]) -> T:
    """Poll ``probe`` until it returns something (bounded), failing if the flow died."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = probe()
        if value is not None:
            return value
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            pytest.fail(f"the flow exited ({proc.returncode}) while waiting for {what}:\n{out}")
        time.sleep(0.2)
    pytest.fail(f"no {what} within {WAIT_S} s")


def flow_env(settings: Settings) -> dict[str, str]:
    """test_personalize's environment, tailing the topics and publishing models every 1 s."""
    env = personalize_env(settings)
    env[env_name("kafka_tail")] = "true"
    env[env_name("models_publish_s")] = "1"
    return env


@pytest.fixture
def live_flow(
    integration_settings: Settings, redis_client: redis.Redis
) -> Iterator[tuple[Settings, list[ItemUpdate], int, subprocess.Popen[bytes]]]:
    """Fresh topics (one partition), a background stream on them, the flow tailing them."""
    settings = integration_settings.replace(
        **fresh_topics("recs"),
    )
    names = topics.design_topics(settings)
    topics.ensure_topics(settings.kafka_bootstrap, names, 1)
    config = GeneratorConfig(users=150, days=3, seed=5)
    end = max(e.event_time for e in generate(config).events)  # events are a one-shot iterator
    g = generate(config)
    produce_generated(settings, g)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "attune.flows.personalize:flow"],
        env=flow_env(settings),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield settings, list(g.items), end, proc
    finally:
        proc.kill()
        proc.wait(30)
        topics.delete_topics(settings.kafka_bootstrap, names)


def send_views(
    settings: Settings, user: str, items: list[ItemUpdate], start_ms: int, tag: str
) -> None:
    codec = Codec()
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for i, item in enumerate(items):
        event = Event(
            f"{tag}-{i}",
            EventType.PRODUCT_VIEW,
            start_ms + i * 40_000,
            ProductView(item.item_id, "/".join(item.category_path), item.price_minor, "EUR"),
            user_id=user,
        )
        producer.produce(settings.topic_events, codec.encode_event(event), key=user.encode())
    assert producer.flush(30) == 0


def top_level(category: str | None) -> str | None:
    return category.split("/", 1)[0] if category else None


def test_recommendations_follow_what_a_user_views_in_the_same_run(
    live_flow: tuple[Settings, list[ItemUpdate], int, subprocess.Popen[bytes]],
    redis_client: redis.Redis,
) -> None:
    settings, items, end_ms, proc = live_flow
    keys = RedisKeys(settings.redis_prefix)
    client = RecommendationClient(redis_client, settings.redis_prefix, strict=True)

    # The background stream's sessions reach the one learner, which publishes models.
    wait_for("published models", lambda: redis_client.get(keys.model("recs")), proc)
    wait_for("trending", lambda: redis_client.zcard(keys.trending("global")) or None, proc)
    metrics = orjson.loads(redis_client.get(keys.model("propensity")) or b"{}")
    assert metrics["sessions"] > 0 and "auc" in metrics and "drifts" in metrics

    # An unknown user: trending, flagged.
    nobody = client.get_recommendations("never-seen-user", k=5)
    assert nobody.fallback and nobody.fallback_reason == "unknown_user"
    assert nobody.source == "trending" and nobody.scope == "global"
    assert len(nobody.items) == 5 and all(r.reason == "trending" for r in nobody.items)
    best: list[bytes] = redis_client.zrevrange(keys.trending("global"), 0, 4)  # type: ignore[assignment]
    assert nobody.item_ids == [m.decode() for m in best]

    # Two top-level categories with enough items in stock.
    by_top: dict[str, list[ItemUpdate]] = {}
    for item in items:
        if item.in_stock:
            by_top.setdefault(item.category_path[0], []).append(item)
    first, second = sorted((c for c in by_top if len(by_top[c]) >= 20), key=lambda c: c)[:2]
    user = f"live-{uuid.uuid4().hex[:6]}"

    def personalised(after: int, views: int) -> Callable[[], Recommendations | None]:
        """The user's list once the batch with their ``views``-th view was ranked (the
        profile and the list are written by the same batch)."""

        def probe() -> Recommendations | None:
            seen = (client.get_profile(user) or {}).get("product_views")
            if seen is None or int(seen) < views:
                return None
            got = client.get_recommendations(user, k=10)
            if got.fallback or got.generated_at is None or got.generated_at <= after:
                return None
            return got

        return probe

    # Phase 1: the user views items of the first category.
    t1 = end_ms + 3_600_000
    send_views(settings, user, by_top[first][:6], t1, f"{user}-a")
    recs1 = wait_for("recommendations after the first views", personalised(0, 6), proc)
    tops1 = Counter(top_level(r.category) for r in recs1.items)
    assert recs1.source == "personalized" and not recs1.fallback
    assert len(recs1.items) == 10
    assert tops1.most_common(1)[0][0] == first and tops1[first] >= 5, tops1
    assert {r.reason for r in recs1.items} <= KNOWN_REASONS
    viewed = {i.item_id for i in by_top[first][:6]}
    assert not viewed & set(recs1.item_ids)  # what was seen is not recommended again
    assert recs1.model_version and recs1.model_version.startswith("m")

    # Phase 2, two hours later in event time: items of the second category. The same
    # flow process rewrites the list, which now favours the second category.
    t2 = t1 + 2 * 3_600_000
    send_views(settings, user, by_top[second][:8], t2, f"{user}-b")

    def moved() -> Recommendations | None:
        got = personalised(recs1.generated_at or 0, 14)()
        if got is None:
            return None
        tops = Counter(top_level(r.category) for r in got.items)
        return got if tops[second] > tops[first] else None

    recs2 = wait_for("recommendations that follow the second category", moved, proc)
    tops2 = Counter(top_level(r.category) for r in recs2.items)
    assert tops2.most_common(1)[0][0] == second and tops2[second] >= 5, tops2
    assert recs2.item_ids != recs1.item_ids
    assert {r.reason for r in recs2.items} <= KNOWN_REASONS
    assert any(r.reason != "trending" for r in recs2.items)  # personal reasons, not only trend
    assert redis_client.ttl(keys.user(user)) > 0
    assert proc.poll() is None  # one run: the flow is still going
