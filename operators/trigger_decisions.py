"""Trigger decisions: which trigger candidates a user's events and timers yield, when
they are judged, and which go out.

The trigger stage of the per-user step (:mod:`attune.operators.user_step`), after the
models; its slice is the user's :class:`~attune.operators.triggers.TriggerState`
(:mod:`attune.operators.triggers`, with how each kind is built). At each event
(:func:`on_event`): the carts the event's settled time decides, the dwell and visit
triggers it causes, and ``segment_entered``/``segment_exited`` for the rule changes of
the segments stage; once per batch, a ``high_propensity`` candidate of the models stage;
on the timer (:func:`due`), carts the stream clock has settled and the triggers that
waited. Every candidate goes out through :func:`publishable`: consent, then the
declarative trigger rules (:mod:`attune.operators.rules`: conditions, caps, cooldowns,
quiet hours).

Judgements wait while a login's anonymous history may be on its way (consent stated while
anonymous may be in it): carts until the stream clock has passed the login, the other
triggers (kept in the state, :data:`MAX_DEFERRED` at most) until the hand-over arrived.
"""

from __future__ import annotations

from collections.abc import Callable

from attune.operators.cart import MAX_WAKE
from attune.operators.consent import MARKETING, PERSONALIZATION
from attune.operators.events import MAX_EVENT_TIME_MS, Dwell, Event, SegmentChange, Trigger
from attune.operators.membership import Change, audiences, audiences_as_of, settle
from attune.operators.profiles import FeatureView
from attune.operators.rules import TriggerContext
from attune.operators.triggers import (
    added_in_own_session,
    cart_abandoned,
    held,
    long_dwell,
    observe,
    repeat_visit,
    segment_trigger,
)
from attune.operators.user_config import ProfileConfig
from attune.operators.user_state import Output, UserState


def on_event(
    st: UserState, event: Event, segment_out: list[Change], cfg: ProfileConfig
) -> list[Output]:
    """The trigger stage at an event: note it in the trigger state, then judge the carts it
    settles and the triggers it caused (the segments stage's rule changes among them)."""
    own_opened = observe(st.trig, st.user_id, event, cfg.session_gap_ms, cfg.clock)
    carts, caused = _behaviour_triggers(st, event, own_opened, cfg)
    if segment_out and st.trig.known:
        since = st.trig.known_since
        caused += [segment_trigger(c, since) for c in segment_out if isinstance(c, SegmentChange)]
    out = publishable(st, carts, cfg) if carts else []
    if caused:
        out += judge_caused(st, caused, cfg, event)
    return out


def _behaviour_triggers(
    st: UserState, event: Event, own_opened: bool, cfg: ProfileConfig
) -> tuple[list[Trigger], list[Trigger]]:
    """Trigger candidates at this event, for known users: the carts it settles, and the
    dwell and visit triggers it causes.

    Carts: judged at this event's settled time (:func:`settled_own_time`), so the rules
    see the state as it was then whatever the batching; :func:`due` catches up with the
    stream clock after each batch and on the timer. Dwells and visits: only events
    under the user's id, since they were first seen under it, judged on those events
    alone (their sessions and adds to cart, kept in the trigger state). They come from
    one partition, in its order in every run and batching; the anonymous era's events,
    handed over at login, and anonymous events routed here after it arrive in an order
    that depends on batching: they neither fire nor change these judgements.
    """
    ts = st.trig
    if not ts.known:
        return [], []
    t = event.event_time
    if not ts.awaiting and st.cart.nothing_due(t - cfg.triggers.settle_ms):
        carts: list[Trigger] = []  # the settled time is at most that: no clock to read
    else:
        settled = settled_own_time(st, t, cfg)
        carts = [] if settled is None else check_cart(st, settled, cfg)
    since = ts.known_since
    if since is None or t < since or event.user_id != st.user_id:
        return carts, []  # the anonymous era, or an anonymous event routed here after login
    p = event.payload
    if not (own_opened or isinstance(p, Dwell)):
        return carts, []
    emit = cfg.clock.now_ms()
    caused: list[Trigger] = []
    if (
        isinstance(p, Dwell)
        and p.item_id is not None
        and p.dwell_ms > cfg.triggers.long_dwell_ms
        and not added_in_own_session(ts, p.item_id, t)
    ):
        fired = long_dwell(
            ts,
            st.user_id,
            page=p.page_view_id or p.item_id,
            item_id=p.item_id,
            dwell_ms=p.dwell_ms,
            t=t,
            emit_ms=emit,
        )
        if fired is not None:
            caused.append(fired)
    if own_opened:
        starts = ts.own_starts
        visit = repeat_visit(st.user_id, starts[-1], starts, emit, cfg.triggers)
        if visit is not None:
            caused.append(visit)
    return carts, caused


def settled_own_time(st: UserState, t: int, cfg: ProfileConfig) -> int | None:
    """The event time before which no more of the user's events can arrive, judged from
    the user's own event time ``t``: ``t`` less the allowed lateness, as all their events
    come from one source partition (keyed by the user). Not while anonymous history is on
    its way, nor after a link until the stream clock (the slowest partition) passed it:
    the anonymous id's events, keyed by it, come from another partition that may lag.
    ``None`` then: only the stream clock tells."""
    if st.trig.awaiting or _login_unsettled(st, cfg):
        return None
    return t - cfg.triggers.settle_ms


def _login_unsettled(st: UserState, cfg: ProfileConfig) -> bool:
    """Whether anonymous events from before the user's latest login may still be on their
    way from a partition that lags: the stream clock (the slowest partition) has not
    passed the login. Users never linked skip the clock (a lock) altogether."""
    return _clock_before_login(st, cfg.stream_clock.now_ms)


def _clock_before_login(st: UserState, reading: Callable[[], int | None]) -> bool:
    """Whether the user was linked and the clock ``reading`` is not past the login."""
    return bool(st.trig.linked_ms) and (reading() or 0) < st.trig.linked_ms


def history_on_its_way(st: UserState, cfg: ProfileConfig) -> bool:
    """Whether a login's anonymous history (consent stated on that device among it) may
    still be on its way: its hand-over is awaited (:data:`HANDOVER_WAIT_MS` of wall time at
    most), or some partition has not yet been read past the login (the stream clock's
    reached time, without the allowed lateness: in a live stream, milliseconds)."""
    if st.trig.awaiting and held(st.trig, cfg.clock.now_ms()):
        return True
    return _clock_before_login(st, cfg.stream_clock.reached_ms)


def judgements_wait(st: UserState, cfg: ProfileConfig) -> bool:
    """Whether the user's cart judgements wait: for a login's hand-over, or until the
    stream clock has passed the login (anonymous events read after the hand-over, a
    consent change among them, may still lag in their partition)."""
    return history_on_its_way(st, cfg) or _login_unsettled(st, cfg)


#: Triggers deferred while a login's history is on its way, at most (the oldest are judged
#: beyond it).
MAX_DEFERRED = 256


def judge_caused(
    st: UserState, caused: list[Trigger], cfg: ProfileConfig, cause: Event
) -> list[Output]:
    """Publishable triggers an event caused, judged with its channel and time zone; while a
    login's history may be on its way (:func:`history_on_its_way`), kept in the trigger
    state until it arrived. (Not until the settled time passed the login, as carts wait:
    that is the allowed lateness, minutes, and these triggers are for acting within
    seconds; a late anonymous consent event can still miss them.)"""
    if not caused:
        return []
    ctx = cause.context
    channel, timezone = (ctx.channel, ctx.timezone) if ctx is not None else (None, None)
    if not history_on_its_way(st, cfg):  # the deferred first: caps count in cause order
        return release_deferred(st, cfg, True) + publishable(st, caused, cfg, channel, timezone)
    deferred = st.trig.deferred
    deferred.extend((t, channel, timezone) for t in caused)
    out: list[Output] = []
    while len(deferred) > MAX_DEFERRED:
        trigger, channel, timezone = deferred.pop(0)
        out += publishable(st, [trigger], cfg, channel, timezone)
    return out


def release_deferred(st: UserState, cfg: ProfileConfig, now: bool) -> list[Output]:
    """Judge the deferred triggers, in the order they were caused, once the login's
    history arrived (``now``: without asking, at end of input or when the caller knows)."""
    if not st.trig.deferred or (not now and history_on_its_way(st, cfg)):
        return []
    pending, st.trig.deferred = st.trig.deferred, []
    out: list[Output] = []
    for trigger, channel, timezone in pending:
        out += publishable(st, [trigger], cfg, channel, timezone)
    return out


def before_forgetting(st: UserState, t: int, cfg: ProfileConfig) -> list[Output]:
    """The state is about to be forgotten (an erasure request or a personalization
    withdrawal at ``t``): the triggers still waiting, caused before it, and the carts due
    before it were due before the request, so they are judged now, as in a run where
    they did not wait (nothing that arrives later is kept anyway)."""
    return release_deferred(st, cfg, True) + publishable(
        st, check_cart(st, t, cfg, final=True), cfg
    )


def check_cart(
    st: UserState, now_ms: int, cfg: ProfileConfig, *, final: bool = False
) -> list[Trigger]:
    """Cart-abandoned triggers for the abandonments due before ``now_ms`` (a settled
    time: late events up to the allowed lateness can no longer change them), each once.

    Known users only, and not while history handed over at login is on its way: the
    timeline is judged whole, so the same triggers come out in any batching. At the end
    of a bounded input (``now_ms`` is the end of time) nothing more can come: no wait;
    nor when the state is about to be forgotten (``final``).
    """
    if not st.trig.known:
        return []
    if not st.trig.awaiting and st.cart.nothing_due(now_ms):
        return []  # no clock to read (and, no hand-over awaited, nothing to expire)
    # a consent change may be among the anonymous events still on their way
    if not final and now_ms < MAX_EVENT_TIME_MS and judgements_wait(st, cfg):
        return []
    due = st.cart.take_due(now_ms, cfg.triggers.abandon_after_ms)
    # the rules read the segments as of each cart's due time (publishable); a later
    # judgement reads a due time at or after now_ms
    settle(st.membership, min((a.due_ms for a in due), default=now_ms))
    if not due:
        return []
    emit = cfg.clock.now_ms()
    return [
        cart_abandoned(st.user_id, a, currency=st.trig.currency, emit_ms=emit, cfg=cfg.triggers)
        for a in due
    ]


def publishable(
    st: UserState,
    candidates: list[Trigger],
    cfg: ProfileConfig,
    channel: str | None = None,
    timezone: str | None = None,
) -> list[Output]:
    """What goes out of the candidates: the trigger rules decide (conditions, actions,
    consent, caps, cooldowns, quiet hours) with the user's real marketing consent; without
    rules, every candidate with marketing consent.

    Consent is taken in event time, by the one consent decision
    (:meth:`ConsentPolicy.allowed <attune.operators.consent.ConsentPolicy.allowed>`), from
    a candidate's cause to when it is due (a cart reminder: from the cart's last change to
    the end of its wait; any other kind: at its cause), whenever it is judged: a cart
    judged late (it waited for a hand-over or for the stream clock) is so decided as one
    judged on time, and a withdrawal before the reminder was due holds it back in every
    run. Without personalization consent over that span a candidate goes (its events
    would have been withheld). Marketing consent is the privacy gate's floor for every
    kind and every rule purpose: the rules read its answer
    (``TriggerContext.marketing_consent``) under that floor (``consent_floor``) and hold
    back what it does not allow. ``channel`` and ``timezone`` (of the causing event)
    override the user's latest ones when given.

    A cart reminder's rules read the user's rule segments as they stood at its due time
    (:func:`~attune.operators.membership.audiences_as_of`): it is judged once the stream
    has settled past that time, at an event or at the end of a batch, and a bigger batch
    would otherwise let later events (a purchase that makes the user ``high_value``)
    choose the rule. The features, the persona, the channel and the time zone the rules
    read are the latest (the shipped cart rules read segments only)."""
    if not candidates:
        return []
    policy, cs = cfg.consent, st.consent
    wait = cfg.triggers.abandon_after_ms
    rules = cfg.trigger_rules
    features = FeatureView(st, st.activity.max_time)
    segments = frozenset(audiences(st.membership))
    out: list[Output] = []
    for trigger in candidates:
        start = trigger.cause_event_time
        cart = trigger.kind == "cart_abandoned"
        end = start + (wait if cart else 0)
        if not policy.allowed(cs, PERSONALIZATION, start, end):
            continue
        marketing = policy.allowed(cs, MARKETING, start, end)
        if rules is None:
            if marketing:
                out.append(trigger)
            continue
        ctx = TriggerContext(
            features=features,
            segments=audiences_as_of(st.membership, end) if cart else segments,
            marketing_consent=marketing,
            consent_floor=True,
            timezone=timezone or st.trig.timezone,
            channel=channel or st.trig.channel,
        )
        out.extend(rules.decide(trigger, ctx, st.trig.history).published)
    return out


def due(st: UserState, cfg: ProfileConfig, end_of_input: bool = False) -> list[Output]:
    """On the timer (and after each batch): the triggers deferred while judgements waited,
    and the carts the stream's clock has settled; all of them at the end of a bounded input
    (event time is over)."""
    if not st.trig.known:
        return []  # an anonymous id: nothing deferred (see pending), no cart judged
    out = release_deferred(st, cfg, end_of_input)
    if end_of_input:
        now = MAX_EVENT_TIME_MS
    else:
        clock = cfg.stream_clock.now_ms() or 0  # already less the allowed lateness
        now = max(settled_own_time(st, st.activity.max_time, cfg) or 0, clock)
    fired = check_cart(st, now, cfg)
    return out + publishable(st, fired, cfg) if fired else out


def quiet(st: UserState) -> bool:
    """Whether :func:`due` is known to find nothing and to change nothing, at any time:
    an anonymous id, or a known user with no deferred trigger, no hand-over awaited and a
    cart judged with nothing left to wait for (``wake_ms`` at
    :data:`~attune.operators.cart.MAX_WAKE`). The wrapper then keeps the snapshot bytes it
    has of the state (:class:`~attune.operators.user_logic.UserLogic`).

    >>> from attune.operators.user_state import UserState
    >>> st = UserState("u1")
    >>> quiet(st), st.trig.known
    (True, False)
    >>> st.trig.known = True
    >>> quiet(st)  # the cart not judged yet
    False
    >>> st.cart.wake_ms = MAX_WAKE
    >>> quiet(st)
    True
    """
    trig = st.trig
    return not trig.known or (
        not trig.deferred and not trig.awaiting and st.cart.wake_ms == MAX_WAKE
    )


def pending(st: UserState, cfg: ProfileConfig) -> bool:
    """Whether a judgement waits for time to pass: deferred triggers, or a cart not yet
    judged (the timer then polls the stream clock).

    Never for an anonymous id (a key no event under its own user id reached:
    ``TriggerState.known``): its triggers are never judged, not even its cart's (only a
    known user's are, :func:`check_cart`, and only a known user's triggers are ever
    deferred, :func:`judge_caused`), so :func:`due` has nothing to find and polling it
    every second only costs a wake-up and a snapshot. Its cart is not lost: at login the
    identity step hands the id's buffered events over to the user, whose own timeline
    then holds the cart, and discards the anonymous state (``Forget``)."""
    trig = st.trig
    if not trig.known:
        return False
    return bool(trig.deferred) or st.cart.next_due_ms(cfg.triggers.abandon_after_ms) is not None
