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

:meth:`Codec.decode_event` runs once per Kafka message, so it has a fast path:
a message written with the current Event schema (either framing) is decoded by
a compiled reader (:mod:`attune.operators.datum_reader`, cavro), which gives
the record fastavro would give or nothing; nothing (bad bytes, bytes left over,
another writer schema) takes the fastavro path above, which says what is wrong.
Both then build, pseudonymise and validate the event the same way.

Schemas (:mod:`attune.operators.schemas`) are loaded once, at import, from
avro/; in process, ``timestamp-millis`` fields are plain int milliseconds. Why
bad bytes are bad is said by :mod:`attune.operators.diagnosis`; the registry
client is :mod:`attune.operators.schema_registry`; Avro container files are read
and written by :mod:`attune.operators.container`.

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

import io
import json
import struct
from collections.abc import Callable
from typing import Any

import fastavro

from attune.operators.clock import Clock, SystemClock
from attune.operators.datum_reader import reader_for
from attune.operators.diagnosis import BadDatumError, diagnose
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
from attune.operators.schema_registry import SchemaRegistryClient
from attune.operators.schemas import (
    CURRENT,
    DEAD_LETTER,
    ERASURE_CONFIRMATION,
    EVENT,
    ITEM,
    SEGMENT_CHANGE,
    TRIGGER,
    Schema,
    SchemaVersion,
    schema_json,
)

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0
SINGLE_OBJECT_HEADER_LEN = 10
CONFLUENT_HEADER_LEN = 5

_OUTPUT_NAMES: dict[type[Any], str] = {
    Trigger: TRIGGER,
    SegmentChange: SEGMENT_CHANGE,
    DeadLetter: DEAD_LETTER,
    ErasureConfirmation: ERASURE_CONFIRMATION,
}


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
        fast_path: decode events written with the current schema with the compiled
            reader first (:mod:`attune.operators.datum_reader`). Off, every event takes
            the fastavro path: the same results, for tests and benchmarks that compare.
    """

    def __init__(
        self,
        registry: SchemaRegistryClient | None = None,
        clock: Clock | None = None,
        privacy: Callable[[dict[str, Any]], Any] | None = None,
        *,
        fast_path: bool = True,
    ) -> None:
        self.registry = registry
        self.clock: Clock = clock or SystemClock()
        self.privacy = privacy
        self._by_fingerprint: dict[bytes, SchemaVersion] = {
            v.fingerprint: v for v in CURRENT.values()
        }
        self._by_registry_id: dict[int, SchemaVersion | None] = {}
        self._header: dict[str, bytes] = {}
        # The fast path of decode_event: the compiled reader of the current Event schema and
        # the headers that name that schema (single-object always; Confluent ids once seen).
        self._event_reader = reader_for(CURRENT[EVENT]) if fast_path else None
        self._event_header = SINGLE_OBJECT_MAGIC + CURRENT[EVENT].fingerprint
        self._confluent_event_headers: set[bytes] = set()

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
                if name == EVENT:
                    self._confluent_event_headers.add(header)
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

    def _writer_of(self, data: bytes) -> tuple[SchemaVersion, int] | BadDatumError:
        """The writer schema of a message and where its datum starts, or why neither is known."""
        if data[:2] == SINGLE_OBJECT_MAGIC:
            if len(data) < SINGLE_OBJECT_HEADER_LEN:
                return BadDatumError(
                    ErrorClass.TRUNCATED,
                    f"truncated: {len(data)} bytes, shorter than the 10-byte single-object header",
                )
            version = self._by_fingerprint.get(data[2:10])
            if version is None:
                return BadDatumError(
                    ErrorClass.UNKNOWN_FINGERPRINT,
                    f"unknown writer schema fingerprint {data[2:10].hex()} (CRC-64-AVRO, "
                    "little-endian): register the writer's schema version with the codec",
                )
            return version, SINGLE_OBJECT_HEADER_LEN
        if data[:1] == b"\x00":
            if len(data) < CONFLUENT_HEADER_LEN:
                return BadDatumError(
                    ErrorClass.TRUNCATED,
                    f"truncated: {len(data)} bytes, shorter than the 5-byte Confluent header",
                )
            schema_id = struct.unpack(">I", data[1:5])[0]
            found = self._registry_version(schema_id)
            if isinstance(found, BadDatumError):
                return found
            return found, CONFLUENT_HEADER_LEN
        if not data:
            return BadDatumError(ErrorClass.TRUNCATED, "empty message")
        return BadDatumError(
            ErrorClass.BAD_MAGIC,
            f"wrong magic bytes {data[:2].hex()}: expected c301 (Avro single-object) "
            "or 00 (Confluent wire format)",
        )

    def _registry_version(self, schema_id: int) -> SchemaVersion | BadDatumError:
        if self.registry is None:
            return BadDatumError(
                ErrorClass.UNKNOWN_SCHEMA_ID,
                f"Confluent-framed message with schema id {schema_id} but no schema registry "
                "is configured (set ATTUNE_SCHEMA_REGISTRY_URL)",
            )
        if schema_id not in self._by_registry_id:
            text = self.registry.schema_for_id(schema_id)
            found = SchemaVersion.from_json(json.loads(text)) if text is not None else None
            self._by_registry_id[schema_id] = found
            if found is not None and found.fingerprint == CURRENT[EVENT].fingerprint:
                self._confluent_event_headers.add(struct.pack(">bI", CONFLUENT_MAGIC, schema_id))
        version = self._by_registry_id[schema_id]
        if version is None:
            return BadDatumError(
                ErrorClass.UNKNOWN_SCHEMA_ID,
                f"schema id {schema_id} is unknown to the schema registry at {self.registry.url}",
            )
        return version

    def decode_record(
        self, data: bytes, expect: str, source: Source | None = None
    ) -> dict[str, Any] | DeadLetter:
        """Decode one framed message into a record dict of record type ``expect``."""
        found = self._writer_of(data)
        if isinstance(found, BadDatumError):
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
            diag = diagnose(data[start:], writer, exc)
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
        reader = self._event_reader
        if reader is not None and reader.version.fingerprint == CURRENT[EVENT].fingerprint:
            if data[:10] == self._event_header:
                fast = reader.read(data, SINGLE_OBJECT_HEADER_LEN)
            elif data[:5] in self._confluent_event_headers:
                fast = reader.read(data, CONFLUENT_HEADER_LEN)
            else:
                fast = None
            if fast is not None:
                return self.event_from_decoded(data, fast, source)
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
