"""The models stage of the per-user step: what the shared models learn from a user and
what they say about them.

In the per-user step (:mod:`attune.operators.user_step`) after segments, before
triggers. Its slice is the user's :class:`~attune.operators.models.UserModels` (recent
interactions, the session's touches and orders, the propensity decision point, the
latest score); the shared models themselves, their learner and the published snapshot
are :mod:`attune.operators.models`.

- Per event: a :class:`~attune.operators.models.SessionSummary` of the latest session
  when an event ends it (:func:`close_session`, only with analytics consent: a shared
  aggregate), the propensity decision point before the outcome funnel is counted
  (:func:`decision_point`), and the event's interactions (:func:`observe`).
- Once per batch: the propensity score and tier (:func:`score`, with a
  ``high_propensity`` trigger candidate for the trigger stage when the tier first turns
  high in a session) and, after a product view, cart change or purchase, the user's
  recommendations (:func:`recommend`); before a batch, a list the gap held back if the
  user was idle a minute of event time (:func:`held_list`). A list is emitted as a
  :class:`~attune.operators.models.RecsRequest`, ranked after the step with the batch's
  other lists (:func:`~attune.operators.models.resolve_recs`).

Without a :class:`~attune.operators.models.ModelReader` (``cfg.models`` is ``None``) the
stage does nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from attune.operators.consent import ANALYTICS
from attune.operators.events import MAX_EVENT_TIME_MS, Event, Trigger
from attune.operators.membership import audiences
from attune.operators.models import RECS_MAX_AGE_MS, RecsRequest, SessionSummary
from attune.operators.profiles import FeatureView, cart_of, compute
from attune.operators.propensity import HIGH, is_outcome_boundary
from attune.operators.sessions import in_current_session
from attune.operators.triggers import trigger_id
from attune.operators.user_config import ProfileConfig
from attune.operators.user_state import UserState


def close_session(
    st: UserState, cfg: ProfileConfig, closed_ms: int = MAX_EVENT_TIME_MS
) -> list[SessionSummary]:
    """The latest session is over: one :class:`SessionSummary` for the shared models, only
    with analytics consent (a shared aggregate, like the persona vectors); the per-user
    session part is reset either way. Taken on the state as it was before the event that
    ended the session, at ``closed_ms`` (the end of a bounded input: the default)."""
    if cfg.models is None:
        return []
    a = st.activity
    if not a.session_starts or st.models.summarised_start == a.session_start_ms:
        st.models.new_session()
        return []
    if not cfg.consent.allowed(st.consent, ANALYTICS):
        st.models.new_session()
        return []
    summary = st.models.close(
        st.user_id,
        a.session_start_ms,
        a.session_ends[-1],
        FeatureView(st, st.activity.max_time),
        audiences(st.membership),
        closed_ms=closed_ms,
    )
    return [summary]


def decision_point(st: UserState, event: Event, cfg: ProfileConfig) -> None:
    """Before an event of the outcome funnel (cart or checkout page, purchase) in the
    latest session is counted: keep the session's propensity features as they are."""
    if (
        cfg.models is not None
        and in_current_session(st.activity, event.event_time)
        and is_outcome_boundary(event)
    ):
        st.models.decide(FeatureView(st, st.activity.max_time))


def observe(st: UserState, event: Event, cfg: ProfileConfig) -> None:
    """Note the event's product view, cart change or purchase (recent items, session)."""
    if cfg.models is not None:
        st.models.observe(event, in_current_session(st.activity, event.event_time))


def score(st: UserState, cfg: ProfileConfig, features: FeatureView | None = None) -> list[Trigger]:
    """Once per batch: the propensity score and tier from the latest published model;
    a ``high_propensity`` candidate when the tier first turns high in a session.
    ``features``: the state's view at its latest event (the outputs stage's, whose values
    computed already are reused), by default a new one."""
    reader = cfg.models
    if reader is None:
        return []
    if features is None:
        features = FeatureView(st, st.activity.max_time)
    scored = reader.propensity(features)
    if scored is None:
        return []
    m = st.models
    m.propensity, m.tier = round(scored[0], 4), scored[1]
    if scored[0] >= HIGH and m.high_session != st.activity.session_start_ms and st.trig.known:
        m.high_session = st.activity.session_start_ms
        return [high_propensity(st, scored[0], cfg)]
    return []


def recommend(st: UserState, cfg: ProfileConfig, *, flush: bool = False) -> list[RecsRequest]:
    """Once per batch: the user's recommendations, if the batch had a product view, cart
    change or purchase, and either the batch changed the cart or bought, or what they
    are computed from changed since the last ones
    (:meth:`~attune.operators.models.ModelReader.recs_key`: the snapshot, the items
    seeding the candidates, cart, purchases, top categories, segments) or they are
    older than :data:`~attune.operators.models.RECS_MAX_AGE_MS` of event time. When
    nothing is recomputed nothing is written: the stored list stands. The list is a
    :class:`~attune.operators.models.RecsRequest` on the snapshot read now, ranked after
    the step (the state keeps only ``recs_key`` / ``recs_at``: nothing pending is in a
    recovery snapshot).

    Not within ``cfg.recs.min_gap_ms`` of event time of the user's last list, unless the
    cart changed or they bought: the list then stays due, for the next batch after the
    gap, or ``flush`` (the user went idle, or the input ended)."""
    reader = cfg.models
    m = st.models
    if reader is None or not m.recs_due:
        return []
    now = st.activity.max_time
    if (
        not flush
        and not m.recs_cart
        and m.recs_key is not None
        and 0 <= now - m.recs_at < cfg.recs.min_gap_ms
    ):
        return []  # still due: the ranking is the step's largest cost, once per gap
    m.recs_due = False
    top = compute(st, "top_category_7d")
    signals = m.signals(
        st.user_id,
        now,
        cart_of(st),
        (top,) if isinstance(top, str) else (),
        tuple(sorted(st.membership.segments)),
    )
    key = reader.recs_key(signals)
    if not m.recs_cart and key == m.recs_key and 0 <= now - m.recs_at < RECS_MAX_AGE_MS:
        return []  # nothing the list is computed from changed: the stored one stands
    m.recs_key, m.recs_at, m.recs_cart = key, now, False
    return [reader.request(signals, cfg.recs, cfg.clock.now_ms())]


#: A list held back by the gap goes out before a batch of the user whose first event comes
#: at least this much event time after their latest one, ranked on the state as it was:
#: in a live stream the per-user idle timer (:data:`~attune.operators.user_logic.IDLE_FREEZE`,
#: a minute of wall time) has sent that list by then; in a replay, where a minute of wall
#: time is hours of event time and that timer seldom fires before the user's next batch,
#: the same list goes out here. So what is written does not depend on whether the wall-clock
#: timer fired first (it clears ``recs_due``, and nothing is ranked twice).
RECS_IDLE_MS = 60_000


def held_list(st: UserState, items: Sequence[object], cfg: ProfileConfig) -> list[RecsRequest]:
    """Before a batch (``items``, not yet applied): the list held back by the gap, if the
    batch's first event comes :data:`RECS_IDLE_MS` or more after the user's latest event
    (with no gap nothing is ever held back: nothing to do)."""
    m = st.models
    if cfg.models is None or not m.recs_due or not st.activity.events:
        return []
    first = next((i.event_time for i in items if isinstance(i, Event)), None)
    if first is None or first - st.activity.max_time < RECS_IDLE_MS:
        return []
    return recommend(st, cfg, flush=True)


def high_propensity(st: UserState, score: float, cfg: ProfileConfig) -> Trigger:
    """The ``high_propensity`` trigger of the user's current session (docs/triggers.md)."""
    return Trigger(
        trigger_id=trigger_id("high_propensity", st.user_id, st.activity.session_start_ms),
        kind="high_propensity",
        user_id=st.user_id,
        cause_event_time=st.activity.max_time,
        emit_time=cfg.clock.now_ms(),
        reason=f"propensity tier high (score {score:.2f}) in the session started at "
        f"{st.activity.session_start_ms}",
        scores={"propensity": round(score, 4)},
    )


def end_of_input(st: UserState, cfg: ProfileConfig) -> list[SessionSummary | RecsRequest]:
    """End of a bounded input: a list still due is ranked, and the open session is
    summarised (it will not be continued), once."""
    if not st.activity.events or cfg.models is None:
        return []
    out: list[SessionSummary | RecsRequest] = [*recommend(st, cfg, flush=True)]
    out += close_session(st, cfg)
    st.models.summarised_start = st.activity.session_start_ms
    return out
