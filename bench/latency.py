"""``attune bench latency``: event -> trigger and event -> Redis latency at a steady rate.

The second benchmark of Attune (design.md, "Targets": p99 event -> Redis write
and event -> trigger on its topic < 50 ms at a steady 5k events/s). One run:

1. Servers, fresh topics (every design topic, trigger topics included) and
   Redis database ``--redis-db`` exactly as ``attune bench throughput`` sets
   them up (:mod:`attune.bench.throughput` helpers), plus a fresh ``<stem>.ping`` topic.
2. The flow (``python -m bytewax.run attune.flows.personalize:flow``) in a subprocess,
   tailing (``ATTUNE_KAFKA_TAIL=true``). Readiness: the catalogue and one
   warm-up event are produced and the bench waits (bounded) for the first
   Redis key.
3. A LIVE workload: generated events (:mod:`attune.workload.generator`, no
   duplicates or late events) in their order, each event's ``event_time``
   rewritten to the wall clock (epoch ms) at the moment it is handed to the
   producer, produced at ``--rate`` events/s for ``--seconds``
   (:func:`attune.flows.generate.produce` paces them).
4. While it runs, three threads measure:

   - **event -> trigger**: a :class:`attune.clients.subscriber.TriggerSubscriber` on
     every trigger kind (fresh group, assigned before production starts);
     latency = wall time the subscriber got the trigger - the trigger's
     ``cause_event_time``, for triggers caused by an event of this run (p99
     against 100 ms). A ``cart_abandoned`` trigger is caused by a timer, not by
     an event: the flow runs with ``ATTUNE_CART_ABANDON_AFTER_S`` =
     ``--abandon-after-s`` (10 s) so that carts fall due while it tails, and
     its figure is the wall time the subscriber got it - its due time (the
     last cart change + the wait), and, targeted (p99 against 1 s), the same from
     the time it could first be judged: its due time, or the login that handed an
     anonymous visitor's cart over to its user if that came later (the carts of
     anonymous visitors are judged only then: docs/triggers.md);
   - **event -> Redis**: ``--sample-users`` users' profiles polled
     (one Lua script: ``last_seen_ms`` of each; a standalone Redis, not a
     Cluster, since the keys span slots) every ``--redis-poll-ms``; an event is
     seen when ``last_seen_ms`` reaches its event time; latency = detection
     time - event time (so it includes up to one polling interval);
   - **broker round trip**: a small message produced to the ping topic and
     read back by a waiting consumer, every ``--ping-interval-ms``,
     alternately with the producer settings the events use
     (:func:`attune.flows.generate.producer_config`, ``linger.ms`` 20) and with
     ``linger.ms`` 0.

5. After ``--drain`` seconds the flow is stopped (SIGTERM, then SIGKILL) and a
   table of p50/p95/p99/max/count per figure is printed with the achieved
   production rate and pass/FAIL of p99 against each row's target.

The pure parts (percentiles, the event-time rewriting, the table, the
arguments) are tested in tests/unit/test_bench_latency.py; nothing is asserted
against a clock.

>>> percentile([10.0, 20.0, 30.0, 40.0], 50)
25.0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from attune.bench import throughput as tp
from attune.bench.throughput import BenchError, say
from attune.operators.redis_keys import MAX_CHUNKS, PROFILE_FIELD, PROFILE_ORDER, chunk_field

if TYPE_CHECKING:
    from attune.flows.generate import ProduceReport
    from attune.operators.codec import Codec
    from attune.operators.events import Event
    from attune.workload.generator import Generated

#: p99 of event -> Redis write (design.md, "Targets"), the default target of a row.
P99_TARGET_MS = 50.0
#: p99 of event -> trigger for event-caused triggers (design.md, "Targets").
TRIGGER_TARGET_MS = 100.0
#: p99 of a cart_abandoned trigger's due time -> subscriber while tailing (issue 14).
CART_DUE_TARGET_MS = 1000.0
TABLE_HEADER: tuple[str, ...] = tuple(
    ["figure", "p50 ms", "p95 ms", "p99 ms", "max ms", "count", "target", "verdict", "note"]
)
#: Trigger kinds whose ``cause_event_time`` is the time of an event (of this run).
EVENT_CAUSED_KINDS = ("long_dwell", "repeat_visit", "segment_entered", "segment_exited")
#: Trigger kinds caused by a timer (not an event): counted, not in the latency figures.
TIMER_KINDS = ("cart_abandoned",)


# --- arguments -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``attune bench latency``."""
    work = parser.add_argument_group("workload (live: event times rewritten to the wall clock)")
    work.add_argument(
        "--rate", type=tp._positive_float, default=5000.0, help="events/s produced (5000)"
    )
    work.add_argument(
        "--seconds", type=tp._positive_float, default=20.0, help="seconds of production (20)"
    )
    work.add_argument("--users", type=tp._positive_int, default=2000, help="simulated users (2000)")
    work.add_argument("--seed", type=int, default=11, help="generator seed (11)")
    meas = parser.add_argument_group("measurement")
    meas.add_argument(
        "--sample-users",
        type=tp._positive_int,
        default=200,
        help="users whose Redis profile is polled for event -> Redis (200)",
    )
    meas.add_argument(
        "--redis-poll-ms",
        type=tp._positive_float,
        default=5.0,
        help="Redis polling interval, ms (5): the event -> Redis granularity",
    )
    meas.add_argument(
        "--ping-interval-ms",
        type=tp._positive_float,
        default=50.0,
        help="broker round trip every N ms during the run (50)",
    )
    meas.add_argument(
        "--drain",
        type=tp._positive_float,
        default=5.0,
        help="seconds to keep measuring after production ends (5)",
    )
    work.add_argument(
        "--abandon-after-s",
        type=tp._positive_int,
        default=10,
        help="ATTUNE_CART_ABANDON_AFTER_S for the flow (10), so that carts fall due while "
        "it tails and the due -> trigger figure has data",
    )
    runs = parser.add_argument_group("runs")
    runs.add_argument(
        "--partitions", type=tp._positive_int, default=1, help="partitions of the fresh topics (1)"
    )
    runs.add_argument(
        "--ready-timeout",
        type=tp._positive_float,
        default=120.0,
        help="seconds the flow may take to write its first Redis key (120)",
    )
    runs.add_argument(
        "--redis-db",
        type=tp._redis_db,
        default=15,
        help="Redis database the flow writes, flushed before and after (15)",
    )
    runs.add_argument("--json", type=Path, metavar="PATH", help="also write every figure as JSON")
    runs.add_argument(
        "--trace",
        type=Path,
        metavar="PATH",
        help="run the flow under attune.bench.flow_trace, writing its slow calls, gaps and "
        "busy 100 ms windows (JSON lines, wall-clock ms) to PATH",
    )


# --- statistics and the table (pure) ---------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, linear between closest ranks.

    >>> percentile([5.0], 99), percentile([1.0, 2.0, 3.0], 0), percentile([1.0, 2.0, 3.0], 100)
    (5.0, 1.0, 3.0)
    """
    if not values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class Latency:
    """p50, p95, p99 and max of one latency figure (ms), and how many samples."""

    p50: float
    p95: float
    p99: float
    max: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Latency | None:
        """``None`` without samples.

        >>> Latency.of([1.0, 2.0, 3.0, 4.0, 100.0]).max, Latency.of([])
        (100.0, None)
        """
        if not values:
            return None
        return cls(
            percentile(values, 50),
            percentile(values, 95),
            percentile(values, 99),
            float(max(values)),
            len(values),
        )


@dataclass(frozen=True, slots=True)
class LatencyRow:
    """One line of the table; ``targeted`` rows get a verdict of p99 against ``target_ms``."""

    label: str
    stat: Latency | None
    targeted: bool = False
    note: str = ""
    target_ms: float = P99_TARGET_MS

    @property
    def verdict(self) -> str:
        if not self.targeted:
            return ""
        if self.stat is None:
            return "n/a"
        return "pass" if self.stat.p99 < self.target_ms else "FAIL"


def format_latency_table(rows: Sequence[LatencyRow]) -> str:
    """The rows as an aligned table: figure, p50, p95, p99, max (ms), count, target, verdict.

    >>> print(format_latency_table([
    ...     LatencyRow("all", Latency(10.0, 20.0, 30.0, 41.5, 7), True),
    ...     LatencyRow("redis", None, True, "not measured")]))
    figure  p50 ms  p95 ms  p99 ms  max ms  count  target       verdict  note
    ------  ------  ------  ------  ------  -----  -----------  -------  ------------
    all       10.0    20.0    30.0    41.5      7  p99 < 50 ms  pass
    redis        -       -       -       -      0  p99 < 50 ms  n/a      not measured
    """
    header = TABLE_HEADER
    lines: list[tuple[str, ...]] = []
    for row in rows:
        s = row.stat
        nums = (
            ("-", "-", "-", "-", "0")
            if s is None
            else (*(f"{v:,.1f}" for v in (s.p50, s.p95, s.p99, s.max)), f"{s.count:,}")
        )
        target = f"p99 < {row.target_ms:g} ms" if row.targeted else ""
        lines.append((row.label, *nums, target, row.verdict, row.note))
    widths = [max(len(r[i]) for r in (header, *lines)) for i in range(len(header))]
    right = {1, 2, 3, 4, 5}

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *(fmt(li) for li in lines)])


def by_period(
    pairs: Iterable[tuple[int, float]], start_ms: int, end_ms: int, periods: int = 4
) -> list[float | None]:
    """Median latency of the samples in each of ``periods`` equal slices of [start, end] (ms).

    Rising medians mean a backlog building up; flat ones, a steady delay.

    >>> by_period([(0, 1.0), (10, 3.0), (60, 5.0), (99, 7.0)], 0, 100, 2)
    [2.0, 6.0]
    >>> by_period([(0, 1.0)], 0, 100, 2)
    [1.0, None]
    """
    import statistics

    span = max(end_ms - start_ms, 1)
    slots: list[list[float]] = [[] for _ in range(periods)]
    for t, lat in pairs:
        i = min(max((t - start_ms) * periods // span, 0), periods - 1)
        slots[i].append(lat)
    return [float(statistics.median(v)) if v else None for v in slots]


def _periods_text(values: Sequence[float | None]) -> str:
    return ", ".join("-" if v is None else f"{v:,.0f}" for v in values)


# --- the live workload (pure apart from the clock it is given) -------------------------------


def live_events(
    events: Iterable[Event],
    clock_ms: Callable[[], int],
    on_stamp: Callable[[Event], None] | None = None,
) -> Iterator[Event]:
    """``events`` in their order, each with ``event_time`` = ``clock_ms()`` when it is taken.

    Ids, users and payloads are kept; only the event time changes, and it
    never goes backwards (the clock is clamped to the previous time), so the
    stream stays in event-time order. ``on_stamp`` sees each rewritten event
    before it is yielded (the bench records send times there).

    >>> from attune.operators.events import Event, EventType, PageView
    >>> evs = [Event(f"e{i}", EventType.PAGE_VIEW, 1_767_571_200_000 + i, PageView("/"), "u")
    ...        for i in range(3)]
    >>> ticks = iter([1_800_000_000_005, 1_800_000_000_003, 1_800_000_000_009])
    >>> [(e.event_id, e.event_time) for e in live_events(evs, lambda: next(ticks))]
    [('e0', 1800000000005), ('e1', 1800000000005), ('e2', 1800000000009)]
    """
    last = 0
    for event in events:
        now = max(clock_ms(), last)
        last = now
        live = replace(event, event_time=now)
        if on_stamp is not None:
            on_stamp(live)
        yield live


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


# --- measuring threads -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Received:
    """A trigger as the subscriber got it."""

    kind: str
    cause_event_time: int
    emit_time: int
    kafka_timestamp_ms: int
    received_ms: float
    user_id: str = ""


class TriggerWatch(threading.Thread):
    """Reads every trigger kind with a fresh group, stamping each with the wall time it arrived."""

    def __init__(self, settings: Any, kinds: Sequence[str]) -> None:
        super().__init__(name="bench-triggers", daemon=True)
        from attune.clients.subscriber import TriggerSubscriber

        self.sub = TriggerSubscriber(
            settings.kafka_bootstrap,
            kinds,
            f"attune-bench-latency-{uuid.uuid4().hex[:8]}",
            settings=settings,
            auto_offset_reset="earliest",  # fresh topics: nothing old to skip
        )
        self.stop = threading.Event()
        self.got: list[Received] = []
        self.undecodable = 0
        self.error: str | None = None

    def wait_assigned(self, timeout_s: float) -> bool:
        """Poll (before the thread starts) until the group has its partitions."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._poll(0.2)
            if self.sub._consumer.assignment():
                return True
        return False

    def _poll(self, timeout_s: float) -> None:
        from attune.clients.subscriber import Delivery

        batch = self.sub.poll(timeout_s)
        now = time.time() * 1000
        for item in batch:
            if isinstance(item, Delivery):
                t = item.trigger
                self.got.append(
                    Received(
                        t.kind, t.cause_event_time, t.emit_time, item.timestamp_ms, now, t.user_id
                    )
                )
            else:
                self.undecodable += 1

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self._poll(0.05)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(Exception):
                self.sub.close()


#: For every key, a user's hash (docs/redis.md): its profile (format 3, ``3|<value>|...``,
#: in the pieces ``ARGV[2..]``, the first led by their count), the value after its
#: ``ARGV[1]``-th ``|``; joined by commas (``""`` for a missing key or value).
POLL_SCRIPT = (
    "local n = tonumber(ARGV[1]) local r = {} "
    "for i, k in ipairs(KEYS) do "
    "local p = redis.call('HMGET', k, unpack(ARGV, 2)) local v = nil local f = '' "
    "if p[1] then v = string.sub(p[1], 2) "
    "for j = 2, tonumber(string.sub(p[1], 1, 1)) or 1 do v = v .. (p[j] or '') end end "
    "if v then local s = 1 "
    "for _ = 1, n do s = string.find(v, '|', s, true) if not s then break end s = s + 1 end "
    "if s then local e = string.find(v, '|', s, true) f = string.sub(v, s, (e or 0) - 1) end "
    "end r[i] = f end "
    "return table.concat(r, ',')"
)
#: The fields of the profile's pieces in a user's hash, in order.
PROFILE_PIECES = tuple(chunk_field(PROFILE_FIELD, i) for i in range(MAX_CHUNKS))
#: ``last_seen_ms``'s place in the profile string: after this many ``|`` (the format first).
LAST_SEEN_AT = PROFILE_ORDER.index("last_seen_ms") + 1


class RedisWatch(threading.Thread):
    """Polls sampled users' ``last_seen_ms`` and times when each sampled event shows up."""

    def __init__(self, client: Any, keys: Mapping[str, str], interval_s: float) -> None:
        super().__init__(name="bench-redis", daemon=True)
        self.client = client
        self.keys = dict(keys)  # user -> the user's hash
        self.pending: dict[str, deque[int]] = {u: deque() for u in keys}
        self.interval_s = interval_s
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.event_times: list[int] = []  # of each latency's event
        self.polls = 0
        self.error: str | None = None

    def record(self, event: Event) -> None:
        """Called by the producer thread for each event as it is stamped."""
        q = self.pending.get(event.user_id or "")
        if q is not None:
            q.append(event.event_time)

    def run(self) -> None:
        users = list(self.keys)
        try:
            # One EVALSHA per poll, one string back: a pipeline of HGETs costs the bench
            # process ~4 ms of GIL per poll for 200 users and starves the producer.
            sha = self.client.script_load(POLL_SCRIPT)
            command = (
                "EVALSHA",
                sha,
                len(users),
                *(self.keys[u] for u in users),
                LAST_SEEN_AT,
                *PROFILE_PIECES,
            )
            while not self.stop.is_set():
                started = time.monotonic()
                values = self.client.execute_command(*command).split(b",")
                now = time.time() * 1000
                self.polls += 1
                for u, raw in zip(users, values, strict=True):
                    q = self.pending[u]
                    if not raw or not q:
                        continue
                    try:  # format 3: base 36, or written whole after "="
                        seen = int(raw[1:]) if raw[:1] == b"=" else int(raw, 36)
                    except ValueError:
                        continue
                    while q and q[0] <= seen:
                        t = q.popleft()
                        self.latencies.append(now - t)
                        self.event_times.append(t)
                rest = self.interval_s - (time.monotonic() - started)
                if rest > 0:
                    time.sleep(rest)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def undetected(self) -> int:
        return sum(len(q) for q in self.pending.values())


class PingWatch(threading.Thread):
    """Broker round trips: produce to the ping topic, read it back, alternating two producers."""

    def __init__(self, settings: Any, topic: str, interval_s: float) -> None:
        super().__init__(name="bench-ping", daemon=True)
        self.settings = settings
        self.topic = topic
        self.interval_s = interval_s
        self.stop = threading.Event()
        self.rtt: dict[str, list[float]] = {"generate": [], "linger0": []}
        self.sent_ms: dict[str, list[float]] = {"generate": [], "linger0": []}  # of each rtt
        self.lost = 0
        self.error: str | None = None

    def run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

        from attune.flows.generate import producer_config

        try:
            base = producer_config(self.settings.kafka_bootstrap, self.settings)
            producers = {
                "generate": Producer(base),
                "linger0": Producer({**base, "linger.ms": 0}),
            }
            consumer = Consumer(
                {
                    **tp._kafka_config(self.settings),
                    "group.id": f"attune-bench-ping-{uuid.uuid4().hex[:8]}",
                    "fetch.wait.max.ms": 10,
                }
            )
            consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
            # Each producer's first message waits for its producer id (idempotence,
            # ~0.5 s) and the consumer's first fetch for its connection: one unmeasured
            # message per producer, read back, before the round trips.
            for producer in producers.values():
                producer.produce(self.topic, b"warm-up", partition=0)
                producer.flush(5)
            warm, deadline = 0, time.monotonic() + 10.0
            while warm < len(producers) and time.monotonic() < deadline:
                msg = consumer.poll(0.05)
                if msg is not None and msg.error() is None and msg.value() == b"warm-up":
                    warm += 1
            turn = 0
            while not self.stop.is_set():
                name = ("generate", "linger0")[turn % 2]
                turn += 1
                producer = producers[name]
                token = uuid.uuid4().hex.encode()
                t0 = time.monotonic()
                producer.produce(self.topic, token, partition=0)
                producer.poll(0)
                got = False
                while time.monotonic() - t0 < 5.0:
                    msg = consumer.poll(0.005)
                    producer.poll(0)
                    if msg is not None and msg.error() is None and msg.value() == token:
                        got = True
                        break
                if got:
                    self.rtt[name].append((time.monotonic() - t0) * 1000)
                    self.sent_ms[name].append(time.time() * 1000 - self.rtt[name][-1])
                else:
                    self.lost += 1
                self.stop.wait(self.interval_s)
            for p in producers.values():
                p.flush(5)
            consumer.close()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"


# --- the flow in the background --------------------------------------------------------------


@contextlib.contextmanager
def background_flow(
    env: Mapping[str, str], log: IO[bytes], trace: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """The flow (one process, one worker) running until the block ends; then SIGTERM, SIGKILL.

    With ``trace``, under :mod:`attune.bench.flow_trace` writing to that file."""
    (cmd,) = tp.flow_commands(1, 1, [])
    if trace is not None:
        cmd = [cmd[0], "-m", "attune.bench.flow_trace", str(trace), *cmd[3:]]
    proc = subprocess.Popen(
        cmd, env=dict(env), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                say("the flow did not stop within 10 s of SIGTERM; killing it")
                proc.kill()
                proc.wait(10)


# --- the command -----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """``attune bench latency``: 0 when it ran (whatever the verdicts), 1 when it could not."""
    logging.getLogger("kafka").setLevel(logging.WARNING)
    try:
        report = _bench(args)
    except BenchError as exc:
        print(f"attune bench latency: {exc}", file=sys.stderr)
        return 1
    print(report)
    return 0


@dataclass(slots=True)
class _Measured:
    """What one run measured, for the report (the flow and the servers are gone by then)."""

    report: ProduceReport
    start_ms: int
    end_ms: int
    ready_s: float
    flow_alive: bool
    flow_code: int | None
    dead_letters: int
    servers_note: str
    triggers: TriggerWatch
    redis: RedisWatch
    ping: PingWatch
    errors: dict[str, str]
    logins: dict[str, list[int]]


def _bench(args: argparse.Namespace) -> str:
    machine = tp.machine_info()
    machine["load_average_start"] = tp.load_average()
    gen, warm, live = _workload(args)
    measured = _measure(args, gen, warm, live, machine)
    result = _figures(
        measured.triggers.got,
        start_ms=measured.start_ms,
        end_ms=measured.end_ms,
        redis=measured.redis,
        ping=measured.ping,
        poll_ms=args.redis_poll_ms,
        abandon_after_ms=args.abandon_after_s * 1000,
        logins=measured.logins,
    )
    text = _report_text(args, machine, measured, result)
    if args.json:
        _write_json(args, machine, measured, result)
    return text


def _workload(args: argparse.Namespace) -> tuple[Generated, list[Event], list[Event]]:
    """The generator, one warm-up event and the live events (``--rate`` x ``--seconds``)."""
    from itertools import islice

    from attune.workload.generator import GeneratorConfig, generate

    n_live = max(1, round(args.rate * args.seconds))
    config = GeneratorConfig(
        users=args.users,
        days=366,
        seed=args.seed,
        duplicate_share=0.0,
        late_share=0.0,
        too_late_share=0.0,
    )
    say(f"generating {n_live + 1:,} events of {args.users:,} users (seed {args.seed})")
    gen = generate(config)
    events = list(islice(gen.events, n_live + 1))
    if len(events) < n_live + 1:
        say(f"the generator gave only {len(events):,} events")
    return gen, events[:1], events[1:]


def _measure(
    args: argparse.Namespace,
    gen: Generated,
    warm: list[Event],
    live: list[Event],
    machine: dict[str, Any],
) -> _Measured:
    """Set up, start the flow, warm it up, produce ``live`` while the threads measure, drain
    and tear down; the end of the run goes into ``machine`` (load average, code version)."""
    from attune.flows import topics
    from attune.flows.settings import env_name
    from attune.operators.codec import Codec

    with contextlib.ExitStack() as stack:
        # attune.bench.throughput's set-up takes args.partitions and args.redis_db.
        bench = tp._set_up(args, stack)
        settings = bench.settings.replace(
            kafka_tail=True, cart_abandon_after_s=args.abandon_after_s
        )
        ping_topic = bench.topics["events"].rsplit(".", 1)[0] + ".ping"
        stack.callback(tp._delete_topics, settings, [ping_topic])
        try:
            topics.ensure_topics(settings.kafka_bootstrap, [ping_topic], 1, settings=settings)
        except Exception as exc:
            raise BenchError(f"could not create {ping_topic}: {exc}") from None
        log = stack.enter_context(tempfile.TemporaryFile())
        env = {**os.environ, **tp.settings_env(settings), env_name("kafka_tail"): "true"}

        say("starting the flow (tailing) and producing the catalogue + 1 warm-up event")
        proc = stack.enter_context(background_flow(env, log, args.trace))
        codec = Codec()
        producer = _producer(settings)
        gen.events = iter(live_events(warm, wall_ms))
        _produce(gen, settings, codec, items=True, rate=None, what="the warm-up", producer=producer)
        ready_s = _wait_ready(bench.redis, proc, log, args.ready_timeout)
        say(f"flow ready: first Redis key {ready_s:.1f}s after the warm-up event")

        trig, redis_watch, ping = _start_watchers(args, settings, bench.redis, live, ping_topic)
        watchers: list[Any] = [trig, redis_watch, ping]
        say(f"producing {len(live):,} live events at {args.rate:,.0f}/s for {args.seconds:g}s")
        start_ms = wall_ms()
        logins: dict[str, list[int]] = {}

        def stamped(event: Event) -> None:
            redis_watch.record(event)
            if event.user_id is not None and event.anonymous_id is not None:
                logins.setdefault(event.user_id, []).append(event.event_time)

        gen.events = iter(live_events(live, wall_ms, stamped))
        report = _produce(
            gen,
            settings,
            codec,
            items=False,
            rate=args.rate,
            what="the live events",
            producer=producer,
        )
        end_ms = wall_ms()
        say(f"produced {report.events:,} events at {report.events_per_s:,.0f}/s; draining")
        time.sleep(args.drain)
        for w in watchers:
            w.stop.set()
        for w in watchers:
            w.join(10)
        flow_alive = proc.poll() is None
        flow_code = proc.returncode
        machine["load_average_end"] = tp.load_average()
        machine["git_end"] = tp.code_version()
        dlq = tp.topic_size(settings, bench.topics["dlq"])
        servers_note = bench.servers.note

    return _Measured(
        report=report,
        start_ms=start_ms,
        end_ms=end_ms,
        ready_s=ready_s,
        flow_alive=flow_alive,
        flow_code=flow_code,
        dead_letters=dlq,
        servers_note=servers_note,
        triggers=trig,
        redis=redis_watch,
        ping=ping,
        errors={w.name: w.error for w in watchers if w.error},
        logins=logins,
    )


def _produce(
    gen: Generated,
    settings: Any,
    codec: Codec,
    *,
    items: bool,
    rate: float | None,
    what: str,
    producer: Any,
) -> ProduceReport:
    """Produce ``gen``'s events (and its catalogue if ``items``) at ``rate`` to the flow's
    topics with ``producer`` (the same one for the warm-up and the live events: a new
    idempotent producer holds its first messages ~0.5 s until it has a producer id,
    which in half the runs of session 8 was the "stall" that set every p99); a failure
    is a :class:`BenchError` naming ``what`` was produced."""
    from attune.flows.generate import ProduceError, produce

    try:
        return produce(
            gen,
            settings.kafka_bootstrap,
            settings.topic_events,
            settings.topic_items if items else None,
            rate,
            codec,
            settings=settings,
            progress=False,
            producer=producer,
        )
    except ProduceError as exc:
        raise BenchError(f"producing {what} failed: {exc}") from None


def _producer(settings: Any) -> Any:
    """The producer of the run's events, with the settings ``attune generate`` uses."""
    from confluent_kafka import Producer

    from attune.flows.generate import producer_config

    return Producer(producer_config(settings.kafka_bootstrap, settings))


def _wait_ready(
    client: Any, proc: subprocess.Popen[bytes], log: IO[bytes], timeout_s: float
) -> float:
    """Seconds until the flow writes its first Redis key (bounded by ``--ready-timeout``)."""
    t0 = time.monotonic()
    while client.dbsize() == 0:
        if proc.poll() is not None:
            raise BenchError(f"the flow exited with {proc.returncode}:\n{tp._tail(log)}")
        if time.monotonic() - t0 > timeout_s:
            raise BenchError(
                f"the flow wrote nothing to Redis within {timeout_s:.0f}s "
                f"(--ready-timeout); its output ends with:\n{tp._tail(log)}"
            )
        time.sleep(0.05)
    return time.monotonic() - t0


def _start_watchers(
    args: argparse.Namespace, settings: Any, client: Any, live: list[Event], ping_topic: str
) -> tuple[TriggerWatch, RedisWatch, PingWatch]:
    """The three measuring threads, started once the trigger subscriber has its partitions;
    Redis is watched for a sample of the identified users of ``live``."""
    from attune.operators.redis_keys import RedisKeys
    from attune.operators.triggers import KINDS

    keys = RedisKeys(prefix=settings.redis_prefix)
    users = sorted({e.user_id for e in live if e.user_id})
    sample = random.Random(args.seed).sample(users, min(args.sample_users, len(users)))
    redis_watch = RedisWatch(client, {u: keys.user(u) for u in sample}, args.redis_poll_ms / 1000)
    trig = TriggerWatch(settings, KINDS)
    if not trig.wait_assigned(30):
        raise BenchError("the trigger subscriber got no partitions within 30 s")
    ping = PingWatch(settings, ping_topic, args.ping_interval_ms / 1000)
    for w in (trig, redis_watch, ping):
        w.start()
    return trig, redis_watch, ping


def _report_text(
    args: argparse.Namespace, machine: dict[str, Any], m: _Measured, result: dict[str, Any]
) -> str:
    """The printed report: the run, the machine, the latency table and the warnings."""
    report = m.report
    rows: list[LatencyRow] = result["rows"]
    lines = [
        f"attune bench latency: {report.events:,} live events of {args.users:,} users "
        f"(seed {args.seed}) at a target {args.rate:,.0f}/s for {args.seconds:g}s; "
        f"{args.partitions} partition(s), 1 flow process x 1 worker",
        f"achieved production rate: {report.events_per_s:,.0f} events/s "
        f"({(m.end_ms - m.start_ms) / 1000:.1f}s incl. final flush)",
        f"servers: {m.servers_note}",
        f"machine: {machine.get('nproc')} CPUs ({machine.get('cpu', '?')}), "
        f"Python {machine['python']}, bytewax {machine.get('bytewax')}; load average "
        f"{machine['load_average_start']} -> {machine['load_average_end']}",
        f"code: {machine.get('git')}",
        f"flow ready {m.ready_s:.1f}s after the warm-up event; "
        + (
            "still running at the end (then stopped)" if m.flow_alive else f"EXITED ({m.flow_code})"
        ),
        "",
        format_latency_table(rows),
        "",
        *result["notes"],
        f"dead letters during the run: {m.dead_letters:,}",
    ]
    if m.errors:
        lines.append(f"WARNING: measuring threads failed: {m.errors}")
    if machine.get("git_end") != machine.get("git"):
        lines.append("WARNING: the code changed during the run")
    return "\n".join(lines)


def _write_json(
    args: argparse.Namespace, machine: dict[str, Any], m: _Measured, result: dict[str, Any]
) -> None:
    """The run as JSON at ``--json``: arguments, machine, production, rows and counts."""
    rows: list[LatencyRow] = result["rows"]
    doc = {
        "argv": sys.argv,
        "config": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if not callable(v)
        },
        "machine": machine,
        "servers": m.servers_note,
        "produce": asdict(m.report),
        "flow_ready_s": m.ready_s,
        "rows": [
            {
                "label": r.label,
                "verdict": r.verdict,
                "note": r.note,
                **(asdict(r.stat) if r.stat else {}),
            }
            for r in rows
        ],
        "counts": result["counts"],
        "dead_letters": m.dead_letters,
        "errors": m.errors,
        "slowest": _slowest(m),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    say(f"wrote {args.json}")


#: Samples of each kind :func:`_slowest` keeps, with their wall times (to line up with a trace).
SLOWEST = 20


def _slowest(m: _Measured, n: int = SLOWEST) -> dict[str, list[dict[str, float]]]:
    """The ``n`` slowest samples of each figure with when they happened (wall epoch ms):
    what a stall looks like from outside, to compare with ``--trace``."""
    caused = [r for r in m.triggers.got if r.kind in EVENT_CAUSED_KINDS]
    out: dict[str, list[dict[str, float]]] = {
        "cause_to_emit": [
            {"at_ms": r.cause_event_time, "ms": r.emit_time - r.cause_event_time}
            for r in sorted(caused, key=lambda r: r.cause_event_time - r.emit_time)[:n]
        ],
        "emit_to_produced": [
            {"at_ms": r.emit_time, "ms": r.kafka_timestamp_ms - r.emit_time}
            for r in sorted(caused, key=lambda r: r.emit_time - r.kafka_timestamp_ms)[:n]
        ],
        "event_to_redis": [
            {"at_ms": t, "ms": v}
            for v, t in sorted(
                zip(m.redis.latencies, m.redis.event_times, strict=True), reverse=True
            )[:n]
        ],
    }
    for name, rtts in m.ping.rtt.items():
        out[f"ping_{name}"] = [
            {"at_ms": t, "ms": v}
            for v, t in sorted(zip(rtts, m.ping.sent_ms[name], strict=True), reverse=True)[:n]
        ]
    return out


def _judgeable_ms(r: Received, abandon_after_ms: int, logins: Mapping[str, Sequence[int]]) -> int:
    """When the flow could first judge the cart of trigger ``r``: its due time, or the
    first login of its user after the cart change and before the trigger was emitted, if
    that came later (the cart was an anonymous visitor's until then).

    >>> r = Received("cart_abandoned", 1_000, 30_000, 0, 30_010.0, "u1")
    >>> _judgeable_ms(r, 10_000, {}), _judgeable_ms(r, 10_000, {"u1": [500, 25_000]})
    (11000, 25000)
    >>> _judgeable_ms(r, 10_000, {"u1": [5_000]})  # logged in before it was due
    11000
    """
    due = r.cause_event_time + abandon_after_ms
    login = next((t for t in logins.get(r.user_id, ()) if t >= r.cause_event_time), None)
    if login is not None and due < login <= r.emit_time:
        return login
    return due


def _figures(
    got: Sequence[Received],
    *,
    start_ms: int,
    end_ms: int,
    redis: RedisWatch,
    ping: PingWatch,
    poll_ms: float,
    abandon_after_ms: int,
    logins: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """The table's rows, notes and counts from what the threads measured.

    ``logins``: per user id, the times of the live events that carried both a user id
    and an anonymous id (a login linking anonymous history). An anonymous visitor's cart
    can only be judged once it is handed over to its user at such a login
    (docs/triggers.md), so a cart whose user logged in after its due time is due, for
    the targeted row, at that login."""
    live = [r for r in got if r.kind not in TIMER_KINDS and r.cause_event_time >= start_ms]
    before = [r for r in got if r.kind not in TIMER_KINDS and r.cause_event_time < start_ms]
    timers = [r for r in got if r.kind in TIMER_KINDS]
    # carts that fell due while the flow tailed the run's events (not the warm-up's)
    due = [r for r in timers if r.cause_event_time + abandon_after_ms >= start_ms]
    judgeable = [_judgeable_ms(r, abandon_after_ms, logins or {}) for r in due]
    handed = sum(
        j > r.cause_event_time + abandon_after_ms for j, r in zip(judgeable, due, strict=True)
    )
    rows = [
        LatencyRow(
            "event -> trigger, all event-caused kinds",
            Latency.of([r.received_ms - r.cause_event_time for r in live]),
            targeted=True,
            note="subscriber receive - cause_event_time",
            target_ms=TRIGGER_TARGET_MS,
        )
    ]
    for kind in EVENT_CAUSED_KINDS:
        rows.append(
            LatencyRow(
                f"  {kind}",
                Latency.of([r.received_ms - r.cause_event_time for r in live if r.kind == kind]),
            )
        )
    rows += [
        LatencyRow(
            "  of which cause -> emit (in flow)",
            Latency.of([float(r.emit_time - r.cause_event_time) for r in live]),
            note="trigger emit_time - cause_event_time",
        ),
        LatencyRow(
            "  of which emit -> subscriber",
            Latency.of([r.received_ms - r.emit_time for r in live]),
        ),
        LatencyRow(
            "    emit -> produced (flow to sink)",
            Latency.of([float(r.kafka_timestamp_ms - r.emit_time) for r in live]),
            note="the record's CreateTime (set at produce) - emit_time",
        ),
        LatencyRow(
            "    produced -> subscriber",
            Latency.of([r.received_ms - r.kafka_timestamp_ms for r in live]),
            note="linger, broker, the subscriber's fetch",
        ),
        LatencyRow(
            "cart_abandoned: due -> subscriber",
            Latency.of([r.received_ms - r.cause_event_time - abandon_after_ms for r in due]),
            note=f"subscriber receive - (last cart change + {abandon_after_ms / 1000:g} s)",
        ),
        LatencyRow(
            "  of which due -> emit (in flow)",
            Latency.of([float(r.emit_time - r.cause_event_time - abandon_after_ms) for r in due]),
        ),
        LatencyRow(
            "cart_abandoned: judgeable -> subscriber",
            Latency.of([r.received_ms - judgeable[i] for i, r in enumerate(due)]),
            targeted=True,
            note=f"due, or the login that handed the cart over if later ({handed} carts)",
            target_ms=CART_DUE_TARGET_MS,
        ),
        LatencyRow(
            "event -> Redis profile write",
            Latency.of(redis.latencies),
            targeted=True,
            note=f"{len(redis.keys)} users polled every {poll_ms:g} ms",
        ),
        LatencyRow(
            "broker round trip, linger.ms=20 (as events)",
            Latency.of(ping.rtt["generate"]),
            note="produce -> consumer, same run",
        ),
        LatencyRow("broker round trip, linger.ms=0", Latency.of(ping.rtt["linger0"])),
    ]
    counts = {
        "triggers_received": len(got),
        "triggers_event_caused_this_run": len(live),
        "triggers_caused_before_run": len(before),
        "triggers_timer_caused": len(timers),
        "carts_due_in_run": len(due),
        "redis_events_seen": len(redis.latencies),
        "redis_events_not_seen": redis.undetected(),
        "redis_polls": redis.polls,
        "pings_lost": ping.lost,
    }
    notes = [
        f"triggers received: {len(got):,} ({len(live):,} caused by events of this run; "
        f"{len(before):,} caused before production began, e.g. by the warm-up; "
        f"{len(timers):,} cart_abandoned, timer-caused, of which {len(due):,} fell due "
        "during the run: their figure is from the due time, not an event)",
        f"event -> Redis: {len(redis.latencies):,} sampled events seen, "
        f"{redis.undetected():,} never seen (filtered, consent, or not yet written); "
        f"includes up to one {poll_ms:g} ms polling interval and the 0-1 ms truncation of "
        "the event time",
        "event times are stamped when the event is handed to the producer: every event figure "
        "includes the producer's linger.ms=20 batching (compare the broker round trip rows)",
        f"broker round trips lost (no reply within 5 s): {ping.lost}",
        "median ms by quarter of the production period (rising: a backlog builds up): "
        "event -> trigger "
        + _periods_text(
            by_period(
                ((r.cause_event_time, r.received_ms - r.cause_event_time) for r in live),
                start_ms,
                end_ms,
            )
        )
        + "; event -> Redis "
        + _periods_text(
            by_period(zip(redis.event_times, redis.latencies, strict=True), start_ms, end_ms)
        ),
    ]
    return {"rows": rows, "notes": notes, "counts": counts}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m attune.bench.latency``: the same as ``attune bench latency``."""
    parser = argparse.ArgumentParser(
        prog="attune bench latency", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
