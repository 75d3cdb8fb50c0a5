"""Operator errors end the process with one line that says what was wrong, where and what
to do (issue 15, item 6), and a silent Redis is waited out up to a limit (item 2): the
cases that need no server. tests/integration/test_operator_errors.py has the others.
"""

from __future__ import annotations

import http.server
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import bytewax.operators as op
import pytest
import redis
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource, run_main

from attune.flows import run
from attune.flows.cli import error_line, main, native_stderr_muted, root_cause
from attune.flows.settings import Settings
from attune.flows.sinks import server_sinks
from attune.operators.codec import Codec
from attune.operators.redis_retry import (
    OutagePolicy,
    OutageRetry,
    RedisUnavailableError,
    retried,
)
from attune.operators.redis_sink import RedisConfig, RedisSink

ROOT = Path(__file__).resolve().parents[2]

#: Flags that keep an embedded run small (a couple of seconds).
SMALL = ("--users", "20", "--days", "1")


def dead_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The last line of stderr: the error line."""
    return capsys.readouterr().err.strip().splitlines()[-1]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, one_line(capsys)


# --- the input file ------------------------------------------------------------------------


def test_a_missing_input_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.avro"
    code, line = run_cli(capsys, "run", "--input", str(missing))
    assert code == 1
    assert line == (
        f"attune run: input file {missing} does not exist: give an Avro event file "
        "(`attune generate --out FILE` or `attune import` writes one) with --input / "
        "ATTUNE_INPUT_FILE"
    )


def test_an_unreadable_input_file_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, line = run_cli(capsys, "run", "--input", str(tmp_path))
    assert code == 1
    assert line.startswith(f"attune run: input file {tmp_path} is a directory: give an Avro")


def test_an_unreadable_input_file_not_avro(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.avro"
    path.write_text("user,item\n1,2\n")
    code, line = run_cli(capsys, "run", "--input", str(path))
    assert code == 1
    assert line.startswith(
        f"attune run: input file {path} is not an Avro object container file (it starts with "
        "b'user', not b'Obj\\x01'): give an Avro event file"
    )


def test_an_unreadable_input_file_permissions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root reads a chmod 000 file anyway, so the refusal is made by ``open`` itself."""
    path = tmp_path / "events.avro"
    path.write_bytes(b"Obj\x01")
    real_open = Path.open

    def refuse(self: Path, *args: object, **kwargs: object) -> object:
        if self == path:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(self, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(Path, "open", refuse)
    code, line = run_cli(capsys, "run", "--input", str(path))
    assert code == 1
    assert line.startswith(
        f"attune run: input file {path} cannot be read (Permission denied): check its "
        "permissions; give an Avro event file"
    )


# --- servers at start-up ----------------------------------------------------------------------


def test_an_unreachable_broker_is_one_line_in_a_fresh_process(tmp_path: Path) -> None:
    """A process of its own, as an operator runs it: stderr is the one line, no librdkafka
    connection errors (they go to file descriptor 2, which only a real process shows)."""
    port = dead_port()
    proc = subprocess.run(
        [sys.executable, "-m", "attune.flows.cli", "run", "--kafka", f"127.0.0.1:{port}",
         "--redis", f"redis://127.0.0.1:{dead_port()}/0"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**_env(), "ATTUNE_PSEUDONYM_KEY": "k" * 40},
    )  # fmt: skip
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"attune run: Kafka at 127.0.0.1:{port} is not reachable (")


def test_an_unreachable_redis_is_one_line() -> None:
    port = dead_port()
    with pytest.raises(RuntimeError) as info:
        run.check_redis(Settings(redis_url=f"redis://127.0.0.1:{port}/0"), timeout_s=2.0)
    assert str(info.value).startswith(f"Redis at redis://127.0.0.1:{port}/0 is not reachable (")
    assert str(info.value).endswith(
        "start local servers with `attune local up`, or point --redis / ATTUNE_REDIS_URL at a "
        "Redis server (rediss:// for TLS)"
    )
    assert "\n" not in str(info.value)


def test_a_schema_registry_url_where_nothing_listens(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry is checked first: with Kafka and Redis not there either, the line is the
    registry's."""
    url = f"http://127.0.0.1:{dead_port()}"
    monkeypatch.setenv("ATTUNE_SCHEMA_REGISTRY_URL", url)
    monkeypatch.setenv("ATTUNE_PSEUDONYM_KEY", "k" * 40)
    code, line = run_cli(
        capsys, "run", "--kafka", f"127.0.0.1:{dead_port()}", "--redis", "redis://127.0.0.1:1/0"
    )
    assert code == 1
    assert line.startswith(f"attune run: schema registry at {url} is not reachable (")
    assert line.endswith(
        "point ATTUNE_SCHEMA_REGISTRY_URL at the registry (e.g. http://host:8081), or unset it "
        "to use Avro single-object encoding"
    )


@pytest.fixture
def http_server() -> Iterator[Callable[[int], str]]:
    """A factory of HTTP servers that answer every GET with one status (a wrong port of
    another service: 404; a registry that wants credentials: 401)."""
    servers: list[http.server.HTTPServer] = []

    def start(status: int) -> str:
        class Answer(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_error(status)

            def log_message(self, *_args: object) -> None:
                pass

        server = http.server.HTTPServer(("127.0.0.1", 0), Answer)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_schema_registry_url_of_another_service(http_server: Callable[[int], str]) -> None:
    url = http_server(404)
    with pytest.raises(RuntimeError) as info:
        run.check_registry(Settings(schema_registry_url=url))
    assert str(info.value).startswith(
        f"schema registry at {url} answered HTTP 404 to GET /subjects: it is not a "
        "Confluent schema registry; point ATTUNE_SCHEMA_REGISTRY_URL"
    )


def test_a_schema_registry_that_wants_credentials(http_server: Callable[[int], str]) -> None:
    url = http_server(401)
    with pytest.raises(RuntimeError) as info:
        run.check_registry(Settings(schema_registry_url=url))
    assert str(info.value).startswith(
        f"schema registry at {url} refused GET /subjects (HTTP 401): it wants credentials"
    )


# --- rule files -------------------------------------------------------------------------------


SYNTAX_ERROR = "segments:\n  - name: x\n    condition: [unclosed\n"
UNKNOWN_KEY = "segments:\n  - name: x\n    description: d\n    whenn: {}\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (SYNTAX_ERROR, ":4: YAML syntax error while parsing a flow sequence at line 3: "),
        (UNKNOWN_KEY, ":4: segment 'x': a segment: unknown key 'whenn' (expected one of name, "),
    ],
    ids=["syntax error", "unknown key"],
)
def test_a_bad_segments_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = tmp_path / "segments.yaml"
    path.write_text(text)
    code, line = run_cli(capsys, "run", *SMALL, "--segments", str(path))
    assert code == 1
    assert line.startswith(f"attune run: {path}{expected}"), line


def test_a_missing_segments_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "segments.yaml"
    code, line = run_cli(capsys, "run", *SMALL, "--segments", str(path))
    assert code == 1
    assert line == (
        f"attune run: segments file {path} does not exist: give a YAML file (docs/segments.md) "
        "with --segments / ATTUNE_SEGMENTS_FILE, or unset it for the shipped rules"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "rules: [\n  - name: x\n",
            ":2: YAML syntax error while parsing a flow node: expected the node content",
        ),
        ("rules:\n  - name: x\n    foo: 1\n", ":3: rule 'x': a rule: unknown key 'foo' "),
        (None, None),
    ],
    ids=["syntax error", "unknown key", "missing"],
)
def test_a_bad_trigger_rules_file(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    text: str | None,
    expected: str | None,
) -> None:
    path = tmp_path / "rules.yaml"
    if text is not None:
        path.write_text(text)
    monkeypatch.setenv("ATTUNE_TRIGGER_RULES_FILE", str(path))
    code, line = run_cli(capsys, "run", *SMALL)
    assert code == 1
    if expected is None:
        assert line == (
            f"attune run: trigger rules file {path} does not exist: give a YAML file "
            "(docs/triggers.md) with ATTUNE_TRIGGER_RULES_FILE, or unset it for the shipped rules"
        )
    else:
        assert line.startswith(f"attune run: {path}{expected}"), line


# --- the recovery store -----------------------------------------------------------------------


def test_a_recovery_directory_of_another_input_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "recovery"
    report = str(tmp_path / "r.json")
    assert main(["run", *SMALL, "--seed", "3", "--recovery-dir", str(db), "--report", report]) == 0
    assert (db / run.RECOVERY_MARKER).exists() and (db / "part-0.sqlite3").exists()
    # the same flow again: resumed
    assert main(["run", *SMALL, "--seed", "3", "--recovery-dir", str(db), "--report", report]) == 0
    capsys.readouterr()
    code, line = run_cli(
        capsys, "run", *SMALL, "--seed", "4", "--recovery-dir", str(db), "--report", report
    )
    assert code == 1
    assert line == (
        f"attune run: recovery directory {db} belongs to another flow (input 'generator "
        "users=20 days=1 seed=3', this run's 'generator users=20 days=1 seed=4'): give this "
        f"flow a recovery directory of its own, or delete {db} to start over"
    )


class _Collect(DynamicSink[object]):
    def build(self, *_args: object) -> StatelessSinkPartition[object]:
        class Part(StatelessSinkPartition[object]):
            def write_batch(self, items: list[object]) -> None:
                pass

        return Part()


def _counter(state: int | None, _item: tuple[str, int]) -> tuple[int, int]:
    count = (state or 0) + 1
    return count, count


def test_a_recovery_store_of_another_dataflow_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store without Attune's marker (made by ``python -m bytewax.recovery``) whose
    snapshots are another dataflow's steps."""
    from bytewax.recovery import RecoveryConfig, init_db_dir

    db = tmp_path / "recovery"
    db.mkdir()
    init_db_dir(db, 1)
    flow = Dataflow("other_flow")
    keyed = op.key_on("key", op.input("in", flow, TestingSource([("a", 1), ("b", 2)])), str)
    op.output("out", op.stateful_map("count", keyed, _counter), _Collect())
    run_main(flow, recovery_config=RecoveryConfig(db))
    with closing(sqlite3.connect(db / "part-0.sqlite3")) as conn:
        steps = {row[0] for row in conn.execute("SELECT step_id FROM snaps")}
    assert steps and all(step.startswith("other_flow.") for step in steps)
    code, line = run_cli(capsys, "run", *SMALL, "--recovery-dir", str(db))
    assert code == 1
    assert line == (
        f"attune run: recovery directory {db} belongs to another flow (it holds snapshots of "
        "the dataflow 'other_flow', not of 'attune_personalize'): give this flow a recovery "
        f"directory of its own, or delete {db} to start over"
    )


def test_a_recovery_directory_with_other_files_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    code, line = run_cli(capsys, "run", *SMALL, "--recovery-dir", str(tmp_path))
    assert code == 1
    assert line == (
        f"attune run: recovery directory {tmp_path} holds other files and no Bytewax recovery "
        "partitions (part-*.sqlite3): give this flow an empty or new directory"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]  # nothing written there


# --- the error handler ------------------------------------------------------------------------


class _Failing(DynamicSink[object]):
    """A sink whose write raises the project's error from a library's, as the Redis sink
    does."""

    def build(self, *_args: object) -> StatelessSinkPartition[object]:
        class Part(StatelessSinkPartition[object]):
            def write_batch(self, items: list[object]) -> None:
                try:
                    raise redis.TimeoutError("Timeout reading from socket")
                except redis.TimeoutError as exc:
                    raise RedisUnavailableError("Redis at redis://h:1/0 did not answer") from exc

        return Part()


def _failing_flow() -> Dataflow:
    flow = Dataflow("failing")
    op.output("out", op.input("in", flow, TestingSource([1, 2, 3])), _Failing())
    return flow


def test_the_project_error_is_found_inside_bytewax_s_wrapper() -> None:
    with pytest.raises(Exception) as info:
        run_main(_failing_flow())
    assert type(info.value).__module__.startswith("bytewax")  # the wrapper
    assert isinstance(root_cause(info.value), RedisUnavailableError)
    assert error_line(info.value) == "Redis at redis://h:1/0 did not answer"


def test_a_bug_keeps_its_traceback() -> None:
    try:
        try:
            raise KeyError("profile")
        except KeyError as exc:
            raise RuntimeError("(src/inputs.rs:1:2): error calling `next_batch`") from exc
    except RuntimeError as wrapped:
        assert error_line(wrapped) is None  # main re-raises it


def test_native_stderr_is_muted_without_verbose() -> None:
    """Rust's panic message goes to file descriptor 2 behind Python's back: muted, the
    process's stderr is the error line alone; unmuted (--verbose), the panic shows."""
    script = textwrap.dedent(
        """
        import sys
        from bytewax.testing import run_main
        from attune.flows.cli import error_line, native_stderr_muted
        from tests.unit.test_operator_errors import _failing_flow
        with native_stderr_muted(sys.argv[1] == "muted"):
            try:
                run_main(_failing_flow())
            except Exception as exc:
                print("attune run:", error_line(exc), file=sys.stderr)
        """
    )

    def stderr(mode: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-c", script, mode],
            check=False,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env=_env(),
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    assert stderr("muted").splitlines() == ["attune run: Redis at redis://h:1/0 did not answer"]
    loud = stderr("verbose")
    assert "panicked at" in loud and loud.splitlines()[-1].endswith("did not answer")


def test_the_muted_block_restores_stderr() -> None:
    before = sys.stderr
    with native_stderr_muted(True) as kept:
        pass
    assert sys.stderr is before and list(kept) == []


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("ATTUNE_")}


# --- the retry policy (a fake clock: no sleeping) ---------------------------------------------


class FakeTime:
    """A clock that only moves when slept on, or when an attempt is said to take time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def policy(fake: FakeTime, limit_s: float = 10.0) -> OutagePolicy:
    return OutagePolicy("redis://h:1/0", limit_s=limit_s, clock=fake.clock, sleep=fake.sleep)


def failing(fake: FakeTime, errors: list[Exception], attempt_s: float = 0.0) -> object:
    """A request that raises ``errors`` in turn (each attempt taking ``attempt_s``), then
    answers ``"OK"``; its ``calls`` count the attempts."""

    def do() -> str:
        do.calls += 1  # type: ignore[attr-defined]
        fake.now += attempt_s
        if errors:
            raise errors.pop(0)
        return "OK"

    do.calls = 0  # type: ignore[attr-defined]
    return do


def test_the_policy_retries_with_growing_delays_until_redis_answers() -> None:
    fake = FakeTime()
    do = failing(fake, [redis.ConnectionError("refused")] * 6)
    failures: list[int] = []
    assert policy(fake).call(do, lambda _e, n: failures.append(n)) == "OK"  # type: ignore[arg-type]
    assert do.calls == 7  # type: ignore[attr-defined]
    assert failures == [1, 2, 3, 4, 5, 6]
    assert fake.slept == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6]


def test_the_delays_are_capped() -> None:
    p = policy(FakeTime())
    assert [p.delay(n) for n in (1, 5, 6, 7, 30)] == [0.05, 0.8, 1.6, 2.0, 2.0]


def test_past_the_limit_the_policy_gives_up_with_one_line_naming_redis() -> None:
    """Each attempt waits 1 s for its socket timeout: the silence counts them in full."""
    fake = FakeTime()
    errors: list[Exception] = [redis.TimeoutError("Timeout reading from socket")] * 100
    do = failing(fake, errors, attempt_s=1.0)
    with pytest.raises(RedisUnavailableError) as info:
        policy(fake, limit_s=5).call(do)  # type: ignore[arg-type]
    assert 5.0 <= fake.now < 5.0 + 1.0 + 2.0  # the limit, one more attempt and one delay
    assert str(info.value) == (
        f"Redis at redis://h:1/0 did not answer for {fake.now:.0f} s (Timeout reading from "
        "socket), longer than ATTUNE_REDIS_OUTAGE_LIMIT_S=5: check that Redis is running and "
        "reachable (`attune local status` for local servers), then start the flow again with "
        "the same recovery store (--recovery-dir) to rewrite what was not written"
    )
    assert isinstance(info.value.__cause__, redis.TimeoutError)


def test_the_last_sleep_stops_at_the_limit() -> None:
    fake = FakeTime()
    do = failing(fake, [redis.ConnectionError("x")] * 100)
    with pytest.raises(RedisUnavailableError):
        policy(fake, limit_s=1.0).call(do)  # type: ignore[arg-type]
    assert fake.now == pytest.approx(1.0)
    assert sum(fake.slept) == pytest.approx(1.0)


def test_a_limit_of_zero_gives_up_at_the_first_failure() -> None:
    fake = FakeTime()
    do = failing(fake, [redis.ConnectionError("refused")])
    with pytest.raises(RedisUnavailableError):
        policy(fake, limit_s=0).call(do)  # type: ignore[arg-type]
    assert do.calls == 1 and fake.slept == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "error",
    [
        redis.AuthenticationError("invalid password"),
        redis.ResponseError("WRONGTYPE"),
        ValueError("a bug"),
    ],
    ids=["wrong password", "refused command", "not Redis"],
)
def test_what_waiting_would_not_change_is_raised_at_once(error: Exception) -> None:
    fake = FakeTime()
    do = failing(fake, [error])
    with pytest.raises(type(error)):
        policy(fake).call(do)  # type: ignore[arg-type]
    assert do.calls == 1 and fake.slept == []  # type: ignore[attr-defined]
    assert not retried(error)


def test_redis_py_follows_the_policy_through_outage_retry() -> None:
    """A real client (no server: a closed port) with :class:`OutageRetry`: its connection
    attempts are retried, on the fake clock, until the limit."""
    fake = FakeTime()
    retry = OutageRetry(policy(fake, limit_s=3))
    client = redis.Redis(port=dead_port(), retry=retry, socket_connect_timeout=1)
    with pytest.raises(RedisUnavailableError, match=r"^Redis at redis://h:1/0 did not answer"):
        client.ping()
    assert fake.now == pytest.approx(3.0) and len(fake.slept) > 3


def test_the_flow_s_redis_config_holds_back_and_tools_do_not() -> None:
    settings = Settings(
        redis_url="redis://127.0.0.1:1/0", redis_outage_limit_s=7, redis_timeout_s=2
    )
    config = RedisConfig.from_settings(settings, hold_back=True)
    held = config.outage_policy()
    assert held is not None and held.limit_s == 7 and config.socket_timeout_s == 2
    assert isinstance(config.client().get_connection_kwargs()["retry"], OutageRetry)
    assert RedisConfig.from_settings(settings).outage_policy() is None  # attune erase
    sinks = server_sinks(settings.replace(kafka_bootstrap="127.0.0.1:1"), Codec())
    assert isinstance(sinks.redis, RedisSink) and sinks.redis.config.outage_policy() == held


def test_verbose_shows_the_chain_before_the_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "missing.avro")
    assert main(["run", "--input", missing]) == 1
    quiet = capsys.readouterr().err
    assert main(["run", "--input", missing, "--verbose"]) == 1
    loud = capsys.readouterr().err
    assert "Traceback" not in quiet and "Traceback" in loud
    assert loud.strip().splitlines()[-1] == quiet.strip().splitlines()[-1]
    assert quiet.strip().splitlines()[-1].startswith(f"attune run: input file {missing} does")
