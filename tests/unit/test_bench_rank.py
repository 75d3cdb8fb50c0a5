"""The ranking bench on a tiny workload: it captures the flow's calls and times both rankers."""

from __future__ import annotations

from attune.bench.rank import (
    HEADER,
    capture,
    every_nth,
    overlap,
    replay,
    report,
)
from attune.operators.ranking import rank
from attune.workload.generator import GeneratorConfig


def test_capture_and_report_on_a_tiny_workload() -> None:
    calls = capture(GeneratorConfig(users=30, days=1, seed=1, items=64))
    assert calls, "the flow ranked nobody"
    timing = replay(calls, "rank", rank)
    assert len(timing.ns) == len(calls) == len(timing.lists)
    assert all(len(items) <= c.k for items, c in zip(timing.lists, calls, strict=True))
    row = report("64 items", calls, full_limit=5)
    assert row.startswith("| 64 items |") and row.count("|") == HEADER.splitlines()[0].count("|")


def test_every_nth_and_overlap() -> None:
    assert every_nth([1, 2, 3, 4], 2) == [1, 3]
    assert every_nth([1, 2], None) == [1, 2]
    assert overlap([["a", "b"], []], [["b", "c"], ["x"]]) == 0.5
