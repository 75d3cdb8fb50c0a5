"""Codec: round trips, one test per corrupt-input class, schema evolution, wire formats."""

from __future__ import annotations

import copy
import io
import json
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attune.operators import schemas, snapshots
from attune.operators.clock import FixedClock
from attune.operators.codec import Codec
from attune.operators.container import read_container, read_events_file, write_container
from attune.operators.events import (
    AddToCart,
    ConsentUpdate,
    Context,
    DeadLetter,
    Dwell,
    ErasureRequest,
    ErrorClass,
    Event,
    EventType,
    Identify,
    ItemUpdate,
    LineItem,
    PageView,
    ProductView,
    Purchase,
    RemoveFromCart,
    Search,
    SegmentChange,
    Source,
    Trigger,
    event_to_record,
)
from attune.operators.schema_registry import RegistryUnavailableError, SchemaRegistryClient
from attune.operators.schemas import CURRENT, EVENT, schema_json

T0 = 1_767_571_200_000  # 2026-01-05T00:00Z

# --- strategies ------------------------------------------------------------------------------

text = st.text(max_size=20)
opt_text = st.none() | text
ids = st.text(min_size=1, max_size=12)
money = st.integers(min_value=0, max_value=10**9)
qty = st.integers(min_value=1, max_value=50)
currency = st.sampled_from(["EUR", "USD", "GBP"])
category = st.none() | st.sampled_from(["shoes/running", "electronics/phones", "home/garden"])
line = st.builds(LineItem, item_id=ids, quantity=qty, unit_price_minor=money, category=category)

payloads: dict[EventType, st.SearchStrategy[Any]] = {
    EventType.PAGE_VIEW: st.builds(
        PageView,
        page_type=st.sampled_from(["HOME", "CATEGORY", "OTHER"]),
        category=category,
        title=opt_text,
    ),
    EventType.PRODUCT_VIEW: st.builds(
        ProductView,
        item_id=ids,
        category=category,
        price_minor=st.none() | money,
        currency=st.none() | currency,
    ),
    EventType.SEARCH: st.builds(
        Search,
        query=text,
        category=category,
        results_count=st.none() | st.integers(0, 1000),
    ),
    EventType.ADD_TO_CART: st.builds(
        AddToCart,
        item_id=ids,
        quantity=qty,
        unit_price_minor=money,
        currency=currency,
        category=category,
    ),
    EventType.REMOVE_FROM_CART: st.builds(RemoveFromCart, item_id=ids, quantity=qty),
    EventType.PURCHASE: st.builds(
        Purchase,
        order_id=ids,
        lines=st.lists(line, min_size=1, max_size=4).map(tuple),
        total_minor=money,
        currency=currency,
    ),
    EventType.DWELL: st.builds(
        Dwell,
        dwell_ms=st.integers(0, 10**7),
        item_id=st.none() | ids,
        page_view_id=st.none() | ids,
    ),
    EventType.CONSENT: st.builds(
        ConsentUpdate,
        analytics=st.none() | st.booleans(),
        personalization=st.none() | st.booleans(),
        marketing=st.none() | st.booleans(),
        source=opt_text,
    ),
    EventType.IDENTIFY: st.builds(
        Identify,
        method=st.sampled_from(["LOGIN", "SIGNUP", "OTHER"]),
        email=opt_text,
        phone=opt_text,
    ),
    EventType.ERASURE: st.builds(ErasureRequest, request_id=ids, reason=opt_text),
}
contexts = st.none() | st.builds(
    Context,
    device=st.none() | st.sampled_from(["DESKTOP", "MOBILE", "TABLET", "OTHER"]),
    channel=st.none() | st.sampled_from(["WEB", "APP", "EMAIL", "OTHER"]),
    country=st.none() | st.sampled_from(["DE", "FR", "US"]),
    page_url=opt_text,
    ip=opt_text,
)


@st.composite
def events(draw: st.DrawFn) -> Event:
    etype = draw(st.sampled_from(list(payloads)))
    return Event(
        event_id=draw(ids),
        event_type=etype,
        event_time=draw(st.integers(T0, T0 + 10**10)),
        payload=draw(payloads[etype]),
        user_id=draw(ids),  # identify requires a user id; others accept either
        anonymous_id=draw(st.none() | ids),
        session_id=draw(st.none() | ids),
        context=draw(contexts),
    )


def make_event(**over: Any) -> Event:
    base: dict[str, Any] = dict(
        event_id="e-1",
        event_type=EventType.ADD_TO_CART,
        event_time=T0,
        user_id="u-1",
        payload=AddToCart(item_id="i-1", quantity=2, unit_price_minor=1999, currency="EUR"),
    )
    base.update(over)
    return Event(**base)


@pytest.fixture
def codec() -> Codec:
    return Codec(clock=FixedClock(T0 + 5))


# --- round trips -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(events())
def test_every_event_round_trips_through_single_object_encoding(ev: Event) -> None:
    c = Codec()
    data = c.encode_event(ev)
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == CURRENT[EVENT].fingerprint
    assert c.decode_event(data) == ev


def test_outputs_round_trip(codec: Codec) -> None:
    trig = Trigger(
        trigger_id="t1",
        kind="cart_abandoned",
        user_id="u1",
        cause_event_time=T0,
        emit_time=T0 + 1,
        reason="cart left 30 min",
        cart_lines=(LineItem("i", 1, 100),),
        cart_value_minor=100,
        currency="EUR",
        scores={"propensity": 0.7},
        attributes={"offer": "TENOFF"},
    )
    seg = SegmentChange("u1", "frequent_buyer", "ENTERED", "RULE", T0, T0 + 1, "3 orders")
    dead = codec.dead_letter(b"\x01\x02", ErrorClass.BAD_MAGIC, "x", Source("t", 1, 2), "e")
    item = ItemUpdate(
        "i1", "Shoe", ("shoes", "running"), 5999, "EUR", True, T0, T0, "Acme", ("sale",)
    )
    assert codec.decode_trigger(codec.encode_output(trig)) == trig
    assert codec.decode_segment_change(codec.encode_output(seg)) == seg
    assert codec.decode_dead_letter(codec.encode_output(dead)) == dead
    assert codec.decode_item(codec.encode_item(item)) == item


def test_fingerprint_is_little_endian_crc64_avro() -> None:
    # Reference value from the Avro spec's Java implementation: fingerprint64("null").
    fp = fastavro.schema.fingerprint('"null"', "CRC-64-AVRO")
    assert bytes.fromhex(fp) == (0x63DD24E7CC258F8A).to_bytes(8, "little")


# --- corrupt inputs: one test per class ------------------------------------------------------


def good_bytes(codec: Codec) -> bytes:
    return codec.encode_event(make_event())


def assert_dead(result: object, error_class: ErrorClass, *needles: str) -> DeadLetter:
    assert isinstance(result, DeadLetter), result
    assert result.error_class is error_class, result.reason
    for n in needles:
        assert n in result.reason, result.reason
    return result


def test_truncated_bytes_name_the_field(codec: Codec) -> None:
    data = good_bytes(codec)
    dead = assert_dead(codec.decode_event(data[:-3]), ErrorClass.TRUNCATED, "truncated", "payload")
    assert dead.original == data[:-3]
    assert dead.dead_time == T0 + 5


def test_truncated_header(codec: Codec) -> None:
    assert_dead(codec.decode_event(b"\xc3\x01\x00\x01"), ErrorClass.TRUNCATED, "10-byte")
    assert_dead(codec.decode_event(b""), ErrorClass.TRUNCATED, "empty")


def test_wrong_magic(codec: Codec) -> None:
    assert_dead(codec.decode_event(b'{"json": true}'), ErrorClass.BAD_MAGIC, "7b22", "c301")


def test_unknown_fingerprint(codec: Codec) -> None:
    data = bytearray(good_bytes(codec))
    data[2:10] = b"\x01" * 8
    assert_dead(codec.decode_event(bytes(data)), ErrorClass.UNKNOWN_FINGERPRINT, "0101010101010101")


def test_unknown_schema_id_without_registry(codec: Codec) -> None:
    data = b"\x00" + struct.pack(">I", 42) + good_bytes(codec)[10:]
    assert_dead(codec.decode_event(data), ErrorClass.UNKNOWN_SCHEMA_ID, "42", "no schema registry")


def test_invalid_enum_index(codec: Codec) -> None:
    ev = make_event(event_id="e")  # event_id is 1 byte long: the enum is at datum offset 2
    data = bytearray(codec.encode_event(ev))
    data[10 + 2] = 0x7E  # zigzag 63: beyond the 11 EventType symbols
    assert_dead(codec.decode_event(bytes(data)), ErrorClass.INVALID_ENUM, "event_type", "63")


def test_invalid_union_branch(codec: Codec) -> None:
    ev = make_event(event_id="e", user_id=None, anonymous_id="a")
    data = bytearray(codec.encode_event(ev))
    # datum: event_id(2) event_type(1) event_time(6) user_id union index at offset 9
    data[10 + 9] = 0x10  # branch 8 of a 2-branch union
    assert_dead(codec.decode_event(bytes(data)), ErrorClass.INVALID_UNION, "user_id", "8")


def test_trailing_bytes(codec: Codec) -> None:
    assert_dead(codec.decode_event(good_bytes(codec) + b"\x00\x00"), ErrorClass.TRAILING_BYTES)


def test_invalid_utf8(codec: Codec) -> None:
    data = bytearray(good_bytes(codec))
    data[11] = 0xFF  # first byte of event_id's text
    assert_dead(codec.decode_event(bytes(data)), ErrorClass.MALFORMED, "UTF-8", "event_id")


@pytest.mark.parametrize(
    ("event", "needle"),
    [
        (make_event(event_id=""), "event_id is empty"),
        (make_event(user_id=None, anonymous_id=None), "neither user_id"),
        (make_event(event_time=5), "outside"),
        (make_event(payload=AddToCart("i", 0, 100, "EUR")), "quantity 0"),
        (make_event(payload=AddToCart("i", 1, -1, "EUR")), "unit_price_minor -1"),
        (make_event(payload=AddToCart("i", 1, 1, "euro")), "ISO 4217"),
        (make_event(payload=Search("boots")), "does not match payload"),
        (
            make_event(event_type=EventType.PURCHASE, payload=Purchase("o", (), 0, "EUR")),
            "no lines",
        ),
        (
            make_event(
                event_type=EventType.IDENTIFY, payload=Identify(), user_id=None, anonymous_id="a"
            ),
            "identify without user_id",
        ),
    ],
)
def test_invalid_values_are_dead_lettered(codec: Codec, event: Event, needle: str) -> None:
    dead = assert_dead(
        codec.decode_event(codec.encode_event(event)), ErrorClass.INVALID_VALUE, needle
    )
    assert dead.event_id == event.event_id


def test_source_position_is_kept(codec: Codec) -> None:
    dead = codec.decode_event(b"nope", Source("attune.events", 2, 77))
    assert isinstance(dead, DeadLetter)
    assert (dead.source_topic, dead.source_partition, dead.source_offset) == (
        "attune.events",
        2,
        77,
    )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(data: bytes) -> None:
    result = Codec().decode_event(data)
    assert isinstance(result, Event | DeadLetter)


@settings(max_examples=300, deadline=None)
@given(events(), st.data())
def test_corrupted_events_never_raise(ev: Event, data: st.DataObject) -> None:
    c = Codec()
    raw = bytearray(c.encode_event(ev))
    pos = data.draw(st.integers(10, len(raw) - 1))
    raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(10, len(raw)))
    result = c.decode_event(bytes(raw[:cut]))
    assert isinstance(result, Event | DeadLetter)


# --- schema evolution ------------------------------------------------------------------------


def event_schema_json() -> dict[str, Any]:
    out: dict[str, Any] = json.loads(schema_json(EVENT))
    return out


def v1_schema() -> dict[str, Any]:
    """The Event schema as an older client wrote it: no ``session_id`` field yet."""
    s = event_schema_json()
    s["fields"] = [f for f in s["fields"] if f["name"] != "session_id"]
    return s


def v3_schema() -> dict[str, Any]:
    """A newer Event schema with an added optional field the current reader does not know."""
    s = event_schema_json()
    s["fields"].append(
        {
            "name": "experiment",
            "type": ["null", "string"],
            "default": None,
            "doc": "A/B experiment id.",
        }
    )
    return s


def test_old_writer_reads_with_current_reader() -> None:
    c = Codec()
    v1 = c.register_writer(v1_schema())
    assert v1.fingerprint != CURRENT[EVENT].fingerprint
    ev = make_event(session_id=None)
    record = event_to_record(ev)
    del record["session_id"]
    result = c.decode_event(c.encode(EVENT, record, writer=v1))
    assert result == ev  # session_id took its default


def test_new_writer_reads_with_current_reader() -> None:
    c = Codec()
    v3 = c.register_writer(v3_schema())
    record = event_to_record(make_event(session_id="s"))
    record["experiment"] = "exp-7"
    assert c.decode_event(c.encode(EVENT, record, writer=v3)) == make_event(session_id="s")


def test_current_writer_reads_with_old_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    """A consumer still on v1 reads what today's writer wrote (the added field is skipped)."""
    writer = Codec()
    data = writer.encode_event(make_event(session_id="s"))
    reader = Codec()  # knows today's schema as a writer schema, by fingerprint
    monkeypatch.setitem(CURRENT, EVENT, schemas.SchemaVersion.from_json(v1_schema()))
    record = reader.decode_record(data, EVENT)
    assert isinstance(record, dict)
    assert "session_id" not in record
    assert record["event_id"] == "e-1"


def test_writer_missing_a_required_field_is_a_dead_letter() -> None:
    c = Codec()
    old = event_schema_json()
    old["fields"] = [f for f in old["fields"] if f["name"] != "event_id"]
    v0 = c.register_writer(old)
    record = event_to_record(make_event())
    del record["event_id"]
    assert_dead(
        c.decode_event(c.encode(EVENT, record, writer=v0)),
        ErrorClass.MISSING_FIELD,
        "missing required field",
    )


def test_newer_event_type_is_dead_lettered_not_defaulted_silently() -> None:
    """A writer with a new EventType symbol: the reader's enum default UNKNOWN is not data."""
    c = Codec()
    newer = copy.deepcopy(event_schema_json())
    etype = next(f for f in newer["fields"] if f["name"] == "event_type")
    etype["type"]["symbols"] = [*etype["type"]["symbols"], "REVIEW"]
    v = c.register_writer(newer)
    record = event_to_record(make_event(event_type=EventType.SEARCH, payload=Search("q")))
    record["event_type"] = "REVIEW"
    assert_dead(
        c.decode_event(c.encode(EVENT, record, writer=v)), ErrorClass.INVALID_ENUM, "UNKNOWN"
    )


def test_logical_types_sit_inside_the_type_object() -> None:
    """A logicalType written at field level is silently ignored by Avro: catch it."""
    folder = Path(schemas.__file__).resolve().parents[1] / "avro"
    offenders = []
    for path in folder.glob("*.avsc"):
        for f in json.loads(path.read_text())["fields"]:
            if "logicalType" in f:
                offenders.append(f"{path.name}:{f['name']}")
    assert offenders == []
    ev_fields = {f["name"]: f for f in event_schema_json()["fields"]}
    assert ev_fields["event_time"]["type"]["logicalType"] == "timestamp-millis"


def test_every_schema_field_is_documented_and_optionals_default_to_null() -> None:
    folder = Path(schemas.__file__).resolve().parents[1] / "avro"
    for path in folder.glob("*.avsc"):
        doc = json.loads(path.read_text())
        assert doc.get("doc"), path.name
        assert path.stem == f"{doc['namespace']}.{doc['name']}"
        for f in doc["fields"]:
            assert f.get("doc"), f"{path.name}:{f['name']}"
            if isinstance(f["type"], list) and f["type"][0] == "null":
                assert "default" in f and f["default"] is None, f"{path.name}:{f['name']}"


# --- Confluent wire format against a schema registry -----------------------------------------


class _Registry(BaseHTTPRequestHandler):
    """The two endpoints of the Confluent registry REST API that the codec uses."""

    schemas: dict[int, str] = {}

    def do_GET(self) -> None:
        sid = int(self.path.rsplit("/", 1)[1])
        if sid in self.schemas:
            self._send(200, {"schema": self.schemas[sid]})
        else:
            self._send(404, {"error_code": 40403, "message": "Schema not found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        for sid, text in self.schemas.items():
            if text == body["schema"]:
                self._send(200, {"id": sid})
                return
        sid = len(self.schemas) + 1
        self.schemas[sid] = body["schema"]
        self._send(200, {"id": sid})

    def _send(self, code: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def registry_url() -> Iterator[str]:
    _Registry.schemas = {}
    server = HTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_confluent_wire_format_round_trip(registry_url: str) -> None:
    c = Codec(registry=SchemaRegistryClient(registry_url))
    ev = make_event()
    data = c.encode_event(ev)
    assert data[0] == 0
    schema_id = struct.unpack(">I", data[1:5])[0]
    assert _Registry.schemas[schema_id] == schema_json(EVENT)
    fresh = Codec(registry=SchemaRegistryClient(registry_url))  # learns the id from the registry
    assert fresh.decode_event(data) == ev
    # a single-object reader without a registry still reads single-object bytes
    assert fresh.decode_event(Codec().encode_event(ev)) == ev


def test_unknown_schema_id_in_registry(registry_url: str) -> None:
    c = Codec(registry=SchemaRegistryClient(registry_url))
    data = b"\x00" + struct.pack(">I", 999) + b"\x02e"
    assert_dead(c.decode_event(data), ErrorClass.UNKNOWN_SCHEMA_ID, "999", "unknown")


def test_unreachable_registry_is_an_operator_error() -> None:
    c = Codec(registry=SchemaRegistryClient("http://127.0.0.1:9", timeout_s=1))
    with pytest.raises(RegistryUnavailableError, match="ATTUNE_SCHEMA_REGISTRY_URL"):
        c.encode_event(make_event())


# --- container files -------------------------------------------------------------------------


def write_file(path: Path, evs: list[Event], codec_name: str = "null") -> None:
    with path.open("wb") as fh:
        write_container(fh, EVENT, (event_to_record(e) for e in evs), b"s" * 16, codec_name)


def many(n: int) -> list[Event]:
    return [make_event(event_id=f"e{i:05d}", event_time=T0 + i) for i in range(n)]


@pytest.mark.parametrize("codec_name", ["null", "deflate"])
def test_container_round_trip_and_fastavro_reads_it(tmp_path: Path, codec_name: str) -> None:
    evs = many(500)
    path = tmp_path / "e.avro"
    write_file(path, evs, codec_name)
    assert [v for _, v in read_events_file(path)] == evs
    with path.open("rb") as fh:
        assert sum(1 for _ in fastavro.reader(fh)) == 500


def test_container_with_a_corrupt_record_yields_dead_letters(tmp_path: Path) -> None:
    evs = many(3000)  # several blocks
    path = tmp_path / "e.avro"
    write_file(path, evs)
    raw = bytearray(path.read_bytes())
    # Break the EventType enum of one record in the middle of the file.
    needle = b"\x0ce01500"  # event_id "e01500" as Avro string (zigzag length 6 = 0x0c)
    at = raw.index(needle)
    raw[at + len(needle)] = 0x7E
    path.write_bytes(bytes(raw))
    results = [v for _, v in read_events_file(path)]
    dead = [r for r in results if isinstance(r, DeadLetter)]
    good = [r for r in results if isinstance(r, Event)]
    assert len(dead) == 1
    assert dead[0].error_class is ErrorClass.INVALID_ENUM
    assert "record 1500" in dead[0].reason and str(path) in dead[0].reason
    assert good[:1500] == evs[:1500]  # everything before the corrupt record survives
    assert good[-1] == evs[-1]  # reading resumed after the broken block
    lost = [c.lost for c in read_container(path, EVENT) if isinstance(c.value, DeadLetter)]
    assert len(good) + sum(lost) == 3000  # every record is either read or counted as lost


def test_truncated_container_ends_with_a_dead_letter(tmp_path: Path) -> None:
    path = tmp_path / "e.avro"
    write_file(path, many(3000))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 500])
    results = [v for _, v in read_events_file(path)]
    assert isinstance(results[-1], DeadLetter)
    assert results[-1].error_class is ErrorClass.TRUNCATED
    assert all(isinstance(r, Event) for r in results[:-1])


def test_not_a_container_file(tmp_path: Path) -> None:
    path = tmp_path / "x.avro"
    path.write_bytes(b"hello world")
    (only,) = [v for _, v in read_events_file(path)]
    assert isinstance(only, DeadLetter) and only.error_class is ErrorClass.BAD_MAGIC


def test_invalid_event_in_a_file_keeps_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "e.avro"
    write_file(path, [make_event(), make_event(event_id="")])
    (_, ok), (_, bad) = list(read_events_file(path))
    assert isinstance(ok, Event)
    assert isinstance(bad, DeadLetter) and bad.error_class is ErrorClass.INVALID_VALUE
    assert bad.source_offset == 1 and bad.original
    reread = fastavro.schemaless_reader(io.BytesIO(bad.original), CURRENT[EVENT].parsed, None)
    assert isinstance(reread, dict) and reread["event_id"] == ""


@settings(max_examples=200, deadline=None)
@given(events())
def test_events_pickle_to_equal_values(ev: Event) -> None:
    """Snapshots and worker exchange pickle events (by field values, see events._fast_pickle)."""
    import pickle

    assert pickle.loads(pickle.dumps(ev, protocol=pickle.HIGHEST_PROTOCOL)) == ev
    again = snapshots.loads(snapshots.dumps([ev, ev]))  # a state's buffer: field values
    assert again == [ev, ev] and type(again[0].event_type) is EventType


def test_an_event_pickles_as_its_flat_form_and_earlier_pickles_still_load() -> None:
    """Bytewax pickles each item it sends to another process on its own: the flat form
    names one function, not the event's four to five classes; a purchase (no flat form)
    pickles as before, and pickles of earlier code (``(Event, field values)``) still load
    (recovery snapshots)."""
    import pickle
    import pickletools

    from attune.operators.events import Context, ProductView, Purchase

    def names(data: bytes) -> set[str]:
        return {str(arg) for op, arg, _ in pickletools.genops(data) if "UNICODE" in op.name}

    ev = make_event(
        event_type=EventType.PRODUCT_VIEW,
        payload=ProductView("i1", "shoes", 999, "EUR"),
        context=Context(device="MOBILE", country="DE"),
    )
    data = pickle.dumps(ev, protocol=pickle.HIGHEST_PROTOCOL)
    assert "unflatten" in names(data)
    assert not {"Event", "EventType", "ProductView", "Context"} & names(data)
    assert pickle.loads(data) == ev
    bought = make_event(
        event_type=EventType.PURCHASE,
        payload=Purchase("o1", (LineItem("i1", 2, 500),), 1000, "EUR"),
    )
    assert pickle.loads(pickle.dumps(bought)) == bought
    for old in (ev, bought):
        values = tuple(getattr(old, f) for f in Event.__dataclass_fields__)
        cls, again = pickle.loads(pickle.dumps((Event, values)))
        assert cls(*again) == old


def test_outputs_pickle_to_equal_values(codec: Codec) -> None:
    import pickle

    outs = [
        Trigger(
            "t",
            "cart_abandoned",
            "u",
            T0,
            T0,
            "r",
            (LineItem("i", 1, 1),),
            1,
            "EUR",
            scores={"p": 0.5},
            attributes={"a": "b"},
        ),
        SegmentChange("u", "s", "ENTERED", "RULE", T0, T0),
        codec.dead_letter(b"x", ErrorClass.LATE, "late", Source("t", 0, 1), "e"),
        ItemUpdate("i", "t", ("a", "b"), 1, "EUR", True, T0, T0),
        Source("t", 1, 2),
    ]
    for out in outs:
        assert pickle.loads(pickle.dumps(out)) == out
