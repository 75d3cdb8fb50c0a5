"""The per-user step: a batch of one user's events folded through the stages, in order.

Keyed by canonical user, after identity stitching (:mod:`attune.operators.identity`);
wrapped for Bytewax by :mod:`attune.operators.user_logic`. Each stage owns one slice of
the :class:`~attune.operators.user_state.UserState` and the functions that keep it; this
module calls them in order and collects their outputs, and no stage calls back into it.
Per event (:func:`apply`):

1. dedupe and order (:mod:`~attune.operators.dedupe`): repeats and erased history stop;
2. privacy gate (:mod:`~attune.operators.erasure`): an erasure request, or consent;
   identity (:mod:`~attune.operators.identity`) notes the anonymous ids seen with the
   user and writes an ``IDENTIFY``'s alias, with consent;
3. sessions and windows (:mod:`~attune.operators.sessions`);
4. cart (:mod:`~attune.operators.cart`);
5. segments (:mod:`~attune.operators.membership`): rule segments, persona vectors;
6. models (:mod:`~attune.operators.scoring`);
7. triggers (:mod:`~attune.operators.trigger_decisions`).

The models look at the state twice before an earlier stage changes it: a session an event
ends is summarised as it was before the event is placed, and the propensity decision
point is taken before the outcome funnel's event is counted.

Per batch (:func:`fold_batch`), the outputs stage: the persona, the propensity score (its
trigger judged), the recommendations and **one** profile write (:mod:`~attune.operators.profiles`).

>>> from attune.operators.events import Event, EventType, ProductView
>>> from attune.operators.profiles import compute
>>> cfg = ProfileConfig()
>>> st = UserState(user_id="u1")
>>> out = apply(st, Event("e1", EventType.PRODUCT_VIEW, 1_767_571_200_000,
...                       ProductView("i1", "shoes/running", 8999, "EUR"), user_id="u1"), cfg)
>>> st.product_views, st.sessions, compute(st, "product_views_1h")
(1, 1, 1)
>>> apply(st, Event("e1", EventType.PRODUCT_VIEW, 1_767_571_200_000,
...                 ProductView("i1"), user_id="u1"), cfg)  # the same event id again
[]
>>> st.duplicates
1
"""

from __future__ import annotations

from collections.abc import Iterable

from attune.operators import cart, membership, scoring, sessions, trigger_decisions
from attune.operators.dedupe import admit
from attune.operators.erasure import erase, forget_merged, privacy_gate, tombstone
from attune.operators.events import ErasureRequest, EventType
from attune.operators.identity import (
    Forget,
    HandedOver,
    HandOverAgain,
    UserInput,
    alias_writes,
    buffered,
    close_handovers,
    handover_order,
    note_alias,
    plain_inputs,
)
from attune.operators.profiles import BatchView, FeatureView, changed, marks, profile_write
from attune.operators.triggers import handover_done
from attune.operators.user_config import ProfileConfig
from attune.operators.user_state import Output, UserState


def apply(st: UserState, item: UserInput, cfg: ProfileConfig) -> list[Output]:
    """Fold one input into ``st`` through the stages; returns their outputs (profile writes
    are the batch's, :func:`fold_batch`)."""
    if isinstance(item, HandedOver):  # identity: a login's history has arrived
        return hand_over(st, item, cfg)
    if isinstance(item, Forget):  # identity: this anonymous key merged into its user
        return forget_merged(st, item, cfg)
    if isinstance(item, HandOverAgain):  # identity: a login's history, sent again
        return hand_over_again(st, item, cfg)
    event, t = item, item.event_time
    if not admit(st, event, cfg.dedupe_window_ms):  # dedupe and order
        return []
    if isinstance(event.payload, ErasureRequest):  # privacy gate: erasure
        return erase(st, event, event.payload, cfg)
    if event.anonymous_id:  # identity (most events under a user id name no other)
        note_alias(st.aliases, st.user_id, event)
    allowed, out = privacy_gate(st, event, cfg)  # privacy gate: consent
    if not allowed:
        return out
    if event.event_type is EventType.IDENTIFY:  # identity, with personalization consent
        out += alias_writes(event)  # (only an IDENTIFY links: no lookup for the others)
    # sessions and windows; the models first summarise the session the event ends, as it was
    activity = st.activity
    models = cfg.models is not None  # models off: their stage is skipped whole
    boundary = sessions.ends_latest(activity, t, cfg.session_gap_ms)
    if boundary and models:
        out += scoring.close_session(st, cfg, t)
    before = marks(activity)
    sessions.place(activity, t, cfg.session_gap_ms)
    if models:
        scoring.decision_point(st, event, cfg)  # models: before the outcome is counted
    sessions.count(activity, event, cfg.price_bands)
    cart.observe(st.cart, event)  # cart
    features = FeatureView(st, activity.max_time)
    changes = membership.observe(  # segments: those whose features the event changed
        st.membership,
        st.user_id,
        t,
        features,
        cfg,
        boundary=boundary,
        consent=st.consent,
        changed=changed(activity, before, event),
    )
    if models:
        scoring.observe(st, event, cfg)  # models
    if changes:
        out += changes
    out += trigger_decisions.on_event(st, event, changes, cfg)  # triggers
    return out


def hand_over(st: UserState, item: HandedOver | HandOverAgain, cfg: ProfileConfig) -> list[Output]:
    """A login's history (consent events first, then the anonymous id's kept events),
    folded in right after the IDENTIFY (:func:`~attune.operators.identity.handover_order`),
    then the hand-over marked done: the user's judgements waited for it."""
    out: list[Output] = []
    for kept in item.history:
        out.extend(apply(st, buffered(kept), cfg))
    handover_done(st.trig, item.anonymous_id, item.event_time)
    return out


def handover_release(st: UserState, cfg: ProfileConfig) -> list[Output]:
    """What a login's wait held, folded now that the wait is over (timed out, or the
    input ended: :func:`~attune.operators.identity.close_handovers`)."""
    if st.handover is None:
        return []
    kept, out = fold_batch(st, [], cfg)
    assert kept is st  # no Forget is ever held (they go to anonymous keys)
    return out


def handover_overdue(st: UserState, cfg: ProfileConfig) -> list[Output]:
    """The wrapper's timer: inputs held for a login's history that has not come within
    :data:`~attune.operators.identity.HANDOVER_HOLD_MS` (lost: its identity state gone)
    are folded without it."""
    if st.handover is None or not st.handover.overdue(cfg.clock.now_ms()):
        return []
    return handover_release(st, cfg)


def hand_over_again(st: UserState, item: HandOverAgain, cfg: ProfileConfig) -> list[Output]:
    """A login's history sent again (its IDENTIFY replayed after a restart, or repeated):
    folded in, then the hand-over marked done, unless this history has reached the user
    already (then nothing: per-event dedupe alone would count history older than its
    window again). Reached: the anonymous id is among the user's hand-overs and the user
    has seen a link at or after this one. The state records no more than that, so one
    case is dropped wrongly: a restart that replays a second login from a device whose
    first hand-over (before its identity state expired) the user still lists."""
    ts = st.trig
    if item.anonymous_id in ts.handed and ts.linked_ms >= item.event_time:
        return []
    return hand_over(st, item, cfg)


def fold_batch(
    st: UserState, items: Iterable[UserInput], cfg: ProfileConfig
) -> tuple[UserState | None, list[Output]]:
    """A batch of a user's inputs, in arrival order, then the outputs stage once; returns
    the state to keep (``None``: discard it, the key merged into its user) and the outputs.

    Arrival order, not event time: for a user's own events that is their partition's
    order, the same however the stream is cut into batches (a replay, a recovery), so
    order-dependent decisions (caps, cooldowns, a session's first event) repeat. The state
    itself does not depend on order; the hand-over is waited for.
    """
    items = list(items)
    if st.handover is not None or not plain_inputs(items):  # identity: a login's history first
        hold = not cfg.stream_clock.live()  # live: folded as they come (latency)
        st.handover, items = handover_order(st.handover, items, cfg.clock.now_ms(), hold=hold)
    out: list[Output] = [*scoring.held_list(st, items, cfg)]  # models: a list the gap held
    before, wait = st.activity.events, st.handover
    for item in items:
        erased_at = st.erased_at
        out.extend(apply(st, item, cfg))
        if isinstance(item, Forget):
            return None, out
        if st.erased_at != erased_at:  # an erasure: keep a tombstone, not the data
            st = tombstone(st)
            st.handover = wait  # identity: inputs after it, held for a login, still come
            before = 0
        elif st.activity.events < before:  # consent withdrawn: the state was emptied
            before = 0
    if st.activity.events != before and st.activity.events:  # the outputs stage
        # one view for the stage: persona, score and profile read overlapping features
        features = BatchView(st, st.activity.max_time)
        persona = membership.assign_persona(
            st.membership, st.user_id, st.activity.max_time, features, cfg
        )
        out.extend(persona)
        out.extend(trigger_decisions.publishable(st, scoring.score(st, cfg, features), cfg))
        out.extend(scoring.recommend(st, cfg))
        out.append(profile_write(st, features))
    return st, out


def went_idle(st: UserState, cfg: ProfileConfig) -> list[Output]:
    """The user sent nothing for a while (the wrapper's idle timer): what waited for their
    next batch goes out now (a recommendation list held back by ``ATTUNE_RECS_MIN_GAP_S``)."""
    return [*scoring.recommend(st, cfg, flush=True)]


def end_of_input(st: UserState, cfg: ProfileConfig) -> list[Output]:
    """End of a bounded input: event time is over, every pending judgement is made, and
    the open session is summarised for the shared models (it will not be continued)."""
    st.handover = close_handovers(st.handover)  # identity: nothing waits any more
    held = handover_release(st, cfg)
    return [
        *held,
        *trigger_decisions.due(st, cfg, end_of_input=True),
        *scoring.end_of_input(st, cfg),
    ]
