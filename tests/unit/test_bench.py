"""The pure parts of ``attune bench throughput``: flags, statistics, verdicts, the table.

No servers and no clocks here: the bench's figures are printed by the bench,
never asserted.
"""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attune.bench import throughput as tp
from attune.bench.throughput import (
    EVENTS_PER_PROCESS_TARGET,
    RATIO_TARGET,
    REDIS_BYTES_PER_USER_TARGET,
    DecodeResult,
    FlowRun,
    RedisMemory,
    Row,
    Stat,
    Target,
)
from attune.flows.settings import Settings


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    tp.add_arguments(parser)
    return parser.parse_args(list(argv))


# --- arguments -------------------------------------------------------------------------------


def test_defaults_are_the_issue_workload() -> None:
    args = parse()
    assert (args.users, args.days, args.seed) == (2000, 7, 11)
    assert (args.partitions, args.processes, args.workers, args.repeat) == (1, 1, 1, 1)
    assert args.redis_db == 15
    assert args.flow_timeout == tp.DEFAULT_FLOW_TIMEOUT_S
    assert args.json is None


def test_flags_are_parsed() -> None:
    args = parse(
        "--users", "50", "--days", "2", "--seed", "3", "--partitions", "2", "--processes", "2",
        "--workers", "3", "--repeat", "5", "--flow-timeout", "30.5", "--redis-db", "9",
        "--json", "out/b.json",
    )  # fmt: skip
    assert (args.users, args.days, args.seed) == (50, 2, 3)
    assert (args.partitions, args.processes, args.workers, args.repeat) == (2, 2, 3, 5)
    assert args.flow_timeout == 30.5
    assert args.redis_db == 9
    assert str(args.json) == "out/b.json"


@pytest.mark.parametrize(
    "argv",
    [
        ["--users", "0"],
        ["--partitions", "-1"],
        ["--repeat", "x"],
        ["--redis-db", "16"],
        ["--redis-db", "-1"],
        ["--flow-timeout", "0"],
        ["--processes", "1.5"],
    ],
)
def test_bad_flags_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_the_cli_wires_the_subcommand() -> None:
    from attune.flows.cli import build_parser

    args = build_parser().parse_args(["bench", "throughput", "--users", "10", "--repeat", "2"])
    assert (args.bench, args.users, args.repeat) == ("throughput", 10, 2)


# --- statistics and verdicts -----------------------------------------------------------------


def test_stat_of_odd_and_even_counts() -> None:
    assert Stat.of([5.0]) == Stat(5.0, 5.0, 5.0, 1)
    assert Stat.of([3.0, 9.0, 1.0]) == Stat(3.0, 1.0, 9.0, 3)
    assert Stat.of([4.0, 1.0, 2.0, 3.0]) == Stat(2.5, 1.0, 4.0, 4)


def test_stat_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        Stat.of([])


@given(st.lists(st.floats(-1e9, 1e9, allow_nan=False), min_size=1, max_size=50))
def test_median_lies_between_min_and_max(values: list[float]) -> None:
    s = Stat.of(values)
    assert s.low <= s.median <= s.high
    assert (s.low, s.high, s.n) == (min(values), max(values), len(values))


def test_summarize_skips_missing_values() -> None:
    summary = tp.summarize(
        [{"ratio": 0.2, "users": None}, {"ratio": None, "users": None}, {"ratio": 0.4}]
    )
    ratio = summary["ratio"]
    assert ratio is not None
    assert ratio.median == pytest.approx(0.3)
    assert (ratio.low, ratio.high, ratio.n) == (0.2, 0.4, 2)
    assert summary["users"] is None


@pytest.mark.parametrize(
    ("value", "target", "expected"),
    [
        (25_000, EVENTS_PER_PROCESS_TARGET, "pass"),
        (24_999.9, EVENTS_PER_PROCESS_TARGET, "FAIL"),
        (0.25, RATIO_TARGET, "pass"),
        (0.249, RATIO_TARGET, "FAIL"),
        (400, REDIS_BYTES_PER_USER_TARGET, "pass"),
        (400.5, REDIS_BYTES_PER_USER_TARGET, "FAIL"),
        (None, RATIO_TARGET, "n/a"),
    ],
)
def test_verdicts_against_the_design_targets(
    value: float | None, target: Target, expected: str
) -> None:
    assert tp.verdict(value, target) == expected


def test_targets_are_the_design_numbers() -> None:
    assert (EVENTS_PER_PROCESS_TARGET.bound, EVENTS_PER_PROCESS_TARGET.at_least) == (25_000, True)
    assert (RATIO_TARGET.bound, RATIO_TARGET.at_least) == (0.25, True)
    assert (REDIS_BYTES_PER_USER_TARGET.bound, REDIS_BYTES_PER_USER_TARGET.at_least) == (
        400,
        False,
    )


def test_ratio() -> None:
    assert tp.ratio(20_000, 80_000) == 0.25
    assert tp.ratio(None, 1.0) is None
    assert tp.ratio(1.0, None) is None
    assert tp.ratio(1.0, 0.0) is None


# --- the table -------------------------------------------------------------------------------


def test_table_shows_median_min_max_target_and_verdict() -> None:
    rows = [
        Row("end-to-end events/s per process", "a", "{:,.0f}", Stat.of([30e3, 20e3, 26e3]),
            EVENTS_PER_PROCESS_TARGET),
        Row("end-to-end / decode-only", "b", "{:.3f}", Stat.of([0.1]), RATIO_TARGET),
        Row("dead letters", "c", "{:,.0f}", Stat.of([12.0])),
        Row("not measured", "d", "{:.1f}", None, RATIO_TARGET),
    ]  # fmt: skip
    lines = tp.format_table(rows).splitlines()
    assert lines[0].split() == ["figure", "median", "min", "max", "target", "verdict"]
    assert set(lines[1]) == {"-", " "}
    assert lines[2].split()[-6:] == ["26,000", "20,000", "30,000", ">=", "25,000", "pass"]
    assert lines[3].split()[-6:] == ["0.100", "0.100", "0.100", ">=", "0.25", "FAIL"]
    assert lines[4].split()[-3:] == ["12", "12", "12"]
    assert lines[5].split()[-6:] == ["-", "-", "-", ">=", "0.25", "n/a"]
    # columns line up: every value column ends where its header ends
    end_of_max = lines[0].index("max") + len("max")
    assert all(line[end_of_max - 1] != " " for line in lines[2:])


def test_rows_follow_the_figures_and_carry_the_targets() -> None:
    summary = {"ratio": Stat.of([0.3]), "redis_bytes_per_user": Stat.of([512.0])}
    rows = tp.build_rows(summary)
    assert [r.key for r in rows] == [key for key, *_ in tp.FIGURES]
    by_key = {r.key: r for r in rows}
    assert by_key["ratio"].verdict == "pass"
    assert by_key["redis_bytes_per_user"].verdict == "FAIL"
    assert by_key["e2e_events_per_s_per_process"].verdict == "n/a"
    assert by_key["dead_letters"].verdict == ""
    assert by_key["dead_letters"].stat is None


# --- one repeat's arithmetic -----------------------------------------------------------------


def test_repeat_figures() -> None:
    figures = tp.repeat_figures(
        events=100_000,
        processes=2,
        decode=DecodeResult(events=100_000, wall_s=1.0, connect_s=0.2, cpu_s=0.9, dead_letters=0),
        startup=FlowRun(wall_s=3.0, first_write_s=None, peak_rss_kib=[100_000, 90_000], cpu_s=2.0),
        flow=FlowRun(wall_s=8.0, first_write_s=3.5, peak_rss_kib=[120_000, 100_000], cpu_s=12.0),
        redis_mem=RedisMemory(
            used_delta=800_000, profile_users=2000, keys=5000, sample_bytes_per_user=350.0
        ),
        dead_letters=7,
        segment_changes=40,
    )
    assert figures["decode_events_per_s"] == 100_000
    assert figures["e2e_events_per_s"] == 20_000  # 100k events / (8 s - 3 s)
    assert figures["e2e_events_per_s_per_process"] == 10_000
    assert figures["ratio"] == 0.2
    assert figures["e2e_events_per_s_with_startup"] == 12_500
    assert figures["e2e_events_per_s_first_write"] == pytest.approx(100_000 / 4.5)
    assert figures["flow_cpu_us_per_event"] == pytest.approx(100.0)
    assert figures["peak_rss_mib"] == pytest.approx(120_000 / 1024)
    assert figures["rss_bytes_per_user"] == pytest.approx(30_000 * 1024 / 2000)
    assert figures["redis_bytes_per_user"] == 400
    assert figures["redis_sample_bytes_per_user"] == 350
    assert (figures["dead_letters"], figures["segment_changes"]) == (7, 40)


def test_repeat_figures_without_users_or_time() -> None:
    run = FlowRun(wall_s=2.0, first_write_s=None, peak_rss_kib=[1], cpu_s=1.0)
    figures = tp.repeat_figures(
        events=0,
        processes=1,
        decode=DecodeResult(events=0, wall_s=0.0, connect_s=0.0, cpu_s=0.0, dead_letters=0),
        startup=run,
        flow=run,
        redis_mem=RedisMemory(used_delta=0, profile_users=0, keys=0, sample_bytes_per_user=None),
        dead_letters=0,
        segment_changes=0,
    )
    for key in ("e2e_events_per_s", "ratio", "decode_events_per_s", "redis_bytes_per_user",
                "rss_bytes_per_user", "e2e_events_per_s_first_write"):  # fmt: skip
        assert figures[key] is None, key


# --- commands, settings and names ------------------------------------------------------------


def test_flow_commands_single_and_multi_process() -> None:
    assert tp.flow_commands(1, 1, [], python="py") == [
        ["py", "-m", "bytewax.run", "attune.flows.personalize:flow"]
    ]
    assert tp.flow_commands(1, 2, [], python="py")[0][-2:] == ["-w", "2"]
    cmds = tp.flow_commands(3, 1, [1, 2, 3], python="py")
    assert [c[c.index("-i") + 1] for c in cmds] == ["0", "1", "2"]
    assert {c[c.index("-a") + 1] for c in cmds} == {"127.0.0.1:1;127.0.0.1:2;127.0.0.1:3"}
    with pytest.raises(ValueError, match="2 processes need 2 ports"):
        tp.flow_commands(2, 1, [1], python="py")


def test_settings_env_round_trips_through_settings() -> None:
    settings = Settings(
        kafka_bootstrap="127.0.0.1:1",
        redis_url="redis://127.0.0.1:2/15",
        topic_events="bench-x.events",
        kafka_tail=False,
        kafka_batch_size=500,
    )
    assert Settings.from_env(tp.settings_env(settings)) == settings


def test_redis_db_url_keeps_credentials_and_scheme() -> None:
    assert tp.redis_db_url("redis://127.0.0.1:16379/0", 15) == "redis://127.0.0.1:16379/15"
    assert tp.redis_db_url("redis://127.0.0.1:16379", 15) == "redis://127.0.0.1:16379/15"
    assert tp.redis_db_url("rediss://u:p@h:1/2", 0) == "rediss://u:p@h:1/0"


def test_bench_topics_are_distinct_and_under_the_stem() -> None:
    names = tp.bench_topics("bench-abc")
    assert len(set(names.values())) == len(names)
    assert all(name.startswith("bench-abc.") for name in names.values())


def test_profile_pattern_matches_the_key_builder() -> None:
    import fnmatch

    from attune.operators.redis_keys import RedisKeys

    for prefix in ("attune:", "x*y:"):
        pattern = tp.profile_pattern(prefix)
        keys = RedisKeys(prefix)
        # Redis glob and fnmatch agree on '*' and escaped literals when '[' is absent
        literal = pattern.replace("\\*", "\0")
        assert fnmatch.fnmatchcase(keys.profile("u1").replace("*", "\0"), literal)
        assert not fnmatch.fnmatchcase(keys.segments("u1").replace("*", "\0"), literal)


def test_header_says_where_and_warns_when_the_code_changed() -> None:
    from attune.flows.generate import ProduceReport

    args = parse("--users", "10", "--repeat", "2")
    produced = ProduceReport("t", "i", events=1234, items=5, bytes=1, seconds=2.0, events_per_s=617)
    servers = tp.Servers("k:1", "redis://r:2/0", note="configured servers")
    machine = {
        "nproc": 2,
        "python": "3.11.7",
        "bytewax": "0.21.1",
        "load_average_start": [1.0, 1.0, 1.0],
        "load_average_end": [2.0, 1.0, 1.0],
        "git": "abc",
        "git_end": "abc",
    }
    header = tp._header(args, produced, servers, machine)
    assert "1,234 events of 10 users" in header
    assert "configured servers" in header
    assert "617 events/s" in header
    assert "WARNING" not in header
    changed = tp._header(args, produced, servers, {**machine, "git_end": "def"})
    assert "WARNING: the code changed during the run (abc -> def)" in changed
