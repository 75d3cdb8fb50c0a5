"""Per-user state: dedupe, sessions, windows, RFM, cart, dwell; profile and segments.

The per-user step of the flow, keyed by canonical user (after
:mod:`attune.operators.identity`). :func:`apply` folds one input into a
:class:`UserState` and returns what changed downstream; :class:`UserLogic` is
the thin Bytewax wrapper that also coalesces one profile write per user per
batch.

Order and time. Everything is in event time; "now" for a user is the latest
event time applied to it (``max_time``). Lateness is decided upstream, per
source partition (:mod:`attune.operators.sources`), so every event that reaches this
step is applied where it belongs, even out of order (anonymous history handed
over at login arrives after newer events): counts are order-free; sessions are
kept as sorted ``(start, end)`` intervals, so an event joins, extends, bridges
(two sessions become one) or opens a session by the gap rule whatever the
arrival order; windowed counts are over sorted series; the cart is a timeline
of adds, removes and orders (:mod:`attune.operators.cart`) whose abandonments do not
depend on arrival order or batching.

Dedupe. Event ids are remembered for ``dedupe_window_ms`` of event time (at
most ``MAX_SEEN_IDS``); a repeat is dropped and counted.

Bounded memory. Series keep 30 days (7 for views) and at most ``MAX_SERIES``
entries; the latest ``MAX_SESSIONS`` session intervals are kept (an event
older than all of them opens a session of its own); the cart holds at most
``MAX_CART_LINES`` lines; device/channel tallies a handful of keys; the state
is discarded after ``state_ttl`` of wall-clock inactivity (its Redis keys
expire by their own TTL).

>>> from attune.operators.events import Event, EventType, ProductView
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

import pickle
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from bytewax.operators import StatefulBatchLogic

from attune.operators.cart import CartTimeline
from attune.operators.clock import Clock, SystemClock
from attune.operators.clustering import ClusterVector, ParamsBoard, vector
from attune.operators.consent import (
    ANALYTICS,
    EVENTS_WITHHELD,
    MARKETING,
    PERSONALIZATION,
    ConsentPolicy,
    ConsentState,
)
from attune.operators.events import (
    MAX_EVENT_TIME_MS,
    AddToCart,
    ConsentUpdate,
    Dwell,
    ErasureConfirmation,
    ErasureRequest,
    Event,
    ItemUpdate,
    PageView,
    ProductView,
    Purchase,
    RemoveFromCart,
    Search,
    SegmentChange,
    Trigger,
)
from attune.operators.features import FEATURES, PROFILE_FIELDS, FeatureValue
from attune.operators.identity import Forget, HandedOver, UserInput, link_of
from attune.operators.models import ModelReader, RecsConfig, SessionSummary, UserModels
from attune.operators.propensity import HIGH, is_outcome_boundary
from attune.operators.redis_keys import RedisKeys
from attune.operators.redis_sink import (
    AliasWrite,
    ForgetUser,
    ProfileWrite,
    RecsWrite,
    SegmentsWrite,
)
from attune.operators.rules import TriggerContext, TriggerHistory, TriggerRules
from attune.operators.segments import RuleSet, cluster_segment, membership_changes
from attune.operators.stream_clock import STREAM_CLOCK, StreamClock
from attune.operators.triggers import (
    BRIDGED,
    JOINED,
    NEW_LATEST,
    TriggerConfig,
    TriggerState,
    added_in_own_session,
    cart_abandoned,
    expect_handover,
    handover_done,
    held,
    long_dwell,
    own_event,
    place_in_sessions,
    repeat_visit,
    segment_trigger,
    trigger_id,
)

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

MAX_SEEN_IDS = 2048
MAX_SESSIONS = 128
MAX_SERIES = 2000
#: How often a user with a pending cart looks at the stream clock (wall time).
TIMER_POLL = timedelta(seconds=1)
MAX_TALLY_KEYS = 8
#: Anonymous ids remembered per user, so that erasure and withdrawal delete their aliases.
MAX_ALIASES = 16
LONG_DWELL_MS = 30_000


@dataclass(frozen=True, slots=True)
class PriceBands:
    """The price from which an item is in the top band of its category (catalogue quantile)."""

    thresholds: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_items(cls, items: Iterable[ItemUpdate], quantile: float = 0.8) -> PriceBands:
        """Thresholds at ``quantile`` of each category's latest item prices."""
        latest: dict[str, ItemUpdate] = {}
        for item in items:
            latest[item.item_id] = item
        prices: dict[str, list[int]] = {}
        for item in latest.values():
            prices.setdefault("/".join(item.category_path), []).append(item.price_minor)
        out = {}
        for cat, ps in prices.items():
            ps.sort()
            out[cat] = ps[min(len(ps) - 1, int(quantile * len(ps)))]
        return cls(out)

    def is_premium(self, category: str | None, price_minor: int | None) -> bool | None:
        """``None`` when the category or price is unknown."""
        if category is None or price_minor is None:
            return None
        threshold = self.thresholds.get(category)
        return None if threshold is None else price_minor >= threshold


@dataclass(frozen=True, slots=True)
class ProfileConfig:
    """Tunables of the per-user step (settings feed them; defaults as documented)."""

    session_gap_ms: int = 30 * MINUTE_MS
    dedupe_window_ms: int = DAY_MS
    state_ttl: timedelta = timedelta(days=30)
    rules: RuleSet | None = None
    price_bands: PriceBands = field(default_factory=PriceBands)
    clock: Clock = field(default_factory=SystemClock)
    #: Where the latest cluster parameters are read; None: no clustering.
    board: ParamsBoard | None = None
    triggers: TriggerConfig = field(default_factory=TriggerConfig)
    #: Declarative trigger rules (operators/rules.py); None: consent check only.
    trigger_rules: TriggerRules | None = None
    #: The process's stream clock for timers of users who send nothing more.
    stream_clock: StreamClock = field(default_factory=lambda: STREAM_CLOCK)
    #: Consent that applies when a user stated none (operators/consent.py).
    consent: ConsentPolicy = field(default_factory=ConsentPolicy)
    #: Key names, for the erasure confirmation's list of deleted keys.
    keys: RedisKeys = field(default_factory=RedisKeys)
    #: Every audience set the flow writes (rule segments and personas): erasure removes
    #: the user from all of them, whatever the state still knows.
    audiences: tuple[str, ...] = ()
    #: The shared recommendation and propensity models (operators/models.py); None: no
    #: recommendations, no propensity, no session summaries.
    models: ModelReader | None = None
    recs: RecsConfig = field(default_factory=RecsConfig)


@dataclass(slots=True)
class Series:
    """Event times (sorted) with a parallel value, bounded; windowed sums by bisect."""

    times: list[int] = field(default_factory=list)
    values: list[int] = field(default_factory=list)

    def add(self, t: int, value: int = 1) -> int | None:
        """Insert in time order; returns the value of the oldest entry if the cap dropped it."""
        if not self.times or t >= self.times[-1]:
            self.times.append(t)
            self.values.append(value)
        else:
            i = bisect_right(self.times, t)
            self.times.insert(i, t)
            self.values.insert(i, value)
        if len(self.times) > MAX_SERIES:
            del self.times[0]
            return self.values.pop(0)
        return None

    def trim(self, before: int) -> int:
        """Drop entries older than ``before``; returns how many went."""
        n = bisect_left(self.times, before)
        if n:
            del self.times[:n]
            del self.values[:n]
        return n

    def count(self, since: int) -> int:
        return len(self.times) - bisect_left(self.times, since)

    def total(self, since: int) -> int:
        return sum(self.values[bisect_left(self.times, since) :])


@dataclass(slots=True)
class UserState:
    """Everything Attune keeps about one user. Pickles; bounded (see module docstring)."""

    user_id: str
    max_time: int = 0
    first_seen_ms: int = 0
    # dedupe: event id -> event time, insertion ordered
    seen: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    # lifetime counts
    events: int = 0
    page_views: int = 0
    product_views: int = 0
    searches: int = 0
    add_to_carts: int = 0
    remove_from_carts: int = 0
    purchases: int = 0
    dwells: int = 0
    revenue_minor: int = 0
    last_purchase_ms: int | None = None
    # sessions: the latest session intervals, sorted, separated by more than the gap
    sessions: int = 0
    session_starts: list[int] = field(default_factory=list)
    session_ends: list[int] = field(default_factory=list)
    session_start_ms: int = 0
    session_events: int = 0
    session_product_views: int = 0
    session_add_to_carts: int = 0
    session_purchases: int = 0
    # windows (event time)
    views: Series = field(default_factory=Series)  # value: 1 premium / 0 not / -1 unknown
    view_categories: list[str | None] = field(default_factory=list)  # parallel to views
    views_priced: int = 0  # entries of views with a known band (value >= 0)
    views_premium: int = 0  # entries of views in the top band (value == 1)
    carts: Series = field(default_factory=Series)
    orders: Series = field(default_factory=Series)  # value: order total
    # cart: adds, removes and orders sorted by (event time, event id) (operators/cart.py)
    cart: CartTimeline = field(default_factory=CartTimeline)
    # dwell: page view id -> max dwell seen
    dwell_pages: dict[str, int] = field(default_factory=dict)
    dwell_total_ms: int = 0
    dwell_max_ms: int = 0
    long_dwells: int = 0
    devices: dict[str, int] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)
    segments: frozenset[str] = frozenset()
    cluster: int | None = None  # persona assigned from the published cluster parameters
    trig: TriggerState = field(default_factory=TriggerState)
    erased_at: int | None = None  # tombstone: events up to this time belong to erased data
    # privacy (operators/consent.py, docs/privacy.md)
    consent: ConsentState = field(default_factory=ConsentState)
    aliases: list[str] = field(default_factory=list)  # anonymous ids seen with this user
    vectors: int = 0  # session vectors sent to the shared persona learner
    models: UserModels = field(default_factory=UserModels)  # recent items, session, propensity
    withheld: int = 0  # events withheld since UserLogic last counted them (0 between batches)
    active_ms: int = 0  # wall clock of the latest batch: idle eviction after state_ttl


Output = (
    ProfileWrite
    | SegmentsWrite
    | ForgetUser
    | AliasWrite
    | SegmentChange
    | ClusterVector
    | SessionSummary
    | RecsWrite
    | Trigger
    | ErasureConfirmation
)


def apply(st: UserState, item: UserInput, cfg: ProfileConfig) -> list[Output]:
    """Fold one input into ``st``; returns segment changes and Redis ops.

    Profile writes are not returned here: :class:`UserLogic` writes one per
    user per batch from the final state (see :func:`profile_fields`).
    """
    if isinstance(item, HandedOver):
        handover_done(st.trig, item.anonymous_id, item.event_time)
        return []
    if isinstance(item, Forget):
        # The alias key is the user's step's to write (by the user's consent): kept here.
        return [
            *_leave_all(st, item.event_time, cfg),
            ForgetUser(item.anonymous_id, _audiences(st), keep_alias=True),
        ]
    event = item
    t = event.event_time
    if event.event_id in st.seen:
        st.duplicates += 1
        return []
    if st.erased_at is not None and t <= st.erased_at:
        return []  # erased: whatever arrives from before the request is not kept
    _remember(st, event.event_id, t, cfg)
    if isinstance(event.payload, ErasureRequest):
        return before_forgetting(st, t, cfg) + erase(st, event, event.payload, cfg)
    allowed, out = privacy_gate(st, event, cfg)
    if not allowed:
        return out
    if not st.events:
        st.first_seen_ms = t
    st.first_seen_ms = min(st.first_seen_ms, t)
    if cfg.models is not None and st.session_ends and t - st.session_ends[-1] > cfg.session_gap_ms:
        out.extend(close_session(st, cfg))  # t opens a new latest session
    new_session = _sessionize(st, t, cfg.session_gap_ms)
    st.max_time = max(st.max_time, t)
    own_opened = False
    if event.user_id == st.user_id:
        added = event.payload.item_id if isinstance(event.payload, AddToCart) else None
        own_opened = own_event(st.trig, t, cfg.session_gap_ms, added)
        st.trig.known = True
        if st.trig.known_since is None or t < st.trig.known_since:
            st.trig.known_since = t
        link = link_of(event)
        if link is not None:
            expect_handover(st.trig, link.anonymous_id, t, cfg.clock.now_ms())
    current = _in_current_session(st, t)
    if cfg.models is not None and current and is_outcome_boundary(event):
        st.models.decide(FeatureView(st, st.max_time))  # before the outcome is visible
    _count(st, event, t, cfg)
    if cfg.models is not None:
        st.models.observe(event, current)
    _trim(st)
    # One vector per session boundary, not per event: the learner is one key. A shared
    # aggregate of behaviour, so it needs analytics consent.
    if (
        new_session
        and st.sessions > 1
        and cfg.board is not None
        and cfg.consent.allowed(st.consent, ANALYTICS)
    ):
        st.vectors += 1
        out.append(ClusterVector(st.user_id, vector(FeatureView(st, st.max_time))))
    carts, caused = _behaviour_triggers(st, event, own_opened, cfg)
    if cfg.rules is not None:
        after = cfg.rules.evaluate(FeatureView(st, st.max_time))
        if after != st.segments:
            before, st.segments = st.segments, after
            changes = cfg.rules.membership_changes(st.user_id, before, after, t, cfg.clock.now_ms())
            entered = tuple(sorted(after - before))
            exited = tuple(sorted(before - after))
            out += [*changes, SegmentsWrite(st.user_id, entered, exited)]
            if st.trig.known:
                caused += [segment_trigger(c) for c in changes]
    return out + publishable(st, carts, cfg) + judge_caused(st, caused, cfg, event)


def _behaviour_triggers(
    st: UserState, event: Event, own_opened: bool, cfg: ProfileConfig
) -> tuple[list[Trigger], list[Trigger]]:
    """Trigger candidates at this event, for known users: the carts it settles, and the
    dwell and visit triggers it causes.

    Carts: judged at this event's settled time (:func:`settled_own_time`), so the rules
    see the state as it was then whatever the batching; :class:`UserLogic` catches up
    with the stream clock per batch and on its timer. Dwells and visits: only events
    under the user's id, since they were first seen under it, judged on those events
    alone (their sessions and adds to cart, kept in the trigger state). They come from
    one partition, in its order in every run and batching; the anonymous era's events,
    handed over at login, and anonymous events routed here after it arrive in an order
    that depends on batching: they neither fire nor change these judgements.
    """
    if not st.trig.known:
        return [], []
    settled = settled_own_time(st, event.event_time, cfg)
    carts = [] if settled is None else check_cart(st, settled, cfg)
    since = st.trig.known_since
    if since is None or event.event_time < since or event.user_id != st.user_id:
        return carts, []  # the anonymous era, or an anonymous event routed here after login
    emit = cfg.clock.now_ms()
    p = event.payload
    caused: list[Trigger] = []
    if (
        isinstance(p, Dwell)
        and p.item_id is not None
        and p.dwell_ms > cfg.triggers.long_dwell_ms
        and not added_in_own_session(st.trig, p.item_id, event.event_time)
    ):
        fired = long_dwell(
            st.trig,
            st.user_id,
            page=p.page_view_id or p.item_id,
            item_id=p.item_id,
            dwell_ms=p.dwell_ms,
            t=event.event_time,
            emit_ms=emit,
        )
        if fired is not None:
            caused.append(fired)
    if own_opened:
        starts = st.trig.own_starts
        visit = repeat_visit(st.user_id, starts[-1], starts, emit, cfg.triggers)
        if visit is not None:
            caused.append(visit)
    return carts, caused


def close_session(st: UserState, cfg: ProfileConfig) -> list[Output]:
    """The latest session is over: one :class:`SessionSummary` for the shared models, only
    with analytics consent (a shared aggregate, like the persona vectors); the per-user
    session part is reset either way."""
    if not st.session_starts or st.models.summarised_start == st.session_start_ms:
        st.models.new_session()
        return []
    if not cfg.consent.allowed(st.consent, ANALYTICS):
        st.models.new_session()
        return []
    summary = st.models.close(
        st.user_id,
        st.session_start_ms,
        st.session_ends[-1],
        FeatureView(st, st.max_time),
        _audiences(st),
    )
    return [summary]


def score_and_recommend(st: UserState, cfg: ProfileConfig) -> list[Output]:
    """Once per batch of the user: propensity score and tier (and a ``high_propensity``
    trigger when the tier first turns high in a session), then the user's
    recommendations if the batch had a product view, cart change or purchase."""
    reader = cfg.models
    if reader is None:
        return []
    out: list[Output] = []
    scored = reader.propensity(FeatureView(st, st.max_time))
    m = st.models
    if scored is not None:
        m.propensity, m.tier = round(scored[0], 4), scored[1]
        if scored[0] >= HIGH and m.high_session != st.session_start_ms and st.trig.known:
            m.high_session = st.session_start_ms
            out.extend(publishable(st, [high_propensity(st, scored[0], cfg)], cfg))
    if m.recs_due:
        m.recs_due = False
        top = compute(st, "top_category_7d")
        signals = m.signals(
            st.user_id,
            st.max_time,
            cart_of(st),
            (top,) if isinstance(top, str) else (),
            tuple(sorted(st.segments)),
        )
        out.append(RecsWrite(st.user_id, reader.recommend(signals, cfg.recs, cfg.clock.now_ms())))
    return out


def high_propensity(st: UserState, score: float, cfg: ProfileConfig) -> Trigger:
    """The ``high_propensity`` trigger of the user's current session (docs/triggers.md)."""
    return Trigger(
        trigger_id=trigger_id("high_propensity", st.user_id, st.session_start_ms),
        kind="high_propensity",
        user_id=st.user_id,
        cause_event_time=st.max_time,
        emit_time=cfg.clock.now_ms(),
        reason=f"propensity tier high (score {score:.2f}) in the session started at "
        f"{st.session_start_ms}",
        scores={"propensity": round(score, 4)},
    )


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
    # a consent change may be among the anonymous events still on their way
    if not final and now_ms < MAX_EVENT_TIME_MS and judgements_wait(st, cfg):
        return []
    due = st.cart.take_due(now_ms, cfg.triggers.abandon_after_ms)
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
    """What goes out of the candidates: nothing without marketing consent (the privacy
    gate's floor, for every kind and every rule purpose); then the trigger rules decide
    (conditions, actions, caps, cooldowns, quiet hours); without rules, all of them.

    Consent is taken in event time: a trigger needs marketing consent (and
    personalization consent, without which its events would have been withheld) from its
    cause to when it is due (a cart reminder: from the cart's last change to the end of its wait;
    any other kind: at its cause), whenever it is judged. A cart judged late (it waited
    for a hand-over or for the stream clock) is so decided as one judged on time, and a
    withdrawal before the reminder was due holds it back in every run. ``channel`` and
    ``timezone`` (of the causing event) override the user's latest ones when given."""
    if not candidates:
        return []
    consent, cs = cfg.consent, st.consent
    wait = cfg.triggers.abandon_after_ms
    candidates = [
        c
        for c in candidates
        if all(
            consent.allowed(
                cs,
                purpose,
                c.cause_event_time,
                c.cause_event_time + (wait if c.kind == "cart_abandoned" else 0),
            )
            for purpose in (MARKETING, PERSONALIZATION)
        )
    ]
    if not candidates:
        return []
    rules = cfg.trigger_rules
    if rules is None:
        return list(candidates)
    ctx = TriggerContext(
        features=FeatureView(st, st.max_time),
        segments=frozenset(_audiences(st)),
        marketing_consent=True,
        timezone=timezone or st.trig.timezone,
        channel=channel or st.trig.channel,
    )
    out: list[Output] = []
    for trigger in candidates:
        out.extend(rules.decide(trigger, ctx, st.trig.history).published)
    return out


def tombstone(st: UserState) -> UserState:
    """What is left of an erased user: the erasure time and the ids seen (for dedupe)."""
    return UserState(
        user_id=st.user_id, erased_at=st.erased_at, seen=dict(st.seen), active_ms=st.active_ms
    )


# --- the privacy gate: consent and erasure (docs/privacy.md) ----------------------------------


def privacy_gate(st: UserState, event: Event, cfg: ProfileConfig) -> tuple[bool, list[Output]]:
    """Update the user's consent from ``event``; whether the event may feed the state.

    Without personalization consent the event is withheld (counted, nothing else kept)
    and whatever the state held is removed (:func:`withdraw`): the profile, segments,
    audiences, aliases and recommendations in Redis, and the state but for its consent.
    Losing marketing consent drops pending triggers and the trigger history.
    """
    policy, cs = cfg.consent, st.consent
    marketing_before = policy.allowed(cs, MARKETING)
    t = event.event_time
    cs.locate(t, event.context)
    if isinstance(event.payload, ConsentUpdate):
        cs.observe(t, event.payload)
    _note_alias(st, event)
    if not policy.allowed(cs, PERSONALIZATION):
        out = before_forgetting(st, t, cfg) if st.trig.known else []
        out += withdraw(st, t, cfg) if holds_data(st) or st.aliases else []
        st.withheld += 1
        return False, out
    if marketing_before and not policy.allowed(cs, MARKETING):
        drop_marketing(st)
    # The alias serves personalization: written here, by the user's consent, at each
    # IDENTIFY (one key decides, so a withdrawal's DEL cannot race it).
    link = link_of(event)
    return True, [AliasWrite(link.anonymous_id, link.user_id)] if link is not None else []


def _note_alias(st: UserState, event: Event) -> None:
    anon = event.anonymous_id
    if anon and anon != st.user_id and anon not in st.aliases:
        st.aliases.append(anon)
        if len(st.aliases) > MAX_ALIASES:
            del st.aliases[0]


def holds_data(st: UserState) -> bool:
    """Whether the state holds anything beyond consent, aliases and dedupe ids."""
    return bool(st.events or st.segments or st.cluster is not None or st.max_time)


def drop_marketing(st: UserState) -> None:
    """Marketing withdrawn: the publish history kept for caps and cooldowns goes, and the
    pages long-dwell fired for. (A cart reminder whose wait the withdrawal falls in does
    not fire, not even if consent comes back: :func:`publishable` asks for consent
    throughout the wait, in event time.)"""
    trig = st.trig
    trig.dwell_fired = []
    trig.history = TriggerHistory()


def _every_audience(st: UserState, cfg: ProfileConfig) -> tuple[str, ...]:
    return tuple(sorted({*_audiences(st), *cfg.audiences}))


def _forget_everywhere(st: UserState, t: int, cfg: ProfileConfig) -> list[Output]:
    """Exit records for the user's segments, DEL of every key of the user and of their
    anonymous ids, SREM from every audience set."""
    return [
        *_leave_all(st, t, cfg),
        ForgetUser(st.user_id, _every_audience(st, cfg)),
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
    if st.events:
        items.append(f"counters: {st.events} events")
    if st.session_starts:
        items.append(f"sessions: {len(st.session_starts)} intervals")
    if st.views.times or st.carts.times or st.orders.times:
        items.append("windows: views, carts, orders")
    cart = cart_of(st)
    if cart:
        items.append(f"cart: {len(cart)} lines")
    if st.dwell_pages:
        items.append(f"dwell: {len(st.dwell_pages)} pages")
    if st.devices or st.channels:
        items.append("device and channel tallies")
    if st.segments:
        items.append(f"segments: {len(st.segments)}")
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
    where they are (docs/privacy.md, "Erasure in the flow").
    """
    t = event.event_time
    keys = cfg.keys
    audiences = _audiences(st)
    confirmation = ErasureConfirmation(
        user_id=st.user_id,
        request_id=request.request_id,
        request_event_id=event.event_id,
        request_time=t,
        processed_time=cfg.clock.now_ms(),
        redis_keys=tuple(k for user in (st.user_id, *st.aliases) for k in keys.user_keys(user)),
        audiences=tuple(keys.audience(a) for a in audiences),
        state_items=state_items(st),
        model_data=(
            (f"persona assignment {cluster_segment(st.cluster)}",) if st.cluster is not None else ()
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
                    f"clusters: {st.vectors} session vectors already learned by the shared "
                    "persona model (aggregate centroids; they cannot be unlearned)",
                )
                if st.vectors
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
    out = [*_forget_everywhere(st, t, cfg), confirmation]
    st.erased_at = t
    _reset(st, tombstone(st))
    return out


def _audiences(st: UserState) -> tuple[str, ...]:
    """Every audience the user is in: rule segments and the persona."""
    persona = () if st.cluster is None else (cluster_segment(st.cluster),)
    return tuple(sorted((*st.segments, *persona)))


def assign_cluster(st: UserState, cfg: ProfileConfig) -> list[Output]:
    """Assign the user's persona from the latest published parameters; changes if it moved."""
    params = cfg.board.get() if cfg.board is not None else None
    if params is None or not params.ready:
        return []
    cluster = params.assign(vector(FeatureView(st, st.max_time)))
    if cluster == st.cluster:
        return []
    before = frozenset() if st.cluster is None else frozenset({cluster_segment(st.cluster)})
    after = frozenset({cluster_segment(cluster)})
    st.cluster = cluster
    changes = membership_changes(
        st.user_id,
        before,
        after,
        st.max_time,
        cfg.clock.now_ms(),
        "CLUSTER",
        descriptions=params.descriptions(),
    )
    return [*changes, SegmentsWrite(st.user_id, tuple(after), tuple(before))]


def _leave_all(st: UserState, t: int, cfg: ProfileConfig) -> list[Output]:
    """Exit records for every segment (and the persona) of a state that is going away."""
    now = cfg.clock.now_ms()
    out: list[Output] = []
    if cfg.rules is None:
        out.extend(membership_changes(st.user_id, st.segments, frozenset(), t, now))
    else:
        out.extend(cfg.rules.membership_changes(st.user_id, st.segments, frozenset(), t, now))
    if st.cluster is not None:
        persona = frozenset({cluster_segment(st.cluster)})
        out.extend(membership_changes(st.user_id, persona, frozenset(), t, now, "CLUSTER"))
    return out


def _remember(st: UserState, event_id: str, t: int, cfg: ProfileConfig) -> None:
    seen = st.seen
    seen[event_id] = t
    if len(seen) > MAX_SEEN_IDS:
        del seen[next(iter(seen))]
    horizon = max(st.max_time, t) - cfg.dedupe_window_ms
    while seen:
        first = next(iter(seen))
        if seen[first] >= horizon:
            break
        del seen[first]


def _sessionize(st: UserState, t: int, gap: int) -> bool:
    """Place event time ``t`` among the session intervals (gap rule), in any arrival order.

    Returns whether ``t`` opened a new latest session (a session boundary).
    """
    placed = place_in_sessions(st.session_starts, st.session_ends, t, gap, MAX_SESSIONS)
    if placed == BRIDGED:
        st.sessions -= 1
    elif placed != JOINED:
        st.sessions += 1
    if placed == NEW_LATEST:
        st.session_events = 0
        st.session_product_views = 0
        st.session_add_to_carts = 0
        st.session_purchases = 0
    st.session_start_ms = st.session_starts[-1]
    return placed == NEW_LATEST


def _in_current_session(st: UserState, t: int) -> bool:
    return t >= st.session_start_ms


def _count(st: UserState, event: Event, t: int, cfg: ProfileConfig) -> None:
    """Count the event."""
    st.events += 1
    current = _in_current_session(st, t)
    if current:
        st.session_events += 1
    ctx = event.context
    if ctx is not None:
        if ctx.device is not None:
            _tally(st.devices, ctx.device)
        if ctx.channel is not None:
            _tally(st.channels, ctx.channel)
            st.trig.channel = ctx.channel
        if ctx.timezone is not None:
            st.trig.timezone = ctx.timezone
    p = event.payload
    if isinstance(p, ProductView):
        st.product_views += 1
        if current:
            st.session_product_views += 1
        premium = cfg.price_bands.is_premium(p.category, p.price_minor)
        _add_view(st, t, -1 if premium is None else int(premium), p.category)
    elif isinstance(p, PageView):
        st.page_views += 1
    elif isinstance(p, Search):
        st.searches += 1
    elif isinstance(p, AddToCart):
        st.add_to_carts += 1
        if current:
            st.session_add_to_carts += 1
        st.carts.add(t)
        st.trig.currency = p.currency
        st.cart.add(t, event.event_id, p.item_id, p.quantity, p.unit_price_minor)
    elif isinstance(p, RemoveFromCart):
        st.remove_from_carts += 1
        st.cart.add(t, event.event_id, p.item_id, -p.quantity, 0)
    elif isinstance(p, Purchase):
        st.purchases += 1
        if current:
            st.session_purchases += 1
        st.revenue_minor += p.total_minor
        st.orders.add(t, p.total_minor)
        if st.last_purchase_ms is None or t > st.last_purchase_ms:
            st.last_purchase_ms = t
        st.cart.order(t, event.event_id)  # the order empties the cart
    elif isinstance(p, Dwell):
        st.dwells += 1
        page = p.page_view_id or p.item_id or ""
        before = st.dwell_pages.get(page, 0)
        if p.dwell_ms > before:
            st.dwell_total_ms += p.dwell_ms - before
            st.dwell_pages[page] = p.dwell_ms
            if before <= LONG_DWELL_MS < p.dwell_ms:
                st.long_dwells += 1
            if len(st.dwell_pages) > 16:
                del st.dwell_pages[next(iter(st.dwell_pages))]
        st.dwell_max_ms = max(st.dwell_max_ms, p.dwell_ms)


def cart_of(st: UserState) -> dict[str, tuple[int, int]]:
    """The cart now: item id -> (units, unit price in minor units)."""
    return st.cart.current()


def _add_view(st: UserState, t: int, premium: int, category: str | None) -> None:
    views = st.views
    if not views.times or t >= views.times[-1]:
        st.view_categories.append(category)
    else:
        st.view_categories.insert(bisect_right(views.times, t), category)
    dropped = views.add(t, premium)
    if premium >= 0:
        st.views_priced += 1
        st.views_premium += premium
    if dropped is not None:  # the series hit its cap and dropped its oldest entry
        del st.view_categories[0]
        _forget_views(st, (dropped,))


def _forget_views(st: UserState, values: Iterable[int]) -> None:
    for v in values:
        if v >= 0:
            st.views_priced -= 1
            st.views_premium -= v


def _tally(counts: dict[str, int], key: str) -> None:
    if key in counts or len(counts) < MAX_TALLY_KEYS:
        counts[key] = counts.get(key, 0) + 1


def _trim(st: UserState) -> None:
    now = st.max_time
    n = bisect_left(st.views.times, now - 7 * DAY_MS)
    if n:
        _forget_views(st, st.views.values[:n])
        st.views.trim(now - 7 * DAY_MS)
        del st.view_categories[:n]
    st.carts.trim(now - 7 * DAY_MS)
    st.orders.trim(now - 30 * DAY_MS)


# --- features --------------------------------------------------------------------------------


def _top(counts: Mapping[str, int]) -> str | None:
    if not counts:
        return None
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def _category_counts(st: UserState, since: int) -> dict[str, int]:
    start = bisect_left(st.views.times, since)
    counts: dict[str, int] = {}
    for cat in st.view_categories[start:]:
        if cat is not None:
            counts[cat] = counts.get(cat, 0) + 1
    return counts


def _top_category_7d(st: UserState, now: int) -> str | None:
    return _top(_category_counts(st, now - 7 * DAY_MS))


def _top_category_share_7d(st: UserState, now: int) -> float:
    counts = _category_counts(st, now - 7 * DAY_MS)
    total = st.views.count(now - 7 * DAY_MS)
    return round(max(counts.values()) / total, 4) if counts and total else 0.0


def _priced(st: UserState, now: int) -> list[int]:
    start = bisect_left(st.views.times, now - 7 * DAY_MS)
    return [v for v in st.views.values[start:] if v >= 0]


def _premium_share(st: UserState, now: int) -> float:
    if now == st.max_time:  # the series holds exactly the 7-day window: running totals
        priced, premium = st.views_priced, st.views_premium
    else:
        window = _priced(st, now)
        priced, premium = len(window), sum(window)
    return round(premium / priced, 4) if priced else 0.0


def _priced_views(st: UserState, now: int) -> int:
    return st.views_priced if now == st.max_time else len(_priced(st, now))


def _days_since(then: int | None, now: int) -> float | None:
    return None if then is None else round((now - then) / DAY_MS, 4)


_FEATURE_FNS: dict[str, Callable[[UserState, int], FeatureValue]] = {
    "events": lambda s, n: s.events,
    "page_views": lambda s, n: s.page_views,
    "product_views": lambda s, n: s.product_views,
    "searches": lambda s, n: s.searches,
    "add_to_carts": lambda s, n: s.add_to_carts,
    "remove_from_carts": lambda s, n: s.remove_from_carts,
    "purchases": lambda s, n: s.purchases,
    "dwells": lambda s, n: s.dwells,
    "revenue_minor": lambda s, n: s.revenue_minor,
    "avg_order_value_minor": lambda s, n: s.revenue_minor // s.purchases if s.purchases else None,
    "sessions": lambda s, n: s.sessions,
    "session_events": lambda s, n: s.session_events,
    "session_product_views": lambda s, n: s.session_product_views,
    "session_add_to_carts": lambda s, n: s.session_add_to_carts,
    "session_purchases": lambda s, n: s.session_purchases,
    "session_start_ms": lambda s, n: s.session_start_ms,
    "session_duration_ms": lambda s, n: n - s.session_start_ms,
    "product_views_1h": lambda s, n: s.views.count(n - HOUR_MS),
    "product_views_24h": lambda s, n: s.views.count(n - DAY_MS),
    "product_views_7d": lambda s, n: s.views.count(n - 7 * DAY_MS),
    "add_to_carts_1h": lambda s, n: s.carts.count(n - HOUR_MS),
    "add_to_carts_24h": lambda s, n: s.carts.count(n - DAY_MS),
    "add_to_carts_7d": lambda s, n: s.carts.count(n - 7 * DAY_MS),
    "purchases_7d": lambda s, n: s.orders.count(n - 7 * DAY_MS),
    "purchases_30d": lambda s, n: s.orders.count(n - 30 * DAY_MS),
    "revenue_30d_minor": lambda s, n: s.orders.total(n - 30 * DAY_MS),
    "top_category_7d": _top_category_7d,
    "top_category_share_7d": _top_category_share_7d,
    "premium_view_share_7d": _premium_share,
    "priced_views_7d": _priced_views,
    "first_seen_ms": lambda s, n: s.first_seen_ms,
    "last_seen_ms": lambda s, n: s.max_time,
    "last_purchase_ms": lambda s, n: s.last_purchase_ms,
    "days_since_last_purchase": lambda s, n: _days_since(s.last_purchase_ms, n),
    "days_since_first_seen": lambda s, n: _days_since(s.first_seen_ms, n) or 0.0,
    "cart_units": lambda s, n: sum(q for q, _ in cart_of(s).values()),
    "cart_lines": lambda s, n: len(cart_of(s)),
    "cart_value_minor": lambda s, n: sum(q * p for q, p in cart_of(s).values()),
    "dwell_total_ms": lambda s, n: s.dwell_total_ms,
    "dwell_max_ms": lambda s, n: s.dwell_max_ms,
    "long_dwells": lambda s, n: s.long_dwells,
    "device_top": lambda s, n: _top(s.devices),
    "channel_top": lambda s, n: _top(s.channels),
    "propensity_score": lambda s, n: s.models.propensity,
    "propensity_tier": lambda s, n: s.models.tier,
}
assert set(_FEATURE_FNS) == set(FEATURES), set(_FEATURE_FNS) ^ set(FEATURES)


def compute(st: UserState, name: str, now: int | None = None) -> FeatureValue:
    """One feature of ``st`` at event time ``now`` (default: the user's latest event)."""
    return _FEATURE_FNS[name](st, st.max_time if now is None else now)


class FeatureView(Mapping[str, FeatureValue]):
    """The features of a state at ``now``, computed on access (rules read only a few)."""

    __slots__ = ("now", "st")

    def __init__(self, st: UserState, now: int) -> None:
        self.st = st
        self.now = now

    def __getitem__(self, name: str) -> FeatureValue:
        return _FEATURE_FNS[name](self.st, self.now)

    def get(self, name: str, default: FeatureValue = None) -> FeatureValue:  # type: ignore[override]
        fn = _FEATURE_FNS.get(name)
        return default if fn is None else fn(self.st, self.now)

    def __iter__(self) -> Iterator[str]:
        return iter(_FEATURE_FNS)

    def __len__(self) -> int:
        return len(_FEATURE_FNS)


def profile_write(st: UserState) -> ProfileWrite:
    """A user's Redis profile: :data:`~attune.operators.features.PROFILE_FIELDS`, latest."""
    return ProfileWrite.from_features(st.user_id, FeatureView(st, st.max_time), PROFILE_FIELDS)


# --- the Bytewax wrapper ---------------------------------------------------------------------


Keyed = tuple[str, UserInput]


class UserLogic(StatefulBatchLogic[Keyed, Output, bytes]):
    """Per-user step: :func:`apply` per input, then one profile write for the batch.

    Values are ``(user key, input)``: Bytewax 0.21 builds a logic from its
    resume state only, so a new state learns its user from the first value.

    Retention: the state is discarded once ``cfg.state_ttl`` of wall-clock time
    (``cfg.clock``) has passed since its latest batch; the time is kept in the state
    (``active_ms``), so a restart from a snapshot does not restart the wait. The user
    leaves every audience when it goes (their Redis keys expire by their own TTL).
    """

    def __init__(self, resume: bytes | None, cfg: ProfileConfig) -> None:
        self.state: UserState | None = pickle.loads(resume) if resume is not None else None
        self.cfg = cfg
        self._ttl_ms = int(cfg.state_ttl.total_seconds() * 1000)

    def on_batch(self, values: list[Keyed]) -> tuple[Iterable[Output], bool]:
        st = self.state
        if st is None:
            st = self.state = UserState(user_id=values[0][0])
        out: list[Output] = []
        before = st.events
        # Arrival order, not event time: for a user's own events that is their partition's
        # order, the same however the stream is cut into batches (a replay, a recovery),
        # so order-dependent decisions (caps, cooldowns, a session's first event) repeat.
        # The state itself does not depend on order; the hand-over is waited for.
        for _, item in values:
            erased_at = st.erased_at
            out.extend(apply(st, item, self.cfg))
            if isinstance(item, Forget):
                return out, StatefulBatchLogic.DISCARD
            if st.erased_at != erased_at:  # an erasure: keep a tombstone, not the data
                st = self.state = tombstone(st)
                before = 0
            elif st.events < before:  # consent withdrawn: the state was emptied
                before = 0
        if st.withheld:
            EVENTS_WITHHELD.inc(st.withheld)
            st.withheld = 0
        if st.events != before and st.events:
            out.extend(assign_cluster(st, self.cfg))
            out.extend(score_and_recommend(st, self.cfg))
            out.append(profile_write(st))
        out.extend(self._timers())
        st.active_ms = self.cfg.clock.now_ms()
        return out, StatefulBatchLogic.RETAIN

    def _timers(self, end_of_input: bool = False) -> list[Output]:
        """Fire a pending cart abandonment the stream's clock has passed, and judge the
        triggers deferred while judgements waited (all of them at end of input)."""
        st = self.state
        if st is None:
            return []
        out = release_deferred(st, self.cfg, end_of_input)
        if end_of_input:
            now = MAX_EVENT_TIME_MS
        else:
            clock = self.cfg.stream_clock.now_ms() or 0  # already less the allowed lateness
            now = max(settled_own_time(st, st.max_time, self.cfg) or 0, clock)
        fired = check_cart(st, now, self.cfg)
        return out + publishable(st, fired, self.cfg) if fired else out

    def expired(self) -> bool:
        """Whether the state has been idle (wall clock) for the state TTL."""
        st = self.state
        return st is None or self.cfg.clock.now_ms() >= st.active_ms + self._ttl_ms

    def on_notify(self) -> tuple[Iterable[Output], bool]:
        if self.expired():
            return self._evict(), StatefulBatchLogic.DISCARD
        return self._timers(), StatefulBatchLogic.RETAIN

    def _evict(self) -> list[Output]:
        """The state goes: the user leaves every audience (membership is computed from the
        state, which is gone); profile and key TTLs run out by themselves."""
        st = self.state
        if st is None or not (st.segments or st.cluster is not None):
            return []
        audiences = _audiences(st)
        changes = _leave_all(st, st.max_time, self.cfg)
        return [*changes, SegmentsWrite(st.user_id, (), audiences)]

    def on_eof(self) -> tuple[Iterable[Output], bool]:
        # End of a bounded input: event time is over, every pending timer fires, and the
        # open session is summarised for the shared models (it will not be continued).
        out = self._timers(end_of_input=True)
        st = self.state
        if st is not None and st.events and self.cfg.models is not None:
            out.extend(close_session(st, self.cfg))
            st.models.summarised_start = st.session_start_ms
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        st = self.state
        if st is not None and (
            st.trig.deferred or st.cart.next_due_ms(self.cfg.triggers.abandon_after_ms) is not None
        ):
            return datetime.now(UTC) + TIMER_POLL  # poll the stream clock while these wait
        active = st.active_ms if st is not None else self.cfg.clock.now_ms()
        return datetime.fromtimestamp((active + self._ttl_ms) / 1000, UTC)

    def snapshot(self) -> bytes:
        # A pickle is the immutable copy Bytewax asks for, ~10x cheaper than deepcopy.
        return pickle.dumps(self.state, protocol=pickle.HIGHEST_PROTOCOL)
