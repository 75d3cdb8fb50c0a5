"""The privacy gate without Bytewax: consent rules, region defaults, withdrawal, erasure in
the per-user and identity steps, retention (idle eviction), and bad configuration."""

from __future__ import annotations

import itertools
import math
import pickle
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from attune.flows.embedded import LocalStore
from attune.flows.personalize import build_flow
from attune.flows.settings import Settings
from attune.operators.clock import DAY_MS, HOUR_MS, MINUTE_MS, FixedClock
from attune.operators.clustering import ClusterVector, LocalBoard
from attune.operators.consent import (
    ConsentConfigError,
    ConsentPolicy,
    ConsentState,
    withheld_total,
)
from attune.operators.events import (
    AddToCart,
    ConsentUpdate,
    Context,
    Dwell,
    ErasureConfirmation,
    ErasureRequest,
    Event,
    EventType,
    Identify,
    ItemUpdate,
    PageView,
    ProductView,
    SegmentChange,
    Trigger,
)
from attune.operators.identity import (
    MAX_CONSENT_EVENTS,
    Forget,
    HandedOver,
    IdentityLogic,
    IdentityState,
    Link,
    identity_input,
    identity_step,
)
from attune.operators.models import (
    LocalModelBoard,
    ModelReader,
    ModelSnapshot,
    catalogue_of,
    resolve_recs,
)
from attune.operators.redis_keys import RedisKeys
from attune.operators.redis_sink import (
    AliasWrite,
    ForgetUser,
    ProfileWrite,
    RecsWrite,
    RedisOp,
    SegmentsWrite,
    plan,
)
from attune.operators.rule_files import load_rules, load_trigger_rules
from attune.operators.rules import Decision, TriggerContext, TriggerHistory, TriggerRules
from attune.operators.stream_clock import StreamClock
from attune.operators.triggers import KINDS
from attune.operators.user_config import ProfileConfig
from attune.operators.user_logic import UserLogic
from attune.operators.user_state import UserState

T0 = 1_767_571_200_000
_ids = itertools.count()
TYPES = {
    PageView: EventType.PAGE_VIEW,
    ProductView: EventType.PRODUCT_VIEW,
    AddToCart: EventType.ADD_TO_CART,
    Dwell: EventType.DWELL,
    ConsentUpdate: EventType.CONSENT,
    ErasureRequest: EventType.ERASURE,
    Identify: EventType.IDENTIFY,
}
DE = Context(country="DE", region="DE-BE", timezone="UTC", channel="WEB")
US = Context(country="US", region="US-NY", timezone="UTC", channel="WEB")
EU_OPT_IN = ConsentPolicy.parse("", "EU=opt-in,US=opt-out")


def ev(
    t: int,
    payload: Any = None,
    user: str | None = "u1",
    anon: str | None = None,
    ctx: Context | None = DE,
) -> Event:
    payload = payload or PageView()
    return Event(
        f"e{next(_ids)}", TYPES[type(payload)], T0 + t, payload, user_id=user, anonymous_id=anon,
        context=ctx,
    )  # fmt: skip


class FakeClock(StreamClock):
    def __init__(self) -> None:
        super().__init__()

    def now_ms(self) -> int | None:
        return None

    def reached_ms(self) -> int | None:
        return None


def config(policy: ConsentPolicy | None = None, **kw: Any) -> ProfileConfig:
    return ProfileConfig(
        rules=load_rules(),
        consent=policy or ConsentPolicy(),
        stream_clock=FakeClock(),
        audiences=("every_audience",),
        **kw,
    )


def logic(policy: ConsentPolicy | None = None, **kw: Any) -> UserLogic:
    return UserLogic(None, config(policy, **kw))


def batch(lg: UserLogic, *events: Event, key: str | None = None) -> list[Any]:
    """One batch of the user's step: the key is the state's user, else the first event's."""
    if key is None:
        key = lg.state.user_id if lg.state is not None else events[0].user_key
    out, _ = lg.on_batch([(key, e) for e in events])
    return list(out)


def of(out: list[Any], cls: type) -> list[Any]:
    """The outputs of type ``cls``, the recommendation requests ranked first as the flow
    ranks them after the step."""
    return [o for o in resolve_recs(out) if isinstance(o, cls)]


GRANT = ConsentUpdate(True, True, True)


# --- the policy: defaults, regions, bad configuration ----------------------------------------


def test_builtin_default_allows_processing_and_needs_a_yes_for_marketing() -> None:
    p = ConsentPolicy.parse()
    assert p.defaults_for(None, None) == {
        "analytics": True,
        "personalization": True,
        "marketing": False,
    }
    assert ConsentPolicy.parse("opt-in").defaults_for("US", None) == dict.fromkeys(
        ("analytics", "personalization", "marketing"), False
    )
    mixed = ConsentPolicy.parse("personalization=opt-in, MARKETING=Opt-Out")
    assert mixed.defaults_for(None, None) == {
        "analytics": True,  # not named: the built-in default
        "personalization": False,
        "marketing": True,
    }


def test_the_most_specific_region_wins_per_purpose() -> None:
    p = ConsentPolicy.parse(
        "opt-out", "EEA=opt-in, EU:marketing=opt-out, de=opt-out, DE-BY:personalization=opt-in"
    )
    assert p.defaults_for("NO", None) == dict.fromkeys(p.default, False)  # EEA only
    fr = p.defaults_for("FR", "FR-IDF")  # EU sets marketing; EEA the rest
    assert fr == {"analytics": False, "personalization": False, "marketing": True}
    assert p.defaults_for("DE", "DE-BE") == dict.fromkeys(p.default, True)  # the country
    by = p.defaults_for("DE", "DE-BY")  # the subdivision, for the purpose it names
    assert by == {"analytics": True, "personalization": False, "marketing": True}
    assert p.defaults_for("BR", None) == dict.fromkeys(p.default, True)  # no entry: default


@pytest.mark.parametrize(
    ("default", "regions", "message"),
    [
        ("maybe", "", "ATTUNE_CONSENT_DEFAULT: mode 'maybe' is not opt-in or opt-out"),
        ("ads=opt-in", "", "purpose 'ads' is not one of analytics, personalization, marketing"),
        ("marketing", "", "mode 'marketing' is not opt-in or opt-out"),
        ("marketing=opt-in,marketing=opt-out", "", "marketing is set twice"),
        ("analytics=opt-in,personalization", "", "expected PURPOSE=MODE"),
        ("", "Europe=opt-in", "scope 'Europe' is not EU, EEA, a country code"),
        ("", "EU", "expected SCOPE=MODE or SCOPE:PURPOSE=MODE"),
        ("", "DEU=opt-in", "scope 'DEU' is not EU"),
        ("", "US-CA:ads=opt-in", "purpose 'ads' is not one of"),
        ("", "US=sometimes", "mode 'sometimes' is not opt-in or opt-out"),
        ("", "EU=opt-in,EU:marketing=opt-out", "EU marketing is set twice"),
    ],
)
def test_bad_consent_settings_fail_with_the_setting_and_entry_named(
    default: str, regions: str, message: str
) -> None:
    with pytest.raises(ConsentConfigError, match="ATTUNE_CONSENT_") as err:
        ConsentPolicy.parse(default, regions)
    assert message in str(err.value)


def test_the_flow_refuses_to_start_with_a_bad_region_map() -> None:
    settings = Settings.from_env({"ATTUNE_CONSENT_REGIONS": "EU=opt-in,Mars=opt-out"})
    with pytest.raises(ConsentConfigError, match="scope 'Mars'"):
        build_flow(settings, source=None, sinks=LocalStore().sinks("m"), items=[])


def test_latest_statement_in_event_time_wins_and_location_follows_the_context() -> None:
    cs = ConsentState()
    cs.observe(T0 + 10, ConsentUpdate(marketing=True))
    cs.observe(T0 + 5, ConsentUpdate(marketing=False, personalization=True))  # older: arrives late
    assert cs.stated == {"marketing": (T0 + 10, True), "personalization": (T0 + 5, True)}
    cs.locate(T0 + 10, Context(region="us-ca"))  # a region alone names its country
    assert (cs.country, cs.region) == ("US", "US-CA")
    cs.locate(T0 + 1, DE)  # older than what is known: ignored
    cs.locate(T0 + 20, Context(device="MOBILE"))  # says nothing about where
    assert cs.country == "US"
    p = ConsentPolicy.parse("", "US-CA:analytics=opt-in")
    assert not p.allowed(cs, "analytics") and p.allowed(cs, "marketing")


# --- personalization consent --------------------------------------------------------------


def test_without_personalization_consent_events_are_only_counted_as_withheld() -> None:
    lg = logic()
    before = withheld_total()
    out = batch(lg, ev(0, ConsentUpdate(True, False, True)), ev(MINUTE_MS, ProductView("i1")))
    out += batch(lg, ev(2 * MINUTE_MS, AddToCart("i1", 1, 900, "EUR")))
    assert of(out, ProfileWrite) == of(out, SegmentsWrite) == of(out, Trigger) == []
    assert of(out, SegmentChange) == []
    assert withheld_total() - before == 3
    st = lg.state
    assert st is not None and st.events == 0 and st.withheld == 0  # counted, then zeroed
    assert st.consent.stated["personalization"] == (T0, False)
    # nothing else kept: the state equals a fresh one but for consent and dedupe ids
    fresh = UserState("u1", seen=st.seen, consent=st.consent, active_ms=st.active_ms)
    assert st == fresh
    assert len(st.seen) == 3  # ids only, so that a duplicate is not counted twice
    again = withheld_total()
    dup = Event("e-dup", EventType.PAGE_VIEW, T0 + 3 * MINUTE_MS, PageView(), user_id="u1")
    batch(lg, dup, dup)
    assert withheld_total() - again == 1


def test_opt_in_region_withholds_until_consent_then_processes_from_the_next_event_on() -> None:
    lg = logic(EU_OPT_IN)
    assert of(batch(lg, ev(0, ProductView("i1"))), ProfileWrite) == []  # DE: opt-in, unknown
    out = batch(lg, ev(MINUTE_MS, ConsentUpdate(personalization=True)))
    (profile,) = of(out, ProfileWrite)
    assert profile.fields["events"] == "1"  # the consent event itself; the view is not kept
    out = batch(lg, ev(2 * MINUTE_MS, ProductView("i2")))
    assert of(out, ProfileWrite)[0].fields["product_views"] == "1"


def test_opt_out_region_processes_without_a_statement() -> None:
    lg = logic(EU_OPT_IN)
    (profile,) = of(batch(lg, ev(0, ProductView("i1"), ctx=US)), ProfileWrite)
    assert profile.fields["events"] == "1"
    # the same user seen in the EU (opt-in, nothing stated): processing stops, data goes
    out = batch(lg, ev(HOUR_MS, PageView(), ctx=DE))
    assert ForgetUser("u1", ("every_audience", "new_visitor")) in out
    assert lg.state is not None and lg.state.events == 0


def test_withdrawing_personalization_removes_what_it_stored() -> None:
    lg = logic()
    batch(
        lg,
        ev(0, GRANT, user=None, anon="a1"),  # handed over at login
        ev(MINUTE_MS, ProductView("i1"), anon="a1"),
        ev(2 * MINUTE_MS, AddToCart("i1", 1, 900, "EUR")),
        key="u1",
    )
    st = lg.state
    assert st is not None and st.events == 3 and st.segments and st.aliases == ["a1"]
    segments = sorted(st.segments)
    out = batch(lg, ev(3 * MINUTE_MS, ConsentUpdate(personalization=False)))
    assert ForgetUser("u1", tuple(sorted({"every_audience", *segments}))) in out
    assert ForgetUser("a1") in out  # the alias key of the merged anonymous id
    exits = of(out, SegmentChange)
    assert exits and {c.change for c in exits} == {"EXITED"}
    assert of(out, ProfileWrite) == []
    st = lg.state
    assert st is not None
    assert st.events == 0 and not st.segments and st.aliases == [] and st.cart.entries == []
    assert st.consent.stated["personalization"][1] is False  # consent is kept
    # from the next event on: withheld
    assert of(batch(lg, ev(4 * MINUTE_MS, ProductView("i2"))), ProfileWrite) == []
    # given again: a fresh start, nothing of before comes back
    out = batch(lg, ev(5 * MINUTE_MS, ConsentUpdate(personalization=True)))
    assert of(out, ProfileWrite)[0].fields["events"] == "1"
    assert st.cart.entries == []


def test_the_redis_plan_of_a_withdrawal_deletes_every_key_and_membership() -> None:
    lg = logic()
    out = batch(lg, ev(0, GRANT, anon="a1"), ev(MINUTE_MS, ProductView("i1")))
    out += batch(lg, ev(2 * MINUTE_MS, ConsentUpdate(personalization=False)))
    ops = [o for o in out if isinstance(o, ProfileWrite | SegmentsWrite | ForgetUser)]
    keys = RedisKeys()
    commands = plan(ops, keys=keys, ttl_s=60)
    assert ("DEL", *keys.user_keys("u1")) in commands
    assert ("DEL", *keys.user_keys("a1")) in commands
    assert ("SREM", keys.audience("new_visitor"), "u1") in commands
    assert ("SREM", keys.audience("every_audience"), "u1") in commands
    assert not any(c[0] in {"SET", "HSET", "SADD"} for c in commands)  # earlier writes dropped


# --- marketing consent ---------------------------------------------------------------------


def test_no_trigger_of_any_kind_without_marketing_consent_even_for_service_rules() -> None:
    rules = load_trigger_rules(segments=load_rules().names, kinds=KINDS)  # shipped rules
    for marketing in (True, False):
        lg = logic(trigger_rules=rules)
        day = 10 * HOUR_MS  # out of the shipped quiet hours (22-8, UTC here)
        out = batch(lg, ev(day, ConsentUpdate(True, True, marketing)))
        # a long dwell on the web: the shipped rule publishes it as a service message
        beats = (ev(day + s * 10_000, Dwell(s * 10_000, "i1", "pv1")) for s in range(1, 5))
        out += batch(lg, *beats)
        for n in (1, 2):  # a repeat visit; segment entries
            out += batch(lg, ev(n * DAY_MS + day, PageView()))
        out += batch(lg, ev(3 * DAY_MS + day, AddToCart("i1", 1, 900, "EUR")))
        out += list(lg.on_eof()[0])
        kinds = {t.kind for t in of(out, Trigger)}
        if marketing:
            assert {"long_dwell", "cart_abandoned", "segment_entered"} <= kinds
        else:
            assert kinds == set()


class RecordingRules(TriggerRules):
    """Trigger rules that also keep what each decision was given and what it decided."""

    def __init__(self, rules: TriggerRules) -> None:
        super().__init__(rules.rules, rules.settings, rules.policies, rules.source)
        self.decisions: list[tuple[str, bool | None, Decision]] = []

    def decide(self, trigger: Trigger, ctx: TriggerContext, history: TriggerHistory) -> Decision:
        decision = super().decide(trigger, ctx, history)
        self.decisions.append((trigger.kind, ctx.marketing_consent, decision))
        return decision


NAMING_CONSENT = Path(__file__).resolve().parents[1] / "data" / "rules_naming_consent.yaml"


def test_without_marketing_consent_the_rules_hold_every_trigger_personalization_goes_on() -> None:
    """The rules read the user's real marketing consent: refused, a user who allows
    personalization is segmented, scored and recommended, and no trigger goes out, under
    the shipped rules and under rules that name their consent themselves; allowed, the
    same events publish every kind."""
    items = [ItemUpdate(f"i{n}", f"item {n}", ("home", "kitchen"), 900, "EUR", True, 0, 0)
             for n in range(1, 6)]  # fmt: skip
    high = {"version": 1, "mean": {}, "std": {}, "weights": {}, "intercept": math.log(9)}
    kinds = {"long_dwell", "repeat_visit", "segment_entered", "cart_abandoned", "high_propensity"}
    names = load_rules().names
    for path in (None, NAMING_CONSENT):  # the shipped rules; rules naming their consent
        for marketing in (False, True):
            rules = RecordingRules(load_trigger_rules(path, segments=names, kinds=KINDS))
            board = LocalModelBoard()
            board.put(ModelSnapshot(1, T0, 10, None, {}, {"i2": 1.0}, {}, high, {}).to_bytes())
            lg = logic(trigger_rules=rules, models=ModelReader(board, catalogue_of(items)))
            day = 10 * HOUR_MS  # out of the shipped quiet hours (22-8, UTC here)
            out = batch(lg, ev(day, ConsentUpdate(True, True, marketing)))
            out += batch(
                lg, *(ev(day + s * 10_000, Dwell(s * 10_000, "i1", "pv1")) for s in (1, 4))
            )
            out += batch(lg, ev(day + MINUTE_MS, ProductView("i1")))
            for n in (1, 2):  # a repeat visit
                out += batch(lg, ev(n * DAY_MS + day, PageView()))
            out += batch(lg, ev(3 * DAY_MS + day, AddToCart("i1", 1, 900, "EUR")))
            out += list(lg.on_eof()[0])
            # personalization goes on either way: segments, scores, recommendations
            entered = [c for c in of(out, SegmentChange) if c.change == "ENTERED"]
            assert entered and of(out, SegmentsWrite)
            assert of(out, RecsWrite) and of(out, ProfileWrite)
            assert {k for k, _, _ in rules.decisions} >= kinds  # every kind reached the rules
            assert {consent for _, consent, _ in rules.decisions} == {marketing}
            published = {t.kind for t in of(out, Trigger)}
            if marketing:
                assert published >= kinds
            else:
                assert published == set()
                for _, _, decision in rules.decisions:
                    assert decision.published == []
                    assert {reason for _, reason in decision.suppressed} == {"no marketing consent"}


def test_withdrawing_marketing_drops_the_pending_cart_and_the_trigger_history() -> None:
    lg = logic()
    batch(lg, ev(0, GRANT))
    (first,) = of(
        batch(lg, *(ev(s * 10_000, Dwell(s * 10_000, "i1", "pv1")) for s in range(1, 5))),
        Trigger,
    )
    assert first.kind == "long_dwell"
    batch(lg, ev(HOUR_MS, AddToCart("i1", 1, 900, "EUR")))  # a cart waits
    st = lg.state
    assert st is not None and st.trig.dwell_fired
    out = batch(lg, ev(HOUR_MS + MINUTE_MS, ConsentUpdate(marketing=False)))
    assert of(out, Trigger) == []
    assert st.trig.dwell_fired == [] and st.trig.history == TriggerHistory()
    assert st.events and of(out, ProfileWrite)  # personalization goes on
    # consent back before the cart would be due: that cart still does not fire
    batch(lg, ev(HOUR_MS + 2 * MINUTE_MS, ConsentUpdate(marketing=True)))
    assert of(list(lg.on_eof()[0]), Trigger) == []
    # a new cart after the consent does
    batch(lg, ev(2 * HOUR_MS, AddToCart("i2", 1, 500, "EUR")))
    assert [t.kind for t in of(list(lg.on_eof()[0]), Trigger)] == ["cart_abandoned"]


# --- analytics consent ----------------------------------------------------------------------


def test_without_analytics_consent_no_session_vector_reaches_the_shared_learner() -> None:
    for analytics in (True, False):
        lg = logic(board=LocalBoard())
        out = batch(lg, ev(0, ConsentUpdate(analytics, True, True)))
        for day in (1, 2, 3):
            out += batch(lg, ev(day * DAY_MS, ProductView("i1")))
        assert len(of(out, ClusterVector)) == (3 if analytics else 0)
        assert lg.state is not None and lg.state.vectors == (3 if analytics else 0)
        assert of(out, ProfileWrite)  # analytics does not gate personalization


# --- anonymous visitors and login ------------------------------------------------------------


def test_consent_given_while_anonymous_carries_over_at_login() -> None:
    policy = EU_OPT_IN
    st = None
    deny = ev(0, ConsentUpdate(True, False, False), user=None, anon="a1")
    views = [ev(i * MINUTE_MS, ProductView(f"i{i}"), user=None, anon="a1") for i in (1, 2)]
    for e in (deny, *views):
        st, routed = identity_step(st, e, policy)
        assert routed == [("a1", e)]  # the anonymous key gets them (and withholds them)
    assert st is not None and st.buffer == [] and st.consents == [deny]  # no copies kept
    st, routed = identity_step(st, Link("a1", "u1", T0 + 5 * MINUTE_MS), policy)
    handed = HandedOver("a1", "u1", T0 + 5 * MINUTE_MS, 1, (deny,))
    assert routed == [("a1", Forget("a1", "u1", T0 + 5 * MINUTE_MS)), ("u1", handed)]
    # the user's step: the login arrives, then the handed-over consent: the denial wins
    lg = logic(policy)
    login = ev(5 * MINUTE_MS, Identify(), anon="a1", ctx=US)  # US: opt-out, processed
    assert of(batch(lg, login), ProfileWrite)
    out, _ = lg.on_batch([("u1", handed)])  # the visitor's denial is the latest statement
    out = list(out)
    assert ForgetUser("u1", ("every_audience", "new_visitor")) in out
    assert lg.state is not None and lg.state.events == 0
    assert of(batch(lg, ev(6 * MINUTE_MS, ProductView("i9"), ctx=US)), ProfileWrite) == []


def test_a_later_statement_made_logged_in_beats_an_older_anonymous_one() -> None:
    lg = logic()
    batch(lg, ev(10 * MINUTE_MS, ConsentUpdate(personalization=True)))
    older = ev(0, ConsentUpdate(personalization=False), user=None, anon="a1")  # handed over
    out = batch(lg, older, ev(11 * MINUTE_MS, ProductView("i1")))  # handed over at login
    assert of(out, ProfileWrite)[0].fields["product_views"] == "1"


def test_the_login_leaves_an_alias_only_with_personalization_consent() -> None:
    for given in (True, False):
        lg = logic()
        out = batch(lg, ev(0, ConsentUpdate(True, given, False), anon="a1"))
        out += batch(lg, ev(MINUTE_MS, Identify(), anon="a1"))
        assert (AliasWrite("a1", "u1") in out) is given
        if not given:  # the anonymous id's keys, alias included, are deleted
            assert ForgetUser("a1") in out
    # the anonymous key's own forget leaves the alias key to the user's step
    lg = logic()
    batch(lg, ev(0, GRANT, user=None, anon="a2"))
    forgot, discard = lg.on_batch([("a2", Forget("a2", "u1", T0 + MINUTE_MS))])
    assert discard is True and ForgetUser("a2", ("new_visitor",), keep_alias=True) in list(forgot)


def test_withdrawal_while_anonymous_empties_the_hand_over_buffer() -> None:
    st = None
    for i in range(3):
        st, _ = identity_step(st, ev(i, ProductView("i"), user=None, anon="a1"), ConsentPolicy())
    assert st is not None and len(st.buffer) == 3
    st, _ = identity_step(st, ev(9, ConsentUpdate(personalization=False), None, "a1"))
    assert st is not None and st.buffer == []  # no policy needed: the statement is explicit
    for i in range(MAX_CONSENT_EVENTS + 3):
        st, _ = identity_step(st, ev(10 + i, ConsentUpdate(marketing=True), None, "a1"))
    assert st is not None and len(st.consents) == MAX_CONSENT_EVENTS  # bounded


# --- erasure ---------------------------------------------------------------------------------


def erased_user(policy: ConsentPolicy | None = None) -> tuple[UserLogic, list[Any]]:
    lg = logic(policy, board=LocalBoard(), clock=FixedClock(T0 + DAY_MS))
    batch(
        lg,
        ev(0, GRANT, user=None, anon="a1"),
        ev(MINUTE_MS, ProductView("i1"), anon="a1"),
        key="u1",
    )
    batch(lg, ev(DAY_MS, AddToCart("i1", 2, 900, "EUR")))  # a second session: one vector
    assert lg.state is not None
    lg.state.cluster = 2  # as assigned from published parameters
    out = batch(lg, ev(DAY_MS + HOUR_MS, ErasureRequest("req-1", "user asked"), anon="a1"))
    return lg, out


def test_erasure_removes_everything_and_confirms_what() -> None:
    lg, out = erased_user()
    keys = RedisKeys()
    (conf,) = of(out, ErasureConfirmation)
    assert conf.user_id == "u1" and conf.request_id == "req-1"
    assert conf.request_time == T0 + DAY_MS + HOUR_MS and conf.processed_time == T0 + DAY_MS
    assert conf.request_event_id.startswith("e")
    assert conf.redis_keys == (*keys.user_keys("u1"), *keys.user_keys("a1"))
    exited = sorted(c.segment for c in of(out, SegmentChange) if c.change == "EXITED")
    assert "persona_2" in exited
    assert conf.audiences == tuple(keys.audience(a) for a in exited)
    assert conf.anonymous_ids == ("a1",)
    assert conf.model_data == ("persona assignment persona_2",)
    assert "cart: 1 lines" in conf.state_items and "consent state" in conf.state_items
    assert any(item == "counters: 3 events" for item in conf.state_items)
    assert conf.not_removed and "1 session vectors" in conf.not_removed[0]
    assert "tombstone" in conf.retained[0]
    assert (
        ForgetUser("u1", tuple(sorted({"every_audience", *exited}))) in out
        and ForgetUser("a1") in out
    )
    st = lg.state
    assert st is not None and st.erased_at == T0 + DAY_MS + HOUR_MS
    assert st == UserState("u1", erased_at=st.erased_at, seen=st.seen, active_ms=st.active_ms)
    assert of(out, ProfileWrite) == []
    assert pickle.loads(lg.snapshot()) == st  # what a recovery snapshot holds from now on


@pytest.mark.parametrize(("policy", "processed"), [(ConsentPolicy(), True), (EU_OPT_IN, False)])
def test_after_erasure_later_events_are_a_new_user_only_if_consent_allows(
    policy: ConsentPolicy, processed: bool
) -> None:
    lg, _ = erased_user(policy)
    late = ev(DAY_MS + 30 * MINUTE_MS, ProductView("i5"))  # history from before the request
    assert batch(lg, late) == []
    out = batch(lg, ev(2 * DAY_MS, ProductView("i6")))  # consent was reset to the default
    profiles = of(out, ProfileWrite)
    if processed:
        assert profiles[0].fields["events"] == "1"
        assert profiles[0].fields["first_seen_ms"] == str(T0 + 2 * DAY_MS)
    else:
        assert profiles == [] and lg.state is not None and lg.state.events == 0
        out = batch(lg, ev(2 * DAY_MS + 1, ConsentUpdate(personalization=True)))
        assert of(out, ProfileWrite)[0].fields["events"] == "1"


def test_erasure_empties_the_identity_state_of_the_anonymous_ids_it_names() -> None:
    st = None
    for i in range(3):
        st, _ = identity_step(st, ev(i, ProductView("i"), user=None, anon="a1"))
    request = ev(10, ErasureRequest("r"), user=None, anon="a1")
    st, routed = identity_step(st, request)
    assert routed == [("a1", request)]  # unlinked: to the anonymous key
    assert st == IdentityState(erased_at=T0 + 10)  # a tombstone: the request's time
    # a lagging partition delivers an older anonymous event: dropped; a newer one is new
    assert identity_step(st, ev(5, PageView(), user=None, anon="a1"))[1] == []
    newer = ev(11, PageView(), user=None, anon="a1")
    assert identity_step(st, newer)[1] == [("a1", newer)]
    # linked: the user gets the request directly; the link stays for late events
    st, _ = identity_step(None, Link("a2", "u1", T0))
    both = ev(20, ErasureRequest("r"), user="u1", anon="a2")
    assert identity_input(both) is both
    assert identity_input(ev(20, PageView(), user="u1", anon="a2")) is None
    st, routed = identity_step(st, both)
    assert routed == [] and st == IdentityState(user_id="u1", erased_at=T0 + 20)
    late = ev(15, PageView(), user=None, anon="a2")
    assert identity_step(st, late)[1] == [("u1", late)]  # the user's tombstone drops it


# --- retention -----------------------------------------------------------------------------


def test_idle_user_state_is_evicted_after_the_ttl_and_leaves_its_audiences() -> None:
    clock = FixedClock(T0)
    lg = logic(clock=clock, state_ttl=timedelta(hours=2))
    batch(lg, ev(0, GRANT), ev(MINUTE_MS, ProductView("i1")))
    # first the idle freeze (user_logic.IDLE_FREEZE after its batch), then the TTL
    assert lg.notify_at().timestamp() * 1000 == T0 + MINUTE_MS  # type: ignore[union-attr]
    clock.advance(MINUTE_MS)
    assert lg.on_notify() == ([], False)
    assert lg.notify_at().timestamp() * 1000 == T0 + 2 * HOUR_MS  # type: ignore[union-attr]
    clock.advance(2 * HOUR_MS - MINUTE_MS - 1)
    out, discard = lg.on_notify()
    assert discard is False
    # a restart from a snapshot does not restart the wait
    restored = UserLogic(lg.snapshot(), lg.cfg)
    clock.advance(1)
    out, discard = restored.on_notify()
    assert discard is True
    out = list(out)
    assert SegmentsWrite("u1", (), ("new_visitor",)) in out
    assert [(c.segment, c.change) for c in of(out, SegmentChange)] == [("new_visitor", "EXITED")]


def test_idle_identity_state_is_evicted_after_the_ttl() -> None:
    clock = FixedClock(T0)
    il = IdentityLogic(None, timedelta(hours=1), ConsentPolicy(), clock)
    il.on_batch([ev(0, ProductView("i1"), user=None, anon="a1")])
    assert il.state is not None and len(il.state.buffer) == 1
    clock.advance(HOUR_MS - 1)
    assert il.on_notify() == ([], False)
    restored = IdentityLogic(il.snapshot(), timedelta(hours=1), ConsentPolicy(), clock)
    clock.advance(1)
    assert restored.on_notify() == ([], True)
    assert restored.notify_at().timestamp() * 1000 == T0 + HOUR_MS  # type: ignore[union-attr]


def test_every_user_key_written_gets_a_ttl() -> None:
    keys = RedisKeys()
    ops: list[RedisOp] = [
        ProfileWrite("u1", {"events": "1"}),
        SegmentsWrite("u1", ("vip",), ()),
        AliasWrite("a1", "u1"),
        ForgetUser("u2", ("vip",)),
        ProfileWrite("u2", {"events": "1"}),
    ]
    commands = plan(ops, keys=keys, ttl_s=77, now_s=1_767_000_000.0)
    written = {c[1] for c in commands if c[0] in {"HSET", "SADD", "SET"}}
    assert written
    alias_bucket = keys.alias_bucket("a1", keys.alias_generation(1_767_000_000.0))
    assert alias_bucket in written
    for key in written:
        assert (
            ("EXPIRE", key, 77) in commands
            or any(c[0] == "SET" and c[1] == key and c[-2:] == ("EX", 77) for c in commands)
            # an alias bucket: until the end of the generation after its own
            or any(c[:2] == ("EXPIREAT", key) and int(c[2]) > 1_767_000_000 for c in commands)
        ), key
