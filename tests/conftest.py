"""Session fixtures for integration tests: a real Kafka broker and Redis server.

The servers start lazily, the first time a test asks for ``local_servers`` or a
fixture built on it, through :mod:`attune.flows.local` (deploy/local/*.sh), on free
ports picked for the session (bound to port 0 and released just before the servers
start; a clash with another process in between is retried on new ports) and in a
state directory of the session's own (``<state dir>/pytest-sessions/<pid>-...``).
So two test sessions on one machine, and a developer's ``attune local up`` servers,
never meet: a session stops only the servers it started. A session killed before
its end leaves its servers running; the next session stops those (their owner
process is gone) before starting its own. The Kafka jars come from the default
cache. Missing tools fail the tests with the install command: CI must not skip
silently.

Tests that use these fixtures are marked ``@pytest.mark.integration``;
collection stops with a usage error when one is not.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from attune.flows import local, topics
from attune.flows.local import LocalServerError, LocalServers
from attune.flows.settings import Settings

#: Under the default state dir: one directory per test session (servers' logs, data, pids).
SESSIONS_DIR = "pytest-sessions"
#: Starts tried on new ports when another process took one of the picked ports first.
START_ATTEMPTS = 5
TEST_PSEUDONYM_KEY = "attune-integration-tests-pseudonym-key-not-a-secret"
TEST_PSEUDONYM_KEY_ID = "test"

SERVER_FIXTURES = frozenset(
    {
        "session_servers",
        "local_test_settings",
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


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free right now (bound to port 0 together, then
    released: the caller starts its servers on them at once and retries on a clash)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _server_settings(base: Settings, state_dir: Path, ports: list[int]) -> Settings:
    kafka, controller, redis_port = ports
    return base.replace(
        state_dir=str(state_dir),
        kafka_port=kafka,
        kafka_controller_port=controller,
        redis_port=redis_port,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_orphans(sessions: Path, base: Settings) -> None:
    """Stop the servers of sessions whose pytest process is gone (killed before its end)."""
    for state_dir in sorted(sessions.glob("*")):
        try:
            owner = int((state_dir / "owner").read_text())
            ports = [int(p) for p in (state_dir / "ports").read_text().split()]
        except (OSError, ValueError):
            continue  # being set up by a live session, or not a session's
        if _alive(owner):
            continue
        with contextlib.suppress(LocalServerError):
            local.down(_server_settings(base, state_dir, ports))
        shutil.rmtree(state_dir, ignore_errors=True)


@dataclass(frozen=True)
class SessionServers:
    """The session's servers and the settings (ports, state dir) they were started with."""

    settings: Settings
    servers: LocalServers


@pytest.fixture(scope="session")
def session_servers() -> Iterator[SessionServers]:
    """A real Kafka broker and Redis server for the session, on free ports in a state
    directory of its own, stopped (and the directory removed) at its end."""
    defaults = Settings.from_env()
    jar_cache = defaults.resolved_state_dir()
    base = defaults.replace(
        # The flow refuses Kafka without a pseudonym key (docs/privacy.md).
        pseudonym_key=defaults.pseudonym_key or TEST_PSEUDONYM_KEY,
        pseudonym_key_id=TEST_PSEUDONYM_KEY_ID,
    )
    sessions = jar_cache / SESSIONS_DIR
    sessions.mkdir(parents=True, exist_ok=True)
    _stop_orphans(sessions, base)
    state_dir = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=sessions))
    (state_dir / "owner").write_text(str(os.getpid()))
    settings = base
    failure = ""
    try:
        local.check(base, cache_dir=jar_cache)  # a missing tool: no point in other ports
        for _ in range(START_ATTEMPTS):
            settings = _server_settings(base, state_dir, free_ports(3))
            (state_dir / "ports").write_text(
                f"{settings.kafka_port} {settings.kafka_controller_port} {settings.redis_port}"
            )
            try:
                servers = local.up(settings, cache_dir=jar_cache)
            except LocalServerError as exc:
                failure = str(exc)
                with contextlib.suppress(LocalServerError):
                    local.down(settings)  # whichever of the two did start
                if "already in use" in failure:
                    continue  # another process took a port after we picked it
            else:
                failure = ""
            break
    except LocalServerError as exc:
        failure = str(exc)
    if failure:
        shutil.rmtree(state_dir, ignore_errors=True)
        pytest.fail(
            f"could not start the local servers for integration tests:\n{failure}", pytrace=False
        )
    yield SessionServers(settings, servers)
    try:
        local.down(settings)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def local_test_settings(session_servers: SessionServers) -> Settings:
    """Settings of the session's test servers: their ports and state dir (no
    ``kafka_bootstrap``/``redis_url``: see ``integration_settings``)."""
    return session_servers.settings


@pytest.fixture(scope="session")
def local_servers(session_servers: SessionServers) -> LocalServers:
    """Where the session's Kafka broker and Redis server listen."""
    return session_servers.servers


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
