"""The rule segments as they stood in event time
(:func:`attune.operators.membership.segments_as_of`), which cart judgements read
(tests/unit/test_cart_rule_as_of.py has the flow's test)."""

from __future__ import annotations

from attune.operators.membership import MAX_PAST, Membership, _record, segments_as_of, settle


def test_segments_as_of_any_order_and_settled() -> None:
    """The record answers for the latest change at or before a time, in event time,
    whatever order the changes arrived in; settling keeps what later times read."""
    m = Membership()
    a, b = frozenset({"a"}), frozenset({"a", "b"})
    _record(m, 3_000, frozenset(), b)  # arrives first, dated later
    _record(m, 1_000, frozenset(), a)  # a login's history, dated earlier
    m.segments = b
    assert [segments_as_of(m, t) for t in (0, 999, 1_000, 2_999, 3_000, 10**13)] == [
        frozenset(),
        frozenset(),
        a,
        a,
        b,
        b,
    ]
    settle(m, 2_000)
    assert [segments_as_of(m, t) for t in (2_000, 3_000)] == [a, b]
    settle(m, 3_000)
    assert m.past == [] and segments_as_of(m, 3_000) == b


def test_the_record_is_bounded() -> None:
    m = Membership()
    for i in range(3 * MAX_PAST):
        before, m.segments = m.segments, frozenset({f"s{i}"})
        _record(m, i * 1_000, before, m.segments)
    assert len(m.past) == MAX_PAST
    assert segments_as_of(m, 3 * MAX_PAST * 1_000) == m.segments
