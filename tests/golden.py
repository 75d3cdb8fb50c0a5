"""A digest of everything the flow writes for a fixed workload: the behaviour check of a
refactoring (issue 13: "Redis contents, every trigger id and every segment change equal
those of the commit before").

Every item the sinks receive (Redis operations with their values and TTLs, triggers,
segment changes, erasure confirmations, dead letters, model and persona snapshots) is
written as its ``repr``; the items are grouped by type and sorted, and each group is
hashed. Run it in a process of its own with a fixed ``PYTHONHASHSEED`` (the test does)::

    PYTHONHASHSEED=0 python -m tests.golden            # the digest, as JSON
    PYTHONHASHSEED=0 python -m tests.golden --dump d/  # and every group's items, one a line
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from bytewax.testing import cluster_main, run_main

from attune.flows.embedded import LocalStore
from attune.flows.personalize import build_flow
from attune.flows.settings import Settings
from attune.operators.events import DeadLetter, ErasureConfirmation, Event, SegmentChange, Trigger
from attune.operators.redis_sink import (
    AliasWrite,
    ForgetUser,
    JsonWrite,
    ProfileWrite,
    RecsWrite,
    RedisConfig,
    SegmentsWrite,
    TrendingWrite,
    plan,
)
from attune.operators.sources import EventListSource
from attune.workload.generator import GeneratorConfig, generate

NO_POLICIES = Path(__file__).resolve().parent / "data" / "rules_without_policies.yaml"
#: A fixed pseudonym key: without one the embedded default draws a random key per process.
PSEUDONYM_KEY = "golden-digest-pseudonym-key-0123456789abcdef"
#: Fields that hold when the flow wrote something (wall clock): the one thing that differs.
#: Wall-clock times in the recorded items (a format-3 recs value's 3rd field among them).
WALL_CLOCK = re.compile(
    r"(emit_time=|dead_time=|processed_time=|\"generated_at\":|b'3\|[^|']*\|)\d+"
)
WORKLOADS = {"a": (250, 5, 5), "b": (120, 3, 11)}


#: The Redis operations among the items; :class:`MiniRedis` applies what the sink would send.
REDIS_OPS = (
    ProfileWrite,
    SegmentsWrite,
    ForgetUser,
    AliasWrite,
    JsonWrite,
    RecsWrite,
    TrendingWrite,
)
#: The alias buckets' generation is the wall clock's; the comparison fixes it.
ALIAS_NOW_S = 1_800_000_000.0
#: A recommendation list's ``generated_at`` (format 3, 3rd field) and a JSON value's.
_RECS_WALL_CLOCK = re.compile(rb"^(3\|[^|]*\|)\d+")
_JSON_WALL_CLOCK = re.compile(rb'("generated_at":)\d+')


class MiniRedis:
    """What a Redis server holds after the commands :func:`~attune.operators.redis_sink.plan`
    emits (the only ones the flow's sink sends), with each key's TTL as set: the final
    contents of a run, to compare runs key by key without a server.

    >>> r = MiniRedis()
    >>> for c in [("HSET", "k", "a", "1", "b", "2"), ("HDEL", "k", "a"), ("EXPIRE", "k", 60),
    ...           ("SADD", "s", "x"), ("SET", "j", b"{}", "EX", 5), ("DEL", "s")]:
    ...     r.run(c)
    >>> r.lines()
    ["j string ttl=5 b'{}'", "k hash ttl=60 [('b', '2')]"]
    """

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.ttl: dict[str, str] = {}

    def run(self, command: tuple[Any, ...]) -> None:  # noqa: PLR0912 - one branch per command
        name, key, *args = command
        data = self.data
        if name == "DEL":
            for k in (key, *args):
                data.pop(k, None)
                self.ttl.pop(k, None)
        elif name == "HSET":
            h = data.setdefault(key, {})
            for i in range(0, len(args), 2):
                h[args[i]] = args[i + 1]
        elif name == "HDEL":
            h = data.get(key, {})
            for f in args:
                h.pop(f, None)
            self._drop_empty(key)
        elif name in ("EXPIRE", "EXPIREAT"):
            if key in data:
                self.ttl[key] = f"{'at ' if name == 'EXPIREAT' else ''}{args[0]}"
        elif name == "SADD":
            data.setdefault(key, set()).update(args)
        elif name == "SREM":
            data.get(key, set()).difference_update(args)
            self._drop_empty(key)
        elif name == "ZADD":
            z = data.setdefault(key, {})
            for i in range(0, len(args), 2):
                z[args[i + 1]] = float(args[i])
        elif name == "ZREMRANGEBYRANK":
            z = data.get(key, {})
            ranked = sorted(z, key=lambda m: (z[m], m))
            start, stop = int(args[0]), int(args[1])
            stop = len(ranked) + stop if stop < 0 else stop
            for m in ranked[start : stop + 1]:
                del z[m]
            self._drop_empty(key)
        elif name == "SET":
            data[key] = args[0]
            self.ttl.pop(key, None)
            if len(args) > 1 and args[1] == "EX":
                self.ttl[key] = str(args[2])
        else:
            raise ValueError(f"MiniRedis does not know {name}")

    def _drop_empty(self, key: str) -> None:
        if key in self.data and not self.data[key]:
            del self.data[key]
            self.ttl.pop(key, None)

    def lines(self) -> list[str]:
        """One line per key: key, type, TTL and value (hash fields, set and sorted set
        members sorted)."""
        out = []
        for key, value in self.data.items():
            if isinstance(value, set):
                kind, shown = "set", repr(sorted(value))
            elif key in self.zsets:
                kind, shown = "zset", repr(sorted(value.items()))
            elif isinstance(value, dict):
                kind, shown = "hash", repr(sorted(value.items()))
            else:
                kind, shown = "string", repr(value)
            out.append(f"{key} {kind} ttl={self.ttl.get(key, 'none')} {shown}")
        return sorted(out)

    @property
    def zsets(self) -> set[str]:
        return {
            k
            for k, v in self.data.items()
            if isinstance(v, dict) and v and all(type(x) is float for x in v.values())
        }


def _without_wall_clock(op: Any) -> Any:
    """``op`` with the wall-clock time it carries (a list's or a JSON value's
    ``generated_at``) set to 0: the one thing two runs of the same input differ in."""
    if isinstance(op, RecsWrite):
        return RecsWrite(op.user, _RECS_WALL_CLOCK.sub(rb"\g<1>0", op.value))
    if isinstance(op, JsonWrite):
        return JsonWrite(op.key, _JSON_WALL_CLOCK.sub(rb"\g<1>0", op.value), op.ttl_s)
    return op


class RecordingStore(LocalStore):
    """A :class:`LocalStore` that also keeps the ``repr`` of every item it is given, and
    applies the Redis operations to a :class:`MiniRedis` as the flow's Redis sink would
    (batch by batch, through :func:`~attune.operators.redis_sink.plan`)."""

    def __init__(self, redis: RedisConfig | None = None) -> None:
        super().__init__()
        self.seen: dict[str, list[str]] = defaultdict(list)
        self.redis_config = redis
        self.redis = MiniRedis()

    def apply(self, items: list[Any]) -> None:
        for item in items:
            self.seen[type(item).__name__].append(WALL_CLOCK.sub(r"\1*", repr(item)))
        config = self.redis_config
        ops = [_without_wall_clock(i) for i in items if isinstance(i, REDIS_OPS)]
        if config is not None and ops:
            for command in plan(
                ops,
                keys=config.keys(),
                ttl_s=config.ttl_s,
                audience_ttl_s=config.audience_ttl_s,
                now_s=ALIAS_NOW_S,
            ):
                self.redis.run(command)
        super().apply(items)


def _settings() -> Settings:
    return Settings.from_env().replace(
        kafka_bootstrap="",
        redis_url="",
        trigger_rules_file=str(NO_POLICIES),
        pseudonym_key=PSEUDONYM_KEY,
        models_publish_min_s=0,  # publications by count only: the digest must not
        # depend on how fast this machine runs the flow
    )


def run(
    users: int, days: int, seed: int, batch_size: int = 1000, workers: int = 1
) -> RecordingStore:
    """The flow over the generated workload, the source handing it ``batch_size`` events
    at a time, on ``workers`` worker threads of this process; returns the store with
    everything it wrote."""
    settings = _settings()
    g = generate(GeneratorConfig(users=users, days=days, seed=seed))
    events = tuple(g.events)

    def make() -> Iterator[Event]:
        return iter(events)

    store = RecordingStore(RedisConfig.from_settings(settings.replace(redis_url="redis://golden")))
    source = EventListSource(
        make, allowed_lateness_ms=settings.allowed_lateness_s * 1000, batch_size=batch_size
    )
    flow = build_flow(settings, source=source, sinks=store.sinks("m"), items=g.items)
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return store


def outputs(users: int, days: int, seed: int, batch_size: int = 1000) -> dict[str, list[str]]:
    """Every item the flow writes for the generated workload, by type, sorted; the source
    hands the flow ``batch_size`` events at a time."""
    store = run(users, days, seed, batch_size)
    return {kind: sorted(reprs) for kind, reprs in sorted(store.seen.items())}


def _redis_group(line: str) -> str:
    """The group of a :meth:`MiniRedis.lines` line: ``redis.users`` for a user's hash,
    else by the key's kind (``redis.alias``, ``redis.segment``, ``redis.trending``,
    ``redis.model``)."""
    key = line.split(" ", 1)[0]
    return "redis.users" if "{u:" in key else f"redis.{key.split(':')[1]}"


def _trigger_group(line: str) -> str:
    kind = re.search(r"kind='([^']*)'", line)
    return f"triggers.{kind.group(1) if kind else '?'}"


def outcome(store: RecordingStore) -> dict[str, list[str]]:
    """What issue 15 asks to be equal across batch sizes, workers, processes and hash
    seeds, in groups: the final Redis contents (:class:`MiniRedis`: every key with its
    TTL and value; ``redis.users``, ``redis.alias``, ``redis.segment`` (audiences),
    ``redis.trending``, ``redis.model``), every trigger with its id and contents (by
    kind: ``triggers.<kind>``), every segment change, dead letter and erasure
    confirmation; each group sorted, wall-clock times masked. Personas are in it twice:
    the clusters key and each user's ``persona_*`` segment. Not in it: how many writes
    there were (one profile write per batch of a user)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for line in store.redis.lines():
        groups[_redis_group(line)].append(line)
    for line in store.seen.get(Trigger.__name__, []):
        groups[_trigger_group(line)].append(line)
    for name, kind in (
        ("segment_changes", SegmentChange),
        ("dead_letters", DeadLetter),
        ("erasures", ErasureConfirmation),
    ):
        groups[name] = list(store.seen.get(kind.__name__, []))
    return {name: sorted(lines) for name, lines in sorted(groups.items())}


def differences(a: dict[str, list[str]], b: dict[str, list[str]]) -> dict[str, int]:
    """Per kind, how many lines are in one outcome and not the other (both ways)."""
    out = {}
    for kind in sorted(a.keys() | b.keys()):
        x, y = Counter(a.get(kind, [])), Counter(b.get(kind, []))
        n = sum(((x - y) + (y - x)).values())
        if n:
            out[kind] = n
    return out


def digest(groups: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    return {
        kind: {
            "count": len(items),
            "sha256": hashlib.sha256("\n".join(items).encode()).hexdigest(),
        }
        for kind, items in groups.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.golden")
    parser.add_argument("--dump", type=Path, help="write every group's items here")
    parser.add_argument(
        "--batch-size", type=int, default=1000, help="events per source batch (1000)"
    )
    parser.add_argument("--workers", type=int, default=1, help="worker threads (1)")
    parser.add_argument(
        "--outcome",
        action="store_true",
        help="digest what must not depend on batching (final Redis contents, triggers, "
        "segment changes, dead letters, erasures: outcome()) instead of every item written",
    )
    args = parser.parse_args(argv)
    result: dict[str, Any] = {}
    for name, (users, days, seed) in WORKLOADS.items():
        store = run(users, days, seed, args.batch_size, args.workers)
        if args.outcome:
            groups = outcome(store)
        else:
            groups = {kind: sorted(reprs) for kind, reprs in sorted(store.seen.items())}
        result[name] = digest(groups)
        if args.dump:
            args.dump.mkdir(parents=True, exist_ok=True)
            for kind, items in groups.items():
                (args.dump / f"{name}.{kind}.txt").write_text("\n".join(items) + "\n")
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
