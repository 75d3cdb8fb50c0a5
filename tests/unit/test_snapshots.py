"""Snapshots of keyed state (operators/snapshots.py): what the fast pickling restores is
exactly what the default pickling restores, for real per-user and identity states."""

from __future__ import annotations

import base64
import pickle
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import pytest

from attune.operators import snapshots
from attune.operators.events import ConsentUpdate, Event, EventType, Search, flatten
from attune.operators.identity import (
    HandedOver,
    IdentityLogic,
    IdentityState,
    Link,
    _kept,
    buffered,
    identity_step,
)
from attune.operators.membership import Membership
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


def _handed(out: Sequence[tuple[str, object]], user: str) -> list[Event]:
    """The events a link hands over to ``user`` (in its :class:`HandedOver`)."""
    return [
        buffered(kept)
        for key, item in out
        if key == user and isinstance(item, HandedOver)
        for kept in item.history
    ]


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
    handed = _handed(out, "u-linked")
    assert sorted(handed, key=lambda e: e.event_id) == sorted(anonymous, key=lambda e: e.event_id)


def test_a_snapshot_from_before_bytes_buffers_still_restores() -> None:
    event = Event("e1", EventType.PAGE_VIEW, 1_767_571_200_000, None, anonymous_id="a1")  # type: ignore[arg-type]
    legacy = IdentityState(buffer=[event])  # type: ignore[list-item]
    logic = IdentityLogic(pickle.dumps(legacy), timedelta(hours=1))
    _, out = identity_step(logic.state, Link("a1", "u1", 1_767_571_260_000))
    assert _handed(out, "u1") == [event]


def test_buffered_events_come_back_equal_in_every_kind() -> None:
    events = [e for evs in _users().values() for e in evs]
    kinds = {e.event_type for e in events}
    assert {EventType.PURCHASE, EventType.PRODUCT_VIEW, EventType.CONSENT} <= kinds
    for event in events:
        kept = _kept(event)
        back = buffered(kept)
        assert back == event and back.event_type is event.event_type
        flat = flatten(event)
        if event.event_type is EventType.PURCHASE:
            assert flat is None and pickle.loads(kept) == event  # no flat form: pickled
        else:
            assert flat is not None and pickle.loads(kept) == flat
            assert all(type(v) in (str, int, bool, type(None), tuple) for v in flat)


def test_a_buffer_of_events_pickled_whole_still_hands_over() -> None:
    event = Event("e1", EventType.SEARCH, 1_767_571_200_000, Search("boots"), anonymous_id="a1")
    legacy = IdentityState(buffer=[snapshots.dumps(event)])  # the format before flat forms
    logic = IdentityLogic(pickle.dumps(legacy), timedelta(hours=1))
    _, out = identity_step(logic.state, Link("a1", "u1", 1_767_571_260_000))
    assert _handed(out, "u1") == [event]


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


#: ``snapshots.dumps`` of a small user state in the format before ``restore``: classes by
#: reference, ``(rebuild, (cls, values))`` (zlib, base64).
_REBUILD_FORMAT = """
eNplkUtOwzAQhlNDKVTArrx6ga4q9QiIDZJVL2hZRshtrcYij8p2KrGIxKoikjeow5m4EAdgHIcASiw5M7bn
m8f/2v34JEH12RtuTJ6KcbYRiptM6bFO+UZHmdFge0oschmvYA922HqYa6GetOFGgD15RGdW2XsYWZJPoAAa
hBARe9WKXGapFqkBe3rnrSayQFTC1bMwMl0DPXzbgS4gOgu9zTVjNDCwgwdgiL5uVy+0lggFe3y7NHIrzYvj
0gDXQbX/WcxViOjmICLRwB7NhJJCYxhedTluHb6rUvqn+GjowvzZf6+oYQVapr63g/YAuKq6x99cJiKWad09
C7HWriViApbICVAy/eoYwCJYg2srkYhkIZSO5AZsf/rrIHJkD7ZovQPtUUI7DeSyDclWIsa59Z2UU+8gIMRO
XH+sLHFcjDkBygbTFsAouV5jfmxv7s1G3NJFF9UUQ/hZCLloQVQeowD2vCbcS43HTsiiSuzTuzl7a/wN18IV
3w==
"""


def test_a_snapshot_in_the_rebuild_format_still_loads() -> None:
    old = zlib.decompress(base64.b64decode(_REBUILD_FORMAT))
    assert b"rebuild" in old and b"restore" not in old
    st = UserState("u1")
    st.activity.events = 3
    st.activity.views.add(5, 1)
    st.membership = Membership(frozenset({"vip"}), 7, 2, 1)
    st.consent.observe(4, ConsentUpdate(marketing=True))
    st.cart.add(5, "e1", "i1", 2, 500)
    assert snapshots.loads(old) == st
    now = snapshots.dumps(st)
    assert b"restore" in now and b"rebuild" not in now
    assert snapshots.loads(now) == st


def test_a_class_no_name_finds_fails_when_pickled_not_when_loaded() -> None:
    @dataclass(slots=True)
    class Local:
        a: int

    with pytest.raises((pickle.PicklingError, AttributeError)):
        snapshots.dumps(Local(1))


@dataclass(frozen=True, slots=True)
class _Frozen:
    a: int
    b: str = "x"


@dataclass(slots=True)
class _One:
    only: tuple[int, ...]


@dataclass(slots=True)
class _Guarded:
    value: int
    derived: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.derived = self.value * 2

    def __setattr__(self, name: str, value: object) -> None:  # counts sets: must not run
        if name == "value" and isinstance(value, int) and value < 0:
            raise ValueError("negative")
        object.__setattr__(self, name, value)


def test_restored_objects_equal_their_originals_without_init_or_setattr() -> None:
    originals = [_Frozen(1), _Frozen(2, "y"), _One((1, 2)), _Guarded(3)]
    for obj in originals:
        back = snapshots.loads(snapshots.dumps(obj))
        assert back == obj and type(back) is type(obj)
    guarded = _Guarded(4)
    object.__setattr__(guarded, "value", -1)  # a value its __setattr__ would refuse
    back = snapshots.loads(snapshots.dumps(guarded))
    assert (back.value, back.derived) == (-1, 8)  # set as kept: no __setattr__, no __post_init__
    with pytest.raises(AttributeError):  # still frozen after a restore
        snapshots.loads(snapshots.dumps(_Frozen(5))).a = 6


@dataclass(frozen=True, slots=True)
class _Row:
    item: str
    at: int


@dataclass(slots=True)
class _Rows:
    name: str
    rows: list[_Row] = field(default_factory=list)
    other: list[int] = field(default_factory=list)


def test_lists_of_a_plain_dataclass_are_packed_as_rows_and_restore_equal() -> None:
    from attune.operators.models import UserModels
    from attune.operators.ranking import Interaction

    value = _Rows("a", [_Row("i1", 1), _Row("i2", 2)], [3])
    blob = snapshots.dumps(value)
    assert b"restore_packed" in blob and blob.count(b"_Row") == 1  # "_Rows": no object a row
    assert snapshots.loads(blob) == value
    assert snapshots.loads(snapshots.dumps(_Rows("b"))) == _Rows("b")  # empty list
    models = UserModels()
    models.recent = [Interaction("i1", 5), Interaction("i2", 6, "cart")]
    assert snapshots.loads(snapshots.dumps(models)) == models


def test_a_list_that_holds_other_objects_pickles_as_it_is() -> None:
    odd = _Rows("c", [_Row("i1", 1), 7])  # type: ignore[list-item]
    assert snapshots.loads(snapshots.dumps(odd)) == odd
    not_a_list = _Rows("d", (_Row("i1", 1),))  # type: ignore[arg-type]
    back = snapshots.loads(snapshots.dumps(not_a_list))
    assert back == not_a_list and type(back.rows) is tuple


def test_a_snapshot_of_unpacked_rows_still_restores() -> None:
    from attune.operators.models import UserModels
    from attune.operators.ranking import Interaction

    models = UserModels()
    models.recent = [Interaction("i1", 5)]
    names = snapshots._names(UserModels)
    values = tuple(getattr(models, n) for n in names)
    old = pickle.dumps((snapshots.restore, ("attune.operators.models:UserModels", values)))
    # the format before packing: restore(name, values) with the list as a list
    restore, args = pickle.loads(old)
    assert restore(*args) == models


@dataclass(slots=True)
class _Box:
    n: int
    m: int = 0


@dataclass(slots=True)
class _Boxes:
    first: list[_Box]
    second: list[_Box]


def test_lists_of_a_mutable_dataclass_are_not_packed_so_a_shared_item_stays_one() -> None:
    box = _Box(1)
    back = snapshots.loads(snapshots.dumps(_Boxes([box], [box])))
    assert back.first[0] is back.second[0]  # one object, as the default pickling keeps it
    assert b"restore_packed" not in snapshots.dumps(_Boxes([box], []))
