"""The personalization dataflow: the one place where sources, operators and sinks meet.

``python -m bytewax.run attune.flows.personalize:flow`` runs it with settings from the
environment (``ATTUNE_*``, :mod:`attune.flows.settings`); ``attune run`` adds flags and
a live summary. With no Kafka and no Redis configured it is the embedded
default: generated events (or ``ATTUNE_INPUT_FILE``) in, results kept in
process (:mod:`attune.flows.embedded`); ``attune run`` prints their summary and writes
the report (``bytewax.run`` alone does not).

Stages (docs/architecture.md has the picture)::

    source (Kafka | file | generator): decode + validate + pseudonymise + watermark
      -> dead letters ............................................ -> attune.dlq
      -> events with a user id ..................................... -> user state
      -> anonymous-only events + links from IDENTIFY -> identity (by anonymous id)
                                                                    -> user state
    user state (by canonical user): privacy gate (consent, erasure), dedupe, sessions,
                                    windows, cart, segments
      -> Redis ops (profiles, segment hashes, aliases, forgets) .... -> Redis
      -> segment changes .......................................... -> attune.segments
      -> erasure confirmations ............................. -> attune.privacy.erasures
      -> recommendations + propensity (once per batch of a user) .... -> Redis
      -> one summary per session -> model learner (one key) -> snapshot, trending -> Redis

Tests and benches pass their own ``source``/``sinks``; production passes none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeGuard, cast

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import KeyedStream

from attune.flows import tune_gc
from attune.flows.embedded import LocalStore
from attune.flows.settings import Settings
from attune.flows.sinks import Sinks, clusters_key, models_key, server_sinks
from attune.flows.sinks import output as sinks_output
from attune.operators.clustering import (
    ClusterLearnerLogic,
    ClusterVector,
    ParamsBoard,
    PublishParams,
)
from attune.operators.codec import Codec
from attune.operators.consent import ConsentPolicy
from attune.operators.container import read_container
from attune.operators.events import (
    DeadLetter,
    ErasureConfirmation,
    Event,
    ItemUpdate,
    SegmentChange,
    Trigger,
    item_from_record,
)
from attune.operators.identity import IdentityLogic, Link, Routed, identity_inputs
from attune.operators.models import (
    ModelBoard,
    ModelLearnerLogic,
    ModelReader,
    PublishModels,
    RecsConfig,
    SessionSummary,
    catalogue_of,
    resolve_recs,
)
from attune.operators.privacy import Pseudonymiser, ephemeral, load_key, parse_previous_keys
from attune.operators.ranking import Filters
from attune.operators.redis_keys import RedisKeys
from attune.operators.redis_sink import (
    AliasWrite,
    ForgetUser,
    JsonWrite,
    ProfileWrite,
    RecsWrite,
    TrendingWrite,
)
from attune.operators.redis_sink import SegmentsWrite as _SegmentsWrite
from attune.operators.rule_files import load_rules, load_trigger_rules
from attune.operators.schema_registry import SchemaRegistryClient
from attune.operators.segments import cluster_segment
from attune.operators.sessions import PriceBands
from attune.operators.sources import EventListSource, FileEventSource, KafkaEventSource
from attune.operators.stream_clock import STREAM_CLOCK
from attune.operators.triggers import KINDS, TriggerConfig
from attune.operators.user_config import ProfileConfig
from attune.operators.user_logic import Keyed, UserLogic
from attune.operators.user_state import Output

log = logging.getLogger(__name__)

RedisOp = (
    ProfileWrite | _SegmentsWrite | ForgetUser | AliasWrite | JsonWrite | RecsWrite | TrendingWrite
)
REDIS_OPS = (ProfileWrite, _SegmentsWrite, ForgetUser, AliasWrite, RecsWrite)

#: The dataflow's id: the prefix of every step id, in recovery snapshots and metrics.
FLOW_ID = "attune_personalize"

#: Price band quantile: an item priced at or above this quantile of its
#: category's catalogue prices is in the top ("premium") band.
PREMIUM_QUANTILE = 2 / 3


def _categories(raw: str) -> tuple[str, ...]:
    return tuple(c.strip().strip("/") for c in raw.split(",") if c.strip().strip("/"))


def recs_config(settings: Settings) -> RecsConfig:
    """List length and business filters of the recommendations, from the settings."""
    if settings.recs_k < 1:
        raise ValueError(f"ATTUNE_RECS_K={settings.recs_k}: the list length must be >= 1")
    allow = _categories(settings.recs_allow_categories)
    deny = _categories(settings.recs_deny_categories)
    both = sorted(set(allow) & set(deny))
    if both:
        raise ValueError(
            f"categories {both} are in both ATTUNE_RECS_ALLOW_CATEGORIES and "
            "ATTUNE_RECS_DENY_CATEGORIES; keep each in one list"
        )
    return RecsConfig(
        settings.recs_k,
        Filters(allow_categories=allow, deny_categories=deny),
        min_gap_ms=settings.recs_min_gap_s * 1000,
    )


def profile_config(
    settings: Settings,
    items: list[ItemUpdate] | None,
    board: ParamsBoard | None,
    models: ModelBoard | None = None,
) -> ProfileConfig:
    """The per-user step's configuration: rules, price bands, gaps, TTLs, cluster board,
    model board, consent policy. Raises ``ValueError`` naming the setting for an invalid
    one."""
    rules = load_rules(_rule_file(settings.segments_file, "segments", "docs/segments.md"))
    return ProfileConfig(
        models=ModelReader(models, catalogue_of(items or [])) if models is not None else None,
        recs=recs_config(settings),
        consent=ConsentPolicy.parse(settings.consent_default, settings.consent_regions),
        keys=RedisKeys(settings.redis_prefix),
        audiences=(*rules.names, *(cluster_segment(i) for i in range(settings.cluster_k))),
        session_gap_ms=settings.session_gap_s * 1000,
        state_ttl=timedelta(seconds=settings.state_ttl_s),
        rules=rules,
        price_bands=PriceBands.from_items(items or [], PREMIUM_QUANTILE),
        board=board,
        triggers=TriggerConfig(
            abandon_after_ms=settings.cart_abandon_after_s * 1000,
            settle_ms=settings.allowed_lateness_s * 1000,
        ),
        trigger_rules=load_trigger_rules(
            extra=_rule_file(settings.trigger_rules_file, "trigger_rules", "docs/triggers.md"),
            segments=rules.names,
            kinds=KINDS,
        ),
    )


def _rule_file(name: str, setting: str, doc: str) -> Path | None:
    """The rule file ``name`` (``None``: the shipped rules only), refused in one line if
    it is not a readable file; what is inside it, :mod:`attune.operators.rule_files`
    checks (a syntax error or an unknown key is named with its file and line).

    >>> _rule_file("", "segments", "docs/segments.md") is None
    True
    >>> _rule_file("/no/such.yaml", "segments", "docs/segments.md")
    Traceback (most recent call last):
    ...
    FileNotFoundError: segments file /no/such.yaml does not exist: give a YAML file \
(docs/segments.md) with ATTUNE_SEGMENTS_FILE, or unset it for the shipped rules
    """
    if not name:
        return None
    path = Path(name)
    what = setting.replace("_", " ")
    advice = (
        f"give a YAML file ({doc}) with ATTUNE_{setting.upper()}_FILE, or unset it for the "
        "shipped rules"
    )
    if not path.exists():
        raise FileNotFoundError(f"{what} file {path} does not exist: {advice}")
    if not path.is_file():
        raise IsADirectoryError(f"{what} file {path} is not a file: {advice}")
    return path


def _identity_logic(cfg: ProfileConfig, resume: bytes | None) -> IdentityLogic:
    return IdentityLogic(resume, cfg.state_ttl, cfg.consent, cfg.clock)


def _user_logic(cfg: ProfileConfig, resume: bytes | None) -> UserLogic:
    return UserLogic(resume, cfg)


def _is_event(item: Event | DeadLetter) -> TypeGuard[Event]:
    return isinstance(item, Event)


def _anonymous_only(event: Event) -> bool:
    return event.user_id is None


def _by_anonymous_id(events: list[Event]) -> list[tuple[str, Event | Link]]:
    """Anonymous-only events keyed by their anonymous id, for the identity step."""
    return [(event.anonymous_id or "", event) for event in events]


def _by_user(batch: list[tuple[str, Routed]]) -> list[tuple[str, Keyed]]:
    """The identity step's ``(user key, input)`` pairs keyed by that user."""
    return [(routed[0], routed) for _, routed in batch]


def _known(events: list[Event]) -> list[tuple[str, Keyed]]:
    """Events with a user id keyed by it."""
    out: list[tuple[str, Keyed]] = []
    for event in events:
        user = event.user_id or ""
        out.append((user, (user, event)))
    return out


def _unkey_and_rank(batch: list[tuple[str, Output]]) -> list[Output]:
    """The step's outputs without their keys, its recommendation requests
    (:class:`~attune.operators.models.RecsRequest`) ranked into ``RecsWrite`` s, in
    place, one ``rank_many`` per snapshot and config."""
    return resolve_recs([kv[1] for kv in batch])


def _is_redis_op(out: Output) -> bool:
    return isinstance(out, REDIS_OPS)


def build_flow(
    settings: Settings,
    source: Source[Event | DeadLetter] | None = None,
    sinks: Sinks | None = None,
    items: list[ItemUpdate] | None = None,
) -> Dataflow:
    """Wire the personalization dataflow.

    Args:
        settings: configuration (topics, gaps, lateness, Redis, Kafka).
        source: where events come from; default: Kafka if configured, else
            the generator (embedded default).
        sinks: where outputs go; default: Redis and Kafka topics if
            configured, else in process (embedded default).
        items: the catalogue (for price bands); default: read from the items
            topic, the replay file's ``.items.avro``, or the generator.
    """
    sinks = sinks or default_sinks(settings)  # first: it refuses half a configuration
    if source is None or items is None:
        default_source, default_items = default_input(settings)
        source = source or default_source
        items = default_items if items is None else items
    cfg = profile_config(settings, items, sinks.board, sinks.models)
    # One flow per process; a new flow starts with no event time.
    STREAM_CLOCK.reset(
        sinks.clock,
        lateness_ms=settings.allowed_lateness_s * 1000,
        live_within_ms=settings.live_within_s * 1000,
    )

    flow = Dataflow(FLOW_ID)
    decoded = op.input("events", flow, source)
    valid = op.branch("valid", decoded, _is_event)
    events: Stream[Event] = valid.trues
    dead = cast(Stream[DeadLetter], valid.falses)

    # Identity routing: batch steps (flat_map_batch), one call per batch, not per event.
    anon = op.branch("anonymous_only", events, _anonymous_only)
    links = op.flat_map_batch("links", anon.falses, identity_inputs)
    anonymous = op.flat_map_batch("by_anonymous_id", anon.trues, _by_anonymous_id)
    keyed_anon: KeyedStream[Event | Link] = op.merge("to_identity", anonymous, links)
    routed = op.stateful_batch("identity", keyed_anon, partial(_identity_logic, cfg))
    from_identity = op.flat_map_batch("route_to_user", routed, _by_user)
    known = op.flat_map_batch("known_user", anon.falses, _known)
    to_users = op.merge("to_users", known, from_identity)
    user_out = op.stateful_batch("user_state", to_users, partial(_user_logic, cfg))
    # The recommendation lists the step left due are ranked here, all those of a batch
    # together (models.resolve_recs): most of a ranking's cost is fixed per numpy call.
    outputs = op.flat_map_batch("unkey", user_out, _unkey_and_rank)

    redis_or_not = op.branch("redis_ops", outputs, _is_redis_op)
    segment_changes = op.filter_map("segment_changes", redis_or_not.falses, _segment_change_or_none)
    # Personas: one vector per user session to ONE learner; its parameters are
    # published to Redis, where every worker's per-user step reads them.
    vectors = op.filter_map("cluster_vectors", redis_or_not.falses, _vector_or_none)
    to_learner = op.key_on("one_learner", vectors, _learner_key)
    published = op.stateful_batch(
        "cluster_learner",
        to_learner,
        partial(_learner_logic, settings.cluster_k, settings.cluster_seed),
    )
    write_params = partial(_params_write, clusters_key(settings), settings.redis_ttl_s)
    params_write = op.map("params_to_redis", published, write_params)
    # Recommendation and propensity models: one summary per user session to ONE learner;
    # its snapshot goes to Redis (every worker's per-user step reads it), trending scores
    # to sorted sets, propensity metrics to JSON.
    summaries = op.filter_map("session_summaries", redis_or_not.falses, _summary_or_none)
    to_models = op.key_on("one_model_learner", summaries, _models_learner_key)
    categories = {i.item_id: "/".join(i.category_path) for i in items or []}
    models = op.stateful_batch(
        "model_learner", to_models, partial(_model_learner_logic, settings, categories)
    )
    model_writes = op.flat_map(
        "models_to_redis",
        models,
        partial(_model_writes, RedisKeys(settings.redis_prefix), settings.redis_ttl_s),
    )
    redis_ops = op.merge("all_redis_ops", redis_or_not.trues, params_write, model_writes)
    op.output("redis", redis_ops, sinks.redis)
    sinks_output("segments_out", segment_changes, sinks.segments)
    triggers = op.filter_map("triggers", redis_or_not.falses, _trigger_or_none)
    sinks_output("triggers_out", triggers, sinks.triggers)
    sinks_output("dead_letters_out", dead, sinks.dead_letters)
    erasures = op.filter_map("erasures", redis_or_not.falses, _erasure_or_none)
    if sinks.erasures is not None:
        sinks_output("erasures_out", erasures, sinks.erasures)
    else:
        log.warning("no sink for erasure confirmations: they are not published")
    return flow


def _segment_change_or_none(out: Output) -> SegmentChange | None:
    return out if isinstance(out, SegmentChange) else None


def _erasure_or_none(out: Output) -> ErasureConfirmation | None:
    return out if isinstance(out, ErasureConfirmation) else None


def _trigger_or_none(out: Output) -> Trigger | None:
    return out if isinstance(out, Trigger) else None


def _vector_or_none(out: Output) -> ClusterVector | None:
    return out if isinstance(out, ClusterVector) else None


def _learner_key(_: ClusterVector) -> str:
    return "clusters"


def _learner_logic(k: int, seed: int, resume: bytes | None) -> ClusterLearnerLogic:
    return ClusterLearnerLogic(resume, k, seed, clock=STREAM_CLOCK)  # a replay: in order


def _summary_or_none(out: Output) -> SessionSummary | None:
    return out if isinstance(out, SessionSummary) else None


def _models_learner_key(_: SessionSummary) -> str:
    return "models"


def _model_learner_logic(
    settings: Settings, categories: dict[str, str], resume: bytes | None
) -> ModelLearnerLogic:
    return ModelLearnerLogic(
        resume,
        categories,
        publish_every=settings.models_publish_every,
        replay_publish_every=settings.models_replay_publish_every,
        publish_s=settings.models_publish_s,
        publish_min_s=settings.models_publish_min_s,
        clock=STREAM_CLOCK,  # in a replay: learnt in event-time order
    )


def _model_writes(
    keys: RedisKeys, ttl_s: int, kv: tuple[str, PublishModels]
) -> list[JsonWrite | TrendingWrite]:
    published = kv[1]
    return [
        JsonWrite(keys.model("recs"), published.snapshot, ttl_s),
        JsonWrite(keys.model("propensity"), published.metrics, ttl_s),
        *published.trending,
    ]


def _params_write(key: str, ttl_s: int, kv: tuple[str, PublishParams]) -> JsonWrite:
    return JsonWrite(key, kv[1].params.to_json(), ttl_s)


# --- defaults: Kafka and Redis when configured, else embedded ----------------------------------


def codec_for(settings: Settings) -> Codec:
    """The codec of the flow: Confluent framing via the schema registry when configured."""
    if settings.schema_registry_url:
        return Codec(registry=SchemaRegistryClient(settings.schema_registry_url))
    return Codec()


def pseudonymiser_for(settings: Settings) -> Pseudonymiser:
    """The flow's pseudonymiser (docs/privacy.md): the configured key, or refuse with Kafka.

    With Kafka (real personal data) a key is required: pseudonyms must be stable
    across processes and restarts, so a made-up key would silently break every
    join. Without Kafka (the embedded demo over generated events or a file), a
    random per-process key is used, with a warning.
    """
    key = load_key(settings.pseudonym_key, settings.pseudonym_key_file)
    if key is None:
        if settings.kafka_bootstrap:
            raise ValueError(
                "no pseudonym key: with Kafka, set ATTUNE_PSEUDONYM_KEY or "
                "ATTUNE_PSEUDONYM_KEY_FILE (at least 32 bytes; make one with python -c "
                "'import secrets; print(secrets.token_urlsafe(48))'); docs/privacy.md"
            )
        return ephemeral()
    return Pseudonymiser(
        key,
        settings.pseudonym_key_id,
        settings.pseudonymise_user_ids,
        previous=parse_previous_keys(settings.pseudonym_previous_keys),
    )


def default_input(settings: Settings) -> tuple[Source[Event | DeadLetter], list[ItemUpdate]]:
    """Kafka if configured; else the replay file (``ATTUNE_INPUT_FILE``); else the generator.

    Every one pseudonymises PII as it decodes (:func:`pseudonymiser_for`).
    """
    lateness = settings.allowed_lateness_s * 1000
    privacy = pseudonymiser_for(settings)
    if settings.kafka_bootstrap:
        return (
            KafkaEventSource(
                settings.kafka_bootstrap,
                settings.topic_events,
                allowed_lateness_ms=lateness,
                config=kafka_security(settings),
                tail=settings.kafka_tail,
                batch_size=settings.kafka_batch_size,
                codec_factory=partial(codec_for, settings),
                privacy=privacy,
            ),
            read_items_topic(settings),
        )
    if settings.input_file:
        from attune.flows.generate import default_paths

        path = Path(settings.input_file)
        return (
            FileEventSource(path, allowed_lateness_ms=lateness, privacy=privacy),
            read_items_file(default_paths(path)[1]),
        )
    from attune.workload.generator import GeneratorConfig, generate

    config = GeneratorConfig(
        users=settings.generate_users, days=settings.generate_days, seed=settings.generate_seed
    )

    def events() -> Iterator[Event]:
        return iter(generate(config).events)

    return (
        EventListSource(events, allowed_lateness_ms=lateness, privacy=privacy),
        list(generate(config).items),
    )


def default_sinks(settings: Settings, store: LocalStore | None = None) -> Sinks:
    """The flow's sinks, every key from the settings: Redis and Kafka when configured;
    the embedded store otherwise (``store``, default the process's shared one).

    The one place sinks are chosen: ``attune run``, :func:`build_flow`'s default and
    ``python -m bytewax.run`` all come here.
    """
    if settings.redis_url and settings.kafka_bootstrap:
        return server_sinks(settings, codec_for(settings))
    if settings.redis_url or settings.kafka_bootstrap:
        raise ValueError(
            "set both ATTUNE_KAFKA_BOOTSTRAP and ATTUNE_REDIS_URL (the flow reads Kafka and "
            "writes Redis), or neither for the embedded default"
        )
    if store is None:
        store = LocalStore.shared()
    return store.sinks(clusters_key(settings), models_key(settings))


def kafka_security(settings: Settings) -> dict[str, str]:
    """librdkafka security settings from :class:`Settings` (one translation, in kafka_sink)."""
    from attune.flows.topics import client_options
    from attune.operators.kafka_sink import librdkafka_security

    return librdkafka_security(client_options(settings))


def read_items_file(path: Path) -> list[ItemUpdate]:
    """The catalogue from an Avro container file of item updates (missing file: empty)."""
    if not path.exists():
        return []
    return [
        item_from_record(rec.value)
        for rec in read_container(path, "attune.item.ItemUpdate")
        if not isinstance(rec.value, DeadLetter)
    ]


def read_items_topic(settings: Settings, timeout_s: float = 30.0) -> list[ItemUpdate]:
    """The catalogue snapshot: the items topic read from the beginning to its current end."""
    from confluent_kafka import Consumer, TopicPartition

    codec = codec_for(settings)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": "attune-catalogue",
            "enable.auto.commit": False,
            **kafka_security(settings),
        }
    )
    try:
        meta = consumer.list_topics(settings.topic_items, timeout=timeout_s)
        topic = meta.topics.get(settings.topic_items)
        if topic is None or topic.error is not None:
            return []
        parts = [TopicPartition(settings.topic_items, p, 0) for p in topic.partitions]
        ends = {
            tp.partition: consumer.get_watermark_offsets(tp, timeout=timeout_s)[1] for tp in parts
        }
        todo = {p for p, end in ends.items() if end > 0}
        consumer.assign(parts)
        items: list[ItemUpdate] = []
        deadline = time.monotonic() + timeout_s
        while todo:
            # consume() returns early only with a full batch: poll with a short timeout.
            msgs = consumer.consume(1000, 0.2)
            if not msgs and time.monotonic() > deadline:
                raise RuntimeError(
                    f"reading {settings.topic_items} stalled for {timeout_s} s "
                    f"with partitions {sorted(todo)} unfinished"
                )
            for msg in msgs:
                part, offset = msg.partition(), msg.offset()
                if msg.error() is not None or part is None or offset is None:
                    continue
                item = codec.decode_item(msg.value() or b"")
                if isinstance(item, ItemUpdate):
                    items.append(item)
                if offset + 1 >= ends[part]:
                    todo.discard(part)
        return items
    finally:
        consumer.close()


def __getattr__(name: str) -> Any:
    """``attune.flows.personalize:flow`` for ``python -m bytewax.run``, built on first access."""
    if name == "flow":
        flow = build_flow(Settings.from_env())
        tune_gc()
        return flow
    raise AttributeError(name)
