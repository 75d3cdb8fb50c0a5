"""The condition language: one grammar for conditions on a user's features, and its parser.

Segments (stage 6, :mod:`attune.operators.segments`) and trigger rules (stage 8,
:mod:`attune.operators.rules`) both decide on conditions over the user's features
(:mod:`attune.operators.features`): ``all``/``any``/``not`` over feature comparisons, plus the
trigger leaves (``kind``, ``in_segment``, ``score``, ``hours``, ``channel``) that only trigger
rules may use. This module holds that grammar once: the condition tree, the
:class:`ConditionParser` that reads it from YAML nodes (checking every name, operator and value
against the declared feature types, with the file and line in each :class:`RuleError`), and
the compiler that turns a tree, once, into nested closures. The rule file loaders
(:mod:`attune.operators.rule_files`) read the files around the conditions at start-up; the
evaluators compile the trees and run them per event.

>>> import yaml
>>> parser = ConditionParser("my.yaml", TRIGGER_LEAVES)
>>> when = parser.parse_condition(yaml.compose('''
... all:
...   - {kind: cart_abandoned, in_segment: high_value}
...   - {feature: cart_value_minor, op: ">=", value: 10000}
... '''))
>>> describe(when)
"(kind == 'cart_abandoned' and in_segment high_value) and cart_value_minor >= 10000"
>>> big = ConditionParser("seg.yaml").parse_condition(
...     yaml.compose("{feature: cart_value_minor, op: '>=', value: 10000}"))
>>> compile_condition(big, compile_compare)({"cart_value_minor": 12000})
True
>>> try:  # a segment file has no trigger leaves
...     ConditionParser("seg.yaml").parse_condition(yaml.compose("{kind: cart_abandoned}"))
... except RuleError as e:
...     print(e.reason)
a comparison: unknown key 'kind' (expected one of feature, op, value, all, any, not)
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias, TypeVar

import yaml

from attune.operators.features import FEATURES, Features

__all__ = [
    "CHANNELS",
    "CLUSTER_SEGMENT_PREFIX",
    "DEVICES",
    "ENUM_FEATURES",
    "EQUALITY_OPS",
    "NULL_OPS",
    "NUMERIC_OPS",
    "OPS",
    "SCORE_OPS",
    "SET_OPS",
    "TRIGGER_LEAVES",
    "AllOf",
    "AnyOf",
    "ChannelIs",
    "Compare",
    "Condition",
    "ConditionParser",
    "HourWindow",
    "HoursIn",
    "InSegment",
    "KindIs",
    "Leaf",
    "Not",
    "Operand",
    "Predicate",
    "RuleError",
    "ScoreCompare",
    "compile_compare",
    "compile_condition",
    "describe",
]

#: A compiled condition: features in, membership out.
Predicate: TypeAlias = Callable[[Features], bool]
#: What a compiled condition reads: :data:`Features` for segments, the trigger rules' own
#: input for their leaves (:mod:`~attune.operators.rules`).
T = TypeVar("T")
#: The value of a leaf comparison: a scalar, a tuple for ``in``/``not_in``, ``None`` for the
#: null tests.
Operand: TypeAlias = int | float | str | tuple[int | float | str, ...] | None

NUMERIC_OPS: Final = (">", ">=", "<", "<=")
EQUALITY_OPS: Final = ("==", "!=")
SET_OPS: Final = ("in", "not_in")
NULL_OPS: Final = ("is_null", "not_null")
#: Every comparison operator, in the order the docs list them.
OPS: Final = (*NUMERIC_OPS, *EQUALITY_OPS, *SET_OPS, *NULL_OPS)

#: Segment names of cluster personas (:mod:`attune.operators.clustering`) are this prefix and the
#: cluster index; rule segments may not use it.
CLUSTER_SEGMENT_PREFIX: Final = "persona_"
#: The symbols of ``attune.event.Channel`` (avro/attune.event.Context.avsc; a test checks).
CHANNELS: Final = ("WEB", "APP", "EMAIL", "OTHER")
#: The symbols of ``attune.event.Device`` (the same schema; a test checks).
DEVICES: Final = ("DESKTOP", "MOBILE", "TABLET", "OTHER")
#: Features whose values are enum symbols: a comparison with anything else is refused at
#: load time (``mobile`` for ``MOBILE`` would leave the segment silently empty).
ENUM_FEATURES: Final[dict[str, tuple[str, ...]]] = {
    "device_top": DEVICES,
    "channel_top": CHANNELS,
}
#: The operators of a ``score`` leaf.
SCORE_OPS: Final = (*NUMERIC_OPS, *EQUALITY_OPS, *NULL_OPS)
#: The trigger leaves: condition keys besides ``all``/``any``/``not`` and feature comparisons,
#: which a parser allows when given them (trigger rules do, segments do not).
TRIGGER_LEAVES: Final = ("kind", "in_segment", "not_in_segment", "score", "hours", "channel")
_COMPARE_KEYS: Final = ("feature", "op", "value")

_NAME = re.compile(r"[a-z0-9_]+")
_UNQUOTED_OP = re.compile(r"\bop\s*:\s*[>!|]")
_YAML_TAG = "tag:yaml.org,2002:"


# --- feature types ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _FeatureType:
    base: str  # int | float | str
    nullable: bool

    @property
    def numeric(self) -> bool:
        return self.base in ("int", "float")

    def __str__(self) -> str:
        return f"{self.base}|None" if self.nullable else self.base


def _feature_types() -> dict[str, _FeatureType]:
    types: dict[str, _FeatureType] = {}
    for name, (declared, _meaning) in FEATURES.items():
        parts = {p.strip() for p in declared.split("|")}
        nullable = "None" in parts
        bases = parts - {"None"}
        if len(bases) != 1 or not bases <= {"int", "float", "str"}:
            raise ValueError(
                f"operators/features.py: feature {name!r} has type {declared!r}; rule segments "
                "understand int, float or str, optionally '|None'"
            )
        types[name] = _FeatureType(bases.pop(), nullable)
    return types


#: Declared type of each feature, parsed once from :data:`attune.operators.features.FEATURES`.
_TYPES: Final = _feature_types()


# --- the condition tree ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Compare:
    """Leaf ``{feature: NAME, op: OP, value: V}``; ``value`` is a tuple for ``in``/``not_in``."""

    feature: str
    op: str
    value: Operand = None


@dataclass(frozen=True, slots=True)
class AllOf:
    """``all: [...]``: every child holds."""

    children: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    """``any: [...]``: at least one child holds."""

    children: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Not:
    """``not: {...}``: the child does not hold."""

    child: Condition


class Leaf:
    """Base of the trigger leaves (:data:`TRIGGER_LEAVES`, the classes below).

    Segment files never contain one; trigger rules use leaves such as ``kind`` or
    ``in_segment`` next to feature comparisons, under the same ``all``/``any``/``not``.
    A subclass is a frozen dataclass that says how it reads in :func:`describe`; the
    trigger rules (:mod:`~attune.operators.rules`) compile them over their own input.
    """

    __slots__ = ()

    def describe(self) -> str:
        raise NotImplementedError


Condition: TypeAlias = Compare | AllOf | AnyOf | Not | Leaf


def describe(condition: Condition) -> str:
    """A condition as one readable line (for docs and logs).

    >>> describe(AllOf((Compare("purchases", ">=", 1), Not(Compare("device_top", "is_null")))))
    'purchases >= 1 and not device_top is_null'
    """
    if isinstance(condition, Compare):
        if condition.op in NULL_OPS:
            return f"{condition.feature} {condition.op}"
        value = condition.value
        shown = list(value) if isinstance(value, tuple) else value
        return f"{condition.feature} {condition.op} {shown!r}"
    if isinstance(condition, Leaf):
        return condition.describe()
    if isinstance(condition, Not):
        inner = describe(condition.child)
        simple = isinstance(condition.child, Compare | Leaf | Not)
        return f"not {inner}" if simple else f"not ({inner})"
    joiner = " and " if isinstance(condition, AllOf) else " or "
    parts = [
        f"({describe(c)})" if isinstance(c, AllOf | AnyOf) and len(c.children) > 1 else describe(c)
        for c in condition.children
    ]
    return joiner.join(parts)


# --- the trigger leaves -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HourWindow:
    """Local hours ``[start, end)``; wraps past midnight when ``start > end`` (22 -> 8).

    >>> w = HourWindow(22, 8)
    >>> [h for h in range(24) if w.contains(h)]
    [0, 1, 2, 3, 4, 5, 6, 7, 22, 23]
    """

    start: int
    end: int

    def contains(self, hour: int) -> bool:
        if self.start < self.end:
            return self.start <= hour < self.end
        return hour >= self.start or hour < self.end

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


@dataclass(frozen=True, slots=True)
class KindIs(Leaf):
    """``kind: K`` or ``kind: [K1, K2]``: the trigger's kind is one of these."""

    kinds: tuple[str, ...]

    def describe(self) -> str:
        return (
            f"kind == {self.kinds[0]!r}" if len(self.kinds) == 1 else f"kind in {list(self.kinds)}"
        )


@dataclass(frozen=True, slots=True)
class InSegment(Leaf):
    """``in_segment: S`` (in any of) or ``not_in_segment: S`` (in none of); S a name or list."""

    segments: tuple[str, ...]
    negate: bool = False

    def describe(self) -> str:
        key = "not_in_segment" if self.negate else "in_segment"
        shown = self.segments[0] if len(self.segments) == 1 else list(self.segments)
        return f"{key} {shown}"


@dataclass(frozen=True, slots=True)
class ScoreCompare(Leaf):
    """``score: {name: N, op: OP, value: V}`` over the trigger's ``scores`` map.

    A missing score compares false (like a ``None`` feature); ``is_null`` tests absence.
    """

    compare: Compare

    def describe(self) -> str:
        return f"score {describe(self.compare)}"


@dataclass(frozen=True, slots=True)
class HoursIn(Leaf):
    """``hours: {from: A, to: B}``: the trigger's event time is in local hours ``[A, B)``.

    False when the user's timezone is unknown and no ``default_timezone`` is set.
    """

    window: HourWindow

    def describe(self) -> str:
        return f"local hour in {self.window}"


@dataclass(frozen=True, slots=True)
class ChannelIs(Leaf):
    """``channel: C`` or ``channel: [C1, C2]``: the user's channel is one of these."""

    channels: tuple[str, ...]

    def describe(self) -> str:
        return f"channel in {list(self.channels)}"


# --- compiling: closures, built once ------------------------------------------------------------
# A comparison on a missing or None feature value is false, except ``is_null``. Each leaf is a
# closure specialised to its operator, so evaluation is one dict lookup and one comparison.


def compile_compare(leaf: Compare) -> Predicate:
    """One comparison as a closure over a mapping (features, or any name -> value map).

    >>> compile_compare(Compare("propensity", ">=", 0.7))({"propensity": 0.9})
    True
    """
    name, op, value = leaf.feature, leaf.op, leaf.value
    if op == "is_null":

        def is_null(f: Features) -> bool:
            return f.get(name) is None

        return is_null
    if op == "not_null":

        def not_null(f: Features) -> bool:
            return f.get(name) is not None

        return not_null
    if op in SET_OPS:
        assert isinstance(value, tuple)
        members = frozenset(value)
        if op == "in":

            def in_(f: Features) -> bool:
                v: Any = f.get(name)
                return v is not None and v in members

            return in_

        def not_in(f: Features) -> bool:
            v: Any = f.get(name)
            return v is not None and v not in members

        return not_in
    return _COMPARATORS[op](name, value)


def _gt(name: str, value: Any) -> Predicate:
    def gt(f: Features) -> bool:
        v: Any = f.get(name)
        return v is not None and v > value

    return gt


def _ge(name: str, value: Any) -> Predicate:
    def ge(f: Features) -> bool:
        v: Any = f.get(name)
        return v is not None and v >= value

    return ge


def _lt(name: str, value: Any) -> Predicate:
    def lt(f: Features) -> bool:
        v: Any = f.get(name)
        return v is not None and v < value

    return lt


def _le(name: str, value: Any) -> Predicate:
    def le(f: Features) -> bool:
        v: Any = f.get(name)
        return v is not None and v <= value

    return le


def _eq(name: str, value: Any) -> Predicate:
    def eq(f: Features) -> bool:
        v: Any = f.get(name)
        return v is not None and v == value

    return eq


def _ne(name: str, value: Any) -> Predicate:
    def ne(f: Features) -> bool:
        v: Any = f.get(name)
        return v is not None and v != value

    return ne


_COMPARATORS: Final[dict[str, Callable[[str, Any], Predicate]]] = {
    ">": _gt,
    ">=": _ge,
    "<": _lt,
    "<=": _le,
    "==": _eq,
    "!=": _ne,
}


def compile_condition(
    condition: Condition, compile_leaf: Callable[[Compare | Leaf], Callable[[T], bool]]
) -> Callable[[T], bool]:
    """Compile a condition tree once into nested closures; ``compile_leaf`` compiles leaves.

    Segments compile over :data:`Features`; :mod:`attune.operators.rules` compiles the same
    ``all``/``any``/``not`` over its own input, with its own leaves.

    >>> pred = compile_condition(Not(Compare("purchases", ">", 1)), compile_compare)
    >>> pred({"purchases": 0}), pred({"purchases": 2})
    (True, False)
    """
    if isinstance(condition, Compare | Leaf):
        return compile_leaf(condition)
    if isinstance(condition, Not):
        child = compile_condition(condition.child, compile_leaf)

        def not_(f: T) -> bool:
            return not child(f)

        return not_
    preds = tuple(compile_condition(c, compile_leaf) for c in condition.children)
    if len(preds) == 1:
        return preds[0]
    if isinstance(condition, AllOf):
        if len(preds) == 2:
            a, b = preds

            def all2(f: T) -> bool:
                return a(f) and b(f)

            return all2
        if len(preds) == 3:
            a, b, c = preds

            def all3(f: T) -> bool:
                return a(f) and b(f) and c(f)

            return all3

        def all_n(f: T) -> bool:
            return all(p(f) for p in preds)

        return all_n
    if len(preds) == 2:
        a, b = preds

        def any2(f: T) -> bool:
            return a(f) or b(f)

        return any2

    def any_n(f: T) -> bool:
        return any(p(f) for p in preds)

    return any_n


# --- parsing: the YAML node tree, which keeps every node's line --------------------------------


class RuleError(ValueError):
    """A rule file is invalid: ``str(error)`` is ``"<file>:<line>: <reason>"``.

    Attributes
    ----------
    file
        The file (or the ``source`` given to the parser).
    line
        1-based line of the offending node (0 when the file is empty).
    reason
        What is wrong, naming the entry (segment, rule) when known.
    """

    def __init__(self, file: str, line: int, reason: str) -> None:
        super().__init__(f"{file}:{line}: {reason}")
        self.file = file
        self.line = line
        self.reason = reason


class ConditionParser:
    """Walks the composed YAML node tree, which keeps every node's line.

    :meth:`parse_condition` reads one condition: ``all``/``any``/``not``, feature
    comparisons and the trigger leaves in ``leaves`` (none for segments,
    :data:`TRIGGER_LEAVES` for trigger rules). ``segments`` and ``kinds``, when given, are
    the names ``in_segment`` and ``kind`` may use. The rule file loaders
    (:mod:`attune.operators.rule_files`) subclass it to reuse the node helpers and the error
    style; they set :attr:`subject` (the word errors name an entry by) and
    :attr:`segment` (the entry being read), and override :meth:`make_error` to raise their
    own ``RuleError`` subclass.
    """

    #: What an entry of the file is called in errors: ``segment 'x': ...``.
    subject = "entry"

    def __init__(
        self,
        source: str,
        leaves: Sequence[str] = (),
        *,
        segments: Collection[str] | None = None,
        kinds: Collection[str] | None = None,
    ) -> None:
        unknown = [leaf for leaf in leaves if leaf not in TRIGGER_LEAVES]
        if unknown:
            raise ValueError(f"unknown condition leaves {unknown}: use {TRIGGER_LEAVES}")
        self.source = source
        self.leaves: tuple[str, ...] = tuple(leaves)
        self.known_segments = frozenset(segments) if segments is not None else None
        self.known_kinds = frozenset(kinds) if kinds is not None else None
        self.segment = ""  # the entry errors are about: "'name'" or "#index"
        self._constructor = yaml.SafeLoader("")

    # -- errors and node helpers

    def make_error(self, line: int, reason: str) -> RuleError:
        return RuleError(self.source, line, reason)

    def error(self, node: yaml.Node | None, reason: str) -> RuleError:
        line = node.start_mark.line + 1 if node is not None else 0
        prefix = f"{self.subject} {self.segment}: " if self.segment else ""
        return self.make_error(line, prefix + reason)

    def mapping(
        self,
        node: yaml.Node,
        what: str,
        allowed: Sequence[str],
    ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """A mapping node's entries as ``key -> (key node, value node)``, keys checked."""
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{what} must be a mapping, got {_kind(node)}")
        entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node)
            if not isinstance(key, str):
                raise self.error(key_node, f"{what}: keys must be strings, got {key!r}")
            if key in entries:
                raise self.error(key_node, f"{what}: duplicate key {key!r}")
            if key not in allowed:
                raise self.error(key_node, f"{what}: unknown key {key!r}{_expected(key, allowed)}")
            entries[key] = (key_node, value_node)
        return entries

    def scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, f"expected a single value, got {_kind(node)}")
        if not node.tag.startswith(_YAML_TAG):
            shown = node.tag + (f" {node.value}" if node.value else "")
            raise self.error(
                node,
                f"unexpected YAML tag in {shown!r}: quote the value "
                "(an operator such as '!=' must be written op: \"!=\")",
            )
        return self._constructor.construct_object(node, deep=True)

    def string(self, node: yaml.Node, what: str) -> str:
        value = self.scalar(node)
        if not isinstance(value, str) or not value.strip():
            raise self.error(node, f"{what} must be a non-empty string, got {value!r}")
        return value

    # -- the grammar: all, any, not and feature comparisons

    def parse_condition(self, node: yaml.Node) -> Condition:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(
                node,
                f"a condition must be a mapping (all, any, not or a comparison), got {_kind(node)}",
            )
        keys = [self.scalar(k) for k, _ in node.value]
        combinators = [k for k in keys if k in ("all", "any", "not")]
        if not combinators:
            return self.parse_leaf(node)
        if len(keys) != 1:
            raise self.error(
                node,
                f"a condition with {combinators[0]!r} must have no other key, got {keys!r}",
            )
        kind = combinators[0]
        child_node = node.value[0][1]
        if kind == "not":
            return Not(self.parse_condition(child_node))
        if not isinstance(child_node, yaml.SequenceNode):
            raise self.error(
                child_node, f"'{kind}' takes a list of conditions, got {_kind(child_node)}"
            )
        if not child_node.value:
            raise self.error(child_node, f"'{kind}' has an empty list of conditions")
        children = tuple(self.parse_condition(c) for c in child_node.value)
        return AllOf(children) if kind == "all" else AnyOf(children)

    def parse_leaf(self, node: yaml.MappingNode) -> Condition:
        """A condition mapping without ``all``/``any``/``not``: a comparison or trigger leaves."""
        if not self.leaves:
            return self.parse_compare(node)
        entries = self.mapping(node, "a condition", (*_COMPARE_KEYS, *self.leaves))
        leaf_keys = [k for k in entries if k in self.leaves]
        if not leaf_keys:
            return self.parse_compare(node)
        compare_keys = [k for k in entries if k in _COMPARE_KEYS]
        if compare_keys:
            raise self.error(
                entries[compare_keys[0]][0],
                f"a condition mixes {compare_keys[0]!r} with {leaf_keys[0]!r}: "
                "write each as its own condition under 'all'",
            )
        # Several trigger keys in one mapping ({kind: K, in_segment: S}): all must hold.
        leaves = tuple(self.parse_trigger_leaf(key, *entries[key]) for key in leaf_keys)
        return leaves[0] if len(leaves) == 1 else AllOf(leaves)

    def parse_compare(self, node: yaml.MappingNode) -> Compare:
        entries = self.mapping(node, "a comparison", _COMPARE_KEYS)
        if "feature" not in entries:
            raise self.error(node, "a comparison needs 'feature', 'op' and 'value'")
        feature_node = entries["feature"][1]
        feature = self.string(feature_node, "feature")
        if feature not in _TYPES:
            close = difflib.get_close_matches(feature, list(_TYPES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else " (see operators/features.py)"
            raise self.error(feature_node, f"unknown feature {feature!r}{hint}")
        ftype = _TYPES[feature]
        if "op" not in entries:
            raise self.error(node, f"comparison on {feature!r} has no 'op'")
        op_node = entries["op"][1]
        op = self.scalar(op_node)
        if op not in OPS:
            raise self.error(
                op_node, f"unknown op {op!r} on {feature!r}; use one of {', '.join(OPS)}"
            )
        if op in NULL_OPS:
            if "value" in entries:
                raise self.error(entries["value"][0], f"'{op}' takes no value")
            if not ftype.nullable:
                raise self.error(
                    op_node,
                    f"'{op}' on {feature!r}: the feature is never null (type {ftype})",
                )
            return Compare(feature, op)
        if "value" not in entries:
            raise self.error(node, f"comparison {feature!r} {op} has no 'value'")
        value_node = entries["value"][1]
        if op in NUMERIC_OPS and not ftype.numeric:
            raise self.error(
                op_node,
                f"type mismatch: {op!r} needs a numeric feature, {feature!r} is {ftype}",
            )
        if op in SET_OPS:
            if not isinstance(value_node, yaml.SequenceNode):
                raise self.error(
                    value_node, f"'{op}' takes a list of values, got {_kind(value_node)}"
                )
            if not value_node.value:
                raise self.error(value_node, f"'{op}' has an empty list of values")
            items = tuple(self.typed_value(n, feature, ftype, op) for n in value_node.value)
            return Compare(feature, op, items)
        return Compare(feature, op, self.typed_value(value_node, feature, ftype, op))

    def typed_value(
        self, node: yaml.Node, feature: str, ftype: _FeatureType, op: str
    ) -> int | float | str:
        value = self.scalar(node)
        if value is None:
            fix = "is_null" if op in ("==", "in") else "not_null"
            raise self.error(node, f"comparison {feature!r} {op} null: use op: {fix}")
        if ftype.numeric:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.error(
                    node,
                    f"type mismatch: {feature!r} is {ftype}, value {value!r} is not a number",
                )
            if isinstance(value, float) and math.isnan(value):
                raise self.error(node, f"value for {feature!r} is NaN")
            return value
        if not isinstance(value, str):
            raise self.error(
                node, f"type mismatch: {feature!r} is {ftype}, value {value!r} is not a string"
            )
        symbols = ENUM_FEATURES.get(feature)
        if symbols is not None and value not in symbols:
            hint = _suggest(value.upper(), symbols)
            raise self.error(
                node,
                f"{feature!r} is never {value!r}{hint}; its values are {', '.join(symbols)}",
            )
        return value

    # -- the trigger leaves

    def parse_trigger_leaf(self, key: str, key_node: yaml.Node, node: yaml.Node) -> Leaf:
        if key == "kind":
            return KindIs(tuple(self.kind_name(n) for n in self.one_or_list(node, key)))
        if key in ("in_segment", "not_in_segment"):
            names = tuple(self.segment_name(n) for n in self.one_or_list(node, key))
            return InSegment(names, negate=key == "not_in_segment")
        if key == "channel":
            return ChannelIs(tuple(self.channel(n) for n in self.one_or_list(node, key)))
        if key == "hours":
            return HoursIn(self.hour_window(node))
        return ScoreCompare(self.score(node))

    def score(self, node: yaml.Node) -> Compare:
        entries = self.mapping(node, "score", ("name", "op", "value"))
        if "name" not in entries or "op" not in entries:
            raise self.error(node, "score needs 'name', 'op' and 'value'")
        name_node = entries["name"][1]
        name = self.string(name_node, "score name")
        if not _NAME.fullmatch(name):
            raise self.error(name_node, f"bad score name {name!r}: use [a-z0-9_]")
        op_node = entries["op"][1]
        op = self.scalar(op_node)
        if op not in SCORE_OPS:
            raise self.error(
                op_node, f"unknown op {op!r} on score {name!r}; use one of {', '.join(SCORE_OPS)}"
            )
        if op in NULL_OPS:
            if "value" in entries:
                raise self.error(entries["value"][0], f"'{op}' takes no value")
            return Compare(name, op)
        if "value" not in entries:
            raise self.error(node, f"score {name!r} {op} has no 'value'")
        value_node = entries["value"][1]
        value = self.scalar(value_node)
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise self.error(value_node, f"score {name!r}: value {value!r} is not a number")
        return Compare(name, op, value)

    # -- the values of trigger leaves

    def one_or_list(self, node: yaml.Node, key: str) -> list[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            if not node.value:
                raise self.error(node, f"{key!r} has an empty list")
            return list(node.value)
        return [node]

    def kind_name(self, node: yaml.Node, value: Any = None) -> str:
        kind = self.scalar(node) if value is None else value
        if not isinstance(kind, str) or not _NAME.fullmatch(kind):
            raise self.error(node, f"bad kind {kind!r}: use lower-case letters, digits and '_'")
        if self.known_kinds is not None and kind not in self.known_kinds:
            raise self.error(node, f"unknown kind {kind!r}{_suggest(kind, self.known_kinds)}")
        return kind

    def segment_name(self, node: yaml.Node) -> str:
        name = self.scalar(node)
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise self.error(node, f"bad segment name {name!r}: use [a-z0-9_]")
        known = self.known_segments
        if (
            known is not None
            and name not in known
            and not re.fullmatch(rf"{CLUSTER_SEGMENT_PREFIX}\d+", name)
        ):
            raise self.error(node, f"unknown segment {name!r}{_suggest(name, known)}")
        return name

    def channel(self, node: yaml.Node) -> str:
        value = self.scalar(node)
        if value not in CHANNELS:
            hint = _suggest(str(value).upper(), CHANNELS) if isinstance(value, str) else ""
            raise self.error(
                node, f"unknown channel {value!r}{hint}; use one of {', '.join(CHANNELS)}"
            )
        return str(value)

    def hour_window(self, node: yaml.Node) -> HourWindow:
        entries = self.mapping(node, "an hour window", ("from", "to"))
        if "from" not in entries or "to" not in entries:
            raise self.error(node, "an hour window needs 'from' and 'to' (local hours, 0-24)")
        start = self.hour(entries["from"][1], "from", 23)
        end = self.hour(entries["to"][1], "to", 24)
        if start == end:
            raise self.error(node, f"empty hour window: from {start} to {end}")
        return HourWindow(start, end)

    def hour(self, node: yaml.Node, key: str, highest: int) -> int:
        value = self.scalar(node)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= highest:
            raise self.error(node, f"bad hour {value!r} for {key!r}: use a whole hour 0-{highest}")
        return value

    # -- the YAML document

    def _syntax_error(self, text: str, exc: yaml.MarkedYAMLError) -> RuleError:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        reason = "YAML syntax error"
        if exc.context:
            reason += f" {exc.context}"
            if exc.context_mark is not None and exc.context_mark.line + 1 != line:
                reason += f" at line {exc.context_mark.line + 1}"
        reason += f": {exc.problem or 'invalid YAML'}"
        lines = text.splitlines()
        suspects = [line, line - 1] if line else []
        if any(0 < n <= len(lines) and _UNQUOTED_OP.search(lines[n - 1]) for n in suspects):
            reason += "; quote the operator: op: \">=\" ('>', '!' and '|' are YAML syntax)"
        return self.make_error(line, reason)


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"{node.value!r}" if node.value else "nothing"


def _expected(key: str, allowed: Sequence[str]) -> str:
    if "feature" in allowed:  # a comparison, or a misspelt all/any/not
        allowed = (*allowed, "all", "any", "not")
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f" ({hint}expected one of {', '.join(allowed)})"


def _suggest(name: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
