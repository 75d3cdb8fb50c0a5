"""The doc blocks that need the real Kafka and Redis: run against the session's servers.

The convention (markers, runners, substitutions) is in tests/unit/test_docs.py, which also
checks that every block is run here or there, or marked ``<!-- not-run: REASON -->``.
Each test gets topics of its own (``ATTUNE_TOPIC_*`` set to a unique prefix, deleted after)
and a flushed Redis; workloads shrink to a few dozen users.
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from kafka import KafkaProducer

from attune.flows import topics
from attune.flows.local import LocalServers
from attune.flows.settings import Settings
from attune.operators.codec import Codec
from attune.operators.events import LineItem, Trigger
from tests.unit.test_docs import (
    ROOT,
    block,
    docs_env,
    exec_python,
    run_bash,
    short_id,
    substitute,
    substitute_any,
    topic_env,
)

pytestmark = pytest.mark.integration

LOCAL_KAFKA = "127.0.0.1:19092"
LOCAL_REDIS = "redis://127.0.0.1:16379/0"


@dataclass(frozen=True)
class DocsServers:
    """The session's servers as a doc block sees them: environment and substitutions."""

    env: dict[str, str]
    addresses: dict[str, str]  # documented local address -> the session's
    settings: Settings  # with this test's topic names
    tmp: Path


@pytest.fixture
def docs_servers(
    tmp_path: Path,
    local_servers: LocalServers,
    local_test_settings: Settings,
    redis_client: redis.Redis,
) -> Iterator[DocsServers]:
    prefix = f"test.docs.{uuid.uuid4().hex[:10]}."
    env = docs_env(
        tmp_path,
        {
            **topic_env(prefix),
            "ATTUNE_KAFKA_BOOTSTRAP": local_servers.kafka_bootstrap,
            "ATTUNE_REDIS_URL": local_servers.redis_url,
            "ATTUNE_KAFKA_PORT": str(local_test_settings.kafka_port),
            "ATTUNE_KAFKA_CONTROLLER_PORT": str(local_test_settings.kafka_controller_port),
            "ATTUNE_REDIS_PORT": str(local_test_settings.redis_port),
            "ATTUNE_STATE_DIR": str(local_test_settings.state_dir),
        },
    )
    settings = Settings.from_env(
        {k: v for k, v in env.items() if k.startswith("ATTUNE_") and k != "ATTUNE_STATE_DIR"}
    )
    addresses = {LOCAL_KAFKA: local_servers.kafka_bootstrap, LOCAL_REDIS: local_servers.redis_url}
    yield DocsServers(env, addresses, settings, tmp_path)
    existing = set(topics.list_topics(local_servers.kafka_bootstrap))
    mine = [t for t in existing if t.startswith(prefix)]
    if mine:
        topics.delete_topics(local_servers.kafka_bootstrap, mine)


def server_session(text: str, servers: DocsServers, workload: dict[str, str]) -> str:
    """A session block as the test session runs it: its servers are up already (``attune
    local up`` reports them, ``attune local down`` is left to the session), the documented
    addresses are the session's, the workload is small."""
    text = substitute(text, {"attune local up ": "attune local status ", **workload})
    text = text.replace("attune local down", "attune local status")
    return substitute_any(text, servers.addresses)


def run_readme_session(servers: DocsServers) -> None:
    b = block(
        "README.md: attune local up                      # Kafka on 127.0.0.1:19092, "
        "Redis on 127.0.0.1:16379"
    )
    text = server_session(
        b.text, servers, {"--users 1000 --days 7 --seed 7": "--users 30 --days 1 --seed 7"}
    )
    text = substitute(text, {"-p 16379": f"-p {servers.env['ATTUNE_REDIS_PORT']}"})
    out = run_bash(text, servers.tmp, servers.env)
    keys = [line for line in out.stdout.splitlines() if line.startswith("attune:")]
    assert len(keys) == 10, out.stdout  # `| head`: the flow wrote more than ten keys
    events = servers.env["ATTUNE_TOPIC_EVENTS"]
    assert f"{events:<32} created" in out.stdout  # `attune topics create`, on the session
    assert re.search(rf"^produced [\d,]+ events to {re.escape(events)} ", out.stdout, re.M)
    check_redis_as_documented(servers)


def check_redis_as_documented(servers: DocsServers) -> None:
    """docs/redis.md's forms of what the flow wrote (issue 16, finding 9): one hash per
    user, a profile of ``2`` and the 16 fields of its table, and ``model_version`` as
    documented."""
    from attune.clients.recommendations import parse_recs
    from attune.operators.features import PROFILE_FIELDS
    from attune.operators.redis_keys import PROFILE_FIELD, RECS_FIELD, joined

    doc = (ROOT / "docs" / "redis.md").read_text()
    assert "`m<snapshot>-c<catalogue>-e<embeddings>`" in doc and "`m0-c<catalogue>`" in doc
    client = redis.Redis.from_url(servers.env["ATTUNE_REDIS_URL"])
    try:
        # the users' hashes: keys that end with the user's tag
        hashes = [client.hgetall(k) for k in client.scan_iter(match="attune:{u:*}")]
        assert not list(client.scan_iter(match="attune:{u:*}:profile"))  # no three-key layout
    finally:
        client.close()
    fields = next(f for f in hashes if RECS_FIELD.encode() in f)
    profile, recs = joined(fields, PROFILE_FIELD), joined(fields, RECS_FIELD)
    assert profile is not None and recs is not None
    values = profile.split("|")  # trailing values not known are left out
    assert values[0] == "3" and 2 <= len(values) <= 1 + len(PROFILE_FIELDS) == 17, profile
    version = parse_recs(recs).model_version
    assert re.fullmatch(r"m[1-9]\d*-c\d+-e\d+|m0-c\d+", version), version


def run_examples_session(servers: DocsServers) -> None:
    b = block(
        "examples/README.md: attune local up                                   "
        "# Kafka 127.0.0.1:19092, Redis 127.0.0.1:16379"
    )
    text = server_session(b.text, servers, {"--users 200 --days 1": "--users 40 --days 1"})
    # Two terminals in the docs, one after the other here: the flow stops at the end of the
    # input, the app once it has read what there is.
    text = substitute(
        text,
        {
            f"--redis {servers.addresses[LOCAL_REDIS]}\n": (
                f"--redis {servers.addresses[LOCAL_REDIS]} --until-end\n"
            ),
            "--out messages.jsonl": "--out messages.jsonl --timeout 10",
        },
    )
    (servers.tmp / "examples").symlink_to(ROOT / "examples")  # run from a checkout's root
    run_bash(text, servers.tmp, servers.env)
    lines = [json.loads(x) for x in (servers.tmp / "messages.jsonl").read_text().splitlines()]
    assert lines, "the app received no trigger"
    assert {line["kind"] for line in lines} <= {"cart_abandoned", "long_dwell"}


def run_readme_recommendations(servers: DocsServers) -> None:
    b = block("README.md: from attune.clients import RecommendationClient")
    printed: list[tuple[Any, ...]] = []
    exec_python(substitute_any(b.text, servers.addresses), {"print": lambda *a: printed.append(a)})
    ((source, fallback, _scope, item_ids),) = printed
    assert isinstance(item_ids, list | tuple)
    assert source in {"personalized", "trending"}, source
    assert isinstance(fallback, bool)


def publish_cart_trigger(servers: DocsServers, user: str) -> Trigger:
    kind = "cart_abandoned"
    topic = servers.settings.topic_trigger(kind)
    topics.ensure_topics(servers.settings.kafka_bootstrap, [topic], 1)
    trigger = Trigger(
        trigger_id=f"docs-{uuid.uuid4().hex[:8]}",
        kind=kind,
        user_id=user,
        cause_event_time=1_767_600_000_000,
        emit_time=1_767_601_800_000,
        reason="cart left 30 min",
        cart_lines=(LineItem("sku-1", 1, 2500),),
        cart_value_minor=2500,
        currency="EUR",
        attributes={"template_id": "cart_reminder", "offer_code": "TEN"},
    )
    producer = KafkaProducer(bootstrap_servers=servers.settings.kafka_bootstrap)
    producer.send(topic, key=user.encode(), value=Codec().encode_output(trigger)).get(30)
    producer.close()
    return trigger


@pytest.fixture
def bounded_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """``TriggerSubscriber.process`` without a bound (the docs' app runs until stopped)
    stops after 20 s here, or at its first message."""
    from attune.clients.subscriber import TriggerSubscriber

    process = TriggerSubscriber.process

    def bounded(self: TriggerSubscriber, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout_s", 20.0)
        kwargs.setdefault("max_messages", 1)
        return process(self, *args, **kwargs)

    monkeypatch.setattr(TriggerSubscriber, "process", bounded)


def run_subscriber_using_it(servers: DocsServers) -> None:
    b = block("docs/subscriber.md: import redis")
    sent = publish_cart_trigger(servers, "u7")
    mails: list[tuple[str, Any, Any]] = []

    class Mailer:
        def send(self, user: str, template: Any, offer: Any, cart: Any) -> None:
            mails.append((user, template, offer))

    exec_python(substitute_any(b.text, servers.addresses), {"mailer": Mailer()})
    assert mails == [(sent.user_id, "cart_reminder", "TEN")]


class Running:
    """``while running:`` for a few rounds, or until ``stop()``."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.stopped = threading.Event()

    def __bool__(self) -> bool:
        self.rounds -= 1
        return self.rounds >= 0 and not self.stopped.is_set()


def run_subscriber_poll(servers: DocsServers) -> None:
    import logging

    from attune.clients import ActOnce, MemoryOnceStore, TriggerSubscriber

    b = block("docs/subscriber.md: from attune.clients import Undecodable")
    sent = publish_cart_trigger(servers, "u8")
    pushed: list[Trigger] = []
    running = Running(rounds=30)

    def push(trigger: Trigger) -> None:
        pushed.append(trigger)
        running.stopped.set()

    exec_python(
        b.text,
        {
            "TriggerSubscriber": TriggerSubscriber,
            "bootstrap": servers.settings.kafka_bootstrap,
            "running": running,
            "log": logging.getLogger("docs"),
            "once": ActOnce(MemoryOnceStore()),
            "push": push,
        },
    )
    assert [t.trigger_id for t in pushed] == [sent.trigger_id]


def run_quickstart(servers: DocsServers) -> None:
    """docs/quickstart.md, both blocks in order: the session (setup and install already
    done by the test command), then the recommendations of the first user messaged."""
    b = block("docs/quickstart.md: bash deploy/local/setup.sh && python -m pip install -e .")
    text = server_session(b.text, servers, {"--users 200 --days 1": "--users 40 --days 1"})
    text = substitute(
        text, {"bash deploy/local/setup.sh && python -m pip install -e .\n": "true\n"}
    )
    (servers.tmp / "examples").symlink_to(ROOT / "examples")  # run from a checkout's root
    out = run_bash(text, servers.tmp, servers.env)
    lines = [json.loads(x) for x in (servers.tmp / "messages.jsonl").read_text().splitlines()]
    assert lines, "the app received no cart_abandoned trigger"
    assert {line["kind"] for line in lines} == {"cart_abandoned"}
    assert '"kind": "cart_abandoned"' in out.stdout or '"kind":"cart_abandoned"' in out.stdout
    printed: list[tuple[Any, ...]] = []
    py = block("docs/quickstart.md: import json")
    cwd = Path.cwd()
    try:
        os.chdir(servers.tmp)  # the block opens messages.jsonl where the session wrote it
        exec_python(
            substitute_any(py.text, servers.addresses), {"print": lambda *a: printed.append(a)}
        )
    finally:
        os.chdir(cwd)
    ((kind, user, source, item_ids),) = printed
    assert kind == "cart_abandoned" and user == lines[0]["user"]
    assert source in {"personalized", "trending"} and isinstance(item_ids, list | tuple)


RUNNERS: dict[str, Callable[[DocsServers], None]] = {
    "docs/quickstart.md: bash deploy/local/setup.sh && python -m pip install -e .": (
        run_quickstart
    ),
    # the python block reads what the bash block's app wrote: one runner runs both
    "docs/quickstart.md: import json": run_quickstart,
    "README.md: attune local up                      # Kafka on 127.0.0.1:19092, "
    "Redis on 127.0.0.1:16379": run_readme_session,
    "README.md: from attune.clients import RecommendationClient": run_readme_recommendations,
    "examples/README.md: attune local up                                   "
    "# Kafka 127.0.0.1:19092, Redis 127.0.0.1:16379": run_examples_session,
    "docs/subscriber.md: import redis": run_subscriber_using_it,
    "docs/subscriber.md: from attune.clients import Undecodable": run_subscriber_poll,
}


@pytest.mark.parametrize("block_id", sorted(RUNNERS), ids=short_id)
def test_doc_block_runs(
    block_id: str, docs_servers: DocsServers, bounded_process: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in docs_servers.env.items():
        if name.startswith("ATTUNE_"):
            monkeypatch.setenv(name, value)  # python blocks read the settings in-process
    RUNNERS[block_id](docs_servers)
