"""No raw PII past ingestion: planted emails, phones and IPs through real Kafka and Redis.

A generated stream gets known PII planted in it (docs/privacy.md): some users'
ids become email addresses or phone numbers, their IDENTIFY events carry
planted emails and phones, their contexts planted IPv4 and IPv6 addresses,
some anonymous ids become email addresses; plus three bad messages carrying
PII (undecodable bytes, a decodable but invalid event, a too-late event). The
flow runs over it from real Kafka to real Redis. Then every Redis key and
value (all types), every message (key and value) on every output topic, and
everything logged or printed are searched, case-insensitively, for every
planted value, its normalised form and its hex: none may appear. The generator's
own emails, phones and IPs are searched for too.

Dead letters: the dead-letter topic is scanned like the others, except the
``original`` bytes of input that could not be decoded at all, which are kept
as received by design (bounded by the topic's retention, set from
``ATTUNE_DLQ_RETENTION_S`` and checked here); their reason text is scanned.
Dead letters of input that did decode (invalid, too late) keep the
pseudonymised event and are scanned whole.

The same run then serves ``attune erase`` (by raw email) and the Redis ACL test.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from bytewax.testing import run_main
from confluent_kafka import Producer

from attune.clients.recommendations import parse_profile
from attune.flows import topics
from attune.flows.cli import main as cli_main
from attune.flows.generate import produce
from attune.flows.personalize import build_flow, pseudonymiser_for
from attune.flows.settings import Settings
from attune.operators.codec import Codec
from attune.operators.events import (
    Context,
    DeadLetter,
    ErrorClass,
    Event,
    Identify,
)
from attune.operators.privacy import Pseudonymiser, normalise
from attune.operators.redis_keys import PROFILE_FIELD, RedisKeys, joined
from attune.operators.redis_sink import RedisConfig, RedisSink, RedisSinkError
from attune.workload.generator import GeneratorConfig, generate
from attune.workload.truth import GroundTruth
from tests.integration.reading import consume_records, fresh_topics
from tests.truth import profile_mismatches

pytestmark = pytest.mark.integration

#: Error classes whose dead letters keep the raw input bytes (nothing could be decoded).
UNDECODABLE = {
    ErrorClass.TRUNCATED,
    ErrorClass.BAD_MAGIC,
    ErrorClass.UNKNOWN_FINGERPRINT,
    ErrorClass.UNKNOWN_SCHEMA_ID,
    ErrorClass.INVALID_UNION,
    ErrorClass.MALFORMED,
    ErrorClass.TRAILING_BYTES,
    ErrorClass.SOURCE_ERROR,
}
PLANTED_USERS = 24
PLANTED_ANONYMOUS = 6
DLQ_RETENTION_S = 3 * 24 * 3600


@dataclass
class Run:
    settings: Settings
    truth: GroundTruth
    planted: list[str]  # every planted PII value
    others: list[str]  # the generator's own emails, phones and IPs
    user_of: dict[str, str]  # original canonical id -> the id it carries in the stream
    privacy: Pseudonymiser
    logs: str
    dead: list[DeadLetter]
    outputs: dict[str, list[tuple[bytes, bytes]]]  # topic -> (key, value)


def _planted_id(k: int) -> str:
    return f"Planted.User{k}@PII-Test.example" if k % 2 == 0 else f"+1 (202) 555-01{k:02d}"


def _planted_ip(k: int) -> str:
    return f"198.51.100.{k + 1}" if k % 2 == 0 else f"2001:db8:face::{k + 1:x}"


def plant(events: list[Event], truth: GroundTruth) -> tuple[list[Event], dict[str, str], list[str]]:
    """The events with PII planted, the id mapping, and the planted values."""
    with_aliases = {u for a, u in truth.anonymous_to_user.items() if a != u}
    known = [u for u in truth.exact_users() if not _is_uuid(u)]
    # users who logged in from an anonymous session first (they have aliases), then others
    chosen = [u for u in known if u in with_aliases][: PLANTED_USERS // 2]
    chosen += [u for u in known if u not in chosen][: PLANTED_USERS - len(chosen)]
    anonymous = [u for u in truth.exact_users() if _is_uuid(u)][:PLANTED_ANONYMOUS]
    user_of = {u: _planted_id(k) for k, u in enumerate(chosen)}
    ip_of = {u: _planted_ip(k) for k, u in enumerate(chosen)}
    user_of |= {a: f"anon.visitor{k}@PII-Test.example" for k, a in enumerate(anonymous)}
    ip_of |= {a: f"203.0.113.{k + 1}" for k, a in enumerate(anonymous)}
    extra = {u: (f"phone.owner{k}@pii-test.example", f"+44 7700 9{k:05d}") for k, u in
             enumerate(chosen)}  # fmt: skip
    out = []
    for e in events:
        canonical = e.user_id or truth.anonymous_to_user.get(e.anonymous_id or "", "")
        if canonical not in user_of:
            out.append(e)
            continue
        changes: dict[str, Any] = {}
        if e.user_id:
            changes["user_id"] = user_of[canonical]
        if e.anonymous_id in user_of:
            changes["anonymous_id"] = user_of[e.anonymous_id]
        changes["context"] = replace(e.context or Context(), ip=ip_of[canonical])
        if isinstance(e.payload, Identify) and canonical in extra:
            email, phone = extra[canonical]
            changes["payload"] = Identify(e.payload.method, email, phone)
        out.append(replace(e, **changes))
    planted = [*user_of.values(), *ip_of.values()]
    planted += [v for pair in extra.values() for v in pair]
    return out, user_of, planted


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def variants(value: str) -> set[str]:
    """The forms a leak could take: as given, normalised, digits of a phone, hex."""
    forms = {value, value.strip(), normalise(value)}
    digits = "".join(c for c in value if c.isdigit())
    if value.startswith("+") and len(digits) >= 7:
        forms.add(digits)
    if ":" in value:
        import ipaddress

        forms.add(ipaddress.ip_address(value).exploded)
    forms |= {f.encode().hex() for f in list(forms)}
    return {f.lower() for f in forms}


def bad_messages(codec: Codec, template: Event) -> list[bytes]:
    """Three bad inputs carrying planted PII (their values are planted too)."""
    pii = Identify("LOGIN", "bad.input@pii-test.example", "+1 (303) 555-0177")
    ctx = Context(ip="192.0.2.77")
    invalid = replace(template, event_id="bad-invalid", user_id=None, payload=pii, context=ctx)
    truncated = codec.encode_event(
        replace(template, event_id="bad-truncated", user_id="bad.input@pii-test.example")
    )
    return [codec.encode_event(invalid), truncated[: len(truncated) - 3]]


def redis_corpus(client: redis.Redis) -> list[bytes]:
    """Every key name and every value of every type in the database."""
    c: Any = client  # redis-py's answers are typed loosely; these are bytes
    out: list[bytes] = []
    for key in c.scan_iter(count=1000):
        out.append(key)
        kind = c.type(key).decode()
        if kind == "string":
            out.append(c.get(key) or b"")
        elif kind == "hash":
            for f, v in c.hgetall(key).items():
                out += [f, v]
        elif kind == "set":
            out += list(c.smembers(key))
        elif kind == "zset":
            out += [m for m, _ in c.zrange(key, 0, -1, withscores=True)]
        elif kind == "list":
            out += list(c.lrange(key, 0, -1))
        else:
            pytest.fail(f"unexpected Redis type {kind} at {key!r}: extend the scan")
    return out


def leaks(corpus: bytes, values: list[str]) -> list[str]:
    text = corpus.lower()
    return sorted({v for v in values for f in variants(v) if f.encode() in text})


@pytest.fixture(scope="module")
def run(integration_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    settings = integration_settings.replace(
        **fresh_topics("pii"),
        kafka_tail=False,
        dlq_retention_s=DLQ_RETENTION_S,
        pseudonymise_user_ids="auto",
    )
    names = topics.design_topics(settings)
    topics.ensure_topics(settings.kafka_bootstrap, names, 2, configs=topics.topic_configs(settings))
    g = generate(GeneratorConfig(users=160, days=4, seed=33))
    events = list(g.events)
    truth = g.truth
    others = sorted(
        {e.context.ip for e in events if e.context and e.context.ip}
        | {v for e in events if isinstance(e.payload, Identify)
           for v in (e.payload.email, e.payload.phone) if v}
    )  # fmt: skip
    planted_events, user_of, planted = plant(events, truth)
    codec = Codec()
    produce(
        SimpleNamespace(items=g.items, events=planted_events),  # type: ignore[arg-type]
        settings.kafka_bootstrap,
        settings.topic_events,
        settings.topic_items,
        None,
        codec,
        progress=False,
    )
    # bad input, after the stream: keyed by a planted user, so it follows their events
    template = next(e for e in reversed(planted_events) if e.user_id in user_of.values())
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    too_late = replace(template, event_id="bad-late", event_time=template.event_time - 6 * 3600_000)
    bad = [*bad_messages(codec, template), codec.encode_event(too_late)]
    for value in bad:
        producer.produce(settings.topic_events, value, key=template.user_key.encode())
    assert producer.flush(30) == 0
    planted += ["bad.input@pii-test.example", "+1 (303) 555-0177", "192.0.2.77"]

    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    handler = _Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with _fds_to(tmp_path_factory.mktemp("pii") / "output") as printed:
            run_main(build_flow(settings))
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    outputs = {
        name: consume_records(settings, name)
        for name in names
        if name not in (settings.topic_events, settings.topic_items)
    }
    dead = [codec.decode_dead_letter(v) for _, v in outputs[settings.topic_dlq]]
    yield Run(
        settings,
        truth,
        planted,
        others,
        user_of,
        pseudonymiser_for(settings),
        handler.text() + "\n" + printed.read_text(errors="replace"),
        dead,
        outputs,
    )
    client.close()
    topics.delete_topics(settings.kafka_bootstrap, names)


@contextlib.contextmanager
def _fds_to(path: Path) -> Iterator[Path]:
    """Everything written to file descriptors 1 and 2 (Python, Rust, C) goes to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with path.open("wb") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            yield path
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


class _Capture(logging.Handler):
    """Every log record of the run, formatted with its arguments (what a log file gets)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def text(self) -> str:
        return "\n".join(self.lines)


def test_planted_pii_appears_nowhere_downstream(run: Run) -> None:
    settings = run.settings
    client = redis.Redis.from_url(settings.redis_url)
    corpus = redis_corpus(client)
    assert len(corpus) > 1000  # the flow wrote profiles, segments, aliases, models
    everything = run.planted + run.others
    assert leaks(b"\n".join(corpus), everything) == []

    # every output topic, keys and values; dead letters below
    for topic, messages in run.outputs.items():
        if topic == settings.topic_dlq:
            continue
        blob = b"\n".join(k + b"\n" + v for k, v in messages)
        assert leaks(blob, everything) == [], topic
    assert sum(len(m) for t, m in run.outputs.items() if t != settings.topic_dlq) > 100

    # dead letters: reasons never echo PII; decoded input is kept pseudonymised;
    # only undecodable bytes are kept raw (bounded retention)
    by_id = {d.event_id: d for d in run.dead}
    assert by_id["bad-invalid"].error_class is ErrorClass.INVALID_VALUE
    assert by_id["bad-late"].error_class is ErrorClass.LATE
    raw = [d for d in run.dead if d.error_class in UNDECODABLE]
    assert len(raw) == 1 and b"bad.input@pii-test.example" in raw[0].original  # kept as sent
    for d in run.dead:
        visible = [d.reason, d.event_id or "", d.source_topic or ""]
        kept = d.original if d.error_class not in UNDECODABLE else b""
        assert leaks("\n".join(visible).encode() + kept, everything) == [], d.error_class
    retention = topics.topic_config(settings.kafka_bootstrap, settings.topic_dlq)
    assert retention["retention.ms"] == str(DLQ_RETENTION_S * 1000)

    # the log records of the run and everything it printed (fds 1 and 2)
    assert "writes to Redis" in run.logs  # the capture did see the run
    assert leaks(run.logs.encode(), everything) == []


def test_pseudonymised_users_still_join_and_match_the_truth(run: Run) -> None:
    client = redis.Redis.from_url(run.settings.redis_url)
    keys = RedisKeys(run.settings.redis_prefix)
    p = run.privacy

    def profile_of(user: str) -> dict[str, str]:
        stored = p.user_id(run.user_of.get(user, user))
        raw = joined(client.hgetall(keys.user(stored)), PROFILE_FIELD)
        if raw is None:
            return {}
        return {name: value or "" for name, value in parse_profile(raw).items()}

    assert profile_mismatches(profile_of, run.truth) == {}
    for original, carried in run.user_of.items():
        stored = p.user_id(carried)
        assert stored.startswith("p1.test.") and stored == p.pseudonym(carried)
        assert client.hexists(keys.user(stored), PROFILE_FIELD), original
    # opaque ids are kept as they are (policy auto)
    plain = [u for u in run.truth.exact_users() if u not in run.user_of][:20]
    assert all(client.hexists(keys.user(u), PROFILE_FIELD) for u in plain)


def test_attune_erase_by_raw_email_removes_keys_audiences_and_aliases(
    run: Run, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = run.settings
    client = redis.Redis.from_url(settings.redis_url)
    keys = RedisKeys(settings.redis_prefix)
    p = run.privacy
    aliased = {u for a, u in run.truth.anonymous_to_user.items() if a != u}
    audience_keys = list(client.scan_iter(match=f"{keys.prefix}segment:*"))

    def audiences_of(user: str) -> list[str]:
        return sorted(k.decode() for k in audience_keys if client.sismember(k, user))

    target = next(
        o
        for o, c in run.user_of.items()
        if "@" in c and o in aliased and "anon." not in c and audiences_of(p.user_id(c))
    )
    email = run.user_of[target]
    stored = p.user_id(email)
    anons = [a for a, u in run.truth.anonymous_to_user.items() if u == target and a != target]
    assert client.hexists(keys.user(stored), PROFILE_FIELD) and anons
    audiences = audiences_of(stored)
    before = {k.decode() for k in client.scan_iter(count=1000)}
    for name in ("pseudonym_key", "pseudonym_key_id", "redis_url", "redis_prefix"):
        monkeypatch.setenv(f"ATTUNE_{name.upper()}", str(getattr(settings, name)))

    # a dry run reports and removes nothing
    assert cli_main(["erase", f"  {email.upper()} ", "--dry-run", "--json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert client.dbsize() == len(before) and dry["dry_run"] is True

    assert cli_main(["erase", email, "--json"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out)
    assert email.lower() not in out.lower()  # the report names pseudonyms only
    assert report["ids"] == [stored]
    assert set(report["audiences"]) == {a[len(f"{keys.prefix}segment:") :] for a in audiences}
    assert set(report["aliases"]) == set(anons)
    assert keys.user(stored) in report["deleted_keys"]
    # the aliases are fields of the alias buckets (the flow writes no alias keys)
    assert {keys.alias_lookup(a, time.time())[0] for a in anons} == set(report["alias_buckets"])
    assert report == {**dry, "dry_run": False}
    # nothing of the user is left; everything else is
    assert list(client.scan_iter(match=f"{keys.prefix}{{u:{stored}}}*")) == []
    assert not any(client.sismember(a, stored) for a in audiences)
    assert not any(client.exists(keys.alias(a)) for a in anons)
    assert not any(client.hexists(b, a) for a in anons for b in keys.alias_lookup(a, time.time()))
    after = {k.decode() for k in client.scan_iter(count=1000)}
    emptied = set(report["alias_buckets"]) | set(audiences)  # sets and hashes left empty go
    assert before - after == set(report["deleted_keys"]) | (emptied - after)
    assert after <= before


def test_erase_refuses_pii_without_the_key(
    run: Run, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ATTUNE_PSEUDONYM_KEY", raising=False)
    monkeypatch.setenv("ATTUNE_REDIS_URL", run.settings.redis_url)
    assert cli_main(["erase", "someone@example.org"]) == 1
    assert "ATTUNE_PSEUDONYM_KEY" in capsys.readouterr().err


def test_redis_acl_user_authenticates_and_a_wrong_password_is_refused(run: Run) -> None:
    admin = redis.Redis.from_url(run.settings.redis_url)
    user, password = f"attune-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    admin.execute_command(
        "ACL", "SETUSER", user, "on", f">{password}", "resetkeys", "~attune:*", "+@all"
    )
    try:
        settings = run.settings.replace(redis_username=user, redis_password=password)
        sink = RedisSink(RedisConfig.from_settings(settings))
        part = sink.build("redis", 0, 1)  # PINGs as the ACL user
        from attune.operators.redis_sink import ProfileWrite

        part.write_batch([ProfileWrite("acl-user", {"events": "1"})])
        part.close()
        assert admin.hgetall("attune:{u:acl-user}") == {b"P": b"13|1"}
        whoami = RedisConfig.from_settings(settings).client()
        assert whoami.execute_command("ACL", "WHOAMI") == user.encode()
        whoami.close()
        # outside the user's key pattern: refused by the server's ACL
        with pytest.raises(redis.exceptions.NoPermissionError):
            RedisConfig.from_settings(settings).client().set("other:key", "x")
        wrong = run.settings.replace(redis_username=user, redis_password="not-" + password)
        with pytest.raises(RedisSinkError) as err:
            RedisSink(RedisConfig.from_settings(wrong)).build("redis", 0, 1)
        assert password not in str(err.value)
    finally:
        admin.execute_command("ACL", "DELUSER", user)
        admin.delete("attune:{u:acl-user}")
        admin.close()
