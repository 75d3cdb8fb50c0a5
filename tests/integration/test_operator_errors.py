"""Operator errors against the real servers, and Redis going silent mid-run (issue 15,
items 2 and 6): `attune run` in a process of its own, as an operator runs it; each case
asserts the exit code and the one line stderr ends with, and that no Rust panic or
backtrace reached it.

Redis is frozen with SIGSTOP (it answers nothing, as in a network partition), the test
session's own redis-server: for a few seconds, below ``ATTUNE_REDIS_OUTAGE_LIMIT_S``, the
flow waits and loses nothing (Redis ends equal to a clean run's); past a small limit the
flow stops with one line naming Redis, and a restart from its recovery store rewrites
what was not written.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from attune.flows import topics
from attune.flows.settings import Settings, env_name
from attune.workload.generator import GeneratorConfig, generate
from attune.workload.truth import GroundTruth
from tests.integration.reading import fresh_topics, produce_generated
from tests.integration.test_personalize import (
    assert_profiles_match,
    deterministic,
    events_counted,
    flow_env,
    redis_dump,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: Bound on one flow run here (the workload takes seconds).
RUN_TIMEOUT_S = 600
#: The flow reads small batches so that it is still writing when Redis is frozen.
BATCH = "100"


@dataclass(frozen=True)
class Stream:
    settings: Settings
    truth: GroundTruth
    events: int


@pytest.fixture(scope="module")
def stream(integration_settings: Settings) -> Iterator[Stream]:
    """Generated events on fresh topics (every topic the flow uses created)."""
    settings = integration_settings.replace(**fresh_topics("operr"), kafka_tail=False)
    names = topics.design_topics(settings)
    topics.ensure_topics(settings.kafka_bootstrap, names, 2)
    g = generate(GeneratorConfig(users=400, days=6, seed=15))
    report = produce_generated(settings, g)
    yield Stream(settings, g.truth, report.events)
    topics.delete_topics(settings.kafka_bootstrap, names)


def attune_run(settings: Settings, *args: str, **env: str) -> subprocess.Popen[str]:
    """``attune run --until-end`` of this worktree in a process of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "attune.flows.cli", "run", "--until-end", *args],
        env={**flow_env(settings), env_name("kafka_batch_size"): BATCH, **env},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def ended(proc: subprocess.Popen[str]) -> tuple[int, list[str]]:
    """The exit code and stderr lines of a finished (or finishing) run."""
    _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    return proc.returncode, err.strip().splitlines()


def assert_one_clean_line(code: int, lines: list[str], pattern: str) -> None:
    """Failed with exit code 1; stderr ends with one line matching ``pattern``, and no Rust
    panic, backtrace or librdkafka log line is anywhere in it."""
    text = "\n".join(lines)
    assert code == 1, text[-3000:]
    assert re.fullmatch(pattern, lines[-1]), lines[-1]
    for noise in ("panicked at", "stack backtrace", "RUST_BACKTRACE", "rdkafka", "Traceback"):
        assert noise not in text, text[-3000:]


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- start-up ---------------------------------------------------------------------------------


def test_an_unreachable_redis_at_start_up(stream: Stream) -> None:
    url = f"redis://127.0.0.1:{dead_port()}/0"
    code, lines = ended(attune_run(stream.settings.replace(redis_url=url)))
    assert_one_clean_line(
        code,
        lines,
        rf"attune run: Redis at {re.escape(url)} is not reachable \(.*Connection refused.*\): "
        r"start local servers with `attune local up`, or point --redis / ATTUNE_REDIS_URL at "
        r"a Redis server \(rediss:// for TLS\)",
    )


def test_a_missing_topic(stream: Stream) -> None:
    missing = "operr.no-such-topic"
    settings = stream.settings.replace(topic_events=missing)
    code, lines = ended(attune_run(settings))
    assert_one_clean_line(
        code,
        lines,
        rf"attune run: Kafka topic '{re.escape(missing)}' does not exist at "
        rf"{re.escape(settings.kafka_bootstrap)}: create the design topics with `attune topics "
        r"create`, or set ATTUNE_TOPIC_EVENTS to the topic of your events",
    )


def test_a_missing_output_topic(stream: Stream) -> None:
    settings = stream.settings.replace(topic_dlq="operr.no-such-dlq")
    code, lines = ended(attune_run(settings))
    assert_one_clean_line(
        code,
        lines,
        rf"attune run: Kafka topics the flow writes do not exist at "
        rf"{re.escape(settings.kafka_bootstrap)}: operr.no-such-dlq; create them with `attune "
        r"topics create` \(or set the ATTUNE_TOPIC_\* settings to topics that exist\)",
    )


def test_a_wrong_schema_registry_url(stream: Stream) -> None:
    """The servers are there; the registry URL points where nothing listens."""
    url = f"http://127.0.0.1:{dead_port()}"
    code, lines = ended(attune_run(stream.settings, **{env_name("schema_registry_url"): url}))
    assert_one_clean_line(
        code,
        lines,
        rf"attune run: schema registry at {re.escape(url)} is not reachable \(.*refused.*\); "
        r"point ATTUNE_SCHEMA_REGISTRY_URL at the registry \(e\.g\. http://host:8081\), or "
        r"unset it to use Avro single-object encoding",
    )


# --- Redis frozen mid-run ---------------------------------------------------------------------


@pytest.fixture
def clean_run(stream: Stream, redis_client: redis.Redis) -> dict[str, object]:
    """What an uninterrupted run leaves in Redis (its deterministic part); Redis flushed
    after."""
    code, lines = ended(attune_run(stream.settings))
    assert code == 0, "\n".join(lines)[-3000:]
    assert_profiles_match(redis_client, stream.settings, stream.truth)
    dump = deterministic(redis_dump(redis_client))
    redis_client.flushdb()
    return dump


@contextlib.contextmanager
def frozen(client: redis.Redis) -> Iterator[None]:
    """The session's redis-server stopped (SIGSTOP: it accepts connections and answers
    nothing) for the block; always continued after."""
    pid = int(client.info("server")["process_id"])
    client.close()  # this client's connection would hang too
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def wait_for_progress(
    proc: subprocess.Popen[str], client: redis.Redis, settings: Settings, events: int
) -> None:
    """Until Redis counts ``events`` events (the flow is writing); fails if the flow
    ended first (then the workload is too small for the test)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while events_counted(client, settings) < events:
        assert proc.poll() is None, "the flow ended before Redis was frozen: make the input larger"
        assert time.monotonic() < deadline, f"fewer than {events} events in {RUN_TIMEOUT_S} s"
        time.sleep(0.05)
    assert proc.poll() is None, "the flow ended before Redis was frozen: make the input larger"


#: How long Redis stays frozen below the limit: several timeouts of a request
#: (``ATTUNE_REDIS_TIMEOUT_S=1``), so the flow retries, not merely waits.
FREEZE_S = 5.0


def test_redis_frozen_below_the_limit_loses_nothing(
    stream: Stream, redis_client: redis.Redis, clean_run: dict[str, object]
) -> None:
    settings = stream.settings
    proc = attune_run(
        settings,
        **{env_name("redis_timeout_s"): "1", env_name("redis_outage_limit_s"): "60"},
    )
    try:
        wait_for_progress(proc, redis_client, settings, stream.events // 4)
        with frozen(redis_client):
            time.sleep(FREEZE_S)  # the fault's duration, not a synchronisation
    finally:
        code, lines = ended(proc)
    text = "\n".join(lines)
    assert code == 0, text[-3000:]
    # the flow did meet the silence, and waited it out
    assert re.search(r"Redis at \S+ does not answer \(.*\); holding writes back", text), text
    assert re.search(r"Redis at \S+ answers again after \d+\.\d s", text), text
    assert_profiles_match(redis_client, settings, stream.truth)
    assert deterministic(redis_dump(redis_client)) == clean_run


def test_redis_frozen_past_the_limit_stops_with_one_line_and_recovery_rewrites(
    stream: Stream, redis_client: redis.Redis, clean_run: dict[str, object], tmp_path: Path
) -> None:
    settings = stream.settings
    db = str(tmp_path / "recovery")
    limit = {env_name("redis_timeout_s"): "1", env_name("redis_outage_limit_s"): "3"}
    proc = attune_run(settings, "--recovery-dir", db, "--snapshot-interval", "1", **limit)
    try:
        wait_for_progress(proc, redis_client, settings, stream.events // 4)
        with frozen(redis_client):
            code, lines = ended(proc)  # it stops by itself while Redis is silent
    finally:
        if proc.poll() is None:
            proc.kill()
    url = re.escape(settings.redis_url)
    assert_one_clean_line(
        code,
        lines,
        rf"attune run: Redis at {url} did not answer for \d+ s \(.+\), longer than "
        r"ATTUNE_REDIS_OUTAGE_LIMIT_S=3: check that Redis is running and reachable \(`attune "
        r"local status` for local servers\), then start the flow again with the same recovery "
        r"store \(--recovery-dir\) to rewrite what was not written",
    )
    # what the stopped run wrote is short of the clean run; the restart completes it
    assert deterministic(redis_dump(redis_client)) != clean_run
    code, lines = ended(attune_run(settings, "--recovery-dir", db, "--snapshot-interval", "1"))
    assert code == 0, "\n".join(lines)[-3000:]
    assert_profiles_match(redis_client, settings, stream.truth)
    assert deterministic(redis_dump(redis_client)) == clean_run
