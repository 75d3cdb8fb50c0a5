"""The dataflow against the real Kafka broker and Redis: truth, recovery, scale, bad input.

One generated stream (planted duplicates, late and too-late events, anonymous
users who identify later) is produced once per module, with some garbage
messages among it; each test runs the flow over it (from the beginning to the
end of the topic) and compares what landed in Redis and on the output topics.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from bytewax.testing import run_main
from confluent_kafka import Producer

from attune.bench.chaos import read_profiles
from attune.clients.recommendations import RecommendationClient, parse_profile
from attune.flows import topics
from attune.flows.personalize import build_flow
from attune.flows.settings import Settings, env_name
from attune.operators.clustering import ClusterParams
from attune.operators.codec import Codec
from attune.operators.events import ErrorClass, SegmentChange, Trigger
from attune.operators.redis_keys import PROFILE_FIELD, RedisKeys, joined, segment_names
from attune.workload.generator import GeneratorConfig, generate
from attune.workload.truth import GroundTruth
from tests.integration.reading import consume_all, fresh_topics, produce_generated
from tests.truth import profile_mismatches

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GARBAGE = [b"", b"not avro at all", b"\xc3\x01" + b"\x00" * 4, b"\xc3\x01" + b"\x11" * 20]


@dataclass(frozen=True)
class Input:
    settings: Settings
    truth: GroundTruth
    events: int


@pytest.fixture(scope="module")
def stream(integration_settings: Settings) -> Iterator[Input]:
    """Generated events (+ garbage) on fresh topics with 3 partitions; outputs on fresh topics."""
    settings = integration_settings.replace(
        **fresh_topics("it"),
        kafka_tail=False,
    )
    names = topics.design_topics(settings)  # the flow publishes to all of them
    topics.ensure_topics(settings.kafka_bootstrap, names, 3)
    g = generate(GeneratorConfig(users=400, days=6, seed=21))
    report = produce_generated(settings, g)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for i, junk in enumerate(GARBAGE):
        producer.produce(settings.topic_events, junk, key=f"junk{i}".encode())
    assert producer.flush(30) == 0
    yield Input(settings, g.truth, report.events)
    topics.delete_topics(settings.kafka_bootstrap, names)


def redis_dump(client: redis.Redis) -> dict[str, Any]:
    """Every key with its type, value and whether it has a TTL."""
    out: dict[str, Any] = {}
    for key in client.scan_iter(count=1000):
        k = key.decode()
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "hash":
            value: Any = client.hgetall(key)
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        else:
            value = client.get(key)
        out[k] = (kind, value, client.ttl(key) > 0)
    return out


#: Profile fields scored with the shared propensity model (see deterministic()).
MODEL_FIELDS = ("propensity_score", "propensity_tier")


def deterministic(dump: dict[str, Any]) -> dict[str, Any]:
    """The dump without what the shared online models decide: persona assignments and
    every published model (their state depends on the order session vectors and summaries
    reach the one learner, which differs between runs and worker counts), the trending
    sets (written from that learner, at its publish times), the users' recommendations
    (ranked with whichever snapshot the user's step had read, and stamped with the wall
    clock in ``generated_at``) and the propensity fields of the profiles (scored with that
    snapshot). docs/architecture.md, "What replays reproduce". Everything else must be
    identical."""
    out: dict[str, Any] = {}
    for key, (kind, value, ttl) in dump.items():
        if ":model:" in key or ":segment:persona_" in key or ":trending:" in key:
            continue
        if ":clock:" in key:  # the stream clock's marks carry wall times
            continue
        if kind == "hash" and key.endswith("}"):  # a user's hash: profile, recs, segments
            profile = joined(value, PROFILE_FIELD)
            fields = parse_profile(profile).items() if profile else ()
            names = [n for n in segment_names(value) if not n.startswith("persona_")]
            kept = {k: v for k, v in fields if k not in MODEL_FIELDS}
            if kept or names:
                out[key] = (kind, kept, names, ttl)
            continue
        if kind == "set":
            members = [m for m in value if not m.startswith(b"persona_")]
            if members:
                out[key] = (kind, members, ttl)
            continue
        out[key] = (kind, value, ttl)
    return out


def assert_profiles_match(client: redis.Redis, settings: Settings, truth: GroundTruth) -> None:
    keys = RedisKeys(settings.redis_prefix)

    def profile_of(user: str) -> dict[str, str]:
        raw = joined(client.hgetall(keys.user(user)), PROFILE_FIELD)
        if raw is None:
            return {}
        return {name: value or "" for name, value in parse_profile(raw).items()}

    assert len(truth.exact_users()) > 300
    assert profile_mismatches(profile_of, truth) == {}


def test_kafka_to_redis_equals_the_ground_truth(stream: Input, redis_client: redis.Redis) -> None:
    settings = stream.settings
    run_main(build_flow(settings))

    assert_profiles_match(redis_client, settings, stream.truth)
    dump = redis_dump(redis_client)
    keys = RedisKeys(settings.redis_prefix)
    # every key Attune writes has a TTL (SCAN over the whole database)
    assert [k for k, (_, _, ttl) in dump.items() if not ttl] == []
    # all of one user's keys share one Redis Cluster hash slot
    from redis.crc import key_slot

    for user in stream.truth.exact_users()[:100]:
        slots = {key_slot(k.encode()) for k in keys.user_keys(user) if k in dump}
        assert len(slots) == 1, user
    # personas: published parameters name what sets each cluster apart
    params = ClusterParams.from_json(dump[keys.model("clusters")][1])
    assert params.ready and all(len(p.distinguishing) == 3 for p in params.personas)
    # anonymous ids merged into users left aliases, not profiles; the alias serves
    # personalization: none for users who denied or withdrew it or were erased
    anon = {a: u for a, u in stream.truth.anonymous_to_user.items() if a != u}
    assert anon
    bucketed = {
        field.decode(): user
        for key, (kind, value, _) in dump.items()
        if key.startswith(f"{keys.prefix}alias:") and kind == "hash"
        for field, user in value.items()
    }
    for a, u in list(anon.items())[:80]:
        assert keys.user(a) not in dump
        assert keys.alias(a) not in dump  # the layout before the alias buckets
        t = stream.truth.users[u]
        if t.final_consent["personalization"] and t.erasure_ms is None:
            assert bucketed[a] == u.encode()
            assert RecommendationClient(redis_client).resolve_alias(a) == u
        else:
            assert a not in bucketed

    codec = Codec()
    dead = [codec.decode_dead_letter(v) for v in consume_all(settings, settings.topic_dlq)]
    late = sorted(d.event_id or "" for d in dead if d.error_class is ErrorClass.LATE)
    assert late == sorted(stream.truth.too_late_event_ids)
    bad = [d for d in dead if d.error_class is not ErrorClass.LATE]
    assert sorted(d.original for d in bad) == sorted(GARBAGE)
    assert all(d.source_topic == settings.topic_events and d.reason for d in bad)
    assert {d.error_class for d in bad} == {
        ErrorClass.TRUNCATED,
        ErrorClass.BAD_MAGIC,
        ErrorClass.UNKNOWN_FINGERPRINT,
    }

    changes = [
        codec.decode_segment_change(v) for v in consume_all(settings, settings.topic_segments)
    ]
    assert changes and all(isinstance(c, SegmentChange) for c in changes)
    # what the topic says last about each (user, segment) is what Redis holds
    final: dict[tuple[str, str], str] = {}
    for c in sorted(
        (c for c in changes if isinstance(c, SegmentChange)), key=lambda c: c.emit_time
    ):
        final[(c.user_id, c.segment)] = c.change
    for (user, segment), change in list(final.items())[:200]:
        members = segment_names(redis_client.hgetall(keys.user(user)))
        assert (segment in members) == (change == "ENTERED"), (user, segment)


# --- processes: recovery and scale ----------------------------------------------------------


def flow_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTUNE_")}
    for name in (
        "kafka_bootstrap",
        "redis_url",
        "topic_events",
        "topic_items",
        "topic_segments",
        "topic_dlq",
        "topic_erasures",
        "topic_triggers_prefix",
        "pseudonym_key",  # the flow refuses Kafka without one (docs/privacy.md)
        "pseudonym_key_id",
    ):
        env[env_name(name)] = str(getattr(settings, name))
    env[env_name("kafka_tail")] = "false"
    env["PYTHONPATH"] = str(ROOT)
    return env


def bytewax_run(settings: Settings, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "attune.flows.personalize:flow", *args],
        env=flow_env(settings),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def finish(proc: subprocess.Popen[bytes], timeout_s: float = 300) -> None:
    out, _ = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]


#: The trigger kinds a replay, a recovery or another worker count reproduces exactly
#: (segment triggers of users with anonymous history may move: docs/architecture.md,
#: "Known limits").
REPRODUCED_KINDS = ("cart_abandoned", "long_dwell", "repeat_visit")


def published_triggers(settings: Settings) -> tuple[Counter[str], dict[str, Trigger]]:
    """How often each trigger id of :data:`REPRODUCED_KINDS` is on its topic (every run
    so far, every partition read to its end), and one trigger per id."""
    codec = Codec()
    seen = [
        codec.decode_trigger(value)
        for kind in REPRODUCED_KINDS
        for value in consume_all(settings, settings.topic_trigger(kind))
    ]
    triggers = [t for t in seen if isinstance(t, Trigger)]
    assert len(triggers) == len(seen), [t for t in seen if not isinstance(t, Trigger)][:3]
    return Counter(t.trigger_id for t in triggers), {t.trigger_id: t for t in triggers}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_one_worker_two_workers_and_two_processes_agree(
    stream: Input, redis_client: redis.Redis
) -> None:
    """The same Redis, and the same cart, dwell and visit triggers: in a cluster the
    stream clock is the slowest partition of every process (shared through Redis), so no
    process judges a cart by its own partitions while another's events for that user are
    still behind."""
    settings = stream.settings
    abandoned = {(c.user, c.last_activity_ms) for c in stream.truth.abandoned_carts}
    seen, which = published_triggers(settings)  # other tests' runs

    def run_and_read(*processes: tuple[str, ...]) -> dict[str, tuple[object, ...]]:
        """Run the flow (one process per argument tuple), return the triggers this run
        published (id -> kind, user, cause time, value, whether the truth has the cart)."""
        nonlocal seen, which
        procs = [bytewax_run(settings, *args) for args in processes]
        for proc in procs:
            finish(proc)
        now, which = published_triggers(settings)
        new, seen = now - seen, now
        return {
            i: (which[i].kind, which[i].user_id, which[i].cause_event_time,
                which[i].cart_value_minor,
                (which[i].user_id, which[i].cause_event_time) in abandoned)
            for i in new
        }  # fmt: skip

    one_triggers = run_and_read(())
    one = deterministic(redis_dump(redis_client))
    assert_profiles_match(redis_client, settings, stream.truth)
    assert {c[0] for c in one_triggers.values()} == set(REPRODUCED_KINDS)
    assert all(c[4] for c in one_triggers.values() if c[0] == "cart_abandoned"), one_triggers

    def differences(triggers: dict[str, tuple[object, ...]]) -> list[tuple[object, ...]]:
        return sorted(
            [("missing", *one_triggers[i]) for i in one_triggers.keys() - triggers.keys()]
            + [("extra", *triggers[i]) for i in triggers.keys() - one_triggers.keys()],
            key=str,
        )

    redis_client.flushdb()
    two_triggers = run_and_read(("-w", "2"))
    assert deterministic(redis_dump(redis_client)) == one
    assert differences(two_triggers) == []

    redis_client.flushdb()
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    cluster_triggers = run_and_read(*(("-i", str(i), "-a", addresses) for i in (0, 1)))
    assert deterministic(redis_dump(redis_client)) == one
    assert differences(cluster_triggers) == []


def events_counted(client: redis.Redis, settings: Settings) -> int:
    """The events the profiles in Redis have counted so far (the flow's progress)."""
    profiles = read_profiles(client, settings.redis_prefix)  # the users' hashes
    return sum(int(profile["events"] or 0) for profile in profiles.values())


#: Where the killed runs stop: these shares of the events an uninterrupted run counts.
KILL_AT = (0.25, 0.5, 0.75)
KILL_WAIT_S = 300.0


def kill_at(
    proc: subprocess.Popen[bytes], client: redis.Redis, settings: Settings, events: int
) -> bool:
    """SIGKILL ``proc`` once Redis counts ``events`` events; False if it finished first."""
    deadline = time.monotonic() + KILL_WAIT_S
    while proc.poll() is None:
        if events_counted(client, settings) >= events:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            return True
        assert time.monotonic() < deadline, f"fewer than {events} events in {KILL_WAIT_S} s"
        time.sleep(0.05)
    return False


def test_sigkill_mid_stream_and_recover(
    stream: Input, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Kill the flow with SIGKILL at three points of the stream (a quarter, half and three
    quarters of the events, as counted in Redis), restart from the recovery store: Redis
    ends byte-identical to an uninterrupted run and equal to the ground truth, and the
    cart, dwell and visit triggers published carry the uninterrupted run's ids, each at
    least once more
    (at-least-once; the subscriber's act-once helper drops the repeats)."""
    settings = stream.settings
    earlier, _ = published_triggers(settings)  # other tests' runs (workers, processes)
    finish(bytewax_run(settings))
    uninterrupted = deterministic(redis_dump(redis_client))
    total = events_counted(redis_client, settings)
    redis_client.flushdb()
    counted, _ = published_triggers(settings)
    once = counted - earlier  # what the uninterrupted run published

    db = tmp_path / "recovery"
    db.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(db), "1"], check=True, cwd=ROOT)
    args = ("-r", str(db), "-s", "1", "-b", "0")
    kills = 0
    for share in KILL_AT:
        proc = bytewax_run(settings, *args)
        if kill_at(proc, redis_client, settings, int(total * share)):
            kills += 1
        else:
            finish(proc)
    assert kills >= 1, "the flow finished before any kill: make the input larger"
    finish(bytewax_run(settings, *args))
    assert_profiles_match(redis_client, settings, stream.truth)
    assert deterministic(redis_dump(redis_client)) == uninterrupted
    final, which = published_triggers(settings)
    recovered = final - counted  # what the killed and recovered runs published
    truth = stream.truth
    abandoned = {(c.user, c.last_activity_ms) for c in truth.abandoned_carts}

    def show(ids: set[str]) -> list[tuple[object, ...]]:
        return [
            (which[i].kind, which[i].user_id, which[i].cause_event_time,
             which[i].cart_value_minor,
             (which[i].user_id, which[i].cause_event_time) in abandoned)
            for i in sorted(ids)
        ]  # fmt: skip

    assert once and set(once.values()) == {1}
    assert show(set(recovered) - set(once)) == []  # nothing the uninterrupted run lacks
    assert show(set(once) - set(recovered)) == []  # all of it again, at least once
