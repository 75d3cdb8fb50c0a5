"""Identity stitching: anonymous activity joins its user, and the user's state follows.

Sits between decoding and per-user state. Events that carry a ``user_id`` go
straight to that user's key. Events with only an ``anonymous_id`` go through
this step, keyed by the anonymous id, and so does a :class:`Link` made from
every ``IDENTIFY`` event (the contract: an ``IDENTIFY`` with both ids says the
anonymous id belongs to the user).

A Bytewax dataflow is acyclic, so one user's state cannot move from one key to
another inside the per-user step; this step, upstream of it, is where an
anonymous visitor's history waits until it has an owner:

- Before the link, an anonymous id's events go to the per-user step under the
  anonymous id (anonymous visitors get profiles too) and a bounded copy is
  kept here.
- On the link this step emits a :class:`Forget` for the anonymous key (its
  state and Redis keys go, an alias points to the user) and sends the kept
  events to the user's key in one :class:`HandedOver`, so the user's state counts
  the anonymous activity once (per-user dedupe by event id absorbs any overlap).
  The user's step folds it right after the IDENTIFY, holding the user's later
  inputs until it comes (:func:`handover_order`), so the history lands at the
  same point of the user's stream however the stream is batched (issue 15:
  segment changes and triggers must not move with batching).
- Afterwards, anonymous-only events go straight to the user. The copies stay for
  :data:`HANDOVER_KEEP` of the process's wall time: the same link arriving again (its
  IDENTIFY replayed after a restart from the recovery store, or repeated in the stream)
  sends a :class:`Forget` marked ``again`` and the history as one :class:`HandOverAgain`,
  which the user's step takes only if the history has not reached it. A restart can
  load this step's state linked while the user's state and the anonymous key's come
  from before the link (Bytewax writes each step's snapshots of an epoch separately and
  keeps those of a killed execution past its resume epoch); without the copies that
  history would stay under the anonymous key.

An anonymous id later linked to a different user (a shared device) routes to
the newest user without handing history over again.

Privacy (docs/privacy.md). The step keeps the visitor's consent
(:class:`~attune.operators.consent.ConsentState`) and copies only events that
personalization consent allows: a visitor without it has nothing buffered, and a
withdrawal empties the buffer. Consent events are kept apart (the latest
:data:`MAX_CONSENT_EVENTS`, outside the cap) and handed over first, so consent given
while anonymous carries over to the user at login, where the latest statement in
event time wins per purpose. An ``ERASURE`` naming an anonymous id (with or without
a user id, :func:`identity_input`) empties that id's state here but for a tombstone:
the link, if any, and the request's time. Anonymous events from before it that
arrive later (another partition may lag) are dropped if unlinked, or go to the
user's key, whose own tombstone drops them. The state is discarded after ``ttl`` of wall-clock
inactivity, kept in the state so restarts do not reset it.

In the per-user step (:mod:`attune.operators.user_step`) identity is a stage too: the
user's state notes the anonymous ids seen with the user (:func:`note_alias`, so that an
erasure or a withdrawal deletes their keys) and writes an ``IDENTIFY``'s alias
(:func:`alias_writes`) with personalization consent; the :class:`HandedOver` and
:class:`Forget` markers end a login's wait and an anonymous key.

>>> from attune.operators.events import Event, EventType, PageView
>>> pv = Event("e1", EventType.PAGE_VIEW, 1_767_571_200_000, PageView(), anonymous_id="a1")
>>> state, out = identity_step(None, pv)
>>> [(key, type(item).__name__) for key, item in out]
[('a1', 'Event')]
>>> state, out = identity_step(state, Link("a1", "u1", 1_767_571_260_000))
>>> [(key, type(item).__name__) for key, item in out]
[('a1', 'Forget'), ('u1', 'HandedOver')]
>>> out[1][1].events  # the history travels in the HandedOver
1
>>> identity_step(state, pv)[1][0][0]  # later anonymous events go to the user
'u1'
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from bytewax.operators import StatefulBatchLogic

from attune.operators import snapshots
from attune.operators.clock import Clock, SystemClock
from attune.operators.consent import PERSONALIZATION, ConsentPolicy, ConsentState
from attune.operators.events import (
    ConsentUpdate,
    ErasureRequest,
    Event,
    EventType,
    flatten,
    unflatten,
)
from attune.operators.redis_sink import AliasWrite

#: At most this many anonymous events are kept for the hand-over; beyond it the
#: oldest copies go (they stay counted under the anonymous id until it is
#: forgotten). Bounds memory per anonymous visitor.
MAX_ANONYMOUS_BUFFER = 500
#: Without a policy only an explicit denial stops the buffering.
_STATED_ONLY = ConsentPolicy.parse("opt-out")
#: Consent events kept for the hand-over (the latest ones), apart from the buffer.
MAX_CONSENT_EVENTS = 8
#: Anonymous ids remembered per user, so that erasure and withdrawal delete their aliases.
MAX_ALIASES = 16
#: After the hand-over (or after a restart loaded a linked state that still has them) the
#: copies stay this long (wall clock of the running process), so that a restart that
#: replays the IDENTIFY can send them again (:class:`HandOverAgain`). Dropping them is
#: safe once the epoch of the link is committed, a few epochs (seconds) after it while
#: the flow runs; this is far longer, and counts only time the process ran.
HANDOVER_KEEP = timedelta(minutes=10)
_KEEP_MS = int(HANDOVER_KEEP.total_seconds() * 1000)


@dataclass(frozen=True, slots=True)
class Link:
    """``anonymous_id`` belongs to ``user_id`` from ``event_time`` on (made from IDENTIFY)."""

    anonymous_id: str
    user_id: str
    event_time: int


@dataclass(frozen=True, slots=True)
class Forget:
    """The anonymous id's state merged into ``user_id``: drop it and leave an alias.

    ``again``: sent for a link that arrived again (:class:`HandOverAgain`); it forgets a
    state that is there and does nothing where there is none (the first one took it)."""

    anonymous_id: str
    user_id: str
    event_time: int
    again: bool = False


@dataclass(frozen=True, slots=True)
class HandedOver:
    """The history of ``anonymous_id``, sent to ``user_id`` on every link (empty when none
    is kept): the consent events and the kept copies, in that order (:func:`buffered`
    reads one back), ``events`` of them. One item, so that the user's step places the
    whole history at one point of its own stream, right after the IDENTIFY
    (:func:`handover_order`); the user's judgements (cart abandonment) wait for it."""

    anonymous_id: str
    user_id: str
    event_time: int
    events: int
    history: tuple[Event | bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class HandOverAgain:
    """The history of ``anonymous_id`` sent again to ``user_id`` when its link arrives
    again: the same IDENTIFY replayed after a restart from the recovery store, or repeated
    in the stream. The user's step takes it only if that history has not reached it
    (``anonymous_id`` not among its hand-overs), else drops it whole, so a duplicate
    IDENTIFY counts nothing twice however old the history is (per-event dedupe forgets
    ids after its window). ``history`` is the identity state's consent events and kept
    copies (:func:`buffered` reads one back)."""

    anonymous_id: str
    user_id: str
    event_time: int
    history: tuple[Event | bytes, ...]


UserInput = Event | Forget | HandedOver | HandOverAgain

#: Enum members read once: looked up on the enum class they cost ~900 instructions each
#: time (callgrind, Python 3.11), and link_of runs on every event of the per-user step.
_IDENTIFY = EventType.IDENTIFY
_ERASURE = EventType.ERASURE
Routed = tuple[str, UserInput]


def link_of(event: Event) -> Link | None:
    """The link an event makes: an IDENTIFY with an anonymous id other than its user id."""
    if (
        event.event_type is _IDENTIFY
        and event.anonymous_id
        and event.user_id
        and event.anonymous_id != event.user_id
    ):
        return Link(event.anonymous_id, event.user_id, event.event_time)
    return None


# --- the identity stage of the per-user step (attune.operators.user_step) -----------------------


def note_alias(aliases: list[str], user: str, event: Event) -> None:
    """Remember an anonymous id seen with ``user`` (the latest :data:`MAX_ALIASES`), so that
    an erasure or a withdrawal deletes its keys too."""
    anon = event.anonymous_id
    if anon and anon != user and anon not in aliases:
        aliases.append(anon)
        if len(aliases) > MAX_ALIASES:
            del aliases[0]


def alias_writes(event: Event) -> list[AliasWrite]:
    """The alias an ``IDENTIFY`` writes, ``attune:{u:<anon>}:alias`` -> user. It serves
    personalization: the user's step writes it at each ``IDENTIFY`` it admits, by the
    user's consent (one key decides, so a withdrawal's DEL cannot race it)."""
    link = link_of(event)
    return [AliasWrite(link.anonymous_id, link.user_id)] if link is not None else []


#: The only event types :func:`identity_input` finds anything in: the flow looks at an
#: event with a user id only if it is of one of these (one set look-up for the others).
IDENTITY_INPUT_TYPES = frozenset({EventType.IDENTIFY, EventType.ERASURE})


def identity_input(event: Event) -> Link | Event | None:
    """What an event with a user id tells the identity step: a :class:`Link` (IDENTIFY),
    the event itself for an ``ERASURE`` naming an anonymous id (its state goes), else
    nothing (always for a type not in :data:`IDENTITY_INPUT_TYPES`)."""
    if event.event_type is _ERASURE and event.anonymous_id:
        return event
    return link_of(event)


def identity_inputs(events: list[Event]) -> list[tuple[str, Link | Event]]:
    """The identity step's input from a batch of events with a user id, keyed by anonymous
    id: :func:`identity_input` of each IDENTIFY and ERASURE (a :class:`Link` or an erasure
    event, both naming an anonymous id), nothing for the other types."""
    out: list[tuple[str, Link | Event]] = []
    for event in events:
        if event.event_type in IDENTITY_INPUT_TYPES:
            found = identity_input(event)
            if found is not None:
                out.append((found.anonymous_id or "", found))
    return out


@dataclass(slots=True)
class IdentityState:
    """What one anonymous id remembers: its user once linked, else its recent events."""

    user_id: str | None = None
    # The buffered events, each pickled once as it is kept (_kept): a snapshot of the
    # state copies these bytes instead of pickling every event again each epoch.
    buffer: list[bytes] = field(default_factory=list)
    dropped: int = 0  # anonymous events no longer in the buffer (cap reached)
    consent: ConsentState = field(default_factory=ConsentState)
    consents: list[Event] = field(default_factory=list)  # CONSENT events, for the hand-over
    active_ms: int = 0  # wall clock of the latest batch (idle eviction)
    erased_at: int | None = None  # an erasure named this id: older events are dropped


def identity_step(
    state: IdentityState | None, item: Event | Link, policy: ConsentPolicy | None = None
) -> tuple[IdentityState, list[Routed]]:
    """Route an anonymous-only event, or apply a link; returns ``(user key, input)`` pairs.

    ``policy``: buffer only what personalization consent allows (``None``: buffer all).
    """
    st = state or IdentityState()
    if isinstance(item, Event) and isinstance(item.payload, ErasureRequest):
        # Nothing of the id stays here but the link and the request's time. An erasure
        # with a user id reaches that user directly; an anonymous one goes where the
        # id's events go (and to the anonymous key if unlinked).
        st.buffer, st.consents, st.consent, st.dropped = [], [], ConsentState(), 0
        st.erased_at = max(st.erased_at or 0, item.event_time)
        if st.user_id is not None:
            return st, [] if item.user_id else [(st.user_id, item)]
        return st, [(item.anonymous_id or "", item)]
    if isinstance(item, Link):
        if st.user_id is None:
            out: list[Routed] = [
                (item.anonymous_id, Forget(item.anonymous_id, item.user_id, item.event_time)),
                _handed_over(item, (*st.consents, *st.buffer)),
            ]
            # The copies stay (IdentityLogic drops them HANDOVER_KEEP later): a restart
            # may load this state with user states that never received them.
            st.consent = ConsentState()
            st.user_id = item.user_id
            return st, out
        if st.user_id == item.user_id:  # the same link again: a replay or a repeat
            return st, _hand_over_again(st, item)
        st.user_id = item.user_id  # a shared device: the newest user, no history
        st.buffer, st.consents = [], []
        return st, [_handed_over(item, ())]
    if st.user_id is not None:
        return st, [(st.user_id, item)]
    if st.erased_at is not None and item.event_time <= st.erased_at:
        return st, []  # from before an erasure of this id
    routed: list[Routed] = [(item.anonymous_id or "", item)]
    st.consent.locate(item.event_time, item.context)
    if isinstance(item.payload, ConsentUpdate):
        st.consent.observe(item.event_time, item.payload)
        st.consents.append(item)
        if len(st.consents) > MAX_CONSENT_EVENTS:
            del st.consents[0]
        if not (policy or _STATED_ONLY).allowed(st.consent, PERSONALIZATION):
            st.buffer = []  # withdrawn: the copies go
        return st, routed
    if policy is not None and not policy.allowed(st.consent, PERSONALIZATION):
        st.buffer = []  # no personalization consent: no copies
        return st, routed
    if len(st.buffer) >= MAX_ANONYMOUS_BUFFER:
        del st.buffer[0]
        st.dropped += 1
    st.buffer.append(_kept(item))
    return st, routed


def _kept(event: Event) -> bytes:
    """What the buffer keeps of an event: its flat form pickled
    (:func:`~attune.operators.events.flatten`: no Python call while pickling, ~2 us
    instead of ~6 us through the dataclasses, 400 bytes instead of 600), or the event
    pickled if it has none (a purchase)."""
    flat = flatten(event)
    return snapshots.dumps(event) if flat is None else pickle.dumps(flat, pickle.HIGHEST_PROTOCOL)


def _hand_over_again(st: IdentityState, link: Link) -> list[Routed]:
    """What a link to the user this id is linked to sends: a :class:`Forget` marked
    ``again`` (the anonymous key's state may have come back with a restart) and the kept
    history as a :class:`HandOverAgain`, or a :class:`HandedOver` if none is kept.

    Why. Bytewax 0.21 writes each step's snapshots of an epoch separately and deletes none
    at or after the epoch a restart resumes from (``src/recovery.rs``), so a restart can
    load this state, linked, with the user's state and the anonymous key's from before
    the link, and replay the IDENTIFY: without this, the history stays under the
    anonymous key (docs/reliability.md, "Chaos")."""
    anon, user, t = link.anonymous_id, link.user_id, link.event_time
    out: list[Routed] = [(anon, Forget(anon, user, t, again=True))]
    if st.buffer or st.consents:
        out.append((user, HandOverAgain(anon, user, t, (*st.consents, *st.buffer))))
    else:
        out.append(_handed_over(link, ()))
    return out


def buffered(kept: bytes | Event) -> Event:
    """A buffered event back: from its flat form or the event pickled (:func:`_kept`), or
    as it is (a snapshot from before buffers held bytes holds events)."""
    if isinstance(kept, Event):
        return kept
    found = snapshots.loads(kept)
    return unflatten(found) if type(found) is tuple else found


def _handed_over(link: Link, history: tuple[Event | bytes, ...]) -> Routed:
    anon, user, t = link.anonymous_id, link.user_id, link.event_time
    return user, HandedOver(anon, user, t, len(history), history)


class IdentityLogic(StatefulBatchLogic[Event | Link, Routed, bytes]):
    """Bytewax wrapper of :func:`identity_step`; the state goes after ``ttl`` idle
    (wall clock from ``clock``, the time of the latest batch kept in the state)."""

    def __init__(
        self,
        resume: bytes | None,
        ttl: timedelta,
        policy: ConsentPolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.state: IdentityState | None = snapshots.loads(resume) if resume is not None else None
        self.ttl_ms = int(ttl.total_seconds() * 1000)
        self.policy = policy
        self.clock: Clock = clock or SystemClock()
        # Wall time after which a linked state's kept copies go (HANDOVER_KEEP), counted
        # from the hand-over or from the load: not in the state, so that a process that
        # was down for longer does not drop them before it has replayed the IDENTIFY.
        self.keep_until_ms: int | None = None
        self._keep_copies()

    def _keep_copies(self) -> None:
        """Start the keep time of a linked state's copies, if it holds any."""
        st = self.state
        if self.keep_until_ms is not None or st is None or st.user_id is None:
            return  # counting already, or not linked
        if st.buffer or st.consents:  # on a 1 s grid: the drops of many states wake once
            self.keep_until_ms = -(-(self.clock.now_ms() + _KEEP_MS) // 1000) * 1000

    def on_batch(self, values: list[Event | Link]) -> tuple[Iterable[Routed], bool]:
        out: list[Routed] = []
        for item in values:
            self.state, routed = identity_step(self.state, item, self.policy)
            out.extend(routed)
        assert self.state is not None
        self.state.active_ms = self.clock.now_ms()
        self._keep_copies()
        return out, StatefulBatchLogic.RETAIN

    def expired(self) -> bool:
        st = self.state
        return st is None or self.clock.now_ms() >= st.active_ms + self.ttl_ms

    def on_notify(self) -> tuple[Iterable[Routed], bool]:
        st = self.state
        if self.keep_until_ms is not None and self.clock.now_ms() >= self.keep_until_ms:
            self.keep_until_ms = None
            if st is not None and st.user_id is not None:
                st.buffer, st.consents = [], []  # the link is long committed
        return [], self.expired()

    def notify_at(self) -> datetime | None:
        active = self.state.active_ms if self.state is not None else self.clock.now_ms()
        wake = active + self.ttl_ms
        if self.keep_until_ms is not None:
            wake = min(wake, self.keep_until_ms)
        return datetime.fromtimestamp(wake / 1000, UTC)

    def snapshot(self) -> bytes:
        return snapshots.dumps(self.state or IdentityState())


# --- the order of a login's history in the user's stream (the per-user step) ----------------

#: How long (wall clock) a user's inputs wait for a login's history at most, and a history
#: for its IDENTIFY: as long as trigger judgements wait for it
#: (:data:`attune.operators.triggers.HANDOVER_WAIT_MS`). In a replay it comes within the
#: same epoch; only a lost hand-over (its identity state gone) ever waits this long.
HANDOVER_HOLD_MS = 60_000
#: At most this many inputs are held for one login; past it they go in without waiting.
MAX_HELD = 2_000
_GAVE_UP_KEPT = 16

HandOver = HandedOver | HandOverAgain
_LinkKey = tuple[str, int]  # (anonymous id, event time of the link)


@dataclass(slots=True)
class HandoverWait:
    """What a user's step holds so that a login's history lands at the same point of the
    user's stream however the stream is cut into batches (:func:`handover_order`).
    Pickles; bounded (:data:`MAX_HELD`)."""

    blocked_on: _LinkKey | None = None  # the IDENTIFY whose history the inputs wait for
    since_ms: int = 0  # wall clock when that wait began
    held: list[UserInput] = field(default_factory=list)  # inputs that came during it
    # Hand-overs that came before their IDENTIFY, with the wall clock of their arrival.
    arrived: list[tuple[_LinkKey, int, HandOver]] = field(default_factory=list)
    gave_up: list[_LinkKey] = field(default_factory=list)  # waits that timed out
    closed: bool = False  # end of input: nothing waits any more

    def idle(self) -> bool:
        return self.blocked_on is None and not self.held and not self.arrived

    def overdue(self, now_ms: int) -> bool:
        """Whether a wait has lasted :data:`HANDOVER_HOLD_MS` (the idle timer asks)."""
        if self.blocked_on is not None and now_ms - self.since_ms >= HANDOVER_HOLD_MS:
            return True
        return any(now_ms - at >= HANDOVER_HOLD_MS for _, at, _ in self.arrived)


def plain_inputs(items: list[UserInput]) -> bool:
    """Whether no input is an IDENTIFY or a hand-over (the common batch: nothing to order)."""
    return all(type(item) is Event and item.event_type is not _IDENTIFY for item in items)


def handover_order(
    wait: HandoverWait | None, items: list[UserInput], now_ms: int, *, hold: bool = True
) -> tuple[HandoverWait | None, list[UserInput]]:
    """A user's inputs in the order to fold them: each login's history (its
    :class:`HandedOver` or :class:`HandOverAgain`) right after the IDENTIFY that made the
    link, whatever came in between. Returns the wait to keep (``None``: nothing waits) and
    the inputs to fold now.

    Why. The IDENTIFY comes to the user's key straight from the source; its history goes
    through the identity step (keyed by the anonymous id) and comes later, how much later
    depending on how the stream is cut into batches. Folded as they came, the user's
    events between the two would see the state without the history in one run and with it
    in another, and segment changes and triggers would move (issue 15). So after an
    IDENTIFY the user's inputs are held until its history comes (a history that comes
    first waits for its IDENTIFY), each at most :data:`HANDOVER_HOLD_MS` of wall time
    (``now_ms``); then the held inputs follow in the order they came. Every IDENTIFY that
    reaches the step gets exactly one hand-over (:func:`identity_step`, also for a link
    repeated or to a shared device), matched by anonymous id and link time.

    ``hold=False`` (the flow passes it while the stream is live, tailing within seconds of
    the wall clock): nothing is held, every input is folded as it comes, and what a wait
    held goes now. Holding costs a login's next events the hand-over's trip through the
    identity step (hundreds of ms at the p99 of ``attune bench latency``), and a live
    stream's outputs depend on processing time anyway (cart judgements); a replay is
    never live, so it is held and repeats exactly.

    >>> from attune.operators.events import Identify, PageView
    >>> login = Event("e1", EventType.IDENTIFY, 10, Identify(), user_id="u1", anonymous_id="a1")
    >>> later = Event("e2", EventType.PAGE_VIEW, 20, PageView(), user_id="u1")
    >>> wait, now = handover_order(None, [login, later], 0)
    >>> [getattr(i, "event_id", "history") for i in now], len(wait.held)
    (['e1'], 1)
    >>> wait, now = handover_order(wait, [HandedOver("a1", "u1", 10, 0)], 5)
    >>> [getattr(i, "event_id", "history") for i in now], wait
    (['history', 'e2'], None)
    """
    if wait is None and (not hold or plain_inputs(items)):
        return None, items
    w = wait or HandoverWait()
    if w.closed or not hold:
        return None, [*(h for _, _, h in w.arrived), *w.held, *items]
    ready: list[UserInput] = []
    pending = list(reversed(items))  # a stack: held inputs go back on top, in order
    if w.arrived:  # histories whose IDENTIFY did not come in time: folded as they are
        late = [h for key, at, h in w.arrived if now_ms - at >= HANDOVER_HOLD_MS]
        w.arrived = [a for a in w.arrived if now_ms - a[1] < HANDOVER_HOLD_MS]
        ready.extend(late)
    if w.blocked_on is not None and now_ms - w.since_ms >= HANDOVER_HOLD_MS:
        _give_up(w, pending)
    while pending:
        item = pending.pop()
        if isinstance(item, (HandedOver, HandOverAgain)):
            _hand_over_came(w, item, ready, pending, now_ms)
        elif w.blocked_on is not None:
            w.held.append(item)
            if len(w.held) > MAX_HELD:
                _give_up(w, pending)
        else:
            ready.append(item)
            link = link_of(item) if type(item) is Event and item.event_type is _IDENTIFY else None
            if link is not None:
                key = (link.anonymous_id, link.event_time)
                found = next((i for i, a in enumerate(w.arrived) if a[0] == key), None)
                if found is not None:
                    ready.append(w.arrived.pop(found)[2])
                else:
                    w.blocked_on, w.since_ms = key, now_ms
    return (None if w.idle() and not w.gave_up else w), ready


def _hand_over_came(
    w: HandoverWait, item: HandOver, ready: list[UserInput], pending: list[UserInput], now_ms: int
) -> None:
    key = (item.anonymous_id, item.event_time)
    if key == w.blocked_on:  # the wait is over: the history, then what was held
        ready.append(item)
        w.blocked_on = None
        pending.extend(reversed(w.held))
        w.held = []
    elif key in w.gave_up:  # too late to be placed: folded as it comes
        w.gave_up.remove(key)
        ready.append(item)
    else:  # before its IDENTIFY (or before a held one's): it waits for it
        w.arrived.append((key, now_ms, item))


def _give_up(w: HandoverWait, pending: list[UserInput]) -> None:
    """Stop waiting for the history of ``w.blocked_on``: the held inputs go on (its
    history, if it still comes, is folded when it comes)."""
    if w.blocked_on is not None:
        w.gave_up.append(w.blocked_on)
        del w.gave_up[:-_GAVE_UP_KEPT]
    w.blocked_on = None
    pending.extend(reversed(w.held))
    w.held = []


def close_handovers(wait: HandoverWait | None) -> HandoverWait | None:
    """End of input: nothing more will come, so nothing waits; the next
    :func:`handover_order` releases what was held and what arrived."""
    if wait is None or wait.idle():
        return None
    wait.blocked_on, wait.closed = None, True
    return wait
