"""The trigger rules engine (operators/rules.py): conditions, policies, ids, files, docs."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attune.flows.topics import DEFAULT_TRIGGER_KINDS
from attune.operators.conditions import CHANNELS, DEVICES
from attune.operators.events import Trigger
from attune.operators.rule_files import (
    RuleError,
    TriggerRuleError,
    load_rules,
    load_trigger_rules,
    parse_trigger_rules,
)
from attune.operators.rules import (
    DEFAULT_RULE,
    HISTORY_MAX,
    Decision,
    TriggerContext,
    TriggerHistory,
    TriggerRules,
    trigger_id_for,
)

ROOT = Path(__file__).parents[2]
H = 3_600_000
# 2024-01-15 12:00:00 UTC, a Monday in winter: Berlin is UTC+1, New York UTC-5, Kolkata +5:30.
NOON_UTC = 1_705_320_000_000
DEFAULTS = load_trigger_rules()
YES = TriggerContext(marketing_consent=True, timezone="UTC", channel="WEB")


def trig(
    kind: str = "cart_abandoned",
    at: int = NOON_UTC,
    tid: str = "t1",
    scores: dict[str, float] | None = None,
    **kw: Any,
) -> Trigger:
    return Trigger(
        trigger_id=tid,
        kind=kind,
        user_id="u1",
        cause_event_time=at,
        emit_time=at + 5,
        reason=f"{kind} fired",
        scores=scores or {},
        **kw,
    )


def ctx(**kw: Any) -> TriggerContext:
    base: dict[str, Any] = {"marketing_consent": True, "timezone": "UTC", "channel": "WEB"}
    base.update(kw)
    return TriggerContext(**base)


def rules(body: str, head: str = "") -> TriggerRules:
    """Rules from YAML, with no global policies unless ``head`` declares them."""
    return parse_trigger_rules(head + "rules:\n" + body, "test.yaml")


def published(
    r: TriggerRules, t: Trigger, c: TriggerContext, h: TriggerHistory | None = None
) -> list[tuple[str, str | None]]:
    return [
        (p.kind, p.attributes.get("rule"))
        for p in r.decide(t, c, h if h is not None else TriggerHistory()).published
    ]


# --- shipped defaults ---------------------------------------------------------------------------


def test_shipped_defaults_names_and_policies() -> None:
    assert DEFAULTS.names == (
        "high_value_cart_offer",
        "cart_reminder",
        "dwell_content_nudge",
        "welcome_back",
        "segment_entered",
    )
    assert str(DEFAULTS.policies.quiet_hours) == "22-8"
    assert str(DEFAULTS.policies.cap) == "3 per 1d"
    assert DEFAULTS.policies.cooldown_for("cart_abandoned") == 4 * H
    assert DEFAULTS.policies.cooldown_for("repeat_visit") is None
    assert DEFAULTS.settings.default == "publish"
    assert DEFAULTS.settings.consent_default == "deny"
    assert DEFAULTS.horizon_ms == 24 * H


def test_shipped_defaults_name_real_segments_and_kinds() -> None:
    strict = load_trigger_rules(segments=load_rules().names, kinds=DEFAULT_TRIGGER_KINDS)
    assert strict.names == DEFAULTS.names


def test_each_shipped_rule_has_an_intent_comment() -> None:
    text = (ROOT / "flows" / "rules.yaml").read_text()
    for name in DEFAULTS.names:
        assert re.search(rf"# Intent: [^\n]+\n(?:\s*#[^\n]*\n)*\s*- name: {name}\n", text), name


def test_issue_example_high_value_cart_gets_the_ten_percent_offer() -> None:
    t = trigger_cart = trig(cart_value_minor=12_000, currency="EUR")
    decision = DEFAULTS.decide(t, ctx(segments=frozenset({"high_value"})), TriggerHistory())
    assert decision.suppressed == []
    [offer] = decision.published
    assert offer.kind == "cart_abandoned"
    assert offer.attributes == {
        "offer_code": "TENOFF",
        "template_id": "cart_offer_10",
        "rule": "high_value_cart_offer",
    }
    assert offer.trigger_id == trigger_id_for("t1", "cart_message")
    # The cause and payload are carried over unchanged.
    assert (offer.user_id, offer.cause_event_time, offer.emit_time, offer.reason) == (
        "u1",
        trigger_cart.cause_event_time,
        trigger_cart.emit_time,
        trigger_cart.reason,
    )
    assert (offer.cart_value_minor, offer.currency) == (12_000, "EUR")


def test_other_carts_get_a_plain_reminder() -> None:
    [reminder] = DEFAULTS.decide(trig(), ctx(), TriggerHistory()).published
    assert reminder.attributes == {"template_id": "cart_reminder", "rule": "cart_reminder"}


def test_long_dwell_is_a_service_nudge_in_session_only() -> None:
    night_no_consent = ctx(marketing_consent=False, timezone="Europe/Berlin")
    late = NOON_UTC + 11 * H  # 00:00 in Berlin
    assert published(DEFAULTS, trig("long_dwell", late), night_no_consent) == [
        ("long_dwell", "dwell_content_nudge")
    ]
    email = ctx(channel="EMAIL")
    # Outside a session the trigger matches no rule: the default publishes it as is (marketing).
    assert DEFAULTS.decide(trig("long_dwell"), email, TriggerHistory()).published == [
        trig("long_dwell")
    ]


@pytest.mark.parametrize(
    ("kind", "rule"),
    [("repeat_visit", "welcome_back"), ("segment_entered", "segment_entered")],
)
def test_repeat_visit_and_segment_entered_are_published(kind: str, rule: str) -> None:
    assert published(DEFAULTS, trig(kind), ctx()) == [(kind, rule)]


def test_unmatched_kinds_are_published_as_is_under_the_policies() -> None:
    t = trig("segment_exited", segment="new_visitor")
    assert DEFAULTS.decide(t, ctx(), TriggerHistory()).published == [t]
    assert DEFAULTS.decide(t, ctx(marketing_consent=None), TriggerHistory()).suppressed == [
        (DEFAULT_RULE, "marketing consent unknown (consent_default: deny)")
    ]


# --- conditions -------------------------------------------------------------------------------

PUBLISH = "    publish: {}\n"


def one(when: str, head: str = "") -> TriggerRules:
    return rules(f"  - name: r\n    description: d\n    when: {when}\n" + PUBLISH, head)


def matches(r: TriggerRules, t: Trigger, c: TriggerContext) -> bool:
    return bool(published(r, t, c))


def test_kind_one_or_a_list() -> None:
    single = one("{kind: long_dwell}", "settings: {default: drop}\n")
    assert matches(single, trig("long_dwell"), ctx())
    assert not matches(single, trig("repeat_visit"), ctx())
    several = one("{kind: [long_dwell, repeat_visit]}", "settings: {default: drop}\n")
    assert matches(several, trig("repeat_visit"), ctx())
    assert not matches(several, trig("cart_abandoned"), ctx())


def test_feature_conditions_use_the_segment_grammar() -> None:
    r = one(
        "\n      all:\n        - {kind: cart_abandoned}\n"
        "        - any:\n            - {feature: cart_value_minor, op: '>=', value: 10000}\n"
        "            - {feature: purchases, op: '>', value: 3}\n"
        "        - not: {feature: device_top, op: '==', value: TABLET}\n",
        "settings: {default: drop}\n",
    )
    assert matches(r, trig(), ctx(features={"cart_value_minor": 10_000, "purchases": 0}))
    assert matches(r, trig(), ctx(features={"cart_value_minor": 0, "purchases": 4}))
    assert not matches(r, trig(), ctx(features={"cart_value_minor": 0, "purchases": 1}))
    tablet = {"cart_value_minor": 20_000, "device_top": "TABLET"}
    assert not matches(r, trig(), ctx(features=tablet))
    assert not matches(r, trig("long_dwell"), ctx(features={"cart_value_minor": 10_000}))
    # None and missing features compare false, as in segments.
    assert not matches(r, trig(), ctx(features={}))


def test_segments_in_and_not_in() -> None:
    r = one(
        "{in_segment: [high_value, frequent_buyer], not_in_segment: lapsed}",
        "settings: {default: drop}\n",
    )
    assert matches(r, trig(), ctx(segments=frozenset({"frequent_buyer"})))
    assert not matches(r, trig(), ctx(segments=frozenset({"frequent_buyer", "lapsed"})))
    assert not matches(r, trig(), ctx(segments=frozenset({"new_visitor"})))
    assert not matches(r, trig(), ctx())


def test_score_leaf_reads_the_triggers_scores() -> None:
    r = one("{score: {name: propensity, op: '>=', value: 0.7}}", "settings: {default: drop}\n")
    assert matches(r, trig("high_propensity", scores={"propensity": 0.7}), ctx())
    assert not matches(r, trig("high_propensity", scores={"propensity": 0.69}), ctx())
    assert not matches(r, trig("high_propensity"), ctx())  # no score: false
    missing = one("{score: {name: propensity, op: is_null}}", "settings: {default: drop}\n")
    assert matches(missing, trig(), ctx())
    assert not matches(missing, trig(scores={"propensity": 0.1}), ctx())


def test_any_combines_segment_and_score() -> None:
    r = one(
        "\n      any:\n        - {in_segment: high_value}\n"
        "        - {score: {name: propensity, op: '>', value: 0.8}}\n",
        "settings: {default: drop}\n",
    )
    assert matches(r, trig(scores={"propensity": 0.9}), ctx())
    assert matches(r, trig(), ctx(segments=frozenset({"high_value"})))
    assert not matches(r, trig(scores={"propensity": 0.5}), ctx())


@pytest.mark.parametrize(
    ("timezone", "utc_hour", "expected"),
    [
        ("UTC", 9, True),
        ("UTC", 8, False),
        ("UTC", 20, True),
        ("UTC", 21, False),  # 'to' is exclusive
        ("Europe/Berlin", 8, True),  # 09:00 in Berlin (winter, UTC+1)
        ("Europe/Berlin", 20, False),  # 21:00 in Berlin
        ("America/New_York", 13, False),  # 08:00 in New York
        ("America/New_York", 14, True),  # 09:00 in New York
        ("Asia/Kolkata", 3, False),  # 08:30 in Kolkata
        ("Asia/Kolkata", 4, True),  # 09:30 in Kolkata
    ],
)
def test_hours_in_the_users_timezone(timezone: str, utc_hour: int, expected: bool) -> None:
    r = one("{hours: {from: 9, to: 21}}", "settings: {default: drop}\n")
    at = NOON_UTC + (utc_hour - 12) * H
    assert matches(r, trig(at=at), ctx(timezone=timezone)) is expected


def test_hours_follow_daylight_saving_time() -> None:
    r = one("{hours: {from: 9, to: 21}}", "settings: {default: drop}\n")
    july_8_utc = NOON_UTC + 182 * 24 * H - 4 * H  # 2024-07-15 08:00 UTC = 10:00 CEST
    assert matches(r, trig(at=july_8_utc - H), ctx(timezone="Europe/Berlin"))  # 09:00 CEST
    assert not matches(r, trig(at=july_8_utc - H), ctx(timezone="Europe/London"))  # 08:00 BST


def test_hours_window_wraps_past_midnight() -> None:
    r = one("{hours: {from: 22, to: 6}}", "settings: {default: drop}\n")
    hits = [h for h in range(24) if matches(r, trig(at=NOON_UTC + (h - 12) * H), ctx())]
    assert hits == [0, 1, 2, 3, 4, 5, 22, 23]


@pytest.mark.parametrize("timezone", [None, "", "Mars/Olympus_Mons", "../etc/passwd", "Europe"])
def test_unknown_timezone_is_unknown_not_a_crash(timezone: str | None) -> None:
    r = one("{hours: {from: 0, to: 24}}", "settings: {default: drop}\n")
    # An hours condition is false when the local hour is unknown...
    assert not matches(r, trig(), ctx(timezone=timezone))
    # ...unless the file names a default timezone for such users.
    with_default = one(
        "{hours: {from: 12, to: 13}}",
        "settings: {default: drop, default_timezone: UTC}\n",
    )
    assert matches(with_default, trig(), ctx(timezone=timezone))


def test_channel() -> None:
    r = one("{channel: [WEB, APP]}", "settings: {default: drop}\n")
    assert matches(r, trig(), ctx(channel="APP"))
    assert not matches(r, trig(), ctx(channel="EMAIL"))
    assert not matches(r, trig(), ctx(channel=None))


def test_channels_are_the_avro_enum_symbols() -> None:
    schema = json.loads((ROOT / "avro" / "attune.event.Context.avsc").read_text())
    [channel] = [f for f in schema["fields"] if f["name"] == "channel"]
    assert tuple(channel["type"][1]["symbols"]) == CHANNELS


def test_a_rule_without_when_matches_every_trigger() -> None:
    r = rules("  - name: all\n    description: d\n" + PUBLISH)
    assert published(r, trig("anything"), ctx()) == [("anything", "all")]


# --- actions and ordering ------------------------------------------------------------------------

ORDERED = """\
  - name: offer
    description: publish first
    when: {kind: cart_abandoned}
    publish:
      attributes: {template_id: offer}
  - name: staff
    description: no triggers for staff
    when: {in_segment: staff}
    suppress: staff account
  - name: test_users
    description: no triggers for test users
    when: {in_segment: [staff, test]}
    suppress: test account
  - name: also
    description: publish to another topic
    when: {kind: cart_abandoned}
    publish:
      kind: cart_offer
      attributes: {template_id: also}
"""


def test_every_matching_publish_yields_a_trigger() -> None:
    r = rules(ORDERED)
    d = r.decide(trig(), ctx(), TriggerHistory())
    assert [(p.kind, p.attributes["template_id"]) for p in d.published] == [
        ("cart_abandoned", "offer"),
        ("cart_offer", "also"),
    ]
    assert len({p.trigger_id for p in d.published}) == 2
    assert r.output_kinds == {"cart_offer"}


def test_the_first_matching_suppress_drops_the_trigger_wherever_it_is() -> None:
    r = rules(ORDERED)
    history = TriggerHistory()
    # 'staff' matches after 'offer' and before 'test_users': nothing is published and the
    # first matching suppress is the one reported.
    d = r.decide(trig(), ctx(segments=frozenset({"staff"})), history)
    assert d == Decision([], [("staff", "staff account")])
    assert r.decide(trig(), ctx(segments=frozenset({"test"})), history).suppressed == [
        ("test_users", "test account")
    ]
    assert history.times == {}


def test_attributes_merge_over_the_inputs() -> None:
    r = rules(ORDERED)
    t = trig(attributes={"template_id": "raw", "source": "timer"})
    first = r.decide(t, ctx(), TriggerHistory()).published[0]
    assert first.attributes == {"template_id": "offer", "source": "timer", "rule": "offer"}


def test_default_publish_or_drop() -> None:
    body = "  - name: r\n    description: d\n    when: {kind: long_dwell}\n" + PUBLISH
    t = trig("repeat_visit")
    assert rules(body).decide(t, ctx(), TriggerHistory()).published == [t]
    dropped = rules(body, "settings: {default: drop}\n").decide(t, ctx(), TriggerHistory())
    assert dropped == Decision([], [(DEFAULT_RULE, "no rule matched (default: drop)")])


# --- deterministic ids -------------------------------------------------------------------------


def test_trigger_ids_are_deterministic_per_input_and_rule() -> None:
    r = rules(ORDERED)
    a = [p.trigger_id for p in r.decide(trig(tid="x"), ctx(), TriggerHistory()).published]
    b = [p.trigger_id for p in r.decide(trig(tid="x"), ctx(), TriggerHistory()).published]
    c = [p.trigger_id for p in r.decide(trig(tid="y"), ctx(), TriggerHistory()).published]
    assert a == b
    assert a[0] != a[1]  # another rule, another id
    assert not set(a) & set(c)  # another cause, other ids
    assert a == [trigger_id_for("x", "offer"), trigger_id_for("x", "also")]
    assert re.fullmatch(r"[0-9a-f]{32}", a[0])


ALTERNATIVES = """\
  - name: offer
    description: big spenders get an offer
    when: {kind: cart_abandoned, in_segment: high_value}
    message: cart_message
    publish: {attributes: {template_id: offer}}
  - name: reminder
    description: everyone a reminder
    when: {kind: cart_abandoned}
    message: cart_message
    publish: {attributes: {template_id: reminder}}
  - name: also
    description: a rule of its own
    when: {kind: cart_abandoned}
    publish: {kind: cart_offer}
"""


def test_rules_sharing_a_message_are_alternatives_with_one_id() -> None:
    r = rules(ALTERNATIVES)
    vip = r.decide(trig(tid="x"), ctx(segments=frozenset({"high_value"})), TriggerHistory())
    plain = r.decide(trig(tid="x"), ctx(), TriggerHistory())
    assert [p.attributes["rule"] for p in vip.published] == ["offer", "also"]
    assert vip.suppressed == [("reminder", "message cart_message already published")]
    assert [p.attributes["rule"] for p in plain.published] == ["reminder", "also"]
    # whichever alternative published, the message has one id: an app acting once per
    # id never sends both, also when a replay judged the segment differently
    assert vip.published[0].trigger_id == plain.published[0].trigger_id
    assert vip.published[0].trigger_id == trigger_id_for("x", "cart_message")
    assert plain.published[1].trigger_id == trigger_id_for("x", "also")


def test_a_held_alternative_lets_the_next_one_publish() -> None:
    offer = "    publish: {attributes: {template_id: offer}}"
    cooled = ALTERNATIVES.replace(offer, "    cooldown: 1d\n" + offer)
    r = rules(cooled)
    h = TriggerHistory()
    vip = ctx(segments=frozenset({"high_value"}))
    r.decide(trig(tid="x"), vip, h)
    again = r.decide(trig(tid="y", at=NOON_UTC + 3_600_000), vip, h)
    assert again.suppressed[0] == ("offer", "cooldown 1d for cart_abandoned")
    assert [p.attributes["rule"] for p in again.published] == ["reminder", "also"]


# --- policies ------------------------------------------------------------------------------------

ANY = "  - name: r\n    description: d\n    when: {kind: [cart_abandoned, repeat_visit]}\n"


def test_cap_per_user_and_kind_in_event_time() -> None:
    r = rules(ANY + PUBLISH, "policies: {cap: {max: 2, per: 24h}}\n")
    h = TriggerHistory()
    hours = [0, 12, 18, 24]
    out = [bool(published(r, trig(at=NOON_UTC + x * H, tid=f"t{x}"), ctx(), h)) for x in hours]
    assert out == [True, True, False, True]  # at 24h the publish at 0h is out of the window
    d = r.decide(trig(at=NOON_UTC + 19 * H, tid="t5"), ctx(), h)
    assert d.suppressed == [("r", "cap 2 per 1d for cart_abandoned reached")]
    # Another kind has its own count.
    assert published(r, trig("repeat_visit", at=NOON_UTC + 19 * H), ctx(), h)


def test_rule_cap_overrides_the_global_one_and_null_turns_it_off() -> None:
    head = "policies: {cap: {max: 1, per: 1d}}\n"
    h = TriggerHistory()
    stricter = rules(ANY + "    cap: {max: 3, per: 1h}\n" + PUBLISH, head)
    assert [bool(published(stricter, trig(at=NOON_UTC + i), ctx(), h)) for i in range(4)] == [
        True,
        True,
        True,
        False,
    ]
    off = rules(ANY + "    cap: null\n" + PUBLISH, head)
    h = TriggerHistory()
    assert all(published(off, trig(at=NOON_UTC + i), ctx(), h) for i in range(10))


def test_cooldown_after_the_last_publish_of_the_kind() -> None:
    r = rules(ANY + PUBLISH, "policies: {cooldown: {cart_abandoned: 6h}}\n")
    h = TriggerHistory()
    assert published(r, trig(at=NOON_UTC), ctx(), h)
    d = r.decide(trig(at=NOON_UTC + 6 * H - 1), ctx(), h)
    assert d.suppressed == [("r", "cooldown 6h for cart_abandoned")]
    assert published(r, trig("repeat_visit", at=NOON_UTC + H), ctx(), h)  # other kind
    assert published(r, trig(at=NOON_UTC + 6 * H), ctx(), h)
    # A late trigger (earlier event time) is judged against publishes on both sides.
    assert not published(r, trig(at=NOON_UTC + 3 * H), ctx(), h)


def test_rule_cooldown_and_a_cooldown_for_every_kind() -> None:
    every = rules(ANY + PUBLISH, "policies: {cooldown: 1h}\n")
    h = TriggerHistory()
    assert published(every, trig("repeat_visit"), ctx(), h)
    assert not published(every, trig("repeat_visit", at=NOON_UTC + 30 * 60_000), ctx(), h)
    own = rules(ANY + "    cooldown: 2h\n" + PUBLISH, "policies: {cooldown: 1h}\n")
    h = TriggerHistory()
    assert published(own, trig(), ctx(), h)
    assert not published(own, trig(at=NOON_UTC + 90 * 60_000), ctx(), h)


def test_a_held_publish_is_not_recorded() -> None:
    r = rules(ANY + PUBLISH, "policies: {cooldown: 1h}\n")
    h = TriggerHistory()
    assert not published(r, trig(), ctx(marketing_consent=False), h)
    assert h.times == {}
    assert published(r, trig(at=NOON_UTC + 1), ctx(), h)


def test_quiet_hours_suppress_marketing_in_the_users_timezone() -> None:
    r = rules(ANY + PUBLISH, "policies: {quiet_hours: {from: 22, to: 8}}\n")
    at = NOON_UTC + 10 * H  # 22:00 UTC = 23:00 in Berlin = 17:00 in New York
    d = r.decide(trig(at=at), ctx(timezone="Europe/Berlin"), TriggerHistory())
    assert d == Decision([], [("r", "quiet hours 22-8 (local hour 23)")])
    assert published(r, trig(at=at), ctx(timezone="America/New_York"))
    morning = NOON_UTC - 5 * H  # 07:00 UTC = 08:00 in Berlin: quiet hours are over
    assert published(r, trig(at=morning), ctx(timezone="Europe/Berlin"))
    # Unknown timezone: quiet hours cannot be placed, so they do not apply...
    assert published(r, trig(at=at), ctx(timezone="Nowhere/Land"))
    # ...unless a default timezone is set.
    head = (
        "settings: {default_timezone: Europe/Berlin}\npolicies: {quiet_hours: {from: 22, to: 8}}\n"
    )
    assert not published(rules(ANY + PUBLISH, head), trig(at=at), ctx(timezone=None))


def test_quiet_hours_do_not_apply_to_service_unless_the_rule_says() -> None:
    head = "policies: {quiet_hours: {from: 22, to: 8}}\n"
    at = NOON_UTC + 11 * H  # 23:00 UTC
    service = rules(ANY + "    purpose: service\n" + PUBLISH, head)
    assert published(service, trig(at=at), ctx())
    strict = rules(
        ANY + "    purpose: service\n    quiet_hours: {from: 23, to: 7}\n" + PUBLISH, head
    )
    assert not published(strict, trig(at=at), ctx())
    # A marketing rule may turn the global quiet hours off.
    loud = rules(ANY + "    quiet_hours: null\n" + PUBLISH, head)
    assert published(loud, trig(at=at), ctx())


@pytest.mark.parametrize(
    ("consent", "default", "purpose", "reason"),
    [
        (True, "deny", "marketing", None),
        (False, "deny", "marketing", "no marketing consent"),
        (False, "allow", "marketing", "no marketing consent"),
        (None, "deny", "marketing", "marketing consent unknown (consent_default: deny)"),
        (None, "allow", "marketing", None),
        (False, "deny", "service", None),
        (None, "deny", "service", None),
    ],
)
def test_consent(consent: bool | None, default: str, purpose: str, reason: str | None) -> None:
    r = rules(
        ANY + f"    purpose: {purpose}\n" + PUBLISH, f"settings: {{consent_default: {default}}}\n"
    )
    d = r.decide(trig(), ctx(marketing_consent=consent), TriggerHistory())
    if reason is None:
        assert len(d.published) == 1 and not d.suppressed
    else:
        assert d == Decision([], [("r", reason)])


def test_history_is_bounded_by_count_and_horizon() -> None:
    h = TriggerHistory()
    for i in range(100):
        h.record("k", i * 1000, horizon_ms=50_000)
    assert h.times["k"] == [i * 1000 for i in range(84, 100)]
    assert len(h.times["k"]) == HISTORY_MAX
    h.record("k", 1_000_000, horizon_ms=50_000)
    assert h.times["k"] == [1_000_000]
    h.expire(1_000_000)
    assert h.times == {}
    assert pickle.loads(pickle.dumps(TriggerHistory({"a": [1, 2]}))) == TriggerHistory(
        {"a": [1, 2]}
    )


def test_rules_pickle_and_decide_the_same() -> None:
    copy = pickle.loads(pickle.dumps(DEFAULTS))
    assert copy.names == DEFAULTS.names
    c = ctx(segments=frozenset({"high_value"}))
    assert copy.decide(trig(), c, TriggerHistory()) == DEFAULTS.decide(trig(), c, TriggerHistory())


# --- a user file over the shipped defaults ------------------------------------------------------

USER_FILE = """\
settings:
  consent_default: allow
policies:
  cap: {max: 5, per: 12h}
rules:
  - name: cart_reminder
    description: reminder with a free-shipping variant
    when: {kind: cart_abandoned, not_in_segment: high_value}
    publish:
      attributes: {template_id: cart_reminder, content_variant: free_shipping}
  - name: welcome_back
    description: switched off here
    enabled: false
    publish: {}
  - name: propensity_push
    description: a likely buyer gets a push
    when: {score: {name: propensity, op: ">=", value: 0.7}}
    publish:
      attributes: {template_id: likely_buyer}
"""


def test_a_user_file_overrides_by_name_and_adds_rules(tmp_path: Path) -> None:
    user = tmp_path / "mine.yaml"
    user.write_text(USER_FILE)
    merged = load_trigger_rules(extra=user)
    assert merged.names == (
        "high_value_cart_offer",
        "cart_reminder",  # replaced in place
        "dwell_content_nudge",
        "segment_entered",
        "propensity_push",  # appended
    )
    [reminder] = merged.decide(trig(), ctx(), TriggerHistory()).published
    assert reminder.attributes["content_variant"] == "free_shipping"
    # settings and policies: key by key, the rest from the shipped file
    assert merged.settings.consent_default == "allow"
    assert merged.settings.default == "publish"
    assert str(merged.policies.cap) == "5 per 12h"
    assert str(merged.policies.quiet_hours) == "22-8"
    assert merged.policies.cooldown_for("cart_abandoned") == 4 * H
    # welcome_back is gone: a repeat visit falls to the default (as is), under the policies
    t = trig("repeat_visit", scores={"propensity": 0.2})
    assert merged.decide(t, ctx(), TriggerHistory()).published == [t]
    assert published(merged, trig("repeat_visit", scores={"propensity": 0.9}), ctx()) == [
        ("repeat_visit", "propensity_push")
    ]


def test_errors_in_a_user_file_name_the_user_file(tmp_path: Path) -> None:
    user = tmp_path / "mine.yaml"
    user.write_text("rules:\n  - name: x\n    description: d\n    cooldown: 6x\n    publish: {}\n")
    with pytest.raises(TriggerRuleError) as err:
        load_trigger_rules(extra=user)
    assert (err.value.file, err.value.line) == (str(user), 4)


# --- invalid files ---------------------------------------------------------------------------

HEAD = "rules:\n  - name: r\n    description: d\n"


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        pytest.param(
            HEAD + "    when: {feature: cart_valu, op: '>', value: 1}\n" + PUBLISH,
            4,
            "rule 'r': unknown feature 'cart_valu' (did you mean 'cart_value_minor'?)",
            id="unknown-feature",
        ),
        pytest.param(
            HEAD + "    when: {feature: purchases, op: '=>', value: 1}\n" + PUBLISH,
            4,
            "rule 'r': unknown op '=>' on 'purchases'; use one of >, >=, <, <=, ==, !=, in, "
            "not_in, is_null, not_null",
            id="bad-op",
        ),
        pytest.param(
            HEAD + "    when:\n      all:\n        - {kind: cart_abandoned}\n"
            "        - {feature: device_top, op: '>', value: 1}\n" + PUBLISH,
            7,
            "rule 'r': type mismatch: '>' needs a numeric feature, 'device_top' is str|None",
            id="feature-type",
        ),
        pytest.param(
            HEAD + "    when: {score: {name: propensity, op: in, value: 1}}\n" + PUBLISH,
            4,
            "rule 'r': unknown op 'in' on score 'propensity'; use one of >, >=, <, <=, ==, !=, "
            "is_null, not_null",
            id="score-op",
        ),
        pytest.param(
            HEAD + "    when: {score: {name: propensity, op: '>', value: high}}\n" + PUBLISH,
            4,
            "rule 'r': score 'propensity': value 'high' is not a number",
            id="score-value",
        ),
        pytest.param(
            HEAD + "    cooldown: 6x\n" + PUBLISH,
            4,
            "rule 'r': bad duration '6x' for cooldown: use a whole number and a unit "
            "(ms, s, m, h, d), e.g. 6h",
            id="bad-duration",
        ),
        pytest.param(
            "policies:\n  cap: {max: 3, per: 24}\n",
            2,
            "bad duration 24 for cap per: use a whole number and a unit (ms, s, m, h, d), e.g. 6h",
            id="duration-without-unit",
        ),
        pytest.param(
            HEAD + "    cooldown: 0h\n" + PUBLISH,
            4,
            "rule 'r': cooldown must be positive, got '0h'",
            id="zero-duration",
        ),
        pytest.param(
            HEAD + "    when: {hours: {from: 9, to: 25}}\n" + PUBLISH,
            4,
            "rule 'r': bad hour 25 for 'to': use a whole hour 0-24",
            id="bad-hour",
        ),
        pytest.param(
            "policies:\n  quiet_hours: {from: 8, to: 8}\n",
            2,
            "empty hour window: from 8 to 8",
            id="empty-window",
        ),
        pytest.param(
            HEAD + PUBLISH + "  - name: r\n    description: again\n" + PUBLISH,
            5,
            "rule 'r': duplicate rule name (first declared at line 2)",
            id="duplicate-name",
        ),
        pytest.param(
            HEAD + "    when: {kind: cart_abandoned, op: '>'}\n" + PUBLISH,
            4,
            "rule 'r': a condition mixes 'op' with 'kind': write each as its own condition "
            "under 'all'",
            id="mixed-leaf",
        ),
        pytest.param(
            HEAD + "    when: {kinds: cart_abandoned}\n" + PUBLISH,
            4,
            "rule 'r': a condition: unknown key 'kinds' (did you mean 'kind'? expected one of "
            "feature, op, value, kind, in_segment, not_in_segment, score, hours, channel, all, "
            "any, not)",
            id="unknown-condition-key",
        ),
        pytest.param(
            HEAD + "    when: {kind: Cart-Abandoned}\n" + PUBLISH,
            4,
            "rule 'r': bad kind 'Cart-Abandoned': use lower-case letters, digits and '_'",
            id="bad-kind",
        ),
        pytest.param(
            HEAD + "    when: {channel: web}\n" + PUBLISH,
            4,
            "rule 'r': unknown channel 'web' (did you mean 'WEB'?); use one of WEB, APP, "
            "EMAIL, OTHER",
            id="bad-channel",
        ),
        pytest.param(
            HEAD,
            2,
            "rule 'r': a rule needs exactly one action: 'publish' or 'suppress'",
            id="no-action",
        ),
        pytest.param(
            HEAD + "    suppress: staff\n" + PUBLISH,
            2,
            "rule 'r': a rule needs exactly one action: 'publish' or 'suppress'",
            id="two-actions",
        ),
        pytest.param(
            HEAD + "    suppress: staff\n    message: m\n",
            5,
            "rule 'r': 'message' applies to publish rules only",
            id="message-on-suppress",
        ),
        pytest.param(
            HEAD + "    suppress: staff\n    cap: {max: 1, per: 1h}\n",
            5,
            "rule 'r': 'cap' applies to publish rules only",
            id="policy-on-suppress",
        ),
        pytest.param(
            HEAD + "    cap: {max: 50, per: 1h}\n" + PUBLISH,
            4,
            "rule 'r': cap max must be a whole number 1-16 (the history keeps 16 publish "
            "times per kind), got 50",
            id="cap-too-large",
        ),
        pytest.param(
            HEAD + "    publish:\n      attributes: {rule: mine}\n",
            5,
            "rule 'r': attribute 'rule' is reserved: it names the publishing rule",
            id="reserved-attribute",
        ),
        pytest.param(
            HEAD + "    publish:\n      attributes: {discount: 10}\n",
            5,
            "rule 'r': attribute 'discount' must be a string, got 10 (quote it)",
            id="attribute-not-string",
        ),
        pytest.param(
            HEAD + "    purpose: sales\n" + PUBLISH,
            4,
            "rule 'r': purpose must be one of marketing, service, got 'sales'",
            id="bad-purpose",
        ),
        pytest.param(
            HEAD + "    priority: 1\n" + PUBLISH,
            4,
            "rule 'r': a rule: unknown key 'priority' (expected one of name, description, when, "
            "publish, suppress, purpose, cap, cooldown, quiet_hours, enabled, message)",
            id="unknown-rule-key",
        ),
        pytest.param(
            "rules:\n  - description: d\n",
            2,
            "rule #1: missing 'name'",
            id="missing-name",
        ),
        pytest.param(
            "settings: {default_timezone: Europe/Berln}\n",
            1,
            "unknown timezone 'Europe/Berln': use an IANA name such as UTC",
            id="unknown-default-timezone",
        ),
        pytest.param(
            "settings: {default: send}\n",
            1,
            "default must be one of publish, drop, got 'send'",
            id="bad-default",
        ),
        pytest.param(
            HEAD + "    when: {feature: purchases, op: >=, value: 3}\n" + PUBLISH,
            4,
            "YAML syntax error while scanning for the next token: found character '>' that "
            "cannot start any token; quote the operator: op: \">=\" ('>', '!' and '|' are "
            "YAML syntax)",
            id="yaml-syntax",
        ),
        pytest.param("", 0, "empty rule file: expected a mapping with 'rules'", id="empty"),
        pytest.param(
            "rule: []\n",
            1,
            "the rule file: unknown key 'rule' (did you mean 'rules'? expected one of "
            "settings, policies, rules)",
            id="top-level-key",
        ),
        pytest.param("rules: {}\n", 1, "'rules' must be a list, got a mapping", id="not-a-list"),
    ],
)
def test_invalid_rule_files_name_file_line_and_reason(text: str, line: int, reason: str) -> None:
    with pytest.raises(TriggerRuleError) as err:
        parse_trigger_rules(text, "bad.yaml")
    assert (err.value.file, err.value.line, err.value.reason) == ("bad.yaml", line, reason)
    assert str(err.value) == f"bad.yaml:{line}: {reason}"
    assert isinstance(err.value, RuleError | ValueError)


def test_unknown_segments_and_kinds_are_errors_only_when_the_known_names_are_given() -> None:
    text = HEAD + "    when: {kind: cart_abandonned, in_segment: high_valu}\n" + PUBLISH
    assert parse_trigger_rules(text).names == ("r",)  # nothing to check against
    with pytest.raises(TriggerRuleError, match=r"unknown segment 'high_valu' \(did you mean "):
        parse_trigger_rules(text, segments=load_rules().names)
    with pytest.raises(TriggerRuleError, match=r"unknown kind 'cart_abandonned' \(did you mean "):
        parse_trigger_rules(text, kinds=DEFAULT_TRIGGER_KINDS)
    personas = HEAD + "    when: {in_segment: persona_3}\n" + PUBLISH
    assert parse_trigger_rules(personas, segments=["high_value"]).names == ("r",)


# --- property: a replay decides the same -----------------------------------------------------

KINDS = ("cart_abandoned", "long_dwell", "repeat_visit", "segment_entered", "segment_exited")


@st.composite
def trigger_streams(draw: st.DrawFn) -> list[tuple[Trigger, TriggerContext]]:
    n = draw(st.integers(1, 25))
    out = []
    t = NOON_UTC
    for i in range(n):
        t += draw(st.integers(-2 * H, 8 * H))  # out of order now and then
        trigger = trig(
            draw(st.sampled_from(KINDS)),
            at=t,
            tid=f"t{i}",
            scores={"propensity": draw(st.floats(0, 1))},
        )
        c = TriggerContext(
            features={"cart_value_minor": draw(st.integers(0, 20_000))},
            segments=frozenset(draw(st.sets(st.sampled_from(["high_value", "lapsed"])))),
            marketing_consent=draw(st.sampled_from([True, False, None])),
            timezone=draw(st.sampled_from([None, "UTC", "Europe/Berlin", "Asia/Kolkata", "bad"])),
            channel=draw(st.sampled_from([None, *CHANNELS])),
        )
        out.append((trigger, c))
    return out


@settings(max_examples=150, deadline=None)
@given(trigger_streams())
def test_replaying_with_a_fresh_history_decides_the_same(
    stream: list[tuple[Trigger, TriggerContext]],
) -> None:
    def run() -> tuple[list[Decision], TriggerHistory]:
        history = TriggerHistory()
        return [DEFAULTS.decide(t, c, history) for t, c in stream], history

    first, h1 = run()
    second, h2 = run()
    assert first == second
    assert h1 == h2
    # every input is accounted for: published or suppressed, never both empty
    assert all(d.published or d.suppressed for d in first)
    for kind, times in h1.times.items():
        assert len(times) <= HISTORY_MAX
        assert times == sorted(times)
        assert times[-1] - times[0] < DEFAULTS.horizon_ms, kind


# --- docs/triggers.md stays true -----------------------------------------------------------------

DOC = ROOT / "docs" / "triggers.md"


def defaults_table() -> str:
    rows = ["| Rule | Purpose | When | Action |", "|---|---|---|---|"]
    for r in DEFAULTS.rules:
        purpose = r.purpose or DEFAULTS.settings.purpose
        attrs = ", ".join(f"{k}={v}" for k, v in r.attributes.items())
        action = r.describe().split(": ", 1)[1] + (f" ({attrs})" if attrs else "")
        when = r.describe().split(": ", 1)[0].removeprefix("when ")
        rows.append(f"| `{r.name}` | {purpose} | `{when}` | {action} |")
    return "\n".join(rows)


def test_docs_defaults_table_matches_the_shipped_file() -> None:
    match = re.search(
        r"<!-- defaults:begin[^>]*-->\n(.*?)\n<!-- defaults:end -->", DOC.read_text(), re.S
    )
    assert match, "docs/triggers.md has no <!-- defaults:begin/end --> block"
    expected = defaults_table()
    assert match.group(1) == expected, f"docs/triggers.md is stale; the table is:\n{expected}"


def test_docs_examples_are_valid_rule_files() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    files = [b for b in blocks if re.match(r"(settings|policies|rules):", b.lstrip())]
    assert len(files) >= 3
    for text in files:
        parse_trigger_rules(text, "docs/triggers.md", kinds=DEFAULT_TRIGGER_KINDS)


def test_devices_are_the_avro_enum_symbols() -> None:
    schema = json.loads((ROOT / "avro" / "attune.event.Context.avsc").read_text())
    [device] = [f for f in schema["fields"] if f["name"] == "device"]
    assert tuple(device["type"][1]["symbols"]) == DEVICES
