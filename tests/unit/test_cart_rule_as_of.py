"""Issue 15, item 1: the rule that chooses a cart trigger reads the user's segments as they
stood at the cart's due time, not when the cart happens to be judged (at an event whose
settled time passed the due time, or at the end of a batch), so a purchase after the due
time cannot choose the rule, whatever the batching.

The shipped rules: ``high_value_cart_offer`` for a user in ``high_value`` (orders of
500.00 or more in 30 days), ``cart_reminder`` for anyone else.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from bytewax.testing import run_main

from attune.flows.embedded import LocalStore
from attune.flows.personalize import build_flow
from attune.flows.settings import Settings
from attune.operators.events import (
    AddToCart,
    ConsentUpdate,
    Event,
    EventType,
    LineItem,
    PageView,
    Payload,
    Purchase,
)
from attune.operators.sources import EventListSource
from attune.workload.generator import GeneratorConfig, generate

NO_POLICIES = Path(__file__).resolve().parents[1] / "data" / "rules_without_policies.yaml"
#: The shipped rules without quiet hours, caps and cooldowns (they would hold some back).
SETTINGS = Settings.from_env().replace(
    kafka_bootstrap="", redis_url="", trigger_rules_file=str(NO_POLICIES)
)
T0 = 1_767_600_000_000  # 2026-01-05 08:00 UTC
MIN = 60_000
WAIT = 30 * MIN  # cart_abandon_after_s
BIG = 60_000  # a 600.00 order: high_value from it on


def _events() -> list[Event]:
    """Four users, each with a 20.00 cart at ``T0 + 5 min``, due 30 min later:

    - ``soon``: a 600.00 order 5 min after the due time, within the allowed lateness
      (10 min), so the cart is judged after it is folded (at the end of its batch);
    - ``late``: a 600.00 order 25 min after the due time: the cart is judged at it;
    - ``delayed``: a page view 3 min and a 600.00 order 5 min after the due time, each
      read 9 min late (after the other users' events up to 9 min after it), so that the
      stream clock has passed the due time at the end of the page view's batch: before the
      change, a batch of one event judged the cart there (a reminder) and bigger batches
      after the order (the offer);
    - ``before``: a 600.00 order before the cart (high value at the due time).

    Around them, page views of 40 other users every 20 s for three hours move the stream
    clock."""
    out: list[Event] = []
    n = 0

    def event(user: str, t: int, kind: EventType, payload: Payload) -> Event:
        nonlocal n
        n += 1
        return Event(f"e{n:05d}", kind, t, payload, user_id=user)

    consent = ConsentUpdate(analytics=True, personalization=True, marketing=True)
    cart_at = T0 + 5 * MIN
    due = cart_at + WAIT
    order = Purchase("o", (LineItem("big", 1, BIG),), BIG, "EUR")
    users = ("soon", "late", "delayed", "before")
    for user in users:
        out.append(event(user, T0 + 1_000, EventType.CONSENT, consent))
    out.append(event("before", T0 + 2 * MIN, EventType.PURCHASE, order))
    for user in users:
        out.append(event(user, cart_at, EventType.ADD_TO_CART, AddToCart("i1", 1, 2_000, "EUR")))
    out.append(event("soon", due + 5 * MIN, EventType.PURCHASE, order))
    out.append(event("late", due + 25 * MIN, EventType.PURCHASE, order))
    for i in range(3 * 180):
        out.append(event(f"v{i % 40}", T0 + i * 20_000, EventType.PAGE_VIEW, PageView()))
    out.sort(key=lambda e: e.event_time)
    for late_by, t, kind, payload in (
        (9 * MIN, due + 3 * MIN, EventType.PAGE_VIEW, PageView()),
        (9 * MIN, due + 5 * MIN, EventType.PURCHASE, order),
    ):  # each read after the others' events up to 9 min after it (the lateness is 10)
        at = next(i for i, e in enumerate(out) if e.event_time > t + late_by)
        out.insert(at, event("delayed", t, kind, payload))
    return out


def _rules(batch_size: int) -> dict[str, str]:
    """The rule that chose each user's cart trigger, the source handing the flow
    ``batch_size`` events at a time."""
    events = _events()

    def make() -> Iterator[Event]:
        return iter(events)

    store = LocalStore()
    source = EventListSource(
        make, allowed_lateness_ms=SETTINGS.allowed_lateness_s * 1000, batch_size=batch_size
    )
    run_main(build_flow(SETTINGS, source=source, sinks=store.sinks("m"), items=[]))
    carts = [t for t in store.triggers if t.kind == "cart_abandoned"]
    assert len(carts) == 4
    return {t.user_id: t.attributes["rule"] for t in carts}


@pytest.mark.parametrize("batch_size", [1000, 250, 97, 1])
def test_the_cart_rule_reads_the_segments_as_of_the_due_time(batch_size: int) -> None:
    """Only the order before the cart makes its user high value at the due time; the
    orders after it (judged at them, after them, or before them) do not choose the rule."""
    assert _rules(batch_size) == {
        "soon": "cart_reminder",
        "late": "cart_reminder",
        "delayed": "cart_reminder",
        "before": "high_value_cart_offer",
    }


def test_every_cart_rule_of_a_generated_workload_is_the_one_of_its_due_time() -> None:
    """Against the generator: a cart trigger is the offer exactly when the user's orders
    in the 30 days up to its due time total 500.00 or more (the workload spans 3 days, so
    no order leaves the window), whatever came after the due time."""
    g = generate(GeneratorConfig(users=120, days=3, seed=11))
    events = tuple(g.events)
    orders: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for e in events:
        if isinstance(e.payload, Purchase) and e.user_id:
            orders[e.user_id].append((e.event_time, e.payload.total_minor))
    store = LocalStore()
    source = EventListSource(lambda: iter(events), allowed_lateness_ms=600_000)
    run_main(build_flow(SETTINGS, source=source, sinks=store.sinks("m"), items=g.items))
    carts = [t for t in store.triggers if t.kind == "cart_abandoned"]
    found, expected = {}, {}
    for t in carts:
        due = t.cause_event_time + WAIT
        spent = sum(v for at, v in orders[t.user_id] if at <= due)
        key = (t.user_id, t.cause_event_time)
        found[key] = t.attributes["rule"]
        expected[key] = "high_value_cart_offer" if spent >= 50_000 else "cart_reminder"
    assert found == expected
    # both rules chose, and some reminders went to users who became high value later
    assert set(found.values()) == {"high_value_cart_offer", "cart_reminder"}
    later = [
        user
        for (user, _), rule in found.items()
        if rule == "cart_reminder" and sum(v for _, v in orders[user]) >= 50_000
    ]
    assert later
