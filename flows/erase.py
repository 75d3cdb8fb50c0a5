"""``attune erase USER``: remove everything Redis holds about one user, for operators.

The Redis part of erasure (right to be forgotten), done directly, without the
flow: every key under the user's hash tag ``<prefix>{u:<user>}`` (the user's hash of
profile, segments and recommendations, the alias, the keys of the layout before the
hash, and any per-user key added later: found by
``SCAN MATCH``, not from a list that could miss one), the user's membership in
every audience set ``<prefix>segment:*``, and the aliases of anonymous ids that
were merged into the user (fields of the alias buckets ``<prefix>alias:*`` whose value
is the user, and the earlier layout's alias keys, with everything under their tags);
the user's own ids are taken out of the alias buckets too. The flow's own
per-user state is erased by an ``ErasureRequest`` event on the events topic
(docs/privacy.md): send one too, or the next event of the user writes a
profile again.

``USER`` goes through the same pseudonymisation as ingestion
(:mod:`attune.operators.privacy`), so an operator can pass the raw email address or
phone number the user is known by, an opaque user id, or a pseudonym. After a
key rotation, the pseudonyms under the previous keys
(``ATTUNE_PSEUDONYM_PREVIOUS_KEYS``) are erased too. The report names the
pseudonyms and keys, never the raw value given.

Cost: SCANs over the key space (the user's tag; audiences and aliases) and an
``HGETALL`` of every alias bucket, so seconds per million keys; meant for requests
one at a time, not bulk. Redis Cluster: run it against each primary (SCAN is per node).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import orjson
import redis

from attune.flows.settings import Settings
from attune.operators.connect_check import check_redis
from attune.operators.privacy import Pseudonymiser, UserIdPolicy, load_key, looks_like_pii
from attune.operators.privacy import parse_previous_keys as _previous
from attune.operators.redis_keys import RedisKeys, escape_tag
from attune.operators.redis_sink import RedisConfig

#: SCAN page size.
SCAN_COUNT = 1000


@dataclass(frozen=True, slots=True)
class ErasureReport:
    """What ``attune erase`` removed (or, with ``dry_run``, would remove)."""

    ids: tuple[str, ...]  # the ids looked up: pseudonyms, or an opaque user id
    deleted_keys: tuple[str, ...]
    audiences: tuple[str, ...]  # audience sets the user was removed from
    aliases: tuple[str, ...]  # anonymous ids merged into the user (their keys deleted)
    dry_run: bool = False
    # alias buckets the aliases (of the user's anonymous ids, and of its own ids) left
    alias_buckets: tuple[str, ...] = ()

    def render(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        lines = [f"erase {', '.join(self.ids)}: {verb}"]
        lines.append(f"  {len(self.deleted_keys)} keys")
        lines += [f"    {k}" for k in self.deleted_keys]
        lines.append(f"  membership of {len(self.audiences)} audiences")
        lines += [f"    {a}" for a in self.audiences]
        lines.append(f"  {len(self.aliases)} merged anonymous ids")
        lines += [f"    {a}" for a in self.aliases]
        lines.append(f"  aliases in {len(self.alias_buckets)} alias buckets")
        lines += [f"    {b}" for b in self.alias_buckets]
        return "\n".join(lines)


def glob_escape(text: str) -> str:
    r"""``text`` as a literal inside a Redis ``MATCH`` pattern.

    >>> glob_escape("a*b?[c]\\")
    'a\\*b\\?\\[c\\]\\\\'
    """
    out = []
    for ch in text:
        if ch in "*?[]\\":
            out.append("\\")
        out.append(ch)
    return "".join(out)


def stored_ids(user: str, settings: Settings) -> list[str]:
    """The ids ``user`` is stored under: its pseudonyms (current and previous keys) or itself.

    Refuses, rather than guessing, when ``user`` would be pseudonymised and no key is
    configured: erasing under a made-up key would find nothing and say so quietly.
    """
    key = load_key(settings.pseudonym_key, settings.pseudonym_key_file)
    policy = UserIdPolicy(settings.pseudonymise_user_ids)
    if key is None:
        hashed = policy is UserIdPolicy.ALWAYS or (
            policy is UserIdPolicy.AUTO and looks_like_pii(user)
        )
        if hashed:
            raise ValueError(
                "this user id is stored under its pseudonym, which needs the flow's key: "
                "set ATTUNE_PSEUDONYM_KEY or ATTUNE_PSEUDONYM_KEY_FILE (and "
                "ATTUNE_PSEUDONYM_KEY_ID) as for the flow"
            )
        return [user]
    p = Pseudonymiser(
        key,
        settings.pseudonym_key_id,
        policy,
        previous=_previous(settings.pseudonym_previous_keys),
    )
    return p.all_pseudonyms(user)


def _scan(client: redis.Redis, pattern: str) -> list[bytes]:
    return sorted(set(client.scan_iter(match=pattern, count=SCAN_COUNT)))


def _tag_pattern(keys: RedisKeys, user: str) -> str:
    return f"{glob_escape(keys.prefix)}{{u:{glob_escape(escape_tag(user))}}}*"


def _keyed_aliases(client: redis.Redis, keys: RedisKeys, wanted: set[bytes]) -> list[str]:
    """The tags (escaped anonymous ids) of the alias keys of the layout before the alias
    buckets whose value is one of ``wanted``."""
    alias_keys = _scan(client, f"{glob_escape(keys.prefix)}{{u:*}}:alias")
    aliases: list[str] = []
    if alias_keys:
        values = client.mget(alias_keys)
        for key, value in zip(alias_keys, values, strict=True):
            if value in wanted:
                aliases.append(key.decode()[len(keys.prefix) + 3 : -len("}:alias")])
    return aliases


def _bucketed_aliases(
    client: redis.Redis, keys: RedisKeys, wanted: set[bytes]
) -> list[tuple[bytes, str]]:
    """The ``(bucket, anonymous id)`` of every alias bucket field whose value is one of
    ``wanted`` (the user's anonymous ids) or whose field is (the user's own ids, as an
    anonymous id of someone else)."""
    found: list[tuple[bytes, str]] = []
    buckets = _scan(client, keys.alias_pattern())
    pipe = client.pipeline(transaction=False)
    for bucket in buckets:
        pipe.hgetall(bucket)
    for bucket, fields in zip(buckets, pipe.execute(), strict=True):
        for field, user in fields.items():
            if user in wanted or field in wanted:
                found.append((bucket, field.decode()))
    return found


def erase_user(
    client: redis.Redis, keys: RedisKeys, ids: Iterable[str], *, dry_run: bool = False
) -> ErasureReport:
    """Remove every Redis trace of the user stored under ``ids``; report what went."""
    ids = list(dict.fromkeys(ids))
    wanted = {i.encode() for i in ids}
    # Anonymous ids merged into the user: alias keys whose value is one of the ids.
    aliases = _keyed_aliases(client, keys, wanted)
    bucketed = _bucketed_aliases(client, keys, wanted)
    tags = [escape_tag(anonymous_id) for _, anonymous_id in bucketed if anonymous_id not in ids]
    aliases += [tag for tag in dict.fromkeys(tags) if tag not in aliases]
    members = ids + [a for a in aliases if a not in ids]
    doomed: set[bytes] = set()
    for member in ids:
        doomed.update(_scan(client, _tag_pattern(keys, member)))
    for tag in aliases:  # already escaped as it appears in the key
        doomed.update(_scan(client, f"{glob_escape(keys.prefix)}{{u:{glob_escape(tag)}}}*"))
    audience_keys = _scan(client, f"{glob_escape(keys.audience(''))}*")
    audiences: list[str] = []
    if audience_keys:
        pipe = client.pipeline(transaction=False)
        for key in audience_keys:
            if dry_run:
                pipe.smismember(key, members)
            else:
                pipe.srem(key, *members)
        for key, answer in zip(audience_keys, pipe.execute(), strict=True):
            hit = any(answer) if isinstance(answer, list) else bool(answer)
            if hit:
                audiences.append(key.decode()[len(keys.audience("")) :])
    if doomed and not dry_run:
        client.delete(*doomed)
    if bucketed and not dry_run:
        pipe = client.pipeline(transaction=False)
        for bucket, field in bucketed:
            pipe.hdel(bucket, field)
        pipe.execute()
    return ErasureReport(
        ids=tuple(ids),
        deleted_keys=tuple(sorted(k.decode() for k in doomed)),
        audiences=tuple(audiences),
        aliases=tuple(aliases),
        dry_run=dry_run,
        alias_buckets=tuple(sorted({bucket.decode() for bucket, _ in bucketed})),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "user",
        metavar="USER",
        help="the user: raw email/phone, user id or pseudonym (pseudonymised as at ingestion)",
    )
    parser.add_argument("--redis", help="Redis URL (default: ATTUNE_REDIS_URL)")
    parser.add_argument("--dry-run", action="store_true", help="report, remove nothing")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env().replace(redis_url=args.redis)
    ids = stored_ids(args.user, settings)
    check_redis(settings)  # one line for refused credentials, TLS or an ACL without the prefix
    config = RedisConfig.from_settings(settings)
    client = config.client()
    try:
        report = erase_user(client, config.keys(), ids, dry_run=args.dry_run)
    except redis.RedisError as exc:
        raise RuntimeError(f"Redis at {config.safe_url}: {exc}") from exc
    finally:
        client.close()
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(asdict(report), option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(report.render())
    return 0
