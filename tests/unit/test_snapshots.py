"""Snapshots of keyed state (operators/snapshots.py): what the fast pickling restores is
exactly what the default pickling restores, for real per-user and identity states."""

from __future__ import annotations

import pickle
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

from attune.operators import snapshots
from attune.operators.events import Event, EventType
from attune.operators.identity import IdentityLogic, IdentityState, Link, identity_step
from attune.operators.user_config import ProfileConfig
from attune.operators.user_logic import UserLogic
from attune.operators.user_state import UserState
from attune.operators.user_step import fold_batch
from attune.workload.generator import GeneratorConfig, generate


def _users() -> dict[str, list[Event]]:
    by_user: dict[str, list[Event]] = defaultdict(list)
    for event in generate(GeneratorConfig(users=12, days=3, seed=5)).events:
        by_user[event.user_key].append(event)
    return by_user


def test_user_states_restore_exactly_as_with_the_default_pickling() -> None:
    cfg = ProfileConfig()
    states = []
    for user, events in _users().items():
        st: UserState | None = UserState(user)
        for start in range(0, len(events), 7):  # several batches: sessions, carts, models
            assert st is not None
            st, _ = fold_batch(st, events[start : start + 7], cfg)
        if st is not None:
            states.append(st)
    assert states
    for st in states:
        fast = snapshots.dumps(st)
        assert snapshots.loads(fast) == pickle.loads(pickle.dumps(st)) == st
        assert snapshots.dumps(snapshots.loads(fast)) == fast  # stable: same state, same bytes
        logic = UserLogic(fast, cfg)
        assert logic.state == st and pickle.loads(logic.snapshot()) == st


def test_identity_buffers_hand_over_the_same_events() -> None:
    anonymous = max(([e for e in events if not e.user_id] for events in _users().values()), key=len)
    assert len(anonymous) > 3
    st: IdentityState | None = None
    for event in anonymous:
        st, _ = identity_step(st, event)
    assert st is not None and st.buffer
    restored = snapshots.loads(snapshots.dumps(st))
    assert restored == st
    anon = anonymous[0].anonymous_id or ""
    _, out = identity_step(restored, Link(anon, "u-linked", anonymous[-1].event_time))
    handed = [item for key, item in out if key == "u-linked" and isinstance(item, Event)]
    assert sorted(handed, key=lambda e: e.event_id) == sorted(anonymous, key=lambda e: e.event_id)


def test_a_snapshot_from_before_bytes_buffers_still_restores() -> None:
    event = Event("e1", EventType.PAGE_VIEW, 1_767_571_200_000, None, anonymous_id="a1")  # type: ignore[arg-type]
    legacy = IdentityState(buffer=[event])  # type: ignore[list-item]
    logic = IdentityLogic(pickle.dumps(legacy), timedelta(hours=1))
    _, out = identity_step(logic.state, Link("a1", "u1", 1_767_571_260_000))
    assert ("u1", event) in out


@dataclass(slots=True)
class _Cached:
    value: int
    cache: dict[str, int] = field(default_factory=dict)

    def __getstate__(self) -> tuple[int]:  # drops its cache: must be respected
        return (self.value,)

    def __setstate__(self, state: tuple[int]) -> None:
        self.value, self.cache = state[0], {}


def test_classes_with_their_own_pickling_keep_it_and_enums_stay_singletons() -> None:
    restored = snapshots.loads(snapshots.dumps(_Cached(3, {"x": 1})))
    assert restored.value == 3 and restored.cache == {}
    kinds = snapshots.loads(snapshots.dumps([EventType.PURCHASE, EventType.DWELL]))
    assert kinds[0] is EventType.PURCHASE and kinds[1] is EventType.DWELL
