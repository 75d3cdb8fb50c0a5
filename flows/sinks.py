"""Where the dataflow's outputs go: the :class:`Sinks` bundle and the Kafka + Redis one.

:func:`attune.flows.personalize.build_flow` takes a :class:`Sinks`; tests and benches
build their own, :mod:`attune.flows.embedded` makes one that keeps everything in
process, and :func:`server_sinks` is production's: Redis (profiles, segments,
recommendations, models), a Kafka topic for segment changes, dead letters, erasure
confirmations and each trigger kind. The keys the flow's readers share (where the
cluster parameters and the model snapshot are published) come from the settings here,
through :func:`clusters_key` and :func:`models_key`;
:func:`attune.flows.personalize.default_sinks` is the one place that picks between
servers and the embedded store.

>>> clusters_key(Settings(redis_prefix="shop1:")), models_key(Settings())
('shop1:model:clusters', 'attune:model:recs')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.outputs import FixedPartitionedSink, Sink, StatefulSinkPartition

from attune.flows.settings import Settings
from attune.operators.clustering import ParamsBoard, RedisBoard
from attune.operators.codec import Codec
from attune.operators.events import Trigger
from attune.operators.kafka_sink import CheckedKafkaSink, KafkaOut, keyed, to_kafka
from attune.operators.models import ModelBoard, RedisModelBoard
from attune.operators.redis_keys import RedisKeys
from attune.operators.redis_sink import RedisConfig, RedisSink
from attune.operators.settings import client_options
from attune.operators.stream_clock import ClockBoard, RedisClockBoard


@dataclass(frozen=True)
class Sinks:
    """Where the flow's three outputs go, and where the per-user step reads cluster params."""

    redis: Sink[Any]
    segments: Sink[Any]
    dead_letters: Sink[Any]
    triggers: Sink[Any]
    board: ParamsBoard | None = None
    #: Erasure confirmations; ``None``: not published (a warning is logged at build time).
    erasures: Sink[Any] | None = None
    #: Where the per-user step reads the published recommendation/propensity models;
    #: ``None``: no recommendations, propensity or session summaries.
    models: ModelBoard | None = None
    #: Where the processes of a cluster share their partitions' stream-clock marks;
    #: ``None``: this process's partitions alone tell time (one process).
    clock: ClockBoard | None = None


def models_key(settings: Settings) -> str:
    """The Redis key of the published recommendation/propensity snapshot (bytes)."""
    return RedisKeys(settings.redis_prefix).model("recs")


def clusters_key(settings: Settings) -> str:
    """The Redis key of the published cluster parameters and persona summaries."""
    return RedisKeys(settings.redis_prefix).model("clusters")


def server_sinks(settings: Settings, codec: Codec) -> Sinks:
    """Redis at ``ATTUNE_REDIS_URL`` and the Kafka topics, messages encoded by ``codec``."""
    redis_config = RedisConfig.from_settings(settings, hold_back=True)  # operations.md
    return Sinks(
        redis=RedisSink(redis_config),
        segments=EncodingKafkaSink(settings, _Topic(settings.topic_segments), codec),
        dead_letters=EncodingKafkaSink(settings, _Topic(settings.topic_dlq), codec),
        triggers=EncodingKafkaSink(settings, _TriggerTopic(settings.topic_triggers_prefix), codec),
        board=RedisBoard(redis_config.client, clusters_key(settings)),
        erasures=EncodingKafkaSink(settings, _Topic(settings.topic_erasures), codec),
        models=RedisModelBoard(redis_config.client, models_key(settings)),
        clock=RedisClockBoard(
            redis_config.client, RedisKeys(settings.redis_prefix).clock(settings.topic_events)
        ),
    )


@dataclass(frozen=True)
class _Topic:
    name: str

    def __call__(self, out: Any) -> str:
        return self.name


@dataclass(frozen=True)
class _TriggerTopic:
    prefix: str

    def __call__(self, out: Trigger) -> str:
        return f"{self.prefix}{out.kind}"


class EncodingKafkaSink(FixedPartitionedSink[KafkaOut, None]):
    """Typed outputs (segment changes, dead letters, triggers) encoded for their topic, then
    delivered through a :class:`CheckedKafkaSink` (every epoch's messages confirmed before
    Bytewax commits it).

    A partitioned sink writes a keyed stream: :func:`output` puts :meth:`encode` in front
    of it, which encodes and keys each output in one step.
    """

    def __init__(self, settings: Settings, topic: Callable[[Any], str], codec: Codec) -> None:
        self.inner = CheckedKafkaSink(settings.kafka_bootstrap, security=client_options(settings))
        self.topic = topic
        self.codec = codec

    def encode(self, items: list[Any]) -> list[tuple[str, KafkaOut]]:
        """``items`` encoded for their topics, each with the key Bytewax routes it by (a
        batch at a time: one Python call per batch, not per output)."""
        codec, topic = self.codec, self.topic
        return [keyed(to_kafka(item, codec, topic(item))) for item in items]

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def part_fn(self, item_key: str) -> int:
        return self.inner.part_fn(item_key)

    def build_part(
        self, step_id: str, for_part: str, resume_state: None
    ) -> StatefulSinkPartition[KafkaOut, None]:
        return self.inner.build_part(step_id, for_part, resume_state)


def output(step_id: str, up: Stream[Any], sink: Sink[Any]) -> None:
    """``op.output``, with the outputs encoded and keyed first for an :class:`EncodingKafkaSink`
    (any other sink, e.g. a test's ``TestingSink``, takes the stream as it is)."""
    if isinstance(sink, EncodingKafkaSink):
        up = op.flat_map_batch(f"{step_id}_encode", up, sink.encode)
    op.output(step_id, up, sink)
