"""Hostile input from outside the project (issue 15, item 3), on the real broker and Redis.

A foreign producer, Kafka's own console producer (``org.apache.kafka.tools.ConsoleProducer``
of Kafka 4.1.0, with ``Base64LineReader`` so that it can send bytes: see that file),
writes the corpus of tests/data/hostile/make_corpus.py to the events topic: the
generator's events, and among them random bytes, truncated records, wrong magic, records
of other schemas, an oversized message, null and empty values and users, negative
prices, unknown enum symbols, events dated at epoch 0, after 2100 and ahead of their
receipt by minutes, days and years, a flood of one event id and a flood from one user.
The flow runs over the topic (to its end) and the test checks, for every message, what
became of it: every bad one is on the dead-letter topic, once, with its error class, its
reason and its origin; the generator's users equal the ground truth; the valid hostile
events are applied to their own users and nothing else moved.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis
from bytewax.testing import run_main

from attune.bench.chaos import read_profiles
from attune.flows import topics
from attune.flows.personalize import build_flow
from attune.flows.settings import Settings
from attune.operators.codec import Codec
from attune.operators.events import DeadLetter, ErrorClass, Event
from attune.operators.sources import KEPT_OF_OVERSIZED, MAX_MESSAGE_BYTES
from attune.workload.truth import GroundTruth
from tests.integration.reading import consume_all, consume_messages, fresh_topics
from tests.truth import profile_mismatches

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
CORPUS_DIR = HERE.parent / "data" / "hostile"
KAFKA_VERSION = "4.1.0"


def load_corpus_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS_DIR / "make_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def console_producer_classpath(work: Path) -> str:
    """The broker's jars (the project's cache), kafka-tools (the console producer: not
    among them, fetched once next to them with mvn) and the compiled Base64LineReader."""
    # the session's servers run from the default cache too (tests/conftest.py)
    cache = Settings.from_env().resolved_state_dir() / f"kafka-{KAFKA_VERSION}"
    tools = cache / "tools"
    jar = tools / f"kafka-tools-{KAFKA_VERSION}.jar"
    if not jar.exists():
        mvn = shutil.which("mvn")
        assert mvn, "mvn not found: install it with apt-get install maven (fetches kafka-tools)"
        tmp = tools.with_name(f"tools.{uuid.uuid4().hex[:6]}")
        done = subprocess.run(
            [mvn, "-q", "-B", "dependency:copy",
             f"-Dartifact=org.apache.kafka:kafka-tools:{KAFKA_VERSION}",
             f"-DoutputDirectory={tmp}"],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        tmp.rename(tools) if not tools.exists() else shutil.rmtree(tmp)
    classes = work / "classes"
    javac = shutil.which("javac")
    assert javac, "javac not found: install a JDK 17 (apt-get install openjdk-17-jdk-headless)"
    libs = f"{cache / 'libs'}/*"
    subprocess.run(
        [javac, "-d", str(classes), "-cp", libs, str(CORPUS_DIR / "Base64LineReader.java")],
        check=True, timeout=120,
    )  # fmt: skip
    return f"{libs}:{tools}/*:{classes}"


def console_produce(classpath: str, bootstrap: str, topic: str, lines: Path) -> str:
    """Send ``lines`` with Kafka's console producer; its output (it exits 0 even when a
    send failed, so the caller counts what landed)."""
    with lines.open("rb") as stdin:
        done = subprocess.run(
            ["java", "-cp", classpath, "org.apache.kafka.tools.ConsoleProducer",
             "--bootstrap-server", bootstrap, "--topic", topic,
             "--line-reader", "Base64LineReader",
             "--producer-property", "acks=all",
             "--producer-property", "linger.ms=20",
             "--producer-property", "max.request.size=1048576"],
            stdin=stdin, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


@dataclass(frozen=True)
class Message:
    partition: int
    offset: int
    value: bytes | None


def read_topic(settings: Settings, topic: str) -> list[Message]:
    """Every message of ``topic`` with its partition and offset (each partition to its end)."""
    return [
        Message(m.partition() or 0, m.offset() or 0, m.value())
        for m in consume_messages(settings, topic)
    ]


@dataclass(frozen=True)
class Sent:
    settings: Settings
    truth: GroundTruth
    hostile: list[dict[str, Any]]
    lines: int
    topic: list[Message]


@pytest.fixture(scope="module")
def sent(
    integration_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sent]:
    work = tmp_path_factory.mktemp("hostile")
    corpus = load_corpus_module().write(work / "corpus")
    settings = integration_settings.replace(**fresh_topics("hostile"), kafka_tail=False)
    names = topics.design_topics(settings)
    # The corpus's records carry their receipt times (January 2026): no time-based
    # retention, which would delete them as soon as the broker next looked.
    forever = {"retention.ms": "-1"}
    topics.ensure_topics(
        settings.kafka_bootstrap,
        names,
        3,
        configs={settings.topic_events: forever, settings.topic_items: forever},
    )
    classpath = console_producer_classpath(work)
    for topic, file in ((settings.topic_items, "items.b64"), (settings.topic_events, "events.b64")):
        console_produce(classpath, settings.kafka_bootstrap, topic, work / "corpus" / file)
    manifest = json.loads((work / "corpus" / "manifest.json").read_text())
    on_topic = read_topic(settings, settings.topic_events)
    # the console producer exits 0 even if a send failed: count what landed
    assert len(on_topic) == manifest["messages"] == len(corpus.events)
    assert len(read_topic(settings, settings.topic_items)) == len(corpus.items)
    yield Sent(settings, corpus.generated.truth, manifest["hostile"], len(corpus.events), on_topic)
    topics.delete_topics(settings.kafka_bootstrap, names)


def identity(value: bytes | None, codec: Codec) -> str:
    """What names a message of the corpus: its event id if it decodes, else its bytes."""
    if len(value or b"") > MAX_MESSAGE_BYTES:
        return "raw:" + base64.b64encode((value or b"")[:KEPT_OF_OVERSIZED]).decode()
    decoded = codec.decode_event(value or b"")
    if isinstance(decoded, Event):
        return f"event:{decoded.event_id}"
    if decoded.event_id:
        return f"event:{decoded.event_id}"
    return "raw:" + base64.b64encode((value or b"")[:KEPT_OF_OVERSIZED]).decode()


def expected_identity(h: dict[str, Any]) -> str:
    if h["event_id"] is not None:
        return f"event:{h['event_id']}"
    kept = base64.b64decode(h["value_b64"])[:KEPT_OF_OVERSIZED]
    return "raw:" + base64.b64encode(kept).decode()


def test_hostile_corpus_is_dead_lettered_and_the_rest_equals_the_truth(
    sent: Sent, redis_client: redis.Redis
) -> None:
    settings = sent.settings
    run_main(build_flow(settings))  # returns: the flow stayed up to the end of the topic

    codec = Codec()
    dead = [codec.decode_dead_letter(v) for v in consume_all(settings, settings.topic_dlq)]
    assert all(isinstance(d, DeadLetter) for d in dead)
    late = [d for d in dead if d.error_class is ErrorClass.LATE]
    bad = [d for d in dead if d.error_class is not ErrorClass.LATE]

    # the generator's too-late events, and only those, are late: no clock ahead moved a
    # partition's watermark (the events after it would have been late too)
    assert sorted(d.event_id or "" for d in late) == sorted(sent.truth.too_late_event_ids)

    # every bad message is dead-lettered once, with its origin: the message at that
    # topic, partition and offset is the one the corpus sent
    at = {(m.partition, m.offset): m for m in sent.topic}
    origins = Counter((d.source_topic, d.source_partition, d.source_offset) for d in dead)
    assert [o for o, n in origins.items() if n > 1] == []
    assert all(d.source_topic == settings.topic_events for d in dead)
    found: dict[str, list[DeadLetter]] = {}
    for d in bad:
        origin = at[(d.source_partition or 0, d.source_offset or 0)]
        found.setdefault(identity(origin.value, codec), []).append(d)
    expected = [h for h in sent.hostile if h["expect"] == "dead"]
    want = Counter(expected_identity(h) for h in expected)
    assert Counter({k: len(v) for k, v in found.items()}) == want
    wrong = []
    for h in expected:
        for d in found[expected_identity(h)]:
            if d.error_class.value != h["error_class"] or (
                h["reason"] and h["reason"] not in d.reason
            ):
                wrong.append((h["kind"], h["error_class"], h["reason"], d.error_class, d.reason))
            if h["event_id"] is None:  # undecodable: the original bytes (oversized: a prefix)
                original = base64.b64decode(h["value_b64"])
                assert d.original == original[:KEPT_OF_OVERSIZED], h["kind"]
    assert wrong == []

    # applied: the generator's users exactly as the ground truth, nothing missing
    stored = read_profiles(redis_client, settings.redis_prefix)  # the users' hashes

    def profile_of(user: str) -> dict[str, str]:
        profile = stored.get(user)
        return {} if profile is None else {k: v or "" for k, v in profile.items()}

    assert profile_mismatches(profile_of, sent.truth) == {}
    # the valid hostile events are applied to their own users, each once; the duplicate
    # flood's user is among the exact users above (counted once)
    applied = Counter(h["user"] for h in sent.hostile if h["expect"] == "applied")
    assert {u: int(profile_of(u).get("events", 0)) for u in applied} == dict(applied)
    flood = {h["user"] for h in sent.hostile if h["expect"] == "deduped"}
    assert flood and flood <= set(sent.truth.exact_users())
    for user in {h["user"] for h in expected if h["user"]}:
        assert profile_of(user) == {}, user  # nothing of a dead-lettered event was applied

    exact = sent.truth.exact_users()
    applied_truth = sum(int(profile_of(u)["events"]) for u in exact)
    applied_all = sum(int(profile["events"] or 0) for profile in stored.values())
    deduped = sum(1 for h in sent.hostile if h["expect"] == "deduped")
    print(
        f"\nhostile corpus: sent {sent.lines} messages ({len(sent.hostile)} hostile: "
        f"{len(expected)} bad, {sum(applied.values())} valid, {deduped} duplicates); "
        f"dead-lettered {len(dead)} ({len(bad)} bad + {len(late)} late, the truth's "
        f"{len(sent.truth.too_late_event_ids)}); applied {applied_all} events "
        f"({applied_truth} to the truth's {len(exact)} exact users = their truth "
        f"{sum(sent.truth.users[u].events for u in exact)}, "
        f"{sum(applied.values())} hostile)"
    )
    assert len(bad) == len(expected)
    assert applied_truth == sum(sent.truth.users[u].events for u in exact)
