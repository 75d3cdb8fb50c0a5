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

The profile value is one string, format 2,
``2|<value>|<value>|...``: the format, then the values of :data:`PROFILE_ORDER` in that
fixed order, separated by ``|`` (format 1 was a hash of field name -> value; the names,
stored in every user's hash, cost more than the values, and Redis keeps one per user).
Values are as format 1 stored them: ints in decimal, floats ``repr(round(x, 6))``,
``""`` when not known; a ``%`` or ``|`` inside a value is written ``%25`` / ``%7C``.
Trailing values that are not known are left out, and a reader takes a value it does not
find as not known. New fields are only ever appended to :data:`PROFILE_ORDER`, so a
reader of an older list reads the values it knows and ignores the rest.

>>> value = encode_profile({"events": "3", "device_top": "a|b"},
...                        ("events", "revenue_minor", "device_top"))
>>> value
'2|3||a%7Cb'
>>> decode_profile(value, ("events", "revenue_minor", "device_top", "propensity_tier"))
{'events': '3', 'revenue_minor': None, 'device_top': 'a|b', 'propensity_tier': None}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from attune.operators.features import PROFILE_FIELDS

DEFAULT_PREFIX = "attune:"

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

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError(
                f"Redis key prefix {self.prefix!r} contains '{{' or '}}', which would break "
                "the per-user hash tag; set ATTUNE_REDIS_PREFIX without braces"
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
        """String: the user id an anonymous id was merged into."""
        return self._user(anonymous_id, "alias")

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
    return [(chunk_field(first, i), data[i * CHUNK : (i + 1) * CHUNK]) for i in range(count)]


def stale_chunks(first: str, written: int) -> list[str]:
    """The piece fields after the ``written`` first ones: deleted when a value is written,
    so that no piece of a longer earlier value stays behind.

    >>> stale_chunks("P", 6)
    ['P6', 'P7']
    """
    return [chunk_field(first, i) for i in range(written, MAX_CHUNKS)]


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

#: The profile format :func:`encode_profile` writes (the first value).
PROFILE_FORMAT = "2"
#: The profile's fields in their format-2 order: the features the profile holds, in
#: :data:`attune.operators.features.PROFILE_FIELDS` order, which is only ever appended to
#: (a reader matches values to names by position).
PROFILE_ORDER: tuple[str, ...] = PROFILE_FIELDS


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


def encode_profile(fields: Mapping[str, str], names: Sequence[str] = PROFILE_ORDER) -> str:
    """The format-2 value of a profile: ``fields`` (encoded values, missing -> not known)
    in the order of ``names``, trailing unknown values left out."""
    values = [PROFILE_FORMAT]
    values += [escape_value(fields.get(name, "")) for name in names]
    while values[-1] == "":
        values.pop()
    return "|".join(values)


def decode_profile(value: str, names: Sequence[str] = PROFILE_ORDER) -> dict[str, str | None]:
    """Every field of ``names`` from a format-2 value, ``None`` when not known.

    Raises ``ValueError`` when ``value`` is not format 2.
    """
    parts = value.split("|")
    if parts[0] != PROFILE_FORMAT:
        raise ValueError(f"profile format {parts[0][:16]!r}, not {PROFILE_FORMAT!r}")
    values = parts[1:]
    return {
        name: unescape_value(values[i]) if i < len(values) and values[i] else None
        for i, name in enumerate(names)
    }
