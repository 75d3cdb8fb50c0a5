"""Dedupe and order: which of a user's events the per-user step takes, each once.

The first stage an event meets in the per-user step (:mod:`attune.operators.user_step`).
Event ids are remembered for ``dedupe_window_ms`` of event time (at most
:data:`MAX_SEEN_IDS`), in the state's ``seen``; a repeat is dropped and counted
(``duplicates``). After an erasure the state is a tombstone (:mod:`attune.operators.erasure`):
events from up to the request belong to erased data and are dropped too.

Order. Lateness is decided upstream, per source partition
(:mod:`attune.operators.sources`), so every event that reaches this stage is taken where
it belongs in event time, even out of order (anonymous history handed over at login
arrives after newer events): the stages after this one are built so that arrival order
does not change what they keep.

>>> from attune.operators.events import Event, EventType, PageView
>>> st = UserState("u1")
>>> e = Event("e1", EventType.PAGE_VIEW, 1_767_571_200_000, PageView(), user_id="u1")
>>> admit(st, e, window_ms=86_400_000), admit(st, e, window_ms=86_400_000), st.duplicates
(True, False, 1)
"""

from __future__ import annotations

from attune.operators.events import Event
from attune.operators.user_state import UserState

MAX_SEEN_IDS = 2048


def admit(st: UserState, event: Event, window_ms: int) -> bool:
    """Whether the per-user step takes ``event``: not a repeat (counted), not from before an
    erasure; its id is remembered (the window trimmed to ``window_ms`` before the latest
    event time)."""
    t = event.event_time
    seen = st.seen
    if event.event_id in seen:
        st.duplicates += 1
        return False
    if st.erased_at is not None and t <= st.erased_at:
        return False  # erased: whatever arrives from before the request is not kept
    seen[event.event_id] = t
    if len(seen) > MAX_SEEN_IDS:
        del seen[next(iter(seen))]
    horizon = max(st.activity.max_time, t) - window_ms
    while seen:
        first = next(iter(seen))
        if seen[first] >= horizon:
            break
        del seen[first]
    return True
