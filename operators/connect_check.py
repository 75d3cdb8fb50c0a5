"""Start-up checks of the connections to Kafka and Redis: one line that names the cause.

A client given a wrong SASL password or a CA that did not sign the server's certificate
does not say so by itself: librdkafka logs a connection failure every few hundred
milliseconds and its metadata request ends, after its timeout, in "Broker transport
failure"; kafka-python retries for 30 s and ends in "Unable to bootstrap"; a Redis write
outside the ACL user's keys fails deep inside the flow's sink. The commands that connect
(``attune run``, ``attune generate --kafka``, ``attune erase``) and the subscriber client
call these checks first: each connects once, the way the real clients will, and turns the
first failure into a :class:`ConnectionCheckError` whose message is the one line an
operator needs: what failed, where, and which setting to fix.

- :func:`check_kafka`: a metadata request with librdkafka (the flow's client), its error
  callback watched, so that an authentication failure (``_AUTHENTICATION``) or a TLS
  failure (``_SSL``) ends the check at once instead of at the timeout; librdkafka's own
  log lines are dropped.
- :func:`check_redis`: ``PING``, then a write under the key prefix that changes nothing
  (``SET <prefix>connect-check:<random> "" XX``: only set if it exists, and it never
  does), so an ACL user that may not write the prefix is refused here, not mid-run.

The messages are built by pure functions (:func:`kafka_failure`, :func:`redis_failure`),
tested without servers; tests/integration/test_security.py runs the checks against a
broker with SASL_SSL/SCRAM and a Redis with TLS and an ACL user (docs/security.md).
"""

from __future__ import annotations

import logging
import re
import ssl
import time
import uuid
from typing import Any

import redis

from attune.operators.kafka_sink import librdkafka_security
from attune.operators.redis_sink import RedisConfig
from attune.operators.settings import Settings, client_options

#: How long :func:`check_kafka` waits for the broker's metadata.
KAFKA_CHECK_S = 10.0
#: How long :func:`check_redis` waits to connect and for each answer.
REDIS_CHECK_S = 10.0
#: One metadata attempt of :func:`check_kafka`; between attempts, the error callback runs.
_KAFKA_ATTEMPT_S = 0.5


class ConnectionCheckError(RuntimeError):
    """A server refused the connection or the credentials; the message says why and what to fix."""


def _short(reason: str) -> str:
    """librdkafka's error text without the broker's name in front and the timing behind.

    >>> _short("sasl_ssl://127.0.0.1:9093/bootstrap: SASL authentication error: Authentication"
    ...        " failed (after 350ms in state AUTH_REQ)")
    'SASL authentication error: Authentication failed'
    """
    reason = re.sub(r"^\w+://\S+?: ", "", reason.strip())
    return re.sub(r"\s*\(after \d+ms in state \w+\)(, \d+ identical error\(s\) suppressed)?$", "",
                  reason)  # fmt: skip


def kafka_failure(bootstrap: str, settings: Settings | None, name: str, reason: str) -> str | None:
    """The one line for a librdkafka error ``name`` (``KafkaError.name()``) seen while
    connecting to ``bootstrap``, or ``None`` when it does not settle the check (a broker
    that is down may come up within the timeout).

    >>> s = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
    ...              kafka_sasl_username="app", kafka_sasl_password="x", kafka_ssl_cafile="ca.pem")
    >>> print(kafka_failure("h:9093", s, "_AUTHENTICATION", "sasl_ssl://h:9093/bootstrap: "
    ...       "SASL authentication error: Authentication failed due to invalid credentials "
    ...       "with SASL mechanism SCRAM-SHA-512 (after 9ms in state AUTH_REQ)"))
    Kafka authentication failed at h:9093: the broker refused SASL SCRAM-SHA-512 user 'app' \
(SASL authentication error: Authentication failed due to invalid credentials with SASL \
mechanism SCRAM-SHA-512); check ATTUNE_KAFKA_SASL_USERNAME and ATTUNE_KAFKA_SASL_PASSWORD
    >>> print(kafka_failure("h:9093", s, "_SSL", "SSL handshake failed: error:0A000086:SSL "
    ...       "routines::certificate verify failed: broker certificate could not be verified"))
    Kafka TLS failed at h:9093: the broker's certificate is not signed by a CA in ca.pem \
(SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker \
certificate could not be verified); point ATTUNE_KAFKA_SSL_CAFILE at the CA that signed it
    >>> kafka_failure("h:9093", s, "_TRANSPORT", "Connection refused") is None
    True
    """
    reason = _short(reason)
    if name == "_AUTHENTICATION":
        mechanism = settings.kafka_sasl_mechanism if settings else ""
        user = settings.kafka_sasl_username if settings else ""
        return (
            f"Kafka authentication failed at {bootstrap}: the broker refused SASL {mechanism} "
            f"user {user!r} ({reason}); check ATTUNE_KAFKA_SASL_USERNAME and "
            "ATTUNE_KAFKA_SASL_PASSWORD"
        )
    if name == "_SSL":
        if "certificate verify failed" in reason:
            cafile = settings.kafka_ssl_cafile if settings and settings.kafka_ssl_cafile else ""
            where = f"a CA in {cafile}" if cafile else "a CA of the system's store"
            return (
                f"Kafka TLS failed at {bootstrap}: the broker's certificate is not signed by "
                f"{where} ({reason}); point ATTUNE_KAFKA_SSL_CAFILE at the CA that signed it"
            )
        return (
            f"Kafka TLS failed at {bootstrap} ({reason}); check that the listener speaks "
            "ATTUNE_KAFKA_SECURITY_PROTOCOL and the ATTUNE_KAFKA_SSL_* files"
        )
    return None


def check_kafka(
    bootstrap: str, settings: Settings | None = None, timeout_s: float = KAFKA_CHECK_S
) -> set[str]:
    """Raise :class:`ConnectionCheckError` unless the broker at ``bootstrap`` answers a
    metadata request with the security of ``settings``; an authentication or TLS
    failure ends the wait at once. Returns the names of the topics the broker has."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    quiet = logging.getLogger("attune.connect_check.librdkafka")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    failures: list[str] = []

    def on_error(err: Any) -> None:
        line = kafka_failure(bootstrap, settings, err.name(), err.str())
        if line is not None:
            failures.append(line)

    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        **librdkafka_security(client_options(settings)),
        "logger": quiet,
        "error_cb": on_error,
        "log.connection.close": False,
    }
    admin = AdminClient(config)
    deadline = time.monotonic() + timeout_s
    reason = "no answer"
    while True:
        try:
            meta = admin.list_topics(
                timeout=min(_KAFKA_ATTEMPT_S, max(deadline - time.monotonic(), 0.01))
            )
            return set(meta.topics)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else exc
            reason = err.str() if hasattr(err, "str") else str(err)
        admin.poll(0.05)  # runs error_cb
        if failures:
            raise ConnectionCheckError(failures[0])
        if time.monotonic() >= deadline:
            raise ConnectionCheckError(
                f"Kafka at {bootstrap} is not reachable ({reason}): start local servers with "
                "`attune local up`, or point --kafka / ATTUNE_KAFKA_BOOTSTRAP at a broker"
            )


def redis_failure(config: RedisConfig, exc: redis.RedisError) -> str:
    """The one line for ``exc``, raised while :func:`check_redis` connected to ``config``.

    >>> c = RedisConfig("rediss://127.0.0.1:6380/0", username="app", password="x",
    ...                 ssl_cafile="ca.pem")
    >>> print(redis_failure(c, redis.exceptions.AuthenticationError(
    ...     "invalid username-password pair or user is disabled.")))
    Redis authentication failed at rediss://127.0.0.1:6380/0: user 'app' was refused \
(invalid username-password pair or user is disabled.); check ATTUNE_REDIS_USERNAME and \
ATTUNE_REDIS_PASSWORD (or the URL's)
    >>> print(redis_failure(c, redis.exceptions.NoPermissionError(
    ...     "this user has no permissions to access one of the keys used as arguments")))
    Redis user 'app' at rediss://127.0.0.1:6380/0 may not write keys under the prefix \
'attune:' (this user has no permissions to access one of the keys used as arguments); \
set ATTUNE_REDIS_PREFIX to a prefix its ACL allows, or allow ~attune:* to the user
    """
    where = config.safe_url
    user = config.username or "default"
    if isinstance(exc, redis.exceptions.AuthenticationError):
        return (
            f"Redis authentication failed at {where}: user {user!r} was refused ({exc}); "
            "check ATTUNE_REDIS_USERNAME and ATTUNE_REDIS_PASSWORD (or the URL's)"
        )
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return (
            f"Redis user {user!r} at {where} may not write keys under the prefix "
            f"{config.prefix!r} ({exc}); set ATTUNE_REDIS_PREFIX to a prefix its ACL allows, "
            f"or allow ~{config.prefix}* to the user"
        )
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or isinstance(
        exc.__context__, ssl.SSLCertVerificationError
    ):
        ca = f"a CA in {config.ssl_cafile}" if config.ssl_cafile else "a CA of the system's store"
        return (
            f"Redis TLS failed at {where}: the server's certificate is not signed by {ca} "
            f"({text}); point ATTUNE_REDIS_SSL_CAFILE at the CA that signed it"
        )
    return (
        f"Redis at {where} is not reachable ({text}): start local servers with `attune local "
        "up`, or point --redis / ATTUNE_REDIS_URL at a Redis server (rediss:// for TLS)"
    )


def check_redis(settings: Settings, timeout_s: float = REDIS_CHECK_S) -> None:
    """Raise :class:`ConnectionCheckError` unless Redis at ``settings.redis_url`` accepts
    the credentials, answers ``PING`` and lets the user write under ``settings.redis_prefix``
    (a ``SET ... XX`` of a key that does not exist: nothing is written)."""
    config = RedisConfig.from_settings(settings)
    options = config.client_options() | {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry_on_timeout": False,
    }
    client = redis.Redis.from_url(config.url, **options)
    try:
        client.ping()
        client.set(f"{config.prefix}connect-check:{uuid.uuid4().hex}", b"", xx=True)
    except redis.RedisError as exc:
        raise ConnectionCheckError(redis_failure(config, exc)) from None
    finally:
        client.close()
