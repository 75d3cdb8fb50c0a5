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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from attune.operators.conditions import (
    _NAME,
    CLUSTER_SEGMENT_PREFIX,
    Compare,
    Condition,
    ConditionParser,
    Leaf,
    Not,
    Predicate,
    RuleError,
    _kind,
    compile_compare,
    compile_condition,
)
from attune.operators.events import SegmentChange
from attune.operators.features import Features

__all__ = [
    "RuleError",
    "RuleSet",
    "Segment",
    "cluster_segment",
    "load_rules",
    "membership_changes",
    "parse_rules",
]


@dataclass(frozen=True, slots=True)
class Segment:
    """One declared segment: its name, what it means, its condition and where it was declared."""

    name: str
    description: str
    condition: Condition
    line: int = 0


def _compile_segment_leaf(leaf: Compare | Leaf) -> Predicate:
    if not isinstance(leaf, Compare):
        raise TypeError(f"a segment condition has only feature comparisons, got {leaf!r}")
    return compile_compare(leaf)


def _compile(condition: Condition) -> Predicate:
    return compile_condition(condition, _compile_segment_leaf)


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
    attune.operators.conditions.RuleError: r.yaml:2: segment 'Big': bad name 'Big': use ...
    """
    return RuleSet(_SegmentFileParser(source).parse(text), source)


class _SegmentFileParser(ConditionParser):
    """The condition parser, with the segment file around the conditions."""

    subject = "segment"

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
