"""The pure parts of ``attune bench throughput``: flags, statistics, verdicts, the table,
the raw baseline's schema and decoders, and the profile's grouping by stage.

No servers and no clocks here: the bench's figures are printed by the bench,
never asserted.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attune.bench import flow_profile as fp
from attune.bench import raw_decode as rd
from attune.bench import throughput as tp
from attune.bench.throughput import (
    EVENTS_PER_PROCESS_TARGET,
    RATIO_TARGET,
    REDIS_BYTES_PER_USER_TARGET,
    REDIS_OWN_KEYS_TARGET,
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
    assert (args.profile, args.profile_out, args.raw_decoder) == (False, None, "auto")


def test_profile_and_raw_decoder_flags() -> None:
    args = parse("--profile", "--profile-out", "out/flow.pstats", "--raw-decoder", "fastavro")
    assert args.profile is True
    assert str(args.profile_out) == "out/flow.pstats"
    assert args.raw_decoder == "fastavro"
    assert parse("--raw-decoder", "cavro").raw_decoder == "cavro"


def test_help_describes_the_new_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        tp.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--profile" in out and "cProfile" in out and "--profile-out" in out
    assert "--raw-decoder {auto,cavro,fastavro}" in out
    assert "raw baseline (consume + decode, no project code)" in out


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
        ["--raw-decoder", "avro"],
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
    assert (REDIS_OWN_KEYS_TARGET.bound, REDIS_OWN_KEYS_TARGET.at_least) == (300, False)


def test_each_redis_row_is_judged_against_its_own_target() -> None:
    targets = {row[0]: row[3] for row in tp.FIGURES}
    assert targets["redis_bytes_per_user"] is REDIS_BYTES_PER_USER_TARGET
    assert targets["redis_sample_bytes_per_user"] is REDIS_OWN_KEYS_TARGET
    assert tp.verdict(338, targets["redis_sample_bytes_per_user"]) == "FAIL"


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


def test_the_raw_baseline_has_rows_and_its_own_verdict() -> None:
    keys = [key for key, *_ in tp.FIGURES]
    for key in ("raw_events_per_s", "raw_cpu_us_per_event", "raw_s", "ratio_raw", "ratio"):
        assert key in keys
    # the raw rows sit next to the decode-only ones, the raw ratio right above the old ratio
    assert keys.index("raw_events_per_s") + 1 == keys.index("decode_events_per_s")
    assert keys.index("ratio_raw") + 1 == keys.index("ratio")
    labels = {key: (label, target) for key, label, _fmt, target in tp.FIGURES}
    assert labels["ratio_raw"] == ("end-to-end / raw consume+decode", RATIO_TARGET)
    assert labels["ratio"][1] is RATIO_TARGET  # the decode-only verdict is kept too
    rows = {r.key: r for r in tp.build_rows({"ratio_raw": Stat.of([0.2]), "ratio": Stat.of([0.3])})}
    assert (rows["ratio_raw"].verdict, rows["ratio"].verdict) == ("FAIL", "pass")
    assert tp.build_rows({"ratio_raw": Stat.of([0.25])})[keys.index("ratio_raw")].verdict == "pass"
    table = tp.format_table(tp.build_rows({"ratio_raw": Stat.of([0.2])}))
    line = next(x for x in table.splitlines() if x.startswith("end-to-end / raw consume+decode"))
    assert line.split()[-6:] == ["0.200", "0.200", "0.200", ">=", "0.25", "FAIL"]


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


def test_repeat_figures_with_the_raw_baseline() -> None:
    run = FlowRun(wall_s=6.0, first_write_s=None, peak_rss_kib=[1], cpu_s=1.0)
    startup = FlowRun(wall_s=2.0, first_write_s=None, peak_rss_kib=[1], cpu_s=0.5)
    figures = tp.repeat_figures(
        events=80_000,
        processes=1,
        decode=DecodeResult(events=80_000, wall_s=4.0, connect_s=0.1, cpu_s=3.0, dead_letters=3),
        raw=DecodeResult(events=80_000, wall_s=1.0, connect_s=0.2, cpu_s=1.2, dead_letters=0),
        startup=startup,
        flow=run,
        redis_mem=RedisMemory(used_delta=0, profile_users=0, keys=0, sample_bytes_per_user=None),
        dead_letters=0,
        segment_changes=0,
    )
    assert figures["e2e_events_per_s"] == 20_000  # 80k / (6 s - 2 s)
    assert figures["raw_events_per_s"] == 80_000
    assert figures["ratio_raw"] == 0.25
    assert figures["ratio"] == 1.0  # against decode-only's 20,000/s
    assert figures["raw_cpu_us_per_event"] == pytest.approx(15.0)
    assert (figures["raw_s"], figures["raw_connect_s"], figures["raw_undecodable"]) == (1, 0.2, 0)
    without = tp.repeat_figures(
        events=80_000,
        processes=1,
        decode=DecodeResult(events=80_000, wall_s=4.0, connect_s=0.1, cpu_s=3.0, dead_letters=3),
        startup=startup,
        flow=run,
        redis_mem=RedisMemory(used_delta=0, profile_users=0, keys=0, sample_bytes_per_user=None),
        dead_letters=0,
        segment_changes=0,
    )
    assert without["raw_events_per_s"] is None and without["ratio_raw"] is None


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


def test_recovery_flow_commands_pass_the_store_to_every_process(tmp_path: Path) -> None:
    cmds = tp.flow_commands(2, 2, [1, 2], python="py", recovery_dir=tmp_path)
    for cmd in cmds:
        assert cmd[cmd.index("-r") + 1] == str(tmp_path)
        assert cmd[cmd.index("-s") + 1] == "10" and cmd[cmd.index("-b") + 1] == "0"
        assert cmd[cmd.index("-w") + 1] == "2"
    assert "-r" not in tp.flow_commands(1, 1, [], python="py")[0]


def test_init_recovery_makes_one_partition_per_worker(tmp_path: Path) -> None:
    store = tmp_path / "rec"
    tp.init_recovery(store, 3)
    assert sorted(p.name for p in store.iterdir()) == [f"part-{i}.sqlite3" for i in range(3)]


def test_recovery_is_off_unless_asked() -> None:
    parser = argparse.ArgumentParser()
    tp.add_arguments(parser)
    assert parser.parse_args([]).recovery is False
    assert parser.parse_args(["--recovery"]).recovery is True


def test_profiled_flow_commands_write_one_profile_per_process(tmp_path: Path) -> None:
    cmds = tp.flow_commands(2, 1, [1, 2], python="py", profile_dir=tmp_path)
    for i, cmd in enumerate(cmds):
        assert cmd[:5] == [
            "py",
            "-m",
            "attune.bench.flow_profile",
            str(tmp_path / f"flow-{i}.pstats"),
            "attune.flows.personalize:flow",
        ]
        assert cmd[cmd.index("-i") + 1] == str(i)


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


def test_user_pattern_matches_the_users_hashes_only() -> None:
    import fnmatch

    from attune.operators.redis_keys import RedisKeys

    for prefix in ("attune:", "x*y:"):
        pattern = tp.user_pattern(prefix)
        keys = RedisKeys(prefix)
        # Redis glob and fnmatch agree on '*' and escaped literals when '[' is absent
        literal = pattern.replace("\\*", "\0")
        assert fnmatch.fnmatchcase(keys.user("u1").replace("*", "\0"), literal)
        for other in keys.user_keys("u1")[1:]:  # the alias, the earlier layout's keys
            assert not fnmatch.fnmatchcase(other.replace("*", "\0"), literal)


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


# --- the raw baseline: schema, header, decoders (no Kafka) ---------------------------------


def _encoded_events(n: int = 40) -> list[bytes]:
    import itertools

    from attune.operators.codec import Codec
    from attune.workload.generator import GeneratorConfig, generate

    codec = Codec()
    events = generate(GeneratorConfig(users=20, days=1, seed=5)).events
    return [codec.encode_event(e) for e in itertools.islice(events, n)]


@pytest.mark.parametrize("record", ["attune.event.Event", "attune.item.ItemUpdate"])
def test_raw_schema_is_the_avsc_files_expanded(record: str) -> None:
    import fastavro
    import fastavro.schema

    folder = tp.avro_dir()
    ours = rd.load_schema(folder, record)
    theirs = fastavro.schema.expand_schema(
        fastavro.schema.load_schema(str(folder / f"{record}.avsc"), _write_hint=False)
    )

    def canonical(schema: Any) -> str:
        return str(fastavro.schema.to_parsing_canonical_form(fastavro.parse_schema(schema)))

    assert canonical(ours) == canonical(theirs)


def test_raw_schema_of_an_unknown_record_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no attune\.event\.Event"):
        rd.load_schema(tmp_path)


def test_header_length_by_wire_format() -> None:
    assert rd.header_length(_encoded_events(1)[0]) == rd.SINGLE_OBJECT_HEADER == 10
    assert rd.header_length(b"\x00\x00\x00\x00\x07rest") == rd.CONFLUENT_HEADER == 5
    with pytest.raises(ValueError, match="unknown wire format"):
        rd.header_length(b"\x01\x02")


def test_every_raw_decoder_gives_the_same_plain_dicts() -> None:
    from attune.operators.codec import Codec

    values = _encoded_events()
    bodies = [v[rd.header_length(v) :] for v in values]
    schema = rd.load_schema(tp.avro_dir())
    installed = rd.installed_decoders()
    assert "fastavro" in installed
    decoded = {name: [rd.make_decoder(name, schema)(b) for b in bodies] for name in installed}
    first = decoded["fastavro"]
    assert all(out == first for out in decoded.values())
    assert all(type(d) is dict and type(d["context"]) in (dict, type(None)) for d in first)
    typed = [Codec().decode_event(v) for v in values]
    assert [d["event_id"] for d in first] == [getattr(e, "event_id", None) for e in typed]


def test_calibration_chooses_an_installed_decoder() -> None:
    values = _encoded_events(20)
    bodies = [v[10:] for v in values]
    result = rd.calibrate(bodies, rd.load_schema(tp.avro_dir()), rd.installed_decoders())
    assert result["agree"] is True
    assert result["chosen"] in rd.installed_decoders()
    assert result["sample"] == 20
    timings = result["decoders"]
    assert result["chosen"] == min(timings, key=lambda n: timings[n]["us_per_message"])
    assert all(t["us_per_message"] > 0 for t in timings.values())
    with pytest.raises(ValueError, match="unknown decoder"):
        rd.make_decoder("avro", {})


def test_calibration_description_warns_when_decoders_disagree() -> None:
    cal = tp.RawCalibration(
        "fastavro",
        10,
        {
            "cavro": {"us_per_message": 14.0, "version": "1.0.0"},
            "fastavro": {"us_per_message": 40.0, "version": "1.13.1"},
        },
        agree=False,
        sample=100,
    )
    text = cal.describe()
    assert text.startswith("fastavro 1.13.1 (timed on 100 messages: cavro 14.0, fastavro 40.0")
    assert "WARNING: the decoders disagreed" in text


def test_the_raw_program_imports_no_project_code() -> None:
    tree = ast.parse(tp.RAW_DECODE_SCRIPT.read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert not [m for m in imported if m.split(".")[0] == "attune"], imported
    # Run as the bench runs it (a file, -P): building both decoders loads nothing of attune.
    code = textwrap.dedent(
        f"""
        import importlib.util, sys
        from pathlib import Path
        spec = importlib.util.spec_from_file_location("raw_decode", {str(tp.RAW_DECODE_SCRIPT)!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        schema = module.load_schema(Path({str(tp.avro_dir())!r}))
        for name in module.installed_decoders():
            module.make_decoder(name, schema)
        import confluent_kafka
        print(module._attune_modules())
        """
    )
    done = subprocess.run(
        [sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True, cwd="/"
    )
    assert done.stdout.strip() == "[]"


# --- the profile: stages, the grouping, the text ---------------------------------------------

ROOTS = {"/src/operators": "attune.operators", "/src/flows": "attune.flows", "/py/site": ""}
CLI = ("~", 0, "<built-in method bytewax._bytewax.cli_main>")
APPLY = ("/src/operators/profiles.py", 10, "apply")
RANK = ("/src/operators/ranking.py", 20, "rank")
DOT = ("/py/site/numpy/core/multiarray.py", 5, "dot")
SORTED = ("~", 0, "<built-in method builtins.sorted>")
SNAP = ("/src/operators/profiles.py", 50, "snapshot")
DUMPS = ("~", 0, "<built-in method _pickle.dumps>")
ORPHAN = ("~", 0, "<method 'disable' of '_lsprof.Profiler' objects>")


def _entry(tt: float, ct: float, callers: dict[Any, tuple[float, float]]) -> Any:
    """A pstats entry: (cc, nc, tt, ct, {caller: (cc, nc, tt, ct)})."""
    return (1, 1, tt, ct, {c: (1, 1, ett, ect) for c, (ett, ect) in callers.items()})


SYNTHETIC: dict[Any, Any] = {
    CLI: _entry(1.0, 9.0, {}),
    APPLY: _entry(2.0, 7.0, {CLI: (2.0, 7.0)}),
    RANK: _entry(1.0, 4.0, {APPLY: (1.0, 4.0)}),
    DOT: _entry(2.5, 3.0, {RANK: (2.5, 3.0)}),
    # sorted(): 0.3 s of own time when numpy called it (so: ranking's), 0.2 s from apply
    SORTED: _entry(0.5, 0.5, {DOT: (0.3, 0.3), APPLY: (0.2, 0.2)}),
    SNAP: _entry(0.5, 1.5, {CLI: (0.5, 1.5)}),
    DUMPS: _entry(1.0, 1.0, {SNAP: (1.0, 1.0)}),
    ORPHAN: _entry(0.5, 0.5, {}),
}


def test_stage_of_maps_modules_and_specific_functions() -> None:
    assert fp.stage_of("attune.operators.ranking", "rank") == "models/ranking"
    assert fp.stage_of("attune.operators.sources", "next_batch") == "source/decode"
    assert fp.stage_of("attune.operators.codec", "decode_datum") == "source/decode"
    assert fp.stage_of("attune.operators.identity", "on_batch") == "identity"
    assert fp.stage_of("attune.operators.identity", "snapshot") == "snapshots/pickle"
    assert fp.stage_of("attune.operators.user_logic", "snapshot") == "snapshots/pickle"
    assert fp.stage_of("attune.operators.embeddings", "snapshot") == "models/ranking"
    # the single-key learners apart from the read side of the same modules
    assert fp.stage_of("attune.operators.models", "publish") == "model learner"
    assert fp.stage_of("attune.operators.models", "put_state") == "model learner"
    assert fp.stage_of("attune.operators.embeddings", "learn_sessions") == "model learner"
    assert fp.stage_of("attune.operators.propensity", "learn") == "model learner"
    assert fp.stage_of("attune.operators.models", "snapshot") == "snapshots/pickle"
    assert fp.stage_of("attune.operators.models", "from_bytes") == "models/ranking"
    assert fp.stage_of("attune.operators.models", "put") == "models/ranking"  # a board's
    assert fp.stage_of("attune.operators.clustering", "learn_many") == "cluster learner"
    assert fp.stage_of("attune.operators.clustering", "assign") == "segments"
    assert fp.stage_of("attune.operators.user_step", "step") == "per-user step"
    assert fp.stage_of("attune.operators.segments", "evaluate") == "segments"
    assert fp.stage_of("attune.operators.trigger_decisions", "judge") == "triggers"
    assert fp.stage_of("attune.operators.redis_sink", "write_batch") == "Redis sink"
    assert fp.stage_of("attune.operators.kafka_sink", "write_batch") == "Kafka sinks"
    assert fp.stage_of("attune.flows.personalize", "_by_user") == "flow glue (attune.flows)"
    assert fp.stage_of("bytewax.operators", "shim_mapper") == "Bytewax overhead"
    assert fp.stage_of("~", "<built-in method bytewax._bytewax.cli_main>") == "Bytewax overhead"
    assert fp.stage_of("~", "<built-in method _pickle.dumps>") == "snapshots/pickle"
    assert fp.stage_of("attune.operators.events", "reduce") == "snapshots/pickle"
    assert fp.stage_of("numpy.core.multiarray", "dot") is None
    assert fp.stage_of("~", "<built-in method builtins.sorted>") is None
    # a custom map: the first stage with a matching pattern wins
    stages = {"a": ("m:f",), "b": ("m",)}
    assert (fp.stage_of("m", "f", stages), fp.stage_of("m", "g", stages)) == ("a", "b")


def test_every_operators_module_has_a_stage() -> None:
    """When modules move or appear, add them to flow_profile.STAGES (this names the missing)."""
    import attune.operators

    folder = Path(next(iter(attune.operators.__path__)))
    missing = [
        p.stem
        for p in sorted(folder.glob("*.py"))
        if p.stem != "__init__" and fp.stage_of(f"attune.operators.{p.stem}", "f") is None
    ]
    assert not missing, f"add attune.operators.{missing} to a stage of flow_profile.STAGES"


def test_module_of_profiled_files() -> None:
    assert fp.module_of("/src/operators/ranking.py", ROOTS) == "attune.operators.ranking"
    assert fp.module_of("/src/flows/personalize.py", ROOTS) == "attune.flows.personalize"
    assert fp.module_of("/py/site/bytewax/operators/__init__.py", ROOTS) == "bytewax.operators"
    assert fp.module_of("/py/site/numpy/core/multiarray.py", ROOTS) == "numpy.core.multiarray"
    assert fp.module_of("~", ROOTS) == "~"
    assert fp.module_of("<frozen importlib._bootstrap>", ROOTS) == "importlib._bootstrap"
    assert fp.module_of("<string>", ROOTS) == "<string>"
    assert fp.module_of("/elsewhere/thing.py", ROOTS) == "thing"


def test_module_roots_know_the_project_site_packages_and_stdlib() -> None:
    import json
    import os

    import numpy

    roots = fp.module_roots(fp.PROJECT_PACKAGES)
    assert "attune.operators" in roots.values()
    assert fp.module_of(fp.__file__, roots) == "attune.bench.flow_profile"
    assert fp.module_of(numpy.__file__, roots) == "numpy"
    assert fp.module_of(json.__file__, roots) == "json"
    assert fp.module_of(os.path.realpath(tp.__file__), roots) == "attune.bench.throughput"


def test_analyze_lifts_library_time_to_the_calling_stage() -> None:
    report = fp.analyze(SYNTHETIC, ROOTS)
    assert report.total_s == pytest.approx(9.0)
    shares = {s.stage: s for s in report.stages}
    expected_self = {
        "models/ranking": 1.0 + 2.5 + 0.3,  # rank, numpy's dot, sorted() when dot called it
        "per-user step": 2.0 + 0.2,
        "snapshots/pickle": 0.5 + 1.0,
        "Bytewax overhead": 1.0,
        fp.OTHER: 0.5,
    }
    assert {k: pytest.approx(v) for k, v in expected_self.items()} == {
        k: s.self_s for k, s in shares.items()
    }
    assert sum(s.self_pct for s in report.stages) == pytest.approx(100.0)
    assert report.stages[0].stage == "models/ranking"  # sorted by self time
    assert shares["models/ranking"].self_pct == pytest.approx(100 * 3.8 / 9.0)
    # inclusive: from entering the stage to leaving it, callees of other stages included
    assert shares["per-user step"].incl_s == pytest.approx(7.0)
    assert shares["models/ranking"].incl_s == pytest.approx(4.0)
    assert shares["snapshots/pickle"].incl_s == pytest.approx(1.5)
    assert shares["Bytewax overhead"].incl_pct == pytest.approx(100.0)
    assert shares[fp.OTHER].incl_s is None
    # the top functions by own time, with the stage their time went to
    top = [(t.function, t.stage) for t in report.top[:3]]
    assert top == [
        ("numpy.core.multiarray:5(dot)", "models/ranking"),
        ("attune.operators.profiles:10(apply)", "per-user step"),
        ("<built-in method bytewax._bytewax.cli_main>", "Bytewax overhead"),
    ]
    assert len(fp.analyze(SYNTHETIC, ROOTS, top=2).top) == 2


def test_analyze_survives_cycles_among_library_functions() -> None:
    a = ("/py/site/lib/a.py", 1, "a")
    b = ("/py/site/lib/b.py", 1, "b")
    raw = {
        RANK: _entry(1.0, 3.0, {}),
        a: _entry(1.0, 2.0, {RANK: (0.5, 1.5), b: (0.5, 0.5)}),
        b: _entry(1.0, 1.5, {a: (1.0, 1.5)}),
    }
    report = fp.analyze(raw, ROOTS)
    shares = {s.stage: s.self_s for s in report.stages}
    assert shares == {"models/ranking": pytest.approx(3.0)}


def test_analyze_a_real_profile(tmp_path: Path) -> None:
    """Functions in files laid out as operators/ranking.py and operators/profiles.py."""
    import cProfile
    import importlib.util
    import pstats

    folder = tmp_path / "operators"
    folder.mkdir()
    (folder / "ranking.py").write_text(
        "import json\ndef rank(n):\n    return json.dumps(sorted(range(n, 0, -1)))\n"
    )
    (folder / "profiles.py").write_text(
        "def apply(rank, n):\n"
        "    total = 0\n"
        "    for i in range(n):\n"
        "        total += i * i\n"
        "    return total, rank(n)\n"
    )
    modules = {}
    for name in ("ranking", "profiles"):
        spec = importlib.util.spec_from_file_location(f"_bench_{name}", folder / f"{name}.py")
        assert spec is not None and spec.loader is not None
        modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modules[name])
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(20):
        modules["profiles"].apply(modules["ranking"].rank, 20_000)
    profile.disable()
    raw = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    roots = {**fp.module_roots(), str(folder.resolve()): "attune.operators"}
    report = fp.analyze(raw, roots)
    shares = {s.stage: s for s in report.stages}
    assert {"per-user step", "models/ranking"} <= set(shares)
    assert sum(s.self_pct for s in report.stages) == pytest.approx(100.0)
    by_function = {t.function: t.stage for t in report.top}
    assert by_function["<built-in method builtins.sorted>"] == "models/ranking"
    assert any(f.startswith("attune.operators.profiles:") for f in by_function)
    # ranking is called from the per-user step: its time is inside the per-user step's
    assert shares["per-user step"].incl_s is not None
    assert shares["per-user step"].incl_s >= shares["models/ranking"].self_s
    text = fp.format_report(report, top=5)
    assert text.splitlines()[0].split() == ["stage", "self", "%", "self", "s", "incl.", "%"]
    assert "top 5 functions by own time" in text


def test_profile_text_states_the_caveats() -> None:
    report = fp.analyze(SYNTHETIC, ROOTS)
    text = tp.profile_text(
        report,
        sections=[{"wall_s": 10.0, "process_cpu_s": 4.0, "worker_threads": 0}],
        wall_s=14.0,
        unprofiled_wall_s=9.5,
        processes=1,
        workers=1,
    )
    assert "under cProfile, 1 process(es) x 1 worker(s)" in text
    assert "not part of the table above" in text
    assert "flow wall 14.0s (unprofiled: 9.5s)" in text
    assert "cProfile inflates Python-heavy code" in text
    assert "4.0s of CPU in 10.0s of profiled wall time (40%" in text
    assert "own time of cli_main" in text
    assert "models/ranking" in text and "top 15 functions by own time" not in text  # 8 exist
    assert "top 8 functions by own time" in text
    threaded = tp.profile_text(
        report,
        sections=[{"wall_s": 5.0, "process_cpu_s": 4.5, "worker_threads": 2}] * 2,
        wall_s=14.0,
        unprofiled_wall_s=None,
        processes=2,
        workers=2,
    )
    assert "2 process(es) x 2 worker(s)" in threaded
    assert "Bytewax's own threads (4 profiled" in threaded
    assert "of CPU in" not in threaded and "unprofiled" not in threaded


def test_thread_profiles_wrap_core_operators_and_profile_other_threads() -> None:
    """Bytewax's worker threads: profiled from their first call of a wrapped callable."""
    import threading

    from bytewax import operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource

    flow = Dataflow("t")
    items = op.map("double", op.input("in", flow, TestingSource([1, 2])), lambda x: 2 * x)
    op.output("out", items, TestingSink([]))
    threads = fp.ThreadProfiles(skip=threading.get_ident())
    # map's flat_map_batch mapper, the source's build_part, the sink's build_part
    assert threads.instrument(flow) == 3
    mapper = getattr(flow.substeps[1].substeps[0], "mapper")  # noqa: B009 - untyped
    assert list(mapper([1])) == [2]  # on the skipped (main) thread: nothing profiled
    assert threads.profiles == {}
    results: list[Any] = []

    def worker() -> None:
        results.append(list(mapper([3])))
        results.append(list(mapper([4])))
        threads.profiles[threading.get_ident()].disable()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert results == [[6], [8]]
    assert len(threads.profiles) == 1
