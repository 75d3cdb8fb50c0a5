"""Avro codec: typed events and outputs to wire bytes and back, never raising on input.

Sits at the boundary of the flow: sources hand it bytes, it hands back typed
events (:mod:`attune.operators.events`) or a :class:`~attune.operators.events.DeadLetter`
saying precisely what was wrong; sinks hand it outputs to encode.

Wire formats (design.md, "Contracts"):

- Avro single-object encoding: ``0xC3 0x01`` + the 8-byte little-endian
  CRC-64-AVRO fingerprint of the writer schema + the Avro binary datum. The
  default when no schema registry is configured.
- Confluent wire format: ``0x00`` + 4-byte big-endian schema id + datum, when
  a schema registry URL is configured (subjects use the record-name strategy:
  the subject is the record's full name, e.g. ``attune.event.Event``).

A reader accepts both. The writer schema is found by fingerprint (current
schemas and any older version registered with :meth:`Codec.register_writer`)
or by registry id, and fastavro resolves it against the current reader schema,
so data written with an older or newer compatible schema still decodes.

Schemas are loaded once, at import, from avro/ (installed as ``attune.avro``).
In process, ``timestamp-millis`` fields are plain int milliseconds: the codec
decodes with a copy of each schema whose logical types are removed (which does
not change the fingerprint: logical types are not part of the canonical form).

>>> from attune.operators.events import Event, EventType, Search
>>> codec = Codec()
>>> ev = Event(event_id="e1", event_type=EventType.SEARCH, event_time=1_700_000_000_000,
...            user_id="u1", payload=Search(query="trail shoes"))
>>> data = codec.encode_event(ev)
>>> data[:2].hex(), len(data)
('c301', 42)
>>> codec.decode_event(data) == ev
True
>>> codec.decode_event(data[:20]).reason
'truncated: the datum ends inside field user_id (11 bytes after the header expected, 10 present)'
"""

from __future__ import annotations

import copy
import importlib.resources
import io
import json
import struct
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import fastavro
import fastavro.schema
from fastavro._read_common import SchemaResolutionError

from attune.operators.clock import Clock, SystemClock
from attune.operators.events import (
    DeadLetter,
    ErasureConfirmation,
    ErrorClass,
    Event,
    ItemUpdate,
    SegmentChange,
    Source,
    Trigger,
    dead_letter_from_record,
    erasure_confirmation_from_record,
    event_from_record,
    event_to_record,
    item_from_record,
    segment_change_from_record,
    to_record,
    trigger_from_record,
    validate_event,
)
from attune.operators.privacy import redact_text

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0
SINGLE_OBJECT_HEADER_LEN = 10
CONFLUENT_HEADER_LEN = 5

EVENT = "attune.event.Event"
ITEM = "attune.item.ItemUpdate"
TRIGGER = "attune.output.Trigger"
SEGMENT_CHANGE = "attune.output.SegmentChange"
DEAD_LETTER = "attune.output.DeadLetter"
ERASURE_CONFIRMATION = "attune.output.ErasureConfirmation"

Schema = dict[str, Any]

_OUTPUT_NAMES: dict[type[Any], str] = {
    Trigger: TRIGGER,
    SegmentChange: SEGMENT_CHANGE,
    DeadLetter: DEAD_LETTER,
    ErasureConfirmation: ERASURE_CONFIRMATION,
}


# --- schemas ---------------------------------------------------------------------------------


def _strip_logical_types(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical_types(x) for x in node]
    return node


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """One writer schema: its full name, canonical form, fingerprint and parsed forms."""

    name: str
    canonical: str
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO
    parsed: Schema  # with logical types: for writing
    decoding: Schema  # logical types removed: for reading into ints

    @classmethod
    def from_json(cls, schema_json: Schema) -> SchemaVersion:
        """Parse a fully expanded schema (named types inline), e.g. from a file or a registry."""
        expanded = copy.deepcopy(schema_json)
        parsed: Schema = fastavro.parse_schema(expanded)  # type: ignore[assignment]
        canonical = fastavro.schema.to_parsing_canonical_form(parsed)
        fp = bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))
        decoding: Schema = fastavro.parse_schema(  # type: ignore[assignment]
            _strip_logical_types(fastavro.schema.expand_schema(parsed))
        )
        return cls(
            name=fastavro.schema.fullname(parsed),
            canonical=canonical,
            fingerprint=fp,
            parsed=parsed,
            decoding=decoding,
        )


def _load_current() -> dict[str, SchemaVersion]:
    folder = Path(str(importlib.resources.files("attune.avro")))
    out: dict[str, SchemaVersion] = {}
    for path in sorted(folder.glob("*.avsc")):
        loaded = fastavro.schema.load_schema(str(path), _write_hint=False)
        expanded = fastavro.schema.expand_schema(loaded)
        assert isinstance(expanded, dict), path
        version = SchemaVersion.from_json(expanded)
        if version.name != path.stem:
            raise RuntimeError(f"{path}: file holds record {version.name}; name the file after it")
        out[version.name] = version
    return out


#: The current schema of every record in avro/, by full name.
CURRENT: dict[str, SchemaVersion] = _load_current()


def schema(full_name: str) -> Schema:
    """The parsed (fastavro) current schema of a record, e.g. ``schema("attune.event.Event")``."""
    return CURRENT[full_name].parsed


def schema_json(full_name: str) -> str:
    """The fully expanded JSON of a current schema (what a schema registry stores)."""
    return json.dumps(fastavro.schema.expand_schema(CURRENT[full_name].parsed))


# --- schema registry -------------------------------------------------------------------------


class RegistryUnavailableError(RuntimeError):
    """The configured schema registry could not be reached: an operator error, not bad input."""


class SchemaRegistryClient:
    """Minimal Confluent schema registry client (REST v1), with caches.

    Only what the codec needs: look a schema up by id, register one under a
    subject. Uses the standard library so it adds no dependency.
    """

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._by_id: dict[int, str | None] = {}
        self._ids: dict[tuple[str, str], int] = {}

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, OSError) as exc:
            raise RegistryUnavailableError(
                f"schema registry at {self.url} is unreachable ({exc}); check "
                "ATTUNE_SCHEMA_REGISTRY_URL, or unset it to use single-object encoding"
            ) from exc

    def schema_for_id(self, schema_id: int) -> str | None:
        """The schema JSON registered under ``schema_id``, or ``None`` if the registry has none."""
        if schema_id not in self._by_id:
            try:
                self._by_id[schema_id] = self._request("GET", f"/schemas/ids/{schema_id}")["schema"]
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise RegistryUnavailableError(
                        f"schema registry at {self.url} answered HTTP {exc.code} for id {schema_id}"
                    ) from exc
                self._by_id[schema_id] = None
        return self._by_id[schema_id]

    def register(self, subject: str, schema_str: str) -> int:
        """Register (or find) ``schema_str`` under ``subject``; returns its id."""
        key = (subject, schema_str)
        if key not in self._ids:
            try:
                answer = self._request(
                    "POST", f"/subjects/{subject}/versions", {"schema": schema_str}
                )
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")
                raise RegistryUnavailableError(
                    f"schema registry at {self.url} refused schema for subject {subject}: "
                    f"HTTP {exc.code} {detail}"
                ) from exc
            self._ids[key] = int(answer["id"])
            self._by_id[self._ids[key]] = schema_str
        return self._ids[key]


# --- diagnosing bad bytes --------------------------------------------------------------------


class _BadDatumError(Exception):
    def __init__(self, error_class: ErrorClass, reason: str) -> None:
        super().__init__(reason)
        self.error_class = error_class
        self.reason = reason


class _Walker:
    """Walks a datum against its writer schema to say where and why it is bad.

    Only used after fastavro has failed, to turn its bare ``IndexError`` or
    ``EOFError`` into a reason a person can act on. It reads, never writes.
    """

    def __init__(self, data: bytes, named: dict[str, Any]) -> None:
        self.data = data
        self.pos = 0
        self.named = named

    def _need(self, n: int, path: str) -> None:
        if self.pos + n > len(self.data):
            raise _BadDatumError(
                ErrorClass.TRUNCATED,
                f"truncated: the datum ends inside field {path or '(root)'} "
                f"({self.pos + n} bytes after the header expected, {len(self.data)} present)",
            )

    def _long(self, path: str) -> int:
        shift = 0
        acc = 0
        while True:
            self._need(1, path)
            b = self.data[self.pos]
            self.pos += 1
            acc |= (b & 0x7F) << shift
            if not b & 0x80:
                return (acc >> 1) ^ -(acc & 1)
            shift += 7
            if shift > 63:
                raise _BadDatumError(
                    ErrorClass.MALFORMED, f"field {path}: varint longer than 10 bytes"
                )

    def walk(self, sch: Any, path: str = "") -> None:
        if isinstance(sch, str):
            if sch in self.named:
                self.walk(self.named[sch], path)
                return
            sch = {"type": sch}
        if isinstance(sch, list):
            index = self._long(path)
            if not 0 <= index < len(sch):
                raise _BadDatumError(
                    ErrorClass.INVALID_UNION,
                    f"field {path}: union branch index {index} out of range "
                    f"(the union has {len(sch)} branches)",
                )
            self.walk(sch[index], path)
            return
        kind = sch["type"]
        if isinstance(kind, dict | list):
            self.walk(kind, path)
        elif kind == "record":
            for f in sch["fields"]:
                self.walk(f["type"], f"{path}.{f['name']}" if path else f["name"])
        elif kind == "enum":
            index = self._long(path)
            symbols = sch["symbols"]
            if not 0 <= index < len(symbols):
                raise _BadDatumError(
                    ErrorClass.INVALID_ENUM,
                    f"field {path}: enum index {index} out of range for {sch['name']} "
                    f"({len(symbols)} symbols)",
                )
        elif kind in ("int", "long"):
            self._long(path)
        elif kind == "boolean":
            self._need(1, path)
            if self.data[self.pos] > 1:
                raise _BadDatumError(
                    ErrorClass.MALFORMED, f"field {path}: boolean byte is not 0 or 1"
                )
            self.pos += 1
        elif kind in ("float", "double"):
            n = 4 if kind == "float" else 8
            self._need(n, path)
            self.pos += n
        elif kind in ("bytes", "string"):
            n = self._long(path)
            if n < 0:
                raise _BadDatumError(ErrorClass.MALFORMED, f"field {path}: negative length {n}")
            self._need(n, path)
            if kind == "string":
                try:
                    self.data[self.pos : self.pos + n].decode("utf-8")
                except UnicodeDecodeError:
                    raise _BadDatumError(
                        ErrorClass.MALFORMED, f"field {path}: string is not valid UTF-8"
                    ) from None
            self.pos += n
        elif kind == "fixed":
            self._need(sch["size"], path)
            self.pos += sch["size"]
        elif kind in ("array", "map"):
            while True:
                count = self._long(path)
                if count == 0:
                    break
                if count < 0:
                    count = -count
                    self._long(path)  # block size in bytes
                for i in range(count):
                    if kind == "map":
                        self.walk("string", f"{path}[key]")
                        self.walk(sch["values"], f"{path}[{i}]")
                    else:
                        self.walk(sch["items"], f"{path}[{i}]")
        elif kind != "null":
            raise _BadDatumError(ErrorClass.MALFORMED, f"field {path}: unsupported type {kind}")


def _diagnose(datum: bytes, writer: SchemaVersion, exc: BaseException) -> _BadDatumError:
    if isinstance(exc, SchemaResolutionError):
        text = str(exc)
        if "default" in text.lower():
            return _BadDatumError(
                ErrorClass.MISSING_FIELD,
                f"missing required field: writer schema {writer.fingerprint.hex()} lacks a field "
                f"the reader requires and has no default ({redact_text(text)})",
            )
        return _BadDatumError(
            ErrorClass.MALFORMED, f"writer schema cannot be resolved: {redact_text(text)}"
        )
    walker = _Walker(datum, writer.decoding.get("__named_schemas", {}))
    try:
        walker.walk(writer.decoding)
    except _BadDatumError as diag:
        return diag
    if walker.pos != len(datum):
        return _BadDatumError(
            ErrorClass.TRAILING_BYTES,
            f"{len(datum) - walker.pos} bytes left after a complete datum of {walker.pos} bytes",
        )
    return _BadDatumError(
        ErrorClass.MALFORMED, f"undecodable datum: {type(exc).__name__}: {redact_text(str(exc))}"
    )


# --- the codec -------------------------------------------------------------------------------


class Codec:
    """Encodes outputs and decodes inputs; decoding returns a value or a :class:`DeadLetter`.

    Args:
        registry: a schema registry client. Given: encode in the Confluent wire
            format. Absent: single-object encoding. Both decode either way
            (Confluent bytes need the registry).
        clock: stamps ``dead_time`` on dead letters.
        privacy: pseudonymises a decoded event record in place
            (:meth:`attune.operators.privacy.Pseudonymiser.record`), before the event is
            built. Given, an event that decodes but is unusable is dead-lettered
            with its record re-encoded after pseudonymisation instead of the
            original bytes, so only undecodable input keeps raw PII.
    """

    def __init__(
        self,
        registry: SchemaRegistryClient | None = None,
        clock: Clock | None = None,
        privacy: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        self.registry = registry
        self.clock: Clock = clock or SystemClock()
        self.privacy = privacy
        self._by_fingerprint: dict[bytes, SchemaVersion] = {
            v.fingerprint: v for v in CURRENT.values()
        }
        self._by_registry_id: dict[int, SchemaVersion | None] = {}
        self._header: dict[str, bytes] = {}

    # writer schemas

    def register_writer(self, schema_json: Schema | str) -> SchemaVersion:
        """Make an older or newer version of a schema known by its fingerprint."""
        raw = json.loads(schema_json) if isinstance(schema_json, str) else schema_json
        version = SchemaVersion.from_json(raw)
        self._by_fingerprint[version.fingerprint] = version
        return version

    def _header_for(self, name: str) -> bytes:
        header = self._header.get(name)
        if header is None:
            if self.registry is not None:
                schema_id = self.registry.register(name, schema_json(name))
                header = struct.pack(">bI", CONFLUENT_MAGIC, schema_id)
            else:
                header = SINGLE_OBJECT_MAGIC + CURRENT[name].fingerprint
            self._header[name] = header
        return header

    # encoding

    def encode(
        self, name: str, record: dict[str, Any], writer: SchemaVersion | None = None
    ) -> bytes:
        """Encode a record dict with the current schema of ``name`` (or an explicit ``writer``)."""
        buf = io.BytesIO()
        if writer is None:
            buf.write(self._header_for(name))
            fastavro.schemaless_writer(buf, CURRENT[name].parsed, record)
        else:
            buf.write(SINGLE_OBJECT_MAGIC + writer.fingerprint)
            fastavro.schemaless_writer(buf, writer.parsed, record)
        return buf.getvalue()

    def encode_event(self, event: Event) -> bytes:
        return self.encode(EVENT, event_to_record(event))

    def encode_item(self, item: ItemUpdate) -> bytes:
        return self.encode(ITEM, to_record(item))

    def encode_output(
        self, out: Trigger | SegmentChange | DeadLetter | ErasureConfirmation
    ) -> bytes:
        """Encode a trigger, segment change, dead letter or erasure confirmation for its topic."""
        name = _OUTPUT_NAMES[type(out)]
        return self.encode(name, to_record(out))

    # decoding

    def dead_letter(
        self,
        data: bytes,
        error_class: ErrorClass,
        reason: str,
        source: Source | None = None,
        event_id: str | None = None,
    ) -> DeadLetter:
        src = source or Source()
        return DeadLetter(
            original=data,
            error_class=error_class,
            reason=reason,
            dead_time=self.clock.now_ms(),
            source_topic=src.topic,
            source_partition=src.partition,
            source_offset=src.offset,
            event_id=event_id,
        )

    def _writer_of(self, data: bytes) -> tuple[SchemaVersion, int] | _BadDatumError:
        """The writer schema of a message and where its datum starts, or why neither is known."""
        if data[:2] == SINGLE_OBJECT_MAGIC:
            if len(data) < SINGLE_OBJECT_HEADER_LEN:
                return _BadDatumError(
                    ErrorClass.TRUNCATED,
                    f"truncated: {len(data)} bytes, shorter than the 10-byte single-object header",
                )
            version = self._by_fingerprint.get(data[2:10])
            if version is None:
                return _BadDatumError(
                    ErrorClass.UNKNOWN_FINGERPRINT,
                    f"unknown writer schema fingerprint {data[2:10].hex()} (CRC-64-AVRO, "
                    "little-endian): register the writer's schema version with the codec",
                )
            return version, SINGLE_OBJECT_HEADER_LEN
        if data[:1] == b"\x00":
            if len(data) < CONFLUENT_HEADER_LEN:
                return _BadDatumError(
                    ErrorClass.TRUNCATED,
                    f"truncated: {len(data)} bytes, shorter than the 5-byte Confluent header",
                )
            schema_id = struct.unpack(">I", data[1:5])[0]
            found = self._registry_version(schema_id)
            if isinstance(found, _BadDatumError):
                return found
            return found, CONFLUENT_HEADER_LEN
        if not data:
            return _BadDatumError(ErrorClass.TRUNCATED, "empty message")
        return _BadDatumError(
            ErrorClass.BAD_MAGIC,
            f"wrong magic bytes {data[:2].hex()}: expected c301 (Avro single-object) "
            "or 00 (Confluent wire format)",
        )

    def _registry_version(self, schema_id: int) -> SchemaVersion | _BadDatumError:
        if self.registry is None:
            return _BadDatumError(
                ErrorClass.UNKNOWN_SCHEMA_ID,
                f"Confluent-framed message with schema id {schema_id} but no schema registry "
                "is configured (set ATTUNE_SCHEMA_REGISTRY_URL)",
            )
        if schema_id not in self._by_registry_id:
            text = self.registry.schema_for_id(schema_id)
            self._by_registry_id[schema_id] = (
                SchemaVersion.from_json(json.loads(text)) if text is not None else None
            )
        version = self._by_registry_id[schema_id]
        if version is None:
            return _BadDatumError(
                ErrorClass.UNKNOWN_SCHEMA_ID,
                f"schema id {schema_id} is unknown to the schema registry at {self.registry.url}",
            )
        return version

    def decode_record(
        self, data: bytes, expect: str, source: Source | None = None
    ) -> dict[str, Any] | DeadLetter:
        """Decode one framed message into a record dict of record type ``expect``."""
        found = self._writer_of(data)
        if isinstance(found, _BadDatumError):
            return self.dead_letter(data, found.error_class, found.reason, source)
        writer, start = found
        return self.decode_datum(data, start, writer, expect, source)

    def decode_datum(
        self,
        data: bytes,
        start: int,
        writer: SchemaVersion,
        expect: str,
        source: Source | None = None,
    ) -> dict[str, Any] | DeadLetter:
        """Decode the datum at ``data[start:]`` written with ``writer`` as a record ``expect``."""
        reader = CURRENT[expect]
        if writer.name != expect:
            return self.dead_letter(
                data,
                ErrorClass.UNKNOWN_FINGERPRINT,
                f"message holds a {writer.name} record, expected {expect}",
                source,
            )
        buf = io.BytesIO(data)
        buf.seek(start)
        try:
            record = fastavro.schemaless_reader(
                buf,
                writer.decoding,
                None if writer is reader else reader.decoding,
                True,  # return_record_name: the payload union tells its branch
                True,  # ... only where a union holds more than one record
            )
        except Exception as exc:  # fastavro signals bad bytes with many exception types
            diag = _diagnose(data[start:], writer, exc)
            return self.dead_letter(data, diag.error_class, diag.reason, source)
        if buf.tell() != len(data):
            return self.dead_letter(
                data,
                ErrorClass.TRAILING_BYTES,
                f"{len(data) - buf.tell()} bytes left after a complete {expect} datum",
                source,
            )
        if not isinstance(record, dict):
            return self.dead_letter(data, ErrorClass.MALFORMED, "datum is not a record", source)
        return record

    def decode_event(self, data: bytes, source: Source | None = None) -> Event | DeadLetter:
        """Decode and validate one user event; anything unusable comes back as a dead letter."""
        record = self.decode_record(data, EVENT, source)
        if isinstance(record, DeadLetter):
            return record
        return self.event_from_decoded(data, record, source)

    def event_from_decoded(
        self, data: bytes, record: dict[str, Any], source: Source | None
    ) -> Event | DeadLetter:
        event_id = record.get("event_id")
        if self.privacy is not None:
            self.privacy(record)
        try:
            event = event_from_record(record)
        except (KeyError, TypeError, ValueError) as exc:
            return self.dead_letter(
                self._kept(data, record),
                ErrorClass.MALFORMED,
                f"record does not map to an Event: {redact_text(str(exc))}",
                source,
                event_id,
            )
        problem = validate_event(event)
        if problem is not None:
            error_class = (
                ErrorClass.INVALID_ENUM if "UNKNOWN" in problem else ErrorClass.INVALID_VALUE
            )
            kept = self._kept(data, record)
            return self.dead_letter(kept, error_class, problem, source, event_id)
        return event

    def _kept(self, data: bytes, record: dict[str, Any]) -> bytes:
        """What a dead letter of a decoded event keeps: the original bytes, or with privacy
        on, the pseudonymised record re-encoded (empty if it cannot be: never raw PII)."""
        if self.privacy is None:
            return data
        try:
            return self.encode(EVENT, record)
        except Exception:  # a record that maps to no Event may not encode either
            return b""

    def decode_item(self, data: bytes, source: Source | None = None) -> ItemUpdate | DeadLetter:
        record = self.decode_record(data, ITEM, source)
        if isinstance(record, DeadLetter):
            return record
        item = item_from_record(record)
        if not item.item_id or item.price_minor < 0:
            return self.dead_letter(
                data, ErrorClass.INVALID_VALUE, "item_id empty or negative price", source
            )
        return item

    def decode_trigger(self, data: bytes, source: Source | None = None) -> Trigger | DeadLetter:
        record = self.decode_record(data, TRIGGER, source)
        return record if isinstance(record, DeadLetter) else trigger_from_record(record)

    def decode_segment_change(
        self, data: bytes, source: Source | None = None
    ) -> SegmentChange | DeadLetter:
        record = self.decode_record(data, SEGMENT_CHANGE, source)
        return record if isinstance(record, DeadLetter) else segment_change_from_record(record)

    def decode_erasure_confirmation(
        self, data: bytes, source: Source | None = None
    ) -> ErasureConfirmation | DeadLetter:
        record = self.decode_record(data, ERASURE_CONFIRMATION, source)
        if isinstance(record, DeadLetter):
            return record
        return erasure_confirmation_from_record(record)

    def decode_dead_letter(self, data: bytes, source: Source | None = None) -> DeadLetter:
        """Decode a message of the dead-letter topic (a bad one becomes a dead letter itself)."""
        record = self.decode_record(data, DEAD_LETTER, source)
        return record if isinstance(record, DeadLetter) else dead_letter_from_record(record)


# --- object container files ------------------------------------------------------------------

_HEADER_SCHEMA = fastavro.parse_schema(
    {
        "type": "record",
        "name": "org.apache.avro.file.Header",
        "fields": [
            {"name": "magic", "type": {"type": "fixed", "name": "Magic", "size": 4}},
            {"name": "meta", "type": {"type": "map", "values": "bytes"}},
            {"name": "sync", "type": {"type": "fixed", "name": "Sync", "size": 16}},
        ],
    }
)
_CONTAINER_MAGIC = b"Obj\x01"
_SYNC_SIZE = 16


def write_container(
    fh: BinaryIO,
    full_name: str,
    records: Iterable[dict[str, Any]],
    sync_marker: bytes,
    codec: str = "deflate",
) -> int:
    """Write an Avro object container file; a fixed ``sync_marker`` makes the bytes repeatable.

    Returns the number of records written.
    """
    count = 0

    def counted() -> Iterator[dict[str, Any]]:
        nonlocal count
        for r in records:
            count += 1
            yield r

    fastavro.writer(fh, CURRENT[full_name].parsed, counted(), codec=codec, sync_marker=sync_marker)
    return count


def _read_long(buf: bytes, pos: int) -> tuple[int, int]:
    shift = acc = 0
    while True:
        if pos >= len(buf):
            raise EOFError
        b = buf[pos]
        pos += 1
        acc |= (b & 0x7F) << shift
        if not b & 0x80:
            return (acc >> 1) ^ -(acc & 1), pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


@dataclass(frozen=True, slots=True)
class ContainerRecord:
    """One decoded record of a container file, or a dead letter for records that were lost."""

    index: int
    value: dict[str, Any] | DeadLetter
    raw: bytes = b""  # the record's datum bytes (no header), kept for dead letters
    lost: int = 0  # for a dead letter: how many records it stands for


def read_container(
    path: Path | str, expect: str, codec: Codec | None = None
) -> Iterator[ContainerRecord]:
    """Read an object container file record by record, turning corruption into dead letters.

    A corrupt record costs the rest of its block (Avro cannot resync inside a
    block); reading goes on at the next sync marker. A truncated file ends with
    a dead letter for what was missing. Each dead letter names the file and the
    record index as its source.
    """
    codec = codec or Codec()
    data = Path(path).read_bytes()
    src = str(path)
    if data[:4] != _CONTAINER_MAGIC:
        yield ContainerRecord(
            0,
            codec.dead_letter(
                data[:64],
                ErrorClass.BAD_MAGIC,
                f"{src} is not an Avro container file",
                Source(src, None, 0),
            ),
        )
        return
    try:
        head = io.BytesIO(data)
        header = fastavro.schemaless_reader(head, _HEADER_SCHEMA, None)
        assert isinstance(header, dict)
        pos = head.tell()
        writer = SchemaVersion.from_json(json.loads(header["meta"]["avro.schema"]))
        block_codec = header["meta"].get("avro.codec", b"null").decode()
        sync: bytes = header["sync"]
    except Exception as exc:
        yield ContainerRecord(
            0,
            codec.dead_letter(
                data[:64],
                ErrorClass.MALFORMED,
                f"{src}: unreadable container header: {exc}",
                Source(src, None, 0),
            ),
        )
        return
    if block_codec not in ("null", "deflate"):
        raise ValueError(f"{src}: container codec {block_codec!r} is not supported (null, deflate)")
    index = 0
    while pos < len(data):
        block_start = pos
        try:
            count, pos = _read_long(data, pos)
            size, pos = _read_long(data, pos)
            if count < 0 or size < 0 or pos + size + _SYNC_SIZE > len(data):
                raise EOFError
            raw = data[pos : pos + size]
            pos += size
            if data[pos : pos + _SYNC_SIZE] != sync:
                raise ValueError("sync marker mismatch")
            pos += _SYNC_SIZE
        except (EOFError, ValueError) as exc:
            truncated = isinstance(exc, EOFError)
            nxt = data.find(sync, block_start)
            rest = data[block_start : (nxt if nxt >= 0 else len(data))]
            reason = (
                f"{src}: file truncated inside the block at byte {block_start}"
                if truncated
                else f"{src}: corrupt block framing at byte {block_start} ({exc})"
            )
            yield ContainerRecord(
                index,
                codec.dead_letter(
                    rest,
                    ErrorClass.TRUNCATED if truncated else ErrorClass.MALFORMED,
                    reason,
                    Source(src, None, index),
                ),
            )
            if nxt < 0:
                return
            pos = nxt + _SYNC_SIZE
            continue
        try:
            block = zlib.decompress(raw, -15) if block_codec == "deflate" else raw
        except zlib.error as exc:
            yield ContainerRecord(
                index,
                codec.dead_letter(
                    raw,
                    ErrorClass.MALFORMED,
                    f"{src}: block at byte {block_start} does not inflate ({exc}); "
                    f"{count} records lost",
                    Source(src, None, index),
                ),
                lost=count,
            )
            index += count
            continue
        yield from _block_records(
            block, count=count, first=index, writer=writer, expect=expect, codec=codec, src=src
        )
        index += count


def _block_records(
    block: bytes,
    *,
    count: int,
    first: int,
    writer: SchemaVersion,
    expect: str,
    codec: Codec,
    src: str,
) -> Iterator[ContainerRecord]:
    buf = io.BytesIO(block)
    reader = CURRENT[expect]
    for k in range(count):
        start = buf.tell()
        try:
            record = fastavro.schemaless_reader(
                buf,
                writer.decoding,
                None if writer.fingerprint == reader.fingerprint else reader.decoding,
                True,
                True,
            )
            assert isinstance(record, dict)
        except Exception as exc:
            diag = _diagnose(block[start:], writer, exc)
            lost = count - k
            yield ContainerRecord(
                first + k,
                codec.dead_letter(
                    block[start:],
                    diag.error_class,
                    f"{src}: record {first + k}: {diag.reason}; {lost} records of its block lost",
                    Source(src, None, first + k),
                ),
                lost=lost,
            )
            return
        yield ContainerRecord(first + k, record, block[start : buf.tell()])
    if buf.tell() != len(block):
        yield ContainerRecord(
            first + count,
            codec.dead_letter(
                block[buf.tell() :],
                ErrorClass.TRAILING_BYTES,
                f"{src}: {len(block) - buf.tell()} bytes left at the end of a block",
                Source(src, None, first + count),
            ),
        )


def read_events_file(
    path: Path | str, codec: Codec | None = None
) -> Iterator[tuple[int, Event | DeadLetter]]:
    """Events of a container file as ``(record index, Event or DeadLetter)``, never raising."""
    codec = codec or Codec()
    src = str(path)
    for rec in read_container(path, EVENT, codec):
        if isinstance(rec.value, DeadLetter):
            yield rec.index, rec.value
        else:
            yield (
                rec.index,
                codec.event_from_decoded(rec.raw, rec.value, Source(src, None, rec.index)),
            )
