"""``attune run``: run the personalization dataflow with flags, a live summary and a report.

With Kafka and Redis configured (flags or ``ATTUNE_*``) it runs the production
flow; with neither it is the embedded default: generated events (or
``--input FILE``) in, results kept in process, a summary on screen and a JSON
report. The same flow runs under ``python -m bytewax.run
attune.flows.personalize:flow`` for clusters (``-w``, ``-i``/``-a``); see
docs/architecture.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

from bytewax.recovery import RecoveryConfig
from bytewax.run import cli_main
from prometheus_client import start_http_server

from attune.flows import tune_gc
from attune.flows.embedded import LocalStore, render, write_report
from attune.flows.personalize import FLOW_ID, build_flow, default_sinks
from attune.flows.settings import Settings
from attune.operators import connect_check
from attune.operators.consent import withheld_total
from attune.operators.sources import progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("input (default: Kafka if configured, else the generator)")
    src.add_argument(
        "--input",
        help="replay an Avro event file (e.g. from attune generate; ATTUNE_INPUT_FILE); "
        "not with --kafka",
    )
    src.add_argument("--users", type=int, help="generator: users (default 1000)")
    src.add_argument("--days", type=int, help="generator: days (default 7)")
    src.add_argument("--seed", type=int, help="generator: seed (default 7)")
    srv = parser.add_argument_group("servers (both or neither)")
    srv.add_argument("--kafka", help="Kafka bootstrap servers (ATTUNE_KAFKA_BOOTSTRAP)")
    srv.add_argument("--redis", help="Redis URL (ATTUNE_REDIS_URL)")
    srv.add_argument(
        "--until-end", action="store_true", help="stop at the end of the topic instead of tailing"
    )
    run = parser.add_argument_group("execution")
    run.add_argument("-w", "--workers", type=int, default=1, help="worker threads (default 1)")
    run.add_argument("--recovery-dir", help="Bytewax recovery store (made if missing)")
    run.add_argument(
        "--snapshot-interval", type=float, default=10.0, help="seconds between snapshots"
    )
    run.add_argument(
        "--segments", help="YAML rule segments file (ATTUNE_SEGMENTS_FILE; default: shipped rules)"
    )
    run.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    run.add_argument(
        "--report", default="out/report.json", help="embedded default: JSON report path"
    )
    run.add_argument("--every", type=float, default=2.0, help="seconds between live summary lines")


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings.from_env().replace(
        input_file=args.input,
        generate_users=args.users,
        generate_days=args.days,
        generate_seed=args.seed,
        kafka_bootstrap=args.kafka,
        redis_url=args.redis,
        kafka_tail=False if args.until_end else None,
        segments_file=args.segments,
    )


def _live(stop: threading.Event, every: float, started: float) -> None:
    last = 0.0
    while not stop.wait(every):
        read, dead = progress()
        now = time.perf_counter()
        rate = (read - last) / every
        last = read
        print(
            f"[{now - started:7.1f}s] read {int(read):>9,}  dead letters {int(dead):>6,}  "
            f"withheld {withheld_total():>7,}  {rate:>9,.0f} events/s",
            file=sys.stderr,
        )


#: How long the pre-flight check waits for the broker's metadata.
KAFKA_CHECK_S = 10.0


def check_kafka(settings: Settings, timeout_s: float | None = None) -> None:
    """Fail fast with one line when the broker does not answer or refuses the credentials
    or the TLS handshake (:func:`attune.operators.connect_check.check_kafka`).

    Without it, the first to notice is the source's metadata request deep inside
    Bytewax's start-up: ~30 s of librdkafka connection errors on stderr, then a Python
    traceback ending in ``KafkaException ... Failed to get metadata``.
    """
    topics = connect_check.check_kafka(
        settings.kafka_bootstrap, settings, KAFKA_CHECK_S if timeout_s is None else timeout_s
    )
    check_topics(settings, topics)


def check_topics(settings: Settings, existing: set[str]) -> None:
    """The events topic and every topic the flow writes must exist (the broker does not
    create them on first use: deploy/local/kafka.sh). The items topic may be missing (no
    catalogue yet).

    >>> from attune.flows.topics import design_topics
    >>> s = Settings(kafka_bootstrap="k:1")
    >>> check_topics(s, set(design_topics(s)) - {"attune.items"})
    >>> check_topics(s, set(design_topics(s)) - {"attune.dlq"})
    Traceback (most recent call last):
    ...
    RuntimeError: Kafka topics the flow writes do not exist at k:1: attune.dlq; create them \
with `attune topics create` (or set the ATTUNE_TOPIC_* settings to topics that exist)
    """
    from attune.flows.topics import design_topics

    needed = [t for t in design_topics(settings) if t != settings.topic_items]
    missing = [t for t in needed if t not in existing]
    if not missing:
        return
    where = f"at {settings.kafka_bootstrap}"
    if settings.topic_events in missing:
        others = [t for t in missing if t != settings.topic_events]
        more = (
            f" (nor {len(others)} more the flow writes: {', '.join(others[:2])}"
            f"{', ...' if len(others) > 2 else ''})"
            if others
            else ""
        )
        raise RuntimeError(
            f"Kafka topic {settings.topic_events!r} does not exist {where}{more}: create the "
            "design topics with `attune topics create`, or set ATTUNE_TOPIC_EVENTS to the "
            "topic of your events"
        )
    raise RuntimeError(
        f"Kafka topics the flow writes do not exist {where}: {', '.join(missing)}; create "
        "them with `attune topics create` (or set the ATTUNE_TOPIC_* settings to topics "
        "that exist)"
    )


#: How long the pre-flight checks wait for Redis and the schema registry.
SERVER_CHECK_S = 5.0


def check_redis(settings: Settings, timeout_s: float | None = None) -> None:
    """Fail fast with one line when Redis refuses the login or the TLS handshake, does not
    answer a PING, or does not let the user write under the prefix (once, no retries: at
    start-up a silent Redis is a configuration error, not an outage to wait out;
    :func:`attune.operators.connect_check.check_redis`)."""
    connect_check.check_redis(settings, SERVER_CHECK_S if timeout_s is None else timeout_s)


def check_registry(settings: Settings, timeout_s: float | None = None) -> None:
    """Fail fast with one line when ``ATTUNE_SCHEMA_REGISTRY_URL`` is set but does not
    answer as a Confluent schema registry (``GET /subjects`` returns a JSON list).
    Without the check, the first message encoded or decoded would stop the flow."""
    url = settings.schema_registry_url.rstrip("/")
    if not url:
        return
    advice = (
        "point ATTUNE_SCHEMA_REGISTRY_URL at the registry (e.g. http://host:8081), or unset "
        "it to use Avro single-object encoding"
    )
    wait = SERVER_CHECK_S if timeout_s is None else timeout_s
    try:
        with urllib.request.urlopen(url + "/subjects", timeout=wait) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise RuntimeError(
                f"schema registry at {url} refused GET /subjects (HTTP {exc.code}): it wants "
                "credentials, which Attune's registry client does not send; allow anonymous "
                "reads and registration for Attune's subjects, or unset "
                "ATTUNE_SCHEMA_REGISTRY_URL to use Avro single-object encoding"
            ) from None
        raise RuntimeError(
            f"schema registry at {url} answered HTTP {exc.code} to GET /subjects: it is not a "
            f"Confluent schema registry; {advice}"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise RuntimeError(
            f"schema registry at {url} is not reachable ({reason}); {advice}"
        ) from None
    if not isinstance(answer, list):
        raise RuntimeError(
            f"schema registry at {url} did not answer GET /subjects with a list: it is not a "
            f"Confluent schema registry; {advice}"
        )


def check_input(settings: Settings) -> None:
    """The replay file exists, is a file, can be read and is an Avro object container
    (records inside it that cannot be decoded are dead letters; a file that is no
    container at all is the wrong file)."""
    if not settings.input_file or settings.kafka_bootstrap:
        return
    path = Path(settings.input_file)
    advice = (
        "give an Avro event file (`attune generate --out FILE` or `attune import` writes "
        "one) with --input / ATTUNE_INPUT_FILE"
    )
    if not path.exists():
        raise FileNotFoundError(f"input file {path} does not exist: {advice}")
    if path.is_dir():
        raise IsADirectoryError(f"input file {path} is a directory: {advice}")
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise OSError(
            f"input file {path} cannot be read ({exc.strerror or exc}): check its permissions; "
            f"{advice}"
        ) from None
    if head != b"Obj\x01":
        raise ValueError(
            f"input file {path} is not an Avro object container file (it starts with "
            f"{head!r}, not b'Obj\\x01'): {advice}"
        )


#: Written next to Bytewax's recovery partitions: which flow the store belongs to.
RECOVERY_MARKER = "attune-recovery.json"


def recovery_identity(settings: Settings, flow_id: str) -> dict[str, str]:
    """What a recovery store belongs to: the flow, its input and the Redis prefix it
    writes. Resuming another input's offsets or state would skip or repeat events, so a
    store is only reused with the same identity.

    >>> recovery_identity(Settings(kafka_bootstrap="k:1", topic_events="shop.events"), "f")
    {'flow': 'f', 'input': 'kafka topic shop.events', 'redis_prefix': 'attune:'}
    """
    if settings.kafka_bootstrap:
        source = f"kafka topic {settings.topic_events}"
    elif settings.input_file:
        source = f"file {Path(settings.input_file).resolve()}"
    else:
        source = (
            f"generator users={settings.generate_users} days={settings.generate_days} "
            f"seed={settings.generate_seed}"
        )
    return {"flow": flow_id, "input": source, "redis_prefix": settings.redis_prefix}


def recovery_store(directory: Path, identity: dict[str, str]) -> RecoveryConfig:
    """The recovery config of ``directory``: made (one partition) and marked
    (:data:`RECOVERY_MARKER`) if new; refused in one line if it belongs to another flow.

    A store without a marker (made by ``python -m bytewax.recovery``, or used by
    ``python -m bytewax.run -r``) is adopted when its snapshots are this flow's steps.
    """
    from bytewax.recovery import init_db_dir

    advice = f"give this flow a recovery directory of its own, or delete {directory} to start over"
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"recovery directory {directory} is a file: {advice}")
    marker = directory / RECOVERY_MARKER
    parts = sorted(directory.glob("part-*.sqlite3")) if directory.exists() else []
    if marker.exists():
        try:
            theirs = json.loads(marker.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"recovery marker {marker} is unreadable ({exc}): {advice}") from None
        different = {k: v for k, v in identity.items() if theirs.get(k) != v}
        if different:
            what = "; ".join(
                f"{k} {theirs.get(k)!r}, this run's {v!r}" for k, v in different.items()
            )
            raise ValueError(
                f"recovery directory {directory} belongs to another flow ({what}): {advice}"
            )
    elif parts:
        steps = _snapshot_steps(parts)
        flows = sorted({step.split(".", 1)[0] for step in steps} - {identity["flow"]})
        if flows:
            raise ValueError(
                f"recovery directory {directory} belongs to another flow (it holds snapshots "
                f"of the dataflow {', '.join(map(repr, flows))}, not of "
                f"{identity['flow']!r}): {advice}"
            )
    elif directory.exists() and any(directory.iterdir()):
        raise ValueError(
            f"recovery directory {directory} holds other files and no Bytewax recovery "
            "partitions (part-*.sqlite3): give this flow an empty or new directory"
        )
    if not parts:
        directory.mkdir(parents=True, exist_ok=True)
        init_db_dir(directory, 1)
    if not marker.exists():
        marker.write_text(json.dumps(identity, indent=2) + "\n")
    return RecoveryConfig(directory)


def _snapshot_steps(parts: list[Path]) -> set[str]:
    """The step ids with snapshots in Bytewax's recovery partitions (SQLite, read only)."""
    steps: set[str] = set()
    for part in parts:
        try:
            with contextlib.closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True)) as db:
                steps.update(row[0] for row in db.execute("SELECT DISTINCT step_id FROM snaps"))
        except sqlite3.Error as exc:
            raise ValueError(
                f"recovery partition {part} is not a Bytewax recovery store ({exc}): give this "
                "flow a recovery directory of its own"
            ) from None
    return steps


def check_servers(settings: Settings) -> None:
    """Refuse, in one line, what the flow would not do as asked: half a server
    configuration, or an input file next to Kafka (the flow reads the topic: a file was
    ignored in silence, issue 16, finding 5)."""
    if bool(settings.kafka_bootstrap) != bool(settings.redis_url):
        raise ValueError(
            "set both ATTUNE_KAFKA_BOOTSTRAP and ATTUNE_REDIS_URL (the flow reads Kafka and "
            "writes Redis), or neither for the embedded default"
        )
    if settings.input_file and settings.kafka_bootstrap:
        raise ValueError(
            f"input file {settings.input_file}: a file is replayed without servers, but Kafka "
            "is configured (the flow would read the events topic and ignore the file); give "
            "either ATTUNE_INPUT_FILE, or ATTUNE_KAFKA_BOOTSTRAP and ATTUNE_REDIS_URL"
        )


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    check_servers(settings)  # half a configuration, or a file next to Kafka
    embedded = not settings.kafka_bootstrap and not settings.redis_url
    check_input(settings)
    if not embedded:  # each server checked once, in one line, before the flow starts
        check_registry(settings)
        check_kafka(settings)
        check_redis(settings)
    recovery = None
    if args.recovery_dir:
        recovery = recovery_store(Path(args.recovery_dir), recovery_identity(settings, FLOW_ID))
    store = LocalStore() if embedded else None
    flow = build_flow(settings, sinks=default_sinks(settings, store))
    tune_gc()
    if args.metrics_port:
        start_http_server(args.metrics_port)
    what = "embedded default" if embedded else f"Kafka {settings.kafka_bootstrap} -> Redis"
    source = settings.input_file or (
        f"generator ({settings.generate_users} users, {settings.generate_days} days, "
        f"seed {settings.generate_seed})"
        if embedded
        else settings.topic_events
    )
    print(f"attune run: {what}; input {source}; {args.workers} worker(s)", file=sys.stderr)
    stop = threading.Event()
    started = time.perf_counter()
    ticker = threading.Thread(target=_live, args=(stop, args.every, started), daemon=True)
    ticker.start()
    try:
        cli_main(
            flow,
            workers_per_process=args.workers,
            epoch_interval=timedelta(seconds=args.snapshot_interval),
            recovery_config=recovery,
        )
    finally:
        stop.set()
    elapsed = time.perf_counter() - started
    if store is not None:
        report = store.report(elapsed)
        print(render(report))
        write_report(report, Path(args.report))
        print(f"report written to {args.report}", file=sys.stderr)
    return 0
