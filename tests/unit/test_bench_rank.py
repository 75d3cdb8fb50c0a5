"""The ranking bench on a tiny workload: it captures the flow's calls and times both rankers."""

from __future__ import annotations

from attune.bench.rank import (
    HEADER,
    Call,
    capture,
    chunks,
    every_nth,
    overlap,
    replay,
    replay_full_lists,
    replay_many,
    report,
    report_many,
)
from attune.operators.content import Catalogue
from attune.operators.ranking import Models, UserSignals, rank
from attune.workload.generator import GeneratorConfig


def test_capture_and_report_on_a_tiny_workload() -> None:
    calls = capture(GeneratorConfig(users=30, days=1, seed=1, items=64))
    assert calls, "the flow ranked nobody"
    timing = replay(calls, "rank", rank)
    assert len(timing.ns) == len(calls) == len(timing.lists)
    assert all(len(items) <= c.k for items, c in zip(timing.lists, calls, strict=True))
    row = report("64 items", calls, full_limit=5)
    # rank_many, grouped as the flow grouped the calls and in chunks: rank's very lists
    _, single = replay_full_lists(calls)
    for size in (None, 1, 7):
        many = replay_many(calls, "x", size)
        assert many.lists == single and many.users == len(calls)
    assert report_many(calls).count("\n") == 4
    assert row.startswith("| 64 items |") and row.count("|") == HEADER.splitlines()[0].count("|")


def test_every_nth_and_overlap() -> None:
    assert every_nth([1, 2, 3, 4], 2) == [1, 3]
    assert every_nth([1, 2], None) == [1, 2]
    assert overlap([["a", "b"], []], [["b", "c"], ["x"]]) == 0.5


def test_chunks_follow_the_groups_or_runs_of_one_snapshot() -> None:
    a, b = Models(Catalogue()), Models(Catalogue())
    calls = [
        Call(UserSignals(f"u{i}", 0), m, 10, None, g)
        for i, (m, g) in enumerate([(a, 0), (a, 0), (a, 1), (b, 1), (b, 2)])
    ]
    assert chunks(calls, None) == [[0, 1], [2, 3], [4]]
    assert chunks(calls, 2) == [[0, 1], [2], [3, 4]]
    assert chunks(calls, 1) == [[0], [1], [2], [3], [4]]
