"""Avro object container files: write them repeatably, read them without ever raising on input.

Where events and items rest between runs: ``attune generate`` writes them
(:func:`write_container`), replay (:mod:`attune.operators.sources`), import,
``inspect`` and ``evaluate`` read them (:func:`read_events_file`,
:func:`read_container`). Records decode through :class:`~attune.operators.codec.Codec`,
so a corrupt record becomes a dead letter like a bad Kafka message, with the
file and the record index as its source. The container's writer schema comes
from its header and is resolved against the current schema
(:mod:`attune.operators.schemas`).

>>> import io, tempfile
>>> from attune.operators.events import Event, EventType, Search, event_to_record
>>> ev = Event(event_id="e1", event_type=EventType.SEARCH, event_time=1_700_000_000_000,
...            user_id="u1", payload=Search(query="trail shoes"))
>>> with tempfile.NamedTemporaryFile(suffix=".avro") as fh:
...     write_container(fh, EVENT, [event_to_record(ev)], b"s" * 16)
...     fh.flush()
...     list(read_events_file(fh.name)) == [(0, ev)]
1
True
"""

from __future__ import annotations

import io
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import fastavro

from attune.operators.codec import Codec
from attune.operators.diagnosis import diagnose
from attune.operators.events import DeadLetter, ErrorClass, Event, Source
from attune.operators.schemas import CURRENT, EVENT, SchemaVersion

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

    schema = _HEADER_ORDERED.get(full_name)
    if schema is None:
        schema = _HEADER_ORDERED[full_name] = _ordered(CURRENT[full_name].parsed)
    fastavro.writer(fh, schema, counted(), codec=codec, sync_marker=sync_marker)
    return count


#: Parsed schemas whose header JSON is the same in every process (see :func:`_ordered`).
_HEADER_ORDERED: dict[str, Any] = {}


def _ordered(schema: Any) -> Any:
    """``schema`` (parsed) with every object's keys sorted, fastavro's own entries kept.

    fastavro writes the header's ``avro.schema`` as ``json.dumps`` of the parsed schema,
    and its parser copies a field's optional properties (``doc``, ``aliases``,
    ``default``...) by iterating a ``set``: their order, so the file's bytes, depended
    on ``PYTHONHASHSEED``. Key order means nothing to an Avro reader.
    """
    if isinstance(schema, list):
        return [_ordered(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    return {
        key: (value if key.startswith("__") else _ordered(value))
        for key, value in sorted(schema.items())
    }


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
            diag = diagnose(block[start:], writer, exc)
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
