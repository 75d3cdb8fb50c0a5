"""Attune's Kafka topics: their names, and creating and deleting them.

The dataflow reads ``attune.events`` and ``attune.items`` and writes one
``attune.triggers.<kind>`` topic per trigger kind, ``attune.segments``, the
dead-letter topic ``attune.dlq`` and the erasure confirmations
``attune.privacy.erasures`` (names from :class:`~attune.flows.settings.Settings`).
The local broker does not create topics on first use
(``auto.create.topics.enable=false``), so ``attune topics create`` and the
integration tests create them here first, with kafka-python's admin client.

>>> names = design_topics(Settings())
>>> names[:2], names[-3:]
(['attune.events', 'attune.items'], ['attune.segments', 'attune.dlq', 'attune.privacy.erasures'])
>>> names[2]
'attune.triggers.cart_abandoned'

The dead-letter topic keeps undecodable input as its raw bytes, which may hold
PII (docs/privacy.md), so it gets a bounded retention from the settings:

>>> topic_configs(Settings(dlq_retention_s=86400))
{'attune.dlq': {'retention.ms': '86400000'}}
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from contextlib import closing

from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError, for_code

from attune.flows.settings import Settings
from attune.operators.connect_check import check_kafka
from attune.operators.settings import client_options
from attune.operators.triggers import KINDS

__all__ = [
    "DEFAULT_TRIGGER_KINDS",
    "TOPIC_TIMEOUT_S",
    "client_options",  # defined with the settings (attune.operators.settings), used here
    "create_topics",
    "delete_topics",
    "design_topics",
    "ensure_topics",
    "list_topics",
    "topic_config",
    "topic_configs",
    "wait_for_topics",
]

log = logging.getLogger(__name__)

#: The trigger kinds that get a topic each (design.md, "Sinks").
DEFAULT_TRIGGER_KINDS: tuple[str, ...] = KINDS  # operators/triggers.py owns the kinds

#: How long creating or deleting topics may take, metadata propagation included.
TOPIC_TIMEOUT_S = 30.0

_UNKNOWN_TOPIC = 3  # UNKNOWN_TOPIC_OR_PARTITION: deleting what is already gone is fine.


def design_topics(
    settings: Settings, trigger_kinds: Sequence[str] = DEFAULT_TRIGGER_KINDS
) -> list[str]:
    """Every topic the dataflow reads or writes, inputs first."""
    return [
        settings.topic_events,
        settings.topic_items,
        *(settings.topic_trigger(kind) for kind in trigger_kinds),
        settings.topic_segments,
        settings.topic_dlq,
        settings.topic_erasures,
    ]


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """Topic-level configuration Attune sets, by topic: the dead-letter topic's retention."""
    if settings.dlq_retention_s <= 0:
        raise ValueError(
            f"ATTUNE_DLQ_RETENTION_S={settings.dlq_retention_s}: dead letters may hold raw PII "
            "and need a bounded, positive retention"
        )
    return {settings.topic_dlq: {"retention.ms": str(settings.dlq_retention_s * 1000)}}


def create_topics(
    bootstrap: str,
    settings: Settings,
    partitions: int | None = None,
    trigger_kinds: Sequence[str] = DEFAULT_TRIGGER_KINDS,
) -> list[str]:
    """Create the design topics that do not exist yet; return the names created.

    ``partitions`` defaults to ``settings.partitions``. Existing topics are left
    as they are (a warning is logged if one has fewer partitions than asked),
    except for the configuration of :func:`topic_configs` (the dead-letter
    retention), which is set on new and existing topics alike.
    Returns once every topic has a leader for each partition.
    """
    return ensure_topics(
        bootstrap,
        design_topics(settings, trigger_kinds),
        partitions=settings.partitions if partitions is None else partitions,
        settings=settings,
        configs=topic_configs(settings),
    )


def ensure_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int,
    *,
    settings: Settings | None = None,
    configs: Mapping[str, Mapping[str, str]] | None = None,
    timeout_s: float = TOPIC_TIMEOUT_S,
) -> list[str]:
    """Create the topics ``names`` that do not exist yet; return the names created.

    The replication factor is the broker's ``default.replication.factor``.
    ``configs`` gives topic configuration by topic name (e.g. ``retention.ms``):
    set at creation, and on a topic that already exists by an incremental
    alter (other settings of that topic are left as they are).

    ``settings`` supplies the Kafka security options (SASL, TLS), if any.
    """
    names = list(dict.fromkeys(names))
    wanted = {name: dict(c) for name, c in (configs or {}).items() if name in names}
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    with _admin(bootstrap, settings) as admin:
        response = admin.create_topics(
            {
                name: {
                    "num_partitions": partitions,
                    "replication_factor": -1,
                    **({"configs": wanted[name]} if name in wanted else {}),
                }
                for name in names
            },
            timeout_ms=int(timeout_s * 1000),
            raise_errors=False,
        )
        created, failed = [], []
        for topic in response["topics"]:
            error = for_code(topic["error_code"])
            if topic["error_code"] == 0:
                created.append(topic["name"])
            elif error is not TopicAlreadyExistsError:
                failed.append(
                    f"{topic['name']}: {error.__name__} {topic.get('error_message') or ''}"
                )
        if failed:
            raise KafkaError(f"could not create topics on {bootstrap}: " + "; ".join(failed))
        _wait(admin, bootstrap, names, timeout_s)
        existing = [name for name in wanted if name not in created]
        if existing:
            _alter(admin, bootstrap, {name: wanted[name] for name in existing})
        for topic in admin.describe_topics(names):
            if len(topic["partitions"]) < partitions:
                log.warning(
                    "topic %s exists with %d partitions, fewer than the %d asked; left as is",
                    topic["name"],
                    len(topic["partitions"]),
                    partitions,
                )
    log.info("created %d topics on %s: %s", len(created), bootstrap, ", ".join(created))
    return [name for name in names if name in created]


def _alter(admin: KafkaAdminClient, bootstrap: str, configs: dict[str, dict[str, str]]) -> None:
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, name, configs=dict(c))
        for name, c in configs.items()
    ]
    result = admin.alter_configs(resources)
    failed = [
        f"{name}: {outcome}"
        for by_name in result.values()
        for name, outcome in by_name.items()
        if outcome != "OK"
    ]
    if failed:
        raise KafkaError(f"could not configure topics on {bootstrap}: " + "; ".join(failed))
    for name, c in configs.items():
        log.info("topic %s configured: %s", name, c)


def topic_config(bootstrap: str, name: str, *, settings: Settings | None = None) -> dict[str, str]:
    """The configuration values a topic has set (non-default ones), e.g. ``retention.ms``."""
    with _admin(bootstrap, settings) as admin:
        result = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
    return {
        key: entry["value"]
        for by_name in result.values()
        for key, entry in by_name.get(name, {}).items()
    }


def delete_topics(
    bootstrap: str,
    names: Iterable[str],
    *,
    settings: Settings | None = None,
    timeout_s: float = TOPIC_TIMEOUT_S,
) -> list[str]:
    """Delete the topics ``names``; return those that existed. Missing ones are fine."""
    names = list(dict.fromkeys(names))
    if not names:
        return []
    with _admin(bootstrap, settings) as admin:
        response = admin.delete_topics(names, timeout_ms=int(timeout_s * 1000), raise_errors=False)
    deleted, failed = [], []
    for topic in response["topics"]:
        if topic["error_code"] == 0:
            deleted.append(topic["name"])
        elif topic["error_code"] != _UNKNOWN_TOPIC:
            failed.append(f"{topic['name']}: {for_code(topic['error_code']).__name__}")
    if failed:
        raise KafkaError(f"could not delete topics on {bootstrap}: " + "; ".join(failed))
    return [name for name in names if name in deleted]


def wait_for_topics(
    bootstrap: str,
    names: Iterable[str],
    *,
    settings: Settings | None = None,
    timeout_s: float = TOPIC_TIMEOUT_S,
) -> None:
    """Return once every topic in ``names`` has a leader for each partition.

    Raises :class:`kafka.errors.KafkaTimeoutError` naming the topics still not
    ready after ``timeout_s``.
    """
    with _admin(bootstrap, settings) as admin:
        _wait(admin, bootstrap, list(names), timeout_s)


def list_topics(bootstrap: str, *, settings: Settings | None = None) -> list[str]:
    """The names of the topics on the cluster, internal ones (``__...``) left out, sorted."""
    with _admin(bootstrap, settings) as admin:
        return sorted(name for name in admin.list_topics() if not name.startswith("__"))


def _wait(admin: KafkaAdminClient, bootstrap: str, names: list[str], timeout_s: float) -> None:
    try:
        admin.wait_for_topics(names, timeout_ms=int(timeout_s * 1000))
    except KafkaTimeoutError as exc:
        raise KafkaTimeoutError(
            f"topics on {bootstrap} not ready (a leader for every partition) "
            f"within {timeout_s:.0f}s: {exc}"
        ) from None


def _admin(bootstrap: str, settings: Settings | None) -> closing[KafkaAdminClient]:
    """An admin client for one ``with`` block."""
    if not bootstrap:
        raise ValueError(
            "no Kafka bootstrap servers: set ATTUNE_KAFKA_BOOTSTRAP "
            "(or start local servers with `attune local up`)"
        )
    if settings is not None and settings.kafka_security_protocol != "PLAINTEXT":
        # kafka-python would retry a refused password or certificate for 30 s and then
        # say only "Unable to bootstrap": name the cause in one line, at once.
        check_kafka(bootstrap, settings)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap, client_id="attune-topics", **client_options(settings)
        )
    except KafkaTimeoutError as exc:
        raise RuntimeError(
            f"Kafka at {bootstrap} is not reachable ({exc}): start local servers with "
            "`attune local up`, or point ATTUNE_KAFKA_BOOTSTRAP at a broker"
        ) from None
    return closing(admin)
