"""Redis sink: typed write operations, coalesced per batch, one pipelined request per batch.

The last stage of the flow (design.md, "Sinks"): per-user logic emits
:data:`RedisOp` values (profiles, segment changes, aliases, forgetting a user,
published model parameters) and :class:`RedisSink` writes them. Key names come
from :class:`~attune.operators.redis_keys.RedisKeys`; docs/redis.md documents every key.

What the rest of Attune relies on:

- One key per user: the profile, the recommendations and the segments of a user are
  fields of one small hash, ``attune:{u:<user>}``
  (:meth:`~attune.operators.redis_keys.RedisKeys.user`; the fields are described in
  :mod:`attune.operators.redis_keys`), so a user costs one keyspace entry and one TTL.
- Idempotent: every command sets an absolute value (HSET of the changed fields, HDEL of
  a segment left and of the pieces a longer earlier value left, SADD/SREM of an audience
  member, SET, DEL); nothing increments. Replaying a batch after recovery, or a batch
  that failed half-way being sent again, leaves the same bytes in Redis.
- Whole values, never half: a profile (:func:`~attune.operators.redis_keys.encode_profile`,
  format 3) or a list of recommendations (format 5 or 4,
  :func:`~attune.operators.recs_encoding.stored` of the ranking step's format 3) is written
  whole, all its pieces in one ``HSET`` and its first piece leading with their count
  (:func:`~attune.operators.redis_keys.chunks`), so no reader joins two values.
- Only what changed: a batch writes the fields its operations changed (the profile
  when the user's profile was written, the segments entered and left), never the whole
  hash.
- Compact: Redis keeps these values for every user, and a hash stays one listpack
  while every value is at most 64 bytes, hence the pieces; docs/redis.md has the bytes
  per user they cost (``python -m attune.bench.redis_memory``).
- TTL'd: every per-user key written is given the configured TTL in the same
  request (the user's hash one TTL for all its fields: a member who stays in a segment
  keeps it while the profile is written); audience sets get their own TTL, refreshed
  whenever one is written.
- Batched: :func:`plan` folds a batch into the fewest commands (the last
  profile of a user wins, segment entries and exits fold in order, a
  :class:`ForgetUser` drops the user's earlier operations, each audience gets
  one SADD and one SREM for all its users), and the partition pipelines them:
  one request on one connection, the replies read after (not a MULTI
  transaction). Errors raise: Bytewax stops and recovery replays.
- Earlier layouts: the three keys per user written before the hash (``:profile``,
  ``:segments``, ``:recs``) are no longer written; :func:`upgrade_layout` (``attune
  redis-upgrade``) moves them into the users' hashes, readers read them while a user has
  no hash, erasure deletes them, and their TTL removes them (docs/redis.md, "Earlier
  layouts").

:func:`plan` is pure, so coalescing is tested without Redis:

>>> keys = RedisKeys()
>>> ops = [ProfileWrite("u1", {"events": "1"}), ProfileWrite("u1", {"events": "2"}),
...        SegmentsWrite("u1", entered=("vip",), exited=())]
>>> for command in plan(ops, keys=keys, ttl_s=60, profile_fields=("events", "device_top")):
...     print(command)
('HSET', 'attune:{u:u1}', 'P', b'13|2', 'vip', '1')
('HDEL', 'attune:{u:u1}', 'P1', 'P2', 'P3', 'P4', 'P5', 'P6', 'P7')
('EXPIRE', 'attune:{u:u1}', 60)
('SADD', 'attune:segment:vip', 'u1')
('EXPIRE', 'attune:segment:vip', 60)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from attune.operators import recs_encoding
from attune.operators.features import PROFILE_FIELDS, Features, FeatureValue
from attune.operators.redis_keys import (
    ALIAS_BUCKETS,
    DEFAULT_PREFIX,
    PROFILE_FIELD,
    PROFILE_ORDER,
    RECS_FIELD,
    RedisKeys,
    chunks,
    decode_profile,
    encode_profile,
    is_reserved,
    joined,
    stale_chunks,
)
from attune.operators.redis_retry import OutagePolicy, OutageRetry

log = logging.getLogger(__name__)

#: Default TTL of per-user keys (30 days), as ``Settings.redis_ttl_s``.
DEFAULT_TTL_S = 30 * 24 * 3600

#: One Redis command: its name and arguments, as redis-py's ``execute_command`` takes them.
Command = tuple[str | bytes | int, ...]


# --- write operations ------------------------------------------------------------------------


def encode_value(value: FeatureValue) -> str:
    """A feature value as stored in the Redis profile, the same bytes on every replay.

    ``None`` -> ``""``, ints as decimal strings (Redis keeps them as integers),
    floats rounded to 6 decimals and written with ``repr`` (shortest form).

    >>> [encode_value(v) for v in (None, 42, 0.1 + 0.2, 2 / 3, "shoes", True)]
    ['', '42', '0.3', '0.666667', 'shoes', '1']
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(round(value, 6))
    return value


@dataclass(frozen=True, slots=True)
class ProfileWrite:
    """Replace the user's profile with ``fields`` (encoded values; missing -> not known)."""

    user: str
    fields: Mapping[str, str]

    @classmethod
    def from_features(
        cls, user: str, features: Features, names: Sequence[str] = PROFILE_FIELDS
    ) -> ProfileWrite:
        """The profile of ``user``: the features ``names``, encoded with :func:`encode_value`.

        >>> ProfileWrite.from_features("u1", {"events": 3, "device_top": None}, ("events",))
        ProfileWrite(user='u1', fields={'events': '3'})
        """
        return cls(user, {name: encode_value(features.get(name)) for name in names})


@dataclass(frozen=True, slots=True)
class SegmentsWrite:
    """The user entered and exited segments; within one write, entries apply before exits."""

    user: str
    entered: tuple[str, ...] = ()
    exited: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ForgetUser:
    """Delete every per-user key of ``user`` and remove it from ``audiences``.

    For an anonymous id merged into a user (``keep_alias``: its alias key is
    left to the :class:`AliasWrite` s of the user's step, which decides it by the
    user's consent), and for erasure and consent withdrawal (every key, alias
    included). Earlier operations on ``user`` in the same batch are dropped, but
    for an alias write when ``keep_alias``.
    """

    user: str
    audiences: tuple[str, ...] = ()
    keep_alias: bool = False


@dataclass(frozen=True, slots=True)
class AliasWrite:
    """The anonymous id ``anonymous_id`` now belongs to ``user``."""

    anonymous_id: str
    user: str


@dataclass(frozen=True, slots=True)
class JsonWrite:
    """SET a shared (non-user) key, e.g. model parameters; ``ttl_s=None`` keeps it forever."""

    key: str
    value: bytes
    ttl_s: int | None = None


@dataclass(frozen=True, slots=True)
class RecsWrite:
    """Replace the user's recommendations (the ``R`` fields of the user's hash) with
    ``value``, the format-3 bytes of :func:`attune.operators.ranking.recs_value`, stored
    as format 5 or 4 (:func:`attune.operators.recs_encoding.stored`, which turns another
    writer's format 2 into format 3 first; docs/redis.md)."""

    user: str
    value: bytes


@dataclass(frozen=True, slots=True)
class TrendingWrite:
    """``ZADD`` the trend scores of ``members`` to the trending set of ``scope``
    (``global``, ``category:<path>``, ``segment:<name>``), trim it to its ``keep`` best
    (``ZREMRANGEBYRANK``) and refresh its TTL (the audience TTL: a shared key).

    Trend scores are forward-decayed logs (operators/trending.py): an item's score only
    changes when it is touched and stays comparable with newer ones, so writing the
    changed members and trimming keeps the set equal to the best ``keep`` items."""

    scope: str
    members: tuple[tuple[str, float], ...]
    keep: int = 1000


RedisOp = (
    ProfileWrite | SegmentsWrite | ForgetUser | AliasWrite | JsonWrite | RecsWrite | TrendingWrite
)


# --- coalescing ------------------------------------------------------------------------------


class _UserOps:
    """What one batch leaves for one user (or anonymous id), after coalescing."""

    __slots__ = ("alias", "forget", "keep_alias", "profile", "recs", "segments")

    def __init__(self) -> None:
        self.forget = False
        self.keep_alias = False
        self.profile: Mapping[str, str] | None = None
        self.segments: dict[str, bool] = {}  # segment -> member after the batch
        self.alias: str | None = None
        self.recs: bytes | None = None


def _new(users: dict[str, _UserOps], user: str) -> _UserOps:
    user_ops = users[user] = _UserOps()
    return user_ops


class _Batch:
    """A batch of operations after coalescing: what :func:`plan` turns into commands."""

    __slots__ = ("audiences", "shared", "trending", "users")

    def __init__(self) -> None:
        self.users: dict[str, _UserOps] = {}
        # audience -> user -> member after the batch (only pairs the batch touched)
        self.audiences: dict[str, dict[str, bool]] = {}
        self.shared: dict[str, JsonWrite] = {}
        self.trending: dict[str, tuple[dict[str, float], int]] = {}  # scope -> (scores, keep)


def plan(
    items: Iterable[RedisOp],
    *,
    keys: RedisKeys | None = None,
    ttl_s: int = DEFAULT_TTL_S,
    audience_ttl_s: int | None = None,
    profile_fields: Sequence[str] = PROFILE_ORDER,
    now_s: float | None = None,
) -> list[Command]:
    """The Redis commands that apply ``items`` in order, coalesced.

    Per user, in the user's hash (one ``HSET`` of the fields written, one ``HDEL`` of
    the segments left and of stale pieces, one ``EXPIRE``): the last :class:`ProfileWrite`
    wins (the ``P`` fields); segment entries and
    exits fold in order into one final membership per segment (entered then exited
    -> HDEL); a :class:`ForgetUser` drops what came before it for that user,
    becomes DEL of every per-user key plus SREM from its audiences and the
    audiences the dropped operations entered, and what follows it is applied
    after the DEL. Each audience gets one SADD and one SREM for all its users.
    Every per-user key written gets EXPIRE ``ttl_s``; each audience written
    gets EXPIRE ``audience_ttl_s`` (default ``ttl_s``). For
    :class:`JsonWrite`, the last value per key wins; for :class:`RecsWrite`, the last
    per user (the ``R`` fields, format 3); :class:`TrendingWrite` s of one scope fold into one
    ``ZADD`` (the last score per member), one trim and one ``EXPIRE``.

    An :class:`AliasWrite` is an ``HSET`` of the anonymous id in its alias bucket of the
    generation of ``now_s`` (unix seconds, default the wall clock; the buckets of
    :meth:`~attune.operators.redis_keys.RedisKeys.alias_bucket`), one per bucket for all
    its aliases, with the bucket's ``EXPIREAT``; a :class:`ForgetUser` without
    ``keep_alias`` also ``HDEL`` s the id from the buckets of this generation and the one
    before (where readers look), before the batch's alias writes.

    Raises ``ValueError`` for a profile field not in ``profile_fields``, and for a segment
    name that is empty or starts with an upper-case letter (those fields are Attune's:
    :func:`~attune.operators.redis_keys.is_reserved`).
    """
    keys = keys or RedisKeys()
    audience_ttl = ttl_s if audience_ttl_s is None else audience_ttl_s
    batch = _coalesce(items, profile_fields)
    commands: list[Command] = []
    _user_commands(commands, batch.users, keys, ttl_s, profile_fields)
    _alias_commands(commands, batch.users, keys, time.time() if now_s is None else now_s)
    _audience_commands(commands, batch.audiences, keys, audience_ttl)
    _trending_commands(commands, batch.trending, keys, audience_ttl)
    _shared_commands(commands, batch.shared)
    return commands


def _coalesce(items: Iterable[RedisOp], profile_fields: Sequence[str]) -> _Batch:
    """Fold ``items`` in order into what the batch leaves per user, audience, shared key
    and trending scope (the rules of :func:`plan`).

    The frequent operations are folded inline (no call per operation in the batch loop);
    the rarer :class:`ForgetUser` goes to :func:`_forget`.
    """
    allowed = frozenset(profile_fields)
    batch = _Batch()
    users, audiences, shared, trending = batch.users, batch.audiences, batch.shared, batch.trending
    for op in items:
        if isinstance(op, ProfileWrite):
            unknown = op.fields.keys() - allowed
            if unknown:
                raise ValueError(
                    f"profile of user {op.user!r} has fields {sorted(unknown)} that are not "
                    f"profile fields; profile fields are {list(profile_fields)}"
                )
            user_ops = users.get(op.user) or _new(users, op.user)
            user_ops.profile = op.fields
        elif isinstance(op, SegmentsWrite):
            _check_segments(op)
            user_ops = users.get(op.user) or _new(users, op.user)
            for segment in op.entered:
                user_ops.segments[segment] = True
                audiences.setdefault(segment, {})[op.user] = True
            for segment in op.exited:
                user_ops.segments[segment] = False
                audiences.setdefault(segment, {})[op.user] = False
        elif isinstance(op, ForgetUser):
            _forget(batch, op)
        elif isinstance(op, AliasWrite):
            alias_ops = users.get(op.anonymous_id) or _new(users, op.anonymous_id)
            alias_ops.alias = op.user
        elif isinstance(op, JsonWrite):
            shared.pop(op.key, None)  # re-insert: the last write decides the position too
            shared[op.key] = op
        elif isinstance(op, RecsWrite):
            user_ops = users.get(op.user) or _new(users, op.user)
            user_ops.recs = op.value
        elif isinstance(op, TrendingWrite):
            scores = trending[op.scope][0] if op.scope in trending else {}
            scores.update(op.members)
            trending[op.scope] = (scores, op.keep)
        else:
            raise TypeError(f"not a Redis write operation: {op!r}")
    return batch


def _check_segments(op: SegmentsWrite) -> None:
    """Raise ``ValueError`` for a segment name that is not a field a user's hash can keep."""
    reserved = [s for s in (*op.entered, *op.exited) if not s or is_reserved(s)]
    if reserved:
        raise ValueError(
            f"segment names {reserved} of user {op.user!r} are empty or start with an "
            "upper-case letter, which the fields of a user's Redis hash keep for "
            "Attune's own values; segment names are lower case"
        )


def _forget(batch: _Batch, op: ForgetUser) -> None:
    """Drop what the batch did to ``op.user`` so far (but its alias when ``keep_alias``),
    mark it for deletion and take it out of its audiences and those the batch entered."""
    audiences = batch.audiences
    earlier = batch.users.get(op.user)
    user_ops = batch.users[op.user] = _UserOps()  # earlier operations of the batch dropped
    user_ops.forget = True
    if op.keep_alias:
        user_ops.keep_alias = True
        user_ops.alias = earlier.alias if earlier is not None else None
    for segment in op.audiences:
        audiences.setdefault(segment, {})[op.user] = False
    # Entries the dropped operations made are undone too (their SADD never runs).
    for members in audiences.values():
        if members.get(op.user):
            members[op.user] = False


def _user_commands(
    commands: list[Command],
    users: dict[str, _UserOps],
    keys: RedisKeys,
    ttl_s: int,
    profile_fields: Sequence[str],
) -> None:
    """Append each user's DEL and the HSET/HDEL of its hash's changed fields with the
    hash's EXPIRE."""
    for user, user_ops in users.items():
        if user_ops.forget:
            doomed = keys.user_keys(user)
            if user_ops.keep_alias:
                doomed.remove(keys.alias(user))
            commands.append(("DEL", *doomed))
        written: list[str | bytes] = []
        deleted: list[str] = []
        if user_ops.profile is not None:
            value = encode_profile(user_ops.profile, profile_fields)
            _pieces(written, deleted, PROFILE_FIELD, value)
        if user_ops.recs is not None:
            _pieces(written, deleted, RECS_FIELD, recs_encoding.stored(user_ops.recs))
        for segment, member in user_ops.segments.items():
            if member:
                written += (segment, "1")
            else:
                deleted.append(segment)
        if written or deleted:
            key = keys.user(user)
            if written:
                commands.append(("HSET", key, *written))
            if deleted:
                commands.append(("HDEL", key, *deleted))
            # One TTL for everything of the user: a segment lives as long as the profile.
            commands.append(("EXPIRE", key, ttl_s))


def _alias_commands(
    commands: list[Command], users: dict[str, _UserOps], keys: RedisKeys, now_s: float
) -> None:
    """Append the HDEL of the forgotten ids from the alias buckets readers look in, then
    one HSET per bucket of the batch's aliases with the bucket's EXPIREAT (after the
    HDELs: a forget followed by an alias write in one batch leaves the alias)."""
    generation = keys.alias_generation(now_s)
    deleted: dict[str, list[str]] = {}
    written: dict[str, list[str]] = {}
    for user, user_ops in users.items():
        if user_ops.forget and not user_ops.keep_alias:
            for bucket in keys.alias_lookup(user, now_s):
                deleted.setdefault(bucket, []).append(user)
        if user_ops.alias is not None:
            written.setdefault(keys.alias_bucket(user, generation), []).extend(
                (user, user_ops.alias)
            )
    for bucket, ids in deleted.items():
        commands.append(("HDEL", bucket, *ids))
    if written:
        expires_at = keys.alias_expires_at(generation)
        for bucket, pairs in written.items():
            commands.append(("HSET", bucket, *pairs))
            commands.append(("EXPIREAT", bucket, expires_at))


def _pieces(written: list[str | bytes], deleted: list[str], first: str, value: str | bytes) -> None:
    """Add the fields of ``value``'s pieces to ``written`` and the pieces a longer earlier
    value may have left to ``deleted`` (:func:`~attune.operators.redis_keys.chunks`)."""
    pieces = chunks(first, value)
    for field, piece in pieces:
        written += (field, piece)
    deleted += stale_chunks(first, len(pieces))


def _audience_commands(
    commands: list[Command], audiences: dict[str, dict[str, bool]], keys: RedisKeys, ttl_s: int
) -> None:
    """Append one SADD and one SREM per audience for all its users, and its EXPIRE."""
    for segment, members in audiences.items():
        key = keys.audience(segment)
        added = [u for u, member in members.items() if member]
        removed = [u for u, member in members.items() if not member]
        if added:
            commands.append(("SADD", key, *added))
        if removed:
            commands.append(("SREM", key, *removed))
        commands.append(("EXPIRE", key, ttl_s))


def _trending_commands(
    commands: list[Command],
    trending: dict[str, tuple[dict[str, float], int]],
    keys: RedisKeys,
    ttl_s: int,
) -> None:
    """Append one ZADD, one trim to the ``keep`` best and one EXPIRE per trending scope."""
    for scope, (scores, keep) in trending.items():
        key = keys.trending(scope)
        zadd: list[str | bytes | int] = ["ZADD", key]
        for member, score in scores.items():
            zadd += (repr(round(score, 6)), member)
        commands.append(tuple(zadd))
        commands.append(("ZREMRANGEBYRANK", key, 0, -keep - 1))
        commands.append(("EXPIRE", key, ttl_s))


def _shared_commands(commands: list[Command], shared: dict[str, JsonWrite]) -> None:
    """Append the SET of each shared key's last value (with EX when it has a TTL)."""
    for write in shared.values():
        if write.ttl_s is None:
            commands.append(("SET", write.key, write.value))
        else:
            commands.append(("SET", write.key, write.value, "EX", write.ttl_s))


# --- upgrading the layout before the user's hash -------------------------------------------


#: Lua: store a user's values of the layout before the hash in the user's hash, unless the
#: flow already wrote one, and delete the old keys. ``KEYS``: the hash, then the old keys;
#: ``ARGV``: the TTL in ms, then field, value pairs. Returns 1 when moved, 0 when
#: the hash was there (the flow's newer values win; the old keys go either way).
UPGRADE_USER = """
local moved = 0
if redis.call('EXISTS', KEYS[1]) == 0 and #ARGV > 1 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 2))
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  moved = 1
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
return moved
"""

#: Lua: replace a user's list in its hash by a newer format of the same list, unless the
#: flow wrote another list meanwhile (the first piece is no longer ``ARGV[2]``).
#: ``KEYS[1]``: the hash; ``ARGV``: the first piece's field and old value, the number of
#: field, value arguments that follow, then those, then the fields to delete.
UPGRADE_RECS = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
local n = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], unpack(ARGV, 4, 3 + n))
if #ARGV > 3 + n then redis.call('HDEL', KEYS[1], unpack(ARGV, 4 + n)) end
return 1
"""

#: The kinds of key of the layout before the user's hash (suffixes after the user's tag).
_OLD_KINDS = (":profile", ":segments", ":recs")


@dataclass(frozen=True, slots=True)
class UpgradeReport:
    """What :func:`upgrade_layout` did: users whose old keys went into a new hash, users
    whose hash the flow had written already (their old keys only deleted); alias keys
    moved into the alias buckets, aliases moved to the bucket the current settings give
    them (after a change of ``ATTUNE_REDIS_ALIAS_BUCKETS`` or ``ATTUNE_REDIS_TTL_S``);
    lists in users' hashes rewritten in the current format."""

    moved: int
    kept: int
    aliases_moved: int = 0
    aliases_rebucketed: int = 0
    #: users' lists rewritten in the format the sink writes now (format 4 -> 5)
    recs_rewritten: int = 0


def _glob(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _old_fields(client: redis.Redis, old: Sequence[str], user: str) -> tuple[list[Any], int]:
    """The hash fields of a user's old keys (profile, segments, recs) and the longest TTL
    left of them in ms (0: none)."""
    fields: list[Any] = []
    pttl = 0
    for key in old:
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "none":
            continue
        pttl = max(pttl, int(client.pttl(key)))
        if key.endswith(":profile"):
            raw = client.get(key) if kind == "string" else client.hgetall(key)
            text = _profile_of_text(_as_text(raw)) if kind == "string" else _profile_of_hash(raw)
            fields += [f for pair in chunks(PROFILE_FIELD, text) for f in pair]
        elif key.endswith(":segments"):
            members = client.hkeys(key) if kind == "hash" else client.smembers(key)
            names = sorted(_as_text(m) for m in members)
            fields += [f for name in names if not is_reserved(name) for f in (name, "1")]
        elif kind == "string":  # recs: format 5 or 4 (formats 3 and 2 converted; 1 kept)
            raw = client.get(key) or b""
            value = recs_encoding.stored(raw if isinstance(raw, bytes) else raw.encode())
            fields += [f for pair in chunks(RECS_FIELD, value) for f in pair]
        else:
            log.warning("user %r: %s is a %s, not a string; not moved", user, key, kind)
    return fields, pttl


def _as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _profile_of_text(text: str) -> str:
    """The format-3 value of a format-2 profile; another value as it is (readers say what
    is wrong with it)."""
    try:
        return encode_profile({k: v for k, v in decode_profile(text).items() if v is not None})
    except ValueError:
        return text


def _profile_of_hash(raw: Any) -> str:
    """The format-2 value of a format-1 profile (a hash of field -> value)."""
    stored = {_as_text(k): _as_text(v) for k, v in raw.items()}
    return encode_profile({k: v for k, v in stored.items() if k in PROFILE_ORDER})


def upgrade_layout(
    client: redis.Redis, keys: RedisKeys, ttl_s: int = DEFAULT_TTL_S, now_s: float | None = None
) -> UpgradeReport:
    """Move every user's keys of the layout before the hash (``:profile``, ``:segments``,
    ``:recs``) into the user's hash (:data:`UPGRADE_USER`), with the longest TTL left of
    them (``ttl_s`` when none had one); then every alias key ``attune:{u:<anon>}:alias``
    into the alias buckets of ``keys`` (the generation of ``now_s``, default the wall
    clock), and every alias in a bucket readers no longer look in (the bucket count or the
    TTL changed) into the bucket they look in; last, every list in a user's hash in format
    4 that format 5 can hold is rewritten in format 5.

    Run it once after the upgrade, before the upgraded flow starts (``attune redis
    upgrade``): a user the flow has written already keeps only what the flow wrote, and
    an old segment membership of such a user is not carried over. Idempotent: a second
    run finds no old keys. Readers read the old keys of a user without a hash meanwhile.
    """
    prefix = _glob(keys.prefix) + "{u:*}"
    tags: set[str] = set()
    for kind in _OLD_KINDS:
        for raw in client.scan_iter(match=prefix + kind, count=1000):
            key = _as_text(raw)
            tags.add(key[len(keys.prefix) + 3 : key.rindex("}")])
    moved = kept = 0
    for tag in sorted(tags):
        base = f"{keys.prefix}{{u:{tag}}}"
        old = [base + kind for kind in _OLD_KINDS]
        fields, pttl = _old_fields(client, old, tag)
        if client.eval(UPGRADE_USER, 4, base, *old, pttl or ttl_s * 1000, *fields):
            moved += 1
        else:
            kept += 1
    now_s = time.time() if now_s is None else now_s
    aliases_moved = _upgrade_alias_keys(client, keys, now_s)
    rebucketed = _rebucket_aliases(client, keys, now_s)
    return UpgradeReport(moved, kept, aliases_moved, rebucketed, _upgrade_recs(client, keys))


def _upgrade_recs(client: redis.Redis, keys: RedisKeys) -> int:
    """Rewrite every user's list stored in an older format than :func:`recs_encoding.stored`
    makes of it (format 4 -> 5) in the user's hash (:data:`UPGRADE_RECS`: a list the flow
    wrote meanwhile is left alone); the number rewritten."""
    rewritten = 0
    for raw in client.scan_iter(match=_glob(keys.prefix) + "{u:*}", count=1000):
        key = _as_text(raw)
        if not key.endswith("}") or _as_text(client.type(key)) != "hash":
            continue
        fields = client.hgetall(key)
        try:
            value = joined(fields, RECS_FIELD)
        except ValueError:  # readers report it; not this tool's to repair
            continue
        if value is None or not value.startswith(f"{recs_encoding.STORED_FORMAT}|"):
            continue
        new = recs_encoding.stored(value.encode())
        if new == value.encode():
            continue
        written: list[str | bytes] = []
        deleted: list[str] = []
        _pieces(written, deleted, RECS_FIELD, new)
        head = fields.get(RECS_FIELD.encode(), fields.get(RECS_FIELD))
        args = [RECS_FIELD, head, len(written), *written, *deleted]
        rewritten += int(client.eval(UPGRADE_RECS, 1, key, *args))  # type: ignore[arg-type]
    return rewritten


def _unescape_tag(tag: str) -> str:
    """The id inside a ``{u:...}`` tag (:func:`~attune.operators.redis_keys.escape_tag`
    undone)."""
    return tag.replace("%7D", "}").replace("%25", "%") if "%" in tag else tag


def _upgrade_alias_keys(client: redis.Redis, keys: RedisKeys, now_s: float) -> int:
    """Move every ``attune:{u:<anon>}:alias`` string key (the layout before the alias
    buckets) into its bucket of the current generation, unless the flow has written that
    anonymous id's alias there already (``HSETNX``: the flow's is newer), and delete it;
    the number of alias keys deleted."""
    generation = keys.alias_generation(now_s)
    expires_at = keys.alias_expires_at(generation)
    moved = 0
    for raw in client.scan_iter(match=_glob(keys.prefix) + "{u:*}:alias", count=1000):
        key = _as_text(raw)
        anonymous_id = _unescape_tag(key[len(keys.prefix) + 3 : key.rindex("}")])
        try:
            user = client.get(key)
        except redis.ResponseError:  # not a string: not an alias Attune wrote
            log.warning("%s is not a string; not moved", key)
            continue
        if user:
            bucket = keys.alias_bucket(anonymous_id, generation)
            pipe = client.pipeline(transaction=False)
            pipe.hsetnx(bucket, anonymous_id, user)
            pipe.expireat(bucket, expires_at)
            pipe.delete(key)
            pipe.execute()
            moved += 1
    return moved


def _rebucket_aliases(client: redis.Redis, keys: RedisKeys, now_s: float) -> int:
    """Move each alias that is in no bucket a reader looks in under the current settings
    (:meth:`~attune.operators.redis_keys.RedisKeys.alias_lookup`) to its bucket of the
    current generation (``HSETNX``: an alias the flow wrote there wins); the number moved."""
    generation = keys.alias_generation(now_s)
    expires_at = keys.alias_expires_at(generation)
    moved = 0
    for raw in client.scan_iter(match=keys.alias_pattern(), count=1000):
        bucket = _as_text(raw)
        for field, user in client.hgetall(bucket).items():
            anonymous_id = _as_text(field)
            if bucket in keys.alias_lookup(anonymous_id, now_s):
                continue
            target = keys.alias_bucket(anonymous_id, generation)
            pipe = client.pipeline(transaction=False)
            pipe.hsetnx(target, anonymous_id, user)
            pipe.expireat(target, expires_at)
            pipe.hdel(bucket, anonymous_id)
            pipe.execute()
            moved += 1
    return moved


# --- the sink --------------------------------------------------------------------------------


class RedisSinkError(RuntimeError):
    """Redis could not be reached or refused a batch; Bytewax stops and recovery replays."""


class _RedisSettings(Protocol):
    """The part of ``attune.flows.settings.Settings`` the sink reads (operators/ never imports
    flows/)."""

    @property
    def redis_url(self) -> str: ...
    @property
    def redis_username(self) -> str: ...
    @property
    def redis_password(self) -> str: ...
    @property
    def redis_prefix(self) -> str: ...
    @property
    def redis_ttl_s(self) -> int: ...
    @property
    def redis_ssl_cafile(self) -> str: ...
    @property
    def redis_ssl_certfile(self) -> str: ...
    @property
    def redis_ssl_keyfile(self) -> str: ...
    @property
    def redis_timeout_s(self) -> int: ...
    @property
    def redis_outage_limit_s(self) -> int: ...
    @property
    def redis_alias_buckets(self) -> int: ...


@dataclass(frozen=True, slots=True, repr=False)
class RedisConfig:
    """Where and how the sink writes.

    ``url`` is ``redis://`` or ``rediss://`` (TLS); ``username``/``password``
    override the URL's when set (Redis 6 ACL user, or ``AUTH`` with a password
    only). With TLS, ``ssl_cafile`` verifies the server (default: the system CAs)
    and ``ssl_certfile``/``ssl_keyfile`` authenticate the client. ``audience_ttl_s``
    defaults to ``ttl_s``. The password never appears in ``repr`` or messages.

    >>> RedisConfig("rediss://:pw@cache:6380/0", username="app", password="secret",
    ...             ssl_cafile="/etc/ca.pem").client_options()["ssl_ca_certs"]
    '/etc/ca.pem'
    >>> "secret" in repr(RedisConfig("redis://h", password="secret"))
    False
    """

    url: str
    username: str = ""
    password: str = ""
    prefix: str = DEFAULT_PREFIX
    ttl_s: int = DEFAULT_TTL_S
    audience_ttl_s: int | None = None
    socket_timeout_s: float = 30.0
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    #: Seconds Redis may stay silent before the flow stops (redis_retry.py); ``None``: no
    #: holding back (redis-py's few quick retries), as tools and tests want.
    outage_limit_s: float | None = None
    #: Buckets of the aliases of anonymous ids (``ATTUNE_REDIS_ALIAS_BUCKETS``).
    alias_buckets: int = ALIAS_BUCKETS

    def __post_init__(self) -> None:
        if not self.url:
            raise ValueError("no Redis URL: set ATTUNE_REDIS_URL (redis:// or rediss://)")
        tls_files = self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile
        if tls_files and not self.url.startswith("rediss://"):
            raise ValueError(
                f"Redis TLS files are set (ATTUNE_REDIS_SSL_*) but {self.safe_url} is not a "
                "rediss:// URL; use rediss:// to connect with TLS"
            )
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError(
                "set both ATTUNE_REDIS_SSL_CERTFILE and ATTUNE_REDIS_SSL_KEYFILE, or neither"
            )
        if self.ttl_s <= 0 or (self.audience_ttl_s is not None and self.audience_ttl_s <= 0):
            raise ValueError(
                f"Redis TTLs must be positive seconds (ttl_s={self.ttl_s}, "
                f"audience_ttl_s={self.audience_ttl_s}); set ATTUNE_REDIS_TTL_S"
            )
        self.keys()  # validates the prefix and the alias buckets

    def keys(self) -> RedisKeys:
        """The key builder of this config: its prefix, alias buckets and, as the alias
        buckets' generation, its per-user TTL."""
        return RedisKeys(self.prefix, self.alias_buckets, self.ttl_s)

    @classmethod
    def from_settings(cls, settings: _RedisSettings, *, hold_back: bool = False) -> RedisConfig:
        """The config from Attune's settings (``ATTUNE_REDIS_*``); ``hold_back``: the
        flow's, which waits out a silent Redis up to ``ATTUNE_REDIS_OUTAGE_LIMIT_S``
        (tools such as ``attune erase`` fail at once instead)."""
        return cls(
            url=settings.redis_url,
            username=settings.redis_username,
            password=settings.redis_password,
            prefix=settings.redis_prefix,
            ttl_s=settings.redis_ttl_s,
            ssl_cafile=settings.redis_ssl_cafile,
            ssl_certfile=settings.redis_ssl_certfile,
            ssl_keyfile=settings.redis_ssl_keyfile,
            socket_timeout_s=float(settings.redis_timeout_s),
            outage_limit_s=float(settings.redis_outage_limit_s) if hold_back else None,
            alias_buckets=settings.redis_alias_buckets,
        )

    def __repr__(self) -> str:
        return (
            f"RedisConfig(url={self.safe_url!r}, username={self.username!r}, "
            f"password={'***' if self.password else ''!r}, prefix={self.prefix!r}, "
            f"ttl_s={self.ttl_s}, audience_ttl_s={self.audience_ttl_s}, "
            f"socket_timeout_s={self.socket_timeout_s}, ssl_cafile={self.ssl_cafile!r}, "
            f"ssl_certfile={self.ssl_certfile!r}, ssl_keyfile={self.ssl_keyfile!r})"
        )

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages and logs."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = f"{parts.username}:***@" if parts.username else ":***@"
        return urlunsplit(parts._replace(netloc=user + netloc))

    def client_options(self) -> dict[str, Any]:
        """The keyword arguments :meth:`client` gives ``redis.Redis.from_url``."""
        options: dict[str, Any] = {
            "socket_timeout": self.socket_timeout_s,
            "socket_connect_timeout": min(self.socket_timeout_s, 10.0),
        }
        if self.username:
            options["username"] = self.username
        if self.password:
            options["password"] = self.password
        if self.ssl_cafile:
            options["ssl_ca_certs"] = self.ssl_cafile
        if self.ssl_certfile:
            options["ssl_certfile"] = self.ssl_certfile
            options["ssl_keyfile"] = self.ssl_keyfile
        return options

    def outage_policy(self) -> OutagePolicy | None:
        """How the flow's clients wait out a Redis that does not answer, if they do."""
        if self.outage_limit_s is None:
            return None
        return OutagePolicy(self.safe_url, self.outage_limit_s)

    def client(self) -> redis.Redis:
        """A new client (one per sink partition); not connected until first used. With an
        outage limit, its every request waits out a silent Redis (:class:`OutageRetry`)."""
        policy = self.outage_policy()
        if policy is None:
            return redis.Redis.from_url(self.url, **self.client_options())
        return redis.Redis.from_url(self.url, retry=OutageRetry(policy), **self.client_options())


class RespPacker:
    r"""Commands as one RESP request, the recurring bulk strings packed once.

    A batch is sent as one write on one connection and its replies read in
    order: pipelining as redis-py's ``Pipeline`` does, without its per-argument
    Python packing, which measured 2.7x slower (55 vs 20 us per profile write,
    docs/redis.md). Command names, ``"1"`` (a segment member's value) and the TTLs are
    packed at construction; the cache holds nothing else, so it stays small.

    >>> RespPacker(["EXPIRE"]).pack([("EXPIRE", "k", 60), ("SET", "k", b"v")])
    b'*3\r\n$6\r\nEXPIRE\r\n$1\r\nk\r\n$2\r\n60\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n'
    """

    def __init__(self, constants: Iterable[str | int]) -> None:
        self._bulk: dict[str | bytes | int, bytes] = {c: _bulk(c) for c in constants}

    def pack(self, commands: Iterable[Command]) -> bytes:
        out: list[bytes] = []
        append = out.append
        cached = self._bulk.get
        for command in commands:
            append(b"*%d\r\n" % len(command))
            for arg in command:
                packed = cached(arg)
                append(packed if packed is not None else _bulk(arg))
        return b"".join(out)


def _bulk(arg: str | bytes | int) -> bytes:
    data = arg.encode() if isinstance(arg, str) else arg if isinstance(arg, bytes) else b"%d" % arg
    return b"$%d\r\n%s\r\n" % (len(data), data)


#: The commands :func:`plan` emits; all reply with one integer or simple string.
COMMANDS = (
    "SET", "EX", "EXPIRE", "EXPIREAT", "HSET", "HDEL", "SADD", "SREM", "DEL", "ZADD",
    "ZREMRANGEBYRANK",
)  # fmt: skip


class _RedisPartition(StatelessSinkPartition[RedisOp]):
    def __init__(self, config: RedisConfig, client: redis.Redis) -> None:
        self._config = config
        self._client = client
        self._keys = config.keys()
        ttls = {config.ttl_s, config.audience_ttl_s or config.ttl_s}
        self._packer = RespPacker([*COMMANDS, "1", *ttls])
        self._policy = config.outage_policy()

    def write_batch(self, items: list[RedisOp]) -> None:
        commands = plan(
            items,
            keys=self._keys,
            ttl_s=self._config.ttl_s,
            audience_ttl_s=self._config.audience_ttl_s,
            now_s=time.time(),
        )
        if not commands:
            return
        request = self._packer.pack(commands)
        try:
            # redis-py's pool replaces a connection the server closed while idle; a
            # silent Redis is waited out (redis_retry.py, the flow's config); any other
            # failure stops the flow, and recovery replays the batch.
            refused = self._send_held(request, commands)
        except redis.RedisError as exc:
            raise RedisSinkError(
                f"Redis at {self._config.safe_url} failed a batch of {len(items)} writes "
                f"({len(commands)} commands): {exc}"
            ) from exc
        if refused:
            index, error = refused[0]
            name, key = commands[index][:2]
            raise RedisSinkError(
                f"Redis at {self._config.safe_url} refused {len(refused)} of {len(commands)} "
                f"commands of a batch of {len(items)} writes; the first, {name!s} {key!r}: {error}"
            )

    def _send_held(self, request: bytes, commands: list[Command]) -> list[tuple[int, Exception]]:
        """:meth:`_send`, retried while Redis does not answer, up to the outage limit
        (redis_retry.py): the batch is held back, not dropped, and the flow waits."""
        if self._policy is None:
            return self._send(request, commands)
        return self._policy.call(lambda: self._send(request, commands))

    def _send(self, request: bytes, commands: list[Command]) -> list[tuple[int, Exception]]:
        """Send the batch on one connection and read every reply; the refused commands."""
        pool = self._client.connection_pool
        conn = pool.get_connection()
        refused: list[tuple[int, Exception]] = []
        try:
            conn.send_packed_command([request])  # type: ignore[no-untyped-call]
            for index in range(len(commands)):
                try:
                    conn.read_response()
                except redis.ResponseError as exc:  # this reply read; go on with the next
                    refused.append((index, exc))
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call]  # replies may be left unread
            raise
        finally:
            pool.release(conn)
        return refused

    def close(self) -> None:
        self._client.close()


class RedisSink(DynamicSink[RedisOp]):
    """Writes :data:`RedisOp` values to Redis: one client per worker, one pipelined write per batch.

    Every worker writes the operations its own upstream steps produced; keyed
    per-user steps keep one user's operations on one worker and in order.
    Building a partition checks that Redis answers (PING) and raises
    :class:`RedisSinkError` saying where it looked if not.
    """

    def __init__(self, config: RedisConfig) -> None:
        self.config = config

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisPartition:
        client = self.config.client()
        try:
            client.ping()
        except redis.RedisError as exc:
            client.close()
            raise RedisSinkError(
                f"Redis at {self.config.safe_url} is not reachable from step {step_id!r} "
                f"(worker {worker_index}): {exc}; check ATTUNE_REDIS_URL and credentials, "
                "or start local servers with `attune local up`"
            ) from exc
        log.info(
            "step %s worker %d writes to Redis at %s", step_id, worker_index, self.config.safe_url
        )
        return _RedisPartition(self.config, client)
