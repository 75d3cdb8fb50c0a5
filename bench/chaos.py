"""``attune chaos``: inject faults into a running flow and check its outputs against the truth.

The recovery promise (docs/architecture.md, "Delivery, recovery and what replays
reproduce"; docs/reliability.md, "Chaos") is that a crash, a frozen or restarted
broker, a stopped or frozen Redis or a dead cluster process loses no event and
counts none twice in what downstream apps see, and that every trigger id of an
uninterrupted run is published (at least once; repeats carry the same id, so the
subscriber's act-once helper drops them). This module puts that to the test on a
real Kafka broker and Redis:

1. a generated workload (:mod:`attune.workload.generator`) is produced once to an
   events topic; its :class:`~attune.workload.truth.GroundTruth` says how many
   events each user has;
2. a clean run (``none``) publishes the reference trigger ids and is itself checked;
3. each fault runs the flow again from the beginning of the topic on fresh output
   topics, an empty Redis database and a fresh Bytewax recovery store (``-r``),
   injects its fault at a seeded point of the stream, restarts the flow from the
   recovery store whenever it died (as a supervisor such as Kubernetes would) and
   lets it run to the end of the topic;
4. the checker (:func:`count_events`, :func:`profile_differences`,
   :func:`check_triggers`) compares the profiles in Redis with the truth and the
   trigger topics with the reference, one :class:`Row` per fault.

"Counted twice" is checkable because a profile's ``events`` is the user's state
(Redis receives absolute values): a replayed event applied again would show as a
count above the truth; an event lost, as one below. Trigger repeats are grouped
by cause ``(kind, user, cause time)``: more than one *id* for one cause is a
duplicate the subscriber cannot drop, and fails the row.

The command starts its own Kafka broker and Redis on free ports in a state
directory of its own (:mod:`attune.flows.local`), so it never touches servers
someone else is running; :func:`run_schedule` also runs on given servers (the
integration test uses the test session's).

>>> rows = [Row("none", 10, 9, 9, 0, 0, 0, 0, 3, 3, 0, 0, 0, 0, 0, None, "")]
>>> rows[0].ok
True
>>> print(format_table(rows))  # doctest: +NORMALIZE_WHITESPACE
fault  events in  expected  applied  lost  twice  users wrong  stray anon  trig expected
    trig missing  trig repeated  dup beyond id  trig extra  restarts  recover s  ok
none          10         9        9     0      0            0           0              3
               0              0              0           0         0          -  yes
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

import orjson
import redis

from attune.flows import local, topics
from attune.flows.local import LocalServers
from attune.flows.settings import Settings, env_name
from attune.operators.codec import Codec
from attune.operators.events import Trigger
from attune.operators.redis_keys import PROFILE_FIELD, RedisKeys, joined
from attune.workload.truth import COUNTERS, GroundTruth

log = logging.getLogger(__name__)

#: The repository root (attune/bench is a link to bench/): the flow processes import from it.
ROOT = Path(__file__).resolve().parents[1]
FLOW_IMPORT = "attune.flows.personalize:flow"

#: Trigger kinds whose ids a replay, a recovery or another worker count reproduces
#: exactly (docs/architecture.md, "Known limits": segment triggers of users with
#: anonymous history may move; propensity triggers depend on the shared model).
CHECKED_KINDS = ("cart_abandoned", "long_dwell", "repeat_visit")


#: Every fault :func:`run_schedule` knows, in the order it runs them.
FAULTS = (
    "sigkill",
    "broker-freeze",
    "broker-stop",
    "cluster-kill",
    "redis-stop",
    "redis-freeze",
    "redis-empty",
)

#: Bounds: one flow run from the start of the topic to its end, restarts after crashes.
RUN_TIMEOUT_S = 900.0
MAX_RESTARTS = 40
MAX_FRUITLESS = 5
RESTART_DELAY_S = 2.0
POLL_S = 0.1
#: How long the surviving process of a cluster may take to notice its peer died.
SURVIVOR_WAIT_S = 30.0


# --- the checker: pure functions ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventCounts:
    """Events of the exact users: what the truth expects, what the profiles counted,
    the shortfall (``lost``) and the excess (``twice``), summed user by user so that one
    user's loss never hides another's double count."""

    expected: int
    applied: int
    lost: int
    twice: int


def count_events(applied: Mapping[str, int | None], expected: Mapping[str, int]) -> EventCounts:
    """Compare each user's counted events (``None``: no profile) with the truth.

    >>> count_events({"a": 3, "b": 5, "c": None}, {"a": 3, "b": 4, "c": 2})
    EventCounts(expected=9, applied=8, lost=2, twice=1)
    """
    lost = twice = total = 0
    for user, want in expected.items():
        got = applied.get(user) or 0
        total += got
        lost += max(0, want - got)
        twice += max(0, got - want)
    return EventCounts(sum(expected.values()), total, lost, twice)


def profile_differences(
    profiles: Mapping[str, Mapping[str, str | None] | None], truth: GroundTruth
) -> dict[str, object]:
    """Every exact user whose profile is missing or whose counters
    (:data:`~attune.workload.truth.COUNTERS`) differ from the truth, with the differing
    fields as ``(profile, truth)``."""
    out: dict[str, object] = {}
    for user in truth.exact_users():
        profile = profiles.get(user)
        if not profile:
            out[user] = "no profile"
            continue
        t = truth.users[user]
        diff = {
            c: (profile.get(c), getattr(t, c))
            for c in COUNTERS
            if int(profile.get(c) or 0) != getattr(t, c)
        }
        if diff:
            out[user] = diff
    return out


def stray_anonymous(profiles: Mapping[str, object], truth: GroundTruth) -> list[str]:
    """Anonymous ids with a profile although the truth links them to a user: at the link
    the flow forgets the anonymous key (its history goes to the user), so a profile left
    under it is history that stayed behind.

    >>> from attune.workload.generator import GeneratorConfig, ground_truth
    >>> truth = ground_truth(GeneratorConfig(users=30, days=2, seed=5))
    >>> linked = next(a for a, u in truth.anonymous_to_user.items() if a != u)
    >>> stray_anonymous({linked: {}, truth.exact_users()[0]: {}}, truth) == [linked]
    True
    """
    return sorted(a for a, user in truth.anonymous_to_user.items() if a != user and a in profiles)


class TriggerKey(NamedTuple):
    """What identifies a published trigger, and the cause it was fired for."""

    trigger_id: str
    kind: str
    user: str
    cause_ms: int

    @classmethod
    def of(cls, trigger: Trigger) -> TriggerKey:
        return cls(trigger.trigger_id, trigger.kind, trigger.user_id, trigger.cause_event_time)


@dataclass(frozen=True, slots=True)
class TriggerCounts:
    """Published triggers against the reference run's.

    ``missing``: reference ids never published; ``repeated``: publications of an id
    beyond its first (at-least-once, dropped by id downstream); ``beyond_id``: extra
    ids for one cause ``(kind, user, cause time)``, which no consumer can dedupe;
    ``extra``: published ids the reference lacks.
    """

    expected: int
    missing: int
    repeated: int
    beyond_id: int
    extra: int


def check_triggers(
    expected: Iterable[TriggerKey], published: Iterable[TriggerKey]
) -> TriggerCounts:
    """Compare published triggers with the reference.

    >>> ref = [TriggerKey("t1", "long_dwell", "u", 5), TriggerKey("t2", "long_dwell", "u", 9)]
    >>> pub = ref + [ref[0], TriggerKey("t3", "long_dwell", "u", 9)]
    >>> check_triggers(ref, pub)
    TriggerCounts(expected=2, missing=0, repeated=1, beyond_id=1, extra=1)
    >>> check_triggers(ref, ref[:1])
    TriggerCounts(expected=2, missing=1, repeated=0, beyond_id=0, extra=0)
    """
    want = {k.trigger_id for k in expected}
    times = Counter(k.trigger_id for k in published)
    ids_of_cause: dict[tuple[str, str, int], set[str]] = defaultdict(set)
    for k in published:
        ids_of_cause[(k.kind, k.user, k.cause_ms)].add(k.trigger_id)
    return TriggerCounts(
        expected=len(want),
        missing=len(want - times.keys()),
        repeated=sum(n - 1 for n in times.values()),
        beyond_id=sum(len(ids) - 1 for ids in ids_of_cause.values()),
        extra=len(times.keys() - want),
    )


def trigger_examples(
    expected: Iterable[TriggerKey], published: Iterable[TriggerKey], count: int = 3
) -> str:
    """The first few missing and extra triggers as ``kind user cause_ms id``, for the notes.

    >>> ref = [TriggerKey("t1", "long_dwell", "u", 5)]
    >>> trigger_examples(ref, [TriggerKey("t9", "cart_abandoned", "v", 7)])
    'missing: long_dwell u 5 t1; extra: cart_abandoned v 7 t9'
    >>> trigger_examples(ref, ref)
    ''
    """
    want = {k.trigger_id: k for k in expected}
    got = {k.trigger_id: k for k in published}

    def show(keys: list[TriggerKey]) -> str:
        return ", ".join(f"{k.kind} {k.user} {k.cause_ms} {k.trigger_id}" for k in keys)

    parts = []
    missing = sorted(want[i] for i in want.keys() - got.keys())[:count]
    extra = sorted(got[i] for i in got.keys() - want.keys())[:count]
    if missing:
        parts.append(f"missing: {show(missing)}")
    if extra:
        parts.append(f"extra: {show(extra)}")
    return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class Row:
    """One fault's outcome. ``recover_s``: seconds from the end of the fault (restart
    issued, server resumed or back up) until the profiles counted more events than
    when it began (``None``: no fault, or the flow had already finished)."""

    fault: str
    events_in: int
    expected: int
    applied: int
    lost: int
    twice: int
    users_wrong: int
    stray_anonymous: int  # profiles of anonymous ids the truth links to a user
    triggers_expected: int
    triggers_published: int
    triggers_missing: int
    triggers_repeated: int
    triggers_beyond_id: int
    triggers_extra: int
    restarts: int
    recover_s: float | None
    note: str
    completed: bool = True
    resume_epochs: tuple[int, ...] = ()
    last_epoch: int = 0
    fault_levels: tuple[int, ...] = ()  # progress (events in the profiles) at each fault

    @property
    def ok(self) -> bool:
        """The flow reached the end of the topic and nothing was lost, doubled or missing."""
        return (
            self.completed
            and self.lost == 0
            and self.twice == 0
            and self.users_wrong == 0
            and self.stray_anonymous == 0
            and self.triggers_missing == 0
            and self.triggers_beyond_id == 0
            and self.triggers_extra == 0
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


COLUMNS = (
    ("fault", "fault"),
    ("events in", "events_in"),
    ("expected", "expected"),
    ("applied", "applied"),
    ("lost", "lost"),
    ("twice", "twice"),
    ("users wrong", "users_wrong"),
    ("stray anon", "stray_anonymous"),
    ("trig expected", "triggers_expected"),
    ("trig missing", "triggers_missing"),
    ("trig repeated", "triggers_repeated"),
    ("dup beyond id", "triggers_beyond_id"),
    ("trig extra", "triggers_extra"),
    ("restarts", "restarts"),
    ("recover s", "recover_s"),
)


def format_table(rows: Sequence[Row]) -> str:
    """The rows as an aligned text table (notes follow it, one line per fault)."""

    def cell(row: Row, attr: str) -> str:
        value = getattr(row, attr)
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.1f}"
        return str(value)

    table = [[title for title, _ in COLUMNS] + ["ok"]]
    table += [[cell(r, a) for _, a in COLUMNS] + ["yes" if r.ok else "NO"] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in table
    ]
    notes = [f"{r.fault}: {r.note}" for r in rows if r.note]
    return "\n".join(lines + notes)


def kill_points(count: int, total: int, seed: int) -> list[int]:
    """``count`` distinct event counts between 5 % and 80 % of ``total``, seeded, ascending,
    at least ``total / (2 * count + 2)`` apart so that each kill finds progress after the
    restart before it. Not later than 80 %: the watcher sees progress only as often as it
    polls, and a fast flow ended before a kill at 95 % of a short run could be made.

    >>> kill_points(3, 1000, 1) == kill_points(3, 1000, 1)
    True
    >>> points = kill_points(20, 30000, 7)
    >>> len(points), points == sorted(points), points[0] >= 1500, points[-1] <= 24000
    (20, True, True, True)
    >>> min(b - a for a, b in zip(points, points[1:])) >= 30000 // 42
    True
    """
    if count <= 0:
        return []
    rng = random.Random(seed)
    gap = total // (2 * count + 2)
    lo, hi = int(total * 0.05), int(total * 0.80) - gap * (count - 1)
    if gap == 0 or hi <= lo:
        raise ValueError(f"{count} kills do not fit in {total} events; use a larger workload")
    raw = sorted(rng.randint(lo, hi) for _ in range(count))
    return [p + i * gap for i, p in enumerate(raw)]


# --- reading what the flow wrote ----------------------------------------------------------


def read_topic(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[bytes]:
    """Every message value on ``topic`` now, all partitions read to their end."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"attune-chaos-{uuid.uuid4().hex}",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        pending = set(meta.partitions)
        out: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: partitions {sorted(pending)} not read to their end")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                    continue
                raise RuntimeError(f"reading {topic}: {err}")
            out.append(msg.value() or b"")
        return out
    finally:
        consumer.close()


def published_triggers(settings: Settings) -> list[TriggerKey]:
    """Every trigger of :data:`CHECKED_KINDS` on the topics of ``settings``."""
    codec = Codec()
    out = []
    for kind in CHECKED_KINDS:
        for value in read_topic(settings.kafka_bootstrap, settings.topic_trigger(kind)):
            trigger = codec.decode_trigger(value)
            if not isinstance(trigger, Trigger):
                raise RuntimeError(f"undecodable message on {settings.topic_trigger(kind)}")
            out.append(TriggerKey.of(trigger))
    return out


def read_profiles(client: redis.Redis, prefix: str) -> dict[str, dict[str, str | None]]:
    """Every profile in Redis, by user: the ``P`` fields of the users' hashes
    (``attune:{u:<user>}``; docs/redis.md)."""
    from attune.clients.recommendations import parse_profile

    keys = RedisKeys(prefix)
    # the users' hashes: the pattern ends with the tag, so no alias key matches
    names = [k.decode() for k in client.scan_iter(match=keys.user("*"), count=1000)]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(name)
    out = {}
    for name, fields in zip(names, pipe.execute(), strict=True):
        raw = joined(fields, PROFILE_FIELD) if fields else None
        if raw is not None:
            out[_user_of(name, prefix)] = parse_profile(raw)
    return out


def _user_of(key: str, prefix: str) -> str:
    """``attune:{u:alice}`` -> ``alice``.

    >>> _user_of("attune:{u:a:b}", "attune:")
    'a:b'
    """
    inner = key[len(prefix) :]
    return inner[inner.index("{u:") + 3 : inner.rindex("}")]


def progress(client: redis.Redis, prefix: str) -> int | None:
    """Events the profiles in Redis count now (the flow's progress); ``None`` while
    Redis does not answer."""
    try:
        return sum(int(p.get("events") or 0) for p in read_profiles(client, prefix).values())
    except redis.RedisError:
        return None


def resume_epochs(recovery: Path) -> tuple[list[int], int]:
    """From a Bytewax 0.21 recovery store (SQLite partitions ``part-*.sqlite3``): the
    epoch each execution after the first resumed from, and the last snapshotted epoch.

    A resume epoch of 1 means the restart replayed the stream from its beginning: no
    snapshot had been committed yet when the flow died.
    """
    resumed: dict[int, int] = {}
    last = 0
    for part in sorted(recovery.glob("part-*.sqlite3")):
        with contextlib.closing(sqlite3.connect(part)) as db:
            for ex, epoch in db.execute("SELECT ex_num, resume_epoch FROM exs"):
                resumed[int(ex)] = max(resumed.get(int(ex), 0), int(epoch))
            (top,) = db.execute("SELECT COALESCE(MAX(snap_epoch), 0) FROM snaps").fetchone()
            last = max(last, int(top))
    return [resumed[ex] for ex in sorted(resumed) if ex > 0], last


def snapshots_past_resume(recovery: Path) -> dict[str, int]:
    """Per step, the snapshots in a Bytewax 0.21 recovery store at or after the epoch a
    restart would resume from: written by an execution killed before it committed them
    (each step's snapshots of an epoch are written as that step closes it, the frontier
    after all of them). Bytewax keeps them (``src/recovery.rs`` deletes none), and the
    restart's own epochs overwrite only the keys they touch, so a later restart can load
    them next to other steps' states from another timeline.
    """
    from attune.flows.rebuild import resume_epoch

    parts = sorted(recovery.glob("part-*.sqlite3"))
    epoch = resume_epoch(recovery) if parts else None
    found: Counter[str] = Counter()
    if epoch is None:
        return {}
    for part in parts:
        with contextlib.closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True)) as db:
            for step, count in db.execute(
                "SELECT step_id, COUNT(*) FROM snaps WHERE snap_epoch >= ? GROUP BY step_id",
                (epoch,),
            ):
                found[str(step).rpartition(".")[2]] += int(count)
    return dict(sorted(found.items()))


# --- servers and flow processes -----------------------------------------------------------


def flow_env(settings: Settings) -> dict[str, str]:
    """The environment of a flow process: every setting as its ``ATTUNE_*`` variable."""
    from attune.bench.throughput import settings_env

    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTUNE_")}
    env.update(settings_env(settings))
    env[env_name("kafka_tail")] = "false"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free right now."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Servers:
    """The broker and Redis the schedule runs on, and how to stop, freeze and start them.

    ``settings`` carries their ports and state directory (what deploy/local/*.sh read),
    ``addresses`` where they listen."""

    settings: Settings
    addresses: LocalServers

    def _pid(self, name: str) -> int:
        state = self.settings.resolved_state_dir()
        port = self.settings.kafka_port if name == "kafka" else self.settings.redis_port
        return int((state / f"{name}-{port}" / f"{name}.pid").read_text().split()[0])

    def signal(self, name: str, sig: signal.Signals) -> None:
        """Send ``sig`` to our own broker (``kafka``) or Redis (``redis``), by its pid file."""
        os.kill(self._pid(name), sig)

    def stop_broker(self) -> None:
        """Stop the broker, keeping its data (``kafka.sh down --keep``)."""
        local._checked(local.KAFKA_SCRIPT, ["down", "--keep"], self.settings, timeout_s=120)

    def start_broker(self) -> None:
        cache = Settings.from_env().resolved_state_dir()
        args = ["up", "--cache-dir", str(cache)]
        local._checked(local.KAFKA_SCRIPT, args, self.settings, timeout_s=local.UP_TIMEOUT_S)

    def stop_redis(self, *, keep: bool) -> None:
        """Stop Redis; with ``keep``, as a Redis with persistence does (``SHUTDOWN SAVE``:
        its dump is loaded when it starts again), else losing everything."""
        if keep:
            client = redis.Redis.from_url(self.addresses.redis_url, socket_timeout=10)
            with contextlib.suppress(redis.ConnectionError):
                client.shutdown(save=True)
            deadline = time.monotonic() + 10
            with contextlib.suppress(ProcessLookupError):
                while time.monotonic() < deadline:
                    os.kill(self._pid("redis"), 0)
                    time.sleep(0.05)
        else:
            local._checked(local.REDIS_SCRIPT, ["down"], self.settings, timeout_s=60)

    def start_redis(self) -> None:
        local._checked(local.REDIS_SCRIPT, ["up"], self.settings, timeout_s=60)
        dump = self.settings.resolved_state_dir() / f"redis-{self.settings.redis_port}" / "dump.rdb"
        dump.unlink(missing_ok=True)  # loaded now; a later restart must start empty


@contextlib.contextmanager
def own_servers() -> Iterator[Servers]:
    """A broker and Redis of our own on free ports in a new state directory (the jars
    from the default cache), stopped and removed at the end."""
    base = Settings.from_env()
    cache = base.resolved_state_dir()
    state = Path(tempfile.mkdtemp(prefix="chaos-", dir=cache))
    settings = base
    try:
        for attempt in range(5):
            kafka, controller, redis_port = free_ports(3)
            settings = base.replace(
                state_dir=str(state),
                kafka_port=kafka,
                kafka_controller_port=controller,
                redis_port=redis_port,
            )
            try:
                addresses = local.up(settings, cache_dir=cache)
                break
            except local.LocalServerError as exc:
                with contextlib.suppress(local.LocalServerError):
                    local.down(settings)
                if "already in use" not in str(exc) or attempt == 4:
                    raise
        yield Servers(settings, addresses)
    finally:
        with contextlib.suppress(local.LocalServerError):
            local.down(settings)
        shutil.rmtree(state, ignore_errors=True)


@dataclass
class Flow:
    """The flow's processes for one fault: started from the recovery store, restarted
    after a crash, watched through the progress they write to Redis."""

    settings: Settings
    recovery: Path
    logs: Path
    client: redis.Redis
    processes: int = 1
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    restarts: int = 0
    failures: list[str] = field(default_factory=list)
    #: Crashes in a row with no progress between them (a flow that cannot start).
    _fruitless: int = 0
    _level_at_start: int | None = None
    recoveries: list[float] = field(default_factory=list)
    marks: list[int] = field(default_factory=list)
    _mark: tuple[int, float] | None = None
    _logs: list[IO[bytes]] = field(default_factory=list)
    _runs: int = 0
    #: Per restart from the store: how many snapshots past its resume epoch it found.
    left_behind: list[int] = field(default_factory=list)
    left_behind_steps: Counter[str] = field(default_factory=Counter)

    def start(self) -> None:
        if self._runs:
            found = snapshots_past_resume(self.recovery)
            self.left_behind.append(sum(found.values()))
            self.left_behind_steps.update(found)
        env = flow_env(self.settings)
        ports = free_ports(self.processes) if self.processes > 1 else []
        addresses = ";".join(f"127.0.0.1:{p}" for p in ports)
        self.procs = []
        self._level_at_start = progress(self.client, self.settings.redis_prefix)
        for i in range(self.processes):
            cluster = ["-i", str(i), "-a", addresses] if self.processes > 1 else []
            self._runs += 1
            out = open(self.logs / f"flow-{self._runs:03d}-{i}.log", "w+b")  # noqa: SIM115
            self._logs.append(out)
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bytewax.run", FLOW_IMPORT, *cluster,
                     "-r", str(self.recovery), "-s", "1", "-b", "0"],
                    env=env,
                    cwd=ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )  # fmt: skip

    def kill(self, index: int | None = None) -> None:
        """SIGKILL one process (``index``) or all of them, and reap it."""
        for i, proc in enumerate(self.procs):
            if (index is None or i == index) and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)

    def mark(self, level: int) -> None:
        """Time the recovery from now: done when progress passes ``level``."""
        self._mark = (level, time.monotonic())
        self.marks.append(level)

    def level(self) -> int | None:
        now = progress(self.client, self.settings.redis_prefix)
        if self._mark is not None and now is not None and now > self._mark[0]:
            self.recoveries.append(time.monotonic() - self._mark[1])
            self._mark = None
        return now

    def _last_line(self, proc: subprocess.Popen[bytes]) -> str:
        fh = self._logs[-len(self.procs) + self.procs.index(proc)]
        fh.flush()
        fh.seek(0)
        lines = [ln for ln in fh.read().decode(errors="replace").splitlines() if ln.strip()]
        return lines[-1].strip()[:200] if lines else "(no output)"

    def _check_crash(self) -> bool:
        """Restart every process if one died on its own; True when all finished cleanly."""
        codes = [p.poll() for p in self.procs]
        if all(c == 0 for c in codes):
            return True
        bad = [p for p, c in zip(self.procs, codes, strict=True) if c not in (None, 0)]
        if not bad:
            return False
        self.failures.append(f"exit {bad[0].returncode}: {self._last_line(bad[0])}")
        now = progress(self.client, self.settings.redis_prefix)
        moved = now is not None and now != self._level_at_start
        self._fruitless = 0 if moved else self._fruitless + 1
        if self._fruitless >= MAX_FRUITLESS:
            raise RuntimeError(
                f"the flow died {self._fruitless} times in a row without progress; "
                f"last: {self.failures[-1]}"
            )
        if self.restarts >= MAX_RESTARTS:
            raise RuntimeError(
                f"the flow died {self.restarts + 1} times; last: {self.failures[-1]}"
            )
        self.kill()
        time.sleep(RESTART_DELAY_S)
        self.restarts += 1
        self.start()
        return False

    def wait_level(self, level: int, timeout_s: float = RUN_TIMEOUT_S) -> int | None:
        """Run (restarting after crashes) until progress reaches ``level``: that progress,
        or ``None`` if the flow finished first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            now = self.level()
            if now is not None and now >= level:
                return now
            if self._check_crash():
                return None
            time.sleep(POLL_S)
        raise TimeoutError(f"progress did not reach {level} events within {timeout_s:.0f} s")

    def finish(self, timeout_s: float = RUN_TIMEOUT_S) -> None:
        """Run (restarting after crashes) to the end of the topic."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.level()
            if self._check_crash():
                self.level()
                if self._mark is not None:  # finished without passing the mark
                    self.recoveries.append(time.monotonic() - self._mark[1])
                    self._mark = None
                return
            time.sleep(POLL_S)
        self.kill()
        raise TimeoutError(f"the flow did not reach the end of the topic in {timeout_s:.0f} s")

    def close(self) -> None:
        self.kill()
        for fh in self._logs:
            fh.close()


# --- the schedule --------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """What to run. Durations in seconds; ``faults`` a subset of :data:`FAULTS`."""

    users: int = 400
    days: int = 6
    seed: int = 21
    kills: int = 20
    broker_pause_s: float = 20.0
    redis_pause_s: float = 30.0
    at: float = 0.3  # where in the stream (share of the expected events) a pause begins
    #: Messages per poll of the flow's Kafka source: a restarted flow's progress moves
    #: by about a batch per partition at once, so smaller batches let 20 kills land at
    #: distinct points of a stream this size (with 1,000, 15 of 20 did).
    batch_size: int = 250
    faults: tuple[str, ...] = FAULTS


@dataclass
class Chaos:
    """One workload on one pair of servers; :meth:`run` runs a fault and checks it."""

    servers: Servers
    schedule: Schedule
    work: Path
    truth: GroundTruth
    events_in: int
    base: Settings
    reference: list[TriggerKey] = field(default_factory=list)

    @classmethod
    def prepare(cls, servers: Servers, schedule: Schedule, work: Path) -> Chaos:
        """Produce the workload to a fresh 3-partition events topic."""
        from attune.flows.generate import produce
        from attune.workload.generator import GeneratorConfig, generate

        tag = uuid.uuid4().hex[:8]
        base = servers.addresses.apply(servers.settings).replace(
            topic_events=f"chaos.events.{tag}",
            topic_items=f"chaos.items.{tag}",
            kafka_tail=False,
            kafka_batch_size=schedule.batch_size,
        )
        if not base.pseudonym_key:  # the flow refuses Kafka without one (docs/privacy.md)
            base = base.replace(pseudonym_key=secrets.token_urlsafe(48), pseudonym_key_id="chaos")
        topics.ensure_topics(base.kafka_bootstrap, [base.topic_events, base.topic_items], 3)
        generated = generate(
            GeneratorConfig(users=schedule.users, days=schedule.days, seed=schedule.seed)
        )
        report = produce(
            generated,
            base.kafka_bootstrap,
            base.topic_events,
            base.topic_items,
            None,
            Codec(),
            settings=base,
            progress=False,
        )
        return cls(servers, schedule, work, generated.truth, report.events, base)

    @property
    def expected(self) -> dict[str, int]:
        return {u: self.truth.users[u].events for u in self.truth.exact_users()}

    def run(self, fault: str) -> Row:
        """Run the flow under ``fault`` (``none``: no fault) and check what it wrote."""
        tag = uuid.uuid4().hex[:8]
        settings = self.base.replace(
            topic_segments=f"chaos.segments.{tag}",
            topic_dlq=f"chaos.dlq.{tag}",
            topic_erasures=f"chaos.erasures.{tag}",
            topic_triggers_prefix=f"chaos.triggers.{tag}.",
        )
        topics.ensure_topics(settings.kafka_bootstrap, topics.design_topics(settings)[2:], 3)
        recovery = self.work / fault / "recovery"
        logs = self.work / fault
        shutil.rmtree(logs, ignore_errors=True)
        recovery.mkdir(parents=True)
        subprocess.run(
            [sys.executable, "-m", "bytewax.recovery", str(recovery), "1"],
            check=True,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=2)
        client.flushdb()
        flow = Flow(settings, recovery, logs, client, processes=2 if fault == "cluster-kill" else 1)
        note = ""
        completed = True
        started = time.monotonic()
        try:
            note = self._inject(fault, flow)
        except (RuntimeError, TimeoutError) as exc:
            completed = False
            note = f"did not complete: {exc}"
        finally:
            flow.close()
        took = time.monotonic() - started
        row = self._check(fault, settings, client, flow, note, completed, took)
        resumed, last = resume_epochs(recovery)
        if resumed:
            note = f"{row.note}; restarts resumed at epochs {resumed} (last snapshot epoch {last})"
        else:
            note = row.note
        if any(flow.left_behind):
            steps = ", ".join(f"{k} {v}" for k, v in sorted(flow.left_behind_steps.items()))
            note = (
                f"{note}; {sum(1 for n in flow.left_behind if n)} of {len(flow.left_behind)}"
                f" restarts found snapshots past their resume epoch ({steps})"
            )
        return dataclasses.replace(row, note=note, resume_epochs=tuple(resumed), last_epoch=last)

    def _inject(self, fault: str, flow: Flow) -> str:
        s = self.schedule
        total = sum(self.expected.values())
        at = int(total * s.at)
        flow.start()
        if fault == "none":
            flow.finish()
            return ""
        if fault == "sigkill":
            return self._sigkill(flow, total)
        if fault == "cluster-kill":
            return self._cluster_kill(flow, at)
        if fault == "redis-empty":
            return self._redis_empty(flow, at)
        return self._pause(fault, flow, at)

    def _redis_empty(self, flow: Flow, at: int) -> str:
        """Redis restarted empty mid-stream (the cache lost); once the flow has reached the
        end, ``attune rebuild-redis`` rewrites the users it did not touch again."""
        from attune.flows.rebuild import rebuild

        level = flow.wait_level(at)
        if level is None:
            raise RuntimeError("the flow finished before the fault: use a larger workload")
        self.servers.stop_redis(keep=False)
        self.servers.start_redis()
        flow.mark(0)
        flow.finish()
        before = profile_differences(
            read_profiles(flow.client, flow.settings.redis_prefix), self.truth
        )
        report = rebuild(flow.recovery, flow.settings)
        say = (
            f"emptied at {level} events; at the end {len(before)} users' profiles were "
            f"missing or stale; rebuild-redis rewrote {report.users} users"
        )
        if flow.failures:
            say += f"; the flow died, first: {flow.failures[0]}"
        return say

    def _sigkill(self, flow: Flow, total: int) -> str:
        s = self.schedule
        kills = 0
        level: int | None = 0
        for point in kill_points(s.kills, total, s.seed):
            # past the previous kill too: each kill finds the restarted flow making progress
            level = flow.wait_level(max(point, (level or 0) + 1))
            if level is None:
                break
            flow.kill()
            kills += 1
            flow.mark(level)
            flow.start()
        flow.finish()
        return (
            f"{kills} of {s.kills} kills (the flow ended before the rest)"
            if kills < s.kills
            else f"{kills} kills"
        )

    def _cluster_kill(self, flow: Flow, at: int) -> str:
        level = flow.wait_level(at)
        if level is None:
            raise RuntimeError("the cluster finished before the kill: use a larger workload")
        flow.kill(1)
        t0 = time.monotonic()
        survivor = flow.procs[0]
        with contextlib.suppress(subprocess.TimeoutExpired):
            survivor.wait(SURVIVOR_WAIT_S)
        code = survivor.poll()
        waited = time.monotonic() - t0
        how = (
            f"process 0 exited ({code}) {waited:.0f} s after process 1 was killed"
            if code is not None
            else f"process 0 still running {SURVIVOR_WAIT_S:.0f} s after, killed"
        )
        flow.kill()
        # the survivor may have written more before it stopped
        flow.mark(max(level, progress(flow.client, flow.settings.redis_prefix) or 0))
        flow.start()
        flow.finish()
        return how

    def _pause(self, fault: str, flow: Flow, at: int) -> str:
        s = self.schedule
        pause = s.broker_pause_s if fault.startswith("broker") else s.redis_pause_s
        level = flow.wait_level(at)
        if level is None:
            raise RuntimeError("the flow finished before the fault: use a larger workload")
        name = "kafka" if fault.startswith("broker") else "redis"
        if fault.endswith("freeze"):
            self.servers.signal(name, signal.SIGSTOP)
            try:
                died = self._sleep_watching(flow, pause)
            finally:
                self.servers.signal(name, signal.SIGCONT)
        elif name == "kafka":
            self.servers.stop_broker()
            died = self._sleep_watching(flow, pause)
            self.servers.start_broker()
        else:
            self.servers.stop_redis(keep=True)
            died = self._sleep_watching(flow, pause)
            self.servers.start_redis()
        # recovered once the profiles count more than when the fault ended (the flow may
        # have gone on with what it had fetched while the broker was frozen)
        after = progress(flow.client, flow.settings.redis_prefix)
        flow.mark(max(level, after or 0))
        flow.finish()
        say = f"{pause:.0f} s at {level} events; "
        if flow.failures:
            when = "during it" if died else "after it"
            return say + f"the flow died {when}, first: {flow.failures[0]}"
        return say + "the flow rode it out"

    @staticmethod
    def _sleep_watching(flow: Flow, seconds: float) -> bool:
        """Wait ``seconds`` while the fault lasts; True if a flow process died meanwhile
        (it is restarted once the fault is over, by :meth:`Flow.finish`)."""
        time.sleep(seconds)
        return any(proc.poll() not in (None, 0) for proc in flow.procs)

    def _check(  # noqa: PLR0917 - private, called once
        self,
        fault: str,
        settings: Settings,
        client: redis.Redis,
        flow: Flow,
        note: str,
        completed: bool,
        took: float,
    ) -> Row:
        profiles = read_profiles(client, settings.redis_prefix)
        counts = count_events(
            {u: int(p.get("events") or 0) for u, p in profiles.items()}, self.expected
        )
        wrong = profile_differences(profiles, self.truth)
        stray = stray_anonymous(profiles, self.truth)
        published = published_triggers(settings)
        if fault == "none":
            self.reference = published
        trig = check_triggers(self.reference, published)
        if stray:
            note = f"{note}; profiles of linked anonymous ids: {stray[:3]}".lstrip("; ")
        odd = trigger_examples(self.reference, published)
        if odd:
            note = f"{note}; {odd}".lstrip("; ")
        if wrong:
            first = next(iter(wrong.items()))
            note = f"{note}; {len(wrong)} users differ, e.g. {first[0]}: {first[1]}".lstrip("; ")
        note = f"{note} ({took:.0f} s, logs {flow.logs})".strip()
        recover = max(flow.recoveries) if flow.recoveries else None
        return Row(
            fault=fault,
            events_in=self.events_in,
            expected=counts.expected,
            applied=counts.applied,
            lost=counts.lost,
            twice=counts.twice,
            users_wrong=len(wrong),
            stray_anonymous=len(stray),
            triggers_expected=trig.expected,
            triggers_published=len(published),
            triggers_missing=trig.missing,
            triggers_repeated=trig.repeated,
            triggers_beyond_id=trig.beyond_id,
            triggers_extra=trig.extra,
            restarts=flow.restarts,
            recover_s=recover,
            fault_levels=tuple(flow.marks),
            note=note,
            completed=completed,
        )


def run_schedule(
    servers: Servers,
    schedule: Schedule,
    work: Path,
    on_row: Callable[[Row], None] | None = None,
) -> list[Row]:
    """The reference run, then every fault of ``schedule``, one :class:`Row` each."""
    chaos = Chaos.prepare(servers, schedule, work)
    rows = []
    for fault in ("none", *schedule.faults):
        row = chaos.run(fault)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


# --- the command ---------------------------------------------------------------------------


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``attune chaos`` on the CLI's subparsers (``sub``: what
    ``ArgumentParser.add_subparsers`` returned)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "chaos",
        help="kill the flow, freeze and stop Kafka and Redis; check nothing was lost or doubled",
        description="Run the flow on a generated workload under faults, on a broker and Redis "
        "of its own, and compare what it wrote with the ground truth (docs/reliability.md, "
        "'Chaos'). Exit 1 if any fault lost, doubled or missed something.",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = Schedule()
    parser.add_argument("--users", type=int, default=d.users, help=f"generated users ({d.users})")
    parser.add_argument("--days", type=int, default=d.days, help=f"generated days ({d.days})")
    parser.add_argument(
        "--seed", type=int, default=d.seed, help=f"workload and kill points ({d.seed})"
    )
    parser.add_argument(
        "--kills", type=int, default=d.kills, help=f"SIGKILLs of the flow ({d.kills})"
    )
    parser.add_argument(
        "--broker-pause", type=float, default=d.broker_pause_s,
        help=f"seconds the broker is frozen, and stopped ({d.broker_pause_s:.0f})",
    )  # fmt: skip
    parser.add_argument(
        "--redis-pause", type=float, default=d.redis_pause_s,
        help=f"seconds Redis is stopped, and frozen ({d.redis_pause_s:.0f})",
    )  # fmt: skip
    parser.add_argument(
        "--faults", default=",".join(FAULTS),
        help=f"comma-separated subset of: {', '.join(FAULTS)} (default: all)",
    )  # fmt: skip
    parser.add_argument(
        "--batch-size", type=int, default=d.batch_size,
        help=f"messages per poll of the flow's Kafka source ({d.batch_size})",
    )  # fmt: skip
    parser.add_argument("--json", help="also write the rows as JSON to this path")
    parser.add_argument("--work-dir", help="recovery stores and flow logs (default: a temp dir)")


def schedule_of(args: argparse.Namespace) -> Schedule:
    """The schedule the flags ask for; an unknown fault is a usage error.

    >>> ns = argparse.Namespace(users=10, days=1, seed=2, kills=3, broker_pause=1.0,
    ...     redis_pause=2.0, faults="sigkill,nope")
    >>> schedule_of(ns)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown fault 'nope' (known: sigkill, broker-freeze, ...)
    """
    faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
    for f in faults:
        if f not in FAULTS:
            raise ValueError(f"unknown fault {f!r} (known: {', '.join(FAULTS)})")
    return Schedule(
        users=args.users,
        days=args.days,
        seed=args.seed,
        kills=args.kills,
        broker_pause_s=args.broker_pause,
        redis_pause_s=args.redis_pause,
        faults=faults,
        batch_size=getattr(args, "batch_size", Schedule.batch_size),
    )


def run(args: argparse.Namespace) -> int:
    """``attune chaos``: print the table (and write JSON); exit 1 if any row fails."""
    schedule = schedule_of(args)
    # SIGTERM unwinds like Ctrl-C: the flow processes and our servers are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with contextlib.ExitStack() as stack:
        if args.work_dir:
            work = Path(args.work_dir)
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="attune-chaos-")))
        print("starting a Kafka broker and Redis of our own on free ports", file=sys.stderr)
        servers = stack.enter_context(own_servers())

        def show(row: Row) -> None:
            print(f"{row.fault}: {'ok' if row.ok else 'FAILED'} {row.note}", file=sys.stderr)

        rows = run_schedule(servers, schedule, work, on_row=show)
    print(format_table(rows))
    if args.json:
        doc = {"schedule": asdict(schedule), "rows": [r.as_dict() for r in rows]}
        Path(args.json).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return 0 if all(r.ok for r in rows) else 1
