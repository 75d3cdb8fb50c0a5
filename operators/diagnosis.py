"""Diagnosis of bad bytes: why a datum does not decode, as a reason a person can act on.

Called by :class:`attune.operators.codec.Codec` and the container reader
(:mod:`attune.operators.container`) only after fastavro has failed, or from
the codec's header checks: the :class:`BadDatumError` it returns carries the
:class:`~attune.operators.events.ErrorClass` and the reason that go into the
dead letter. :func:`diagnose` walks the datum against its writer schema to name
the field where it breaks (truncated, an enum or union index out of range,
invalid UTF-8, trailing bytes...). It reads, never writes, and never raises on
input.

>>> from attune.operators.schemas import CURRENT, EVENT
>>> diag = diagnose(b"\\x04e1", CURRENT[EVENT], EOFError())
>>> diag.error_class.name, diag.reason
('TRUNCATED', 'truncated: the datum ends inside field event_type (4 bytes after the header \
expected, 3 present)')
"""

from __future__ import annotations

from typing import Any

from fastavro._read_common import SchemaResolutionError

from attune.operators.events import ErrorClass
from attune.operators.privacy import redact_text
from attune.operators.schemas import SchemaVersion


class BadDatumError(Exception):
    """Why a message or datum is unusable: the error class and reason of its dead letter."""

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
            raise BadDatumError(
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
                raise BadDatumError(
                    ErrorClass.MALFORMED, f"field {path}: varint longer than 10 bytes"
                )

    def walk(self, sch: Any, path: str = "") -> None:
        if isinstance(sch, str):
            sch = self.named.get(sch, {"type": sch})  # a named type, or a primitive
        if isinstance(sch, list):
            self._union(sch, path)
            return
        kind = sch["type"]
        if isinstance(kind, dict | list):
            self.walk(kind, path)
        elif kind == "record":
            for f in sch["fields"]:
                self.walk(f["type"], f"{path}.{f['name']}" if path else f["name"])
        elif kind == "enum":
            self._enum(sch, path)
        elif kind in ("array", "map"):
            self._blocks(sch, path)
        else:
            self._primitive(sch, path)

    def _union(self, branches: list[Any], path: str) -> None:
        index = self._long(path)
        if not 0 <= index < len(branches):
            raise BadDatumError(
                ErrorClass.INVALID_UNION,
                f"field {path}: union branch index {index} out of range "
                f"(the union has {len(branches)} branches)",
            )
        self.walk(branches[index], path)

    def _enum(self, sch: dict[str, Any], path: str) -> None:
        index = self._long(path)
        symbols = sch["symbols"]
        if not 0 <= index < len(symbols):
            raise BadDatumError(
                ErrorClass.INVALID_ENUM,
                f"field {path}: enum index {index} out of range for {sch['name']} "
                f"({len(symbols)} symbols)",
            )

    def _blocks(self, sch: dict[str, Any], path: str) -> None:
        """An array or map: blocks of items (or key-value pairs), ended by a count of 0."""
        kind = sch["type"]
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

    def _primitive(self, sch: dict[str, Any], path: str) -> None:
        """A primitive or fixed value (``null`` takes no bytes)."""
        kind = sch["type"]
        if kind in ("int", "long"):
            self._long(path)
        elif kind == "boolean":
            self._need(1, path)
            if self.data[self.pos] > 1:
                raise BadDatumError(
                    ErrorClass.MALFORMED, f"field {path}: boolean byte is not 0 or 1"
                )
            self.pos += 1
        elif kind in ("float", "double"):
            n = 4 if kind == "float" else 8
            self._need(n, path)
            self.pos += n
        elif kind in ("bytes", "string"):
            self._bytes(kind == "string", path)
        elif kind == "fixed":
            self._need(sch["size"], path)
            self.pos += sch["size"]
        elif kind != "null":
            raise BadDatumError(ErrorClass.MALFORMED, f"field {path}: unsupported type {kind}")

    def _bytes(self, utf8: bool, path: str) -> None:
        """A length-prefixed bytes or (``utf8``) string value."""
        n = self._long(path)
        if n < 0:
            raise BadDatumError(ErrorClass.MALFORMED, f"field {path}: negative length {n}")
        self._need(n, path)
        if utf8:
            try:
                self.data[self.pos : self.pos + n].decode("utf-8")
            except UnicodeDecodeError:
                raise BadDatumError(
                    ErrorClass.MALFORMED, f"field {path}: string is not valid UTF-8"
                ) from None
        self.pos += n


def diagnose(datum: bytes, writer: SchemaVersion, exc: BaseException) -> BadDatumError:
    """Why ``datum`` (the bytes after the header), written with ``writer``, raised ``exc``."""
    if isinstance(exc, SchemaResolutionError):
        text = str(exc)
        if "default" in text.lower():
            return BadDatumError(
                ErrorClass.MISSING_FIELD,
                f"missing required field: writer schema {writer.fingerprint.hex()} lacks a field "
                f"the reader requires and has no default ({redact_text(text)})",
            )
        return BadDatumError(
            ErrorClass.MALFORMED, f"writer schema cannot be resolved: {redact_text(text)}"
        )
    walker = _Walker(datum, writer.decoding.get("__named_schemas", {}))
    try:
        walker.walk(writer.decoding)
    except BadDatumError as diag:
        return diag
    if walker.pos != len(datum):
        return BadDatumError(
            ErrorClass.TRAILING_BYTES,
            f"{len(datum) - walker.pos} bytes left after a complete datum of {walker.pos} bytes",
        )
    return BadDatumError(
        ErrorClass.MALFORMED, f"undecodable datum: {type(exc).__name__}: {redact_text(str(exc))}"
    )
