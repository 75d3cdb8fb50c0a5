"""One user's flood keeps its state bounded (issue 15, item 4; docs/reliability.md, "Memory
under abuse"): the per-user caps, checked on the state itself, without Bytewax."""

from __future__ import annotations

from attune.bench.abuse import one_user
from attune.operators import snapshots
from attune.operators.cart import MAX_CART_OPS
from attune.operators.dedupe import MAX_SEEN_IDS, admit
from attune.operators.events import Event, EventType, PageView
from attune.operators.sessions import (
    MAX_DWELL_PAGES,
    MAX_SERIES,
    MAX_SESSIONS,
    MAX_TALLY_KEYS,
    Series,
)
from attune.operators.user_config import ProfileConfig
from attune.operators.user_state import UserState
from attune.operators.user_step import apply

T0 = 1_767_571_200_000
ITEMS = [f"item{i}" for i in range(50)]


def _state_after(n: int) -> UserState:
    st, cfg = UserState("flooder"), ProfileConfig()
    for event in one_user(n, ITEMS):
        apply(st, event, cfg)
    return st


def test_a_flood_of_one_users_events_leaves_its_state_within_the_caps() -> None:
    """30,000 events of one session (views, dwells, searches, adds, removes): every one is
    counted, and every series, session list, tally and cart the state keeps is within its
    cap, the busiest series at it. (The snapshot stops growing once every series is full:
    ~86 KB at 40,000 events of this mix; ``python -m attune.bench.abuse`` measures RSS.)"""
    st = _state_after(30_000)
    a = st.activity
    assert a.events == 30_000 and a.sessions == 1
    series = [v for v in (getattr(a, name) for name in a.__slots__) if isinstance(v, Series)]
    assert series and max(len(s.times) for s in series) == MAX_SERIES
    assert all(len(s.times) <= MAX_SERIES for s in series)
    assert len(a.session_starts) <= MAX_SESSIONS and len(a.dwell_pages) <= MAX_DWELL_PAGES
    assert len(a.devices) <= MAX_TALLY_KEYS and len(a.channels) <= MAX_TALLY_KEYS
    assert len(st.seen) <= MAX_SEEN_IDS
    assert len(st.cart.entries) <= MAX_CART_OPS
    assert len(snapshots.dumps(st)) < 100_000


def test_a_flood_of_one_event_id_is_applied_once() -> None:
    st = UserState("u1")
    e = Event("same", EventType.PAGE_VIEW, T0, PageView(), user_id="u1")
    taken = [admit(st, e, window_ms=86_400_000) for _ in range(10_000)]
    assert taken.count(True) == 1 and st.duplicates == 9_999 and len(st.seen) == 1
