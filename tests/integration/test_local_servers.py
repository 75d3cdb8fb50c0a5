"""The local servers of deploy/local: real Redis and Kafka answer, topics exist.

The tests marked ``integration`` start the servers through the session
fixtures of tests/conftest.py; the others check, without servers, that a
missing tool is reported with its install command and that the scripts and
:class:`~attune.flows.settings.Settings` agree on defaults.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient

from attune.flows import local
from attune.flows.settings import Settings
from attune.flows.topics import DEFAULT_TRIGGER_KINDS, create_topics, design_topics

WAIT_S = 30.0


@pytest.mark.integration
def test_redis_set_with_expiry_and_get(redis_client: redis.Redis) -> None:
    assert redis_client.set("attune:test:greeting", "hello", ex=60)

    assert redis_client.get("attune:test:greeting") == b"hello"
    assert 0 < redis_client.ttl("attune:test:greeting") <= 60


@pytest.mark.integration
def test_create_topics_makes_every_design_topic(
    kafka_bootstrap: str, integration_settings: Settings
) -> None:
    expected = design_topics(integration_settings)
    assert len(expected) == 5 + len(DEFAULT_TRIGGER_KINDS)  # events, items, segments, dlq, erasures

    first = create_topics(kafka_bootstrap, integration_settings)
    again = create_topics(kafka_bootstrap, integration_settings)

    assert again == []  # idempotent: all exist now
    assert set(first) <= set(expected)  # an earlier test run may have made some
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        assert set(expected) <= set(admin.list_topics())
        described = {t["name"]: t for t in admin.describe_topics(expected)}
    finally:
        admin.close()
    assert "attune.triggers.cart_abandoned" in described
    for name in first:
        assert len(described[name]["partitions"]) == integration_settings.partitions, name


@pytest.mark.integration
def test_kafka_round_trip_of_100_messages(
    kafka_bootstrap: str, fresh_topic: Callable[..., str]
) -> None:
    topic = fresh_topic(partitions=3)
    sent = {f"user-{i % 7}:{i}".encode(): f"event {i}".encode() for i in range(100)}

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
    try:
        for key, value in sent.items():
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=WAIT_S)
    finally:
        producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    received: dict[bytes, bytes] = {}
    deadline = time.monotonic() + WAIT_S
    try:
        while len(received) < len(sent) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                received.update((r.key, r.value) for r in records)
    finally:
        consumer.close()

    assert received == sent


@pytest.mark.integration
def test_status_reports_both_up(
    local_servers: local.LocalServers, local_test_settings: Settings
) -> None:
    report = local.status(local_test_settings)

    assert set(report) == {"kafka", "redis"}
    assert report["kafka"].startswith(f"up bootstrap={local_servers.kafka_bootstrap} ")
    assert report["redis"].startswith(f"up url={local_servers.redis_url} ")


def test_missing_tools_are_named_with_their_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    settings = Settings(state_dir=str(tmp_path / "state"))  # no jars cached here

    with pytest.raises(local.LocalServerError) as raised:
        local.up(settings)

    message = str(raised.value)
    assert "java not found on PATH; install it with apt-get install openjdk-17-jre-headless" in (
        message
    )
    assert "mvn not found on PATH" in message
    assert "apt-get install maven" in message
    assert "redis-server not found on PATH; install it with apt-get install redis-server" in (
        message
    )
    assert not (tmp_path / "state").exists()  # nothing started, nothing written


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("kafka.sh", "down bootstrap=127.0.0.1:{kafka_port} log={state}/kafka-{kafka_port}/"),
        ("redis.sh", "down url=redis://127.0.0.1:{redis_port}/0 log={state}/redis-{redis_port}/"),
    ],
    ids=["kafka", "redis"],
)
def test_scripts_default_to_the_settings_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str, expected: str
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTUNE_")}
    defaults = Settings.from_env({})

    result = subprocess.run(
        ["bash", str(local.DEPLOY_DIR / script), "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 3, result.stderr
    assert result.stdout.startswith(
        expected.format(
            kafka_port=defaults.kafka_port,
            redis_port=defaults.redis_port,
            state=defaults.resolved_state_dir(),
        )
    )
