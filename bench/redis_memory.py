"""``python -m attune.bench.redis_memory``: Redis bytes per user, the current key layout
against the earlier ones, measured on a Redis server of the bench's own.

The design's budget (issue "performance", target 5) is <= 400 bytes of ``used_memory``
per user, recommendations included, and <= 300 bytes of ``MEMORY USAGE`` for one user's
own keys. One run:

1. Starts ``redis-server`` on a free loopback port (no persistence; never 16379, the
   local servers' port), in a temporary directory it removes at the end.
2. Generates a workload (:mod:`attune.workload.generator`) and runs the dataflow
   embedded on it (:func:`attune.flows.personalize.build_flow`, the in-process sinks),
   keeping every batch of Redis operations the Redis sink would have been given.
3. For each layout, writes those batches in order to the empty server: the current
   layout (one hash per user) through :class:`~attune.operators.redis_sink.RedisSink`
   (the real sink: ``plan`` and its RESP packing), the two before it through commands
   kept here as baselines: three keys per user (profile string, segments hash, recs
   format 3; :func:`three_key_commands`) and, before that, profile hash, segments set,
   recs format 2 (:func:`legacy_commands`).
4. Replicates the users the flow left with a profile to a population of ``--small``
   and ``--large`` synthetic users (ids of the same length, distinct), ``DUMP`` and
   ``RESTORE`` of each source user's keys (so Redis keeps the sink's encodings), the
   aliases of its anonymous ids (alias keys in the earlier layouts, fields of the alias
   buckets in the current one: ``--alias-buckets``), and an ``SADD`` to each audience it
   is in.
5. Prints, per layout: the ``used_memory`` slope per user between the two populations
   (shared keys cancel out: models, trending, the keyspace's fixed part) and the mean
   ``MEMORY USAGE`` of one user's own keys (``RedisKeys.user_keys``, ``--sample``
   users), each with its target and PASS/FAIL.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import redis
from bytewax.testing import run_main

from attune.flows.embedded import LocalStore
from attune.flows.personalize import build_flow
from attune.flows.settings import Settings
from attune.operators import recs_encoding
from attune.operators.events import Event
from attune.operators.features import PROFILE_FIELDS
from attune.operators.redis_keys import ALIAS_BUCKETS, RedisKeys, encode_profile_2
from attune.operators.redis_sink import (
    AliasWrite,
    Command,
    ForgetUser,
    ProfileWrite,
    RecsWrite,
    RedisConfig,
    RedisOp,
    RedisSink,
    SegmentsWrite,
)
from attune.operators.sources import EventListSource
from attune.workload.generator import GeneratorConfig, generate

#: Targets of issue "performance", target 5 (bytes per user).
SLOPE_TARGET_B = 400
USAGE_TARGET_B = 300
#: The per-user key operations (shared writes, models and trending, are left out: the
#: slope cancels them, and MEMORY USAGE samples per-user keys only).
USER_OPS = (ProfileWrite, SegmentsWrite, ForgetUser, AliasWrite, RecsWrite)
TTL_S = 30 * 24 * 3600
KEYS = RedisKeys()


# --- the flow's writes --------------------------------------------------------------------------


class _Recorder(LocalStore):
    """The embedded store, also keeping each batch of per-user Redis operations in order."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[RedisOp]] = []

    def apply(self, items: list[Any]) -> None:
        batch: list[RedisOp] = [item for item in items if isinstance(item, USER_OPS)]
        if batch:
            self.batches.append(batch)
        super().apply(items)


def flow_writes(users: int, days: int, seed: int) -> list[list[RedisOp]]:
    """The batches of per-user Redis operations the flow emits for a generated workload."""
    settings = Settings.from_env().replace(kafka_bootstrap="", redis_url="")
    g = generate(GeneratorConfig(users=users, days=days, seed=seed))
    events = tuple(g.events)

    def make() -> Iterator[Event]:
        return iter(events)

    store = _Recorder()
    source = EventListSource(make, allowed_lateness_ms=settings.allowed_lateness_s * 1000)
    flow = build_flow(settings, source=source, sinks=store.sinks("m"), items=g.items)
    run_main(flow)
    return store.batches


# --- the layouts -------------------------------------------------------------------------------


def legacy_commands(batch: Sequence[RedisOp], keys: RedisKeys = KEYS) -> list[Command]:
    """The previous layout's commands for ``batch``, one operation at a time: profile hash
    (``HSET`` of every field), segments set, recs as ``RecsWrite`` carries it (format 2).

    Not coalesced as the sink's ``plan`` was: the keys end the same, which is all memory
    depends on.
    """
    out: list[Command] = []
    for op in batch:
        if isinstance(op, ProfileWrite):
            key = keys.profile(op.user)
            fields = [arg for name in PROFILE_FIELDS for arg in (name, op.fields.get(name, ""))]
            out += [("HSET", key, *fields), ("EXPIRE", key, TTL_S)]
        elif isinstance(op, SegmentsWrite):
            key = keys.segments(op.user)
            for command, names in (("SADD", op.entered), ("SREM", op.exited)):
                if names:
                    out.append((command, key, *names))
                    out += [(command, keys.audience(name), op.user) for name in names]
            out.append(("EXPIRE", key, TTL_S))
        elif isinstance(op, ForgetUser):
            doomed = keys.user_keys(op.user)
            if op.keep_alias:
                doomed.remove(keys.alias(op.user))
            out.append(("DEL", *doomed))
            out += [("SREM", keys.audience(name), op.user) for name in op.audiences]
        elif isinstance(op, AliasWrite):
            out.append(("SET", keys.alias(op.anonymous_id), op.user, "EX", TTL_S))
        elif isinstance(op, RecsWrite):
            out.append(("SET", keys.recs(op.user), _format_2(op.value), "EX", TTL_S))
    return out


def _format_2(value: bytes) -> bytes:
    """The format-2 value of a format-3 one (the ranking step makes format 3 since
    5384556; the previous layout stored format 2); any other value as it is."""
    if not value.startswith(b"3|"):
        return value
    items, version, generated_at, source = recs_encoding.decode_compact(value.decode())
    return recs_encoding.encode(items, version, generated_at, source)  # codes kept as codes


def three_key_commands(batch: Sequence[RedisOp], keys: RedisKeys = KEYS) -> list[Command]:
    """The commands of the layout before the user's hash (sessions 6-7) for ``batch``, one
    operation at a time: ``SET`` of the profile string (format 2), ``HSET``/``HDEL`` of the
    segments hash, ``SET`` of the recs string (format 3), each key with its own TTL."""
    out: list[Command] = []
    for op in batch:
        if isinstance(op, ProfileWrite):
            value = encode_profile_2(op.fields)
            out += [("SET", keys.profile(op.user), value, "EX", TTL_S)]
            out += [("EXPIRE", keys.segments(op.user), TTL_S)]
        elif isinstance(op, SegmentsWrite):
            key = keys.segments(op.user)
            if op.entered:
                out.append(("HSET", key, *(a for name in op.entered for a in (name, "1"))))
                out += [("SADD", keys.audience(name), op.user) for name in op.entered]
            if op.exited:
                out.append(("HDEL", key, *op.exited))
                out += [("SREM", keys.audience(name), op.user) for name in op.exited]
            out.append(("EXPIRE", key, TTL_S))
        elif isinstance(op, RecsWrite):
            out.append(("SET", keys.recs(op.user), recs_encoding.compact(op.value), "EX", TTL_S))
        else:
            out += legacy_commands([op], keys)
    return out


def _writer(
    commands: Callable[[Sequence[RedisOp]], list[Command]],
) -> Callable[[redis.Redis, Sequence[Sequence[RedisOp]]], None]:
    def write(client: redis.Redis, batches: Sequence[Sequence[RedisOp]]) -> None:
        for batch in batches:
            pipe = client.pipeline(transaction=False)
            for command in commands(batch):
                pipe.execute_command(*command)
            pipe.execute()

    return write


write_legacy = _writer(legacy_commands)
write_three_keys = _writer(three_key_commands)


def write_current(
    client: redis.Redis, batches: Sequence[Sequence[RedisOp]], alias_buckets: int = ALIAS_BUCKETS
) -> None:
    """Apply ``batches`` through the Redis sink, as the flow does."""
    url = "redis://{host}:{port}/0".format(**client.connection_pool.connection_kwargs)
    config = RedisConfig(url, ttl_s=TTL_S, alias_buckets=alias_buckets)
    partition = RedisSink(config).build("bench", 0, 1)
    try:
        for batch in batches:
            partition.write_batch(list(batch))
    finally:
        partition.close()


LAYOUTS: dict[str, Callable[[redis.Redis, Sequence[Sequence[RedisOp]]], None]] = {
    "previous (hash, set, recs v2)": write_legacy,
    "three keys (string, hash, v3)": write_three_keys,
    "current (one hash per user)": write_current,
}
CURRENT = "current (one hash per user)"


# --- replication --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class UserKeys:
    """One source user's keys as ``DUMP`` bytes with their TTLs, and its audiences."""

    user: str
    dumps: tuple[tuple[str, bytes, int], ...]  # (kind, dump, pttl); kind: USER_KEY_KINDS
    # (anonymous id, dump, pttl) of alias keys; dump b"" for a field of the alias buckets
    aliases: tuple[tuple[str, bytes, int], ...]
    audiences: tuple[str, ...]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _tag_id(key: str) -> str:
    return key[key.index("{u:") + 3 : key.index("}")]


def _kind(key: str) -> str:
    """What follows a per-user key's tag (:data:`USER_KEY_KINDS`: ``""`` for the hash)."""
    return key[key.index("}") + 1 :]


def _key(user: str, kind: str) -> str:
    """The per-user key of ``kind`` (ids here need no escaping)."""
    return KEYS.user(user) + kind


#: How the tables name each kind of per-user key.
KIND_NAMES = {"": "user hash", ":profile": "profile", ":segments": "segments", ":recs": "recs"}


def snapshot(client: redis.Redis) -> list[UserKeys]:
    """Every user with a profile (a user hash or a profile key), with its keys, its anonymous
    ids' aliases (keys, or fields of the alias buckets) and the audiences it is in (ids in
    this workload need no tag escaping)."""
    by_user: dict[str, dict[str, tuple[bytes, int]]] = {}
    aliases: dict[str, list[tuple[str, bytes, int]]] = {}
    audiences: dict[str, list[str]] = {}
    for raw in client.scan_iter(match="*", count=1000):
        key = _text(raw)
        dump, pttl = client.dump(key), client.pttl(key)
        if not isinstance(dump, bytes):
            continue
        if key.startswith(KEYS.audience("")):
            for member in client.smembers(key):
                audiences.setdefault(_text(member), []).append(key)
        elif key.endswith(":alias"):
            target = client.get(key)
            assert isinstance(target, bytes)
            aliases.setdefault(target.decode(), []).append((_tag_id(key), dump, pttl))
        elif key.startswith(KEYS.prefix + "alias:"):  # a bucket: one alias per field
            for field, value in client.hgetall(key).items():
                aliases.setdefault(_text(value), []).append((_text(field), b"", 0))
        elif "{u:" in key:
            by_user.setdefault(_tag_id(key), {})[_kind(key)] = (dump, pttl)
    return [
        UserKeys(
            user,
            tuple((kind, dump, pttl) for kind, (dump, pttl) in sorted(kinds.items())),
            tuple(aliases.get(user, ())),
            tuple(audiences.get(user, ())),
        )
        for user, kinds in sorted(by_user.items())
        if "" in kinds or ":profile" in kinds
    ]


def synthetic_id(source: str, index: int) -> str:
    """A distinct id as long as ``source`` (hex digits; key names keep their lengths)."""
    digest = hashlib.sha256(f"{index}:{source}".encode()).hexdigest()
    while len(digest) < len(source):
        digest += hashlib.sha256(digest.encode()).hexdigest()
    return digest[: len(source)]


def populate(
    client: redis.Redis, sources: Sequence[UserKeys], count: int, keys: RedisKeys = KEYS
) -> None:
    """``count`` synthetic users, user ``i`` a copy of ``sources[i % len(sources)]`` with the
    id ``synthetic_id(source, i)``; an alias of the buckets goes to the bucket ``keys``
    give its synthetic anonymous id, as the sink would write it now."""
    pipe = client.pipeline(transaction=False)
    generation = keys.alias_generation(time.time())
    expires_at = keys.alias_expires_at(generation)
    for index in range(count):
        source = sources[index % len(sources)]
        user = synthetic_id(source.user, index)
        for kind, dump, pttl in source.dumps:
            pipe.restore(_key(user, kind), pttl, dump)
        for anonymous_id, dump, pttl in source.aliases:
            anon = synthetic_id(anonymous_id, index)
            if dump:
                pipe.restore(KEYS.alias(anon), pttl, dump)
            else:
                bucket = keys.alias_bucket(anon, generation)
                pipe.hset(bucket, anon, user)
                pipe.expireat(bucket, expires_at)
        for audience in source.audiences:
            pipe.sadd(audience, user)
        if len(pipe) >= 2000:
            pipe.execute()
    pipe.execute()


@dataclasses.dataclass(frozen=True, slots=True)
class Figures:
    """The memory figures of one layout."""

    layout: str
    users: int  # source users (with a profile)
    slope_b: float  # used_memory per user between the two populations
    usage_b: float  # mean MEMORY USAGE of one user's own keys
    keys_per_user: float
    value_b: dict[str, float]  # per kind: mean STRLEN of strings, MEMORY USAGE of others
    part_slope_b: dict[str, float]  # used_memory slope per user of each part alone
    encodings: dict[str, int]  # OBJECT ENCODING of the sampled keys -> count


def used_memory(client: redis.Redis) -> int:
    """``INFO memory``'s ``used_memory``: what the allocator holds for the data set."""
    info = client.info("memory")
    return int(info["used_memory"])


#: The parts of a user's cost the breakdown measures alone, besides each kind of per-user
#: key the layout has: the aliases of its anonymous ids, its memberships of the shared
#: audience sets.
SHARED_PARTS = ("aliases", "audience members")


def parts_of(sources: Sequence[UserKeys]) -> list[str]:
    """The parts of ``sources``' cost: the kinds of per-user key they have, by name
    (:data:`KIND_NAMES`), then :data:`SHARED_PARTS`."""
    kinds = {kind for s in sources for kind, _, _ in s.dumps}
    return [KIND_NAMES[k] for k in KIND_NAMES if k in kinds] + list(SHARED_PARTS)


def _part(source: UserKeys, part: str) -> UserKeys:
    """``source`` with only ``part`` of its keys (:func:`parts_of`)."""
    return UserKeys(
        source.user,
        tuple(d for d in source.dumps if KIND_NAMES.get(d[0]) == part),
        source.aliases if part == "aliases" else (),
        source.audiences if part == "audience members" else (),
    )


def slope(
    client: redis.Redis,
    sources: Sequence[UserKeys],
    populations: tuple[int, int],
    keys: RedisKeys = KEYS,
) -> float:
    """Bytes of ``used_memory`` per user between the two populations of ``sources``' copies."""
    memory: list[int] = []
    for count in populations:
        client.flushall()
        before = used_memory(client)
        populate(client, sources, count, keys)
        memory.append(used_memory(client) - before)
    return (memory[1] - memory[0]) / (populations[1] - populations[0])


def measure(
    client: redis.Redis,
    *,
    layout: str,
    write: Callable[[redis.Redis, Sequence[Sequence[RedisOp]]], None],
    batches: Sequence[Sequence[RedisOp]],
    populations: tuple[int, int],
    sample: int,
    keys: RedisKeys = KEYS,
) -> Figures:
    """Write ``batches`` in ``layout``, replicate to both populations and measure (alias
    buckets as ``keys`` give them)."""
    client.flushall()
    write(client, batches)
    sources = snapshot(client)
    if not sources:
        raise RuntimeError("the workload left no user with a profile; use more --users")
    parts = {
        part: slope(client, [_part(s, part) for s in sources], populations, keys)
        for part in parts_of(sources)
    }
    total = slope(client, sources, populations, keys)  # leaves the larger population in place
    users = [synthetic_id(sources[i % len(sources)].user, i) for i in range(populations[1])]
    step = max(1, len(users) // sample)
    sampled = users[::step][:sample]
    usage = 0
    keys_seen = 0
    sizes: dict[str, list[int]] = {}
    encodings: dict[str, int] = {}
    for user in sampled:
        for key in KEYS.user_keys(user):
            used = client.memory_usage(key, samples=0)
            if used is None:
                continue
            usage += used
            keys_seen += 1
            kind = KIND_NAMES.get(_kind(key), _kind(key))
            key_type = _text(client.type(key))
            size = client.strlen(key) if key_type == "string" else client.memory_usage(key) or 0
            sizes.setdefault(f"{kind} ({key_type})", []).append(int(size))
            encoding = f"{kind}: {_text(client.object('encoding', key))}"
            encodings[encoding] = encodings.get(encoding, 0) + 1
    return Figures(
        layout=layout,
        users=len(sources),
        slope_b=total,
        usage_b=usage / len(sampled),
        keys_per_user=keys_seen / len(sampled),
        value_b={kind: sum(v) / len(v) for kind, v in sorted(sizes.items())},
        part_slope_b=parts,
        encodings=encodings,
    )


# --- the server ---------------------------------------------------------------------------------


def free_port() -> int:
    """A free loopback TCP port (not 16379, where ``attune local up`` puts Redis)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in (16379, 19092):
            return port


class OwnRedis:
    """A ``redis-server`` of the bench's own: loopback, no persistence, stopped on exit."""

    def __init__(self, binary: str = "redis-server") -> None:
        self.binary = binary
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="attune-redis-memory-")
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> redis.Redis:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", self._dir.name]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return client
            except redis.ConnectionError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    err = self._process.stderr.read().decode() if self._process.stderr else ""
                    self.__exit__()
                    raise RuntimeError(
                        f"redis-server did not start on {self.port}: {err}"
                    ) from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None
        self._dir.cleanup()


# --- the report ---------------------------------------------------------------------------------


def verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "FAIL"


def report(figures: Sequence[Figures], populations: tuple[int, int]) -> str:
    """The table the bench prints."""
    small, large = populations
    lines = [
        f"Redis bytes per user (slope of used_memory between {small:,} and {large:,} users; "
        "MEMORY USAGE of one user's own keys)",
        f"{'layout':<32} {'slope B/user':>13} {'target':>7} {'':>5} "
        f"{'MEMORY USAGE B':>15} {'target':>7} {'':>5} {'keys/user':>9}",
    ]
    for f in figures:
        lines.append(
            f"{f.layout:<32} {f.slope_b:>13,.0f} {SLOPE_TARGET_B:>7} "
            f"{verdict(f.slope_b, SLOPE_TARGET_B):>5} {f.usage_b:>15,.0f} {USAGE_TARGET_B:>7} "
            f"{verdict(f.usage_b, USAGE_TARGET_B):>5} {f.keys_per_user:>9.2f}"
        )
    lines.append("used_memory slope per user of each part alone (B/user; the parts need not add")
    lines.append(
        "up to the whole: the keyspace tables grow by powers of two with all keys together)"
    )
    for f in figures:
        row = ", ".join(f"{part} {slope_b:,.0f}" for part, slope_b in f.part_slope_b.items())
        lines.append(f"  {f.layout}: {row}")
    for f in figures:
        sizes = ", ".join(f"{kind} {size:,.0f} B" for kind, size in f.value_b.items())
        encodings = ", ".join(f"{e} x{n}" for e, n in sorted(f.encodings.items()))
        lines.append(
            f"  {f.layout}: mean value sizes (strings: STRLEN; others: MEMORY USAGE): {sizes}; "
            f"encodings sampled: {encodings}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m attune.bench.redis_memory", description=__doc__
    )
    parser.add_argument("--users", type=int, default=250, help="generated users (250)")
    parser.add_argument("--days", type=int, default=5, help="generated days (5)")
    parser.add_argument("--seed", type=int, default=5, help="generator seed (5)")
    parser.add_argument("--small", type=int, default=2000, help="smaller population (2,000)")
    parser.add_argument("--large", type=int, default=20000, help="larger population (20,000)")
    parser.add_argument("--sample", type=int, default=200, help="users MEMORY USAGE samples")
    parser.add_argument("--redis-server", default="redis-server", help="the server binary")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--alias-buckets",
        type=int,
        default=ALIAS_BUCKETS,
        help=f"ATTUNE_REDIS_ALIAS_BUCKETS of the current layout ({ALIAS_BUCKETS})",
    )
    args = parser.parse_args(argv)
    if not 0 < args.small < args.large:
        parser.error("--small must be positive and below --large")
    populations = (args.small, args.large)
    batches = flow_writes(args.users, args.days, args.seed)
    with OwnRedis(args.redis_server) as client:
        version = client.info("server")["redis_version"]
        keys = RedisKeys(alias_buckets=args.alias_buckets, alias_period_s=TTL_S)
        layouts: dict[str, Callable[[redis.Redis, Sequence[Sequence[RedisOp]]], None]] = {
            **LAYOUTS,
            CURRENT: partial(write_current, alias_buckets=args.alias_buckets),
        }
        figures = [
            measure(
                client,
                layout=layout,
                write=write,
                batches=batches,
                populations=populations,
                sample=args.sample,
                keys=keys,
            )
            for layout, write in layouts.items()
        ]
    print(f"redis-server {version}; workload users={args.users} days={args.days} seed={args.seed}")
    print(report(figures, populations))
    if args.json:
        args.json.write_bytes(
            orjson.dumps(
                {
                    "redis_version": version,
                    "populations": populations,
                    "figures": [dataclasses.asdict(f) for f in figures],
                },
                option=orjson.OPT_INDENT_2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
