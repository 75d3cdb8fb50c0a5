"""The start-up connection checks without servers: the one line each failure becomes
(tests/integration/test_security.py runs them against servers that enforce TLS, SASL and
ACLs)."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest
import redis

from attune.flows.local import LocalServerError, read_env_file, secure_env_file
from attune.operators.connect_check import (
    ConnectionCheckError,
    check_kafka,
    check_redis,
    kafka_failure,
    redis_failure,
)
from attune.operators.redis_sink import RedisConfig
from attune.operators.settings import Settings

SASL = Settings(
    kafka_security_protocol="SASL_SSL",
    kafka_sasl_mechanism="SCRAM-SHA-512",
    kafka_sasl_username="app",
    kafka_sasl_password="pw",
)


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_tls_failure_other_than_verification_names_the_protocol_setting() -> None:
    line = kafka_failure("h:1", SASL, "_SSL", "sasl_ssl://h:1/bootstrap: SSL handshake failed: "
                         "wrong version number (after 2ms in state SSL_HANDSHAKE)")  # fmt: skip
    assert line == (
        "Kafka TLS failed at h:1 (SSL handshake failed: wrong version number); check that the "
        "listener speaks ATTUNE_KAFKA_SECURITY_PROTOCOL and the ATTUNE_KAFKA_SSL_* files"
    )


def test_without_a_ca_file_the_system_store_is_named() -> None:
    line = kafka_failure("h:1", SASL, "_SSL", "certificate verify failed")
    assert line is not None and "not signed by a CA of the system's store" in line


@pytest.mark.parametrize("name", ["_TRANSPORT", "_ALL_BROKERS_DOWN", "_RESOLVE", "_TIMED_OUT"])
def test_errors_a_broker_may_recover_from_do_not_end_the_check(name: str) -> None:
    assert kafka_failure("h:1", SASL, name, "Connection refused") is None


def test_an_unreachable_broker_ends_at_the_timeout_with_one_line() -> None:
    port = unused_port()
    started = time.monotonic()
    with pytest.raises(ConnectionCheckError) as raised:
        check_kafka(f"127.0.0.1:{port}", None, timeout_s=1.0)
    assert 1.0 <= time.monotonic() - started < 5
    message = str(raised.value)
    assert message.startswith(f"Kafka at 127.0.0.1:{port} is not reachable (")
    assert "\n" not in message


def test_an_untrusted_redis_certificate_is_named_from_the_ssl_error() -> None:
    config = RedisConfig("rediss://127.0.0.1:6380/0", ssl_cafile="/etc/other-ca.pem")
    try:
        raise ssl.SSLCertVerificationError("certificate verify failed")
    except ssl.SSLError:
        try:
            raise redis.ConnectionError("Error 1 connecting to 127.0.0.1:6380.")
        except redis.ConnectionError as exc:
            line = redis_failure(config, exc)
    assert line.startswith(
        "Redis TLS failed at rediss://127.0.0.1:6380/0: the server's certificate is not "
        "signed by a CA in /etc/other-ca.pem ("
    )


def test_an_unreachable_redis_is_one_line_with_its_url_and_no_password() -> None:
    port = unused_port()
    settings = Settings(redis_url=f"redis://:secret@127.0.0.1:{port}/0")
    with pytest.raises(ConnectionCheckError) as raised:
        check_redis(settings, timeout_s=1.0)
    message = str(raised.value)
    assert message.startswith(f"Redis at redis://:***@127.0.0.1:{port}/0 is not reachable (")
    assert "secret" not in message and "\n" not in message


def test_the_env_file_is_read_and_a_bad_line_refused(tmp_path: Path) -> None:
    good = tmp_path / "client.env"
    good.write_text(
        "# c\n\nexport ATTUNE_KAFKA_SASL_USERNAME=attune\nATTUNE_REDIS_URL=rediss://h/0\n"
    )
    assert read_env_file(good) == {
        "ATTUNE_KAFKA_SASL_USERNAME": "attune",
        "ATTUNE_REDIS_URL": "rediss://h/0",
    }
    bad = tmp_path / "bad.env"
    bad.write_text("export ATTUNE_REDIS_URL\n")
    with pytest.raises(LocalServerError, match="not a NAME=VALUE line"):
        read_env_file(bad)


def test_the_env_file_lives_under_the_state_dir_by_kafka_port(tmp_path: Path) -> None:
    settings = Settings(state_dir=str(tmp_path), kafka_port=29094)
    assert secure_env_file(settings) == tmp_path / "secure-29094" / "client.env"
