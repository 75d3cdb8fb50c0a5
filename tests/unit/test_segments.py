"""Rule segments: the shipped defaults step by step, validation errors, ordering, a property."""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from attune.operators.conditions import OPS, AllOf, Compare, describe
from attune.operators.events import SegmentChange
from attune.operators.features import FEATURES
from attune.operators.rule_files import RuleError, load_rules, parse_rules
from attune.operators.segments import RuleSet, Segment, membership_changes

MINUTE = 60_000
DAY = 86_400_000
T0 = 1_700_000_000_000
SESSION_GAP_MS = 30 * MINUTE

DEFAULTS = load_rules()


# --- a minimal user timeline: the features the state would compute at each step --------------


@dataclass
class Timeline:
    """Computes the features the default rules read, after each event or timer.

    It follows the meanings in operators/features.py: sessions split at a gap of more
    than 30 minutes, windows end at ``now``. The steps below stay clear of the window
    edges, so they hold whether an edge is inclusive or not.
    """

    features: dict[str, Any] = field(default_factory=dict)
    last_seen: int | None = None
    purchases: list[tuple[int, int]] = field(default_factory=list)  # (time, total)
    priced_views: list[tuple[int, bool]] = field(default_factory=list)  # (time, premium)

    def __post_init__(self) -> None:
        for name, (ftype, _) in FEATURES.items():
            if "None" in ftype:
                self.features[name] = None
            else:
                self.features[name] = 0.0 if ftype == "float" else 0

    def _event(self, now: int) -> None:
        f = self.features
        if self.last_seen is None or now - self.last_seen > SESSION_GAP_MS:
            f["sessions"] += 1
            for name in ("session_product_views", "session_add_to_carts", "session_purchases"):
                f[name] = 0
        self.last_seen = now

    def _refresh(self, now: int) -> dict[str, Any]:
        f = self.features
        recent = [(t, v) for t, v in self.purchases if t >= now - 30 * DAY]
        f["purchases_30d"] = len(recent)
        f["revenue_30d_minor"] = sum(v for _, v in recent)
        if self.purchases:
            f["days_since_last_purchase"] = (now - self.purchases[-1][0]) / DAY
        views = [p for t, p in self.priced_views if t >= now - 7 * DAY]
        f["priced_views_7d"] = len(views)
        f["premium_view_share_7d"] = sum(views) / len(views) if views else 0.0
        return dict(f)

    def view(self, now: int, premium: bool | None = None) -> dict[str, Any]:
        self._event(now)
        self.features["product_views"] += 1
        self.features["session_product_views"] += 1
        if premium is not None:
            self.priced_views.append((now, premium))
        return self._refresh(now)

    def add_to_cart(self, now: int) -> dict[str, Any]:
        self._event(now)
        self.features["session_add_to_carts"] += 1
        return self._refresh(now)

    def purchase(self, now: int, total: int = 1000) -> dict[str, Any]:
        self._event(now)
        self.features["purchases"] += 1
        self.features["session_purchases"] += 1
        self.purchases.append((now, total))
        return self._refresh(now)

    def page_view(self, now: int) -> dict[str, Any]:
        self._event(now)
        return self._refresh(now)

    def timer(self, now: int) -> dict[str, Any]:
        return self._refresh(now)


def transitions(steps: list[dict[str, Any]], segment: str) -> list[tuple[int, str]]:
    """(1-based step, ENTERED/EXITED) of one segment along a feature sequence."""
    out: list[tuple[int, str]] = []
    before: frozenset[str] = frozenset()
    for i, features in enumerate(steps, start=1):
        after = DEFAULTS.evaluate(features)
        out += [
            (i, c.change)
            for c in membership_changes("u", before, after, T0, T0)
            if c.segment == segment
        ]
        before = after
    return out


# --- the shipped defaults ---------------------------------------------------------------------


def test_shipped_defaults_names_and_descriptions() -> None:
    assert DEFAULTS.names == (
        "interested_but_hesitant",
        "frequent_buyer",
        "lapsed",
        "browsing_premium",
        "new_visitor",
        "high_value",
    )
    assert all(s.description for s in DEFAULTS.segments)
    assert describe(DEFAULTS.segments[0].condition) == (
        "session_product_views > 5 and session_add_to_carts >= 1 and session_purchases == 0"
    )


def test_each_shipped_segment_has_an_intent_comment() -> None:
    lines = (Path(__file__).parents[2] / "flows" / "segments.yaml").read_text().splitlines()
    for segment in DEFAULTS.segments:
        above = lines[segment.line - 2].strip()
        assert above.startswith("#"), f"no intent comment above {segment.name}"


def test_hesitant_entered_at_sixth_view_after_cart_exited_at_purchase() -> None:
    u = Timeline()
    t = T0
    steps = [u.view(t + i * MINUTE) for i in range(5)]  # 5 views
    steps.append(u.add_to_cart(t + 5 * MINUTE))  # 5 views + cart: not yet (needs > 5)
    steps.append(u.view(t + 6 * MINUTE))  # 6th view: entered
    steps.append(u.view(t + 7 * MINUTE))
    steps.append(u.purchase(t + 8 * MINUTE))  # exited
    steps.append(u.view(t + 9 * MINUTE))  # still bought in this session
    assert transitions(steps, "interested_but_hesitant") == [(7, "ENTERED"), (9, "EXITED")]


def test_hesitant_entered_at_cart_after_six_views_exited_at_next_session() -> None:
    u = Timeline()
    steps = [u.view(T0 + i * MINUTE) for i in range(6)]  # 6 views, no cart
    steps.append(u.add_to_cart(T0 + 6 * MINUTE))  # entered
    steps.append(u.page_view(T0 + 36 * MINUTE))  # exactly 30 min gap: same session
    steps.append(u.page_view(T0 + 67 * MINUTE))  # 31 min gap: new session, exited
    assert transitions(steps, "interested_but_hesitant") == [(7, "ENTERED"), (9, "EXITED")]


def test_frequent_buyer_third_order_in_30_days_until_first_ages_out() -> None:
    u = Timeline()
    steps = [
        u.purchase(T0),
        u.purchase(T0 + 1 * DAY),
        u.purchase(T0 + 2 * DAY),  # entered
        u.timer(T0 + 29 * DAY),
        u.timer(T0 + 30 * DAY + MINUTE),  # the first order left the window: exited
        u.purchase(T0 + 30 * DAY + DAY // 2),  # days 1, 2 and 30.5: entered again
    ]
    assert transitions(steps, "frequent_buyer") == [(3, "ENTERED"), (5, "EXITED"), (6, "ENTERED")]


def test_lapsed_after_30_days_without_order_until_next_order() -> None:
    u = Timeline()
    never = Timeline()
    steps = [
        never.page_view(T0),
        never.timer(T0 + 90 * DAY),  # never ordered: never lapsed
    ]
    assert transitions(steps, "lapsed") == []
    steps = [
        u.purchase(T0),
        u.page_view(T0 + 10 * DAY),
        u.timer(T0 + 30 * DAY - 1),
        u.timer(T0 + 30 * DAY),  # entered, on a timer
        u.page_view(T0 + 40 * DAY),
        u.purchase(T0 + 41 * DAY),  # exited
    ]
    assert transitions(steps, "lapsed") == [(4, "ENTERED"), (6, "EXITED")]


def test_browsing_premium_share_and_volume() -> None:
    u = Timeline()
    t = T0
    steps = [
        u.view(t, premium=True),
        u.view(t + 1 * MINUTE, premium=True),
        u.view(t + 2 * MINUTE, premium=False),
        u.view(t + 3 * MINUTE),  # unpriced: does not count
        u.view(t + 4 * MINUTE, premium=True),
        u.view(t + 5 * MINUTE, premium=False),  # 5 priced, 3/5 = 0.6: entered
        u.view(t + 6 * MINUTE, premium=False),  # 3/6: exited
        u.view(t + 7 * MINUTE, premium=True),  # 4/7
        u.view(t + 8 * MINUTE, premium=True),  # 5/8: entered
        u.timer(t + 7 * DAY + 9 * MINUTE),  # window empty: exited
    ]
    assert transitions(steps, "browsing_premium") == [
        (6, "ENTERED"),
        (7, "EXITED"),
        (9, "ENTERED"),
        (10, "EXITED"),
    ]


def test_new_visitor_first_session_until_second_session_or_order() -> None:
    u = Timeline()
    steps = [u.page_view(T0), u.view(T0 + MINUTE), u.page_view(T0 + 40 * MINUTE)]
    assert transitions(steps, "new_visitor") == [(1, "ENTERED"), (3, "EXITED")]
    b = Timeline()
    steps = [b.page_view(T0), b.purchase(T0 + MINUTE)]
    assert transitions(steps, "new_visitor") == [(1, "ENTERED"), (2, "EXITED")]


def test_high_value_at_500_in_30_days() -> None:
    u = Timeline()
    steps = [
        u.purchase(T0, total=30_000),
        u.purchase(T0 + DAY, total=19_999),
        u.purchase(T0 + 2 * DAY, total=1),  # exactly 50000: entered
        u.timer(T0 + 30 * DAY + MINUTE),  # the 30000 order left the window: exited
    ]
    assert transitions(steps, "high_value") == [(3, "ENTERED"), (4, "EXITED")]


def test_a_full_journey_emits_every_change_in_order() -> None:
    u = Timeline()
    steps = [
        u.page_view(T0),
        *[u.view(T0 + i * MINUTE) for i in range(1, 7)],
        u.add_to_cart(T0 + 7 * MINUTE),
        u.purchase(T0 + 8 * MINUTE, total=60_000),
        u.timer(T0 + 30 * DAY + 9 * MINUTE),
    ]
    before: frozenset[str] = frozenset()
    seen: list[tuple[int, str, str]] = []
    for i, features in enumerate(steps, start=1):
        after = DEFAULTS.evaluate(features)
        seen += [
            (i, c.change, c.segment)
            for c in DEFAULTS.membership_changes("u", before, after, T0, T0)
        ]
        before = after
    assert seen == [
        (1, "ENTERED", "new_visitor"),
        (8, "ENTERED", "interested_but_hesitant"),
        (9, "EXITED", "interested_but_hesitant"),
        (9, "EXITED", "new_visitor"),
        (9, "ENTERED", "high_value"),
        (10, "EXITED", "high_value"),
        (10, "ENTERED", "lapsed"),
    ]


def test_none_and_missing_values_compare_false() -> None:
    rules = parse_rules(
        """
segments:
  - name: recent
    description: ordered in the last week
    condition: {feature: days_since_last_purchase, op: "<", value: 7}
  - name: not_recent
    description: the negation, true for a non-customer
    condition: {not: {feature: days_since_last_purchase, op: "<", value: 7}}
  - name: unknown_device
    description: no device yet
    condition: {feature: device_top, op: is_null}
  - name: other_device
    description: a device that is not mobile
    condition: {feature: device_top, op: "!=", value: MOBILE}
"""
    )
    assert rules.evaluate({"days_since_last_purchase": None}) == {"not_recent", "unknown_device"}
    assert rules.evaluate({}) == {"not_recent", "unknown_device"}
    assert rules.evaluate({"days_since_last_purchase": 1.0, "device_top": "tv"}) == {
        "recent",
        "other_device",
    }


def test_rule_set_pickles_and_reports_its_features() -> None:
    clone = pickle.loads(pickle.dumps(DEFAULTS))
    assert clone.names == DEFAULTS.names
    f = Timeline().purchase(T0, total=90_000)
    assert clone.evaluate(f) == DEFAULTS.evaluate(f) == {"high_value"}
    assert "days_since_last_purchase" in DEFAULTS.features
    assert DEFAULTS.features <= FEATURES.keys()


def test_load_rules_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        "segments:\n  - name: searcher\n    description: searches a lot\n"
        "    condition: {feature: searches, op: '>=', value: 10}\n"
    )
    assert load_rules(path).names == ("searcher",)
    path.write_text("segments:\n  - name: searcher\n")
    with pytest.raises(RuleError) as err:
        load_rules(path)
    assert err.value.file == str(path)
    assert (
        str(err.value)
        == f"{path}:2: segment 'searcher': missing 'description' (say what the segment means)"
    )


# --- membership changes -----------------------------------------------------------------------


def test_membership_changes_exits_then_entries_each_sorted() -> None:
    changes = membership_changes(
        "u7",
        frozenset({"b", "z", "keep"}),
        frozenset({"keep", "y", "a"}),
        event_time=100,
        emit_time=105,
        source="CLUSTER",
        descriptions={"a": "first letter", "z": "last letter"},
    )
    assert changes == [
        SegmentChange("u7", "b", "EXITED", "CLUSTER", 100, 105, "exited b"),
        SegmentChange("u7", "z", "EXITED", "CLUSTER", 100, 105, "exited z: last letter"),
        SegmentChange("u7", "a", "ENTERED", "CLUSTER", 100, 105, "entered a: first letter"),
        SegmentChange("u7", "y", "ENTERED", "CLUSTER", 100, 105, "entered y"),
    ]
    assert membership_changes("u7", frozenset({"a"}), frozenset({"a"}), 1, 2) == []


def test_rule_set_membership_changes_name_the_description() -> None:
    (change,) = DEFAULTS.membership_changes("u", frozenset(), frozenset({"frequent_buyer"}), 1, 2)
    assert change.source == "RULE"
    assert change.reason == "entered frequent_buyer: 3 or more orders in the last 30 days"


# --- validation: file, line and reason --------------------------------------------------------

HEAD = "segments:\n  - name: s\n    description: d\n"


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        pytest.param(
            "segments:\n  - name: frequent_buyer\n    description: d\n    condition:\n"
            "      {feature: purchase_30d, op: '>=', value: 3}\n",
            5,
            "segment 'frequent_buyer': unknown feature 'purchase_30d' "
            "(did you mean 'purchases_30d'?)",
            id="unknown-feature",
        ),
        pytest.param(
            HEAD + "    condition: {feature: xyzzy, op: '>=', value: 3}\n",
            4,
            "segment 's': unknown feature 'xyzzy' (see operators/features.py)",
            id="unknown-feature-no-suggestion",
        ),
        pytest.param(
            HEAD + "    condition: {feature: purchases, op: '=>', value: 3}\n",
            4,
            "segment 's': unknown op '=>' on 'purchases'; use one of "
            ">, >=, <, <=, ==, !=, in, not_in, is_null, not_null",
            id="bad-op",
        ),
        pytest.param(
            HEAD + "    condition: {feature: device_top, op: '>', value: 3}\n",
            4,
            "segment 's': type mismatch: '>' needs a numeric feature, 'device_top' is str|None",
            id="numeric-op-on-str",
        ),
        pytest.param(
            HEAD
            + "    condition:\n      feature: purchases\n      op: '=='\n      value: 'three'\n",
            7,
            "segment 's': type mismatch: 'purchases' is int, value 'three' is not a number",
            id="str-value-on-int",
        ),
        pytest.param(
            HEAD + "    condition: {feature: purchases, op: '==', value: true}\n",
            4,
            "segment 's': type mismatch: 'purchases' is int, value True is not a number",
            id="bool-value-on-int",
        ),
        pytest.param(
            HEAD + "    condition: {feature: device_top, op: in, value: [MOBILE, 3]}\n",
            4,
            "segment 's': type mismatch: 'device_top' is str|None, value 3 is not a string",
            id="in-list-element",
        ),
        pytest.param(  # issue 16, finding 4: the docs' own example compared with 'mobile'
            HEAD + "    condition: {feature: device_top, op: '==', value: mobile}\n",
            4,
            "segment 's': 'device_top' is never 'mobile' (did you mean 'MOBILE'?); its values "
            "are DESKTOP, MOBILE, TABLET, OTHER",
            id="enum-symbol-case",
        ),
        pytest.param(
            HEAD + "    condition: {feature: channel_top, op: not_in, value: [WEB, SMS]}\n",
            4,
            "segment 's': 'channel_top' is never 'SMS'; its values are WEB, APP, EMAIL, OTHER",
            id="enum-symbol-unknown",
        ),
        pytest.param(
            HEAD + "    condition: {feature: device_top, op: in, value: mobile}\n",
            4,
            "segment 's': 'in' takes a list of values, got 'mobile'",
            id="in-not-a-list",
        ),
        pytest.param(
            HEAD + "    condition: {feature: device_top, op: not_in, value: []}\n",
            4,
            "segment 's': 'not_in' has an empty list of values",
            id="in-empty-list",
        ),
        pytest.param(
            HEAD + "    condition: {feature: purchases, op: is_null}\n",
            4,
            "segment 's': 'is_null' on 'purchases': the feature is never null (type int)",
            id="null-test-on-non-nullable",
        ),
        pytest.param(
            HEAD + "    condition: {feature: device_top, op: not_null, value: x}\n",
            4,
            "segment 's': 'not_null' takes no value",
            id="null-test-with-value",
        ),
        pytest.param(
            HEAD + "    condition: {feature: device_top, op: '==', value: null}\n",
            4,
            "segment 's': comparison 'device_top' == null: use op: is_null",
            id="compare-to-null",
        ),
        pytest.param(
            HEAD + "    condition:\n      all:\n        - {feature: purchases, op: '>='}\n",
            6,
            "segment 's': comparison 'purchases' >= has no 'value'",
            id="missing-value",
        ),
        pytest.param(
            HEAD + "    condition: {op: '>=', value: 1}\n",
            4,
            "segment 's': a comparison needs 'feature', 'op' and 'value'",
            id="missing-feature",
        ),
        pytest.param(
            HEAD + "    condition:\n      all: []\n",
            5,
            "segment 's': 'all' has an empty list of conditions",
            id="empty-all",
        ),
        pytest.param(
            HEAD + "    condition:\n      any: []\n",
            5,
            "segment 's': 'any' has an empty list of conditions",
            id="empty-any",
        ),
        pytest.param(
            HEAD + "    condition:\n      alll: []\n",
            5,
            "segment 's': a comparison: unknown key 'alll' (did you mean 'all'? "
            "expected one of feature, op, value, all, any, not)",
            id="misspelt-all",
        ),
        pytest.param(
            HEAD + "    condition:\n      all: [{feature: purchases, op: '>', value: 1}]\n"
            "      any: [{feature: purchases, op: '>', value: 1}]\n",
            5,
            "segment 's': a condition with 'all' must have no other key, got ['all', 'any']",
            id="two-combinators",
        ),
        pytest.param(
            HEAD + "    condition:\n      not: [{feature: purchases, op: '>', value: 1}]\n",
            5,
            "segment 's': a condition must be a mapping (all, any, not or a comparison), "
            "got a list",
            id="not-takes-a-mapping",
        ),
        pytest.param(
            "segments:\n  - name: a\n    description: d\n    condition: {feature: purchases, "
            "op: '>', value: 1}\n  - name: a\n    description: d\n    condition: {feature: "
            "purchases, op: '>', value: 2}\n",
            5,
            "segment 'a': duplicate segment name (first declared at line 2)",
            id="duplicate-name",
        ),
        pytest.param(
            "segments:\n  - name: Frequent-Buyer\n    description: d\n",
            2,
            "segment 'Frequent-Buyer': bad name 'Frequent-Buyer': "
            "use lower-case letters, digits and '_'",
            id="bad-name",
        ),
        pytest.param(
            "segments:\n  - name: persona_1\n    description: d\n",
            2,
            "segment 'persona_1': bad name 'persona_1': names starting with 'persona_' are "
            "reserved for cluster personas",
            id="reserved-name",
        ),
        pytest.param(
            "segments:\n  - description: d\n",
            2,
            "segment #1: missing 'name'",
            id="missing-name",
        ),
        pytest.param(
            "segments:\n  - name: s\n    description: d\n    condition: {feature: purchases, "
            "op: '>', value: 1}\n    extra: 1\n",
            5,
            "segment 's': a segment: unknown key 'extra' "
            "(expected one of name, description, condition)",
            id="unknown-segment-key",
        ),
        pytest.param(
            HEAD + "    description: again\n",
            4,
            "segment 's': a segment: duplicate key 'description'",
            id="duplicate-key",
        ),
        pytest.param(
            HEAD + "    condition: {feature: purchases, op: >=, value: 3}\n",
            4,
            "YAML syntax error while scanning for the next token: found character '>' that "
            "cannot start any token; quote the operator: op: \">=\" ('>', '!' and '|' are "
            "YAML syntax)",
            id="yaml-syntax-unquoted-op",
        ),
        pytest.param(
            HEAD + "    condition:\n      feature: purchases\n      op: !=\n      value: 3\n",
            6,
            "segment 's': unexpected YAML tag in '!=': quote the value "
            "(an operator such as '!=' must be written op: \"!=\")",
            id="yaml-tag-unquoted-ne",
        ),
        pytest.param(
            "segments:\n  - name: s\n   description: [unclosed\n",
            3,
            "YAML syntax error while parsing a block collection at line 2: "
            "expected <block end>, but found '<block mapping start>'",
            id="yaml-syntax-indentation",
        ),
        pytest.param("", 0, "empty rule file: expected a mapping with 'segments'", id="empty"),
        pytest.param(
            "segment: []\n",
            1,
            "the rule file: unknown key 'segment' (did you mean 'segments'? "
            "expected one of segments)",
            id="top-level-key",
        ),
        pytest.param(
            "segments: {}\n", 1, "'segments' must be a list, got a mapping", id="segments-not-list"
        ),
    ],
)
def test_invalid_rules_name_file_line_and_reason(text: str, line: int, reason: str) -> None:
    with pytest.raises(RuleError) as err:
        parse_rules(text, "bad.yaml")
    assert (err.value.file, err.value.line, err.value.reason) == ("bad.yaml", line, reason)
    assert str(err.value) == f"bad.yaml:{line}: {reason}"


def test_yaml_syntax_error_names_the_line() -> None:
    text = HEAD + "    condition: {feature: purchases, op: '>', value: [1, 2}\n"
    with pytest.raises(RuleError) as err:
        parse_rules(text, "bad.yaml")
    assert err.value.line == 4
    assert err.value.reason.startswith("YAML syntax error")


# --- property: the compiled closures agree with a naive interpreter ---------------------------


def _type_of(name: str) -> tuple[str, bool]:
    declared = FEATURES[name][0]
    base = "num" if re.search(r"int|float", declared) else "str"
    return base, "None" in declared


PROPERTY_FEATURES = (
    "purchases",  # int
    "premium_view_share_7d",  # float
    "avg_order_value_minor",  # int|None
    "days_since_last_purchase",  # float|None
    "device_top",  # str|None
)
NUMBERS = st.one_of(st.integers(-3, 3), st.sampled_from([-1.5, 0.0, 0.5, 2.5]))
STRINGS = st.sampled_from(["MOBILE", "DESKTOP", "OTHER"])  # device_top's symbols


@st.composite
def leaves(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from(PROPERTY_FEATURES))
    base, nullable = _type_of(name)
    ops = [op for op in OPS if (base == "num" or op not in ("<", "<=", ">", ">="))]
    if not nullable:
        ops = [op for op in ops if op not in ("is_null", "not_null")]
    op = draw(st.sampled_from(ops))
    if op in ("is_null", "not_null"):
        return {"feature": name, "op": op}
    values = NUMBERS if base == "num" else STRINGS
    value = (
        draw(st.lists(values, min_size=1, max_size=3)) if op in ("in", "not_in") else draw(values)
    )
    return {"feature": name, "op": op, "value": value}


conditions = st.recursive(
    leaves(),
    lambda children: st.one_of(
        st.builds(lambda cs: {"all": cs}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda cs: {"any": cs}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda c: {"not": c}, children),
    ),
    max_leaves=8,
)


@st.composite
def feature_dicts(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in PROPERTY_FEATURES:
        base, nullable = _type_of(name)
        values: st.SearchStrategy[Any] = NUMBERS if base == "num" else STRINGS
        if nullable:
            values = st.one_of(st.none(), values)
        if draw(st.booleans()) or not nullable:  # a nullable feature may also be absent
            out[name] = draw(values)
    return out


def naive(node: dict[str, Any], f: dict[str, Any]) -> bool:  # noqa: PLR0912 - one branch per node kind of the reference evaluator
    if "all" in node:
        return all(naive(c, f) for c in node["all"])
    if "any" in node:
        return any(naive(c, f) for c in node["any"])
    if "not" in node:
        return not naive(node["not"], f)
    v, op = f.get(node["feature"]), node["op"]
    if op == "is_null":
        return v is None
    if op == "not_null":
        return v is not None
    if v is None:
        return False
    x = node["value"]
    if op == ">":
        return bool(v > x)
    if op == ">=":
        return bool(v >= x)
    if op == "<":
        return bool(v < x)
    if op == "<=":
        return bool(v <= x)
    if op == "==":
        return bool(v == x)
    if op == "!=":
        return bool(v != x)
    if op == "in":
        return v in x
    assert op == "not_in"
    return v not in x


@settings(max_examples=300, deadline=None)
@given(st.lists(conditions, min_size=1, max_size=4), st.lists(feature_dicts(), max_size=5))
def test_evaluate_equals_a_naive_interpreter(
    trees: list[dict[str, Any]], users: list[dict[str, Any]]
) -> None:
    doc = {
        "segments": [
            {"name": f"s{i}", "description": f"rule {i}", "condition": tree}
            for i, tree in enumerate(trees)
        ]
    }
    rules = parse_rules(yaml.safe_dump(doc, sort_keys=False), "property.yaml")
    for f in users:
        expected = {f"s{i}" for i, tree in enumerate(trees) if naive(tree, f)}
        assert rules.evaluate(f) == expected


def test_rule_set_from_segments_rejects_duplicates() -> None:
    s = Segment("a", "d", AllOf((Compare("purchases", ">", 1),)))
    assert RuleSet([s]).evaluate({"purchases": 2}) == {"a"}
    with pytest.raises(ValueError, match="duplicate segment names"):
        RuleSet([s, s])


# --- docs/segments.md stays true ----------------------------------------------------------------

DOC = Path(__file__).parents[2] / "docs" / "segments.md"


def features_table() -> str:
    """The features table of docs/segments.md, generated from FEATURES."""
    from attune.operators.clustering import CLUSTER_FEATURES, LOG1P_FEATURES

    rows = ["| Feature | Type | Meaning | Clustered |", "|---|---|---|---|"]
    for name, (ftype, meaning) in FEATURES.items():
        clustered = ""
        if name in CLUSTER_FEATURES:
            clustered = "log1p" if name in LOG1P_FEATURES else "as is"
        cell = ftype.replace("|", "\\|")  # a pipe in a GFM table cell, even in code
        rows.append(f"| `{name}` | `{cell}` | {meaning} | {clustered} |")
    return "\n".join(rows)


def defaults_table() -> str:
    """The shipped-defaults table of docs/segments.md, generated from flows/segments.yaml."""
    rows = ["| Segment | Condition | Description |", "|---|---|---|"]
    for s in DEFAULTS.segments:
        rows.append(f"| `{s.name}` | `{describe(s.condition)}` | {s.description} |")
    return "\n".join(rows)


def doc_block(name: str) -> str:
    text = DOC.read_text()
    match = re.search(rf"<!-- {name}:begin[^>]*-->\n(.*?)\n<!-- {name}:end -->", text, re.S)
    assert match, f"docs/segments.md has no <!-- {name}:begin/end --> block"
    return match.group(1)


@pytest.mark.parametrize(
    ("block", "render"), [("features", features_table), ("defaults", defaults_table)]
)
def test_docs_tables_match_the_code(block: str, render: Any) -> None:
    expected = render()
    assert doc_block(block) == expected, (
        f"docs/segments.md is stale; replace the {block} block with:\n{expected}"
    )


def test_docs_examples_are_valid_rules() -> None:
    """Every ```yaml block in docs/segments.md that declares segments loads."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    rule_files = [b for b in blocks if b.lstrip().startswith("segments:")]
    assert len(rule_files) >= 2
    for text in rule_files:
        assert parse_rules(text, "docs/segments.md").names


# --- evaluated again only when an event changed what a segment reads ---------------------------


def _every_feature_rules(values: dict[str, list[Any]]) -> RuleSet:
    """Segments on every feature, with thresholds among the values the workload gives, so
    that each of them is entered and left along the way."""
    segments: list[Segment] = []
    for name, seen in sorted(values.items()):
        known = [v for v in seen if v is not None]
        segments.append(Segment(f"{name}_null", "d", Compare(name, "is_null", None)))
        if not known:
            continue
        if isinstance(known[0], str):
            top = max(set(known), key=lambda v: (known.count(v), v))
            segments.append(Segment(f"{name}_top", "d", Compare(name, "==", top)))
            continue
        ordered = sorted(known)
        distinct = sorted(set(known))
        thresholds = {ordered[len(ordered) * q // 4] for q in (1, 2, 3)}
        thresholds |= {distinct[min(1, len(distinct) - 1)], distinct[len(distinct) // 2]}
        for i, threshold in enumerate(sorted(thresholds)):
            segments.append(Segment(f"{name}_{i}", "d", Compare(name, ">=", threshold)))
    return RuleSet(segments)


@pytest.mark.parametrize(
    ("users", "days", "order"),
    [(40, 3, "generated"), (10, 60, "generated"), (20, 3, "shuffled"), (8, 40, "reversed")],
)
def test_segments_evaluated_again_only_where_an_event_changed_their_features(
    users: int, days: int, order: str
) -> None:
    """The per-user step evaluates a segment again only when the event changed something
    one of its features reads (operators/features.py ``CHANGED_BY``): on a generated
    workload (duplicates, logins, withdrawals, erasures; over 30 days, so the windows
    drop events; in arrival orders that move the first and latest times and bridge
    sessions) and rules over every feature, the membership after every event is the one a
    full evaluation gives (but for an emptied state, which has left every segment)."""
    import random

    from attune.operators.identity import UserInput
    from attune.operators.profiles import FeatureView
    from attune.operators.sessions import PriceBands
    from attune.operators.user_config import ProfileConfig
    from attune.operators.user_state import UserState
    from attune.operators.user_step import apply, fold_batch
    from attune.workload.generator import GeneratorConfig, generate

    g = generate(
        GeneratorConfig(users=users, days=days, seed=3, withdrawal_share=0.1, erasure_share=0.1)
    )
    bands = PriceBands.from_items(g.items)
    by_user: dict[str, list[UserInput]] = {}
    for e in g.events:
        by_user.setdefault(e.user_id or e.anonymous_id or "", []).append(e)
    rnd = random.Random(7)
    for events in by_user.values():
        if order == "reversed":
            events.reverse()
        elif order == "shuffled":  # late by up to some 20 events
            for i in range(0, len(events), 20):
                chunk = events[i : i + 20]
                rnd.shuffle(chunk)
                events[i : i + 20] = chunk
    values: dict[str, list[Any]] = {name: [] for name in FEATURES}
    plain = ProfileConfig(rules=None, price_bands=bands)
    for user, events in by_user.items():
        fold = UserState(user)
        for item in events:
            apply(fold, item, plain)
            view = FeatureView(fold, fold.activity.max_time)
            for name in FEATURES:
                values[name].append(view[name])
    rules = _every_feature_rules(values)
    cfg = ProfileConfig(rules=rules, price_bands=bands)
    checked = 0
    for user, events in by_user.items():
        state: UserState | None = UserState(user)
        for item in events:  # a batch each: the outputs stage in between
            assert state is not None
            state, _ = fold_batch(state, [item], cfg)
            assert state is not None
            full = rules.evaluate(FeatureView(state, state.activity.max_time))
            assert state.membership.segments == full or not state.activity.events
            checked += 1
    assert checked == sum(map(len, by_user.values())) > 1000
    assert len(rules.names) > 100


def test_a_membership_decided_by_other_rules_is_decided_again_whole() -> None:
    """A state from a run with another rule file (a snapshot): the next event evaluates
    every segment, not only those whose features it changed."""
    from attune.operators.events import Event, EventType, PageView, ProductView
    from attune.operators.user_config import ProfileConfig
    from attune.operators.user_state import UserState
    from attune.operators.user_step import apply

    before = ProfileConfig(rules=RuleSet([Segment("s", "d", Compare("sessions", ">=", 1))]))
    viewer = Segment("viewer", "has viewed a product", Compare("product_views", ">=", 1))
    after = ProfileConfig(rules=RuleSet([*before.rules.segments, viewer]))  # type: ignore[union-attr]
    state = UserState("u1")
    apply(state, Event("e1", EventType.PRODUCT_VIEW, T0, ProductView("i1"), "u1"), before)
    assert state.membership.segments == {"s"}
    out = apply(state, Event("e2", EventType.PAGE_VIEW, T0 + MINUTE, PageView(), "u1"), after)
    assert state.membership.segments == {"s", "viewer"}
    assert [(c.segment, c.change) for c in out if isinstance(c, SegmentChange)] == [
        ("viewer", "ENTERED")
    ]
