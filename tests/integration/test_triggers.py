"""Cart-abandoned triggers through the real Kafka broker, read by the subscriber client.

A generated stream is produced, the flow runs over it twice (a replay, as after a
recovery), and a downstream app with the subscriber client and act-once helper
reads the cart_abandoned topic: every expected abandonment yields one action,
the replay repeats the same trigger ids, nothing fires for converted carts or
for users without marketing consent, and users who never came back get theirs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from bytewax.testing import run_main

from attune.flows import topics
from attune.flows.personalize import build_flow
from attune.flows.settings import Settings
from attune.operators.triggers import KINDS
from attune.workload.generator import GeneratorConfig, generate
from attune.workload.truth import GroundTruth
from tests.integration.reading import fresh_topics, produce_generated, read_all
from tests.truth import cart_expectations, check_cart_triggers

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ran(integration_settings: Settings) -> Iterator[tuple[Settings, GroundTruth]]:
    settings = integration_settings.replace(
        **fresh_topics("tt"),
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
    produce_generated(settings, g)
    run_main(build_flow(settings))
    run_main(build_flow(settings))  # the same input again: a replay
    yield settings, g.truth
    topics.delete_topics(settings.kafka_bootstrap, names)


def test_cart_abandoned_seen_by_the_subscriber(ran: tuple[Settings, GroundTruth]) -> None:
    settings, truth = ran
    delivered, acted = read_all(settings, "cart_abandoned")
    exp = cart_expectations(truth)
    assert len(acted) == len({t.trigger_id for t in delivered})  # the app acted once per id

    # The replay published the same triggers with the same ids: every trigger shows up
    # exactly twice, those of users whose anonymous history was handed over at login too.
    counts = Counter(t.trigger_id for t in delivered)
    odd = [
        (t.user_id, truth.users[t.user_id].identity if t.user_id in truth.users else None,
         t.cause_event_time, t.cart_value_minor, (t.user_id, t.cause_event_time) in exp.abandoned,
         counts[t.trigger_id])
        for t in delivered
        if counts[t.trigger_id] != 2
    ]  # fmt: skip
    assert counts and odd == [], odd
    assert {t.user_id for t in delivered} & exp.identified

    for kind in ("long_dwell", "repeat_visit"):  # the replay repeats these ids too
        ids = Counter(t.trigger_id for t in read_all(settings, kind)[0])
        assert ids and set(ids.values()) == {2}, (kind, [i for i, n in ids.items() if n != 2])

    fired = {(t.user_id, t.cause_event_time): t for t in acted if t.user_id in exp.users}
    check_cart_triggers(fired, exp)

    never_consented = {
        u
        for u, t in truth.users.items()
        if t.consent and all(c.marketing is False for c in t.consent)
    }
    assert never_consented, "the generator planted users who deny marketing"
    assert not {t.user_id for t in acted} & never_consented
