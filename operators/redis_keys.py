"""The one builder of Redis key names: every key Attune writes is made here.

Used by the Redis sink (:mod:`attune.operators.redis_sink`) and by anything that reads
what it wrote (client library, tests, docs). docs/redis.md lists every key with
its type, encoding and TTL.

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
"""

from __future__ import annotations

from dataclasses import dataclass

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
        """Hash of the user's profile features (``PROFILE_FIELDS``)."""
        return self._user(user, "profile")

    def segments(self, user: str) -> str:
        """Set of the segment names the user is in."""
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
