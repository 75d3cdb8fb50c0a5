"""Reading the flow's trigger topics back, as a downstream app would (shared by tests)."""

from __future__ import annotations

import uuid

from clients.subscriber import ActOnce, Delivery, MemoryOnceStore, TriggerSubscriber
from flows.settings import Settings
from operators.events import Trigger


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
