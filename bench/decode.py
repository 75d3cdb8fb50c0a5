"""``attune bench decode``: what decoding one event costs, step by step, before and after.

The source partitions call :meth:`attune.operators.codec.Codec.decode_event` on
every Kafka message: header check, Avro decode of the datum, the typed
:class:`~attune.operators.events.Event` built and validated (and, with privacy
on, pseudonymised). This benchmark times each step alone and the whole call, on
three corpora encoded with :meth:`~attune.operators.codec.Codec.encode_event`:

- ``generated``: ``generate(GeneratorConfig(users=200, days=2, seed=3))``;
- ``anonymous``: another generator setting (more anonymous users, another
  seed), for another mix of fields;
- ``minimal``: hand-made events of every type without any optional field (no
  context, no category, no price), which real logs also hold.

Rows, per corpus (the same bytes for every row):

- ``fastavro plain`` / ``fastavro return_record_name``: ``schemaless_reader``
  alone on the datum, without and with the record names of unions (what the
  codec's fastavro path asks for);
- ``cavro raw (binary_decode)``: cavro to a plain dict with no project code, the
  decoder of the throughput bench's raw baseline (bench/raw_decode.py): the floor;
- ``cavro (DatumReader.read)``: the fast path's decode alone
  (:mod:`attune.operators.datum_reader`: cavro and the end-of-datum check),
  checked equal to fastavro's records;
- ``decode_event before``: the decoding of the commit before the fast path,
  kept here as the baseline: fastavro, then the Event built with the
  dataclasses' own constructors, then validated;
- ``decode_event, fast path off``: today's codec with ``fast_path=False``
  (fastavro, then today's event building);
- ``decode_event``: the codec as it is now;
- the same three with privacy on (a :class:`~attune.operators.privacy.Pseudonymiser`
  that hashes user ids too);
- the source path, with privacy on, over the corpus as consumed Kafka batches of
  :data:`BATCH` messages (``confluent_kafka.Message`` objects):
  ``source: partition batch, privacy`` is
  :func:`~attune.operators.sources.decode_messages`, a Kafka source partition's
  per-message work (decode, pseudonymise, validate, watermark); ``source: + identity
  routing`` adds the flow's steps up to its keyed streams (:func:`route`: the events
  keyed by user id, and by anonymous id for the identity step).

Timing: every row runs once per repeat, rows interleaved, so that load from
other processes hits all rows alike; the table shows the median (and minimum) of
the per-event time over the repeats, in process CPU time and in wall time, and
events/s that one core sustains at the CPU median (1e6 / CPU us). The machine is
shared, so wall time also counts other processes' turns: CPU time is the figure to
read, and rows of one run are what to compare, not runs. Before anything is
timed, every row's result is checked against ``decode_event`` on every event of
the corpus (the benchmark fails if one differs).

>>> rows = [Row("a", "c", [2.0, 1.0, 3.0], [3.0, 2.0, 4.0], 10)]
>>> print(table(rows).splitlines()[2])
a       c       3.00     2.00     2.00   333,333
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.resources
import io
import json
import os
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import fastavro
from confluent_kafka import Message

from attune.bench import raw_decode
from attune.flows import personalize
from attune.operators.codec import SINGLE_OBJECT_HEADER_LEN, Codec
from attune.operators.datum_reader import reader_for
from attune.operators.events import (
    AddToCart,
    ConsentUpdate,
    Context,
    DeadLetter,
    Dwell,
    ErasureRequest,
    Event,
    EventType,
    Identify,
    LineItem,
    PageView,
    ProductView,
    Purchase,
    RemoveFromCart,
    Search,
    validate_event,
)
from attune.operators.identity import identity_inputs
from attune.operators.privacy import Pseudonymiser
from attune.operators.schemas import CURRENT, EVENT
from attune.operators.settings import Settings
from attune.operators.sources import Watermark, decode_messages
from attune.workload.generator import GeneratorConfig, generate

DEFAULT_REPEATS = 21
DEFAULT_EVENTS = 4000
PRIVACY_KEY = b"attune-bench-decode-pseudonym-key-0123456789"


# --- corpora ---------------------------------------------------------------------------------


def generated(config: GeneratorConfig, limit: int) -> list[Event]:
    """The first ``limit`` events of a generated workload."""
    out: list[Event] = []
    for event in generate(config).events:
        out.append(event)
        if len(out) >= limit:
            break
    return out


T0 = 1_767_571_200_000  # 2026-01-05T00:00Z


def minimal(limit: int) -> list[Event]:
    """Events of every type with no optional field set (``limit`` of them, cycling)."""
    payloads: list[tuple[EventType, Any]] = [
        (EventType.PAGE_VIEW, PageView("HOME")),
        (EventType.PRODUCT_VIEW, ProductView("i00042")),
        (EventType.SEARCH, Search("trail shoes")),
        (EventType.ADD_TO_CART, AddToCart("i00042", 1, 4599, "EUR")),
        (EventType.REMOVE_FROM_CART, RemoveFromCart("i00042", 1)),
        (EventType.PURCHASE, Purchase("o-1", (LineItem("i00042", 1, 4599),), 4599, "EUR")),
        (EventType.DWELL, Dwell(10_000)),
        (EventType.CONSENT, ConsentUpdate(True, True, False)),
        (EventType.IDENTIFY, Identify("LOGIN")),
        (EventType.ERASURE, ErasureRequest("r-1")),
    ]
    out = []
    for i in range(limit):
        event_type, payload = payloads[i % len(payloads)]
        out.append(
            Event(
                event_id=f"e-{i:08d}",
                event_type=event_type,
                event_time=T0 + 1000 * i,
                payload=payload,
                user_id=f"u{i % 97:05d}",
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class Corpus:
    name: str
    events: list[Event]
    data: list[bytes]

    @property
    def mean_bytes(self) -> float:
        return sum(map(len, self.data)) / len(self.data)


def corpora(limit: int) -> list[Corpus]:
    codec = Codec()
    out = []
    for name, events in (
        ("generated", generated(GeneratorConfig(users=200, days=2, seed=3), limit)),
        (
            "anonymous",
            generated(GeneratorConfig(users=400, days=1, seed=17, anonymous_share=0.6), limit),
        ),
        ("minimal", minimal(limit)),
    ):
        out.append(Corpus(name, events, [codec.encode_event(e) for e in events]))
    return out


# --- the baseline: decoding as it was before this benchmark ----------------------------------


def _payload_before(avro_name: str, record: dict[str, Any]) -> Any:
    cls = _PAYLOAD_OF_AVRO_NAME[avro_name]
    if cls is Purchase:
        return Purchase(
            order_id=record["order_id"],
            lines=tuple(LineItem(**line) for line in record["lines"]),
            total_minor=record["total_minor"],
            currency=record["currency"],
        )
    return cls(**record)


_PAYLOADS = (
    PageView,
    ProductView,
    Search,
    AddToCart,
    RemoveFromCart,
    Purchase,
    Dwell,
    ConsentUpdate,
    Identify,
    ErasureRequest,
)
_PAYLOAD_OF_AVRO_NAME = {f"attune.event.{c.__name__}": c for c in _PAYLOADS}
_EVENT_TYPES = {t.value: t for t in EventType}


def decode_event_before(codec: Codec, data: bytes) -> Event | DeadLetter:
    """``Codec.decode_event`` as it was: fastavro with record names, then the dataclasses'
    constructors (the error paths are left out: every benchmark event is valid)."""
    record = codec.decode_record(data, EVENT)
    if isinstance(record, DeadLetter):
        return record
    if codec.privacy is not None:
        codec.privacy(record)
    name, raw_payload = record["payload"]
    ctx = record["context"]
    event = Event(
        event_id=record["event_id"],
        event_type=_EVENT_TYPES[record["event_type"]],
        event_time=record["event_time"],
        payload=_payload_before(name, raw_payload),
        user_id=record["user_id"],
        anonymous_id=record["anonymous_id"],
        session_id=record["session_id"],
        context=Context(**ctx) if ctx is not None else None,
    )
    problem = validate_event(event)
    if problem is not None:
        raise AssertionError(f"benchmark event is invalid: {problem}")
    return event


# --- the rows --------------------------------------------------------------------------------


def _fastavro(return_record_name: bool) -> Callable[[bytes], Any]:
    schema = CURRENT[EVENT].decoding
    reader = fastavro.schemaless_reader
    names = return_record_name

    def decode(data: bytes) -> Any:
        buf = io.BytesIO(data)
        buf.seek(10)
        return reader(buf, schema, None, names, names)

    return decode


def _cavro() -> Callable[[bytes], Any]:
    reader = reader_for(CURRENT[EVENT])
    if reader is None:
        raise SystemExit("cavro is not installed: the fast path is off (pip install cavro)")
    return lambda data: reader.read(data, 10)


def steps() -> list[tuple[str, Callable[[bytes], Any], Callable[[bytes], Any] | None]]:
    """(row name, function of one message, the function whose result it must equal or None)."""
    plain = Codec()
    slow = Codec(fast_path=False)
    pseudonymise = Pseudonymiser(PRIVACY_KEY, "bench", "always").record
    private = Codec(privacy=pseudonymise)
    private_slow = Codec(privacy=pseudonymise, fast_path=False)
    return [
        ("fastavro plain", _fastavro(False), None),
        ("fastavro return_record_name", _fastavro(True), None),
        ("cavro raw (binary_decode)", _cavro_raw(), None),
        ("cavro (DatumReader.read)", _cavro(), _fastavro(True)),
        ("decode_event before", lambda d: decode_event_before(plain, d), plain.decode_event),
        ("decode_event, fast path off", slow.decode_event, plain.decode_event),
        ("decode_event", plain.decode_event, None),
        (
            "decode_event before, privacy",
            lambda d: decode_event_before(private, d),
            private.decode_event,
        ),
        ("decode_event, privacy, fast path off", private_slow.decode_event, private.decode_event),
        ("decode_event, privacy", private.decode_event, None),
    ]


def _cavro_raw() -> Callable[[bytes], Any]:
    """The raw baseline's decoder (bench/raw_decode.py): cavro to a plain dict, no project
    code (no record names of unions, no end-of-datum check)."""
    folder = Path(str(importlib.resources.files("attune.avro")))
    decode = raw_decode.make_decoder("cavro", raw_decode.load_schema(folder))
    return lambda data: decode(data[SINGLE_OBJECT_HEADER_LEN:])


# --- the source path: a Kafka batch to keyed events -----------------------------------------

#: Messages per consumed batch, as :class:`~attune.operators.sources.KafkaEventSource`'s default.
BATCH = 1000
TOPIC = "attune.events"


def messages(corpus: Corpus) -> list[list[Message]]:
    """The corpus as consumed Kafka batches of :data:`BATCH` messages of one partition."""
    msgs = [
        Message(topic=TOPIC, partition=0, offset=i, value=data)
        for i, data in enumerate(corpus.data)
    ]
    return [msgs[i : i + BATCH] for i in range(0, len(msgs), BATCH)]


def _partition(codec: Codec) -> Callable[[list[Message]], list[Event | DeadLetter]]:
    """The per-message work of a Kafka source partition (decode, pseudonymise, validate,
    watermark), on one batch; a fresh watermark per batch, so every pass is alike."""
    lateness = Settings().allowed_lateness_s * 1000

    def read(batch: list[Message]) -> list[Event | DeadLetter]:
        return decode_messages(batch, codec, Watermark(lateness), TOPIC, 0, tail=False)[0]

    return read


def _branch(items: Sequence[Any], predicate: Callable[[Any], bool]) -> tuple[list[Any], list[Any]]:
    """``op.branch``: Bytewax calls the predicate on every item (from Rust)."""
    trues: list[Any] = []
    falses: list[Any] = []
    for item in items:
        (trues if predicate(item) else falses).append(item)
    return trues, falses


def route(items: list[Event | DeadLetter]) -> tuple[list[Any], list[Any], list[Any]]:
    """The flow's steps from the source to its keyed streams (flows/personalize.py), called
    as Bytewax 0.21 calls them: ``branch`` predicates per item, the ``flat_map_batch``
    functions once per batch. Returns (keyed by user, keyed by anonymous id, dead
    letters); the identity step itself is per-user state, not part of the source path."""
    events, dead = _branch(items, personalize._is_event)
    anonymous, identified = _branch(events, personalize._anonymous_only)
    links = identity_inputs(identified)
    by_anonymous = [*personalize._by_anonymous_id(anonymous), *links]
    return personalize._known(identified), by_anonymous, dead


def batch_steps() -> list[tuple[str, Callable[[list[Message]], Any]]]:
    """(row name, function of one consumed batch): the source path, with privacy on as
    every flow source has it."""
    private = Codec(privacy=Pseudonymiser(PRIVACY_KEY, "bench", "always").record)
    read = _partition(private)
    return [
        ("source: partition batch, privacy", read),
        ("source: + identity routing", lambda batch: route(read(batch))),
    ]


def check_source(corpus: Corpus) -> None:
    """The source path's events are ``decode_event``'s (privacy on), and every one is routed."""
    private = Codec(privacy=Pseudonymiser(PRIVACY_KEY, "bench", "always").record)
    rows = batch_steps()
    read, routed = rows[0][1], rows[1][1]
    i = 0
    for batch in messages(corpus):
        items = read(batch)
        for item, msg in zip(items, batch, strict=True):
            if isinstance(item, Event) and item != private.decode_event(msg.value() or b""):
                raise AssertionError(f"{corpus.name} event {i}: the source path differs")
            i += 1
        known, by_anonymous, dead = routed(batch)
        anonymous = sum(1 for _, x in by_anonymous if isinstance(x, Event) and x.user_id is None)
        if len(known) + anonymous + len(dead) != len(items):
            raise AssertionError(f"{corpus.name}: the routing lost events")


# --- timing ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    corpus: str
    step: str
    wall_us: list[float]  # per event, one figure per repeat
    cpu_us: list[float]
    events: int

    @property
    def wall_median(self) -> float:
        return statistics.median(self.wall_us)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_us)

    @property
    def events_per_s(self) -> float:
        """Events per second of one core's CPU time."""
        return 1e6 / self.cpu_median


def check(corpus: Corpus) -> None:
    """Every row whose result is defined must give what ``decode_event`` gives, event by event."""
    for name, fn, expected in steps():
        if expected is None:
            continue
        for i, data in enumerate(corpus.data):
            if fn(data) != expected(data):
                raise AssertionError(f"{corpus.name} event {i}: {name} differs from decode_event")


def measure(corpus: Corpus, repeats: int) -> list[Row]:
    rows = steps()
    wall: dict[str, list[float]] = {name: [] for name, _, _ in rows}
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in rows}
    n = len(corpus.data)
    for _ in range(repeats):
        for name, fn, _ in rows:
            t0, c0 = time.perf_counter(), time.process_time()
            for data in corpus.data:
                fn(data)
            c1, t1 = time.process_time(), time.perf_counter()
            wall[name].append((t1 - t0) / n * 1e6)
            cpu[name].append((c1 - c0) / n * 1e6)
    batches = messages(corpus)
    sources = batch_steps()
    for name, _ in sources:
        wall[name], cpu[name] = [], []
    for _ in range(repeats):
        for name, read in sources:
            t0, c0 = time.perf_counter(), time.process_time()
            for batch in batches:
                read(batch)
            c1, t1 = time.process_time(), time.perf_counter()
            wall[name].append((t1 - t0) / n * 1e6)
            cpu[name].append((c1 - c0) / n * 1e6)
    names = [name for name, _, _ in rows] + [name for name, _ in sources]
    return [Row(corpus.name, name, wall[name], cpu[name], n) for name in names]


def table(rows: Sequence[Row]) -> str:
    head = ("corpus", "step", "CPU us", "CPU min", "wall us", "events/s")
    body = [
        (
            r.corpus,
            r.step,
            f"{r.cpu_median:.2f}",
            f"{min(r.cpu_us):.2f}",
            f"{r.wall_median:.2f}",
            f"{r.events_per_s:,.0f}",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in (head, *body)) for i in range(len(head))]
    lines = [head, tuple("-" * w for w in widths), *body]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    )


def summary(rows: Sequence[Row]) -> list[str]:
    """One line per corpus and privacy setting: decode_event before -> now, CPU medians."""
    by = {(r.corpus, r.step): r for r in rows}
    out = []
    for corpus in dict.fromkeys(r.corpus for r in rows):
        for suffix in ("", ", privacy"):
            before = by.get((corpus, f"decode_event before{suffix}"))
            now = by.get((corpus, f"decode_event{suffix}"))
            if before is None or now is None:
                continue
            out.append(
                f"{corpus}{suffix}: decode_event {before.cpu_median:.2f} -> "
                f"{now.cpu_median:.2f} us CPU ({before.cpu_median / now.cpu_median:.1f}x; "
                f"minima {min(before.cpu_us):.2f} -> {min(now.cpu_us):.2f}), "
                f"{before.events_per_s:,.0f} -> {now.events_per_s:,.0f} events/s per core"
            )
    return out


def profile(corpus: Corpus, top: int) -> str:
    """cProfile of ``Codec.decode_event`` over the corpus, by own time."""
    codec = Codec()
    profiler = cProfile.Profile()
    profiler.enable()
    for data in corpus.data:
        codec.decode_event(data)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


# --- command line ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--events", type=int, default=DEFAULT_EVENTS, help="events per corpus (default %(default)s)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=DEFAULT_REPEATS,
        help="timed passes over each corpus per row; the table shows medians (default %(default)s)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print a cProfile of decode_event over the generated corpus",
    )
    parser.add_argument("--json", type=Path, help="write every figure to this file")


def run(args: argparse.Namespace) -> int:
    all_corpora = corpora(args.events)
    for corpus in all_corpora:
        check(corpus)
        check_source(corpus)
    print(
        "attune bench decode: "
        + ", ".join(
            f"{c.name} {len(c.data):,} events ({c.mean_bytes:.0f} bytes mean)" for c in all_corpora
        )
        + f"; {args.repeats} repeats, medians"
    )
    load_start = os.getloadavg()
    rows: list[Row] = []
    for corpus in all_corpora:
        rows.extend(measure(corpus, args.repeats))
    load_end = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, fastavro "
        f"{metadata.version('fastavro')}, cavro {_version('cavro')}; load average (1, 5, 15 "
        f"min) {[round(x, 2) for x in load_start]} at start, {[round(x, 2) for x in load_end]} "
        "at end"
    )
    print(table(rows))
    print("\n".join(summary(rows)))
    if args.profile:
        print(profile(all_corpora[0], 20))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m attune.bench.decode``: the same as ``attune bench decode``."""
    parser = argparse.ArgumentParser(
        prog="attune bench decode", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
