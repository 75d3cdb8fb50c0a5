"""The codec's fast path: a compiled (cavro) reader of one schema version's datums.

Decoding is the first cost of every event (design.md, "What costs what"):
fastavro's ``schemaless_reader`` takes ~30-40 us of CPU for one of our events
with the record names of unions, cavro (a Cython Avro codec, MIT, a wheel for
CPython 3.11/3.12 on x86-64) ~5-7 us on the same bytes and schema.
:meth:`attune.operators.codec.Codec.decode_event` tries this reader first for
messages written with the current Event schema and falls back to its fastavro
path for anything the reader does not return, so dead letters and their
reasons come from one place, as before.

:meth:`DatumReader.read` returns exactly the record fastavro returns for the
same bytes (``schemaless_reader(..., return_record_name=True,
return_record_name_override=True)`` with the writer schema as reader), or
``None``:

- the same dicts, field for field; a union of several records gives
  ``(full name, record)`` and any other union its value (cavro's
  ``TYPE_TUPLE_IF_RECORD_AMBIGUOUS``, fastavro's record-name override);
- ``int`` values as 64-bit, as fastavro reads them: cavro would cut an ``int``
  to 32 bits, so the schema given to cavro says ``long`` wherever the writer's
  says ``int`` (both are the same zig-zag varint on the wire);
- ``None`` for a datum cavro cannot decode (bad bytes: the fastavro path says
  why), for bytes left after the datum (cavro does not say where a datum ended,
  so the reader appends an end-of-datum marker and expects to read it right
  after the datum: :class:`DatumReader`), and from
  :func:`reader_for` for a schema with anything but records, enums, strings,
  ints, longs, booleans, null, arrays and unions of ``null`` and one type or of
  records only: what tests/unit/test_fast_decode.py compares with fastavro.
  Without cavro installed (no wheel for the platform) there is no reader.

Logical types play no part: the reader is built from the parsing canonical
form, which has none (in process, ``timestamp-millis`` fields are int ms).

>>> from attune.operators.codec import Codec
>>> from attune.operators.events import Event, EventType, Search
>>> from attune.operators.schemas import CURRENT, EVENT
>>> data = Codec().encode_event(Event("e1", EventType.SEARCH, 1_767_571_200_000,
...                                   Search("boots"), user_id="u1"))
>>> reader = reader_for(CURRENT[EVENT])
>>> record = reader.read(data, 10)
>>> record["payload"]
('attune.event.Search', {'query': 'boots', 'category': None, 'results_count': None})
>>> reader.read(data + b"\\x00", 10) is None, reader.read(data[:-1], 10) is None
(True, True)
"""

from __future__ import annotations

import json
import os
from typing import Any

from attune.operators.schemas import SchemaVersion

try:
    import cavro
except ImportError:  # no wheel for this platform: the codec decodes with fastavro alone
    cavro = None

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "string"})


def _supported(node: Any, named: dict[str, str]) -> bool:
    """Whether cavro reads ``node`` (parsing canonical form) exactly as fastavro does.

    ``named`` collects the kind of every named type seen, by full name.
    """
    if isinstance(node, str):
        return node in _PRIMITIVES or named.get(node) in ("record", "enum")
    if isinstance(node, list):
        kinds = [_kind(branch, named) for branch in node]
        two_optional = len(node) == 2 and node[0] == "null" and kinds[1] != "union"
        only_records = len(node) > 1 and all(kind == "record" for kind in kinds)
        return (two_optional or only_records) and all(_supported(b, named) for b in node)
    if not isinstance(node, dict):
        return False
    kind = node.get("type")
    if kind == "record":
        named[node["name"]] = "record"
        return all(_supported(f["type"], named) for f in node["fields"])
    if kind == "enum":
        named[node["name"]] = "enum"
        return True
    if kind == "array":
        return _supported(node["items"], named)
    return False


def _kind(node: Any, named: dict[str, str]) -> str:
    if isinstance(node, list):
        return "union"
    if isinstance(node, dict):
        return str(node.get("type"))
    return named.get(node, node) if isinstance(node, str) else "?"


def _widen_ints(node: Any) -> Any:
    if node == "int":
        return "long"
    if isinstance(node, list):
        return [_widen_ints(x) for x in node]
    if isinstance(node, dict):
        return {k: _widen_ints(v) for k, v in node.items()}
    return node


#: Random bytes in the end-of-datum marker.
MARKER_BYTES = 16


class DatumReader:
    """Reads datums written with ``version`` into fastavro's records, or says it cannot.

    Build it with :func:`reader_for`, which knows which schemas qualify.

    cavro decodes from the start of its input and does not say where the datum ended;
    reading one byte more and catching the ``EOFError`` cost a sixth of the read (10,900
    instructions of 60,500 per event, callgrind). So the reader appends an end-of-datum
    marker instead, Avro ``bytes`` holding a random value drawn for this reader, and
    reads a record of the datum and then a ``bytes`` field (2,400 instructions more
    than the datum alone). The marker comes back as appended exactly when the datum
    ended with the message: a datum that ends early reads its trailing bytes as the
    marker's length and value, one that ends late runs out of input. (Trailing bytes
    that encode the marker itself would pass: 2^-128 for bytes that cannot know this
    process's random value.)
    """

    def __init__(self, version: SchemaVersion) -> None:
        if cavro is None:
            raise RuntimeError("cavro is not installed: pip install cavro, or decode with fastavro")
        self.version = version
        self._marker = os.urandom(MARKER_BYTES)
        self._encoded_marker = cavro.Schema('"bytes"').binary_encode(self._marker)
        self._schema = cavro.Schema(
            json.dumps(_with_end(_widen_ints(json.loads(version.canonical)))),
            record_decodes_to_dict=True,
            union_decodes_to=cavro.UnionDecodeOption.TYPE_TUPLE_IF_RECORD_AMBIGUOUS,
        )
        self._memory = cavro.MemoryReader

    def __reduce__(self) -> tuple[Any, ...]:
        # cavro's objects do not pickle; a codec that holds this reader still does
        return reader_for, (self.version,)

    def read(self, data: bytes, start: int) -> dict[str, Any] | None:
        """The record of the datum that fills ``data[start:]``, or ``None`` (see the module)."""
        try:
            framed = self._schema.binary_read(self._memory(data[start:] + self._encoded_marker))
        except Exception:  # bad bytes, in any of cavro's ways: the fastavro path says why
            return None
        record = framed["datum"]
        if framed["end"] == self._marker and type(record) is dict:
            return record
        return None  # bytes left after the datum


def _with_end(datum: Any) -> dict[str, Any]:
    """The schema of a datum followed by the end-of-datum marker."""
    return {
        "type": "record",
        "name": "attune_datum_reader.Framed",
        "fields": [{"name": "datum", "type": datum}, {"name": "end", "type": "bytes"}],
    }


_READERS: dict[bytes, DatumReader | None] = {}


def reader_for(version: SchemaVersion) -> DatumReader | None:
    """The (shared) reader of ``version``, or ``None`` without cavro or for a schema it does
    not cover; the codec then decodes with fastavro alone."""
    if version.fingerprint not in _READERS:
        reader = None
        if cavro is not None and _supported(json.loads(version.canonical), {}):
            try:
                reader = DatumReader(version)
            except Exception:  # a schema cavro refuses to parse is read by fastavro alone
                reader = None
        _READERS[version.fingerprint] = reader
    found = _READERS[version.fingerprint]
    return found if found is not None and found.version.canonical == version.canonical else None
