"""The fast path of ``Codec.decode_event`` gives what the fastavro path gives, always.

The compiled reader (operators/datum_reader.py, cavro) against fastavro's
records, and the whole ``decode_event`` with the fast path on against the same
codec with it off (``fast_path=False``), with and without privacy: on the
generated corpora, on hand-made events without optional fields, on every
single-byte corruption of a few events, on truncations and extra bytes, on
encodings that the two libraries are known to read differently, and over both
framings. ``event_from_record``'s cheap constructors against the dataclasses'
own, including the exceptions of malformed records.
"""

from __future__ import annotations

import copy
import io
import json
import pickle
import random
import struct
from collections.abc import Iterator
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attune.bench.decode import minimal
from attune.operators import datum_reader
from attune.operators.clock import FixedClock
from attune.operators.codec import Codec
from attune.operators.datum_reader import reader_for
from attune.operators.events import (
    PAYLOAD_OF_AVRO_NAME,
    AddToCart,
    ConsentUpdate,
    Context,
    DeadLetter,
    ErrorClass,
    Event,
    EventType,
    LineItem,
    Purchase,
    Search,
    event_from_record,
    event_to_record,
)
from attune.operators.privacy import Pseudonymiser
from attune.operators.schema_registry import SchemaRegistryClient
from attune.operators.schemas import CURRENT, EVENT, SchemaVersion
from attune.workload.generator import GeneratorConfig, generate

T0 = 1_767_571_200_000
KEY = b"attune-unit-test-pseudonym-key-0123456789"


# --- corpora ---------------------------------------------------------------------------------


def _take(config: GeneratorConfig, n: int) -> list[Event]:
    out: list[Event] = []
    for event in generate(config).events:
        out.append(event)
        if len(out) == n:
            break
    return out


@pytest.fixture(scope="module")
def corpus() -> list[Event]:
    """Two generator settings and hand-made events without optional fields."""
    return [
        *_take(GeneratorConfig(users=200, days=2, seed=3), 3000),
        *_take(GeneratorConfig(users=400, days=1, seed=17, anonymous_share=0.6), 1500),
        *minimal(100),
    ]


def test_the_corpus_covers_every_event_type_and_the_optional_fields(corpus: list[Event]) -> None:
    assert {e.event_type for e in corpus} == set(EventType) - {EventType.UNKNOWN}
    assert any(e.context is None for e in corpus) and any(e.context for e in corpus)
    assert any(isinstance(e.payload, Purchase) and len(e.payload.lines) > 1 for e in corpus)


def codecs(**kw: Any) -> tuple[Codec, Codec]:
    """The same codec with the fast path on and off (a fixed clock: dead letters compare)."""
    clock = FixedClock(T0)
    return Codec(clock=clock, **kw), Codec(clock=clock, fast_path=False, **kw)


def fastavro_record(data: bytes, start: int = 10) -> Any:
    buf = io.BytesIO(data)
    buf.seek(start)
    return fastavro.schemaless_reader(buf, CURRENT[EVENT].decoding, None, True, True)


# --- the compiled reader against fastavro ----------------------------------------------------


def test_the_reader_gives_fastavros_records(corpus: list[Event]) -> None:
    reader = reader_for(CURRENT[EVENT])
    assert reader is not None
    codec = Codec()
    for event in corpus:
        data = codec.encode_event(event)
        assert reader.read(data, 10) == fastavro_record(data), event


def test_the_reader_refuses_what_it_cannot_vouch_for() -> None:
    reader = reader_for(CURRENT[EVENT])
    assert reader is not None
    data = Codec().encode_event(_search())
    assert reader.read(data + b"\x00", 10) is None  # bytes left over
    assert reader.read(data[:-1], 10) is None  # truncated
    assert reader.read(b"", 0) is None


def _schema(fields: list[dict[str, Any]]) -> SchemaVersion:
    return SchemaVersion.from_json({"type": "record", "name": "t.R", "fields": fields})


@pytest.mark.parametrize(
    "kind",
    [
        "double",
        "bytes",
        {"type": "map", "values": "string"},
        {"type": "fixed", "name": "t.F", "size": 4},
        ["string", "long"],
        ["null", "string", "long"],
        {"type": "array", "items": ["long", "string"]},
    ],
)
def test_schemas_with_other_types_have_no_reader(kind: Any) -> None:
    assert reader_for(_schema([{"name": "x", "type": kind}])) is None


def test_schemas_of_the_verified_types_have_a_reader() -> None:
    rec = {"type": "record", "name": "t.S", "fields": [{"name": "n", "type": "int"}]}
    fields: list[dict[str, Any]] = [
        {"name": "a", "type": ["null", "string"]},
        {"name": "b", "type": {"type": "array", "items": rec}},
        {"name": "c", "type": [{"type": "record", "name": "t.T", "fields": []}, "t.S"]},
        {"name": "d", "type": {"type": "enum", "name": "t.E", "symbols": ["X", "Y"]}},
        {"name": "e", "type": ["null", "t.E"]},
        {"name": "f", "type": "boolean"},
    ]
    assert reader_for(_schema(fields)) is not None


def test_without_cavro_there_is_no_reader_and_the_codec_still_decodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(datum_reader, "cavro", None)
    monkeypatch.setattr(datum_reader, "_READERS", {})
    assert reader_for(CURRENT[EVENT]) is None
    codec = Codec()
    assert codec.decode_event(codec.encode_event(_search())) == _search()


# --- decode_event, fast path on and off ------------------------------------------------------


def _search(**over: Any) -> Event:
    base: dict[str, Any] = dict(
        event_id="e-1",
        event_type=EventType.SEARCH,
        event_time=T0,
        payload=Search("boots"),
        user_id="u-1",
    )
    return Event(**{**base, **over})


def pseudonymisers() -> Iterator[Pseudonymiser]:
    yield Pseudonymiser(KEY, "t1", "always")
    yield Pseudonymiser(KEY, "t1", "auto")


def test_decode_event_is_the_same_on_both_paths(corpus: list[Event]) -> None:
    fast, slow = codecs()
    for event in corpus:
        data = fast.encode_event(event)
        decoded = fast.decode_event(data)
        assert decoded == event
        assert decoded == slow.decode_event(data)


@pytest.mark.parametrize("pseudonymiser", list(pseudonymisers()), ids=["always", "auto"])
def test_pseudonymised_events_are_the_same_on_both_paths(
    corpus: list[Event], pseudonymiser: Pseudonymiser
) -> None:
    fast, slow = codecs(privacy=pseudonymiser.record)
    changed = 0
    for event in corpus:
        data = fast.encode_event(event)
        decoded = fast.decode_event(data)
        assert decoded == slow.decode_event(data)
        assert decoded == pseudonymiser.event(event)
        changed += decoded != event
    assert changed > len(corpus) // 2


def test_the_fast_path_is_taken_for_current_events_and_only_then(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    codec = Codec()
    good = codec.encode_event(_search())
    slow_calls: list[bytes] = []
    original = Codec.decode_record

    def spy(self: Codec, data: bytes, expect: str, source: Any = None) -> Any:
        slow_calls.append(data)
        return original(self, data, expect, source)

    monkeypatch.setattr(Codec, "decode_record", spy)
    assert codec.decode_event(good) == _search()
    assert slow_calls == []
    for bad in (good + b"\x00", good[:-1], b"", b"\xc3\x01" + bytes(8) + good[10:]):
        assert isinstance(codec.decode_event(bad), DeadLetter)
    assert len(slow_calls) == 4


def test_a_pickled_codec_keeps_its_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    codec = pickle.loads(pickle.dumps(Codec(privacy=Pseudonymiser(KEY, "t1", "always").record)))
    data = codec.encode_event(_search(user_id="ann@example.com"))
    expected = Codec(privacy=Pseudonymiser(KEY, "t1", "always").record).decode_event(data)
    monkeypatch.setattr(Codec, "decode_record", None)  # only the fast path works
    assert codec.decode_event(data) == expected


def test_a_new_current_schema_turns_the_fast_path_off(monkeypatch: pytest.MonkeyPatch) -> None:
    codec = Codec()
    data = codec.encode_event(_search())
    newer = json.loads(CURRENT[EVENT].canonical)
    newer["fields"].append({"name": "extra", "type": ["null", "string"], "default": None})
    monkeypatch.setitem(CURRENT, EVENT, SchemaVersion.from_json(newer))
    slow_calls: list[bytes] = []
    original = Codec.decode_record

    def spy(self: Codec, data: bytes, expect: str, source: Any = None) -> Any:
        slow_calls.append(data)
        return original(self, data, expect, source)

    monkeypatch.setattr(Codec, "decode_record", spy)
    assert codec.decode_event(data) == _search()
    assert slow_calls == [data]


def _mutations(data: bytes) -> Iterator[bytes]:
    """Every single-byte change to a few values, every truncation, and extra bytes."""
    for pos in range(10, len(data)):
        for value in {0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF, data[pos] ^ 0x01}:
            yield data[:pos] + bytes([value]) + data[pos + 1 :]
        yield data[:pos]
    for extra in (b"\x00", b"\x02", b"\x00" * 16, b"junk"):
        yield data + extra


def test_corrupted_bytes_give_the_same_result_on_both_paths(corpus: list[Event]) -> None:
    fast, slow = codecs()
    with_context = [e for e in corpus if e.context is not None]
    purchase = next(e for e in corpus if isinstance(e.payload, Purchase))
    picked = [*with_context[:3], purchase, *minimal(10)]
    outcomes: set[str] = set()
    for event in picked:
        for data in _mutations(fast.encode_event(event)):
            got = fast.decode_event(data)
            assert got == slow.decode_event(data), data.hex()
            outcomes.add(got.error_class if isinstance(got, DeadLetter) else "event")
    # the corruptions reach many kinds of outcome, decoded events among them
    assert {"event", ErrorClass.TRUNCATED, ErrorClass.TRAILING_BYTES} <= outcomes
    assert len(outcomes) >= 6


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_random_corruptions_give_the_same_result_on_both_paths(data: st.DataObject) -> None:
    fast, slow = codecs(privacy=Pseudonymiser(KEY, "t1", "always").record)
    events = minimal(10) + _take(GeneratorConfig(users=5, days=1, seed=1), 20)
    raw = bytearray(fast.encode_event(data.draw(st.sampled_from(events))))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(10, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(10, len(raw) + 3))
    message = bytes(raw[:cut]) + bytes(max(0, cut - len(raw)))
    assert fast.decode_event(message) == slow.decode_event(message)


def _zigzag(n: int) -> bytes:
    z = n << 1 if n >= 0 else (-n << 1) - 1
    out = bytearray()
    while True:
        byte, z = z & 0x7F, z >> 7
        out.append(byte | (0x80 if z else 0))
        if not z:
            return bytes(out)


def _encode_with(event: Event, replace: tuple[bytes, bytes]) -> bytes:
    data = Codec().encode_event(event)
    old, new = replace
    assert data.count(old) == 1
    return data.replace(old, new)


@pytest.mark.parametrize(
    ("event", "replace"),
    [
        # an int field beyond 32 bits: fastavro reads 64 (cavro alone would cut it to 0)
        (
            _search(event_type=EventType.ADD_TO_CART, payload=AddToCart("i-1", 7, 1, "EUR")),
            (b"i-1" + _zigzag(7), b"i-1" + _zigzag(2**32)),
        ),
        # a boolean byte other than 0 or 1 (both read true)
        (
            _search(event_type=EventType.CONSENT, payload=ConsentUpdate(True, None, None)),
            (b"\x02\x01\x00\x00", b"\x02\x05\x00\x00"),
        ),
        # a negative union index: fastavro takes it as a Python index, cavro refuses
        (_search(session_id="s-9"), (b"\x02\x06s-9", b"\x01\x06s-9")),
        # an over-long varint for a small number (10 bytes for 5)
        (_search(), (b"\x02\x06u-1", b"\x02\x86" + b"\x80" * 8 + b"\x00u-1")),
        # an array in one block with a negative count and a byte size: cavro refuses
        (
            _search(
                event_type=EventType.PURCHASE,
                payload=Purchase("o-1", (LineItem("i-1", 1, 5),), 5, "EUR"),
            ),
            (b"\x02\x06i-1\x02\x0a\x00\x00", b"\x01\x0e\x06i-1\x02\x0a\x00\x00"),
        ),
    ],
    ids=["int-beyond-32-bits", "boolean-5", "negative-union-index", "overlong-varint", "array"],
)
def test_encodings_the_libraries_read_differently_give_the_same_result(
    event: Event, replace: tuple[bytes, bytes]
) -> None:
    data = _encode_with(event, replace)
    fast, slow = codecs()
    expected = slow.decode_event(data)
    assert isinstance(expected, Event)  # fastavro reads each of them
    assert fast.decode_event(data) == expected


def test_an_int_beyond_32_bits_reaches_the_event() -> None:
    data = _encode_with(
        _search(event_type=EventType.ADD_TO_CART, payload=AddToCart("i-1", 7, 1, "EUR")),
        (b"i-1" + _zigzag(7), b"i-1" + _zigzag(2**40)),
    )
    decoded = Codec().decode_event(data)
    assert isinstance(decoded, Event) and isinstance(decoded.payload, AddToCart)
    assert decoded.payload.quantity == 2**40


def test_invalid_events_are_the_same_dead_letters_on_both_paths() -> None:
    bad = [
        _search(event_id=""),
        _search(user_id=None),
        _search(event_time=5),
        _search(event_type=EventType.ADD_TO_CART, payload=AddToCart("i-1", 0, 1, "EUR")),
        _search(event_type=EventType.ADD_TO_CART, payload=AddToCart("i-1", 1, 1, "euro")),
        _search(event_type=EventType.PAGE_VIEW),  # type and payload disagree
        _search(event_type=EventType.UNKNOWN),
    ]
    for pseudonymiser in (None, *pseudonymisers()):
        privacy = pseudonymiser.record if pseudonymiser is not None else None
        fast, slow = codecs(privacy=privacy)
        for event in bad:
            data = fast.encode(EVENT, event_to_record(event))
            got = fast.decode_event(data)
            assert isinstance(got, DeadLetter)
            assert got == slow.decode_event(data)


# --- Confluent framing -----------------------------------------------------------------------


class FakeRegistry(SchemaRegistryClient):
    """A registry in memory: ids from 1, by schema text."""

    def __init__(self) -> None:
        super().__init__("http://registry.test")
        self.schemas: dict[int, str] = {}

    def register(self, subject: str, schema_str: str) -> int:
        for schema_id, text in self.schemas.items():
            if text == schema_str:
                return schema_id
        self.schemas[len(self.schemas) + 1] = schema_str
        return len(self.schemas)

    def schema_for_id(self, schema_id: int) -> str | None:
        return self.schemas.get(schema_id)


def test_confluent_framed_events_take_the_fast_path(
    corpus: list[Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = FakeRegistry()
    registry.register("other", json.dumps({"type": "record", "name": "t.X", "fields": []}))
    writer = Codec(registry=registry)
    messages = [writer.encode_event(e) for e in corpus[:300]]
    assert messages[0][:5] == struct.pack(">bI", 0, 2)
    fresh = Codec(registry=registry)  # learns the id from the registry
    slow = Codec(registry=registry, fast_path=False)
    expected = [slow.decode_event(m) for m in messages]
    assert expected == corpus[:300]
    assert [fresh.decode_event(m) for m in messages] == expected  # first: through fastavro
    monkeypatch.setattr(Codec, "decode_record", None)  # from now on only the fast path works
    assert [fresh.decode_event(m) for m in messages] == expected
    assert [writer.decode_event(m) for m in messages] == expected


def test_confluent_ids_of_other_schemas_take_the_fastavro_path() -> None:
    registry = FakeRegistry()
    older = json.loads(CURRENT[EVENT].canonical)
    older["fields"] = [f for f in older["fields"] if f["name"] != "session_id"]
    schema_id = registry.register(EVENT, json.dumps(older))
    record = event_to_record(_search())
    del record["session_id"]
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, schema_id))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(older), record)
    fast = Codec(registry=registry)
    assert fast.decode_event(buf.getvalue()) == _search()
    assert fast._confluent_event_headers == set()


# --- event_from_record: cheap constructors, the same results and errors ----------------------


def event_from_record_by_constructors(record: dict[str, Any]) -> Event:
    """``event_from_record`` as it was: the dataclasses' own constructors."""
    name, raw = record["payload"]
    cls = PAYLOAD_OF_AVRO_NAME[name]
    if cls is Purchase:
        payload: Any = Purchase(
            order_id=raw["order_id"],
            lines=tuple(LineItem(**line) for line in raw["lines"]),
            total_minor=raw["total_minor"],
            currency=raw["currency"],
        )
    else:
        payload = cls(**raw)
    ctx = record["context"]
    return Event(
        event_id=record["event_id"],
        event_type={t.value: t for t in EventType}[record["event_type"]],
        event_time=record["event_time"],
        payload=payload,
        user_id=record["user_id"],
        anonymous_id=record["anonymous_id"],
        session_id=record["session_id"],
        context=Context(**ctx) if ctx is not None else None,
    )


def test_event_from_record_builds_what_the_constructors_build(corpus: list[Event]) -> None:
    codec = Codec()
    for event in corpus:
        record = fastavro_record(codec.encode_event(event))
        built = event_from_record(copy.deepcopy(record))
        assert built == event_from_record_by_constructors(record) == event
        assert type(built.payload) is type(event.payload)


def _outcome(build: Any, record: dict[str, Any]) -> Any:
    try:
        return build(copy.deepcopy(record))
    except Exception as exc:
        return type(exc), str(exc)


def _malformed(record: dict[str, Any], rng: random.Random) -> Iterator[dict[str, Any]]:
    """Records with a key missing, added, or a value of the wrong shape, at every level."""

    def paths(node: Any, prefix: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
        if isinstance(node, dict):
            for key, value in node.items():
                yield (*prefix, key)
                yield from paths(value, (*prefix, key))
        elif isinstance(node, tuple | list):
            for i, value in enumerate(node):
                yield from paths(value, (*prefix, i))

    def parent(root: Any, path: tuple[Any, ...]) -> Any:
        for step in path[:-1]:
            root = root[step]
        return root

    for path in paths(record, ()):
        for change in ("drop", "add", "none", "list", "text"):
            out = copy.deepcopy(record)
            out["payload"] = list(out["payload"])
            holder = parent(out, path)
            if change == "drop":
                del holder[path[-1]]
            elif change == "add":
                holder[f"extra{rng.randint(0, 9)}"] = 1
            else:
                holder[path[-1]] = {"none": None, "list": [], "text": "x"}[change]
            yield out
    for key, value in (
        ("payload", ("attune.event.Nope", {})),
        ("payload", ("attune.event.Search",)),
        ("payload", 5),
        ("event_type", "NOPE"),
        ("event_type", ["SEARCH"]),
        ("context", ["x"]),
    ):
        yield {**copy.deepcopy(record), key: value}


def test_malformed_records_fail_as_the_constructors_fail(corpus: list[Event]) -> None:
    rng = random.Random(5)
    codec = Codec()
    picked = {type(e.payload): e for e in corpus if e.context is not None}
    seen_errors = 0
    for event in picked.values():
        record = fastavro_record(codec.encode_event(event))
        for bad in _malformed(record, rng):
            expected = _outcome(event_from_record_by_constructors, bad)
            assert _outcome(event_from_record, bad) == expected, bad
            seen_errors += isinstance(expected, tuple)
    assert seen_errors > 100
