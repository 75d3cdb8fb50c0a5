"""Declarative rule segments: conditions over a user's features, declared in YAML.

Stage 6 of the flow (docs/architecture.md). The per-user state computes the
features of :mod:`attune.operators.features` at each event (and on timers); a
:class:`RuleSet` turns them into the set of segments the user is in, and
:func:`membership_changes` turns the difference between two such sets into
``SegmentChange`` records for the ``attune.segments`` topic and Redis.

Rules are declared in a YAML file (the shipped defaults are
``flows/segments.yaml``; docs/segments.md is the reference) and validated once,
at start-up, against the declared type of every feature, with errors that name
the file, the line and the reason (as Metarank does). Each condition tree is
compiled once into nested Python closures: no parsing and no ``eval`` per
event, a handful of dict lookups and comparisons.

>>> rules = parse_rules('''
... segments:
...   - name: big_cart
...     description: a cart worth 100.00 or more
...     condition: {feature: cart_value_minor, op: ">=", value: 10000}
... ''')
>>> rules.names
('big_cart',)
>>> sorted(rules.evaluate({"cart_value_minor": 12000}))
['big_cart']
>>> [(c.segment, c.change) for c in rules.membership_changes("u1", frozenset(),
...     rules.evaluate({"cart_value_minor": 12000}), event_time=1, emit_time=2)]
[('big_cart', 'ENTERED')]
>>> try:
...     parse_rules("segments:\\n  - name: x\\n    description: d\\n"
...                 "    condition: {feature: cart_valu, op: '>', value: 1}\\n", "my.yaml")
... except RuleError as e:
...     print(f"{e.file}:{e.line}:", e.reason, sep="\\n")
my.yaml:4:
segment 'x': unknown feature 'cart_valu' (did you mean 'cart_value_minor'?)
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final, TypeAlias, TypeVar

import yaml

from attune.operators.events import SegmentChange
from attune.operators.features import FEATURES, Features

__all__ = [
    "CLUSTER_SEGMENT_PREFIX",
    "OPS",
    "AllOf",
    "AnyOf",
    "Compare",
    "Condition",
    "ConditionParser",
    "Leaf",
    "Not",
    "RuleError",
    "RuleSet",
    "Segment",
    "cluster_segment",
    "compile_compare",
    "compile_condition",
    "describe",
    "load_rules",
    "membership_changes",
    "parse_rules",
]

#: A compiled condition: features in, membership out.
Predicate: TypeAlias = Callable[[Features], bool]
#: What a compiled condition reads: :data:`Features` for segments, another input for other
#: rule languages that extend the grammar (:mod:`~attune.operators.rules`).
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
    """Base of the leaves another rule language adds to this grammar (:mod:`~.rules`).

    Segment files never contain one; trigger rules add leaves such as ``kind`` or
    ``in_segment`` next to feature comparisons, under the same ``all``/``any``/``not``.
    A subclass is a frozen dataclass that says how it reads in :func:`describe`.
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


@dataclass(frozen=True, slots=True)
class Segment:
    """One declared segment: its name, what it means, its condition and where it was declared."""

    name: str
    description: str
    condition: Condition
    line: int = 0


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


def _compile_segment_leaf(leaf: Compare | Leaf) -> Predicate:
    if not isinstance(leaf, Compare):
        raise TypeError(f"a segment condition has only feature comparisons, got {leaf!r}")
    return compile_compare(leaf)


def _compile(condition: Condition) -> Predicate:
    return compile_condition(condition, _compile_segment_leaf)


def compile_condition(
    condition: Condition, compile_leaf: Callable[[Compare | Leaf], Callable[[T], bool]]
) -> Callable[[T], bool]:
    """Compile a condition tree once into nested closures; ``compile_leaf`` compiles leaves.

    Segments compile over :data:`Features`; :mod:`attune.operators.rules` compiles the same
    ``all``/``any``/``not`` over its own input, with its own leaves.

    >>> pred = compile_condition(Not(Compare("purchases", ">", 1)), _compile_segment_leaf)
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


# --- the rule set --------------------------------------------------------------------------------


class RuleSet:
    """Validated, compiled segments; :meth:`evaluate` is the per-event call.

    Build one with :func:`load_rules` or :func:`parse_rules` (which validate), or from
    :class:`Segment` objects (which :func:`parse_rules` produced or a test built).
    A rule set is configuration, not state: it is built once per worker at start-up.
    It pickles (by its segments) so that it can travel with a dataflow.

    >>> rules = RuleSet([Segment("buyer", "has ordered", Compare("purchases", ">=", 1))])
    >>> rules.evaluate({"purchases": 2}), rules.evaluate({"purchases": 0})
    (frozenset({'buyer'}), frozenset())
    """

    __slots__ = ("_compiled", "descriptions", "features", "names", "segments", "source")

    def __init__(self, segments: Iterable[Segment], source: str = "<rules>") -> None:
        self.segments: tuple[Segment, ...] = tuple(segments)
        self.source = source
        self.names: tuple[str, ...] = tuple(s.name for s in self.segments)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"{source}: duplicate segment names in {self.names}")
        #: name -> description, for the reasons of membership changes.
        self.descriptions: dict[str, str] = {s.name: s.description for s in self.segments}
        #: The features the rules read (the state must compute them, timers must refresh
        #: the time-dependent ones).
        self.features: frozenset[str] = frozenset(
            f for s in self.segments for f in _features_of(s.condition)
        )
        self._compiled: tuple[tuple[str, Predicate], ...] = tuple(
            (s.name, _compile(s.condition)) for s in self.segments
        )

    def evaluate(self, features: Features) -> frozenset[str]:
        """The names of the segments whose condition ``features`` satisfy.

        Parameters
        ----------
        features
            A user's features (:data:`attune.operators.features.FEATURES`); a missing name counts
            as ``None``.

        Returns
        -------
        frozenset[str]
            The segments the user is in now.
        """
        return frozenset([name for name, pred in self._compiled if pred(features)])

    def membership_changes(
        self,
        user_id: str,
        before: frozenset[str],
        after: frozenset[str],
        event_time: int,
        emit_time: int,
    ) -> list[SegmentChange]:
        """:func:`membership_changes` with this rule set's descriptions as reasons."""
        return membership_changes(
            user_id, before, after, event_time, emit_time, descriptions=self.descriptions
        )

    def __reduce__(self) -> tuple[type[RuleSet], tuple[tuple[Segment, ...], str]]:
        return (RuleSet, (self.segments, self.source))

    def __repr__(self) -> str:
        return f"RuleSet({self.source!r}, names={self.names!r})"


def _features_of(condition: Condition) -> Iterable[str]:
    if isinstance(condition, Compare):
        yield condition.feature
    elif isinstance(condition, Leaf):
        return
    elif isinstance(condition, Not):
        yield from _features_of(condition.child)
    else:
        for c in condition.children:
            yield from _features_of(c)


def cluster_segment(cluster: int) -> str:
    """The segment name of a cluster persona, as in ``SegmentChange.segment`` and Redis.

    >>> cluster_segment(3)
    'persona_3'
    """
    return f"{CLUSTER_SEGMENT_PREFIX}{cluster}"


def membership_changes(  # noqa: PLR0917 - the positional signature is the flow's contract
    user_id: str,
    before: frozenset[str],
    after: frozenset[str],
    event_time: int,
    emit_time: int,
    source: str = "RULE",
    *,
    descriptions: Mapping[str, str] | None = None,
) -> list[SegmentChange]:
    """The ``SegmentChange`` records that take a user from ``before`` to ``after``.

    Exits come first, then entries, each sorted by segment name, so that a consumer
    applying them in order never sees a user in both of two mutually exclusive segments
    (a cluster move is an exit then an entry) and a replay emits the same sequence.

    Parameters
    ----------
    user_id
        The user (already pseudonymised).
    before, after
        Segment names before and after the event (or timer).
    event_time
        Event time of the cause (the event, or the timer's time).
    emit_time
        When the change is emitted (the clock's now).
    source
        ``"RULE"`` for rule segments, ``"CLUSTER"`` for persona clusters.
    descriptions
        Segment name -> description; the reason names it when given.

    Returns
    -------
    list[SegmentChange]
        Empty when nothing changed.

    Examples
    --------
    >>> changes = membership_changes("u1", frozenset({"a", "b"}), frozenset({"b", "d", "c"}),
    ...                              event_time=10, emit_time=12,
    ...                              descriptions={"c": "likes cats"})
    >>> for c in changes:
    ...     print(c.change, c.segment, c.reason, sep=" | ")
    EXITED | a | exited a
    ENTERED | c | entered c: likes cats
    ENTERED | d | entered d
    """
    if before == after:
        return []
    described = descriptions or {}
    out: list[SegmentChange] = []
    for change, word, names in (
        ("EXITED", "exited", before - after),
        ("ENTERED", "entered", after - before),
    ):
        for name in sorted(names):
            description = described.get(name)
            reason = f"{word} {name}: {description}" if description else f"{word} {name}"
            out.append(
                SegmentChange(
                    user_id=user_id,
                    segment=name,
                    change=change,
                    source=source,
                    event_time=event_time,
                    emit_time=emit_time,
                    reason=reason,
                )
            )
    return out


# --- loading and validation ----------------------------------------------------------------------


class RuleError(ValueError):
    """A rule file is invalid: ``str(error)`` is ``"<file>:<line>: <reason>"``.

    Attributes
    ----------
    file
        The file (or the ``source`` given to :func:`parse_rules`).
    line
        1-based line of the offending node (0 when the file is empty).
    reason
        What is wrong, naming the segment when known.
    """

    def __init__(self, file: str, line: int, reason: str) -> None:
        super().__init__(f"{file}:{line}: {reason}")
        self.file = file
        self.line = line
        self.reason = reason


def load_rules(path: Path | None = None) -> RuleSet:
    """Load and validate a rule file; ``None`` loads the shipped defaults.

    Parameters
    ----------
    path
        A YAML rule file (docs/segments.md has the grammar). ``None`` reads
        ``flows/segments.yaml`` from the installed package.

    Returns
    -------
    RuleSet
        The compiled rules.

    Raises
    ------
    RuleError
        The file is not valid; the message names file, line and reason.
    OSError
        The file cannot be read.

    Examples
    --------
    >>> rules = load_rules()
    >>> rules.names[:2]
    ('interested_but_hesitant', 'frequent_buyer')
    >>> sorted(rules.evaluate({"purchases_30d": 4, "revenue_30d_minor": 61_000, "sessions": 5,
    ...                        "purchases": 9, "days_since_last_purchase": 1.5}))
    ['frequent_buyer', 'high_value']
    """
    if path is None:
        shipped = resources.files("attune.flows") / "segments.yaml"
        return parse_rules(shipped.read_text(encoding="utf-8"), str(shipped))
    return parse_rules(Path(path).read_text(encoding="utf-8"), str(path))


def parse_rules(text: str, source: str = "<string>") -> RuleSet:
    """Parse and validate rules from YAML text.

    Parameters
    ----------
    text
        The YAML document: a mapping with a ``segments`` list.
    source
        The file name used in error messages.

    Returns
    -------
    RuleSet
        The compiled rules.

    Raises
    ------
    RuleError
        The text is not a valid rule file.

    Examples
    --------
    >>> parse_rules("segments: []").names
    ()
    >>> parse_rules("segments:\\n  - name: Big\\n", "r.yaml")
    Traceback (most recent call last):
    ...
    attune.operators.segments.RuleError: r.yaml:2: segment 'Big': bad name 'Big': use lower-case ...
    """
    return RuleSet(ConditionParser(source).parse(text), source)


class ConditionParser:
    """Walks the composed YAML node tree, which keeps every node's line.

    :meth:`parse` reads a segment file. Other rule files (:mod:`attune.operators.rules`) subclass
    it to reuse the node helpers, the error style and :meth:`parse_condition`; they set
    :attr:`subject` (the word errors name an entry by) and override :meth:`parse_leaf` to
    add leaves, and :meth:`make_error` to raise their own ``RuleError`` subclass.
    """

    #: What an entry of the file is called in errors: ``segment 'x': ...``.
    subject = "segment"

    def __init__(self, source: str) -> None:
        self.source = source
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

    # -- the grammar

    def parse(self, text: str) -> list[Segment]:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            raise self._syntax_error(text, exc) from exc
        except yaml.YAMLError as exc:  # pragma: no cover - PyYAML raises marked errors
            raise self.make_error(0, f"YAML error: {exc}") from exc
        if root is None:
            raise self.make_error(0, "empty rule file: expected a mapping with 'segments'")
        top = self.mapping(root, "the rule file", ("segments",))
        if "segments" not in top:
            raise self.error(root, "the rule file has no 'segments' list")
        _key, seq = top["segments"]
        if not isinstance(seq, yaml.SequenceNode):
            raise self.error(seq, f"'segments' must be a list, got {_kind(seq)}")
        segments: list[Segment] = []
        lines: dict[str, int] = {}
        for index, node in enumerate(seq.value, start=1):
            segment = self.parse_segment(node, index)
            if segment.name in lines:
                self.segment = repr(segment.name)
                raise self.error(
                    node,
                    f"duplicate segment name (first declared at line {lines[segment.name]})",
                )
            lines[segment.name] = segment.line
            segments.append(segment)
        self.segment = ""
        return segments

    def name_in_errors(self, node: yaml.Node, index: int) -> None:
        """Errors about the entry at ``node`` name it: by its ``name`` key, else ``#index``."""
        self.segment = f"#{index}"
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if (
                    isinstance(key_node, yaml.ScalarNode)
                    and key_node.value == "name"
                    and isinstance(value_node, yaml.ScalarNode)
                    and value_node.value
                ):
                    self.segment = repr(value_node.value)

    def named_entry(
        self, node: yaml.Node, index: int, what: str, keys: Sequence[str]
    ) -> tuple[dict[str, tuple[yaml.Node, yaml.Node]], str, yaml.Node]:
        """A list entry that must be a mapping with a valid ``name``: entries, name, node."""
        self.name_in_errors(node, index)
        entries = self.mapping(node, what, keys)
        if "name" not in entries:
            raise self.error(node, "missing 'name'")
        name_node = entries["name"][1]
        name = self.scalar(name_node)
        if not isinstance(name, str):
            raise self.error(name_node, f"name must be a string, got {name!r}")
        self.segment = repr(name)
        if not _NAME.fullmatch(name):
            raise self.error(
                name_node, f"bad name {name!r}: use lower-case letters, digits and '_'"
            )
        return entries, name, name_node

    def parse_segment(self, node: yaml.Node, index: int) -> Segment:
        entries, name, name_node = self.named_entry(
            node, index, "a segment", ("name", "description", "condition")
        )
        if name.startswith(CLUSTER_SEGMENT_PREFIX):
            raise self.error(
                name_node,
                f"bad name {name!r}: names starting with {CLUSTER_SEGMENT_PREFIX!r} are "
                "reserved for cluster personas",
            )
        if "description" not in entries:
            raise self.error(node, "missing 'description' (say what the segment means)")
        description = self.string(entries["description"][1], "description").strip()
        if "condition" not in entries:
            raise self.error(node, "missing 'condition'")
        condition = self.parse_condition(entries["condition"][1])
        line = node.start_mark.line + 1
        self.segment = ""
        return Segment(name=name, description=description, condition=condition, line=line)

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
        """A condition mapping without ``all``/``any``/``not``: a feature comparison here."""
        return self.parse_compare(node)

    def parse_compare(self, node: yaml.MappingNode) -> Compare:
        entries = self.mapping(node, "a comparison", ("feature", "op", "value"))
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
        return value

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
