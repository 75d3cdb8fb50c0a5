"""Write the hostile-input corpus: generated events with bad and abusive messages among them.

The corpus of tests/integration/test_hostile.py (issue 15, item 3), written
deterministically (same bytes for the same arguments) so that no opaque binary
fixture is checked in. Its lines are for Kafka's own console producer with
``Base64LineReader`` (this folder): ``PARTITION KEY VALUE TIMESTAMP``, tab-separated,
key and value base64 (``-`` for null), the timestamp the record's CreateTime.

The valid events are the project's generator's (``GeneratorConfig``; its ground truth
says what the flow must make of them), encoded with the project's codec: they stand for
what a well-behaved collector writes. Each record's timestamp is its receipt time, the
newest event time of the stream so far, as a collector that stamps what it receives
would give (never before the event itself, for an event in order). The hostile messages
are inserted at seeded positions after the first fifth of the stream (a partition's
first event sets its watermark: docs/reliability.md, "Known limits"), each with what
must become of it:

- ``dead``: one dead letter with ``error_class`` (and a reason with ``reason``), at the
  message's own topic, partition and offset;
- ``applied``: a valid event of a user of its own, applied to that user only (events
  dated up to an hour after their receipt among them: their own user takes them, with
  their own times, and no partition's watermark moves past the receipt for them);
- ``deduped``: a repeat of an event id already applied, dropped by the per-user dedupe.

``python tests/data/hostile/make_corpus.py OUT_DIR`` writes ``events.b64``,
``items.b64`` and ``manifest.json`` there.
"""

from __future__ import annotations

import base64
import json
import random
import struct
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from attune.operators.codec import Codec
from attune.operators.events import AddToCart, Event, EventType, PageView, Purchase
from attune.workload.generator import Generated, GeneratorConfig, generate

MINUTE = 60_000
DAY = 24 * 60 * MINUTE
YEAR = 365 * DAY
#: The workload (small: the test runs the whole flow over it).
CONFIG = GeneratorConfig(users=120, days=2, seed=15)
#: Partitions of the test's events topic; messages without a key name their partition.
PARTITIONS = 3
#: Copies of one event id in the duplicate flood.
FLOOD_COPIES = 400
#: Distinct events of the one user who floods.
FLOOD_EVENTS = 3000


@dataclass(frozen=True)
class Hostile:
    """One message of the corpus that is not a generated event, and what must become of it."""

    line: int  # index in events.b64 (0-based)
    kind: str
    expect: str  # "dead", "applied" or "deduped"
    error_class: str | None = None
    reason: str | None = None  # a substring the dead letter's reason must contain
    event_id: str | None = None  # set when the message decodes to an event
    user: str | None = None  # the user an applied event belongs to
    value_b64: str | None = None  # the message value, for dead letters kept raw


#: One message: partition (``None``: by key), key, value, timestamp (epoch ms).
Record = tuple[int | None, bytes | None, bytes | None, int]


@dataclass
class Corpus:
    generated: Generated
    events: list[Record]
    items: list[Record]
    hostile: list[Hostile]


def _single_object(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    """A record of a foreign schema, in Avro single-object encoding (written by fastavro)."""
    parsed = fastavro.parse_schema(schema)
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
    out = bytearray(b"\xc3\x01" + fp)
    import io

    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, record)
    return bytes(out) + buf.getvalue()


def _with_event_type_index(encoded: bytes, index: int) -> bytes:
    """``encoded`` (a single-object event) with its ``event_type`` enum index replaced.

    The datum starts with ``event_id`` (a zigzag varint length, then the bytes), then the
    enum index as a zigzag varint; ids here are short, so both are one byte."""
    header, datum = encoded[:10], encoded[10:]
    id_len = datum[0] >> 1
    assert datum[0] < 0x80 and datum[1 + id_len] < 0x80 and index < 64
    return header + datum[: 1 + id_len] + bytes([index << 1]) + datum[2 + id_len :]


class _Writer:
    """Appends the corpus's records; one method per kind of hostile message."""

    def __init__(
        self, generated: Generated, stream: list[Event], rng: random.Random, seed: int
    ) -> None:
        self.rng = rng
        self.seed = seed
        self.codec = Codec()
        self.generated = generated
        self.events: list[Record] = []
        self.hostile: list[Hostile] = []
        self.received = 0  # the receipt time: the newest generated event time so far
        self.counter = 0
        self.ahead = 0
        self.page = next(e for e in stream if e.event_type is EventType.PAGE_VIEW and e.user_id)
        self.cart = next(e for e in stream if e.event_type is EventType.ADD_TO_CART and e.user_id)
        self.order = next(e for e in stream if e.event_type is EventType.PURCHASE and e.user_id)
        self.sample = self.codec.encode_event(self.page)

    # plumbing

    def new_id(self) -> str:
        self.counter += 1
        return f"hostile-{self.seed}-{self.counter:05d}"

    def put(
        self, partition: int | None, key: bytes | None, value: bytes | None, h: Hostile
    ) -> None:
        self.events.append((partition, key, value, self.received))
        self.hostile.append(replace(h, line=len(self.events) - 1))

    def generated_event(self, ev: Event) -> None:
        self.received = max(self.received, ev.event_time)
        self.events.append((None, ev.user_key.encode(), self.codec.encode_event(ev), self.received))

    def raw(self, kind: str, value: bytes | None, error_class: str, reason: str = "") -> None:
        """A message that does not decode (no key: its partition is named)."""
        b64 = base64.b64encode(value or b"").decode()
        h = Hostile(0, kind, "dead", error_class, reason or None, value_b64=b64)
        self.put(self.rng.randrange(PARTITIONS), None, value, h)

    def event(self, kind: str, ev: Event, expect: str, error_class: str | None = None,
              reason: str | None = None) -> None:  # fmt: skip
        """An event that decodes (keyed by its user, as a collector would)."""
        h = Hostile(0, kind, expect, error_class, reason, ev.event_id, ev.user_id)
        self.put(None, ev.user_key.encode() or None, self.codec.encode_event(ev), h)

    def page_view(self, user: str | None, t: int) -> Event:
        return replace(self.page, event_id=self.new_id(), event_time=t, user_id=user,
                       anonymous_id=None, session_id=f"s-{user}")  # fmt: skip

    # the kinds

    def random_bytes(self, _: object) -> None:
        first = self.rng.choice([b for b in range(256) if b not in (0x00, 0xC3)])
        rest = self.rng.randbytes(self.rng.randrange(8, 300))
        self.raw("random bytes", bytes([first]) + rest, "BAD_MAGIC")

    def truncated(self, cut: int) -> None:
        self.raw(f"truncated at {cut}", self.sample[:cut], "TRUNCATED")

    def wrong_magic(self, magic: bytes) -> None:
        self.raw(f"wrong magic {magic!r}", magic + self.sample[len(magic) :], "BAD_MAGIC")

    def item_record(self, _: object) -> None:
        value = self.codec.encode_item(self.generated.items[0])
        self.raw("another schema: ItemUpdate", value, "UNKNOWN_FINGERPRINT")

    def foreign_record(self, _: object) -> None:
        value = _single_object(FOREIGN_SCHEMA, {"sensor": "t-1", "celsius": 21.5})
        self.raw("another schema: foreign record", value, "UNKNOWN_FINGERPRINT")

    def unknown_schema_id(self, _: object) -> None:
        value = b"\x00" + struct.pack(">I", 7) + self.sample[10:]
        self.raw("Confluent framing, unknown schema id", value, "UNKNOWN_SCHEMA_ID")

    def oversized(self, _: object) -> None:
        big = replace(
            self.page_view("oversized", self.received), payload=PageView(title="x" * 70_000)
        )
        value = self.codec.encode_event(big)
        self.raw("oversized", value, "INVALID_VALUE", "bytes an event may have")

    def null_value(self, _: object) -> None:
        self.raw("null value", None, "TRUNCATED")

    def empty_value(self, _: object) -> None:
        self.raw("empty value", b"", "TRUNCATED")

    def no_user(self, user: str | None) -> None:
        kind = "null user" if user is None else "empty user"
        no_one = "neither user_id nor anonymous_id"
        self.event(kind, self.page_view(user, self.received), "dead", "INVALID_VALUE", no_one)

    def negative_add(self, _: object) -> None:
        payload = self.cart.payload
        assert isinstance(payload, AddToCart)
        ev = replace(self.cart, event_id=self.new_id(), event_time=self.received,
                     user_id="price-user", anonymous_id=None,
                     payload=replace(payload, unit_price_minor=-500))  # fmt: skip
        self.event("negative price: add to cart", ev, "dead", "INVALID_VALUE", "-500 < 0")

    def negative_total(self, _: object) -> None:
        payload = self.order.payload
        assert isinstance(payload, Purchase)
        ev = replace(self.order, event_id=self.new_id(), event_time=self.received,
                     user_id="price-user", anonymous_id=None,
                     payload=replace(payload, total_minor=-1))  # fmt: skip
        self.event("negative price: purchase", ev, "dead", "INVALID_VALUE", "total_minor -1 < 0")

    def enum_out_of_range(self, _: object) -> None:
        ev = self.page_view("enum-user", self.received)
        value = _with_event_type_index(self.codec.encode_event(ev), 40)
        self.raw("unknown enum symbol: index out of range", value, "INVALID_ENUM")

    def enum_unknown(self, _: object) -> None:
        """``UNKNOWN``, the enum's default: what a reader makes of a newer writer's symbol.
        It decodes, then fails validation, so its dead letter has the event's id."""
        ev = self.page_view("enum-user", self.received)
        value = _with_event_type_index(self.codec.encode_event(ev), 10)
        h = Hostile(0, "unknown enum symbol: UNKNOWN", "dead", "INVALID_ENUM", "UNKNOWN",
                    ev.event_id, ev.user_id)  # fmt: skip
        self.put(None, b"enum-user", value, h)

    def dated(self, arg: tuple[str, int]) -> None:
        """Dated at ``t`` (``"epoch"``/``"2100"``) or ahead of its receipt by ``lead``."""
        label, lead = arg
        if label == "epoch 0":
            ev = self.page_view("epoch-zero", 0)
            self.event(label, ev, "dead", "INVALID_VALUE", "outside 2000")
            return
        if label == "after 2100":
            ev = self.page_view("after-2100", 4_102_444_800_000 + DAY)
            self.event(label, ev, "dead", "INVALID_VALUE", "outside 2000")
            return
        self.ahead += 1
        user = f"clock-ahead-{label.replace(' ', '-')}-{self.ahead}"
        ev = self.page_view(user, self.received + lead)
        if lead > 60 * MINUTE:
            self.event(f"ahead by {label}", ev, "dead", "INVALID_VALUE", "clock runs ahead")
        else:
            self.event(f"ahead by {label}", ev, "applied")

    def creep(self, _: object) -> None:
        """One clock creeping ahead: an event at its receipt time (it sets its partition's
        watermark there), then six, each 9 minutes after the one before (within the allowed
        lateness of it), the last 54 minutes ahead of its receipt."""
        for k in range(7):
            ev = self.page_view("clock-creep", self.received + k * 9 * MINUTE)
            self.event("clock creeping ahead", ev, "applied")

    def user_flood(self, _: object) -> None:
        for j in range(FLOOD_EVENTS):
            ev = self.page_view("flood-user", self.received + j)
            self.event("flood of one user", ev, "applied")

    def id_flood(self, ev: Event) -> None:
        """Copies of the generated event just sent (within the allowed lateness of it, so
        that they reach the per-user dedupe rather than being late)."""
        value = self.codec.encode_event(ev)
        h = Hostile(0, "duplicate flood", "deduped", event_id=ev.event_id, user=ev.user_id)
        for _ in range(FLOOD_COPIES):
            self.put(None, ev.user_key.encode(), value, h)


FOREIGN_SCHEMA = {
    "type": "record",
    "name": "Reading",
    "namespace": "org.example.sensors",
    "fields": [{"name": "sensor", "type": "string"}, {"name": "celsius", "type": "double"}],
}


def build(config: GeneratorConfig = CONFIG, seed: int = 1501) -> Corpus:
    """The corpus for ``config`` (deterministic in ``config`` and ``seed``)."""
    rng = random.Random(seed)
    generated = generate(config)
    stream = list(generated.events)
    w = _Writer(generated, stream, rng, seed)
    items: list[Record] = [(None, i.item_id.encode(), w.codec.encode_item(i), i.updated_time)
                           for i in generated.items]  # fmt: skip

    # what follows which generated event (index into the stream)
    n = len(stream)
    slots: dict[int, list[tuple[Callable[[Any], None], Any]]] = {}
    plan: list[tuple[Callable[[Any], None], Any]] = [(w.random_bytes, None)] * 5
    plan += [(w.truncated, cut) for cut in (3, 10, 25, -3)]
    plan += [(w.wrong_magic, m) for m in (b"\xc3\x02", b"\x01", b"{")]
    plan += [(f, None) for f in (w.item_record, w.foreign_record, w.unknown_schema_id,
                                 w.oversized, w.null_value, w.empty_value, w.negative_add,
                                 w.negative_total, w.enum_out_of_range, w.enum_unknown,
                                 w.user_flood, w.creep)]  # fmt: skip
    plan += [(w.no_user, None), (w.no_user, "")]
    plan += [(w.dated, ("epoch 0", 0)), (w.dated, ("after 2100", 0))]
    for label, lead in (("5 minutes", 5 * MINUTE), ("40 minutes", 40 * MINUTE),
                        ("3 days", 3 * DAY), ("5 years", 5 * YEAR)):  # fmt: skip
        plan += [(w.dated, (label, lead))] * 3
    for step in plan:
        slots.setdefault(rng.randrange(n // 5, n - 1), []).append(step)
    exact = set(generated.truth.exact_users())
    original = rng.choice([i for i in range(n // 5, n - 1) if stream[i].user_id in exact])
    slots.setdefault(original, []).insert(0, (w.id_flood, stream[original]))

    for i, ev in enumerate(stream):
        w.generated_event(ev)
        for method, arg in slots.get(i, []):
            method(arg)
    return Corpus(generated, w.events, items, w.hostile)


def _line(partition: int | None, key: bytes | None, value: bytes | None, ts: int) -> str:
    def b64(b: bytes | None) -> str:
        return "-" if b is None else base64.b64encode(b).decode()

    return f"{'-' if partition is None else partition}\t{b64(key)}\t{b64(value)}\t{ts}\n"


def write(out: Path, corpus: Corpus | None = None) -> Corpus:
    """Write ``events.b64``, ``items.b64`` and ``manifest.json`` into ``out``."""
    corpus = corpus or build()
    out.mkdir(parents=True, exist_ok=True)
    (out / "events.b64").write_text("".join(_line(*r) for r in corpus.events))
    (out / "items.b64").write_text("".join(_line(*r) for r in corpus.items))
    manifest = {
        "config": {"users": CONFIG.users, "days": CONFIG.days, "seed": CONFIG.seed},
        "messages": len(corpus.events),
        "hostile": [asdict(h) for h in corpus.hostile],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return corpus


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/data/hostile/make_corpus.py OUT_DIR")
    c = write(Path(sys.argv[1]))
    print(f"{len(c.events)} messages ({len(c.hostile)} hostile) and {len(c.items)} items")
