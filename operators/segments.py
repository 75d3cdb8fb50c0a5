"""Declarative rule segments: conditions over a user's features, declared in YAML.

Stage 6 of the flow (docs/architecture.md). The per-user state computes the
features of :mod:`attune.operators.features` at each event (and on timers); a
:class:`RuleSet` turns them into the set of segments the user is in, and
:func:`membership_changes` turns the difference between two such sets into
``SegmentChange`` records for the ``attune.segments`` topic and Redis.

Rules are declared in a YAML file (the shipped defaults are
``flows/segments.yaml``; docs/segments.md is the reference), in the condition
grammar of :mod:`attune.operators.conditions`, and read and validated once, at
start-up, by :func:`attune.operators.rule_files.load_rules`. Each condition tree is
compiled once into nested Python closures: no parsing and no ``eval`` per
event, a handful of dict lookups and comparisons.

>>> rules = RuleSet([Segment("big_cart", "a cart worth 100.00 or more",
...                          Compare("cart_value_minor", ">=", 10000))])
>>> rules.names
('big_cart',)
>>> sorted(rules.evaluate({"cart_value_minor": 12000}))
['big_cart']
>>> [(c.segment, c.change) for c in rules.membership_changes("u1", frozenset(),
...     rules.evaluate({"cart_value_minor": 12000}), event_time=1, emit_time=2)]
[('big_cart', 'ENTERED')]
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from attune.operators.conditions import (
    CLUSTER_SEGMENT_PREFIX,
    Compare,
    Condition,
    Leaf,
    Not,
    Predicate,
    compile_compare,
    compile_condition,
)
from attune.operators.events import SegmentChange
from attune.operators.features import Features, change_bits

__all__ = [
    "RuleSet",
    "Segment",
    "cluster_segment",
    "membership_changes",
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

    Build one with :func:`~attune.operators.rule_files.load_rules` or
    :func:`~attune.operators.rule_files.parse_rules` (which validate), or from
    :class:`Segment` objects (which ``parse_rules`` produced or a test built).
    A rule set is configuration, not state: it is built once per worker at start-up.
    It pickles (by its segments) so that it can travel with a dataflow.

    >>> rules = RuleSet([Segment("buyer", "has ordered", Compare("purchases", ">=", 1))])
    >>> rules.evaluate({"purchases": 2}), rules.evaluate({"purchases": 0})
    (frozenset({'buyer'}), frozenset())
    """

    __slots__ = (
        "_compiled",
        "_reevaluated",
        "_watched",
        "descriptions",
        "features",
        "fingerprint",
        "names",
        "segments",
        "source",
    )

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
        #: Per segment, what can change it (:data:`attune.operators.features.CHANGED_BY`).
        self._watched: tuple[tuple[str, int, Predicate], ...] = tuple(
            (name, change_bits(_features_of(s.condition)), pred)
            for s, (name, pred) in zip(self.segments, self._compiled, strict=True)
        )
        #: Per value of :meth:`reevaluate`'s ``changed``: the segments it evaluates again
        #: (an event's kind and what it moved give a handful of values, at most
        #: ``EVERYTHING + 1``), so that an event does not test every segment's bits.
        self._reevaluated: dict[int, tuple[tuple[str, Predicate], ...]] = {}
        #: Stands for these rules in a user's state: a membership decided by other rules (an
        #: earlier run's file) is decided again whole (:meth:`reevaluate`'s caller checks).
        self.fingerprint: int = (
            zlib.crc32(repr([(s.name, s.condition) for s in self.segments]).encode()) or 1
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

    def reevaluate(
        self, features: Features, before: frozenset[str], changed: int
    ) -> frozenset[str]:
        """:meth:`evaluate` after an event, when ``before`` is what it gave before the event
        and ``changed`` says what the event changed (bits of
        :data:`attune.operators.features.CHANGED_BY`): only the segments a feature of which
        it may have changed are evaluated again; the others are as they were.

        >>> rules = RuleSet([Segment("buyer", "has ordered", Compare("purchases", ">=", 1)),
        ...                  Segment("multi", "two sessions", Compare("sessions", ">=", 2))])
        >>> from attune.operators.features import ORDERS
        >>> sorted(rules.reevaluate({"purchases": 1, "sessions": 2}, frozenset(), ORDERS))
        ['buyer']
        """
        again = self._reevaluated.get(changed)
        if again is None:
            again = self._reevaluated[changed] = tuple(
                (name, pred) for name, watched, pred in self._watched if watched & changed
            )
        flipped = [name for name, pred in again if (not pred(features)) == (name in before)]
        return before ^ frozenset(flipped) if flipped else before

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
