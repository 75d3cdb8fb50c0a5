"""Session fixtures for integration tests: a real Kafka broker and Redis server.

The servers start lazily, the first time a test asks for ``local_servers`` or a
fixture built on it, through :mod:`attune.flows.local` (deploy/local/*.sh), on ports
of their own (Kafka 29092/29093, Redis 26379) and in a state directory of
their own (``<state dir>/pytest``), so that a developer's ``attune local up``
servers are left alone. The Kafka jars come from the default cache. Missing
tools fail the tests with the install command: CI must not skip silently.

Tests that use these fixtures are marked ``@pytest.mark.integration``;
collection stops with a usage error when one is not.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from attune.flows import local, topics
from attune.flows.local import LocalServerError, LocalServers
from attune.flows.settings import Settings

TEST_KAFKA_PORT = 29092
TEST_KAFKA_CONTROLLER_PORT = 29093
TEST_REDIS_PORT = 26379
TEST_PSEUDONYM_KEY = "attune-integration-tests-pseudonym-key-not-a-secret"
TEST_PSEUDONYM_KEY_ID = "test"

SERVER_FIXTURES = frozenset(
    {
        "local_servers",
        "integration_settings",
        "kafka_bootstrap",
        "redis_url",
        "redis_client",
        "fresh_topic",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [
        item.nodeid
        for item in items
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("integration") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests use the real servers but are not marked @pytest.mark.integration: "
            + ", ".join(unmarked)
        )


@pytest.fixture(scope="session")
def local_test_settings() -> Settings:
    """Settings of the test servers: own ports and state dir, nothing started."""
    base = Settings.from_env()
    return base.replace(
        state_dir=str(base.resolved_state_dir() / "pytest"),
        kafka_port=TEST_KAFKA_PORT,
        kafka_controller_port=TEST_KAFKA_CONTROLLER_PORT,
        redis_port=TEST_REDIS_PORT,
        # The flow refuses Kafka without a pseudonym key (docs/privacy.md).
        pseudonym_key=base.pseudonym_key or TEST_PSEUDONYM_KEY,
        pseudonym_key_id=TEST_PSEUDONYM_KEY_ID,
    )


@pytest.fixture(scope="session")
def local_servers(local_test_settings: Settings) -> Iterator[LocalServers]:
    """A real Kafka broker and Redis server for the session, stopped at its end."""
    settings = local_test_settings
    jar_cache = Settings.from_env().resolved_state_dir()
    try:
        # Servers left by an interrupted session: stop them, start clean.
        local.down(settings)
        servers = local.up(settings, cache_dir=jar_cache)
    except LocalServerError as exc:
        failure = str(exc)
    else:
        failure = ""
    if failure:
        with contextlib.suppress(LocalServerError):
            local.down(settings)  # whichever of the two did start
        pytest.fail(
            f"could not start the local servers for integration tests:\n{failure}", pytrace=False
        )
    yield servers
    local.down(settings)


@pytest.fixture(scope="session")
def integration_settings(local_servers: LocalServers, local_test_settings: Settings) -> Settings:
    """Settings pointed at the session's servers (kafka_bootstrap and redis_url set)."""
    return local_servers.apply(local_test_settings)


@pytest.fixture(scope="session")
def kafka_bootstrap(local_servers: LocalServers) -> str:
    """``127.0.0.1:<port>`` of the session's Kafka broker."""
    return local_servers.kafka_bootstrap


@pytest.fixture(scope="session")
def redis_url(local_servers: LocalServers) -> str:
    """``redis://127.0.0.1:<port>/0`` of the session's Redis server."""
    return local_servers.redis_url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the session's Redis, its database flushed before the test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def fresh_topic(
    kafka_bootstrap: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., str]]:
    """A factory of new, empty topics, deleted after the test.

    ``fresh_topic(partitions=3)`` returns a topic name unique to this call
    (``test.<test name>.<random>``) once it has a leader for every partition.
    """
    created: list[str] = []
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", request.node.name)[:120]

    def make(partitions: int = 3) -> str:
        name = f"test.{stem}.{uuid.uuid4().hex[:12]}"
        topics.ensure_topics(kafka_bootstrap, [name], partitions)
        created.append(name)
        return name

    yield make
    if created:
        topics.delete_topics(kafka_bootstrap, created)
