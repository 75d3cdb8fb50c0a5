"""The one builder of Redis key names (every key Attune writes is made here), the layout of
a user's hash and the format of the profile value.

Used by the Redis sink (:mod:`attune.operators.redis_sink`) and by anything that reads
what it wrote (client library, tests, docs). docs/redis.md lists every key with
its type, encoding and TTL. It imports nothing but the standard library, so the client
library can share it.

Per-user keys carry a Redis Cluster hash tag, ``{u:<user>}``, so that all keys
of one user hash to the same slot: one user's writes can be pipelined to one
node and removed together. Redis hashes only what lies between the first ``{``
and the first ``}`` after it, so a ``}`` inside a user id would end the tag
early. User ids are therefore escaped inside the tag, percent-style and only
where needed: ``%`` becomes ``%25`` and ``}`` becomes ``%7D``. The escaping is
injective (distinct ids give distinct keys) and leaves ordinary ids unchanged;
readers building keys themselves must apply it too (:func:`escape_tag`).

>>> keys = RedisKeys()
>>> keys.user("u1")
'attune:{u:u1}'
>>> keys.audience("big_spenders"), keys.trending("global"), keys.model("kmeans")
('attune:segment:big_spenders', 'attune:trending:global', 'attune:model:kmeans')
>>> keys.user("a}b%c"), keys.alias("a1")
('attune:{u:a%7Db%25c}', 'attune:{u:a1}:alias')
>>> keys.user_keys("u1")[:2]
['attune:{u:u1}', 'attune:{u:u1}:alias']

The alias of an anonymous id (the user it was merged into) is a field of a shared
bucket hash, not a key of its own (a key costs ~150 bytes before its value; a field of
a listpack hash costs its bytes and ~4 more): ``attune:alias:<generation>:<bucket>``,
field the anonymous id, value the user id (:meth:`RedisKeys.alias_bucket`). ``bucket``
is ``crc32(anonymous id as UTF-8) % alias_buckets`` (``ATTUNE_REDIS_ALIAS_BUCKETS``,
1024: sized so that each bucket stays a listpack, under Redis's
``hash-max-listpack-entries`` of 128); ``generation`` is ``floor(unix seconds /
alias_period_s)`` (the per-user TTL, ``ATTUNE_REDIS_TTL_S``). Redis 7.0 has no TTL per
hash field, so the TTL is the generation's: a bucket expires at the end of the
generation after its own (``EXPIREAT``, :meth:`RedisKeys.alias_expires_at`), and a
reader looks an anonymous id up in the current generation, then the previous one
(:meth:`RedisKeys.alias_lookup`). An alias thus lives at least the TTL after its last
write and less than twice it. ``attune:{u:<anon>}:alias`` (:meth:`RedisKeys.alias`), a
string, is the layout before the buckets: still read, deleted by erasure, moved by
``attune redis-upgrade``.

>>> keys.alias_bucket("anon-1", 0), keys.alias_lookup("anon-1", now_s=30 * 86400 + 5)
('attune:alias:0:986', ('attune:alias:1:986', 'attune:alias:0:986'))
>>> keys.alias_expires_at(1)
7776000

A user's profile, recommendations and segments are one hash, ``attune:{u:<user>}``
(:meth:`RedisKeys.user`): one key, one TTL, one keyspace entry instead of three (each
key costs ~150 bytes before its value). Its fields:

- ``P``, ``P1``, ... ``P7``: the profile value (:func:`encode_profile`) led by the number
  of pieces and cut into :data:`CHUNK` -byte pieces (:func:`chunks`), in order;
- ``R``, ``R1``, ... ``R7``: the recommendations value
  (:mod:`attune.operators.recs_encoding`), the same way;
- one field per segment the user is in, the segment's name, value ``1``.

Pieces, because Redis keeps a small hash as one compact listpack only while every field
and value is at most ``hash-max-listpack-value`` (64) bytes; one longer value turns the
whole hash into a hashtable (about twice the memory). A value longer than
:data:`MAX_CHUNKS` pieces is stored whole in its first field. Field names starting with
an upper-case letter are Attune's (:func:`is_reserved`); segment names are lower case.

>>> [(field, len(piece)) for field, piece in chunks("P", "x" * 70)]
[('P', 64), ('P1', 7)]
>>> joined({b"P": b"12|1", b"vip": b"1"}, "P"), segment_names({b"P": b"12|1", b"vip": b"1"})
('2|1', ['vip'])

The profile value is one string, format 3,
``3|<value>|<value>|...``: the format, then the values of :data:`PROFILE_ORDER` in that
fixed order, separated by ``|`` (format 1 was a hash of field name -> value; the names,
stored in every user's hash, cost more than the values, and Redis keeps one per user).
Values are as the flow encodes them (ints in decimal, floats ``repr(round(x, 6))``,
``""`` when not known), but for a few written shorter: ``last_seen_ms`` in base 36,
``first_seen_ms`` and ``last_purchase_ms`` as base-36 milliseconds before it, and
``device_top`` and ``propensity_tier`` as one-letter codes (:data:`PROFILE_CODES`); a
value of those that cannot be written so is written whole, led by ``=``. A ``%`` or
``|`` inside a value is written ``%25`` / ``%7C``. Trailing values that are not known
are left out, and a reader takes a value it does not find as not known. New fields are
only ever appended to :data:`PROFILE_ORDER`, so a reader of an older list reads the
values it knows and ignores the rest. Format 2 (the values written plainly,
:func:`encode_profile_2`) is still read.

>>> value = encode_profile({"events": "3", "device_top": "a|b"},
...                        ("events", "revenue_minor", "device_top"))
>>> value
'3|3||a%7Cb'
>>> decode_profile(value, ("events", "revenue_minor", "device_top", "propensity_tier"))
{'events': '3', 'revenue_minor': None, 'device_top': 'a|b', 'propensity_tier': None}
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from attune.operators.features import PROFILE_FIELDS

DEFAULT_PREFIX = "attune:"
#: Buckets of the aliases of anonymous ids (``ATTUNE_REDIS_ALIAS_BUCKETS``' default): a
#: bucket stays one listpack up to ``hash-max-listpack-entries`` (128) aliases, so 1024
#: buckets hold ~65,000 live aliases at 64 a bucket on average (docs/redis.md).
ALIAS_BUCKETS = 1024
#: The generation of the alias buckets, as the per-user TTL's default (30 days).
ALIAS_PERIOD_S = 30 * 24 * 3600

#: Suffixes of the per-user keys after the user's tag, in the order of
#: :meth:`RedisKeys.user_keys`: the user's hash (no suffix), the alias of an anonymous id,
#: and the three keys of the layout before the hash (``profile``, ``segments``, ``recs``),
#: which readers still read and erasure still deletes until their TTL has passed.
USER_KEY_KINDS: tuple[str, ...] = ("", ":alias", ":profile", ":segments", ":recs")

#: The largest value kept in one field of a user's hash: Redis's default
#: ``hash-max-listpack-value``, above which a hash is no longer a listpack.
CHUNK = 64
#: Pieces a profile or recommendations value may take (``P`` ... ``P7``); a longer value is
#: stored whole in its first field.
MAX_CHUNKS = 8
#: The fields of the profile and the recommendations in a user's hash (first piece).
PROFILE_FIELD = "P"
RECS_FIELD = "R"


def escape_tag(user: str) -> str:
    """A user id as it appears inside a ``{u:...}`` hash tag: ``%`` -> ``%25``, ``}`` -> ``%7D``.

    >>> escape_tag("plain-id"), escape_tag("a}b"), escape_tag("50%}")
    ('plain-id', 'a%7Db', '50%25%7D')
    """
    if "%" in user or "}" in user:
        return user.replace("%", "%25").replace("}", "%7D")
    return user


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """Key names under one prefix (default ``attune:``).

    The prefix must not contain ``{`` or ``}``: the user hash tag has to be the
    first ``{...}`` of every per-user key.
    """

    prefix: str = DEFAULT_PREFIX
    #: Buckets of the aliases (``ATTUNE_REDIS_ALIAS_BUCKETS``) and the length of their
    #: generations in seconds (``ATTUNE_REDIS_TTL_S``); writers and readers must agree.
    alias_buckets: int = ALIAS_BUCKETS
    alias_period_s: int = ALIAS_PERIOD_S

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError(
                f"Redis key prefix {self.prefix!r} contains '{{' or '}}', which would break "
                "the per-user hash tag; set ATTUNE_REDIS_PREFIX without braces"
            )
        if self.alias_buckets < 1 or self.alias_period_s < 1:
            raise ValueError(
                f"alias buckets ({self.alias_buckets}) and their period "
                f"({self.alias_period_s} s) must be positive; set ATTUNE_REDIS_ALIAS_BUCKETS "
                "and ATTUNE_REDIS_TTL_S to positive numbers"
            )

    def _user(self, user: str, kind: str) -> str:
        return f"{self.prefix}{{u:{escape_tag(user)}}}:{kind}"

    def user(self, user: str) -> str:
        """Hash: the user's profile, recommendations and segments (module docstring)."""
        return f"{self.prefix}{{u:{escape_tag(user)}}}"

    def profile(self, user: str) -> str:
        """The layout before the user's hash: string, the profile (format 2; a hash of
        field -> value before). Read by the client while a user has no hash; deleted by
        erasure."""
        return self._user(user, "profile")

    def segments(self, user: str) -> str:
        """The layout before the user's hash: hash (a set before) of the user's segments."""
        return self._user(user, "segments")

    def recs(self, user: str) -> str:
        """The layout before the user's hash: string, the user's recommendations."""
        return self._user(user, "recs")

    def alias(self, anonymous_id: str) -> str:
        """The layout before the alias buckets: string, the user id an anonymous id was
        merged into. Still read by the client, deleted by erasure, moved into the buckets
        by ``attune redis-upgrade``."""
        return self._user(anonymous_id, "alias")

    def alias_generation(self, now_s: float) -> int:
        """The generation of the alias buckets at ``now_s`` (unix seconds)."""
        return int(now_s // self.alias_period_s)

    def alias_bucket(self, anonymous_id: str, generation: int) -> str:
        """Hash: the bucket of ``generation`` holding ``anonymous_id``'s alias (field: the
        anonymous id, value: the user id)."""
        bucket = zlib.crc32(anonymous_id.encode()) % self.alias_buckets
        return f"{self.prefix}alias:{generation}:{bucket}"

    def alias_lookup(self, anonymous_id: str, now_s: float) -> tuple[str, str]:
        """The buckets a reader looks ``anonymous_id`` up in, in order: the current
        generation's (where writers write), then the previous one's."""
        generation = self.alias_generation(now_s)
        return (
            self.alias_bucket(anonymous_id, generation),
            self.alias_bucket(anonymous_id, generation - 1),
        )

    def alias_expires_at(self, generation: int) -> int:
        """When the buckets of ``generation`` expire (unix seconds): at the end of the
        generation after it, so that an alias lives at least one period after its write."""
        return (generation + 2) * self.alias_period_s

    def alias_pattern(self) -> str:
        """A ``SCAN`` pattern of every alias bucket (the prefix glob-escaped)."""
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in self.prefix)
        return f"{escaped}alias:*"

    def audience(self, segment: str) -> str:
        """Set of the users in a segment (shared by all users: no hash tag)."""
        return f"{self.prefix}segment:{segment}"

    def trending(self, scope: str) -> str:
        """Trending items of a scope (``global``, a category...)."""
        return f"{self.prefix}trending:{scope}"

    def model(self, name: str) -> str:
        """Published parameters of a shared model (e.g. cluster centres), or a persona summary."""
        return f"{self.prefix}model:{name}"

    def clock(self, topic: str) -> str:
        """Hash of the stream clock's marks of ``topic``'s partitions, shared by a cluster."""
        return f"{self.prefix}clock:{topic}"

    def user_keys(self, user: str) -> list[str]:
        """Every per-user key of ``user`` (all in one hash slot): what erasure deletes, the
        keys of the layout before the user's hash included."""
        tag = f"{self.prefix}{{u:{escape_tag(user)}}}"
        return [tag + kind for kind in USER_KEY_KINDS]


# --- the user's hash -----------------------------------------------------------------------


def chunk_field(first: str, index: int) -> str:
    """The name of piece ``index`` of a value whose first field is ``first``.

    >>> chunk_field("R", 0), chunk_field("R", 2)
    ('R', 'R2')
    """
    return first if index == 0 else f"{first}{index}"


def chunks(first: str, value: str | bytes) -> list[tuple[str, bytes]]:
    """``value`` as the ``(field, piece)`` pairs of a user's hash.

    The value is led by one digit, the number of pieces, and cut into :data:`CHUNK` -byte
    pieces (by bytes: a piece may end inside a UTF-8 character; :func:`joined` puts the
    bytes together before decoding). A value that would take more than
    :data:`MAX_CHUNKS` pieces is stored whole in ``first`` (led by ``1``). The count lets
    a reader ignore the pieces of a longer earlier value that the writer deletes in the
    command after the one that writes the new pieces: no reader ever joins two values.

    >>> chunks("R", "3|m1|7|t|")
    [('R', b'13|m1|7|t|')]
    """
    data = value.encode() if isinstance(value, str) else value
    count = -(-(len(data) + 1) // CHUNK)
    if count > MAX_CHUNKS:
        count = 1
    data = b"%d" % count + data
    if count == 1:
        return [(first, data)]
    names = chunk_fields(first)
    return [(names[i], data[i * CHUNK : (i + 1) * CHUNK]) for i in range(count)]


def chunk_fields(first: str) -> tuple[str, ...]:
    """The names of every piece of a value whose first field is ``first``, in order.

    >>> chunk_fields("P")[:3]
    ('P', 'P1', 'P2')
    """
    names = _CHUNK_FIELDS.get(first)
    if names is None:
        names = _CHUNK_FIELDS[first] = tuple(chunk_field(first, i) for i in range(MAX_CHUNKS))
    return names


_CHUNK_FIELDS: dict[str, tuple[str, ...]] = {}


def stale_chunks(first: str, written: int) -> list[str]:
    """The piece fields after the ``written`` first ones: deleted when a value is written,
    so that no piece of a longer earlier value stays behind.

    >>> stale_chunks("P", 6)
    ['P6', 'P7']
    """
    return list(chunk_fields(first)[written:])


def is_reserved(field: str | bytes) -> bool:
    """Whether a field of a user's hash is Attune's own (profile, recommendations): its
    name starts with an upper-case letter; every other field is a segment.

    >>> is_reserved("P"), is_reserved(b"R3"), is_reserved("vip")
    (True, True, False)
    """
    head = field[:1]
    return (head.decode() if isinstance(head, bytes) else head).isupper()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def joined(fields: Mapping[Any, Any], first: str) -> str | None:
    """The value stored in pieces from ``first`` in ``fields`` (a user's hash as ``HGETALL``
    returns it, bytes or decoded), ``None`` when it has none.

    Raises ``ValueError`` (``UnicodeDecodeError`` included) when the pieces are not what
    :func:`chunks` writes: the count missing, a piece missing, not UTF-8.
    """
    if not fields:
        return None
    as_bytes = isinstance(next(iter(fields)), bytes)
    get = fields.get
    head = get(first.encode() if as_bytes else first)
    if head is None:
        return None
    data = head.encode() if isinstance(head, str) else head
    count = data[:1]
    if not (count.isdigit() and 1 <= int(count) <= MAX_CHUNKS):
        raise ValueError(f"field {first} does not start with its count of pieces (1-{MAX_CHUNKS})")
    parts = [data[1:]]
    for i in range(1, int(count)):
        name = chunk_field(first, i)
        piece = get(name.encode() if as_bytes else name)
        if piece is None:
            raise ValueError(f"field {name} is missing: {first} says {int(count)} pieces")
        parts.append(piece.encode() if isinstance(piece, str) else piece)
    return b"".join(parts).decode()


def segment_names(fields: Mapping[Any, Any]) -> list[str]:
    """The segments a user's hash says the user is in (its fields that are not reserved)."""
    return sorted(_text(name) for name in fields if not is_reserved(name))


# --- the profile value ---------------------------------------------------------------------

#: The profile format :func:`encode_profile` writes (the first value); format 2, the same
#: values written plainly, is still read (:func:`decode_profile`).
PROFILE_FORMAT = "3"
#: The profile's fields in their order: the features the profile holds, in
#: :data:`attune.operators.features.PROFILE_FIELDS` order, which is only ever appended to
#: (a reader matches values to names by position).
PROFILE_ORDER: tuple[str, ...] = PROFILE_FIELDS
#: Format 3: the time written in base 36, and the times written as base-36 milliseconds
#: before it (13 decimal digits become 8, and a gap of days 5 or 6).
TIME_FIELD = "last_seen_ms"
TIMES_BEFORE: tuple[str, ...] = ("first_seen_ms", "last_purchase_ms")
#: Format 3: one-letter codes of the values of a few fields (another value is written
#: whole, led by ``=`` when it is a code or starts with ``=``).
PROFILE_CODES: dict[str, dict[str, str]] = {
    "device_top": {"DESKTOP": "d", "MOBILE": "m", "TABLET": "t", "OTHER": "o"},
    "propensity_tier": {"high": "h", "medium": "m", "low": "l"},
}
_DECODES = {name: {c: v for v, c in codes.items()} for name, codes in PROFILE_CODES.items()}
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_PAIRS = [a + b for a in _DIGITS for b in _DIGITS]  # two base-36 digits per divmod
_SMALL = [pair.lstrip("0") or "0" for pair in _PAIRS]
#: The fields :func:`_pack` writes otherwise than as they are.
_PACKED = frozenset((TIME_FIELD, *TIMES_BEFORE, *PROFILE_CODES))


def escape_value(value: str) -> str:
    """``value`` with ``%`` and ``|`` escaped (most values have neither: returned as is).

    >>> escape_value("12"), escape_value("50%|x")
    ('12', '50%25%7Cx')
    """
    if "%" in value or "|" in value:
        return value.replace("%", "%25").replace("|", "%7C")
    return value


def unescape_value(value: str) -> str:
    """The inverse of :func:`escape_value`."""
    if "%" in value:
        return value.replace("%7C", "|").replace("%25", "%")
    return value


def base36(number: int) -> str:
    """``number`` in base 36, lower case (``int(text, 36)`` reads it back).

    >>> base36(1767994092828), base36(-35), base36(0)
    ('mk7e18v0', '-z', '0')
    """
    if 0 <= number < 1296:  # scores in thousandths: one lookup
        return _SMALL[number]
    if number < 0:
        return "-" + base36(-number)
    pairs = []
    while number:
        number, pair = divmod(number, 1296)
        pairs.append(_PAIRS[pair])
    return "".join(reversed(pairs)).lstrip("0")


def _canonical_int(value: str) -> int | None:
    """``value`` as an int when it is one written as :func:`str` writes it, else ``None``."""
    digits = value[1:] if value[:1] == "-" else value
    if digits.isascii() and digits.isdigit() and (digits[0] != "0" or digits == value == "0"):
        return int(value)
    return None


def _pack(name: str, value: str, last: int | None) -> str:
    """One value as format 3 writes it (before the ``|`` escaping)."""
    if not value:
        return value
    if name == TIME_FIELD or name in TIMES_BEFORE:
        number = _canonical_int(value)
        if number is not None and name == TIME_FIELD:
            return base36(number)
        if number is not None and last is not None:
            return base36(last - number)
        return "=" + value
    codes = PROFILE_CODES.get(name)
    if codes is not None:
        code = codes.get(value)
        if code is not None:
            return code
        if value[:1] == "=" or value in _DECODES[name]:
            return "=" + value
    return value


def _unpack(name: str, value: str, last: int | None) -> str:
    """The inverse of :func:`_pack`; ``ValueError`` for a time that is not base 36."""
    if not value:
        return value
    if name == TIME_FIELD or name in TIMES_BEFORE:
        if value[:1] == "=":
            return value[1:]
        if name == TIME_FIELD:
            return str(int(value, 36))
        if last is None:
            raise ValueError(f"{name} is relative to {TIME_FIELD}, which is not known")
        return str(last - int(value, 36))
    decodes = _DECODES.get(name)
    if decodes is not None:
        if value[:1] == "=":
            return value[1:]
        return decodes.get(value, value)
    return value


def encode_profile(fields: Mapping[str, str], names: Sequence[str] = PROFILE_ORDER) -> str:
    """The format-3 value of a profile: ``fields`` (encoded values, missing -> not known)
    in the order of ``names``, trailing unknown values left out.

    >>> encode_profile({"events": "3", "first_seen_ms": "1767994000000",
    ...                 "last_seen_ms": "1767994092828", "device_top": "MOBILE"})
    '3|3||||||||1zmk|mk7e18v0||||m'
    """
    get = fields.get
    last = _canonical_int(get(TIME_FIELD, "")) if TIME_FIELD in names else None
    values = [PROFILE_FORMAT]
    append = values.append
    for name in names:  # the per-batch cost of every profile: kept to dict lookups
        value = get(name, "")
        if value:
            if name in _PACKED:
                value = _pack(name, value, last)
            if "%" in value or "|" in value:
                value = escape_value(value)
        append(value)
    while values[-1] == "":
        values.pop()
    return "|".join(values)


def encode_profile_2(fields: Mapping[str, str], names: Sequence[str] = PROFILE_ORDER) -> str:
    """The format-2 value of a profile (what the sink wrote before format 3: the values as
    they are), for readers' tests and the memory bench's baselines."""
    values = ["2"] + [escape_value(fields.get(name, "")) for name in names]
    while values[-1] == "":
        values.pop()
    return "|".join(values)


def decode_profile(value: str, names: Sequence[str] = PROFILE_ORDER) -> dict[str, str | None]:
    """Every field of ``names`` from a format-3 or format-2 value, ``None`` when not known.

    Raises ``ValueError`` when ``value`` is neither, or a format-3 time is not base 36.

    >>> decode_profile('3|3||||||||1zmk|mk7e18v0||||m')["first_seen_ms"]
    '1767994000000'
    """
    parts = value.split("|")
    if parts[0] not in ("2", PROFILE_FORMAT):
        raise ValueError(f"profile format {parts[0][:16]!r}, not '2' or {PROFILE_FORMAT!r}")
    values = [unescape_value(v) for v in parts[1:]]
    values += [""] * (len(names) - len(values))
    raw = dict(zip(names, values, strict=False))
    if parts[0] == PROFILE_FORMAT:
        last_raw = raw.get(TIME_FIELD, "")
        last = int(last_raw, 36) if last_raw and last_raw[:1] != "=" else None
        raw = {name: _unpack(name, v, last) for name, v in raw.items()}
    return {name: raw[name] or None for name in names}
