"""The pure parts of ``attune bench latency`` (no servers, no timing assertions)."""

from __future__ import annotations

import argparse
import itertools
from typing import Any

import pytest

from attune.bench import latency
from attune.bench.latency import Latency, LatencyRow, format_latency_table, live_events, percentile
from attune.flows.cli import build_parser
from attune.workload.generator import GeneratorConfig, generate


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # unsorted input


def test_percentile_rejects_empty_and_bad_q() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="q must be"):
        percentile([1.0], 101)


def test_latency_of() -> None:
    stat = Latency.of([5.0, 1.0, 3.0])
    assert stat is not None
    assert (stat.p50, stat.max, stat.count) == (3.0, 5.0, 3)
    assert stat.p95 == pytest.approx(4.8) and stat.p99 == pytest.approx(4.96)
    assert Latency.of([]) is None


def test_verdict_is_on_p99_strictly_below_50_ms() -> None:
    assert LatencyRow("a", Latency(1, 2, 49.9, 80, 10), targeted=True).verdict == "pass"
    assert LatencyRow("a", Latency(1, 2, 50.0, 80, 10), targeted=True).verdict == "FAIL"
    assert LatencyRow("a", None, targeted=True).verdict == "n/a"
    assert LatencyRow("a", Latency(1, 2, 500, 800, 10)).verdict == ""


def test_table_aligns_and_marks_missing_rows() -> None:
    rows = [
        LatencyRow("event -> trigger", Latency(12.25, 30.0, 61.0, 1234.5, 4321), True),
        LatencyRow("broker round trip", Latency(1.0, 2.0, 3.0, 4.0, 10)),
        LatencyRow("event -> Redis", None, True, "not measured"),
    ]
    lines = format_latency_table(rows).splitlines()
    assert lines[0].split() == [
        "figure", "p50", "ms", "p95", "ms", "p99", "ms", "max", "ms", "count", "target",
        "verdict", "note",
    ]  # fmt: skip
    end = lines[0].index("p50 ms") + len("p50 ms")  # numbers right-aligned under the header
    assert lines[2][end - len("12.2") : end] == "12.2"
    assert lines[1].split()[0] == "-" * len("broker round trip")
    assert "12.2" in lines[2] and "1,234.5" in lines[2] and "4,321" in lines[2]
    assert lines[2].rstrip().endswith("FAIL")
    assert "p99 < 50 ms" not in lines[3]
    assert lines[4].split()[3:8] == ["-", "-", "-", "-", "0"]
    assert lines[4].endswith("n/a      not measured")


def test_live_events_keep_order_ids_and_payloads() -> None:
    events = list(itertools.islice(generate(GeneratorConfig(users=20, seed=3)).events, 200))
    ticks = itertools.count(1_800_000_000_000, 3)
    seen: list[str] = []
    live = list(live_events(events, lambda: next(ticks), lambda e: seen.append(e.event_id)))
    assert [e.event_id for e in live] == [e.event_id for e in events] == seen
    assert [e.payload for e in live] == [e.payload for e in events]
    assert [e.user_key for e in live] == [e.user_key for e in events]
    times = [e.event_time for e in live]
    assert times == sorted(times) and times[0] == 1_800_000_000_000


def test_live_events_never_go_back_in_time() -> None:
    events = list(itertools.islice(generate(GeneratorConfig(users=5, seed=1)).events, 4))
    ticks = iter([100, 90, 120, 110])
    assert [e.event_time for e in live_events(events, lambda: next(ticks))] == [100, 100, 120, 120]


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["bench", "latency", *argv])


def test_cli_defaults() -> None:
    args = _parse()
    assert args.bench == "latency"
    assert (args.rate, args.seconds, args.sample_users, args.redis_db) == (5000.0, 20.0, 200, 15)
    assert (args.redis_poll_ms, args.partitions, args.json) == (5.0, 1, None)


def test_cli_flags_and_validation(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse("--rate", "1000", "--seconds", "5", "--json", "out/l.json", "--drain", "2")
    assert (args.rate, args.seconds, str(args.json), args.drain) == (1000.0, 5.0, "out/l.json", 2)
    for bad in (["--rate", "0"], ["--seconds", "-1"], ["--redis-db", "16"]):
        with pytest.raises(SystemExit):
            _parse(*bad)
    capsys.readouterr()


def test_main_parses_the_same_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    got: list[argparse.Namespace] = []

    def fake_run(args: argparse.Namespace) -> int:
        got.append(args)
        return 0

    monkeypatch.setattr(latency, "run", fake_run)
    assert latency.main(["--rate", "10"]) == 0
    assert got[0].rate == 10.0


def test_by_period_medians_per_slice_and_clamps_out_of_range() -> None:
    pairs = [(-5, 1.0), (0, 3.0), (30, 10.0), (70, 20.0), (150, 40.0)]
    assert latency.by_period(pairs, 0, 100, 2) == [3.0, 30.0]
    assert latency.by_period([], 0, 100, 3) == [None, None, None]


def test_trace_flag_runs_the_flow_under_the_tracer() -> None:
    assert _parse().trace is None
    assert str(_parse("--trace", "out/t.jsonl").trace) == "out/t.jsonl"


def test_slowest_samples_keep_their_wall_times() -> None:
    from types import SimpleNamespace

    from attune.bench.latency import Received, _slowest

    got = [
        Received("long_dwell", 1_000, 1_020, 1_030, 1_040.0),
        Received("segment_entered", 2_000, 2_500, 2_510, 2_520.0),  # the stall
        Received("cart_abandoned", 0, 9_000, 9_999, 10_000.0),  # timer-caused: not a cause
    ]
    m: Any = SimpleNamespace(
        triggers=SimpleNamespace(got=got),
        redis=SimpleNamespace(latencies=[5.0, 300.0, 7.0], event_times=[10, 20, 30]),
        ping=SimpleNamespace(
            rtt={"generate": [21.0, 500.0], "linger0": [1.0]},
            sent_ms={"generate": [100.0, 200.0], "linger0": [300.0]},
        ),
    )
    out = _slowest(m, n=1)
    assert out["cause_to_emit"] == [{"at_ms": 2_000, "ms": 500}]
    assert out["emit_to_produced"] == [{"at_ms": 1_020, "ms": 10}]
    assert out["event_to_redis"] == [{"at_ms": 20, "ms": 300.0}]
    assert out["ping_generate"] == [{"at_ms": 200.0, "ms": 500.0}]
    assert out["ping_linger0"] == [{"at_ms": 300.0, "ms": 1.0}]
