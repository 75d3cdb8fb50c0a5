"""The I/O side of ``attune generate``: synthetic events to an Avro file and/or to Kafka.

:mod:`attune.workload.generator` simulates (pure, deterministic); this module writes
what it simulated:

- :func:`write_files`: the events as an Avro object container file (deflate,
  with a sync marker derived from the seed, so the same seed gives the same
  bytes), the ground truth as JSON and the item updates as a second container;
- :func:`produce`: the item updates, then the events, single-object encoded
  (or Confluent framed when a schema registry is configured), to Kafka, keyed
  by user id (else anonymous id), optionally paced to a rate. Every delivery is
  confirmed; a failure raises :class:`ProduceError` instead of losing data.

``attune generate --users 1000 --days 7 --seed 7 --out e.avro`` writes
``e.avro``, ``e.truth.json`` and ``e.items.avro``;
``attune generate --users 1000 --days 7 --seed 7 --kafka 127.0.0.1:19092 --rate 5000``
produces to ``attune.items`` and ``attune.events`` at 5000 events/s.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO, TypeVar

from attune.flows.settings import Settings
from attune.flows.topics import client_options
from attune.operators.codec import Codec
from attune.operators.connect_check import check_kafka
from attune.operators.container import write_container
from attune.operators.events import Event, ItemUpdate, event_to_record, to_record
from attune.operators.kafka_sink import librdkafka_security
from attune.operators.schema_registry import SchemaRegistryClient
from attune.operators.schemas import EVENT, ITEM
from attune.workload.generator import Generated, GeneratorConfig, generate

T = TypeVar("T")

#: How long the producer may take to deliver one message before it counts as failed.
DELIVERY_TIMEOUT_S = 120.0
#: How long :func:`produce` waits at the end for outstanding deliveries.
FLUSH_TIMEOUT_S = 150.0
#: Pacing granularity: the producer sleeps at most once per this many seconds of events.
PACING_SLICE_S = 0.01


# --- files -----------------------------------------------------------------------------------


def sync_marker(seed: int, what: str) -> bytes:
    """The 16-byte Avro sync marker of a generated file: fixed per seed and file kind.

    >>> sync_marker(7, "events").hex()
    '61647d930cad645e0cfc9fa52ca44451'
    """
    return hashlib.sha256(f"attune-generate:{what}:{seed}".encode()).digest()[:16]


def default_paths(out: Path) -> tuple[Path, Path]:
    """Where the truth and the item updates go by default: ``e.avro`` -> ``e.truth.json``, ...

    >>> [str(p) for p in default_paths(Path("data/e.avro"))]
    ['data/e.truth.json', 'data/e.items.avro']
    """
    return out.with_suffix(".truth.json"), out.with_suffix(".items.avro")


class Progress:
    """A counter on stderr for long runs: rewritten in place on a terminal, a line now and then."""

    def __init__(self, what: str, stream: IO[str] | None = None, every_s: float = 1.0) -> None:
        self.what = what
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = every_s if self.tty else max(every_s, 10.0)
        self.start = time.monotonic()
        self.next = self.start + self.every_s
        self.count = 0
        self.shown = False

    def wrap(self, items: Iterable[T]) -> Iterator[T]:
        for x in items:
            self.count += 1
            if not self.count & 1023 and time.monotonic() >= self.next:
                self.show()
            yield x
        if self.shown:
            self.show(final=True)

    def show(self, final: bool = False) -> None:
        now = time.monotonic()
        self.next = now + self.every_s
        rate = self.count / max(now - self.start, 1e-9)
        line = f"{self.what}: {self.count:,} ({rate:,.0f}/s)"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.shown = True


def write_atomic(path: Path, write: Callable[[BinaryIO], T]) -> T:
    """Write a file through ``write`` into ``<path>.part``, then rename: no half files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    try:
        with part.open("wb") as fh:
            result = write(fh)
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return result


def write_events(
    path: Path, events: Iterable[Event], marker: bytes, *, progress: str | None = None
) -> int:
    """Write events as an Avro object container (deflate) atomically; returns the count.

    The file format every Attune reader takes (``attune run --input``,
    ``attune inspect``, ``attune evaluate``); ``attune generate`` and
    ``attune import`` both write through here. ``progress`` labels a counter on
    stderr (``None``: silent). ``marker`` is the 16-byte sync marker: a fixed
    one makes the bytes repeatable.
    """
    if progress is not None:
        events = Progress(progress).wrap(events)
    records = (event_to_record(e) for e in events)
    return write_atomic(path, lambda fh: write_container(fh, EVENT, records, marker))


def write_items(path: Path, items: Iterable[ItemUpdate], marker: bytes) -> int:
    """Write catalogue item updates as an Avro object container atomically; returns the count."""
    records = (to_record(i) for i in items)
    return write_atomic(path, lambda fh: write_container(fh, ITEM, records, marker))


def write_files(
    generated: Generated,
    out: Path,
    truth_path: Path | None = None,
    items_path: Path | None = None,
    seed: int | None = None,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Write events, ground truth and item updates; returns a summary (paths, counts, speed).

    ``seed`` picks the sync markers (default: the config's seed), so the same
    seed and config give byte-identical files. ``generated.events`` is consumed.
    """
    seed = generated.config.seed if seed is None else seed
    default_truth, default_items = default_paths(out)
    truth_path = truth_path or default_truth
    items_path = items_path or default_items
    started = time.monotonic()
    n_events = write_events(
        out,
        generated.events,
        sync_marker(seed, "events"),
        progress=f"generate {out}" if progress else None,
    )
    seconds = time.monotonic() - started
    truth = generated.truth
    write_atomic(truth_path, lambda fh: fh.write(truth.to_json()))
    n_items = write_items(items_path, generated.items, sync_marker(seed, "items"))
    return {
        "events": n_events,
        "items": n_items,
        "users": len(truth.users),
        "out": str(out),
        "truth": str(truth_path),
        "items_out": str(items_path),
        "seconds": round(seconds, 3),
        "events_per_s": round(n_events / max(seconds, 1e-9)),
    }


# --- Kafka -----------------------------------------------------------------------------------


class ProduceError(RuntimeError):
    """Some messages were not delivered to Kafka (or the cluster is not usable)."""


@dataclass(frozen=True, slots=True)
class ProduceReport:
    """What :func:`produce` delivered: every message counted here was acknowledged."""

    topic: str
    items_topic: str | None
    events: int
    items: int
    bytes: int
    seconds: float
    events_per_s: float


def producer_config(bootstrap: str, settings: Settings | None = None) -> dict[str, Any]:
    """confluent-kafka producer settings: safe delivery, plus security from ``settings``.

    >>> c = producer_config("127.0.0.1:9092", Settings(kafka_security_protocol="SASL_SSL",
    ...     kafka_sasl_mechanism="PLAIN", kafka_sasl_username="u", kafka_sasl_password="p"))
    >>> c["security.protocol"], c["sasl.mechanism"], c["enable.idempotence"]
    ('SASL_SSL', 'PLAIN', True)
    """
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "client.id": "attune-generate",
        # Idempotence: retries neither duplicate nor reorder a key's messages.
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "compression.type": "lz4",
        "message.timeout.ms": int(DELIVERY_TIMEOUT_S * 1000),
    }
    config.update(librdkafka_security(client_options(settings)))  # one translation
    return config


class _Deliveries:
    """Delivery callback state: counts acknowledgements and keeps the first failure."""

    def __init__(self) -> None:
        self.delivered = 0
        self.bytes = 0
        self.failed = 0
        self.first_error: str | None = None

    def __call__(self, err: Any, msg: Any) -> None:
        if err is None:
            self.delivered += 1
            self.bytes += len(msg.value() or b"")
            return
        self.failed += 1
        if self.first_error is None:
            self.first_error = f"{err.str()} (topic {msg.topic()}, key {msg.key()!r})"


def _check_topics(producer: Any, bootstrap: str, topics: list[str]) -> None:
    """Raise :class:`ProduceError` unless Kafka answers and has every topic of ``topics``."""
    from confluent_kafka import KafkaException

    for name in topics:
        try:
            meta = producer.list_topics(name, timeout=15)
        except KafkaException as exc:
            raise ProduceError(f"Kafka at {bootstrap} is not reachable: {exc}") from None
        info = meta.topics.get(name)
        if info is None or info.error is not None:
            raise ProduceError(
                f"topic {name} is not available on {bootstrap} ({info.error if info else 'absent'})"
                "; create it first, e.g. with `attune topics create`"
            )


def produce(  # noqa: PLR0917 - the positional signature the CLI and tests share
    generated: Generated,
    bootstrap: str,
    topic: str,
    items_topic: str | None,
    rate: float | None,
    codec: Codec,
    *,
    settings: Settings | None = None,
    flush_timeout_s: float = FLUSH_TIMEOUT_S,
    progress: bool = True,
    producer: Any = None,
) -> ProduceReport:
    """Produce the item updates (keyed by item id) then the events (keyed by user) to Kafka.

    ``rate`` paces the events (events/s, ``None``: as fast as possible) by a
    monotonic clock, sleeping once per ~10 ms worth of events. Raises
    :class:`ProduceError` naming the count and the first error if any delivery
    failed or did not complete within ``flush_timeout_s``.

    ``producer``: a confluent-kafka producer (made with :func:`producer_config`) to use
    instead of a new one, flushed but kept open. A new idempotent producer holds its
    first messages until it has a producer id, ~0.5 s on a local broker (librdkafka
    retries the request after 500 ms): ``attune bench latency`` reuses the producer of
    its warm-up event so that this start-up is not in the measured period.
    """
    from confluent_kafka import Producer

    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be > 0 events/s (or None for unpaced), got {rate}")
    if not bootstrap:
        raise ValueError(
            "no Kafka bootstrap servers: pass --kafka HOST:PORT or set ATTUNE_KAFKA_BOOTSTRAP"
        )
    if producer is None:
        producer = Producer(producer_config(bootstrap, settings))
    topics = [t for t in (items_topic, topic) if t]
    _check_topics(producer, bootstrap, topics)
    deliveries = _Deliveries()

    def send(topic_name: str, key: bytes, value: bytes) -> None:
        while True:
            try:
                producer.produce(topic_name, value, key, on_delivery=deliveries)
                return
            except BufferError:
                # Local queue full: serve delivery reports until there is room.
                producer.poll(0.05)

    started = time.monotonic()
    n_items = 0
    if items_topic:
        for item in generated.items:
            send(items_topic, item.item_id.encode(), codec.encode_item(item))
            n_items += 1
    batch = max(1, round(rate * PACING_SLICE_S)) if rate else 1000
    counter = Progress(f"produce {topic}") if progress else None
    events: Iterable[Event] = generated.events
    if counter is not None:
        events = counter.wrap(events)
    n_events = 0
    events_start = time.monotonic()
    for event in events:
        send(topic, event.user_key.encode(), codec.encode_event(event))
        n_events += 1
        if n_events % batch == 0:
            producer.poll(0)
            if rate:
                ahead = events_start + n_events / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
    remaining = producer.flush(flush_timeout_s)
    seconds = time.monotonic() - started
    total = n_items + n_events
    if deliveries.failed or remaining:
        raise ProduceError(
            f"{deliveries.failed} of {total} messages to {', '.join(topics)} failed delivery "
            f"and {remaining} were still unconfirmed after {flush_timeout_s:.0f}s; "
            f"first error: {deliveries.first_error or 'none (flush timed out)'}"
        )
    return ProduceReport(
        topic=topic,
        items_topic=items_topic,
        events=n_events,
        items=n_items,
        bytes=deliveries.bytes,
        seconds=round(seconds, 3),
        events_per_s=round(n_events / max(time.monotonic() - events_start, 1e-9), 1),
    )


# --- the command -----------------------------------------------------------------------------

_SHARE_FIELDS = [f for f in fields(GeneratorConfig) if f.name.endswith("_share")]


def iso_ms(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--start {text!r} is not an ISO date or date-time, e.g. 2026-01-05T00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``attune generate``."""
    sim = parser.add_argument_group("simulation")
    sim.add_argument("--users", type=int, default=1000, help="simulated users (default 1000)")
    sim.add_argument("--days", type=int, default=7, help="simulated days (default 7)")
    sim.add_argument("--seed", type=int, default=0, help="seed; same seed, same events (0)")
    sim.add_argument("--items", type=int, help="catalogue size (default 20 per user, 64..2000)")
    sim.add_argument(
        "--start",
        type=iso_ms,
        dest="start_ms",
        metavar="ISO",
        help="start of the simulated period, ISO 8601 UTC (default 2026-01-05T00:00Z)",
    )
    noise = parser.add_argument_group("population and noise shares (fractions in [0, 1])")
    for f in _SHARE_FIELDS:
        noise.add_argument(
            "--" + f.name.replace("_", "-"),
            type=float,
            metavar="SHARE",
            help=f"{f.metadata['doc'].rstrip('.')} (default {f.default})",
        )
    files = parser.add_argument_group("files")
    files.add_argument(
        "--out",
        type=Path,
        help="events file, Avro container (default events.avro unless --kafka is given)",
    )
    files.add_argument("--truth", type=Path, help="ground truth JSON (default <out>.truth.json)")
    files.add_argument(
        "--items-out", type=Path, help="item updates, Avro container (default <out>.items.avro)"
    )
    kafka = parser.add_argument_group("Kafka")
    kafka.add_argument(
        "--kafka",
        nargs="?",
        const="",
        metavar="BOOTSTRAP",
        help="produce to Kafka at BOOTSTRAP (alone: ATTUNE_KAFKA_BOOTSTRAP); with --out, "
        "the events are generated twice, identically",
    )
    kafka.add_argument("--topic", help="events topic (default ATTUNE_TOPIC_EVENTS)")
    kafka.add_argument("--items-topic", help="item updates topic (default ATTUNE_TOPIC_ITEMS)")
    kafka.add_argument("--no-items", action="store_true", help="do not produce item updates")
    kafka.add_argument(
        "--rate", type=float, help="events per second (default: as fast as possible)"
    )


def config_from_args(args: argparse.Namespace) -> GeneratorConfig:
    """The :class:`GeneratorConfig` of parsed flags; unset flags keep the config's defaults."""
    values: dict[str, Any] = {"users": args.users, "days": args.days, "seed": args.seed}
    for name in ("items", "start_ms", *(f.name for f in _SHARE_FIELDS)):
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    return GeneratorConfig(**values)


def run(args: argparse.Namespace) -> int:
    """``attune generate``: write files and/or produce to Kafka; prints a summary per output."""
    settings = Settings.from_env()
    config = config_from_args(args)
    out: Path | None = args.out
    if out is None and args.kafka is None:
        out = Path("events.avro")
    if out is not None:
        summary = write_files(generate(config), out, args.truth, args.items_out, config.seed)
        print(
            f"wrote {summary['events']:,} events of {summary['users']:,} users to {out} "
            f"in {summary['seconds']:.1f}s ({summary['events_per_s']:,}/s); "
            f"truth {summary['truth']}, {summary['items']:,} item updates {summary['items_out']}"
        )
    if args.kafka is not None:
        bootstrap = args.kafka or settings.kafka_bootstrap
        codec = Codec(
            SchemaRegistryClient(settings.schema_registry_url)
            if settings.schema_registry_url
            else None
        )
        # One line for a broker that refuses the credentials or the TLS handshake, at once.
        check_kafka(bootstrap, settings)
        generated = generate(config)
        report = produce(
            generated,
            bootstrap,
            args.topic or settings.topic_events,
            None if args.no_items else args.items_topic or settings.topic_items,
            args.rate,
            codec,
            settings=settings,
        )
        print(
            f"produced {report.events:,} events to {report.topic} and {report.items:,} item "
            f"updates to {report.items_topic or '(none)'} in {report.seconds:.1f}s "
            f"({report.events_per_s:,.0f} events/s)"
        )
        if args.rate and report.events_per_s < 0.9 * args.rate:
            print(
                f"attune generate: fell behind the requested {args.rate:,.0f} events/s: "
                "generating and encoding the events is the bottleneck on this machine",
                file=sys.stderr,
            )
        if out is None and args.truth is not None:
            write_atomic(args.truth, lambda fh: fh.write(generated.truth.to_json()))
            print(f"truth {args.truth}")
    return 0
