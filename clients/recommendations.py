"""Recommendation client for downstream apps: a user's top-K from Redis, trending as fallback.

The dataflow's ranking step writes each user's recommendations to Redis, and
trending items per scope; apps read them here with redis-py (docs/redis.md,
"Recommendations", is the contract):

- ``attune:{u:<user>}``: the user's hash (:mod:`attune.operators.redis_keys`): fields
  ``R``, ``R1``, ... the recommendations, format 5 or 4 (text:
  ``5|<model_version>|<generated_at>|<source>|<categories>|<id prefix>|<digits>|<items>``,
  items in rank order, :mod:`attune.operators.recs_encoding`; format 3, and formats 2
  and 1, orjson, read too);
  ``P``, ``P1``, ... the profile, format 3 (``3|<value>|...``,
  :func:`attune.operators.redis_keys.encode_profile`), read by
  :meth:`RecommendationClient.get_profile`; one field per segment the user is in;
- the layout before the hash, read while a user has none:
  ``attune:{u:<user>}:recs`` (string), ``attune:{u:<user>}:segments`` (hash, or a set
  before), ``attune:{u:<user>}:profile`` (string, or a hash of fields before);
- ``attune:trending:global``, ``attune:trending:category:<name>``,
  ``attune:trending:segment:<name>``: sorted sets, member an item id, higher
  score more trending.

:meth:`RecommendationClient.get_recommendations` returns the personalised list
when there is one, else trending, and says which (:class:`Recommendations`:
``source``, ``fallback``, ``fallback_reason``, ``scope``). The rules:

1. The user's hash is read (the recommendations and the segments); an anonymous id
   merged into a user reads that user's: its alias is looked up in the alias buckets
   ``attune:alias:<generation>:<bucket>`` (this generation's, then the previous one's:
   :meth:`attune.operators.redis_keys.RedisKeys.alias_lookup`), and in the earlier
   layout's ``attune:{u:<anon>}:alias`` key.
2. Context ``exclude`` (and ``item``, the item on the page) removes items;
   context ``category`` keeps only items in that category (``shoes`` keeps
   ``shoes`` and ``shoes/running``; items without a category are dropped).
3. Fewer than ``k`` left, or no list at all (unknown user, or a corrupt value):
   trending fills up, from ``category:<name>`` alone when a category is given
   (the result may then be shorter than ``k``: never items from another
   category), else from the user's segments' scopes (``segment_priority``
   order, then by name) and then ``global``. Items taken from trending have
   reason ``trending`` and their trending score (not comparable with a model
   score).

A value of the wrong shape is an Attune bug or a foreign writer, not the
app's problem: by default it is logged (warning, naming the key) and treated
as absent, so the page still gets trending (``fallback_reason="corrupt"``);
``strict=True`` raises :class:`CorruptRecommendationsError` instead. Redis
being unreachable raises redis-py's ``ConnectionError``: that is an operator
error, not a value to fall back from.

>>> stored = parse_recs(b'{"items":[{"item":"i1","score":0.8,"reason":"similar-to-viewed"}],'
...                     b'"model_version":"emb-3","generated_at":1767571200000,'
...                     b'"source":"personalized"}')
>>> stored.items[0], stored.model_version
(Recommendation(item='i1', score=0.8, reason='similar-to-viewed', category=None), 'emb-3')
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import orjson
import redis

from attune.operators import recs_encoding
from attune.operators.redis_keys import (
    ALIAS_BUCKETS,
    ALIAS_PERIOD_S,
    DEFAULT_PREFIX,
    MAX_CHUNKS,
    PROFILE_FIELD,
    PROFILE_ORDER,
    RECS_FIELD,
    RedisKeys,
    chunk_field,
    decode_profile,
    joined,
    segment_names,
)

log = logging.getLogger(__name__)

#: Reason code of items that come from a trending sorted set.
REASON_TRENDING = "trending"
#: ``source`` of a result made of trending items only.
SOURCE_TRENDING = "trending"
#: Trending scope of last resort.
GLOBAL_SCOPE = "global"
#: Why a result is a fallback.
FALLBACK_UNKNOWN_USER = "unknown_user"
FALLBACK_CORRUPT = "corrupt"
#: The context keys :meth:`RecommendationClient.get_recommendations` understands.
CONTEXT_KEYS = frozenset({"category", "exclude", "item"})


class CorruptRecommendationsError(ValueError):
    """A Redis value does not have the documented shape (docs/redis.md): recommendations,
    segments or a profile."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Recommendation:
    """One recommended item: score, reason code and (when known) category."""

    item: str
    score: float
    reason: str
    category: str | None = None


@dataclass(frozen=True, slots=True)
class StoredRecs:
    """The parsed value of a ``recs`` key."""

    items: tuple[Recommendation, ...]
    model_version: str
    generated_at: int
    source: str


@dataclass(frozen=True, slots=True)
class Recommendations:
    """What :meth:`RecommendationClient.get_recommendations` answers.

    Attributes:
        user: the id asked for.
        resolved_user: whose keys were read (the user an anonymous id was merged into).
        items: at most ``k``, best first.
        source: the stored list's ``source`` (``personalized``), or ``trending``
            when there was no usable list.
        fallback: ``True`` when there was no usable personalised list.
        fallback_reason: ``unknown_user`` (no ``recs`` key), ``corrupt`` (a value of
            the wrong shape, logged), ``None`` when not a fallback.
        scope: the first trending scope items were taken from (``global``,
            ``category:<name>``, ``segment:<name>``), ``None`` if none was needed.
        scopes: every trending scope items were taken from, in order.
        topped_up: how many items came from trending.
        model_version, generated_at: of the stored list, ``None`` without one.
    """

    user: str
    resolved_user: str
    items: tuple[Recommendation, ...]
    source: str
    fallback: bool
    fallback_reason: str | None
    scope: str | None
    scopes: tuple[str, ...]
    topped_up: int
    model_version: str | None
    generated_at: int | None

    @property
    def item_ids(self) -> list[str]:
        return [r.item for r in self.items]


# --- pure parts: parsing, filtering, choosing scopes -----------------------------------------


def _first_alias(replies: Sequence[Any]) -> Any:
    """The first alias found among the replies of :meth:`RecommendationClient._alias_reads`
    (a reply that is an error, a key of another type, counts as none found)."""
    for reply in replies:
        if isinstance(reply, bytes | str) and reply:
            return reply
    return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def parse_recs(raw: bytes | str, key: str = "recs") -> StoredRecs:
    """Parse a ``recs`` value; :class:`CorruptRecommendationsError` names what is wrong.

    Reads formats 5 and 4 (text, ``5|...`` and ``4|...``, what Attune stores: 5 when the
    list's ids and scores allow it) and 3 (text, ``3|...``, what the ranking step makes
    and Redis held before) and the JSON formats 2
    (``"v": 2``: items ``[item, score, reason code, category index]``) and 1 (no ``v``:
    items as objects), so values written before an upgrade stay readable
    (:mod:`attune.operators.recs_encoding`). Reason codes come back as their reasons.
    Unknown extra JSON fields are ignored (writers may add some); the documented ones
    must be there with their types.

    >>> parse_recs(b"3|m4|7|p|shoes|i1,831,sv,0|i2,500").items[1]
    Recommendation(item='i2', score=0.5, reason='similar-to-viewed', category='shoes')
    >>> parse_recs(b"4|m4|7|p|shoes|i|1,n3,sv,0|2,dw").items[1]
    Recommendation(item='i2', score=0.5, reason='similar-to-viewed', category='shoes')
    >>> parse_recs(b"5|m4|7|p|shoes|i|1|1n3,sv,0;2dw").items[1]
    Recommendation(item='i2', score=0.5, reason='similar-to-viewed', category='shoes')

    >>> parse_recs(b'{"v":2,"items":[["i1",0.8,"sv",0]],"categories":["shoes"],'
    ...            b'"model_version":"m3","generated_at":1,"source":"personalized"}').items
    (Recommendation(item='i1', score=0.8, reason='similar-to-viewed', category='shoes'),)
    >>> try:
    ...     parse_recs(b'{"items": [{"item": "i1", "score": "high", "reason": "x"}]}', "k")
    ... except CorruptRecommendationsError as exc:
    ...     print(exc)
    k: items[0].score is 'high', not a finite number
    """
    if raw[:2] in (b"3|", "3|", b"4|", "4|", b"5|", "5|"):
        return _parse_v3(raw, key)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CorruptRecommendationsError(key, f"not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise CorruptRecommendationsError(key, f"a JSON {type(value).__name__}, not an object")
    items = value.get("items")
    if not isinstance(items, list):
        raise CorruptRecommendationsError(key, "items is missing or not a list")
    version = value.get("v", 1)
    if version == 1:
        out = [_item_v1(key, i, entry) for i, entry in enumerate(items)]
    elif version == recs_encoding.FORMAT:
        categories = value.get("categories")
        if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
            raise CorruptRecommendationsError(key, "categories is missing or not a list of strings")
        out = [_item_v2(key, i, entry, categories) for i, entry in enumerate(items)]
    else:
        raise CorruptRecommendationsError(key, f"v is {version!r}, not a format this client reads")
    model_version, generated_at = value.get("model_version"), value.get("generated_at")
    source = value.get("source")
    if not isinstance(model_version, str):
        raise CorruptRecommendationsError(key, f"model_version is {model_version!r}, not a string")
    if not isinstance(generated_at, int) or isinstance(generated_at, bool):
        raise CorruptRecommendationsError(key, f"generated_at is {generated_at!r}, not epoch ms")
    if not isinstance(source, str) or not source:
        raise CorruptRecommendationsError(key, f"source is {source!r}, not a string")
    return StoredRecs(tuple(out), model_version, generated_at, source)


def _parse_v3(raw: bytes | str, key: str) -> StoredRecs:
    """Formats 5, 4 and 3, the text :func:`attune.operators.recs_encoding.stored` and
    :func:`attune.operators.recs_encoding.encode_compact` write."""
    number = _text(raw[:1])
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
        items, model_version, generated_at, source = recs_encoding.decode_compact(text)
    except ValueError as exc:  # UnicodeDecodeError included
        raise CorruptRecommendationsError(key, f"format {number}: {exc}") from None
    if not source:
        raise CorruptRecommendationsError(key, "source is empty")
    out = [
        _checked(
            key,
            f"items[{i}]",
            item=item,
            score=score,
            reason=recs_encoding.reason_of(code),
            category=category,
        )
        for i, (item, score, code, category) in enumerate(items)
    ]
    return StoredRecs(tuple(out), model_version, generated_at, source)


def parse_profile(
    raw: bytes | str | Mapping[bytes, bytes] | Mapping[str, str], key: str = "profile"
) -> dict[str, str | None]:
    """A ``profile`` value as field -> value (``None``: not known), every field of
    ``PROFILE_ORDER``; :class:`CorruptRecommendationsError` names what is wrong.

    Reads format 3 (the string ``3|<value>|...`` Attune writes,
    :func:`attune.operators.redis_keys.decode_profile`), format 2 (the same values written
    plainly) and format 1, the hash of field -> value written before (pass what ``HGETALL``
    returned), so profiles written before an upgrade stay readable until they are
    rewritten or expire. Values come back as the flow encoded them, whatever the format
    (ints in decimal, times in epoch ms, floats as ``repr``, ``device_top`` and
    ``propensity_tier`` spelled out): the caller converts what it uses.

    >>> parse_profile(b"3|3|1||||||||mk7e18v0||||m")["last_seen_ms"]
    '1767994092828'
    >>> parse_profile(b"2|3|1")["page_views"], parse_profile({b"events": b"3"})["events"]
    ('1', '3')
    """
    if isinstance(raw, Mapping):
        stored = {_text(name): _text(value) for name, value in raw.items()}
        return {name: stored.get(name) or None for name in PROFILE_ORDER}
    try:
        return decode_profile(raw.decode() if isinstance(raw, bytes) else raw)
    except ValueError as exc:  # UnicodeDecodeError included
        raise CorruptRecommendationsError(key, str(exc)) from None


def _checked(
    key: str, where: str, *, item: Any, score: Any, reason: Any, category: Any
) -> Recommendation:
    if not isinstance(item, str) or not item:
        raise CorruptRecommendationsError(key, f"{where}.item is {item!r}, not an item id")
    if not _number(score):
        raise CorruptRecommendationsError(key, f"{where}.score is {score!r}, not a finite number")
    if not isinstance(reason, str):
        raise CorruptRecommendationsError(key, f"{where}.reason is {reason!r}, not a string")
    if category is not None and not isinstance(category, str):
        raise CorruptRecommendationsError(key, f"{where}.category is {category!r}")
    return Recommendation(item, float(score), reason, category)


def _item_v1(key: str, i: int, entry: Any) -> Recommendation:
    """Format 1: ``{"item", "score", "reason", "category"?}``."""
    if not isinstance(entry, dict):
        raise CorruptRecommendationsError(key, f"items[{i}] is not an object")
    return _checked(
        key,
        f"items[{i}]",
        item=entry.get("item"),
        score=entry.get("score"),
        reason=entry.get("reason"),
        category=entry.get("category"),
    )


def _item_v2(key: str, i: int, entry: Any, categories: list[str]) -> Recommendation:
    """Format 2: ``[item, score, reason code, category index or null]``."""
    where = f"items[{i}]"
    if not isinstance(entry, list) or len(entry) != 4:
        raise CorruptRecommendationsError(key, f"{where} is not [item, score, reason, category]")
    item, score, code, index = entry
    category = None
    if index is not None:
        if (
            isinstance(index, bool)
            or not isinstance(index, int)
            or not 0 <= index < len(categories)
        ):
            raise CorruptRecommendationsError(
                key, f"{where}.category is {index!r}, not an index into categories"
            )
        category = categories[index]
    reason = recs_encoding.reason_of(code) if isinstance(code, str) else code
    return _checked(key, where, item=item, score=score, reason=reason, category=category)


def in_category(item_category: str | None, category: str) -> bool:
    """Whether an item's category is ``category`` or below it in the path (``/`` separated).

    >>> in_category("shoes/running", "shoes"), in_category("shoes", "shoes")
    (True, True)
    >>> in_category("shoestrings", "shoes"), in_category(None, "shoes")
    (False, False)
    """
    if item_category is None:
        return False
    return item_category == category or item_category.startswith(category.rstrip("/") + "/")


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed ``get_recommendations`` call: ``k``, the category and the items to leave out."""

    k: int
    category: str | None = None
    exclude: frozenset[str] = frozenset()

    @classmethod
    def of(cls, k: int, context: Mapping[str, Any] | None) -> Request:
        """Check ``k`` and the context (unknown keys and wrong types raise ``ValueError``).

        >>> r = Request.of(5, {"exclude": ["i1"], "item": "i9", "category": "shoes"})
        >>> r.k, r.category, sorted(r.exclude)
        (5, 'shoes', ['i1', 'i9'])
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        context = context or {}
        unknown = sorted(set(context) - CONTEXT_KEYS)
        if unknown:
            raise ValueError(
                f"unknown context key(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(CONTEXT_KEYS))}"
            )
        category = context.get("category")
        if category is not None and (not isinstance(category, str) or not category):
            raise ValueError(f"context category must be a non-empty string, got {category!r}")
        exclude_raw = context.get("exclude") or ()
        if isinstance(exclude_raw, str | bytes) or not isinstance(exclude_raw, Iterable):
            raise ValueError(
                f"context exclude must be a collection of item ids, got {exclude_raw!r}"
            )
        exclude = {str(x) for x in exclude_raw}
        item = context.get("item")
        if item is not None:
            if not isinstance(item, str):
                raise ValueError(f"context item must be an item id string, got {item!r}")
            exclude.add(item)
        return cls(k, category, frozenset(exclude))


def trending_scopes(
    request: Request, segments: Iterable[str], priority: Sequence[str] = ()
) -> list[str]:
    """The trending scopes to fill from, in order.

    >>> trending_scopes(Request(3), ["b", "a", "vip"], priority=["vip"])
    ['segment:vip', 'segment:a', 'segment:b', 'global']
    >>> trending_scopes(Request(3, category="shoes"), ["vip"])
    ['category:shoes']
    """
    if request.category is not None:
        return [f"category:{request.category}"]
    mine = set(segments)
    ordered = [s for s in priority if s in mine]
    ordered += sorted(mine - set(ordered))
    return [f"segment:{s}" for s in ordered] + [GLOBAL_SCOPE]


def select(
    request: Request,
    stored: Sequence[Recommendation],
    trending: Sequence[tuple[str, Sequence[tuple[str, float]]]] = (),
) -> tuple[list[Recommendation], list[str]]:
    """Filter the stored list, then top it up from trending scopes in order, up to ``k``.

    Returns the items and the scopes that gave at least one.

    >>> req = Request(3, exclude=frozenset({"i2"}))
    >>> mine = [Recommendation("i1", 0.9, "similar-to-viewed"), Recommendation("i2", 0.8, "x")]
    >>> items, scopes = select(req, mine, [("global", [("i1", 50.0), ("i2", 40.0), ("i7", 9.0)])])
    >>> [(r.item, r.reason) for r in items], scopes
    ([('i1', 'similar-to-viewed'), ('i7', 'trending')], ['global'])
    """
    out: list[Recommendation] = []
    taken = set(request.exclude)
    for rec in stored:
        if len(out) == request.k:
            break
        if rec.item in taken:
            continue
        if request.category is not None and not in_category(rec.category, request.category):
            continue
        out.append(rec)
        taken.add(rec.item)
    used: list[str] = []
    for scope, members in trending:
        if len(out) == request.k:
            break
        category = scope.removeprefix("category:") if scope.startswith("category:") else None
        before = len(out)
        for item, score in members:
            if len(out) == request.k:
                break
            if item in taken:
                continue
            out.append(Recommendation(item, score, REASON_TRENDING, category))
            taken.add(item)
        if len(out) > before:
            used.append(scope)
    return out, used


# --- the client ------------------------------------------------------------------------------


class RecommendationClient:
    """Reads recommendations from Redis for downstream apps; see the module docstring.

    Args:
        redis_client_or_url: a ``redis.Redis`` (bytes or decoded responses), or a
            URL (``redis://host:port/db``, ``rediss://`` for TLS) to build one from.
        prefix: the key prefix Attune writes with (``ATTUNE_REDIS_PREFIX``).
        strict: raise :class:`CorruptRecommendationsError` on a value of the wrong
            shape instead of logging it and falling back.
        segment_priority: segment names in the order their trending lists are
            preferred (a Redis set has no order); other segments follow by name.
        alias_buckets: the flow's ``ATTUNE_REDIS_ALIAS_BUCKETS`` (default 1024).
        ttl_s: the flow's ``ATTUNE_REDIS_TTL_S`` (default 30 days): the alias buckets'
            generation.

    Two round trips at most for a known user with a full list (one pipelined
    ``HGETALL`` of the user's hash with ``HGET`` of the alias buckets and ``GET`` of the
    earlier layout's keys, one pipelined ``ZREVRANGE`` per scope if a top-up is
    needed), three when an anonymous id is resolved to its user, one more when the
    user's segments are still a set (the layout before the hash, written before: ``SMEMBERS``).
    """

    def __init__(
        self,
        redis_client_or_url: redis.Redis | str,
        prefix: str = DEFAULT_PREFIX,
        *,
        strict: bool = False,
        segment_priority: Sequence[str] = (),
        alias_buckets: int = ALIAS_BUCKETS,
        ttl_s: int = ALIAS_PERIOD_S,
    ) -> None:
        self._owned = isinstance(redis_client_or_url, str)
        self.redis: redis.Redis = (
            redis.Redis.from_url(redis_client_or_url)
            if isinstance(redis_client_or_url, str)
            else redis_client_or_url
        )
        self.keys = RedisKeys(prefix, alias_buckets, ttl_s)
        self.strict = strict
        self.segment_priority = tuple(segment_priority)

    def close(self) -> None:
        """Close the connection pool if this client built it from a URL."""
        if self._owned:
            self.redis.close()

    def __enter__(self) -> RecommendationClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _corrupt(
        self, error: CorruptRecommendationsError, instead: str = "falling back to trending"
    ) -> None:
        if self.strict:
            raise error
        log.warning("ignoring corrupt Redis value, %s: %s", instead, error)

    def _read_user(self, user: str) -> tuple[Any, str, Any, Any]:
        """The user's recommendations value (or ``None``, or the error reading it), the key
        it came from, the alias and the segments (a set of names, or the raw reply of the
        earlier layout's key)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.user(user))
        self._alias_reads(pipe, user)
        # The layout before the user's hash, read in the same round trip while one may be left.
        pipe.get(self.keys.recs(user))
        pipe.hkeys(self.keys.segments(user))
        fields, *aliases, recs, segments = pipe.execute(raise_on_error=False)
        alias = _first_alias(aliases)
        key = self.keys.user(user)
        if isinstance(fields, redis.ResponseError):  # the user's key is not a hash
            return CorruptRecommendationsError(key, str(fields)), key, alias, set()
        if fields:
            try:
                value: Any = joined(fields, RECS_FIELD)
            except ValueError as exc:
                value = CorruptRecommendationsError(key, f"recs: {exc}")
            return value, key, alias, set(segment_names(fields))
        return recs, self.keys.recs(user), alias, segments

    def resolve_alias(self, anonymous_id: str) -> str | None:
        """The user ``anonymous_id`` was merged into, ``None`` when it has no alias: one
        pipelined round trip (``HGET`` of its alias buckets, ``GET`` of the earlier
        layout's alias key). ``get_recommendations`` and ``get_profile`` follow an alias
        themselves; this is for apps that need the user id.
        """
        if not anonymous_id:
            raise ValueError("anonymous_id is empty")
        pipe = self.redis.pipeline(transaction=False)
        self._alias_reads(pipe, anonymous_id)
        alias = _first_alias(pipe.execute(raise_on_error=False))
        return None if alias is None else _text(alias)

    def _alias_reads(self, pipe: Any, anonymous_id: str) -> None:
        """Queue the reads of ``anonymous_id``'s alias, in the order :func:`_first_alias`
        prefers them: this generation's bucket, the previous one's, the earlier layout's
        key."""
        for bucket in self.keys.alias_lookup(anonymous_id, time.time()):
            pipe.hget(bucket, anonymous_id)
        pipe.get(self.keys.alias(anonymous_id))

    def _segments(self, user: str, value: Any) -> set[str]:
        if isinstance(value, set):  # from the user's hash
            return value
        key = self.keys.segments(user)
        if isinstance(value, redis.ResponseError) and str(value).startswith("WRONGTYPE"):
            try:  # a set, as written before the hash (the sink converts it at its next write)
                value = self.redis.smembers(key)
            except redis.ResponseError as exc:
                value = exc
        if isinstance(value, redis.ResponseError):
            self._corrupt(CorruptRecommendationsError(key, str(value)))
            return set()
        return {_text(s) for s in value or ()}

    def _stored(self, key: str, value: Any) -> tuple[StoredRecs | None, str | None]:
        if value is None:
            return None, FALLBACK_UNKNOWN_USER
        try:
            if isinstance(value, CorruptRecommendationsError):
                raise value
            if isinstance(value, redis.ResponseError):
                raise CorruptRecommendationsError(key, f"not a string ({value})")
            return parse_recs(value, key), None
        except CorruptRecommendationsError as exc:
            self._corrupt(exc)
            return None, FALLBACK_CORRUPT

    def _trending(
        self, scopes: Sequence[str], count: int
    ) -> list[tuple[str, list[tuple[str, float]]]]:
        pipe = self.redis.pipeline(transaction=False)
        for scope in scopes:
            pipe.zrevrange(self.keys.trending(scope), 0, count - 1, withscores=True)
        out: list[tuple[str, list[tuple[str, float]]]] = []
        for scope, members in zip(scopes, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(members, redis.ResponseError):
                self._corrupt(CorruptRecommendationsError(self.keys.trending(scope), str(members)))
                continue
            out.append((scope, [(_text(m), float(s)) for m, s in members]))
        return out

    def get_profile(self, user: str) -> dict[str, str | None] | None:
        """The profile of ``user`` (an anonymous id merged into a user: that user's), as
        :func:`parse_profile` reads it; ``None`` when there is none, or when it is corrupt
        (logged; ``strict=True`` raises :class:`CorruptRecommendationsError`).

        One pipelined round trip (``HMGET`` of the profile's fields of the user's hash,
        ``GET`` of the alias and of the earlier layout's profile key), one more to follow an
        alias, one more for a profile of the earlier layout still a hash (``HGETALL``).
        """
        if not user:
            raise ValueError("user is empty")
        raw, key, alias = self._profile(user)
        if raw is None and isinstance(alias, bytes | str) and _text(alias) not in ("", user):
            user = _text(alias)
            raw, key, _ = self._profile(user)
        if raw is None:
            return None
        try:
            if isinstance(raw, CorruptRecommendationsError):
                raise raw
            if isinstance(raw, redis.ResponseError) and str(raw).startswith("WRONGTYPE"):
                raw = self.redis.hgetall(key)  # format 1: a hash
            if isinstance(raw, redis.ResponseError):
                raise CorruptRecommendationsError(key, str(raw))
            return parse_profile(raw, key) if raw else None
        except CorruptRecommendationsError as exc:
            self._corrupt(exc, "no profile")
            return None

    def _profile(self, user: str) -> tuple[Any, str, Any]:
        """The user's profile value (from the hash, else the earlier layout's key; ``None``,
        or the error reading it), the key it came from and the alias, in one pipelined
        round trip."""
        pipe = self.redis.pipeline(transaction=False)
        fields = [chunk_field(PROFILE_FIELD, i) for i in range(MAX_CHUNKS)]
        pipe.hmget(self.keys.user(user), fields)
        self._alias_reads(pipe, user)
        pipe.get(self.keys.profile(user))
        pieces, *aliases, old = pipe.execute(raise_on_error=False)
        alias = _first_alias(aliases)
        key = self.keys.user(user)
        if isinstance(pieces, redis.ResponseError):
            return CorruptRecommendationsError(key, str(pieces)), key, alias
        found = {name: piece for name, piece in zip(fields, pieces, strict=True) if piece}
        if not found:
            return old, self.keys.profile(user), alias
        try:
            return joined(found, PROFILE_FIELD), key, alias
        except ValueError as exc:
            return CorruptRecommendationsError(key, f"profile: {exc}"), key, alias

    def _get(self, key: str) -> Any:
        """``GET key``, a refusal (WRONGTYPE) returned rather than raised."""
        try:
            return self.redis.get(key)
        except redis.ResponseError as exc:
            return exc

    def get_recommendations(
        self, user: str, k: int = 10, context: Mapping[str, Any] | None = None
    ) -> Recommendations:
        """Up to ``k`` recommendations for ``user``: personalised, else trending, and which.

        ``context``: ``category`` (only items in it), ``exclude`` (item ids to
        leave out), ``item`` (the item on the page: left out too). Unknown keys
        raise ``ValueError``.
        """
        if not user:
            raise ValueError("user is empty")
        request = Request.of(k, context)
        recs, recs_key, alias, segments_raw = self._read_user(user)
        resolved = user
        if recs is None and isinstance(alias, bytes | str) and _text(alias) not in ("", user):
            resolved = _text(alias)
            recs, recs_key, _, segments_raw = self._read_user(resolved)
        segments = self._segments(resolved, segments_raw)
        stored, reason = self._stored(recs_key, recs)
        own = stored.items if stored is not None else ()
        personal, _ = select(request, own)
        items = personal
        scopes: list[str] = []
        if len(personal) < request.k:
            # Enough members per scope even if every excluded and personal item is among them.
            count = request.k + len(request.exclude)
            trending = self._trending(
                trending_scopes(request, segments, self.segment_priority), count
            )
            items, scopes = select(request, own, trending)
        topped_up = len(items) - len(personal)
        return Recommendations(
            user=user,
            resolved_user=resolved,
            items=tuple(items),
            source=stored.source if stored is not None else SOURCE_TRENDING,
            fallback=stored is None,
            fallback_reason=reason,
            scope=scopes[0] if scopes else None,
            scopes=tuple(scopes),
            topped_up=topped_up,
            model_version=stored.model_version if stored is not None else None,
            generated_at=stored.generated_at if stored is not None else None,
        )
