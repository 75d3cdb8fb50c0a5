"""Redis sink: typed write operations, coalesced per batch, one pipelined request per batch.

The last stage of the flow (design.md, "Sinks"): per-user logic emits
:data:`RedisOp` values (profiles, segment changes, aliases, forgetting a user,
published model parameters) and :class:`RedisSink` writes them. Key names come
from :class:`~attune.operators.redis_keys.RedisKeys`; docs/redis.md documents every key.

What the rest of Attune relies on:

- Idempotent: every command sets an absolute value (SET of the whole profile,
  HSET/HDEL of a segment membership, SADD/SREM of an audience member, SET, DEL);
  nothing increments. Replaying a batch after recovery, or a batch that failed
  half-way being sent again, leaves the same bytes in Redis.
- Whole profiles, never half: the profile is one string of every profile field
  (:func:`~attune.operators.redis_keys.encode_profile`, format 2), set with its TTL in one
  ``SET ... EX``, so no field of an older profile lingers and a reader never
  catches a user without a profile.
- Compact: Redis keeps these values for every user, so the sink stores the small
  formats (profile format 2, recommendations format 3 converted from the ranking
  step's format 2 by :func:`~attune.operators.recs_encoding.compact`, segments as a
  small hash); docs/redis.md has the formats and the bytes per user they cost
  (``python -m attune.bench.redis_memory``).
- TTL'd: every per-user key written is given the configured TTL in the same
  request, and a profile write refreshes the segments key's TTL too (a member who
  stays in a segment for longer than the TTL keeps it); audience sets get their own
  TTL, refreshed whenever one is written.
- Batched: :func:`plan` folds a batch into the fewest commands (the last
  profile of a user wins, segment entries and exits fold in order, a
  :class:`ForgetUser` drops the user's earlier operations, each audience gets
  one SADD and one SREM for all its users), and the partition pipelines them:
  one request on one connection, the replies read after (not a MULTI
  transaction). Errors raise: Bytewax stops and recovery replays.
- Upgrades in place: a segments key still a set (written before the hash) refuses
  HSET/HDEL with WRONGTYPE; the partition converts it with a Lua script
  (:data:`CONVERT_SEGMENTS`, sent with EVAL, which a Redis ACL user must be allowed) and
  sends the refused commands again. Older profiles (hashes) and recommendations
  (format 2) are replaced whole by the next SET.

:func:`plan` is pure, so coalescing is tested without Redis:

>>> keys = RedisKeys()
>>> ops = [ProfileWrite("u1", {"events": "1"}), ProfileWrite("u1", {"events": "2"}),
...        SegmentsWrite("u1", entered=("vip",), exited=())]
>>> for command in plan(ops, keys=keys, ttl_s=60, profile_fields=("events", "device_top")):
...     print(command)
('SET', 'attune:{u:u1}:profile', '2|2', 'EX', 60)
('HSET', 'attune:{u:u1}:segments', 'vip', '1')
('EXPIRE', 'attune:{u:u1}:segments', 60)
('SADD', 'attune:segment:vip', 'u1')
('EXPIRE', 'attune:segment:vip', 60)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from attune.operators import recs_encoding
from attune.operators.features import PROFILE_FIELDS, Features, FeatureValue
from attune.operators.redis_keys import DEFAULT_PREFIX, PROFILE_ORDER, RedisKeys, encode_profile
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
    """Replace the user's recommendations (``SET ... EX`` the per-user TTL) with ``value``,
    the format-2 bytes of :func:`attune.operators.ranking.recs_value`, stored as format 3
    (:func:`attune.operators.recs_encoding.compact`; docs/redis.md)."""

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
) -> list[Command]:
    """The Redis commands that apply ``items`` in order, coalesced.

    Per user: the last :class:`ProfileWrite` wins (one ``SET ... EX``, and an
    ``EXPIRE`` of the segments key unless the batch writes it); segment entries and
    exits fold in order into one final membership per segment (entered then exited
    -> HDEL); a :class:`ForgetUser` drops what came before it for that user,
    becomes DEL of every per-user key plus SREM from its audiences and the
    audiences the dropped operations entered, and what follows it is applied
    after the DEL. Each audience gets one SADD and one SREM for all its users.
    Every per-user key written gets EXPIRE ``ttl_s``; each audience written
    gets EXPIRE ``audience_ttl_s`` (default ``ttl_s``). For
    :class:`JsonWrite`, the last value per key wins; for :class:`RecsWrite`, the last
    per user (one ``SET ... EX``, format 3); :class:`TrendingWrite` s of one scope fold into one
    ``ZADD`` (the last score per member), one trim and one ``EXPIRE``.

    Raises ``ValueError`` for a profile field not in ``profile_fields``.
    """
    keys = keys or RedisKeys()
    audience_ttl = ttl_s if audience_ttl_s is None else audience_ttl_s
    batch = _coalesce(items, profile_fields)
    commands: list[Command] = []
    _user_commands(commands, batch.users, keys, ttl_s, profile_fields)
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
    """Append each user's DEL, profile SET, segment HSET/HDEL, alias and recs SET, with
    their TTLs."""
    for user, user_ops in users.items():
        if user_ops.forget:
            doomed = keys.user_keys(user)
            if user_ops.keep_alias:
                doomed.remove(keys.alias(user))
            commands.append(("DEL", *doomed))
        if user_ops.profile is not None:
            value = encode_profile(user_ops.profile, profile_fields)
            commands.append(("SET", keys.profile(user), value, "EX", ttl_s))
        segments_key = keys.segments(user)
        if user_ops.segments:
            added = [f for s, member in user_ops.segments.items() if member for f in (s, "1")]
            removed = [s for s, member in user_ops.segments.items() if not member]
            if added:
                commands.append(("HSET", segments_key, *added))
            if removed:
                commands.append(("HDEL", segments_key, *removed))
            commands.append(("EXPIRE", segments_key, ttl_s))
        elif user_ops.profile is not None:
            # The segments live as long as the profile, even when none changed.
            commands.append(("EXPIRE", segments_key, ttl_s))
        if user_ops.alias is not None:
            commands.append(("SET", keys.alias(user), user_ops.alias, "EX", ttl_s))
        if user_ops.recs is not None:
            value_3 = recs_encoding.compact(user_ops.recs)
            commands.append(("SET", keys.recs(user), value_3, "EX", ttl_s))


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
        RedisKeys(self.prefix)  # validates the prefix

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
    "SET", "EX", "EXPIRE", "HSET", "HDEL", "SADD", "SREM", "DEL", "ZADD", "ZREMRANGEBYRANK"
)  # fmt: skip

#: Lua: turn a user's segments key written as a set (before the hash) into the hash of
#: the same members, its TTL kept. ``KEYS[1]``: the key; returns the members moved.
#: One script, so no reader sees the key missing; run only on a WRONGTYPE, i.e. once
#: per such key, with plain EVAL (one ACL permission, ``+eval``: redis-py's EVALSHA
#: wrapper would need ``SCRIPT LOAD`` too).
CONVERT_SEGMENTS = """
if redis.call('TYPE', KEYS[1]).ok ~= 'set' then return 0 end
local members = redis.call('SMEMBERS', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
for _, member in ipairs(members) do redis.call('HSET', KEYS[1], member, '1') end
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return #members
"""


def _old_segments(command: Command, error: Exception) -> bool:
    """Whether ``error`` is a segments HSET/HDEL refused because the key is still a set."""
    return (
        command[0] in ("HSET", "HDEL")
        and str(command[1]).endswith(":segments")
        and str(error).startswith("WRONGTYPE")
    )


class _RedisPartition(StatelessSinkPartition[RedisOp]):
    def __init__(self, config: RedisConfig, client: redis.Redis) -> None:
        self._config = config
        self._client = client
        self._keys = RedisKeys(config.prefix)
        ttls = {config.ttl_s, config.audience_ttl_s or config.ttl_s}
        self._packer = RespPacker([*COMMANDS, "1", *ttls])
        self._policy = config.outage_policy()

    def write_batch(self, items: list[RedisOp]) -> None:
        commands = plan(
            items,
            keys=self._keys,
            ttl_s=self._config.ttl_s,
            audience_ttl_s=self._config.audience_ttl_s,
        )
        if not commands:
            return
        request = self._packer.pack(commands)
        try:
            # redis-py's pool replaces a connection the server closed while idle; a
            # silent Redis is waited out (redis_retry.py, the flow's config); any other
            # failure stops the flow, and recovery replays the batch.
            refused = self._send_held(request, commands)
            if any(_old_segments(commands[i], error) for i, error in refused):
                refused = self._upgrade_segments(commands, refused)
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

    def _upgrade_segments(
        self, commands: list[Command], refused: list[tuple[int, Exception]]
    ) -> list[tuple[int, Exception]]:
        """Convert the segments keys still sets (:data:`CONVERT_SEGMENTS`) and send their
        refused commands again; what stays refused, as :meth:`_send` says it.

        Only the batch's own HSET/HDEL of those keys are re-sent: their EXPIRE was
        applied to the set, and the conversion keeps the TTL.
        """
        old = [i for i, error in refused if _old_segments(commands[i], error)]
        for key in dict.fromkeys(commands[i][1] for i in old):
            self._client.eval(CONVERT_SEGMENTS, 1, key)
        again = [commands[i] for i in old]
        still = self._send_held(self._packer.pack(again), again)
        retried = set(old)
        kept = [(i, error) for i, error in refused if i not in retried]
        return sorted(kept + [(old[j], error) for j, error in still])

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
