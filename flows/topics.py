"""Attune's Kafka topics: their names, and creating and deleting them.

The dataflow reads ``attune.events`` and ``attune.items`` and writes one
``attune.triggers.<kind>`` topic per trigger kind, ``attune.segments``, the
dead-letter topic ``attune.dlq`` and the erasure confirmations
``attune.privacy.erasures`` (names from :class:`~flows.settings.Settings`).
The local broker does not create topics on first use
(``auto.create.topics.enable=false``), so ``attune topics create`` and the
integration tests create them here first, with kafka-python's admin client.

>>> names = design_topics(Settings())
>>> names[:2], names[-3:]
(['attune.events', 'attune.items'], ['attune.segments', 'attune.dlq', 'attune.privacy.erasures'])
>>> names[2]
'attune.triggers.cart_abandoned'
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from contextlib import closing
from typing import Any

from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError, for_code

from flows.settings import Settings
from operators.triggers import KINDS

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


def create_topics(
    bootstrap: str,
    settings: Settings,
    partitions: int | None = None,
    trigger_kinds: Sequence[str] = DEFAULT_TRIGGER_KINDS,
) -> list[str]:
    """Create the design topics that do not exist yet; return the names created.

    ``partitions`` defaults to ``settings.partitions``. Existing topics are left
    as they are (a warning is logged if one has fewer partitions than asked).
    Returns once every topic has a leader for each partition.
    """
    return ensure_topics(
        bootstrap,
        design_topics(settings, trigger_kinds),
        partitions=settings.partitions if partitions is None else partitions,
        settings=settings,
    )


def ensure_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int,
    *,
    settings: Settings | None = None,
    timeout_s: float = TOPIC_TIMEOUT_S,
) -> list[str]:
    """Create the topics ``names`` that do not exist yet; return the names created.

    The replication factor is the broker's ``default.replication.factor``.

    ``settings`` supplies the Kafka security options (SASL, TLS), if any.
    """
    names = list(dict.fromkeys(names))
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    with _admin(bootstrap, settings) as admin:
        response = admin.create_topics(
            {name: {"num_partitions": partitions, "replication_factor": -1} for name in names},
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


def client_options(settings: Settings | None) -> dict[str, Any]:
    """kafka-python connection options (security) from ``settings``.

    >>> client_options(Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN",
    ...                         kafka_sasl_username="u", kafka_sasl_password="p"))["sasl_mechanism"]
    'PLAIN'
    >>> client_options(None)
    {}
    """
    if settings is None or settings.kafka_security_protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if settings.kafka_sasl_mechanism:
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=settings.kafka_sasl_password,
        )
    if settings.kafka_ssl_cafile:
        options["ssl_cafile"] = settings.kafka_ssl_cafile
    return options


def _admin(bootstrap: str, settings: Settings | None) -> closing[KafkaAdminClient]:
    """An admin client for one ``with`` block."""
    if not bootstrap:
        raise ValueError(
            "no Kafka bootstrap servers: set ATTUNE_KAFKA_BOOTSTRAP "
            "(or start local servers with `attune local up`)"
        )
    return closing(
        KafkaAdminClient(
            bootstrap_servers=bootstrap, client_id="attune-topics", **client_options(settings)
        )
    )
