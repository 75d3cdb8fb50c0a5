"""Real Kafka and Redis servers on loopback for tests and demos, without Docker.

``attune local up|down|status`` and the pytest session fixtures start the
same servers as a person running ``deploy/local/kafka.sh`` and
``deploy/local/redis.sh`` by hand: a Kafka 4.1.0 broker in KRaft mode (Java 17,
jars fetched once with Maven) and Debian's ``redis-server`` without
persistence. The scripts hold the one implementation (tool checks, start-up,
readiness, pid files, stopping); this module passes them the ports and state
directory from :class:`~attune.flows.settings.Settings` and turns their failures into
:class:`LocalServerError`, whose message says what is missing or why a server
did not come up, with the tail of its log.

The servers are a place for the flow's Kafka sources and sinks and Redis sink
to connect to; nothing in the dataflow depends on this module.

>>> servers = addresses(Settings(kafka_port=29092, redis_port=26379))
>>> servers.kafka_bootstrap, servers.redis_url
('127.0.0.1:29092', 'redis://127.0.0.1:26379/0')
>>> servers.apply(Settings()).kafka_bootstrap
'127.0.0.1:29092'

:func:`secure_up` starts the same two servers in their secure mode
(``deploy/local/secure.sh``): Kafka with only a SASL_SSL listener (SCRAM-SHA-512) and
Redis with only TLS and one ACL user limited to the key prefix, with throwaway
certificates and random passwords; :class:`SecureServers` holds the client settings the
script wrote (docs/security.md).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from attune.flows.settings import Settings

log = logging.getLogger(__name__)

DEPLOY_DIR = Path(__file__).resolve().parents[1] / "deploy" / "local"
KAFKA_SCRIPT = DEPLOY_DIR / "kafka.sh"
REDIS_SCRIPT = DEPLOY_DIR / "redis.sh"
SECURE_SCRIPT = DEPLOY_DIR / "secure.sh"

#: Outer bounds on one script run; the scripts bound their own waits (Kafka
#: 60 s to be ready, 30 s to stop) and these only catch a hung script. ``up``
#: may include the one-time Maven fetch of the Kafka jars.
UP_TIMEOUT_S = 600.0
DOWN_TIMEOUT_S = 120.0
STATUS_TIMEOUT_S = 30.0

SERVERS = ("kafka", "redis")


class LocalServerError(RuntimeError):
    """A local server could not be checked, started or stopped; the message says why."""


@dataclass(frozen=True, slots=True)
class LocalServers:
    """Where the local servers listen."""

    kafka_bootstrap: str
    redis_url: str

    def apply(self, settings: Settings) -> Settings:
        """``settings`` pointed at these servers."""
        return settings.replace(kafka_bootstrap=self.kafka_bootstrap, redis_url=self.redis_url)


def addresses(settings: Settings) -> LocalServers:
    """Where the servers of ``settings`` listen (running or not)."""
    return LocalServers(
        kafka_bootstrap=f"127.0.0.1:{settings.kafka_port}",
        redis_url=f"redis://127.0.0.1:{settings.redis_port}/0",
    )


@dataclass(frozen=True, slots=True)
class SecureServers:
    """The secure servers' client settings: the ``ATTUNE_*`` variables of the env file
    ``deploy/local/secure.sh`` wrote (bootstrap, SASL user and password, CA file, the
    rediss:// URL, Redis user and password...)."""

    env_file: Path
    env: dict[str, str]

    def apply(self, settings: Settings) -> Settings:
        """``settings`` pointed at these servers, with their credentials and CA."""
        client = Settings.from_env(self.env)
        names = [name.removeprefix("ATTUNE_").lower() for name in self.env]
        return settings.replace(**{name: getattr(client, name) for name in names})


def read_env_file(path: Path) -> dict[str, str]:
    r"""The ``[export ]NAME=VALUE`` lines of a shell env file (comments and blanks skipped;
    values unquoted, as secure.sh writes them).

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".env", delete=False) as f:
    ...     _ = f.write("# made by secure.sh\nexport ATTUNE_REDIS_USERNAME=attune\nA=b=c\n")
    >>> read_env_file(Path(f.name))
    {'ATTUNE_REDIS_USERNAME': 'attune', 'A': 'b=c'}
    """
    out = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        if not sep:
            raise LocalServerError(f"{path}: not a NAME=VALUE line: {line!r}")
        out[name.strip()] = value
    return out


def secure_up(settings: Settings, *, cache_dir: Path | None = None) -> SecureServers:
    """Start Kafka (SASL_SSL, SCRAM-SHA-512) and Redis (TLS, ACL user) on the ports of
    ``settings``, making certificates and passwords the first time; the client settings.

    The Redis user may use the keys under ``settings.redis_prefix`` only. Raises
    :class:`LocalServerError` with the reason and the servers' log tails.
    """
    check(settings, cache_dir=cache_dir)
    _checked(SECURE_SCRIPT, ["up", *_cache_args(cache_dir)], settings, timeout_s=UP_TIMEOUT_S)
    env_file = secure_env_file(settings)
    return SecureServers(env_file, read_env_file(env_file))


def secure_down(settings: Settings) -> None:
    """Stop the secure servers; delete Kafka's data, the certificates and the passwords."""
    _checked(SECURE_SCRIPT, ["down"], settings, timeout_s=DOWN_TIMEOUT_S)


def secure_env_file(settings: Settings) -> Path:
    """Where ``secure.sh`` writes the client settings of the servers of ``settings``."""
    state = settings.resolved_state_dir().absolute()
    return state / f"secure-{settings.kafka_port}" / "client.env"


def check(settings: Settings, *, cache_dir: Path | None = None) -> None:
    """Raise :class:`LocalServerError` naming every missing tool and how to install it.

    ``mvn`` counts only while the Kafka jars are not cached yet.
    """
    problems = []
    for script, args in (
        (KAFKA_SCRIPT, ["check", *_cache_args(cache_dir)]),
        (REDIS_SCRIPT, ["check"]),
    ):
        result = _run(script, args, settings, timeout_s=STATUS_TIMEOUT_S)
        if result.returncode != 0:
            problems.append(result.stdout.strip())
    if problems:
        raise LocalServerError("\n".join(problems))


def up(settings: Settings, *, cache_dir: Path | None = None) -> LocalServers:
    """Start Redis and Kafka (or find them running) and wait until both answer.

    ``cache_dir`` is the state directory that holds (or will hold) the Kafka
    jars, by default ``settings.resolved_state_dir()``; tests point it at the
    default one so that their own state directory does not fetch the jars again.
    Raises :class:`LocalServerError` with the reason and the server's log tail.
    """
    check(settings, cache_dir=cache_dir)
    _checked(REDIS_SCRIPT, ["up"], settings, timeout_s=UP_TIMEOUT_S)
    _checked(KAFKA_SCRIPT, ["up", *_cache_args(cache_dir)], settings, timeout_s=UP_TIMEOUT_S)
    return addresses(settings)


def down(settings: Settings, *, keep_data: bool = False) -> None:
    """Stop Kafka and Redis; delete Kafka's topics and offsets unless ``keep_data``.

    Stopping what is not running succeeds. Both are attempted even if one fails.
    """
    errors = []
    for script, args in (
        (KAFKA_SCRIPT, ["down", *(["--keep"] if keep_data else [])]),
        (REDIS_SCRIPT, ["down"]),
    ):
        try:
            _checked(script, args, settings, timeout_s=DOWN_TIMEOUT_S)
        except LocalServerError as exc:
            errors.append(str(exc))
    if errors:
        raise LocalServerError("\n".join(errors))


def status(settings: Settings) -> dict[str, str]:
    """One line per server, first word ``up``, ``starting`` or ``down``.

    For example ``{"kafka": "up bootstrap=127.0.0.1:19092 pid=4242 log=...",
    "redis": "down url=redis://127.0.0.1:16379/0 log=..."}``.
    """
    out = {}
    for name, script in zip(SERVERS, (KAFKA_SCRIPT, REDIS_SCRIPT), strict=True):
        # not logged: the caller prints these lines (`attune local status` showed each twice)
        result = _run(script, ["status"], settings, timeout_s=STATUS_TIMEOUT_S, echo=False)
        line = result.stdout.strip()
        if result.returncode not in (0, 3) or not line:
            raise LocalServerError(
                f"{script.name} status failed (exit {result.returncode}): {line}"
            )
        out[name] = line
    return out


def _cache_args(cache_dir: Path | None) -> list[str]:
    return [] if cache_dir is None else ["--cache-dir", str(Path(cache_dir).absolute())]


def _script_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ATTUNE_STATE_DIR=str(settings.resolved_state_dir().absolute()),
        ATTUNE_KAFKA_PORT=str(settings.kafka_port),
        ATTUNE_KAFKA_CONTROLLER_PORT=str(settings.kafka_controller_port),
        ATTUNE_REDIS_PORT=str(settings.redis_port),
        ATTUNE_PARTITIONS=str(settings.partitions),
        ATTUNE_REDIS_PREFIX=settings.redis_prefix,
    )
    return env


def _run(
    script: Path, args: list[str], settings: Settings, *, timeout_s: float, echo: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run one script; stdout and stderr together, as a person would read them (logged
    line by line at INFO when ``echo``)."""
    if not script.is_file():
        raise LocalServerError(
            f"{script} not found: the local servers need the deploy/ folder of a source "
            "checkout of Attune (git clone, then pip install -e .)"
        )
    bash = shutil.which("bash") or "/bin/bash"
    if not Path(bash).is_file():
        raise LocalServerError("bash not found on PATH; install it with apt-get install bash")
    try:
        result = subprocess.run(
            [bash, str(script), *args],
            env=_script_env(settings),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise LocalServerError(
            f"{script.name} {' '.join(args)} did not finish within {timeout_s:.0f}s:\n{output}"
        ) from None
    if echo:
        for line in result.stdout.splitlines():
            log.info("%s", line)
    return result


def _checked(script: Path, args: list[str], settings: Settings, *, timeout_s: float) -> None:
    result = _run(script, args, settings, timeout_s=timeout_s)
    if result.returncode != 0:
        raise LocalServerError(
            f"{script.name} {' '.join(args)} failed (exit {result.returncode}):\n"
            f"{result.stdout.rstrip()}"
        )
