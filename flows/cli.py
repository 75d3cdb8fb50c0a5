"""The ``attune`` command: one entry point, a subcommand per job.

``attune generate`` writes synthetic events; ``attune import`` converts public
interaction logs (CSV) into an event file; ``attune local up|down|status``
runs a real Kafka broker and Redis on loopback; ``attune topics create``
creates the design topics; ``attune inspect`` summarises an event file;
``attune evaluate`` replays an event file to measure the recommendation and
propensity models; ``attune config`` prints the settings (secrets masked) or
their reference; ``attune erase USER`` removes a user's data from Redis
(docs/privacy.md); ``attune redis-upgrade`` brings Redis written by an earlier Attune to
the current layout (docs/redis.md).
Settings come from ``ATTUNE_*`` variables (:mod:`attune.flows.settings`); flags
override them.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import logging
import os
import re
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence

import orjson
import redis
from confluent_kafka import KafkaException
from kafka.errors import KafkaError

from attune.flows.settings import Settings, reference_markdown


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env().replace(
        kafka_bootstrap=getattr(args, "bootstrap", None),
        partitions=getattr(args, "partitions", None),
    )


def _cmd_generate(args: argparse.Namespace) -> int:
    from attune.flows import generate

    return generate.run(args)


def _cmd_import(args: argparse.Namespace) -> int:
    from attune.flows import importer

    return importer.run(args)


def _cmd_local(args: argparse.Namespace) -> int:
    from attune.flows import local

    settings = Settings.from_env()
    if args.action == "up":
        servers = local.up(settings)
        print(f"kafka  {servers.kafka_bootstrap}\nredis  {servers.redis_url}")
        print(
            f"export ATTUNE_KAFKA_BOOTSTRAP={servers.kafka_bootstrap} "
            f"ATTUNE_REDIS_URL={servers.redis_url}"
        )
    elif args.action == "down":
        local.down(settings, keep_data=args.keep)
    else:
        lines = local.status(settings)
        for name, line in lines.items():
            print(f"{name:<6} {line}")
        return 0 if all(line.startswith("up") for line in lines.values()) else 3
    return 0


def _cmd_topics(args: argparse.Namespace) -> int:
    from attune.flows import local, topics

    settings = _settings(args)
    bootstrap = settings.kafka_bootstrap or local.addresses(settings).kafka_bootstrap
    if args.action == "create":
        created = topics.create_topics(bootstrap, settings, partitions=args.partitions)
        for name in topics.design_topics(settings):
            print(f"{name:<32} {'created' if name in created else 'exists'}")
    elif args.action == "delete":  # one line per topic, as create prints
        deleted = topics.delete_topics(bootstrap, topics.design_topics(settings), settings=settings)
        for name in topics.design_topics(settings):
            print(f"{name:<32} {'deleted' if name in deleted else 'absent'}")
    else:
        for name in topics.list_topics(bootstrap, settings=settings):
            print(name)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from attune.flows.inspect import inspect_file

    for path in args.files:
        print(inspect_file(path))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from attune.flows import run

    return run.run(args)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from attune.flows import evaluate

    return evaluate.run(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.bench == "throughput":
        from attune.bench import throughput

        return throughput.run(args)
    if args.bench == "latency":
        from attune.bench import latency

        return latency.run(args)
    if args.bench == "decode":
        from attune.bench import decode

        return decode.run(args)
    raise ValueError(f"unknown benchmark {args.bench!r}")


def _cmd_erase(args: argparse.Namespace) -> int:
    from attune.flows import erase

    return erase.run(args)


def _cmd_redis_upgrade(args: argparse.Namespace) -> int:
    import redis

    from attune.operators.redis_sink import RedisConfig, upgrade_layout

    settings = Settings.from_env().replace(redis_url=args.redis)
    config = RedisConfig.from_settings(settings)
    client = config.client()
    try:
        report = upgrade_layout(client, config.keys(), settings.redis_ttl_s)
    except redis.RedisError as exc:
        raise RuntimeError(f"Redis at {config.safe_url}: {exc}") from exc
    finally:
        client.close()
    print(
        f"redis-upgrade: {report.moved} users moved into their hash, {report.kept} already "
        f"had one (old keys deleted); {report.aliases_moved} alias keys moved into the alias "
        f"buckets, {report.aliases_rebucketed} aliases moved to their current bucket; "
        f"{report.recs_rewritten} lists rewritten in format 5"
    )
    return 0


def _add_redis_upgrade(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    upg = sub.add_parser(
        "redis-upgrade",
        help="bring Redis written by an earlier Attune to the current layout",
        description="Move every user's :profile, :segments and :recs keys (the layout before "
        "one hash per user) into the user's hash attune:{u:<user>}, TTL kept, and delete "
        "them; move alias keys attune:{u:<anon>}:alias into the alias buckets, and aliases "
        "into the bucket the current ATTUNE_REDIS_ALIAS_BUCKETS and ATTUNE_REDIS_TTL_S give "
        "them; rewrite lists stored in format 4 in format 5. Run once after upgrading, "
        "before the upgraded flow starts (docs/redis.md).",
    )
    upg.add_argument("--redis", help="Redis URL (default: ATTUNE_REDIS_URL)")
    upg.set_defaults(func=_cmd_redis_upgrade)


def _cmd_config(args: argparse.Namespace) -> int:
    if args.markdown:
        sys.stdout.write(reference_markdown())
    else:
        sys.stdout.buffer.write(
            orjson.dumps(Settings.from_env().masked(), option=orjson.OPT_INDENT_2) + b"\n"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:  # noqa: PLR0915 - a few lines per subcommand
    parser = argparse.ArgumentParser(
        prog="attune",
        description="Attune: real-time personalization from Avro events on Kafka to Redis.",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show debug logs, the libraries' own output and the whole error chain",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from attune.flows import generate

    gen = sub.add_parser(
        "generate",
        help="write synthetic events (Avro file + ground truth) or produce them to Kafka",
        description="Deterministic synthetic events for a seed, with the ground truth tests use.",
    )
    generate.add_arguments(gen)
    gen.set_defaults(func=_cmd_generate)

    from attune.flows import importer

    imp = sub.add_parser(
        "import",
        help="turn a public interaction log (CSV: RetailRocket, MovieLens, any with --map) into "
        "an Avro events file",
        description="Convert a CSV of interactions into Attune events (Avro container), sorted "
        "by time; rows that cannot be converted are counted and reported by line. "
        "docs/import.md has the details.",
    )
    importer.add_arguments(imp)
    imp.set_defaults(func=_cmd_import)

    loc = sub.add_parser("local", help="run a real Kafka broker and Redis on loopback")
    loc.add_argument("action", choices=["up", "down", "status"])
    loc.add_argument("--keep", action="store_true", help="down: keep Kafka's data")
    loc.set_defaults(func=_cmd_local)

    top = sub.add_parser("topics", help="create, delete or list the design topics")
    top.add_argument("action", choices=["create", "delete", "list"])
    top.add_argument(
        "--bootstrap", help="Kafka bootstrap (default: ATTUNE_KAFKA_BOOTSTRAP, else local broker)"
    )
    top.add_argument(
        "--partitions", type=int, help="partitions per topic (create; ATTUNE_PARTITIONS)"
    )
    top.set_defaults(func=_cmd_topics)

    ins = sub.add_parser(
        "inspect",
        help="summarise Avro event files; corrupt records are counted; an item catalogue "
        "(e.items.avro) is named as one",
    )
    ins.add_argument("files", nargs="+", help="Avro object container files of events")
    ins.set_defaults(func=_cmd_inspect)

    from attune.flows import run

    run_p = sub.add_parser(
        "run",
        help="run the personalization dataflow (embedded default without Kafka/Redis)",
        description="Run the dataflow: Kafka -> Redis when configured, else generated events "
        "(or --input FILE) in and a summary out.",
    )
    run.add_arguments(run_p)
    run_p.set_defaults(func=_cmd_run)

    from attune.flows import evaluate

    ev = sub.add_parser(
        "evaluate",
        help="prequential replay of an event file: Attune's recommendations and propensity "
        "against baselines (table, JSON, PNG plots)",
        description="Replay an Avro event file in order; before each new-item interaction every "
        "method recommends, then learns from it (docs/models.md has the protocol).",
    )
    evaluate.add_arguments(ev)
    ev.set_defaults(func=_cmd_evaluate)

    from attune.bench import decode, latency, throughput

    bench_p = sub.add_parser("bench", help="benchmarks: throughput, latency, decode")
    bench_sub = bench_p.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    tp = bench_sub.add_parser(
        "throughput",
        help="end-to-end events/s Kafka -> flow -> Redis next to raw consume+decode and "
        "decode-only baselines; --profile: where the flow's time goes, by stage",
        description="End-to-end events/s, Kafka -> flow -> Redis, on a generated workload, next "
        "to two baselines measured in the same run: raw consume+decode (confluent-kafka and the "
        "fastest Avro decoder installed, no project code) and decode-only (the project's codec). "
        "Verdicts against design.md's targets; bench/README.md explains every row. --profile "
        "adds one run under cProfile, grouped by the flow's stages.",
    )
    throughput.add_arguments(tp)
    lat = bench_sub.add_parser(
        "latency",
        help="event -> trigger and event -> Redis p50/p95/p99 at a steady rate, next to the "
        "broker round trip",
    )
    latency.add_arguments(lat)
    dec = bench_sub.add_parser(
        "decode",
        help="what Codec.decode_event costs per event, step by step, before and after (no servers)",
    )
    decode.add_arguments(dec)
    bench_p.set_defaults(func=_cmd_bench)

    from attune.flows import erase

    era = sub.add_parser(
        "erase",
        help="remove a user's keys, audience memberships and aliases from Redis",
        description="Erase one user from Redis (right to be forgotten). USER is pseudonymised "
        "as at ingestion, so the raw email or phone number works. The flow's state is erased "
        "by an ErasureRequest event (docs/privacy.md).",
    )
    erase.add_arguments(era)
    era.set_defaults(func=_cmd_erase)

    _add_redis_upgrade(sub)
    from attune.bench import chaos
    from attune.flows import rebuild

    chaos.add_parser(sub)
    rebuild.add_parser(sub)

    cfg = sub.add_parser("config", help="print the settings (secrets masked)")
    cfg.add_argument("--markdown", action="store_true", help="print the reference table")
    cfg.set_defaults(func=_cmd_config)
    for command in sub.choices.values():  # `attune run ... --verbose` works as well
        command.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show debug logs, the libraries' own output and the whole error chain",
        )
    return parser


#: Loggers of libraries whose lines are noise on a terminal: kafka-python logs ~20 INFO
#: lines of connection chatter per admin call, and a line per retry of an unreachable
#: broker, whose failure the command's own error line then reports; the Kafka sinks'
#: librdkafka lines likewise. Shown with --verbose.
QUIET_LOGGERS = ("kafka", "attune.kafka_sink.librdkafka")

#: Commands whose native libraries write to the process's stderr (file descriptor 2)
#: behind Python's back: librdkafka's connection errors (a line per retry) and Rust's
#: panic message and backtrace when a Bytewax step raises. Without --verbose, those
#: lines are kept out of the terminal (:func:`native_stderr_muted`); Python's own lines
#: (progress, logs, the error line) still show. `local` is not one: its server scripts'
#: errors are the message.
NATIVE_NOISY = frozenset({"run", "generate", "topics", "erase"})

#: The errors an operator can act on (configuration, servers, files): printed as one
#: line. Anything else is a bug and keeps its traceback.
OPERATOR_ERRORS: tuple[type[BaseException], ...] = (
    RuntimeError,
    ValueError,
    OSError,
    KafkaException,
    KafkaError,
    redis.RedisError,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the usage of the (sub)command the flag was given to, not the top level's
        command_parser(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    muted = not args.verbose and args.command in NATIVE_NOISY
    with native_stderr_muted(muted):
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
        )
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.CRITICAL)
        try:
            code: int = args.func(args)
        except Exception as exc:
            line = error_line(exc)
            if line is None:
                raise  # not an operator's error: a bug, with its traceback
            if args.verbose:
                traceback.print_exception(exc, file=sys.stderr)
            message = with_flags(line, command_parser(parser, args))
            print(f"attune {args.command}: {message}", file=sys.stderr)
            return 1
    return code


@contextlib.contextmanager
def native_stderr_muted(enabled: bool = True) -> Iterator[collections.deque[bytes]]:
    """Within the block, what native code writes to file descriptor 2 (librdkafka's log
    lines, Rust's panic messages and backtraces) is read by a thread and only its last
    lines kept (the yielded deque), while ``sys.stderr`` (Python's lines) still reaches
    the terminal. Disabled, or when ``sys.stderr`` is not file descriptor 2 (a test's
    capture), the block runs as is.
    """
    kept: collections.deque[bytes] = collections.deque(maxlen=200)
    try:
        fd = sys.stderr.fileno() if enabled else -1
    except (AttributeError, OSError, io.UnsupportedOperation):
        fd = -1
    if fd != 2:
        yield kept
        return
    sys.stderr.flush()
    terminal = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    old = sys.stderr
    new = open(terminal, "w", buffering=1, encoding=old.encoding, errors="backslashreplace")  # noqa: SIM115
    _restream(old, new)
    sys.stderr = new

    def drain() -> None:
        with open(read_end, "rb", buffering=0) as pipe:
            for line in pipe:
                kept.append(line)

    reader = threading.Thread(target=drain, name="native-stderr", daemon=True)
    reader.start()
    try:
        yield kept
    finally:
        new.flush()
        os.dup2(terminal, 2)  # the pipe's last writer closed: the reader sees its end
        reader.join(timeout=2.0)
        _restream(new, old)  # also the handler logging.basicConfig made in the block
        sys.stderr = old
        new.close()


def _restream(old: object, new: object) -> None:
    """Point the root logger's handlers that write to ``old`` at ``new``."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is old:
            handler.setStream(new)


def command_parser(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> argparse.ArgumentParser:
    """The parser of the subcommand ``args`` were parsed for (``attune bench latency``'s for
    ``bench latency``), or ``parser`` itself."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, subs[0].dest, None) if subs else None
        if chosen is None:
            return parser
        parser = subs[0].choices[chosen]


def with_flags(message: str, parser: argparse.ArgumentParser) -> str:
    """``message`` with each ``ATTUNE_*`` variable that a flag of ``parser`` overrides shown
    next to it: ``--redis / ATTUNE_REDIS_URL`` (an option's help names its variable).

    >>> p = argparse.ArgumentParser()
    >>> _ = p.add_argument("--redis", help="Redis URL (ATTUNE_REDIS_URL)")
    >>> with_flags("check ATTUNE_REDIS_URL and credentials", p)
    'check --redis / ATTUNE_REDIS_URL and credentials'
    >>> with_flags("point --redis / ATTUNE_REDIS_URL at it", p)
    'point --redis / ATTUNE_REDIS_URL at it'
    """
    flags: dict[str, str] = {}
    for action in parser._actions:
        long = [o for o in action.option_strings if o.startswith("--")]
        for name in re.findall(r"\bATTUNE_[A-Z0-9_]+\b", action.help or ""):
            if long:
                flags.setdefault(name, long[0])
    for name, flag in flags.items():
        message = re.sub(rf"(?<!{re.escape(flag)} / )\b{name}\b", f"{flag} / {name}", message)
    return message


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or during, outermost first."""
    chain = [exc]
    while (nxt := _raised_from(chain[-1])) is not None:
        if any(nxt is seen for seen in chain):
            break
        chain.append(nxt)
    return chain


def _raised_from(exc: BaseException) -> BaseException | None:
    """What ``exc`` was raised from, or during; ``raise ... from None`` ends the chain
    there (the project says so when its own line already names the cause)."""
    if exc.__cause__ is not None:
        return exc.__cause__
    return None if exc.__suppress_context__ else exc.__context__


#: The start of the messages Bytewax wraps a step's exception in: "(src/inputs.rs:446:37):
#: error calling `StatefulSourcePartition.next_batch` in step ...", "error building
#: production dataflow".
_WRAPPER = re.compile(r"^\s*(\(src/[\w/]+\.rs:\d+:\d+\):\s*)?error (calling|building|writing) ")
#: A Python exception quoted inside a wrapper's message: "SomeError: what was wrong".
_QUOTED = re.compile(r"^\s*(?:[\w.]+\.)?([A-Z]\w*(?:Error|Exception|Unavailable)): (.+)$")


def is_wrapper(exc: BaseException) -> bool:
    """Whether ``exc`` only says where Bytewax caught an error, not what it was.

    >>> is_wrapper(RuntimeError("(src/outputs.rs:554:34): error writing output batch"))
    True
    >>> is_wrapper(RuntimeError("error calling `StatefulSourcePartition.next_batch` in step"))
    True
    >>> is_wrapper(RuntimeError("Redis at redis://h:1/0 is not reachable"))
    False
    """
    return type(exc).__module__.startswith("bytewax") or bool(_WRAPPER.match(str(exc)))


def root_cause(exc: BaseException) -> BaseException:
    """The exception of the chain that says what was wrong: the outermost one that is not
    a Bytewax wrapper (:func:`is_wrapper`). Bytewax wraps an error raised in a source or
    sink ("error calling `StatefulSourcePartition.next_batch` ...") around the project's
    own message (no such file, a server that is not reachable, a missing topic), and the
    project's message in turn names the library error it was raised from.

    >>> try:
    ...     try:
    ...         raise ConnectionRefusedError("[Errno 111] Connection refused")
    ...     except OSError as low:
    ...         try:
    ...             raise RuntimeError("Redis at redis://h:1/0 is not reachable") from low
    ...         except RuntimeError as project:
    ...             raise RuntimeError("error calling `next_batch` in step x") from project
    ... except RuntimeError as outer:
    ...     print(root_cause(outer))
    Redis at redis://h:1/0 is not reachable
    """
    chain = _chain(exc)
    return next((link for link in chain if not is_wrapper(link)), chain[-1])


def error_line(exc: BaseException) -> str | None:
    """The one line an operator reads for ``exc``: the message of :func:`root_cause`,
    whitespace folded; ``None`` when that is not an operator's error (a bug).

    When every link of the chain is a wrapper (the original crossed a process or thread
    boundary as text), the last ``SomeError: message`` line quoted in the wrapper's
    message is used.

    >>> error_line(RuntimeError("(src/inputs.rs:1:2): error calling `next_batch`\\n"
    ...     "Traceback (most recent call last):\\n  File x\\n"
    ...     "attune.operators.redis_retry.RedisUnavailableError: Redis at r did not answer"))
    'Redis at r did not answer'
    >>> error_line(TypeError("unsupported operand")) is None
    True
    """
    cause = root_cause(exc)
    if is_wrapper(cause):
        quoted = [m for line in str(cause).splitlines() if (m := _QUOTED.match(line))]
        if quoted:
            return " ".join(quoted[-1].group(2).split())
    if not isinstance(cause, OPERATOR_ERRORS):
        return None
    return " ".join(str(cause).split()) or type(cause).__name__


if __name__ == "__main__":
    sys.exit(main())
