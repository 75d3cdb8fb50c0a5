"""The stall tracer of ``attune bench latency --trace`` (no flow, no timing assertions:
a scripted clock stands in for time)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

from attune.bench.flow_trace import FlowTracer, Tracer


def _clock(times: list[float]) -> Any:
    it: Iterator[float] = iter(times)
    return it.__next__


def test_slow_calls_and_gaps_between_calls_are_recorded() -> None:
    # call A 0.00-0.01 (fast), gap 0.01-0.31 (slow: outside Python), call B 0.31-0.32
    t = Tracer(
        threshold_ms=100.0, bucket_ms=1000.0, out=None, clock=_clock([0.0, 0.01, 0.31, 0.32])
    )
    t.enter()
    t.leave("a.on_batch")
    t.enter()
    t.leave("b.write_batch")
    t.flush()
    slow = [(r["what"], round(r["ms"])) for r in t.records if "what" in r]
    assert slow == [("(bytewax)", 300)]
    (window,) = [r for r in t.records if "bucket_wall_ms" in r]
    assert window["ms"] == {"(bytewax)": 300.0, "a.on_batch": 10.0, "b.write_batch": 10.0}


def test_nested_calls_count_once_for_the_outer_call() -> None:
    t = Tracer(threshold_ms=50.0, bucket_ms=1000.0, out=None, clock=_clock([0.0, 0.2]))
    t.enter()
    t.enter()  # a traced method called by another traced method: no clock read
    t.leave("inner")
    t.leave("outer")
    assert [(r["what"], round(r["ms"])) for r in t.records] == [("outer", 200)]


def test_quiet_windows_are_not_written_and_lines_are_json() -> None:
    out = io.StringIO()
    t = Tracer(threshold_ms=50.0, bucket_ms=100.0, out=out, clock=_clock([0.0, 0.001, 0.5, 0.6]))
    t.enter()
    t.leave("fast")  # window 0: 1 ms, below the threshold
    t.enter()  # the gap 0.001-0.5 starts in window 0 but is slow on its own
    t.leave("slow")  # 0.5-0.6: window 5, 100 ms
    t.flush()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    # slow calls as they end; a window when the next one starts (or at the flush)
    assert [line.get("what") for line in lines] == ["(bytewax)", "slow", None, None]
    assert lines[2]["ms"] == {"(bytewax)": 499.0, "fast": 1.0} and lines[2]["items_in"] == 0
    assert lines[3]["ms"] == {"slow": 100.0}


class _Partition:
    def __init__(self) -> None:
        self.written: list[list[int]] = []

    def next_batch(self) -> list[int]:
        return [1, 2, 3]

    def write_batch(self, items: list[int]) -> None:
        self.written.append(items)


def test_builders_results_get_their_methods_timed_and_source_items_counted() -> None:
    times = iter(float(i) for i in range(100))
    tracer = Tracer(threshold_ms=1e9, bucket_ms=1e9, out=None, clock=times.__next__)
    flow = FlowTracer(tracer)
    part = flow.building(_Partition)()
    assert part.next_batch() == [1, 2, 3]
    part.write_batch([7])
    assert part.written == [[7]]  # the real method ran
    assert tracer.items_in == 3
    assert set(tracer.sums) >= {"_Partition.next_batch", "_Partition.write_batch"}
    flow.building(_Partition)()  # a class is patched once
    assert _Partition.next_batch.__name__ == "traced"
    assert _Partition.next_batch.__wrapped__ is not None  # type: ignore[attr-defined]
