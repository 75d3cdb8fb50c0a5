"""Cart-abandoned triggers through the real Kafka broker, read by the subscriber client.

A generated stream is produced, the flow runs over it twice (a replay, as after a
recovery), and a downstream app with the subscriber client and act-once helper
reads the cart_abandoned topic: every expected abandonment yields one action,
the replay repeats the same trigger ids, nothing fires for converted carts or
for users without marketing consent, and users who never came back get theirs.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from bytewax.testing import run_main

from clients.subscriber import ActOnce, Delivery, MemoryOnceStore, TriggerSubscriber
from flows import topics
from flows.generate import produce
from flows.personalize import build_flow
from flows.settings import Settings
from operators.codec import Codec
from operators.events import Trigger
from operators.generator import GeneratorConfig, GroundTruth, generate
from operators.triggers import KINDS
from tests.truth import cart_expectations, check_cart_triggers

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ran(integration_settings: Settings) -> Iterator[tuple[Settings, GroundTruth]]:
    tag = uuid.uuid4().hex[:8]
    settings = integration_settings.replace(
        topic_events=f"tt.events.{tag}",
        topic_items=f"tt.items.{tag}",
        topic_segments=f"tt.segments.{tag}",
        topic_dlq=f"tt.dlq.{tag}",
        topic_erasures=f"tt.erasures.{tag}",
        topic_triggers_prefix=f"tt.triggers.{tag}.",
        kafka_tail=False,
        # the truth knows nothing of quiet hours, caps and cooldowns
        trigger_rules_file=str(
            Path(__file__).resolve().parents[1] / "data" / "rules_without_policies.yaml"
        ),
    )
    names = [
        settings.topic_events,
        settings.topic_items,
        settings.topic_segments,
        settings.topic_dlq,
        settings.topic_erasures,
        *(settings.topic_trigger(k) for k in KINDS),
    ]
    topics.ensure_topics(settings.kafka_bootstrap, names, 3)
    g = generate(GeneratorConfig(users=300, days=5, seed=3))
    produce(
        g,
        settings.kafka_bootstrap,
        settings.topic_events,
        settings.topic_items,
        None,
        Codec(),
        progress=False,
    )
    run_main(build_flow(settings))
    run_main(build_flow(settings))  # the same input again: a replay
    yield settings, g.truth
    topics.delete_topics(settings.kafka_bootstrap, names)


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


def test_cart_abandoned_seen_by_the_subscriber(ran: tuple[Settings, GroundTruth]) -> None:
    settings, truth = ran
    delivered, acted = read_all(settings, "cart_abandoned")
    exp = cart_expectations(truth)
    assert len(acted) == len({t.trigger_id for t in delivered})  # the app acted once per id

    # The replay published the same triggers with the same ids: every trigger of a user
    # whose whole history is under their user id shows up exactly twice. (Users with
    # anonymous history handed over at login may differ in a few: docs/architecture.md,
    # "Known limits"; 3-6% of theirs measured, bounded here at 10%.)
    counts = Counter(t.trigger_id for t in delivered)
    ids_of_known = {t.trigger_id for t in delivered if t.user_id in exp.users - exp.identified}
    assert ids_of_known and {counts[i] for i in ids_of_known} == {2}
    ids_of_identified = {t.trigger_id for t in delivered if t.user_id in exp.identified}
    once = {i for i in ids_of_identified if counts[i] != 2}
    assert len(once) <= 0.10 * len(ids_of_identified), len(once)

    fired = {(t.user_id, t.cause_event_time): t for t in acted if t.user_id in exp.users}
    check_cart_triggers(fired, exp)

    never_consented = {
        u
        for u, t in truth.users.items()
        if t.consent and all(c.marketing is False for c in t.consent)
    }
    assert never_consented, "the generator planted users who deny marketing"
    assert not {t.user_id for t in acted} & never_consented
