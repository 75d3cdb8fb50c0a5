"""Everything Attune keeps about one user: the stages' slices, composed in one state.

The per-user step (:mod:`attune.operators.user_step`) folds a user's events through its
stages; each stage owns one slice of :class:`UserState` and the functions that keep it:

============================  ===========================================================
slice                         stage (module)
============================  ===========================================================
``seen``, ``duplicates``      dedupe and order (:mod:`~attune.operators.dedupe`)
``aliases``                   identity (:mod:`~attune.operators.identity`)
``consent``, ``erased_at``    privacy gate (:mod:`~attune.operators.consent`,
                              :mod:`~attune.operators.erasure`)
``activity``                  sessions and windows (:mod:`~attune.operators.sessions`)
``cart``                      cart (:mod:`~attune.operators.cart`)
``membership``                segments and persona (:mod:`~attune.operators.membership`)
``models``                    models (:mod:`~attune.operators.models`,
                              :mod:`~attune.operators.scoring`)
``trig``                      triggers (:mod:`~attune.operators.triggers`,
                              :mod:`~attune.operators.trigger_decisions`)
``withheld``, ``active_ms``   the Bytewax wrapper (:mod:`~attune.operators.user_logic`)
============================  ===========================================================

The state pickles (Bytewax snapshots it, :meth:`UserLogic.snapshot
<attune.operators.user_logic.UserLogic.snapshot>`): slotted dataclasses of plain values,
no handles, clients or lambdas. It is bounded: every slice names its caps.

>>> st = UserState("u1")
>>> st.activity.events += 1
>>> st.events, st == UserState("u1")  # a shortcut to the slice; equality is by the slices
(1, False)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from attune.operators.cart import CartTimeline
from attune.operators.clustering import ClusterVector
from attune.operators.consent import ConsentState
from attune.operators.events import ErasureConfirmation, SegmentChange, Trigger
from attune.operators.identity import HandoverWait
from attune.operators.membership import Membership
from attune.operators.models import RecsRequest, SessionSummary, UserModels
from attune.operators.redis_sink import (
    AliasWrite,
    ForgetUser,
    ProfileWrite,
    RecsWrite,
    SegmentsWrite,
)
from attune.operators.sessions import Activity
from attune.operators.triggers import TriggerState

T = TypeVar("T")

#: What the per-user step emits: Redis operations, changes, messages to the shared
#: learners, triggers and erasure confirmations.
Output = (
    ProfileWrite
    | SegmentsWrite
    | ForgetUser
    | AliasWrite
    | SegmentChange
    | ClusterVector
    | SessionSummary
    | RecsWrite
    | RecsRequest  # ranked after the step, per batch (models.resolve_recs)
    | Trigger
    | ErasureConfirmation
)


class _Shortcut(Generic[T]):
    """``st.<name>`` is ``st.<slice>.<name>``: the best-known facts of the slices under the
    names the profile has always had (tests, tools and reports read them)."""

    __slots__ = ("name", "slice")

    def __init__(self, slice_name: str) -> None:
        self.slice = slice_name
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> T:
        if obj is None:
            return cast(T, self)
        return cast(T, getattr(getattr(obj, self.slice), self.name))

    def __set__(self, obj: Any, value: T) -> None:
        setattr(getattr(obj, self.slice), self.name, value)


@dataclass(slots=True)
class UserState:
    """Everything Attune keeps about one user. Pickles; bounded (see the slices)."""

    user_id: str
    # dedupe and order: event id -> event time, insertion ordered
    seen: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    # identity: anonymous ids seen with this user
    aliases: list[str] = field(default_factory=list)
    # privacy (docs/privacy.md)
    consent: ConsentState = field(default_factory=ConsentState)
    erased_at: int | None = None  # tombstone: events up to this time belong to erased data
    # the stages' slices
    activity: Activity = field(default_factory=Activity)  # sessions, counts, windows, dwell
    cart: CartTimeline = field(default_factory=CartTimeline)  # adds, removes, orders
    membership: Membership = field(default_factory=Membership)  # segments, persona
    models: UserModels = field(default_factory=UserModels)  # recent items, session, propensity
    trig: TriggerState = field(default_factory=TriggerState)  # triggers' memory, history
    # the wrapper's bookkeeping
    withheld: int = 0  # events withheld since UserLogic last counted them (0 between batches)
    active_ms: int = 0  # wall clock of the latest batch: idle eviction after state_ttl
    # identity: inputs held for a login's history (last: fields are added at the end, so
    # that a snapshot from before them restores, attune.operators.snapshots)
    handover: HandoverWait | None = None

    max_time = _Shortcut[int]("activity")  # the user's "now": their latest event time
    first_seen_ms = _Shortcut[int]("activity")
    events = _Shortcut[int]("activity")
    page_views = _Shortcut[int]("activity")
    product_views = _Shortcut[int]("activity")
    searches = _Shortcut[int]("activity")
    add_to_carts = _Shortcut[int]("activity")
    remove_from_carts = _Shortcut[int]("activity")
    purchases = _Shortcut[int]("activity")
    dwells = _Shortcut[int]("activity")
    revenue_minor = _Shortcut[int]("activity")
    last_purchase_ms = _Shortcut[int | None]("activity")
    sessions = _Shortcut[int]("activity")
    session_start_ms = _Shortcut[int]("activity")
    session_events = _Shortcut[int]("activity")
    dwell_total_ms = _Shortcut[int]("activity")
    dwell_max_ms = _Shortcut[int]("activity")
    long_dwells = _Shortcut[int]("activity")
    segments = _Shortcut[frozenset[str]]("membership")
    cluster = _Shortcut[int | None]("membership")
    vectors = _Shortcut[int]("membership")
