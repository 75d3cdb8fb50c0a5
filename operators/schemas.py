"""Avro schemas: the records of avro/, loaded and parsed once, and their versions by fingerprint.

The bottom of the codec stack: :mod:`attune.operators.codec` (wire formats),
:mod:`attune.operators.diagnosis` (why bytes are bad) and
:mod:`attune.operators.container` (container files) all look records up here.

Schemas are loaded once, at import, from avro/ (installed as ``attune.avro``),
one record per file named by its full name. Each becomes a
:class:`SchemaVersion`: canonical form, CRC-64-AVRO fingerprint, the parsed
schema for writing and a copy whose logical types are removed for reading (in
process, ``timestamp-millis`` fields are plain int milliseconds; removing them
does not change the fingerprint: logical types are not part of the canonical
form). :data:`CURRENT` holds the current version of every record by full name.

>>> CURRENT[EVENT].name, len(CURRENT[EVENT].fingerprint)
('attune.event.Event', 8)
>>> SchemaVersion.from_json(json.loads(schema_json(EVENT))) == CURRENT[EVENT]
True
"""

from __future__ import annotations

import copy
import importlib.resources
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import fastavro.schema

EVENT = "attune.event.Event"
ITEM = "attune.item.ItemUpdate"
TRIGGER = "attune.output.Trigger"
SEGMENT_CHANGE = "attune.output.SegmentChange"
DEAD_LETTER = "attune.output.DeadLetter"
ERASURE_CONFIRMATION = "attune.output.ErasureConfirmation"

Schema = dict[str, Any]


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
