"""Behavioural triggers: cart abandoned, long dwell, repeat visit, segment entered/exited.

Stage 8 of the flow. This module holds what a trigger is (its id, its kinds, how each
kind is built) and the user's :class:`TriggerState`, the trigger stage's slice of the
per-user state, with the functions that keep it (:func:`observe` at every event). The
decisions (which candidates an event or a timer yields, when they are judged, which go
out through consent and the declarative trigger rules to ``attune.triggers.<kind>``) are
:mod:`attune.operators.trigger_decisions`, in the per-user step
(:mod:`attune.operators.user_step`). Everything here is event time; a trigger's id is a
hash of its kind and its cause (the causing event's id, or the user and time
that define it), so a replay yields the same id and downstream apps act once.

When there is no next event, something must still tell time: the stream clock
(:mod:`attune.operators.stream_clock`) is the smallest watermark of every source
partition of the input, in every process of a cluster (the event time the
stream as a whole has reached), and when every partition has been idle it moves
on with the wall clock (a bounded processing-time fallback). At the end of a
bounded input every pending timer fires.

>>> trigger_id("cart_abandoned", "u1", 1_767_571_200_000)
'ca-0b1363d7c10d5a63dbe1b49bf6595700'
"""

from __future__ import annotations

import bisect
import hashlib
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

from attune.operators.cart import Abandonment
from attune.operators.clock import Clock
from attune.operators.events import AddToCart, Event, EventType, SegmentChange, Trigger
from attune.operators.identity import link_of
from attune.operators.rules import TriggerHistory
from attune.operators.sessions import NEW_LATEST, place_in_sessions

#: Trigger kinds Attune computes (``high_propensity`` is defined for the models issue).
KINDS: tuple[str, ...] = (
    "cart_abandoned",
    "long_dwell",
    "repeat_visit",
    "segment_entered",
    "segment_exited",
    "high_propensity",
)
_PREFIX = {
    "cart_abandoned": "ca",
    "long_dwell": "ld",
    "repeat_visit": "rv",
    "segment_entered": "se",
    "segment_exited": "sx",
    "high_propensity": "hp",
}


def trigger_id(kind: str, *cause: object) -> str:
    """A stable id from the kind and what caused the trigger (same cause, same id)."""
    digest = hashlib.sha256("\x1f".join([kind, *map(str, cause)]).encode()).hexdigest()[:32]
    return f"{_PREFIX.get(kind, 'tr')}-{digest}"


@dataclass(frozen=True, slots=True)
class TriggerConfig:
    """When the behavioural triggers fire (settings feed them)."""

    abandon_after_ms: int = 30 * 60_000
    #: An event this much older may still arrive (the allowed lateness): a cart is
    #: judged only once the user's own time is this far past its due time.
    settle_ms: int = 10 * 60_000
    long_dwell_ms: int = 30_000
    repeat_sessions: int = 3
    repeat_window_ms: int = 7 * 24 * 3_600_000

    def __post_init__(self) -> None:
        if self.abandon_after_ms <= 0:
            raise ValueError(
                f"a cart cannot be abandoned after {self.abandon_after_ms / 1000:g} s: "
                "set ATTUNE_CART_ABANDON_AFTER_S > 0"
            )


# --- per-user trigger state and detection (the trigger stage of attune.operators.user_step) --

MAX_FIRED_PAGES = 16
#: Own-event session intervals and adds to cart kept for the dwell and visit triggers.
MAX_OWN_SESSIONS = 32
MAX_OWN_ADDS = 32


def own_event(ts: TriggerState, t: int, gap_ms: int, added_item: str | None) -> bool:
    """An event under the user's own id at ``t`` (an add to cart of ``added_item``):
    whether it opened a new latest own session."""
    opened = place_in_sessions(ts.own_starts, ts.own_ends, t, gap_ms, MAX_OWN_SESSIONS)
    if added_item is not None:
        bisect.insort(ts.own_adds, (t, added_item))
        if len(ts.own_adds) > MAX_OWN_ADDS:
            del ts.own_adds[0]
    return opened == NEW_LATEST


def added_in_own_session(ts: TriggerState, item_id: str, t: int) -> bool:
    """Whether the user (own events) added ``item_id`` in the session of ``t``, before it."""
    i = bisect_right(ts.own_starts, t)
    start = ts.own_starts[i - 1] if i else t
    return any(start <= at <= t and item == item_id for at, item in ts.own_adds)


@dataclass(slots=True)
class TriggerState:
    """What a user's triggers need to remember. Pickles; bounded."""

    known: bool = False  # the key is a user id seen on an event (not only an anonymous id)
    known_since: int | None = None  # event time of the user's earliest event under their id
    timezone: str | None = None
    channel: str | None = None
    currency: str | None = None
    # anonymous ids whose history is still on its way (IDENTIFY seen, hand-over not yet),
    # with the clock time it was expected; and the latest ids whose hand-over arrived
    awaiting: dict[str, int] = field(default_factory=dict)
    handed: list[str] = field(default_factory=list)
    linked_ms: int = 0  # event time of the latest link: anonymous events before it may lag
    dwell_fired: list[str] = field(default_factory=list)  # pages long_dwell fired for
    # Sessions and adds to cart of the events under the user's own id only: they come
    # from one partition, in its order in every run and batching, so the dwell and
    # repeat-visit triggers judged on them are the same after a replay or a recovery.
    own_starts: list[int] = field(default_factory=list)
    own_ends: list[int] = field(default_factory=list)
    own_adds: list[tuple[int, str]] = field(default_factory=list)  # (event time, item)
    # Dwell, visit and segment triggers caused while judgements wait for a login's
    # history (consent stated while anonymous may be in it), with the channel and time
    # zone of their causing event: judged when the wait ends.
    deferred: list[tuple[Trigger, str | None, str | None]] = field(default_factory=list)
    history: TriggerHistory = field(default_factory=TriggerHistory)  # caps and cooldowns


def observe(ts: TriggerState, user: str, event: Event, gap_ms: int, clock: Clock) -> bool:
    """What the user's triggers note of an event: its channel, time zone and currency
    (the latest ones), and, for an event under the user's own id, that the user is
    known, their own sessions and adds to cart, and a login whose history is now on its
    way (waited for by ``clock``, :data:`HANDOVER_WAIT_MS` at most). Returns whether the
    event opened a new latest own session (a repeat visit may follow)."""
    ctx, p, t = event.context, event.payload, event.event_time
    if ctx is not None:
        if ctx.channel is not None:
            ts.channel = ctx.channel
        if ctx.timezone is not None:
            ts.timezone = ctx.timezone
    if isinstance(p, AddToCart):
        ts.currency = p.currency
    if event.user_id != user:
        return False
    opened = own_event(ts, t, gap_ms, p.item_id if isinstance(p, AddToCart) else None)
    ts.known = True
    if ts.known_since is None or t < ts.known_since:
        ts.known_since = t
    link = link_of(event) if event.event_type is EventType.IDENTIFY else None
    if link is not None:
        expect_handover(ts, link.anonymous_id, t, clock.now_ms())
    return opened


def forget_marketing(ts: TriggerState) -> None:
    """Marketing withdrawn: the publish history kept for caps and cooldowns goes, and the
    pages long-dwell fired for. (A cart reminder whose wait the withdrawal falls in does
    not fire, not even if consent comes back: the trigger stage asks for consent
    throughout the wait, in event time.)"""
    ts.dwell_fired = []
    ts.history = TriggerHistory()


def cart_abandoned(
    user: str, cart: Abandonment, *, currency: str | None, emit_ms: int, cfg: TriggerConfig
) -> Trigger:
    """The trigger of an abandoned cart; its id is the user and the time of the cart's
    last change, so a replay yields the same id."""
    return Trigger(
        trigger_id=trigger_id("cart_abandoned", user, cart.activity_ms),
        kind="cart_abandoned",
        user_id=user,
        cause_event_time=cart.activity_ms,
        emit_time=emit_ms,
        reason=f"cart of {len(cart.lines)} lines left {cfg.abandon_after_ms // 60_000} min "
        "after its last change without a purchase",
        cart_lines=cart.lines,
        cart_value_minor=cart.value_minor,
        currency=currency,
    )


#: How long (clock time) a user's judgements wait for an expected hand-over at most.
HANDOVER_WAIT_MS = 60_000
MAX_HANDED = 16


def expect_handover(ts: TriggerState, anonymous_id: str, link_ms: int, now_ms: int) -> None:
    """An IDENTIFY at ``link_ms`` linked ``anonymous_id`` to this user: its history is on
    its way (``now_ms`` is the wall clock, for :data:`HANDOVER_WAIT_MS`)."""
    ts.linked_ms = max(ts.linked_ms, link_ms)
    if anonymous_id not in ts.handed:
        ts.awaiting[anonymous_id] = now_ms


def handover_done(ts: TriggerState, anonymous_id: str, link_ms: int) -> None:
    """The history of ``anonymous_id`` arrived (it may arrive before the IDENTIFY)."""
    ts.linked_ms = max(ts.linked_ms, link_ms)
    ts.awaiting.pop(anonymous_id, None)
    if anonymous_id in ts.handed:
        ts.handed.remove(anonymous_id)
    ts.handed.append(anonymous_id)
    if len(ts.handed) > MAX_HANDED:
        del ts.handed[0]


def held(ts: TriggerState, now_ms: int) -> bool:
    """Whether judgements wait for a hand-over (at most ``HANDOVER_WAIT_MS`` each)."""
    for anonymous_id, since in list(ts.awaiting.items()):
        if now_ms - since >= HANDOVER_WAIT_MS:
            del ts.awaiting[anonymous_id]  # never came (lost or expired): stop waiting
    return bool(ts.awaiting)


def long_dwell(
    ts: TriggerState,
    user: str,
    *,
    page: str,
    item_id: str | None,
    dwell_ms: int,
    t: int,
    emit_ms: int,
) -> Trigger | None:
    """Fires once per page view whose dwell passed the threshold without an add to cart."""
    if page in ts.dwell_fired:
        return None
    ts.dwell_fired.append(page)
    if len(ts.dwell_fired) > MAX_FIRED_PAGES:
        del ts.dwell_fired[0]
    return Trigger(
        trigger_id=trigger_id("long_dwell", user, page),
        kind="long_dwell",
        user_id=user,
        cause_event_time=t,
        emit_time=emit_ms,
        reason=f"{dwell_ms // 1000} s on a product page without adding it to the cart",
        item_id=item_id,
    )


def repeat_visit(
    user: str, session_start: int, starts: list[int], emit_ms: int, cfg: TriggerConfig
) -> Trigger | None:
    """Fires when a new session is the ``repeat_sessions``-th within the window."""
    within = len(starts) - bisect_left(starts, session_start - cfg.repeat_window_ms)
    if within != cfg.repeat_sessions:
        return None
    days = cfg.repeat_window_ms // 86_400_000
    return Trigger(
        trigger_id=trigger_id("repeat_visit", user, session_start),
        kind="repeat_visit",
        user_id=user,
        cause_event_time=session_start,
        emit_time=emit_ms,
        reason=f"session {within} within {days} days",
    )


def segment_trigger(change: SegmentChange, known_since: int | None = None) -> Trigger:
    """A segment entered/exited trigger from a membership change.

    Its cause is the change, or the user's first event under their id if that came later:
    a change in anonymous history handed over at login could not be acted on before the
    user was known, so the trigger is as fresh as the login (its id stays the change's).
    """
    kind = "segment_entered" if change.change == "ENTERED" else "segment_exited"
    cause = change.event_time
    if known_since is not None and known_since > cause:
        cause = known_since
    return Trigger(
        trigger_id=trigger_id(kind, change.user_id, change.segment, change.event_time),
        kind=kind,
        user_id=change.user_id,
        cause_event_time=cause,
        emit_time=change.emit_time,
        reason=change.reason or f"{change.change.lower()} {change.segment}",
        segment=change.segment,
    )
