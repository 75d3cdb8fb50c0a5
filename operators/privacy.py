"""Pseudonymisation at ingestion: direct identifiers become keyed hashes before anything sees them.

The privacy gate of the flow (design.md, stage 3), applied in the source
partition right after decoding (:mod:`attune.operators.sources`), so that per-user
state, models, topics, Redis and logs only ever see pseudonyms.

**Which fields.** Every field an Avro schema in ``avro/`` marks with
``"pii": true`` (read from the installed ``attune.avro`` package when this
module is imported, so the list cannot drift from the schemas): today
``Event.user_id``, ``Event.anonymous_id``, ``Context.ip``, ``Identify.email``
and ``Identify.phone``. The two identity fields of the envelope
(:data:`IDENTITY_FIELDS`: they key the flow's state and Redis) follow a policy,
:class:`UserIdPolicy`: ``auto`` (the default) hashes an id that looks like an
email address, a phone number or an IP address and leaves opaque ids
(``u8f3a...``, UUIDs) as they are; ``always`` hashes every id; ``never``
hashes none. Every other ``pii`` field is always hashed.

**The pseudonym.** ``p1.<key id>.<digest>``: ``p1`` is the format version,
the key id names the secret (so a reader can tell which key made it), and the
digest is HMAC-SHA256(key, normalised value) truncated to 128 bits (RFC 2104
allows truncation to half the hash length) in lowercase base32 without
padding, 26 characters. The same value and key always give the same pseudonym,
so joins across events, Redis keys and topics still work; without the key it
cannot be reversed or recomputed. Values are normalised first, by shape, so
that trivially different spellings of one identifier join: an email is
trimmed and lowercased, a phone number keeps its digits (and a leading ``+``),
an IP address is written in its canonical form; anything else is hashed as it
is. A value that already is a pseudonym passes unchanged: pseudonymising is
idempotent, so re-ingesting a dead letter or an output does not hash twice.

**Rotation.** A new key (with a new key id) gives every identifier a new
pseudonym: after a rotation, state and Redis keys under the old pseudonyms are
no longer joined to new events (they age out with ``ATTUNE_STATE_TTL_S`` and
``ATTUNE_REDIS_TTL_S``), and a returning user starts afresh. Keep the old keys
(``ATTUNE_PSEUDONYM_PREVIOUS_KEYS``) until then: ``attune erase`` also removes
what was stored under them. docs/privacy.md has the procedure.

>>> p = Pseudonymiser(b"k" * 32, "k1")
>>> alice = p.pseudonym("Alice@Example.com ")
>>> alice
'p1.k1.bwft3iomzbotfxjmdimghjf5ja'
>>> p.pseudonym("alice@example.com") == alice, p.pseudonym(alice) == alice
(True, True)
>>> p.user_id("u-1234"), p.user_id("+44 7700 900123") == p.pseudonym("+447700900123")
('u-1234', True)
>>> from attune.operators.events import Context, Event, EventType, Identify
>>> e = Event("e1", EventType.IDENTIFY, 1_767_571_200_000, Identify("LOGIN", "a@b.io"),
...           user_id="u-1", anonymous_id="d-1", context=Context(ip="10.0.0.1"))
>>> clean = p.event(e)
>>> clean.user_id, clean.payload.email == p.pseudonym("a@b.io"), clean.context.ip[:6]
('u-1', True, 'p1.k1.')
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import importlib.resources
import ipaddress
import json
import logging
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from operator import attrgetter
from pathlib import Path
from typing import Any

from attune.operators.events import (
    PAYLOAD_OF_AVRO_NAME,
    Context,
    Event,
    LineItem,
)

log = logging.getLogger(__name__)

#: Version tag of the pseudonym format.
FORMAT = "p1"

#: Digest length: HMAC-SHA256 truncated to 128 bits (16 bytes -> 26 base32 characters).
DIGEST_BYTES = 16

#: Key material below this many bytes is refused (a guessable key makes hashes reversible
#: by trying every email address of a list).
MIN_KEY_BYTES = 32

#: Per-process cache of pseudonyms (value -> pseudonym), least recently used out first.
#: Identifiers repeat (one user's id on every event), so most HMACs are cache hits.
CACHE_SIZE = 65_536

#: The envelope fields that key the flow's state and Redis: they follow the user-id policy.
IDENTITY_FIELDS = frozenset({"user_id", "anonymous_id"})

#: Key id of the per-process key made up when none is configured (embedded demo only).
EPHEMERAL_KEY_ID = "ephemeral"

_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
_PSEUDONYM = re.compile(rf"^{FORMAT}\.[A-Za-z0-9_-]{{1,16}}\.[a-z2-7]{{26}}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# A phone number: a leading + or separators typical of phone numbers, 7-15 digits.
# Bare digit strings are taken as opaque ids (customer numbers), not phone numbers.
_PHONE_CHARS = re.compile(r"^\+?[\d\s().-]+$")
_IPV4 = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")

# In free text (dead-letter reasons, log lines): what to redact.
_TEXT_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_TEXT_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_TEXT_IPV6 = re.compile(r"(?<![0-9A-Za-z:.])[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*")
_TEXT_PHONE = re.compile(r"\+\d[\d\s().-]{5,}\d|\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}")


class UserIdPolicy(StrEnum):
    """Which user and anonymous ids are pseudonymised (``ATTUNE_PSEUDONYMISE_USER_IDS``)."""

    AUTO = "auto"  # ids that look like an email, phone number or IP address
    ALWAYS = "always"
    NEVER = "never"


# --- what is PII: read from the schemas ----------------------------------------------------


def _schema_files() -> dict[str, dict[str, Any]]:
    folder = importlib.resources.files("attune.avro")
    out: dict[str, dict[str, Any]] = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".avsc"):
            raw = json.loads(entry.read_text())
            out[f"{raw['namespace']}.{raw['name']}"] = raw
    return out


def pii_fields(schemas: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[str, ...]]:
    """The fields marked ``"pii": true``, by record full name.

    A ``pii`` field must be a string (or an optional string): a hash replaces it.

    >>> pii_fields({"a.R": {"type": "record", "name": "R", "fields": [
    ...     {"name": "x", "type": ["null", "string"], "pii": True}, {"name": "y", "type": "int"}]}})
    {'a.R': ('x',)}
    """
    out: dict[str, tuple[str, ...]] = {}
    for full_name, record in schemas.items():
        names = []
        for f in record.get("fields", ()):
            if not f.get("pii"):
                continue
            kind = f["type"]
            if kind not in ("string", ["null", "string"]):
                raise ValueError(
                    f"{full_name}.{f['name']} is marked pii but is {kind!r}; only string or "
                    "optional string fields can be pseudonymised"
                )
            names.append(f["name"])
        if names:
            out[full_name] = tuple(names)
    return out


#: The Python class of each record that can carry PII inside an Event.
_CLASS_OF_RECORD: dict[str, type[Any]] = {
    "attune.event.Event": Event,
    "attune.event.Context": Context,
    "attune.event.LineItem": LineItem,
    **PAYLOAD_OF_AVRO_NAME,
}

#: Records that are not part of an incoming event (outputs, catalogue): they only ever
#: carry values that were pseudonymised on the way in.
_NOT_INPUT = ("attune.output.", "attune.item.")


@dataclass(frozen=True, slots=True)
class PiiPlan:
    """Which fields of an incoming event are hashed: header, context and per payload record."""

    header: tuple[str, ...]  # fields of Event other than the identity fields
    identity: tuple[str, ...]  # identity fields marked pii (follow the user-id policy)
    context: tuple[str, ...]
    payload: Mapping[str, tuple[str, ...]]  # by Avro full name of the payload record
    line_item: tuple[str, ...]

    @classmethod
    def from_schemas(cls, schemas: Mapping[str, Mapping[str, Any]]) -> PiiPlan:
        """The plan of the given schemas; a ``pii`` field the flow cannot reach raises."""
        marked = pii_fields(schemas)
        for name in marked:
            if name not in _CLASS_OF_RECORD and not name.startswith(_NOT_INPUT):
                raise ValueError(
                    f"{name} has pii fields but attune.operators.privacy does not know where the "
                    "record sits in an Event; add it to _CLASS_OF_RECORD"
                )
        event = marked.get("attune.event.Event", ())
        return cls(
            header=tuple(f for f in event if f not in IDENTITY_FIELDS),
            identity=tuple(f for f in event if f in IDENTITY_FIELDS),
            context=marked.get("attune.event.Context", ()),
            payload={n: f for n, f in marked.items() if n in PAYLOAD_OF_AVRO_NAME},
            line_item=marked.get("attune.event.LineItem", ()),
        )

    def fields(self) -> list[str]:
        """Every pseudonymised field as ``Record.field`` (for docs and messages)."""
        out = [f"Event.{f}" for f in (*self.identity, *self.header)]
        out += [f"Context.{f}" for f in self.context]
        out += [f"{n.rsplit('.', 1)[1]}.{f}" for n, fs in self.payload.items() for f in fs]
        out += [f"LineItem.{f}" for f in self.line_item]
        return out


#: The plan of the schemas in ``avro/``.
PLAN = PiiPlan.from_schemas(_schema_files())


# --- the hash ------------------------------------------------------------------------------


def is_pseudonym(value: str) -> bool:
    """Whether ``value`` already is a pseudonym (of any key).

    >>> is_pseudonym("p1.k1.bwft3iomzbotfxjmdimghjf5ja"), is_pseudonym("p1.k1.short")
    (True, False)
    """
    return value.startswith(FORMAT) and _PSEUDONYM.match(value) is not None


def _phone_digits(value: str) -> str | None:
    if not _PHONE_CHARS.match(value):
        return None
    digits = "".join(c for c in value if c.isdigit())
    if not 7 <= len(digits) <= 15:
        return None
    if value.startswith("+"):
        return "+" + digits
    if value.isdigit():
        return None  # an opaque numeric id, not a phone number
    return digits


def _ip(value: str) -> str | None:
    if not (_IPV4.match(value) or (":" in value and len(value) <= 45)):
        return None
    try:
        return ipaddress.ip_address(value).compressed
    except ValueError:
        return None


def looks_like_pii(value: str) -> bool:
    """Whether an id looks like an email address, a phone number or an IP address.

    >>> [looks_like_pii(v) for v in ("a@b.io", "+1 555 0100 999", "10.1.2.3", "::1")]
    [True, True, True, True]
    >>> [looks_like_pii(v) for v in ("u8f3a2b", "4f1c7d2e-8a9b-4c3d-9e0f-1a2b3c4d5e6f", "1234567")]
    [False, False, False]
    """
    v = value.strip()
    return bool(_EMAIL.match(v)) or _phone_digits(v) is not None or _ip(v) is not None


def normalise(value: str) -> str:
    """The form of an identifier that is hashed: one spelling per email, phone number, IP.

    >>> normalise(" Alice@Example.COM"), normalise("+44 (7700) 900-123")
    ('alice@example.com', '+447700900123')
    >>> normalise("::FFFF:1.2.3.4")
    '::ffff:102:304'
    >>> normalise("Customer 42")
    'Customer 42'
    """
    v = value.strip()
    if _EMAIL.match(v):
        return v.lower()
    digits = _phone_digits(v)
    if digits is not None:
        return digits
    ip = _ip(v)
    if ip is not None:
        return ip
    return value


def load_key(value: str = "", path: str = "") -> bytes | None:
    """The key material from a setting's value or from a file (trimmed); ``None`` if neither.

    Raises ``ValueError`` (naming the setting, never the key) if both are set, the file
    cannot be read, or the key is shorter than :data:`MIN_KEY_BYTES`.
    """
    if value and path:
        raise ValueError("set one of ATTUNE_PSEUDONYM_KEY and ATTUNE_PSEUDONYM_KEY_FILE, not both")
    if path:
        try:
            key = Path(path).read_bytes().strip()
        except OSError as exc:
            raise ValueError(
                f"ATTUNE_PSEUDONYM_KEY_FILE={path}: cannot read the key ({exc.strerror})"
            ) from None
        source = f"the key in {path}"
    elif value:
        key = value.encode()
        source = "ATTUNE_PSEUDONYM_KEY"
    else:
        return None
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"{source} has {len(key)} bytes, fewer than {MIN_KEY_BYTES}; make one with "
            "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
        )
    return key


def parse_previous_keys(spec: str) -> dict[str, bytes]:
    """``"id:key,id:key"`` (``ATTUNE_PSEUDONYM_PREVIOUS_KEYS``) as ``{key id: key}``.

    >>> sorted(parse_previous_keys("k0:" + "a" * 32 + ", old:" + "b" * 40))
    ['k0', 'old']
    """
    out: dict[str, bytes] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key_id, sep, key = part.partition(":")
        if not sep or not _KEY_ID.match(key_id) or len(key) < MIN_KEY_BYTES:
            raise ValueError(
                "ATTUNE_PSEUDONYM_PREVIOUS_KEYS must be 'id:key,...' with ids of letters, "
                f"digits, _ or - and keys of at least {MIN_KEY_BYTES} bytes (entry "
                f"{len(out) + 1} is not)"
            )
        out[key_id] = key.encode()
    return out


class Pseudonymiser:
    """Replaces PII with ``p1.<key id>.<digest>`` pseudonyms; fast, deterministic, picklable.

    Args:
        key: the HMAC secret (at least :data:`MIN_KEY_BYTES` bytes).
        key_id: its name, carried in every pseudonym (letters, digits, ``_``, ``-``;
            at most 16).
        user_ids: which user and anonymous ids are hashed (:class:`UserIdPolicy`).
        previous: older keys by key id, for :meth:`all_pseudonyms` (erasure after a
            rotation); never used to make new pseudonyms.
        plan: which fields are PII (default: from the schemas).
    """

    def __init__(
        self,
        key: bytes,
        key_id: str,
        user_ids: UserIdPolicy | str = UserIdPolicy.AUTO,
        *,
        previous: Mapping[str, bytes] | None = None,
        plan: PiiPlan = PLAN,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"pseudonym key has {len(key)} bytes, fewer than {MIN_KEY_BYTES}")
        if not _KEY_ID.match(key_id):
            raise ValueError(
                f"pseudonym key id {key_id!r} must be 1-16 letters, digits, _ or - "
                "(set ATTUNE_PSEUDONYM_KEY_ID)"
            )
        try:
            self.policy = UserIdPolicy(user_ids)
        except ValueError:
            raise ValueError(
                f"ATTUNE_PSEUDONYMISE_USER_IDS={user_ids!r}: use auto, always or never"
            ) from None
        self.key_id = key_id
        self.previous = dict(previous or {})
        self.plan = plan
        self.cache_size = cache_size
        self._key = key
        self._prefix = f"{FORMAT}.{key_id}."
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self.pseudonym: Callable[[str], str] = functools.lru_cache(maxsize=cache_size)(
            self._pseudonym
        )
        self.user_id: Callable[[str], str] = functools.lru_cache(maxsize=cache_size)(self._user_id)
        self._context_fields = plan.context
        self._last_ctx: tuple[Context | None, Context | None] = (None, None)
        self._header = plan.header
        self._identity = plan.identity
        self._payload = {
            PAYLOAD_OF_AVRO_NAME[name]: fields for name, fields in plan.payload.items()
        }
        # By Avro full name: only the payload records that have PII fields.
        self._payload_by_name = {name: fields for name, fields in plan.payload.items() if fields}

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, ((self._key, self.key_id, self.policy.value), self.previous, self.plan))

    def __repr__(self) -> str:  # never the key
        return f"Pseudonymiser(key_id={self.key_id!r}, user_ids={self.policy.value!r})"

    # -- values

    def _digest(self, key_mac: Any, value: str) -> str:
        mac = key_mac.copy()
        mac.update(normalise(value).encode())
        return base64.b32encode(mac.digest()[:DIGEST_BYTES]).decode().rstrip("=").lower()

    def _pseudonym(self, value: str) -> str:
        if not value or is_pseudonym(value):
            return value
        return self._prefix + self._digest(self._mac, value)

    def _user_id(self, value: str) -> str:
        if self.policy is UserIdPolicy.NEVER:
            return value
        if self.policy is UserIdPolicy.AUTO and not looks_like_pii(value):
            return value
        return self.pseudonym(value)

    def all_pseudonyms(self, value: str) -> list[str]:
        """What ``value`` may be stored under: as the flow keys it now and, when that is a
        hash, under every previous key too (after a rotation). For erasure and look-ups."""
        if is_pseudonym(value):
            return [value]
        current = self.user_id(value)
        out = [current]
        if current != value:
            for key_id, key in self.previous.items():
                mac = hmac.new(key, digestmod=hashlib.sha256)
                out.append(f"{FORMAT}.{key_id}.{self._digest(mac, value)}")
        return list(dict.fromkeys(out))

    # -- events

    def event(self, event: Event) -> Event:
        """``event`` with its PII fields pseudonymised (the same object if there were none)."""
        changes: dict[str, Any] = {}
        uid = self.user_id
        for name in self._identity:
            value = getattr(event, name)
            if value:
                new = uid(value)
                if new != value:
                    changes[name] = new
        for name in self._header:
            value = getattr(event, name)
            if value:
                changes[name] = self.pseudonym(value)
        ctx = event.context
        if ctx is not None and self._context_fields:
            # Events of one page often share one Context object: remember the last one.
            if ctx is self._last_ctx[0]:
                new_ctx = self._last_ctx[1]
            else:
                new_ctx = _replace(ctx, self._context_fields, self.pseudonym)
                self._last_ctx = (ctx, new_ctx)
            if new_ctx is not ctx:
                changes["context"] = new_ctx
        fields = self._payload.get(type(event.payload))
        if fields:
            new_payload = _replace(event.payload, fields, self.pseudonym)
            if new_payload is not event.payload:
                changes["payload"] = new_payload
        if not changes:
            return event
        return Event(
            event_id=event.event_id,
            event_type=event.event_type,
            event_time=event.event_time,
            payload=changes.get("payload", event.payload),
            user_id=changes.get("user_id", event.user_id),
            anonymous_id=changes.get("anonymous_id", event.anonymous_id),
            session_id=changes.get("session_id", event.session_id),
            context=changes.get("context", event.context),
        )

    def record(self, record: dict[str, Any]) -> dict[str, Any]:
        """A decoded ``attune.event.Event`` record (payload as ``(name, record)``), in place.

        Runs on every decoded event, so it does only what the plan needs: a loop that has
        no field is skipped, and a payload is looked at only if its record has PII fields
        (by its name: of the payloads today only ``Identify``).
        """
        user_id = self.user_id
        for name in self._identity:
            value = record.get(name)
            if value:
                record[name] = user_id(value)
        if self._header:
            self._hash_fields(record, self._header)
        ctx = record.get("context")
        if ctx and self._context_fields:
            self._hash_fields(ctx, self._context_fields)
        payload = record.get("payload")
        if (type(payload) is tuple or type(payload) is list) and len(payload) == 2:
            fields = self._payload_by_name.get(payload[0])
            body = payload[1]
            if fields is not None and isinstance(body, dict):
                self._hash_fields(body, fields)
        return record

    def _hash_fields(self, body: dict[str, Any], names: tuple[str, ...]) -> None:
        """The fields ``names`` of the record dict ``body`` pseudonymised, in place."""
        for name in names:
            value = body.get(name)
            if value:
                body[name] = self.pseudonym(value)


def _replace(obj: Any, names: tuple[str, ...], hash_: Callable[[str], str]) -> Any:
    """``obj`` (a frozen dataclass) with the fields ``names`` hashed; ``obj`` if none changed."""
    new_values: list[Any] | None = None
    for name in names:
        value = getattr(obj, name)
        if value:
            new = hash_(value)
            if new != value:
                if new_values is None:
                    new_values = list(_all_fields(type(obj))(obj))
                new_values[_index(type(obj), name)] = new
    if new_values is None:
        return obj
    return type(obj)(*new_values)


_GETTERS: dict[type[Any], Callable[[Any], tuple[Any, ...]]] = {}


def _all_fields(cls: type[Any]) -> Callable[[Any], tuple[Any, ...]]:
    getter = _GETTERS.get(cls)
    if getter is None:
        getter = _GETTERS[cls] = attrgetter(*cls.__dataclass_fields__)
    return getter


def _index(cls: type[Any], name: str) -> int:
    return list(cls.__dataclass_fields__).index(name)


def _rebuild(
    key: tuple[bytes, str, str], previous: dict[str, bytes], plan: PiiPlan
) -> Pseudonymiser:
    return Pseudonymiser(*key, previous=previous, plan=plan)


def ephemeral() -> Pseudonymiser:
    """A pseudonymiser with a random per-process key: for the embedded demo only.

    Its pseudonyms differ between processes and runs, so nothing it produced can
    be joined to anything else; a warning says so.
    """
    log.warning(
        "no pseudonym key configured (ATTUNE_PSEUDONYM_KEY or ATTUNE_PSEUDONYM_KEY_FILE): "
        "using a random key for this process; pseudonyms will not match another run"
    )
    return Pseudonymiser(secrets.token_bytes(MIN_KEY_BYTES), EPHEMERAL_KEY_ID)


# --- free text -----------------------------------------------------------------------------


def _ipv6_or_keep(match: re.Match[str]) -> str:
    token = match.group(0)
    try:
        ipaddress.IPv6Address(token)
    except ValueError:
        return token
    return "<ip>"


def redact_text(text: str) -> str:
    """``text`` with anything that looks like an email, phone number or IP address replaced.

    For messages built from input (dead-letter reasons, exception texts, log lines),
    which must never echo PII.

    >>> redact_text("bad value 'ann@x.org' from 192.168.0.7, call +44 7700 900123")
    "bad value '<email>' from <ip>, call <phone>"
    >>> redact_text("late: event time 1767571100000 is 100000 ms behind")
    'late: event time 1767571100000 is 100000 ms behind'
    """
    if "@" in text:
        text = _TEXT_EMAIL.sub("<email>", text)
    text = _TEXT_IPV4.sub("<ip>", text)
    if ":" in text:
        text = _TEXT_IPV6.sub(_ipv6_or_keep, text)
    return _TEXT_PHONE.sub("<phone>", text)
