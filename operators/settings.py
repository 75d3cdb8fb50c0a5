"""Configuration of Attune: the one reader of ``ATTUNE_*`` environment variables.

The dataflow (:mod:`attune.flows`, which re-exports this module as
:mod:`attune.flows.settings`) and the client library (:mod:`attune.clients`) read the
same settings; they live here, among the dependency-free modules, so that an app using
the clients alone does not import the flows package.

Every setting is a field of :class:`Settings` with its environment variable,
default and a line of documentation. CLI flags override fields with
:meth:`Settings.replace`. The README configuration reference is generated from
this class (``attune config --markdown``) and a test keeps the two in step.

>>> s = Settings.from_env({"ATTUNE_KAFKA_BOOTSTRAP": "127.0.0.1:9092", "ATTUNE_PARTITIONS": "4"})
>>> s.kafka_bootstrap, s.partitions, s.topic_events
('127.0.0.1:9092', 4, 'attune.events')
>>> s.topic_trigger("cart_abandoned")
'attune.triggers.cart_abandoned'
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

_SECRET_MARK = "secret"

#: Kafka ``security.protocol`` values and the SASL mechanisms passed through
#: (GSSAPI/Kerberos and OAUTHBEARER need more than a username and password).
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _setting(default: Any, doc: str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"doc": doc, _SECRET_MARK: secret})


def default_state_dir() -> Path:
    """Where local servers keep their data, logs and pid files (``~/.cache/attune``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "attune"


@dataclass(frozen=True, slots=True)
class Settings:
    """Attune's settings; each field reads ``ATTUNE_<FIELD NAME IN CAPITALS>``."""

    kafka_bootstrap: str = _setting(
        "", "Kafka bootstrap servers (host:port,...). Empty: no Kafka (embedded default)."
    )
    kafka_security_protocol: str = _setting(
        "PLAINTEXT", "Kafka security.protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: str = _setting("", "Kafka SASL mechanism (PLAIN, SCRAM-SHA-256...).")
    kafka_sasl_username: str = _setting("", "Kafka SASL username.")
    kafka_sasl_password: str = _setting("", "Kafka SASL password.", secret=True)
    kafka_ssl_cafile: str = _setting("", "CA file to verify the Kafka brokers' certificates.")
    kafka_ssl_certfile: str = _setting(
        "", "Client certificate (PEM) for Kafka mutual TLS (ssl.certificate.location)."
    )
    kafka_ssl_keyfile: str = _setting(
        "", "Private key (PEM) of the Kafka client certificate (ssl.key.location)."
    )
    kafka_ssl_key_password: str = _setting(
        "", "Password of the Kafka client's private key.", secret=True
    )
    schema_registry_url: str = _setting(
        "",
        "Confluent schema registry URL. Set: Confluent wire format (magic 0 + schema id). "
        "Empty: Avro single-object encoding (0xC3 0x01 + CRC-64-AVRO fingerprint).",
    )
    redis_url: str = _setting(
        "", "Redis URL (redis:// or rediss:// for TLS). Empty: no Redis (embedded default)."
    )
    redis_username: str = _setting("", "Redis ACL username (overrides the URL's).")
    redis_password: str = _setting("", "Redis password (overrides the URL's).", secret=True)
    redis_ssl_cafile: str = _setting(
        "", "CA file to verify the Redis server's certificate (TLS: use a rediss:// URL)."
    )
    redis_ssl_certfile: str = _setting("", "Client certificate (PEM) for Redis mutual TLS.")
    redis_ssl_keyfile: str = _setting("", "Private key (PEM) of the Redis client certificate.")
    redis_prefix: str = _setting("attune:", "Prefix of every Redis key Attune writes.")
    redis_ttl_s: int = _setting(30 * 24 * 3600, "TTL in seconds of every per-user Redis key.")
    redis_alias_buckets: int = _setting(
        1024,
        "Buckets (hashes) holding the aliases of anonymous ids; about the live aliases / 64, so "
        "that each stays a compact listpack (docs/redis.md). Readers must use the same number; "
        "after a change run `attune redis-upgrade`.",
    )
    redis_timeout_s: int = _setting(
        30, "Seconds one Redis request of the flow may wait for its answer before it is retried."
    )
    redis_outage_limit_s: int = _setting(
        120,
        "Seconds the flow waits out a Redis that does not answer (retrying with backoff, "
        "holding its writes back) before it stops with one line; restarted from its recovery "
        "store it rewrites what was not written (docs/operations.md).",
    )
    topic_events: str = _setting("attune.events", "Topic of user events (Avro).")
    topic_items: str = _setting("attune.items", "Topic of item catalogue updates (Avro).")
    topic_triggers_prefix: str = _setting(
        "attune.triggers.", "Prefix of trigger topics; the trigger kind is appended."
    )
    topic_segments: str = _setting("attune.segments", "Topic of segment membership changes.")
    topic_dlq: str = _setting("attune.dlq", "Dead-letter topic: input that could not be used.")
    dlq_retention_s: int = _setting(
        7 * 24 * 3600,
        "Retention (retention.ms) of the dead-letter topic, set when `attune topics create` "
        "creates or updates it: undecodable input, kept as raw bytes, may hold PII.",
    )
    pseudonym_key: str = _setting(
        "",
        "Secret of the keyed hash (HMAC-SHA256) that pseudonymises PII at ingestion, at least "
        "32 bytes. Required with Kafka; unset without Kafka: a random per-process key (demo).",
        secret=True,
    )
    pseudonym_key_file: str = _setting(
        "", "File holding the pseudonym secret (instead of ATTUNE_PSEUDONYM_KEY)."
    )
    pseudonym_key_id: str = _setting(
        "k1", "Id of the pseudonym key, carried in every pseudonym (p1.<id>.<digest>)."
    )
    pseudonym_previous_keys: str = _setting(
        "",
        "Keys used before a rotation, as id:key,...: `attune erase` also removes data stored "
        "under their pseudonyms.",
        secret=True,
    )
    pseudonymise_user_ids: str = _setting(
        "auto",
        "Which user/anonymous ids are pseudonymised: auto (those that look like an email, "
        "phone number or IP address), always or never.",
    )
    topic_erasures: str = _setting(
        "attune.privacy.erasures",
        "Topic of erasure confirmations (attune.output.ErasureConfirmation), one per request.",
    )
    consent_default: str = _setting(
        "analytics=opt-out,personalization=opt-out,marketing=opt-in",
        "Consent that applies when a user stated none: one mode (opt-in or opt-out) for "
        "every purpose, or PURPOSE=MODE pairs; purposes not named keep these defaults "
        "(docs/privacy.md, Consent).",
    )
    consent_regions: str = _setting(
        "",
        "Per-region overrides of ATTUNE_CONSENT_DEFAULT: comma-separated SCOPE=MODE or "
        "SCOPE:PURPOSE=MODE; SCOPE is EU, EEA, a country (DE) or a subdivision (US-CA) from "
        "the event context; the most specific wins. E.g. EU=opt-in,US=opt-out.",
    )
    session_gap_s: int = _setting(1800, "Inactivity gap that ends a session, in seconds.")
    allowed_lateness_s: int = _setting(
        600,
        "How far (seconds) an event may trail its source partition's newest event time; "
        "later ones go to the dead-letter topic with class LATE.",
    )
    live_within_s: int = _setting(
        30,
        "A stream read to within this many seconds of the wall clock is live: timers "
        "(cart abandonment) then judge at the time read, within a second of their due "
        "time, instead of waiting out the allowed lateness (processing time: an event "
        "later than that no longer changes a cart judged meanwhile). Replays of older "
        "events are never live. 0: always wait (event time only).",
    )
    cart_abandon_after_s: int = _setting(
        1800,
        "A cart left this many seconds (event time) without a purchase or cart change "
        "is abandoned (the cart_abandoned trigger).",
    )
    state_ttl_s: int = _setting(
        30 * 24 * 3600,
        "Per-user and identity flow state is discarded after this many idle (wall-clock) "
        "seconds; the user's audience memberships go with it.",
    )
    segments_file: str = _setting(
        "", "YAML file of rule segments. Empty: the shipped defaults (flows/segments.yaml)."
    )
    cluster_k: int = _setting(6, "Number of behavioural personas (k-means clusters).")
    cluster_seed: int = _setting(42, "Seed of the persona clustering.")
    recs_k: int = _setting(
        10, "Recommendations written per user (the R fields of the hash attune:{u:<user>})."
    )
    recs_min_gap_s: int = _setting(
        30,
        "A user's list is ranked again at most every this many seconds of their event "
        "time (a cart change or purchase: at once); what changed meanwhile is ranked at "
        "their next batch after it, when they go idle (a minute, or before a batch a "
        "minute or more of event time later) or at the end of input. 0: at every batch "
        "with a product view, cart change or purchase.",
    )
    recs_allow_categories: str = _setting(
        "",
        "Comma-separated category paths recommendations may come from (a path keeps its "
        "subcategories: shoes keeps shoes/running). Empty: every category.",
    )
    recs_deny_categories: str = _setting(
        "", "Comma-separated category paths never recommended (subcategories included)."
    )
    models_publish_every: int = _setting(
        200,
        "The model learner publishes its snapshot after this many session summaries "
        "(and at the end of input).",
    )
    models_replay_publish_every: int = _setting(
        500,
        "In a replay (the stream clock not live: a bounded input, a catch-up) the model "
        "learner learns summaries in event-time order and publishes after the first "
        "ATTUNE_MODELS_PUBLISH_EVERY of that order, then after every this many, whatever the "
        "wall clock, so each version holds the same summaries in every run. Each "
        "publication costs O(items) and every process reads it.",
    )
    models_publish_s: int = _setting(
        10,
        "... and at the latest this many seconds after it learnt something new (a quiet "
        "stream still gets fresh models).",
    )
    models_publish_min_s: int = _setting(
        2,
        "... but not more often than every this many seconds (0: no limit). Workers read "
        "a new snapshot at most every 2 s, so a publication sooner than that is never "
        "read; the floor keeps the learner's publication cost flat as the rate grows.",
    )
    trigger_rules_file: str = _setting(
        "",
        "YAML file of trigger rules merged over the shipped ones (flows/rules.yaml): "
        "rules of the same name replace, new ones are added (docs/triggers.md).",
    )
    kafka_batch_size: int = _setting(1000, "Messages the Kafka source reads per poll.")
    kafka_tail: bool = _setting(
        True, "Keep waiting for new events at the end of the topic (false: stop there)."
    )
    input_file: str = _setting(
        "", "Avro event file to replay when no Kafka is configured. Empty: the generator."
    )
    generate_users: int = _setting(1000, "Embedded default: users the generator simulates.")
    generate_days: int = _setting(7, "Embedded default: days the generator simulates.")
    generate_seed: int = _setting(7, "Embedded default: generator seed.")
    partitions: int = _setting(3, "Partitions for topics created by `attune topics create`.")
    kafka_port: int = _setting(19092, "Port of the local Kafka broker (`attune local up`).")
    kafka_controller_port: int = _setting(19093, "Controller port of the local Kafka broker.")
    redis_port: int = _setting(16379, "Port of the local Redis server (`attune local up`).")
    state_dir: str = _setting(
        "", "Directory for local server data, jars cache and logs. Empty: ~/.cache/attune."
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from ``environ`` (default: ``os.environ``)."""
        env = os.environ if environ is None else environ
        warn_unknown(env)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(env_name(f.name))
            if raw is None:
                continue
            values[f.name] = _convert(f.name, f.default, raw)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied, skipping ``None`` (flags not given)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def topic_trigger(self, kind: str) -> str:
        """The trigger topic of one trigger kind."""
        return f"{self.topic_triggers_prefix}{kind}"

    def resolved_state_dir(self) -> Path:
        return Path(self.state_dir) if self.state_dir else default_state_dir()

    def masked(self) -> dict[str, Any]:
        """Every setting, with secrets replaced by ``'***'`` when set: safe to print or log.

        Passwords inside URLs are masked too:

        >>> Settings(redis_url="redis://app:s3cret@h:6379/0", redis_password="x").masked()[
        ...     "redis_url"]
        'redis://app:***@h:6379/0'
        """
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get(_SECRET_MARK) and value:
                value = "***"
            elif isinstance(value, str) and "://" in value:
                value = mask_url(value)
            out[f.name] = value
        return out

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.masked().items())
        return f"Settings({inner})"


def mask_url(url: str) -> str:
    """``url`` with the password of its user info replaced by ``***``.

    >>> mask_url("rediss://:pw@example:6380/1"), mask_url("redis://127.0.0.1:6379/0")
    ('rediss://:***@example:6380/1', 'redis://127.0.0.1:6379/0')
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def env_name(field_name: str) -> str:
    """The environment variable of a setting: ``redis_url`` -> ``ATTUNE_REDIS_URL``."""
    return f"ATTUNE_{field_name.upper()}"


def _convert(name: str, default: Any, raw: str) -> Any:
    if isinstance(default, bool):
        if raw.lower() in {"1", "true", "yes", "on"}:
            return True
        if raw.lower() in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"{env_name(name)}={raw!r} is not a boolean; use true or false")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{env_name(name)}={raw!r} is not an integer") from None
    return raw


def reference_markdown() -> str:
    """The configuration reference table that README.md embeds."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for f in fields(Settings):
        default = f.default if f.default != "" else "(empty)"
        rows.append(f"| `{env_name(f.name)}` | `{default}` | {f.metadata['doc']} |")
    return "\n".join(rows) + "\n"


_LOG = logging.getLogger(__name__)
#: Unknown ``ATTUNE_*`` names warned about in this process (each once).
_WARNED: set[str] = set()


def warn_unknown(env: Mapping[str, str]) -> list[str]:
    """Log a warning, once per process and name, for each ``ATTUNE_*`` variable that is not
    a setting (a misspelt ``ATTUNE_REDIS_URI`` would otherwise be ignored in silence),
    with the closest setting's name; returns the unknown names.

    >>> warn_unknown({"ATTUNE_REDIS_URI": "redis://x", "ATTUNE_REDIS_URL": "redis://y"})
    ['ATTUNE_REDIS_URI']
    """
    known = _known_names()
    unknown = sorted(k for k in env if k.startswith("ATTUNE_") and k not in known)
    for name in unknown:
        if name not in _WARNED:
            _WARNED.add(name)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            _LOG.warning("%s is not an Attune setting and is ignored%s", name, hint)
    return unknown


def _known_names() -> list[str]:
    return [env_name(f.name) for f in fields(Settings)]


def client_options(settings: Settings | None) -> dict[str, Any]:
    """kafka-python connection options (security) from ``settings``.

    >>> client_options(Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN",
    ...                         kafka_sasl_username="u", kafka_sasl_password="p"))["sasl_mechanism"]
    'PLAIN'
    >>> client_options(None)
    {}
    """
    if settings is None or settings.kafka_security_protocol == "PLAINTEXT":
        return {}
    protocol = settings.kafka_security_protocol
    if protocol not in SECURITY_PROTOCOLS:
        raise ValueError(
            f"ATTUNE_KAFKA_SECURITY_PROTOCOL={protocol!r}: use one of "
            + ", ".join(SECURITY_PROTOCOLS)
        )
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol.startswith("SASL_"):
        if settings.kafka_sasl_mechanism not in SASL_MECHANISMS:
            raise ValueError(
                f"{protocol} needs ATTUNE_KAFKA_SASL_MECHANISM set to one of "
                + ", ".join(SASL_MECHANISMS)
                + f" (got {settings.kafka_sasl_mechanism!r})"
            )
        if not settings.kafka_sasl_username or not settings.kafka_sasl_password:
            raise ValueError(
                f"{protocol} needs ATTUNE_KAFKA_SASL_USERNAME and ATTUNE_KAFKA_SASL_PASSWORD"
            )
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=settings.kafka_sasl_password,
        )
    if protocol.endswith("SSL"):
        if settings.kafka_ssl_cafile:
            options["ssl_cafile"] = settings.kafka_ssl_cafile
        if bool(settings.kafka_ssl_certfile) != bool(settings.kafka_ssl_keyfile):
            raise ValueError(
                "set both ATTUNE_KAFKA_SSL_CERTFILE and ATTUNE_KAFKA_SSL_KEYFILE, or neither"
            )
        if settings.kafka_ssl_certfile:
            options["ssl_certfile"] = settings.kafka_ssl_certfile
            options["ssl_keyfile"] = settings.kafka_ssl_keyfile
        if settings.kafka_ssl_key_password:
            options["ssl_password"] = settings.kafka_ssl_key_password
    return options
