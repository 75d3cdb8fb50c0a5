"""``attune bench throughput``: end-to-end events/s, Kafka -> flow -> Redis, next to baselines.

The first benchmark of Attune (design.md, "Targets"). One run:

1. Servers: ``ATTUNE_KAFKA_BOOTSTRAP`` and ``ATTUNE_REDIS_URL`` when both are
   set, else the local ones on their default ports (:func:`attune.flows.local.up`),
   stopped at the end only if this run started them. Redis writes go to a
   dedicated database (``--redis-db``, default 15), flushed before each flow
   run; db 0 of a server the bench did not start is never flushed.
2. Fresh topics named ``bench-<random>.*`` (events, an empty events topic,
   items, segments, dead letters, triggers), ``--partitions`` each, deleted at
   the end.
3. The workload, generated (:mod:`attune.workload.generator`) and produced once
   (:func:`attune.flows.generate.produce`) before anything is timed; its time is
   reported on its own line. Then the raw baseline's decoder is chosen
   (``--raw-decoder``; auto: cavro and fastavro timed on the topic's first
   messages, the faster).
4. ``--repeat`` times, alternately:

   - **decode-only**: confluent-kafka consumers (one per ``--processes``),
     every partition assigned from the beginning, read to the end, each
     message decoded with :meth:`attune.operators.codec.Codec.decode_event`, nothing
     else. events/s = messages / wall seconds (from the first poll to the
     last message, consumers started together);
   - **raw consume + decode** (design.md's baseline, no project code): the same
     read by ``--processes`` children of :mod:`attune.bench.raw_decode`, run as
     a file so that they import nothing of ``attune``, to plain dicts;
   - **startup-only**: the flow's own command on the empty events topic, so
     it imports, builds (reads the items topic), connects, finds the end and
     exits: its wall time is the start-up and shutdown cost;
   - **end to end**: ``python -m bytewax.run attune.flows.personalize:flow`` in
     subprocesses (``--processes`` x ``--workers``), settings by ``ATTUNE_*``
     variables pointing at the fresh topics with ``ATTUNE_KAFKA_TAIL=false``
     so it exits at the end of the topic. events/s = messages /
     (wall - startup-only wall). Also shown: the rate including start-up, and
     a cross-check that needs no subtraction, messages / (exit - the moment
     the first Redis key appeared).

   After each flow run: peak RSS of each flow process (``VmHWM``, read while it
   runs), CPU time (``os.wait4``), Redis
   ``used_memory`` delta and users' hashes (SCAN), ``MEMORY USAGE`` of 100
   sampled users' keys, and the dead-letter topic's growth.
5. With ``--profile``, one more end-to-end run under cProfile
   (:mod:`attune.bench.flow_profile`), not part of the table: the share of each
   stage of the flow in the profiled time and the top functions by own time.
6. A table on stdout (median, min, max over the repeats; verdicts against the
   design targets on the medians), the profile under it, progress on stderr,
   and with ``--json`` a file of every figure plus machine information.

The pure parts (argument parsing, statistics, verdicts, the table) are tested
in tests/unit/test_bench.py; nothing here is asserted against a clock.

>>> stat = Stat.of([30_000.0, 20_000.0, 26_000.0])
>>> stat.median, stat.low, stat.high
(26000.0, 20000.0, 30000.0)
>>> verdict(stat.median, EVENTS_PER_PROCESS_TARGET)
'pass'
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import random
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from attune.bench import flow_profile
from attune.flows.settings import Settings, env_name

if TYPE_CHECKING:
    from attune.flows.generate import ProduceReport

# --- targets (design.md, "Targets") ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A design target: ``value >= bound`` (``at_least``) or ``value <= bound``."""

    bound: float
    at_least: bool
    text: str


#: End to end, Kafka -> every stage -> Redis, per worker process.
EVENTS_PER_PROCESS_TARGET = Target(25_000, True, ">= 25,000")
#: End to end over consume + decode only, measured in the same run.
RATIO_TARGET = Target(0.25, True, ">= 0.25")
#: Redis memory per active user (0.4 GiB per million users).
REDIS_BYTES_PER_USER_TARGET = Target(400, False, "<= 400")
#: ``MEMORY USAGE`` of one user's own keys (issue 14, target 5): shared keys do not count.
REDIS_OWN_KEYS_TARGET = Target(300, False, "<= 300")

#: What each flow run may take before it is killed (``--flow-timeout``).
DEFAULT_FLOW_TIMEOUT_S = 600.0
#: The decode-only reader gives up when no message arrives for this long.
CONSUME_STALL_S = 60.0
#: Users whose keys ``MEMORY USAGE`` measures.
MEMORY_SAMPLE_USERS = 100
#: The flow the bench runs, as ``python -m bytewax.run`` imports it.
FLOW_IMPORT = "attune.flows.personalize:flow"
#: With --recovery: Bytewax's snapshot interval (``-s``, seconds; the backup interval
#: ``-b`` is 0), as docs/architecture.md runs the flow in production.
RECOVERY_SNAPSHOT_S = 10
#: How often the bench looks at the flow processes and Redis while they run.
POLL_S = 0.01
#: ``--raw-decoder``: auto picks the fastest installed (raw_decode.DECODERS).
RAW_DECODER_CHOICES = ("auto", "cavro", "fastavro")
#: The raw baseline's program, run as a file so that it imports no project code.
RAW_DECODE_SCRIPT = Path(__file__).resolve().with_name("raw_decode.py")
#: The profiled run may take this many times ``--flow-timeout`` (cProfile slows the flow).
PROFILE_TIMEOUT_FACTOR = 4.0
#: Functions listed by own time under the profile's stage table.
PROFILE_TOP = 15
#: Files whose changes count as a change of the code measured (git pathspecs).
CODE_PATHS = ("*.py", "*.yaml", "*.avsc", "*.toml")
#: How often progress lines are written while something runs.
PROGRESS_EVERY_S = 5.0


class BenchError(RuntimeError):
    """The bench could not run (servers, topics, a failed or stuck flow); the message says why."""


# --- arguments -------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _redis_db(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a Redis database number") from None
    if not 0 <= value <= 15:
        raise argparse.ArgumentTypeError(f"Redis database numbers are 0..15, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``attune bench throughput``."""
    work = parser.add_argument_group("workload (generated and produced once, before timing)")
    work.add_argument("--users", type=_positive_int, default=2000, help="simulated users (2000)")
    work.add_argument("--days", type=_positive_int, default=7, help="simulated days (7)")
    work.add_argument("--seed", type=int, default=11, help="generator seed (11)")
    scale = parser.add_argument_group("scale")
    scale.add_argument(
        "--partitions",
        type=_positive_int,
        default=1,
        help="partitions of the fresh topics (1: the per-worker figure)",
    )
    scale.add_argument(
        "--processes",
        type=_positive_int,
        default=1,
        help="flow processes (bytewax -i/-a), and consumers of each baseline (1)",
    )
    scale.add_argument(
        "--workers", type=_positive_int, default=1, help="worker threads per flow process (-w, 1)"
    )
    runs = parser.add_argument_group("runs")
    runs.add_argument(
        "--repeat",
        type=_positive_int,
        default=1,
        help="baseline and end-to-end runs, alternately, N times; median, min, max (1)",
    )
    runs.add_argument(
        "--flow-timeout",
        type=_positive_float,
        default=DEFAULT_FLOW_TIMEOUT_S,
        metavar="SECONDS",
        help="bound on each flow run and baseline run (x4 for --profile's run); past it, "
        "the run is killed "
        f"({DEFAULT_FLOW_TIMEOUT_S:.0f})",
    )
    runs.add_argument(
        "--redis-db",
        type=_redis_db,
        default=15,
        help="Redis database the flow writes, flushed before each run (15)",
    )
    runs.add_argument(
        "--recovery",
        action="store_true",
        help="run the flow with Bytewax recovery on (-r DIR -s 10 -b 0, as production "
        "runs), in a fresh recovery store per run; off by default",
    )
    runs.add_argument("--json", type=Path, metavar="PATH", help="also write every figure as JSON")
    raw = parser.add_argument_group("raw baseline (consume + decode, no project code)")
    raw.add_argument(
        "--raw-decoder",
        choices=RAW_DECODER_CHOICES,
        default="auto",
        help="Avro decoder of the raw baseline; auto: the fastest installed one, timed on a "
        "sample of the events topic before the runs (auto)",
    )
    prof = parser.add_argument_group("profile")
    prof.add_argument(
        "--profile",
        action="store_true",
        help="after the repeats, one more end-to-end run under cProfile (not part of the "
        "table); prints the share of each stage of the flow in the profiled time and the top "
        "15 functions by own time. cProfile inflates Python-heavy code",
    )
    prof.add_argument(
        "--profile-out",
        type=Path,
        metavar="PATH",
        help="with --profile, also keep the profile (all processes added) as a pstats file, "
        "e.g. for `python -m pstats PATH` or snakeviz",
    )


# --- statistics, verdicts, the table (pure) --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stat:
    """Median, min and max of one figure over the repeats."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        """The statistics of ``values`` (at least one).

        >>> Stat.of([3.0, 1.0, 2.0, 10.0])
        Stat(median=2.5, low=1.0, high=10.0, n=4)
        """
        if not values:
            raise ValueError("no values to summarise")
        return cls(
            float(statistics.median(values)), float(min(values)), float(max(values)), len(values)
        )

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.low, "max": self.high, "n": self.n}


def verdict(value: float | None, target: Target) -> str:
    """``pass`` or ``FAIL`` of one value against a target; ``n/a`` without a value.

    >>> verdict(0.3, RATIO_TARGET), verdict(0.2, RATIO_TARGET), verdict(None, RATIO_TARGET)
    ('pass', 'FAIL', 'n/a')
    >>> verdict(400, REDIS_BYTES_PER_USER_TARGET), verdict(401, REDIS_BYTES_PER_USER_TARGET)
    ('pass', 'FAIL')
    """
    if value is None:
        return "n/a"
    ok = value >= target.bound if target.at_least else value <= target.bound
    return "pass" if ok else "FAIL"


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: a figure's statistics, its format and its target (if any)."""

    label: str
    key: str
    fmt: str
    stat: Stat | None
    target: Target | None = None

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        return verdict(None if self.stat is None else self.stat.median, self.target)


#: The table's figures: (key in a repeat's figures, label, format, target).
FIGURES: tuple[tuple[str, str, str, Target | None], ...] = (
    ("raw_events_per_s", "raw consume+decode events/s (no project code)", "{:,.0f}", None),
    ("decode_events_per_s", "decode-only events/s (consume + decode)", "{:,.0f}", None),
    ("e2e_events_per_s", "end-to-end events/s (wall - startup)", "{:,.0f}", None),
    (
        "e2e_events_per_s_per_process",
        "end-to-end events/s per process",
        "{:,.0f}",
        EVENTS_PER_PROCESS_TARGET,
    ),
    ("ratio_raw", "end-to-end / raw consume+decode", "{:.3f}", RATIO_TARGET),
    ("ratio", "end-to-end / decode-only", "{:.3f}", RATIO_TARGET),
    ("e2e_events_per_s_with_startup", "end-to-end events/s incl. startup", "{:,.0f}", None),
    ("e2e_events_per_s_first_write", "end-to-end events/s, 1st Redis write->exit", "{:,.0f}", None),
    ("raw_s", "raw consume+decode wall s (first batch -> end)", "{:.2f}", None),
    ("decode_s", "decode-only wall s (first batch -> end)", "{:.2f}", None),
    ("decode_connect_s", "decode-only connect s (assign -> first batch)", "{:.2f}", None),
    ("e2e_wall_s", "flow wall s (incl. startup)", "{:.2f}", None),
    ("startup_s", "flow startup+shutdown s (empty topic)", "{:.2f}", None),
    ("raw_cpu_us_per_event", "raw consume+decode CPU us/event", "{:.1f}", None),
    ("decode_cpu_us_per_event", "decode-only CPU us/event", "{:.1f}", None),
    ("flow_cpu_us_per_event", "flow CPU us/event (startup run subtracted)", "{:.1f}", None),
    ("peak_rss_mib", "flow peak RSS MiB (largest process)", "{:.1f}", None),
    ("startup_rss_mib", "flow peak RSS MiB, empty topic", "{:.1f}", None),
    ("rss_bytes_per_user", "flow RSS bytes/active user (peak - empty)", "{:,.0f}", None),
    (
        "redis_bytes_per_user",
        "Redis used_memory delta bytes/active user",
        "{:,.0f}",
        REDIS_BYTES_PER_USER_TARGET,
    ),
    (
        "redis_sample_bytes_per_user",
        f"Redis MEMORY USAGE bytes/user ({MEMORY_SAMPLE_USERS} sampled)",
        "{:,.0f}",
        REDIS_OWN_KEYS_TARGET,
    ),
    ("active_users", "active users (user hashes)", "{:,.0f}", None),
    ("redis_keys", "Redis keys written", "{:,.0f}", None),
    ("dead_letters", "dead letters (DLQ topic growth)", "{:,.0f}", None),
    ("segment_changes", "segment changes (segments topic growth)", "{:,.0f}", None),
)


def summarize(repeats: Sequence[Mapping[str, float | None]]) -> dict[str, Stat | None]:
    """Median, min and max of every figure over the repeats (``None`` where no repeat has it).

    >>> s = summarize([{"ratio": 0.5, "decode_s": None}, {"ratio": 0.25, "decode_s": None}])
    >>> s["ratio"], s["decode_s"]
    (Stat(median=0.375, low=0.25, high=0.5, n=2), None)
    """
    keys = list(dict.fromkeys(k for rep in repeats for k in rep))
    out: dict[str, Stat | None] = {}
    for key in keys:
        values = [float(v) for rep in repeats if (v := rep.get(key)) is not None]
        out[key] = Stat.of(values) if values else None
    return out


def build_rows(summary: Mapping[str, Stat | None]) -> list[Row]:
    """The table's rows, in :data:`FIGURES` order (figures not measured show ``-``)."""
    return [Row(label, key, fmt, summary.get(key), target) for key, label, fmt, target in FIGURES]


def format_table(rows: Sequence[Row]) -> str:
    """The rows as an aligned text table: figure, median, min, max, target, verdict.

    >>> rows = [Row("ratio", "ratio", "{:.2f}", Stat.of([0.3, 0.2, 0.4]), RATIO_TARGET),
    ...         Row("users", "users", "{:,.0f}", None)]
    >>> print(format_table(rows))
    figure  median   min   max  target   verdict
    ------  ------  ----  ----  -------  -------
    ratio     0.30  0.20  0.40  >= 0.25  pass
    users        -     -     -
    """
    header = ("figure", "median", "min", "max", "target", "verdict")
    lines: list[tuple[str, ...]] = []
    for row in rows:
        cells: tuple[str, ...] = ("-", "-", "-")
        if row.stat is not None:
            cells = tuple(row.fmt.format(v) for v in (row.stat.median, row.stat.low, row.stat.high))
        target = row.target.text if row.target else ""
        lines.append((row.label, *cells, target, row.verdict))
    widths = [max(len(r[i]) for r in (header, *lines)) for i in range(len(header))]
    right = {1, 2, 3}

    def fmt(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    out = [fmt(header), fmt(["-" * w for w in widths])]
    out.extend(fmt(line) for line in lines)
    return "\n".join(out)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or ``None`` when either is missing or the denominator is 0.

    >>> ratio(30_000, 120_000), ratio(1, 0), ratio(None, 2)
    (0.25, None, None)
    """
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def repeat_figures(
    *,
    events: int,
    processes: int,
    decode: DecodeResult,
    raw: DecodeResult | None = None,
    startup: FlowRun,
    flow: FlowRun,
    redis_mem: RedisMemory,
    dead_letters: int,
    segment_changes: int,
) -> dict[str, float | None]:
    """Every figure of one repeat, from its measurements (pure arithmetic).

    The end-to-end rate divides the messages by the flow's wall time minus the
    startup-only run's wall time; the first-write figure divides them by the
    time from the first Redis key to the exit of the last process.
    """
    processing_s = flow.wall_s - startup.wall_s
    e2e = events / processing_s if processing_s > 0 else None
    raw_rate = raw.events / raw.wall_s if raw is not None and raw.wall_s > 0 else None
    first_write = None
    if flow.first_write_s is not None and flow.wall_s > flow.first_write_s:
        first_write = events / (flow.wall_s - flow.first_write_s)
    users = redis_mem.profile_users
    rss_growth = (sum(flow.peak_rss_kib) - sum(startup.peak_rss_kib)) * 1024
    return {
        "events": float(events),
        "decode_events_per_s": decode.events / decode.wall_s if decode.wall_s > 0 else None,
        "decode_s": decode.wall_s,
        "decode_connect_s": decode.connect_s,
        "decode_cpu_us_per_event": decode.cpu_s / decode.events * 1e6 if decode.events else None,
        "decode_dead_letters": float(decode.dead_letters),
        "raw_events_per_s": raw_rate,
        "raw_s": None if raw is None else raw.wall_s,
        "raw_connect_s": None if raw is None else raw.connect_s,
        "raw_cpu_us_per_event": raw.cpu_s / raw.events * 1e6 if raw and raw.events else None,
        "raw_undecodable": None if raw is None else float(raw.dead_letters),
        "e2e_events_per_s": e2e,
        "e2e_events_per_s_per_process": None if e2e is None else e2e / processes,
        "ratio_raw": ratio(e2e, raw_rate),
        "ratio": ratio(e2e, decode.events / decode.wall_s if decode.wall_s > 0 else None),
        "e2e_events_per_s_with_startup": events / flow.wall_s if flow.wall_s > 0 else None,
        "e2e_events_per_s_first_write": first_write,
        "e2e_wall_s": flow.wall_s,
        "startup_s": startup.wall_s,
        "flow_first_write_s": flow.first_write_s,
        "flow_cpu_s": flow.cpu_s,
        "startup_cpu_s": startup.cpu_s,
        "flow_cpu_us_per_event": (flow.cpu_s - startup.cpu_s) / events * 1e6 if events else None,
        "peak_rss_mib": max(flow.peak_rss_kib) / 1024,
        "peak_rss_mib_total": sum(flow.peak_rss_kib) / 1024,
        "startup_rss_mib": max(startup.peak_rss_kib) / 1024,
        "rss_bytes_per_user": rss_growth / users if users else None,
        "redis_used_memory_delta": float(redis_mem.used_delta),
        "redis_bytes_per_user": redis_mem.used_delta / users if users else None,
        "redis_sample_bytes_per_user": redis_mem.sample_bytes_per_user,
        "active_users": float(users),
        "redis_keys": float(redis_mem.keys),
        "dead_letters": float(dead_letters),
        "segment_changes": float(segment_changes),
    }


# --- flow commands and settings (pure) -------------------------------------------------------


def flow_commands(
    processes: int,
    workers: int,
    ports: Sequence[int],
    python: str = sys.executable,
    *,
    profile_dir: Path | None = None,
    recovery_dir: Path | None = None,
) -> list[list[str]]:
    """The command line of each flow process.

    With ``profile_dir``, each process runs under cProfile
    (:mod:`attune.bench.flow_profile`), writing ``flow-<i>.pstats`` there. With
    ``recovery_dir`` (initialised by :func:`init_recovery`), recovery is on: ``-r``, as
    production runs.

    >>> flow_commands(1, 1, [], python="py")
    [['py', '-m', 'bytewax.run', 'attune.flows.personalize:flow']]
    >>> for cmd in flow_commands(2, 1, [2101, 2102], python="py"):
    ...     print(" ".join(cmd[4:]))
    -i 0 -a 127.0.0.1:2101;127.0.0.1:2102
    -i 1 -a 127.0.0.1:2101;127.0.0.1:2102
    >>> flow_commands(1, 1, [], python="py", profile_dir=Path("/p"))[0]
    ['py', '-m', 'attune.bench.flow_profile', '/p/flow-0.pstats', 'attune.flows.personalize:flow']
    >>> flow_commands(1, 1, [], python="py", recovery_dir=Path("/r"))[0][4:]
    ['-r', '/r', '-s', '10', '-b', '0']
    """

    def base(i: int) -> list[str]:
        if profile_dir is None:
            return [python, "-m", "bytewax.run", FLOW_IMPORT]
        out = str(profile_dir / f"flow-{i}.pstats")
        return [python, "-m", "attune.bench.flow_profile", out, FLOW_IMPORT]

    threads = ["-w", str(workers)] if workers > 1 else []
    if recovery_dir is not None:  # as docs/architecture.md runs it in production
        threads += ["-r", str(recovery_dir), "-s", str(RECOVERY_SNAPSHOT_S), "-b", "0"]
    if processes == 1:
        return [base(0) + threads]
    if len(ports) != processes:
        raise ValueError(f"{processes} processes need {processes} ports, got {len(ports)}")
    addresses = ";".join(f"127.0.0.1:{port}" for port in ports)
    return [[*base(i), *threads, "-i", str(i), "-a", addresses] for i in range(processes)]


def settings_env(settings: Settings) -> dict[str, str]:
    """Every setting as its ``ATTUNE_*`` variable, so a subprocess sees exactly ``settings``.

    >>> env = settings_env(Settings(kafka_tail=False, topic_events="t"))
    >>> env["ATTUNE_KAFKA_TAIL"], env["ATTUNE_TOPIC_EVENTS"], env["ATTUNE_KAFKA_BATCH_SIZE"]
    ('false', 't', '1000')
    """
    out = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        out[env_name(f.name)] = (
            ("true" if value else "false") if isinstance(value, bool) else str(value)
        )
    return out


def redis_db_url(url: str, db: int) -> str:
    """``url`` pointed at database ``db``.

    >>> redis_db_url("redis://127.0.0.1:16379/0", 15)
    'redis://127.0.0.1:16379/15'
    >>> redis_db_url("rediss://u:p@example:6380", 3)
    'rediss://u:p@example:6380/3'
    """
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def bench_topics(stem: str) -> dict[str, str]:
    """The fresh topics of one bench run, by role.

    >>> sorted(bench_topics("bench-x"))
    ['dlq', 'empty', 'erasures', 'events', 'items', 'segments', 'triggers_prefix']
    """
    return {
        "events": f"{stem}.events",
        "empty": f"{stem}.events-empty",
        "items": f"{stem}.items",
        "segments": f"{stem}.segments",
        "dlq": f"{stem}.dlq",
        "erasures": f"{stem}.erasures",
        "triggers_prefix": f"{stem}.triggers.",
    }


def user_pattern(prefix: str) -> str:
    """The SCAN pattern of every user's hash under ``prefix`` (glob characters escaped): the
    keys that end with the user's tag (docs/redis.md).

    >>> user_pattern("attune:"), user_pattern("a*b:")
    ('attune:{u:*}', 'a\\\\*b:{u:*}')
    """
    escaped = "".join("\\" + c if c in "*?[]\\" else c for c in prefix)
    return escaped + "{u:*}"


# --- progress --------------------------------------------------------------------------------


def say(message: str, stream: IO[str] | None = None) -> None:
    """A progress line on stderr."""
    out = stream if stream is not None else sys.stderr
    out.write(f"bench: {message}\n")
    out.flush()


# --- servers and topics ----------------------------------------------------------------------


@dataclass(slots=True)
class Servers:
    """Where the bench runs and what it must stop at the end."""

    kafka_bootstrap: str
    redis_url: str
    started: list[str] = field(default_factory=list)
    note: str = ""


def _use_servers(settings: Settings, stack: contextlib.ExitStack) -> Servers:
    """The configured servers, or local ones started (and stopped at exit) for the bench."""
    if settings.kafka_bootstrap and settings.redis_url:
        return Servers(
            settings.kafka_bootstrap,
            settings.redis_url,
            note="configured servers (ATTUNE_KAFKA_BOOTSTRAP, ATTUNE_REDIS_URL)",
        )
    if settings.kafka_bootstrap or settings.redis_url:
        raise BenchError(
            "set both ATTUNE_KAFKA_BOOTSTRAP and ATTUNE_REDIS_URL to bench against running "
            "servers, or neither to start local ones"
        )
    from attune.flows import local

    try:
        before = local.status(settings)
        down = [name for name, line in before.items() if not line.startswith("up")]
        say(f"starting local servers ({', '.join(down) or 'already up'}) ...")
        servers = local.up(settings)
    except local.LocalServerError as exc:
        raise BenchError(f"could not start the local servers:\n{exc}") from None
    if len(down) == len(local.SERVERS):
        stack.callback(_stop_local, settings)
        note = (
            f"local servers started for this run (Kafka {servers.kafka_bootstrap}, Redis "
            f"{servers.redis_url.rsplit('/', 1)[0]}), stopped at the end"
        )
        started = down
    elif down:
        note = (
            f"local servers: {', '.join(down)} started for this run and left running "
            "(the other was already up); `attune local down` stops both"
        )
        started = down
    else:
        note = "local servers already running (left running)"
        started = []
    return Servers(servers.kafka_bootstrap, servers.redis_url, started, note)


def _stop_local(settings: Settings) -> None:
    from attune.flows import local

    say("stopping the local servers this run started")
    try:
        local.down(settings)
    except local.LocalServerError as exc:
        say(f"could not stop the local servers: {exc}")


def _kafka_config(settings: Settings) -> dict[str, Any]:
    from attune.flows.personalize import kafka_security

    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": "attune-bench",
        "enable.auto.commit": False,
        **kafka_security(settings),
    }


def topic_size(settings: Settings, topic: str, timeout_s: float = 30.0) -> int:
    """Messages in ``topic``: the sum over partitions of high - low watermark."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(_kafka_config(settings))
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s)
        info = meta.topics.get(topic)
        if info is None or info.error is not None:
            raise BenchError(f"topic {topic} is not readable ({info.error if info else 'absent'})")
        total = 0
        for p in info.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            total += high - low
        return total
    finally:
        consumer.close()


# --- decode-only -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecodeResult:
    """One decode-only run: messages, wall seconds (all consumers), CPU seconds, dead letters.

    ``wall_s`` runs from the first batch received to the last message decoded;
    ``connect_s`` is the time before that first batch (assign, connect, first
    fetch), left out of the rate as the flow's start-up is.
    """

    events: int
    wall_s: float
    connect_s: float
    cpu_s: float
    dead_letters: int


@dataclass(frozen=True, slots=True)
class _DecodePart:
    events: int
    start: float
    first: float
    end: float
    cpu_s: float
    dead_letters: int


def _decode_partitions(
    config: Mapping[str, Any],
    topic: str,
    partitions: Sequence[int],
    *,
    batch_size: int,
    timeout_s: float,
    ready: Callable[[], None] = lambda: None,
) -> _DecodePart:
    """Read ``partitions`` of ``topic`` from the beginning to their end, decoding every message.

    ``ready`` is called once the consumer exists, right before timing starts
    (the multi-process run waits for every consumer there).
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from attune.operators.codec import Codec
    from attune.operators.events import DeadLetter

    codec = Codec()
    consumer = Consumer(dict(config))
    try:
        ends = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            if high > low:
                ends[p] = high
        ready()
        cpu0 = time.process_time()
        start = time.monotonic()
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        todo = set(ends)
        events = dead = 0
        decode = codec.decode_event
        last_message = start
        first: float | None = None
        while todo:
            msgs = consumer.consume(batch_size, 0.005)
            now = time.monotonic()
            if not msgs:
                if now - last_message > CONSUME_STALL_S or now - start > timeout_s:
                    raise BenchError(
                        f"decode-only read of {topic} stalled with partitions {sorted(todo)} "
                        f"unfinished after {events:,} messages"
                    )
                continue
            last_message = now
            if first is None:
                first = now
            for msg in msgs:
                if msg.error() is not None:
                    continue
                if isinstance(decode(msg.value() or b""), DeadLetter):
                    dead += 1
                events += 1
                part, offset = msg.partition(), msg.offset()
                if part is not None and offset is not None and offset + 1 >= ends.get(part, 0):
                    todo.discard(part)
        end = time.monotonic()
        return _DecodePart(events, start, first or end, end, time.process_time() - cpu0, dead)
    finally:
        consumer.close()


def _decode_child(  # noqa: PLR0917 - multiprocessing passes args positionally
    config: dict[str, Any],
    topic: str,
    partitions: list[int],
    batch_size: int,
    timeout_s: float,
    barrier: Any,
    results: Any,
) -> None:
    """One decode-only process of a multi-process run (spawned; results through a queue)."""
    try:
        part = _decode_partitions(
            config,
            topic,
            partitions,
            batch_size=batch_size,
            timeout_s=timeout_s,
            ready=lambda: barrier.wait(60),
        )
        results.put(("ok", asdict(part)))
    except BaseException as exc:
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def decode_only(
    settings: Settings, topic: str, partitions: int, processes: int, timeout_s: float
) -> DecodeResult:
    """The decode-only baseline with ``processes`` consumers, partitions dealt round robin."""
    config = _kafka_config(settings)
    batch = settings.kafka_batch_size
    if processes == 1:
        part = _decode_partitions(
            config, topic, range(partitions), batch_size=batch, timeout_s=timeout_s
        )
        return DecodeResult(
            part.events,
            part.end - part.first,
            part.first - part.start,
            part.cpu_s,
            part.dead_letters,
        )
    import multiprocessing
    import queue

    ctx = multiprocessing.get_context("spawn")  # librdkafka threads do not survive fork
    groups = [list(range(partitions))[i::processes] for i in range(processes)]
    groups = [g for g in groups if g]
    barrier = ctx.Barrier(len(groups) + 1)
    results = ctx.Queue()
    children = [
        ctx.Process(
            target=_decode_child,
            args=(config, topic, g, batch, timeout_s, barrier, results),
            daemon=True,
        )
        for g in groups
    ]
    for child in children:
        child.start()
    try:
        barrier.wait(120)
        parts = []
        for _ in children:
            try:
                status, value = results.get(timeout=timeout_s + CONSUME_STALL_S)
            except queue.Empty:
                raise BenchError(
                    f"decode-only consumers did not finish within {timeout_s:.0f}s"
                ) from None
            if status != "ok":
                raise BenchError(f"a decode-only consumer failed: {value}")
            parts.append(_DecodePart(**value))
    finally:
        for child in children:
            child.join(10)
            if child.is_alive():
                child.kill()
    first = min(p.first for p in parts)
    return DecodeResult(
        sum(p.events for p in parts),
        max(p.end for p in parts) - first,
        first - min(p.start for p in parts),
        sum(p.cpu_s for p in parts),
        sum(p.dead_letters for p in parts),
    )


# --- raw consume + decode (no project code) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawCalibration:
    """Which decoder the raw baseline uses, and what each installed one took per message.

    ``decoders`` maps a decoder to its ``us_per_message`` (best of three passes
    over ``sample`` messages of the events topic) and ``version``; ``agree`` says
    whether they decoded the sample to equal dicts.
    """

    chosen: str
    header_length: int
    decoders: dict[str, dict[str, Any]]
    agree: bool
    sample: int

    def describe(self) -> str:
        """One line for the header.

        >>> RawCalibration("cavro", 10, {"cavro": {"us_per_message": 14.04, "version": "1.0.0"},
        ...     "fastavro": {"us_per_message": 40.5, "version": "1.13.1"}}, True, 2000).describe()
        'cavro 1.0.0 (timed on 2,000 messages: cavro 14.0, fastavro 40.5 us/message)'
        """
        chosen = self.decoders.get(self.chosen, {})
        timings = ", ".join(
            f"{name} {info['us_per_message']:.1f}"
            for name, info in sorted(self.decoders.items(), key=lambda kv: kv[1]["us_per_message"])
        )
        text = (
            f"{self.chosen} {chosen.get('version') or ''}".rstrip()
            + f" (timed on {self.sample:,} messages: {timings} us/message)"
        )
        if not self.agree:
            text += "; WARNING: the decoders disagreed on the sample, fastavro is used"
        return text


def avro_dir() -> Path:
    """The folder of the ``.avsc`` files (installed as ``attune.avro``)."""
    import importlib.resources

    return Path(str(importlib.resources.files("attune.avro")))


def _raw_job(settings: Settings, topic: str, partitions: Sequence[int], **more: Any) -> str:
    job = {
        "config": _kafka_config(settings),
        "topic": topic,
        "partitions": list(partitions),
        "avro_dir": str(avro_dir()),
        **more,
    }
    return json.dumps(job) + "\n"


def _raw_result(line: str, proc: subprocess.Popen[str], err: IO[bytes]) -> dict[str, Any]:
    """A raw child's JSON line, or a :class:`BenchError` with why it failed."""
    try:
        doc: dict[str, Any] = json.loads(line) if line.strip() else {}
    except json.JSONDecodeError:
        doc = {"error": f"unreadable output {line[:200]!r}"}
    if not doc or "error" in doc:
        why = doc.get("error") or f"exited with {proc.poll()}"
        raise BenchError(f"the raw consume+decode baseline failed: {why}\n{_tail(err)}")
    if doc.get("attune_modules"):
        raise BenchError(
            "the raw consume+decode baseline imported project code: "
            + ", ".join(doc["attune_modules"])
        )
    return doc


def _raw_process(stack: contextlib.ExitStack, job: str) -> tuple[subprocess.Popen[str], IO[bytes]]:
    """One raw-baseline child, its job written: ``python -P raw_decode.py`` (no project path)."""
    err = stack.enter_context(tempfile.TemporaryFile())  # noqa: SIM115 - the stack closes it
    proc = subprocess.Popen(
        [sys.executable, "-P", str(RAW_DECODE_SCRIPT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
    )
    stack.callback(_kill_all, [proc])
    assert proc.stdin is not None
    proc.stdin.write(job)
    proc.stdin.flush()
    return proc, err


def calibrate_raw(
    settings: Settings, topic: str, partitions: int, decoder: str, timeout_s: float
) -> RawCalibration:
    """Time the installed decoders on the start of ``topic``; the fastest is the raw decoder."""
    with contextlib.ExitStack() as stack:
        job = _raw_job(settings, topic, range(partitions), mode="calibrate", decoder=decoder)
        proc, err = _raw_process(stack, job)
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise BenchError(f"the raw decoder calibration took over {timeout_s:.0f}s") from None
        doc = _raw_result(out.splitlines()[-1] if out else "", proc, err)
    return RawCalibration(
        doc["chosen"], int(doc["header_length"]), doc["decoders"], bool(doc["agree"]), doc["sample"]
    )


def raw_decode(
    settings: Settings,
    topic: str,
    *,
    partitions: int,
    processes: int,
    timeout_s: float,
    calibration: RawCalibration,
) -> DecodeResult:
    """The raw baseline: ``processes`` children (``raw_decode.py``), partitions dealt round robin.

    Every child builds its decoder and consumer and says ready; then all are
    told to go together. Rates as :func:`decode_only`'s: from the first batch
    any child received to the last message any child decoded. ``dead_letters``
    of the result counts the messages the decoder raised on.
    """
    groups = [g for i in range(processes) if (g := list(range(partitions))[i::processes])]
    with contextlib.ExitStack() as stack:
        children = []
        for group in groups:
            job = _raw_job(
                settings,
                topic,
                group,
                mode="run",
                decoder=calibration.chosen,
                header_length=calibration.header_length,
                batch_size=settings.kafka_batch_size,
                timeout_s=timeout_s,
            )
            children.append(_raw_process(stack, job))
        for proc, err in children:
            assert proc.stdout is not None
            _raw_result(proc.stdout.readline(), proc, err)  # {"ready": true}
        for proc, _ in children:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        parts = []
        for proc, err in children:
            try:
                out, _ = proc.communicate(timeout=timeout_s + CONSUME_STALL_S)
            except subprocess.TimeoutExpired:
                raise BenchError(
                    f"the raw consume+decode baseline did not finish within {timeout_s:.0f}s"
                ) from None
            parts.append(_raw_result(out.splitlines()[-1] if out else "", proc, err))
    first = min(p["first"] for p in parts)
    return DecodeResult(
        sum(p["events"] for p in parts),
        max(p["end"] for p in parts) - first,
        first - min(p["start"] for p in parts),
        sum(p["cpu_s"] for p in parts),
        sum(p["errors"] for p in parts),
    )


# --- the flow in subprocesses ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlowRun:
    """One run of the flow: wall seconds (first start to last exit), first Redis key, resources."""

    wall_s: float
    first_write_s: float | None
    peak_rss_kib: list[int]
    cpu_s: float


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _kill_all(procs: Sequence[subprocess.Popen[Any]]) -> None:
    """Kill the flow processes still running (after a failure or the time bound)."""
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            proc.wait(10)


def _tail(fh: IO[bytes], lines: int = 30) -> str:
    fh.seek(0)
    text = fh.read().decode(errors="replace").rstrip().splitlines()
    return "\n".join(text[-lines:]) or "(no output)"


def run_flow(
    env: Mapping[str, str],
    *,
    processes: int,
    workers: int,
    timeout_s: float,
    label: str,
    redis_client: Any | None = None,
    profile_dir: Path | None = None,
    recovery: bool = False,
) -> FlowRun:
    """Run the flow's processes to their exit; kill them all past ``timeout_s``.

    ``recovery``: with Bytewax recovery on (``-r``), in a fresh recovery store made for
    this run (:func:`init_recovery`) and deleted after it, so that no run resumes another.

    Peak RSS and CPU time of each process come from ``os.wait4`` (its own
    rusage, not the sum over children). ``redis_client``, when given, is
    polled until the first key appears: the cross-check of the processing time.
    ``profile_dir``: run every process under cProfile (:func:`flow_commands`).
    """
    procs: list[subprocess.Popen[bytes]] = []
    rss: dict[int, int] = {}
    hwm: dict[int, int] = {}
    cpu = 0.0
    first_write: float | None = None
    with contextlib.ExitStack() as stack:
        recovery_dir = None
        if recovery:
            recovery_dir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="attune-rec-"))
            )
            init_recovery(recovery_dir, processes * workers)
        commands = flow_commands(
            processes,
            workers,
            _free_ports(processes) if processes > 1 else [],
            profile_dir=profile_dir,
            recovery_dir=recovery_dir,
        )
        logs = [stack.enter_context(tempfile.TemporaryFile()) for _ in commands]
        stack.callback(_kill_all, procs)
        start = time.monotonic()
        for cmd, log in zip(commands, logs, strict=True):
            procs.append(
                subprocess.Popen(
                    cmd,
                    env=dict(env),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        pending = dict(enumerate(procs))
        next_progress = start + PROGRESS_EVERY_S
        while pending:
            for i, proc in list(pending.items()):
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid == 0:
                    continue
                proc.returncode = os.waitstatus_to_exitcode(status)
                del pending[i]
                # ru_maxrss counts the parent's pages the child had before its exec (this
                # bench holds the whole generated workload): the mm's own high-water mark,
                # read while it ran, is the flow's peak
                rss[i] = hwm.get(i) or usage.ru_maxrss  # KiB on Linux
                cpu += usage.ru_utime + usage.ru_stime
                if proc.returncode != 0:
                    raise BenchError(
                        f"{label}: flow process {i} ({' '.join(commands[i][1:])}) exited with "
                        f"{proc.returncode}; its output ends with:\n{_tail(logs[i])}"
                    )
            for i, proc in pending.items():
                hwm[i] = max(hwm.get(i, 0), _vm_hwm_kib(proc.pid))
            now = time.monotonic()
            if first_write is None and redis_client is not None and redis_client.dbsize() > 0:
                first_write = now - start
            if now - start > timeout_s:
                raise BenchError(
                    f"{label}: the flow did not finish within {timeout_s:.0f}s (--flow-timeout) "
                    f"and was killed; the output of process 0 ends with:\n{_tail(logs[0])}"
                )
            if now >= next_progress:
                next_progress = now + PROGRESS_EVERY_S
                keys = f", {redis_client.dbsize():,} Redis keys" if redis_client else ""
                say(f"{label}: running {now - start:.0f}s{keys}")
            if pending:
                time.sleep(POLL_S)
        wall = time.monotonic() - start
    return FlowRun(wall, first_write, [rss[i] for i in sorted(rss)], cpu)


def init_recovery(folder: Path, partitions: int) -> None:
    """A fresh Bytewax recovery store of ``partitions`` partitions (one per worker) in
    ``folder``, as ``python -m bytewax.recovery FOLDER PARTITIONS`` makes it."""
    from bytewax.recovery import init_db_dir

    folder.mkdir(parents=True, exist_ok=True)
    init_db_dir(folder, partitions)


def _vm_hwm_kib(pid: int) -> int:
    """The peak RSS (KiB) of process ``pid``'s own address space so far (``VmHWM``, reset
    by its exec, unlike ``ru_maxrss``); 0 when it cannot be read (gone, not Linux)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return 0
    return 0


# --- Redis -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisMemory:
    """What one flow run left in Redis."""

    used_delta: int
    profile_users: int
    keys: int
    sample_bytes_per_user: float | None


def redis_memory(client: Any, used_before: int, prefix: str, seed: int) -> RedisMemory:
    """``used_memory`` growth, users' hashes (SCAN) and the mean ``MEMORY USAGE`` of sampled
    users.

    A sampled user's bytes are the sum over every per-user key kind under its
    hash tag (the user's hash, alias, and the earlier layout's keys) that exists.
    """
    from attune.operators.redis_keys import USER_KEY_KINDS

    used_after = int(client.info("memory")["used_memory"])
    profiles = sorted(client.scan_iter(match=user_pattern(prefix), count=1000))
    sample_mean = None
    if profiles:
        sample = random.Random(seed).sample(profiles, min(MEMORY_SAMPLE_USERS, len(profiles)))
        pipe = client.pipeline(transaction=False)
        for key in sample:
            for kind in USER_KEY_KINDS:
                pipe.execute_command("MEMORY", "USAGE", key + kind.encode(), "SAMPLES", "0")
        sizes = pipe.execute()
        sample_mean = sum(s or 0 for s in sizes) / len(sample)
    return RedisMemory(used_after - used_before, len(profiles), int(client.dbsize()), sample_mean)


# --- machine ---------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    for dist in ("bytewax", "confluent-kafka", "fastavro", "cavro", "redis"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = None
    info["git"] = code_version()
    return info


def _git(*args: str) -> str:
    repo = Path(__file__).resolve().parents[1]
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout if done.returncode == 0 else ""


def code_version() -> str | None:
    """The commit measured, ``+dirty:<hash of the changes>`` when the code differs from it.

    Only files the flow runs count (:data:`CODE_PATHS`): editing a README
    during a run changes nothing measured.

    The flow runs in fresh subprocesses, so an edit made during a bench run is
    picked up by the next flow run; comparing this at the start and at the end
    tells whether the figures may mix two versions of the code.
    """
    head = _git("rev-parse", "--short", "HEAD").strip()
    if not head:
        return None
    changes = _git("status", "--porcelain", "--", *CODE_PATHS) + _git(
        "diff", "HEAD", "--", *CODE_PATHS
    )
    if not changes:
        return head
    import hashlib

    return f"{head}+dirty:{hashlib.sha1(changes.encode()).hexdigest()[:8]}"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- the command -----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """``attune bench throughput``: 0 when it ran (whatever the verdicts), 1 when it could not."""
    # kafka-python logs every connection at INFO: it would bury the progress lines.
    logging.getLogger("kafka").setLevel(logging.WARNING)
    try:
        report = _bench(args)
    except BenchError as exc:
        print(f"attune bench throughput: {exc}", file=sys.stderr)
        return 1
    print(report)
    return 0


@dataclass(slots=True)
class _Run:
    """What a bench run sets up once: servers, settings for the fresh topics, a Redis client."""

    servers: Servers
    settings: Settings
    topics: dict[str, str]
    redis: Any
    raw: RawCalibration | None = None


def _bench(args: argparse.Namespace) -> str:
    machine = machine_info()
    machine["load_average_start"] = load_average()
    with contextlib.ExitStack() as stack:
        bench = _set_up(args, stack)
        produced = _produce(args, bench.settings)
        say(f"timing the raw decoders ({args.raw_decoder}) on the events topic")
        bench.raw = calibrate_raw(
            bench.settings,
            bench.topics["events"],
            args.partitions,
            args.raw_decoder,
            args.flow_timeout,
        )
        say(f"raw consume+decode baseline: {bench.raw.describe()}")
        repeats = [
            _one_repeat(args, bench, produced.events, f"run {i}/{args.repeat}")
            for i in range(1, args.repeat + 1)
        ]
        profile = _profile_run(args, bench, repeats) if args.profile else None
        machine["load_average_end"] = load_average()
        machine["git_end"] = code_version()
    summary = summarize(repeats)
    rows = build_rows(summary)
    parts = [
        _header(args, produced, bench.servers, machine, bench.raw),
        format_table(rows),
        _footnote(),
    ]
    if profile is not None:
        parts.append(profile.text)
    text = "\n\n".join(parts)
    if args.json:
        doc = _json_doc(
            args,
            machine=machine,
            servers=bench.servers,
            produced=produced,
            repeats=repeats,
            summary=summary,
            rows=rows,
        )
        doc["raw_decoder"] = asdict(bench.raw) if bench.raw else None
        doc["profile"] = profile.doc if profile is not None else None
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        say(f"wrote {args.json}")
    return text


def _set_up(args: argparse.Namespace, stack: contextlib.ExitStack) -> _Run:
    """Servers, fresh topics and a flushed Redis database; their clean-up goes on ``stack``."""
    import redis

    from attune.flows import topics
    from attune.operators.redis_sink import RedisConfig

    base = Settings.from_env()
    servers = _use_servers(base, stack)
    say(servers.note)
    if args.redis_db == 0 and "redis" not in servers.started:
        raise BenchError(
            "refusing to flush database 0 of a Redis server this bench did not start; "
            "pass --redis-db N (default 15)"
        )
    stem = f"bench-{uuid.uuid4().hex[:12]}"
    names = bench_topics(stem)
    settings = base.replace(
        kafka_bootstrap=servers.kafka_bootstrap,
        redis_url=redis_db_url(servers.redis_url, args.redis_db),
        topic_events=names["events"],
        topic_items=names["items"],
        topic_segments=names["segments"],
        topic_dlq=names["dlq"],
        topic_erasures=names["erasures"],
        topic_triggers_prefix=names["triggers_prefix"],
        kafka_tail=False,
    )
    if not settings.pseudonym_key and not settings.pseudonym_key_file:
        # Synthetic data only: a key for this run, so the flow pseudonymises as in production.
        settings = settings.replace(
            pseudonym_key=secrets.token_urlsafe(48), pseudonym_key_id="bench"
        )
    all_topics = [*topics.design_topics(settings), names["empty"]]
    stack.callback(_delete_topics, settings, all_topics)
    try:
        topics.ensure_topics(
            settings.kafka_bootstrap, all_topics, args.partitions, settings=settings
        )
    except Exception as exc:
        raise BenchError(f"could not create the bench topics: {exc}") from None
    say(f"topics {stem}.* ({args.partitions} partition(s) each), deleted at the end")

    redis_config = RedisConfig.from_settings(settings)  # credentials and TLS as the flow's
    client = redis_config.client()
    stack.callback(client.close)
    try:
        leftover = int(client.dbsize())
    except redis.RedisError as exc:
        raise BenchError(f"Redis at {redis_config.safe_url} is not usable: {exc}") from None
    if leftover:
        say(f"Redis db {args.redis_db} held {leftover:,} keys; flushing it")
    client.flushdb()
    stack.callback(client.flushdb)
    return _Run(servers, settings, names, client)


def _produce(args: argparse.Namespace, settings: Settings) -> ProduceReport:
    """The workload, generated and produced once; its time is reported, never timed below."""
    from attune.flows.generate import ProduceError, produce
    from attune.operators.codec import Codec
    from attune.workload.generator import GeneratorConfig, generate

    config = GeneratorConfig(users=args.users, days=args.days, seed=args.seed)
    say(f"generating and producing {args.users:,} users x {args.days} days, seed {args.seed}")
    try:
        report = produce(
            generate(config),
            settings.kafka_bootstrap,
            settings.topic_events,
            settings.topic_items,
            None,
            Codec(),
            settings=settings,
        )
    except ProduceError as exc:
        raise BenchError(f"producing the workload failed: {exc}") from None
    say(f"produced {report.events:,} events, {report.items:,} item updates, {report.seconds:.1f}s")
    return report


def _one_repeat(
    args: argparse.Namespace, bench: _Run, events: int, tag: str
) -> dict[str, float | None]:
    """Decode-only, then the flow on the empty topic, then the flow end to end."""
    settings, names, client = bench.settings, bench.topics, bench.redis
    flow_env = {**os.environ, **settings_env(settings)}
    empty_env = {**flow_env, env_name("topic_events"): names["empty"]}
    scale = {
        "processes": args.processes,
        "workers": args.workers,
        "timeout_s": args.flow_timeout,
        "recovery": args.recovery,
    }

    say(f"{tag}: decode-only, {args.processes} consumer(s)")
    decode = decode_only(
        settings, names["events"], args.partitions, args.processes, args.flow_timeout
    )
    if decode.events != events:
        raise BenchError(f"decode-only read {decode.events:,} messages; {events:,} were produced")
    say(f"{tag}: decode-only {decode.events / decode.wall_s:,.0f} events/s")

    assert bench.raw is not None
    say(f"{tag}: raw consume+decode ({bench.raw.chosen}), {args.processes} consumer(s)")
    raw = raw_decode(
        settings,
        names["events"],
        partitions=args.partitions,
        processes=args.processes,
        timeout_s=args.flow_timeout,
        calibration=bench.raw,
    )
    if raw.events != events:
        raise BenchError(f"the raw baseline read {raw.events:,} messages; {events:,} were produced")
    say(f"{tag}: raw consume+decode {raw.events / raw.wall_s:,.0f} events/s")

    say(f"{tag}: the flow on the empty topic (startup and shutdown only)")
    startup = run_flow(empty_env, label=f"{tag} startup-only", **scale)

    client.flushdb()
    used_before = int(client.info("memory")["used_memory"])
    dlq_before = topic_size(settings, names["dlq"])
    seg_before = topic_size(settings, names["segments"])
    say(f"{tag}: the flow end to end, {args.processes} process(es) x {args.workers} worker(s)")
    flow = run_flow(flow_env, label=f"{tag} end-to-end", redis_client=client, **scale)
    figures = repeat_figures(
        events=events,
        processes=args.processes,
        decode=decode,
        raw=raw,
        startup=startup,
        flow=flow,
        redis_mem=redis_memory(client, used_before, settings.redis_prefix, args.seed),
        dead_letters=topic_size(settings, names["dlq"]) - dlq_before,
        segment_changes=topic_size(settings, names["segments"]) - seg_before,
    )
    say(
        f"{tag}: end to end {figures['e2e_events_per_s'] or 0:,.0f} events/s "
        f"(flow {flow.wall_s:.2f}s, startup-only {startup.wall_s:.2f}s)"
    )
    return figures


@dataclass(frozen=True, slots=True)
class ProfileResult:
    """The ``--profile`` run: its text for stdout and its figures for ``--json``."""

    text: str
    doc: dict[str, Any]


def profile_text(
    report: flow_profile.ProfileReport,
    *,
    sections: Sequence[Mapping[str, float]],
    wall_s: float,
    unprofiled_wall_s: float | None,
    processes: int,
    workers: int,
    top: int = PROFILE_TOP,
) -> str:
    """The profile's part of the output: what ran, the caveats, the stages, the top functions.

    ``sections`` are the wrapper's figures of each process (:mod:`attune.bench.flow_profile`:
    wall and process CPU seconds of the profiled ``cli_main``, worker threads profiled).
    """
    cpu = sum(m.get("process_cpu_s", 0.0) for m in sections)
    wall = sum(m.get("wall_s", 0.0) for m in sections)
    threads = int(sum(m.get("worker_threads", 0) for m in sections))
    unprofiled = f" (unprofiled: {unprofiled_wall_s:.1f}s)" if unprofiled_wall_s else ""
    lines = [
        f"profile (--profile): one more end-to-end run under cProfile, {processes} process(es) "
        f"x {workers} worker(s), not part of the table above; flow wall {wall_s:.1f}s{unprofiled}",
        f"profiled: the workers' run (cli_main; imports and the flow's build left out), "
        f"{wall:.1f}s wall, {cpu:.1f}s process CPU; profiled total (own time of every "
        f"function) {report.total_s:.1f}s",
        "cProfile inflates Python-heavy code (a hook per call) against C, numpy and Rust, and "
        "times by the wall clock (a call blocked waiting counts): the shares are a guide, not a "
        "measurement. self % adds up to 100, library code counted in the stage that called it; "
        "incl. % is the time inside a stage, the stages it calls included.",
    ]
    if threads:
        lines.append(
            f"note: the workers ran on Bytewax's own threads ({threads} profiled, each from its "
            "first batch): Bytewax's Rust work between Python calls, and its C pickling of "
            "snapshots, are in no function here, so the shares are of the Python time (Bytewax "
            "overhead is its Python shims only)"
        )
    else:
        lines.append(
            "note: Bytewax's Rust work and its C pickling of snapshots are the own time of "
            "cli_main, in Bytewax overhead"
        )
    if wall > 0 and cpu < 0.8 * wall:
        lines.append(
            f"note: the flow used {cpu:.1f}s of CPU in {wall:.1f}s of profiled wall time "
            f"({100 * cpu / wall:.0f}%: waiting on Kafka or Redis, or other load on the "
            "machine); the wall-clock shares below include that waiting"
        )
    return "\n".join(lines) + "\n\n" + flow_profile.format_report(report, top=top)


def _profile_run(
    args: argparse.Namespace, bench: _Run, repeats: Sequence[Mapping[str, float | None]]
) -> ProfileResult:
    """One more end-to-end run, every flow process under cProfile; grouped by stage."""
    import pstats

    flow_env = {**os.environ, **settings_env(bench.settings)}
    timeout = args.flow_timeout * PROFILE_TIMEOUT_FACTOR
    with tempfile.TemporaryDirectory(prefix="attune-profile-") as tmp:
        folder = Path(tmp)
        bench.redis.flushdb()
        say(
            f"profile: the flow end to end under cProfile, {args.processes} process(es) x "
            f"{args.workers} worker(s)"
        )
        run = run_flow(
            flow_env,
            processes=args.processes,
            workers=args.workers,
            timeout_s=timeout,
            label="profile",
            redis_client=bench.redis,
            profile_dir=folder,
            recovery=args.recovery,
        )
        paths = sorted(folder.glob("flow-*.pstats"))
        if len(paths) != args.processes:
            raise BenchError(
                f"profile: {len(paths)} profile file(s) written by {args.processes} process(es)"
            )
        sections = [json.loads(p.with_suffix(".json").read_text()) for p in paths]
        raw = flow_profile.load(paths)
        if args.profile_out:
            args.profile_out.parent.mkdir(parents=True, exist_ok=True)
            pstats.Stats(*[str(p) for p in paths]).dump_stats(str(args.profile_out))
            say(f"wrote {args.profile_out}")
    report = flow_profile.analyze(
        raw, flow_profile.module_roots(flow_profile.PROJECT_PACKAGES), top=PROFILE_TOP
    )
    walls = [w for rep in repeats if (w := rep.get("e2e_wall_s")) is not None]
    text = profile_text(
        report,
        sections=sections,
        wall_s=run.wall_s,
        unprofiled_wall_s=statistics.median(walls) if walls else None,
        processes=args.processes,
        workers=args.workers,
    )
    doc = {
        "wall_s": run.wall_s,
        "cpu_s": run.cpu_s,
        "sections": sections,
        "total_s": report.total_s,
        "stages": [asdict(x) for x in report.stages],
        "top": [asdict(x) for x in report.top],
    }
    return ProfileResult(text, doc)


def _json_doc(
    args: argparse.Namespace,
    *,
    machine: Mapping[str, Any],
    servers: Servers,
    produced: ProduceReport,
    repeats: list[dict[str, float | None]],
    summary: Mapping[str, Stat | None],
    rows: Sequence[Row],
) -> dict[str, Any]:
    return {
        "argv": sys.argv,
        "config": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if not callable(v)
        },
        "machine": dict(machine),
        "servers": {"note": servers.note, "started": servers.started},
        "produce": asdict(produced),
        "repeats": repeats,
        "summary": {k: (s.as_dict() if s else None) for k, s in summary.items()},
        "verdicts": {
            row.key: {
                "target": row.target.text,
                "median": row.stat.median if row.stat else None,
                "verdict": row.verdict,
            }
            for row in rows
            if row.target is not None
        },
    }


def _delete_topics(settings: Settings, names: list[str]) -> None:
    from attune.flows import topics

    try:
        topics.delete_topics(settings.kafka_bootstrap, names, settings=settings)
    except Exception as exc:
        say(f"could not delete the bench topics {', '.join(names)}: {exc}")


def _header(
    args: argparse.Namespace,
    produced: ProduceReport,
    servers: Servers,
    machine: Mapping[str, Any],
    raw: RawCalibration | None = None,
) -> str:
    lines = [
        f"attune bench throughput: {produced.events:,} events of {args.users:,} users "
        f"({args.days} days, seed {args.seed}); {args.partitions} partition(s), "
        f"{args.processes} process(es) x {args.workers} worker(s), {args.repeat} repeat(s)"
        f"{', recovery on (-r)' if args.recovery else ''}",
        f"servers: {servers.note}",
        f"machine: {machine.get('nproc')} CPUs ({machine.get('cpu', '?')}), "
        f"Python {machine['python']}, bytewax {machine.get('bytewax')}",
        f"load average (1, 5, 15 min): {machine['load_average_start']} at start, "
        f"{machine.get('load_average_end')} at end",
        f"code: {machine.get('git')}",
        f"produce (generate + encode + deliver; not part of any figure below): "
        f"{produced.seconds:.1f}s, {produced.events_per_s:,.0f} events/s",
    ]
    if raw is not None:
        lines.append(f"raw consume+decode decoder: {raw.describe()}")
    if machine.get("git_end") != machine.get("git"):
        lines.append(
            f"WARNING: the code changed during the run ({machine.get('git')} -> "
            f"{machine.get('git_end')}): flow runs may have used different versions"
        )
    return "\n".join(lines)


def _footnote() -> str:
    return (
        "median/min/max over the repeats; verdicts on the median. Raw consume+decode: "
        "confluent-kafka + the decoder above to plain dicts, in processes that import no project "
        "code (design.md's baseline); decode-only: the same read through the project's Codec "
        "(typed events, dead letters). 'wall - startup': the flow's "
        "wall time minus that of the same command on an empty topic (same items), both in this "
        "run. Per process = end-to-end / --processes. RSS per user = (peak RSS - peak RSS on the "
        "empty topic) / users with a hash; Redis per user = used_memory growth during the "
        "run / users with a hash."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m attune.bench.throughput``: the same as ``attune bench throughput``."""
    parser = argparse.ArgumentParser(
        prog="attune bench throughput", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
