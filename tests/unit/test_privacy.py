"""Pseudonymisation (operators/privacy.py) and the secured-connection settings around it."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import logging
import pickle
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attune.flows.cli import main as cli_main
from attune.flows.personalize import pseudonymiser_for
from attune.flows.settings import Settings, env_name
from attune.flows.topics import client_options
from attune.operators.codec import Codec
from attune.operators.events import (
    Context,
    DeadLetter,
    ErrorClass,
    Event,
    EventType,
    Identify,
    PageView,
    Search,
)
from attune.operators.kafka_sink import librdkafka_security
from attune.operators.privacy import (
    PLAN,
    PiiPlan,
    Pseudonymiser,
    _schema_files,
    is_pseudonym,
    load_key,
    looks_like_pii,
    parse_previous_keys,
    pii_fields,
    redact_text,
)
from attune.operators.redis_sink import RedisConfig
from attune.operators.sources import EventListSource
from attune.workload.generator import GeneratorConfig, generate

KEY = b"unit-test-pseudonym-key-0123456789abcdef"
OTHER_KEY = b"another-pseudonym-key-for-rotation-0123456"
T0 = 1_767_571_200_000


def reference(key: bytes, key_id: str, normalised: str) -> str:
    """The pseudonym as the docs define it, computed independently of the module."""
    digest = hmac.new(key, normalised.encode(), hashlib.sha256).digest()[:16]
    return f"p1.{key_id}." + base64.b32encode(digest).decode().rstrip("=").lower()


def identify(user: str = "u-1", anon: str = "d-1", **kw: str | None) -> Event:
    return Event(
        "e1",
        EventType.IDENTIFY,
        T0,
        Identify("LOGIN", kw.get("email", "ann@example.org"), kw.get("phone", "+44 7700 900123")),
        user_id=user,
        anonymous_id=anon,
        session_id="s-1",
        context=Context(
            device="MOBILE", country="GB", page_url="https://shop/x", ip=kw.get("ip", "10.1.2.3")
        ),
    )


# --- the hash ------------------------------------------------------------------------------


def test_pseudonym_is_the_documented_hmac_with_key_id() -> None:
    p = Pseudonymiser(KEY, "k7")
    assert p.pseudonym("ann@example.org") == reference(KEY, "k7", "ann@example.org")
    assert p.pseudonym("+44 7700 900123") == reference(KEY, "k7", "+447700900123")
    assert p.pseudonym("10.1.2.3") == reference(KEY, "k7", "10.1.2.3")
    assert p.pseudonym("Customer 42") == reference(KEY, "k7", "Customer 42")
    assert is_pseudonym(p.pseudonym("x"))


def test_same_input_same_key_same_pseudonym_across_instances_and_spellings() -> None:
    a, b = Pseudonymiser(KEY, "k1"), Pseudonymiser(KEY, "k1")
    assert a.pseudonym("Ann@Example.ORG") == b.pseudonym(" ann@example.org ")
    assert a.pseudonym("+44 (7700) 900-123") == b.pseudonym("+447700900123")
    assert a.pseudonym("2001:DB8::1") == b.pseudonym("2001:db8:0:0:0:0:0:1")
    assert a.pseudonym("ann@example.org") != a.pseudonym("bob@example.org")


def test_rotation_changes_every_pseudonym_and_erasure_finds_the_old_ones() -> None:
    old = Pseudonymiser(KEY, "k1")
    new = Pseudonymiser(OTHER_KEY, "k2", previous={"k1": KEY})
    email = "ann@example.org"
    assert old.pseudonym(email).startswith("p1.k1.")
    assert new.pseudonym(email).startswith("p1.k2.")
    assert new.pseudonym(email) != old.pseudonym(email)
    # new pseudonyms are made with the current key only; erasure looks under both
    assert new.all_pseudonyms(email) == [new.pseudonym(email), old.pseudonym(email)]
    # an opaque id is stored as it is, whatever the key
    assert new.all_pseudonyms("u-123") == ["u-123"]
    # a pseudonym given to erase is looked up as it is
    assert new.all_pseudonyms(old.pseudonym(email)) == [old.pseudonym(email)]


def test_pseudonymising_is_idempotent() -> None:
    p = Pseudonymiser(KEY, "k1")
    once = p.pseudonym("ann@example.org")
    assert p.pseudonym(once) == once
    assert Pseudonymiser(OTHER_KEY, "k9").pseudonym(once) == once  # any key's pseudonym
    e = identify(user="ann@example.org")
    assert p.event(p.event(e)) == p.event(e)


@given(st.text(min_size=1, max_size=60))
def test_any_value_becomes_a_pseudonym_that_does_not_contain_it(value: str) -> None:
    p = Pseudonymiser(KEY, "k1")
    out = p.pseudonym(value)
    if is_pseudonym(value):
        assert out == value
    else:
        assert is_pseudonym(out)
        assert len(value.strip()) < 4 or value.strip().lower() not in out


@pytest.mark.parametrize(
    ("user", "auto", "always", "never"),
    [
        ("u8f3a2b9c01", False, True, False),
        ("4f1c7d2e-8a9b-4c3d-9e0f-1a2b3c4d5e6f", False, True, False),
        ("1234567890", False, True, False),  # a bare number: an opaque customer id
        ("ann@example.org", True, True, False),
        ("+1 (555) 010-0999", True, True, False),
        ("07700 900123", True, True, False),
        ("192.168.10.20", True, True, False),
        ("fe80::1", True, True, False),
    ],
)
def test_user_id_policy(user: str, auto: bool, always: bool, never: bool) -> None:
    for policy, hashed in (("auto", auto), ("always", always), ("never", never)):
        p = Pseudonymiser(KEY, "k1", policy)
        e = p.event(identify(user=user, anon=user))
        assert (e.user_id != user) is hashed, (policy, user)
        assert (e.anonymous_id != user) is hashed, (policy, user)
        if hashed:
            assert e.user_id == e.anonymous_id == p.pseudonym(user)  # joins across fields
        # the other PII fields are hashed whatever the user-id policy
        assert isinstance(e.payload, Identify)
        assert e.payload.email == p.pseudonym("ann@example.org")
        assert e.payload.phone == p.pseudonym("+447700900123")
        assert e.context is not None and e.context.ip == p.pseudonym("10.1.2.3")


def test_non_pii_fields_are_untouched_and_events_without_pii_are_the_same_object() -> None:
    p = Pseudonymiser(KEY, "k1")
    e = identify()
    out = p.event(e)
    assert replace(
        out,
        payload=e.payload,
        context=replace(out.context, ip="10.1.2.3") if out.context else None,
    ) == replace(e)
    plain = Event("e2", EventType.SEARCH, T0, Search("boots"), user_id="u-1", anonymous_id="d")
    assert p.event(plain) is plain


def test_looks_like_pii_and_bad_settings() -> None:
    assert looks_like_pii("ann@example.org") and not looks_like_pii("ann-at-example")
    with pytest.raises(ValueError, match="auto, always or never"):
        Pseudonymiser(KEY, "k1", "sometimes")
    with pytest.raises(ValueError, match="key id"):
        Pseudonymiser(KEY, "has.dot")
    with pytest.raises(ValueError, match="fewer than 32"):
        Pseudonymiser(b"short", "k1")


def test_pickles_without_losing_the_key_and_repr_hides_it() -> None:
    p = Pseudonymiser(KEY, "k1", "always", previous={"k0": OTHER_KEY})
    q = pickle.loads(pickle.dumps(p))
    assert q.pseudonym("x@y.io") == p.pseudonym("x@y.io")
    assert q.policy is p.policy and q.previous == p.previous
    assert KEY.decode() not in repr(p)


# --- the field list comes from the schemas -------------------------------------------------


def test_plan_is_read_from_the_schemas() -> None:
    assert set(PLAN.fields()) == {
        "Event.user_id",
        "Event.anonymous_id",
        "Context.ip",
        "Identify.email",
        "Identify.phone",
    }
    marked = {
        (name, f["name"])
        for name, schema in _schema_files().items()
        for f in schema["fields"]
        if f.get("pii")
    }
    assert len(marked) == len(PLAN.fields())


def test_a_field_newly_marked_pii_is_pseudonymised_without_code_changes() -> None:
    schemas = copy.deepcopy(_schema_files())
    for f in schemas["attune.event.Search"]["fields"]:
        if f["name"] == "query":
            f["pii"] = True
    for f in schemas["attune.event.Context"]["fields"]:
        if f["name"] == "referrer":
            f["pii"] = True
    plan = PiiPlan.from_schemas(schemas)
    p = Pseudonymiser(KEY, "k1", plan=plan)
    e = Event(
        "e3",
        EventType.SEARCH,
        T0,
        Search("ann's address"),
        user_id="u-1",
        context=Context(referrer="https://mail/ann"),
    )
    out = p.event(e)
    assert isinstance(out.payload, Search) and out.payload.query == p.pseudonym("ann's address")
    assert out.context is not None and out.context.referrer == p.pseudonym("https://mail/ann")
    record = Codec().decode_record(Codec().encode_event(e), "attune.event.Event")
    assert isinstance(record, dict)
    p.record(record)
    assert record["payload"][1]["query"] == p.pseudonym("ann's address")


def test_a_pii_mark_that_cannot_be_honoured_fails_at_start_up() -> None:
    schemas = copy.deepcopy(_schema_files())
    for f in schemas["attune.event.Search"]["fields"]:
        if f["name"] == "results_count":
            f["pii"] = True
    with pytest.raises(ValueError, match=r"Search\.results_count is marked pii"):
        PiiPlan.from_schemas(schemas)
    assert pii_fields({"x.Y": {"fields": [{"name": "a", "type": "string", "pii": True}]}})
    with pytest.raises(ValueError, match="does not know where"):
        PiiPlan.from_schemas({"x.Y": {"fields": [{"name": "a", "type": "string", "pii": True}]}})


# --- decoding with privacy: records, dead letters, sources ---------------------------------


def test_record_level_and_event_level_agree_on_generated_events() -> None:
    g = generate(GeneratorConfig(users=40, days=2, seed=3))
    p = Pseudonymiser(KEY, "k1", "always")
    plain, private = Codec(), Codec(privacy=p.record)
    events = list(g.events)
    assert any(isinstance(e.payload, Identify) and e.payload.email for e in events)
    for e in events:
        assert private.decode_event(plain.encode_event(e)) == p.event(e)


def test_dead_letters_of_decoded_events_keep_no_raw_pii() -> None:
    p = Pseudonymiser(KEY, "k1")
    codec = Codec(privacy=p.record)
    # decodes, but invalid: an identify without a user id
    bad = replace(identify(user="ann@example.org"), user_id=None)
    dead = codec.decode_event(Codec().encode_event(bad))
    assert isinstance(dead, DeadLetter) and dead.error_class is ErrorClass.INVALID_VALUE
    for raw in (b"ann@example.org", b"+44 7700 900123", b"10.1.2.3"):
        assert raw not in dead.original
        assert raw.decode() not in dead.reason
    kept = Codec().decode_record(dead.original, "attune.event.Event")
    assert isinstance(kept, dict)
    assert kept["payload"][1]["email"] == p.pseudonym("ann@example.org")
    # without privacy the contract is unchanged: the original bytes
    assert Codec().decode_event(Codec().encode_event(bad)).original == Codec().encode_event(bad)  # type: ignore[union-attr]


def test_generator_source_pseudonymises_and_late_dead_letters_are_re_encoded() -> None:
    p = Pseudonymiser(KEY, "k1")
    on_time = identify(user="ann@example.org")
    late = replace(identify(user="bob@example.org", ip="10.9.9.9"), event_id="e-late")
    # one user moves the watermark by up to the allowed lateness (a jump further ahead
    # needs other users to agree: operators/sources.py)
    later = replace(on_time, event_id="e2", event_time=T0 + 60_000)
    src = EventListSource(
        lambda: iter([on_time, later, replace(late, event_time=T0 - 1_000)]),
        allowed_lateness_ms=60_000,
        privacy=p,
    )
    part = src.build_part("s", "generator", None)
    batch = part.next_batch()
    assert [type(x).__name__ for x in batch] == ["Event", "Event", "DeadLetter"]
    assert batch[0] == p.event(on_time)
    dead = batch[2]
    assert isinstance(dead, DeadLetter) and dead.error_class is ErrorClass.LATE
    assert b"bob@example.org" not in dead.original and b"10.9.9.9" not in dead.original
    assert Codec().decode_event(dead.original) == p.event(replace(late, event_time=T0 - 1_000))


def test_redact_text_scrubs_emails_phones_and_ips_but_not_event_times() -> None:
    text = "x 'a.b+c@d-e.co.uk' y 10.0.0.255 z +1 (555) 010-0999 w 2001:db8::7:1 v 555-010-0999"
    assert redact_text(text) == "x '<email>' y <ip> z <phone> w <ip> v <phone>"
    keep = "late: event time 1767571100000 is 100000 ms behind (allowed 600000 ms), field a.b"
    assert redact_text(keep) == keep


# --- keys and settings ---------------------------------------------------------------------


def test_load_key_from_value_or_file(tmp_path: Path) -> None:
    assert load_key() is None
    assert load_key(KEY.decode()) == KEY
    path = tmp_path / "key"
    path.write_bytes(KEY + b"\n")
    assert load_key(path=str(path)) == KEY
    with pytest.raises(ValueError, match="not both"):
        load_key(KEY.decode(), str(path))
    with pytest.raises(ValueError, match="fewer than 32") as err:
        load_key("tooshort-secret")
    assert "tooshort-secret" not in str(err.value)
    with pytest.raises(ValueError, match="cannot read"):
        load_key(path=str(tmp_path / "missing"))
    assert parse_previous_keys("") == {}
    with pytest.raises(ValueError, match="entry 1") as err2:
        parse_previous_keys("k0:short")
    assert "short" not in str(err2.value).split("(")[-1]


def test_flow_refuses_kafka_without_a_key_and_the_demo_uses_a_random_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(ValueError, match="ATTUNE_PSEUDONYM_KEY"):
        pseudonymiser_for(Settings(kafka_bootstrap="127.0.0.1:1"))
    with caplog.at_level(logging.WARNING, logger="attune.operators.privacy"):
        a, b = pseudonymiser_for(Settings()), pseudonymiser_for(Settings())
    assert "random key" in caplog.text
    assert a.key_id == "ephemeral" and a.pseudonym("x@y.io") != b.pseudonym("x@y.io")
    configured = pseudonymiser_for(
        Settings(
            kafka_bootstrap="127.0.0.1:1",
            pseudonym_key=KEY.decode(),
            pseudonym_key_id="prod3",
            pseudonymise_user_ids="always",
            pseudonym_previous_keys=f"prod2:{OTHER_KEY.decode()}",
        )
    )
    assert configured.pseudonym("u1") == reference(KEY, "prod3", "u1")
    assert configured.user_id("u1") == configured.pseudonym("u1")
    assert configured.previous == {"prod2": OTHER_KEY}


SECRETS = {
    "pseudonym_key": KEY.decode(),
    "pseudonym_previous_keys": f"k0:{OTHER_KEY.decode()}",
    "redis_password": "redis-pw-123",
    "kafka_sasl_password": "sasl-pw-456",
    "kafka_ssl_key_password": "key-pw-789",
    "redis_url": "rediss://app:url-pw-000@cache:6380/0",
}


def test_secrets_never_printed_by_config_repr_or_masked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(env_name(name), value)
    settings = Settings.from_env()
    assert cli_main(["config"]) == 0
    dumped = capsys.readouterr().out
    shown = orjson.loads(dumped)
    assert shown["pseudonym_key"] == "***" and shown["redis_password"] == "***"
    assert shown["redis_url"] == "rediss://app:***@cache:6380/0"
    for text in (dumped, repr(settings), str(settings.masked()), json.dumps(settings.masked())):
        for secret in (KEY.decode(), OTHER_KEY.decode(), "redis-pw-123", "sasl-pw-456"):
            assert secret not in text
        assert "key-pw-789" not in text and "url-pw-000" not in text
    config = RedisConfig.from_settings(settings)
    assert "redis-pw-123" not in repr(config) and "url-pw-000" not in repr(config)


# --- secured connections: what reaches the clients ------------------------------------------


def test_kafka_sasl_scram_and_mutual_tls_reach_both_client_libraries() -> None:
    settings = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="attune",
        kafka_sasl_password="pw",
        kafka_ssl_cafile="/etc/ca.pem",
        kafka_ssl_certfile="/etc/client.pem",
        kafka_ssl_keyfile="/etc/client.key",
        kafka_ssl_key_password="kpw",
    )
    options = client_options(settings)
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "attune",
        "sasl_plain_password": "pw",
        "ssl_cafile": "/etc/ca.pem",
        "ssl_certfile": "/etc/client.pem",
        "ssl_keyfile": "/etc/client.key",
        "ssl_password": "kpw",
    }
    assert librdkafka_security(options) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "attune",
        "sasl.password": "pw",
        "ssl.ca.location": "/etc/ca.pem",
        "ssl.certificate.location": "/etc/client.pem",
        "ssl.key.location": "/etc/client.key",
        "ssl.key.password": "kpw",
    }
    from attune.flows.generate import producer_config
    from attune.flows.personalize import kafka_security

    assert kafka_security(settings).items() <= producer_config("b:1", settings).items()
    # SSL files are not sent to a plaintext SASL listener
    sasl_only = replace(settings, kafka_security_protocol="SASL_PLAINTEXT")
    assert "ssl_cafile" not in client_options(sasl_only)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kafka_security_protocol": "TLS"}, "use one of"),
        ({"kafka_security_protocol": "SASL_SSL"}, "ATTUNE_KAFKA_SASL_MECHANISM"),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "PLAIN"},
            "ATTUNE_KAFKA_SASL_USERNAME",
        ),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_certfile": "/c.pem"}, "SSL_KEYFILE"),
    ],
)
def test_incomplete_kafka_security_is_refused(changes: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        client_options(Settings().replace(**changes))


def test_redis_tls_and_acl_reach_the_client() -> None:
    config = RedisConfig.from_settings(
        Settings(
            redis_url="rediss://cache:6380/2",
            redis_username="attune",
            redis_password="pw",
            redis_ssl_cafile="/etc/ca.pem",
            redis_ssl_certfile="/etc/c.pem",
            redis_ssl_keyfile="/etc/c.key",
        )
    )
    client = config.client()
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["username"] == "attune" and kwargs["password"] == "pw"
    assert kwargs["ssl_ca_certs"] == "/etc/ca.pem"
    assert kwargs["ssl_certfile"] == "/etc/c.pem" and kwargs["ssl_keyfile"] == "/etc/c.key"
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"
    client.close()
    with pytest.raises(ValueError, match="rediss://"):
        RedisConfig("redis://cache:6379/0", ssl_cafile="/etc/ca.pem")
    with pytest.raises(ValueError, match="SSL_KEYFILE"):
        RedisConfig("rediss://cache:6379/0", ssl_certfile="/etc/c.pem")


def test_pseudonymised_event_types_still_validate() -> None:
    p = Pseudonymiser(KEY, "k1", "always")
    e = Event("e9", EventType.PAGE_VIEW, T0, PageView(), anonymous_id="d-9")
    assert Codec(privacy=p.record).decode_event(Codec().encode_event(e)) == p.event(e)
