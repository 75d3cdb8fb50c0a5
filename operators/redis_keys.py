"""The one builder of Redis key names (every key Attune writes is made here), and the
format of the profile value.

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
>>> keys.profile("u1")
'attune:{u:u1}:profile'
>>> keys.audience("big_spenders"), keys.trending("global"), keys.model("kmeans")
('attune:segment:big_spenders', 'attune:trending:global', 'attune:model:kmeans')
>>> keys.segments("a}b%c")
'attune:{u:a%7Db%25c}:segments'
>>> keys.user_keys("u1")
['attune:{u:u1}:profile', 'attune:{u:u1}:segments', 'attune:{u:u1}:recs', 'attune:{u:u1}:alias']

The profile (``attune:{u:<user>}:profile``) is one string, format 2,
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

from attune.operators.features import PROFILE_FIELDS

DEFAULT_PREFIX = "attune:"

#: Suffixes of the per-user keys, in the order of :meth:`RedisKeys.user_keys`.
#: None is a suffix of another, so two kinds of key never collide.
USER_KEY_KINDS: tuple[str, ...] = ("profile", "segments", "recs", "alias")


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

    def profile(self, user: str) -> str:
        """String: the user's profile features (:func:`encode_profile`)."""
        return self._user(user, "profile")

    def segments(self, user: str) -> str:
        """Hash: the names of the segments the user is in, each with value ``1`` (a set
        before; the sink converts one it meets)."""
        return self._user(user, "segments")

    def recs(self, user: str) -> str:
        """The user's current recommendations."""
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
        """Every per-user key of ``user`` (all in one hash slot): what erasure deletes."""
        tag = f"{self.prefix}{{u:{escape_tag(user)}}}:"
        return [tag + kind for kind in USER_KEY_KINDS]


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
