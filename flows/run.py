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
import sys
import threading
import time
from pathlib import Path

from bytewax.recovery import RecoveryConfig
from bytewax.run import cli_main
from prometheus_client import start_http_server

from attune.flows import tune_gc
from attune.flows.embedded import LocalStore, render, write_report
from attune.flows.personalize import build_flow, default_sinks
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
    run.add_argument("--segments", help="YAML rule segments file (default: shipped rules)")
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
    connect_check.check_kafka(
        settings.kafka_bootstrap, settings, KAFKA_CHECK_S if timeout_s is None else timeout_s
    )


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
    check_servers(settings)
    embedded = not settings.kafka_bootstrap and not settings.redis_url
    if settings.kafka_bootstrap and settings.redis_url and not settings.input_file:
        check_kafka(settings)  # half a configuration is refused by build_flow, first
        connect_check.check_redis(settings)
    store = LocalStore() if embedded else None
    flow = build_flow(settings, sinks=default_sinks(settings, store))
    tune_gc()
    recovery = None
    if args.recovery_dir:
        from bytewax.recovery import init_db_dir

        db = Path(args.recovery_dir)
        if not db.exists():
            db.mkdir(parents=True)
            init_db_dir(db, 1)
        recovery = RecoveryConfig(db)
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
            epoch_interval=None,
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
