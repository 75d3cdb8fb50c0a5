"""The privacy gate of the per-user step: consent per event, withdrawal, erasure.

In the per-user step (:mod:`attune.operators.user_step`) after dedupe, before sessions
(docs/privacy.md). Its slice is the user's consent state
(:class:`~attune.operators.consent.ConsentState`, decided by
:meth:`ConsentPolicy.allowed <attune.operators.consent.ConsentPolicy.allowed>`) and the
tombstone time ``erased_at``; what it removes is everything else.

- :func:`privacy_gate`: each event updates the consent state; without personalization
  consent it is withheld (counted, nothing else kept) and what the state held is removed
  (:func:`withdraw`); losing marketing consent drops the trigger history.
- :func:`erase`: an erasure request forgets the user everywhere the flow wrote, confirms
  it (:class:`~attune.operators.events.ErasureConfirmation`) and leaves a
  :func:`tombstone` that drops history from before the request.
- :func:`forget_merged`: an anonymous id's state merged into its user at login goes.

Before a state is forgotten the triggers still waiting and the carts due before the
request are judged (:func:`~attune.operators.trigger_decisions.before_forgetting`).
"""

from __future__ import annotations

from attune.operators.clock import HOUR_MS
from attune.operators.consent import MARKETING, PERSONALIZATION
from attune.operators.events import (
    ConsentUpdate,
    ErasureConfirmation,
    ErasureRequest,
    Event,
)
from attune.operators.identity import Forget
from attune.operators.membership import audiences, every_audience, leave_all
from attune.operators.profiles import cart_of
from attune.operators.redis_sink import ForgetUser
from attune.operators.rules import TriggerHistory
from attune.operators.segments import cluster_segment
from attune.operators.trigger_decisions import before_forgetting
from attune.operators.triggers import forget_marketing
from attune.operators.user_config import ProfileConfig
from attune.operators.user_state import Output, UserState


def privacy_gate(st: UserState, event: Event, cfg: ProfileConfig) -> tuple[bool, list[Output]]:
    """Update the user's consent from ``event``; whether the event may feed the state.

    Without personalization consent the event is withheld (counted, nothing else kept)
    and whatever the state held is removed (:func:`withdraw`): the profile, segments,
    audiences, aliases and recommendations in Redis, and the state but for its consent.
    Losing marketing consent drops the trigger history
    (:func:`~attune.operators.triggers.forget_marketing`).
    """
    policy, cs = cfg.consent, st.consent
    t, ctx, payload = event.event_time, event.context, event.payload
    if not isinstance(payload, ConsentUpdate) and cs.same_place(ctx):
        cs.locate(t, ctx)  # most events: consent and place as they were, so is marketing
        if policy.allowed(cs, PERSONALIZATION):
            return True, []
        return False, _withhold(st, t, cfg)
    marketing_before = policy.allowed(cs, MARKETING)
    cs.locate(t, ctx)
    if isinstance(payload, ConsentUpdate):
        cs.observe(t, payload)
    if not policy.allowed(cs, PERSONALIZATION):
        return False, _withhold(st, t, cfg)
    if marketing_before and not policy.allowed(cs, MARKETING):
        forget_marketing(st.trig)
    return True, []


def _withhold(st: UserState, t: int, cfg: ProfileConfig) -> list[Output]:
    """An event without personalization consent: counted, and what the state held goes."""
    out = before_forgetting(st, t, cfg) if st.trig.known else []
    out += withdraw(st, t, cfg) if holds_data(st) or st.aliases else []
    st.withheld += 1
    return out


def holds_data(st: UserState) -> bool:
    """Whether the state holds anything beyond consent, aliases and dedupe ids."""
    a, m = st.activity, st.membership
    return bool(a.events or m.segments or m.cluster is not None or a.max_time)


def _forget_everywhere(st: UserState, t: int, cfg: ProfileConfig) -> list[Output]:
    """Exit records for the user's segments, DEL of every key of the user and of their
    anonymous ids, SREM from every audience set."""
    return [
        *leave_all(st.membership, st.user_id, t, cfg),
        ForgetUser(st.user_id, every_audience(st.membership, cfg)),
        *(ForgetUser(anon) for anon in st.aliases),
    ]


def _reset(st: UserState, keep: UserState) -> None:
    """Make ``st`` (in place: the caller holds it) equal to ``keep``."""
    for name in UserState.__slots__:
        setattr(st, name, getattr(keep, name))


def withdraw(st: UserState, t: int, cfg: ProfileConfig) -> list[Output]:
    """Personalization withdrawn (or not allowed where the user now is): remove what it
    stored, in Redis and in the state; the consent state and dedupe ids stay."""
    out = _forget_everywhere(st, t, cfg)
    _reset(
        st,
        UserState(
            user_id=st.user_id,
            seen=st.seen,
            consent=st.consent,
            erased_at=st.erased_at,
            withheld=st.withheld,
            active_ms=st.active_ms,
        ),
    )
    return out


def state_items(st: UserState) -> tuple[str, ...]:
    """The parts of a state that hold data, as the erasure confirmation lists them."""
    items: list[str] = []
    a = st.activity
    if a.events:
        items.append(f"counters: {a.events} events")
    if a.session_starts:
        items.append(f"sessions: {len(a.session_starts)} intervals")
    if a.views.times or a.carts.times or a.orders.times:
        items.append("windows: views, carts, orders")
    cart = cart_of(st)
    if cart:
        items.append(f"cart: {len(cart)} lines")
    if a.dwell_pages:
        items.append(f"dwell: {len(a.dwell_pages)} pages")
    if a.devices or a.channels:
        items.append("device and channel tallies")
    if st.membership.segments:
        items.append(f"segments: {len(st.membership.segments)}")
    trig = st.trig
    if (
        st.cart.fired
        or trig.dwell_fired
        or trig.own_starts
        or trig.deferred
        or trig.history != TriggerHistory()
    ):
        items.append("trigger state")
    if not st.consent.is_empty():
        items.append("consent state")
    if st.aliases:
        items.append(f"anonymous ids: {len(st.aliases)}")
    if st.models.recent or st.models.purchased:
        items.append(
            f"recommendation inputs: {len(st.models.recent)} recent items, "
            f"{len(st.models.purchased)} purchased"
        )
    return tuple(items)


def erase(st: UserState, event: Event, request: ErasureRequest, cfg: ProfileConfig) -> list[Output]:
    """The user's erasure request: forget them everywhere the flow wrote, confirm it, and
    turn the state into a tombstone that drops history from before the request.

    Consent goes too: later events of the id are a new user's, under the default of
    where they are (docs/privacy.md, "Erasure in the flow"). The triggers still waiting
    and the carts due before the request are judged first.
    """
    t = event.event_time
    judged = before_forgetting(st, t, cfg)
    keys = cfg.keys
    m = st.membership
    left = audiences(m)
    confirmation = ErasureConfirmation(
        user_id=st.user_id,
        request_id=request.request_id,
        request_event_id=event.event_id,
        request_time=t,
        processed_time=cfg.clock.now_ms(),
        redis_keys=tuple(k for user in (st.user_id, *st.aliases) for k in keys.user_keys(user)),
        audiences=tuple(keys.audience(a) for a in left),
        state_items=state_items(st),
        model_data=(
            (f"persona assignment {cluster_segment(m.cluster)}",) if m.cluster is not None else ()
        ),
        anonymous_ids=tuple(st.aliases),
        retained=(
            "tombstone: the erasure time (events up to it are dropped) and the event ids of the "
            f"last {cfg.dedupe_window_ms // HOUR_MS} h (duplicates are dropped), until "
            f"{int(cfg.state_ttl.total_seconds())} s idle",
        ),
        not_removed=(
            *(
                (
                    f"clusters: {m.vectors} session vectors already learned by the shared "
                    "persona model (aggregate centroids; they cannot be unlearned)",
                )
                if m.vectors
                else ()
            ),
            *(
                (
                    f"models: {st.models.summaries} session summaries already learned by the "
                    "shared recommendation and propensity models (item vectors, co-visitation "
                    "counts, trend scores, model weights; they cannot be unlearned)",
                )
                if st.models.summaries
                else ()
            ),
        ),
    )
    out = [*judged, *_forget_everywhere(st, t, cfg), confirmation]
    st.erased_at = t
    _reset(st, tombstone(st))
    return out


def tombstone(st: UserState) -> UserState:
    """What is left of an erased user: the erasure time and the ids seen (for dedupe)."""
    return UserState(
        user_id=st.user_id, erased_at=st.erased_at, seen=dict(st.seen), active_ms=st.active_ms
    )


def forget_merged(st: UserState, item: Forget, cfg: ProfileConfig) -> list[Output]:
    """An anonymous id's state merged into its user at login: it leaves its audiences and
    its keys go, but for the alias (the user's step writes it at the IDENTIFY, by the
    user's consent)."""
    m = st.membership
    return [
        *leave_all(m, st.user_id, item.event_time, cfg),
        ForgetUser(item.anonymous_id, audiences(m), keep_alias=True),
    ]
