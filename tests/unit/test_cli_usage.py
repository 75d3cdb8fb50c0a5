"""The CLI's usage and error lines (issue 16, findings 5 and 10)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from attune.flows.cli import main


@pytest.mark.parametrize(
    ("argv", "prog"),
    [
        (["run", "--bogus"], "attune run"),
        (["topics", "list", "--bogus", "x"], "attune topics"),
        (["bench", "latency", "--bogus"], "attune bench latency"),
    ],
)
def test_an_unknown_flag_shows_its_subcommands_usage(
    argv: list[str], prog: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding 10: it showed the top-level usage (``attune [-h] [-v] COMMAND ...``)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {prog} ")
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"{prog}: error: unrecognized arguments: --bogus")
    assert "COMMAND" not in err


def test_input_with_kafka_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding 5: ``--input FILE --kafka ... --redis ...`` printed ``input FILE`` and read
    the events topic instead, the file ignored."""
    events = tmp_path / "e.avro"
    events.write_bytes(b"")
    argv = ["run", "--input", str(events), "--kafka", "127.0.0.1:1", "--redis", "redis://x:1/0"]
    assert main(argv) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"attune run: input file {events}: ")
    assert "ignore the file" in line
    assert line.endswith(
        "give either --input / ATTUNE_INPUT_FILE, or --kafka / ATTUNE_KAFKA_BOOTSTRAP and "
        "--redis / ATTUNE_REDIS_URL"
    )


def test_half_a_server_configuration_names_the_flags_next_to_the_variables(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Finding 10: error hints named the variables only."""
    assert main(["run", "--kafka", "127.0.0.1:1"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        "attune run: set both --kafka / ATTUNE_KAFKA_BOOTSTRAP and --redis / ATTUNE_REDIS_URL "
        "(the flow reads Kafka and writes Redis), or neither for the embedded default"
    )


@pytest.mark.parametrize(("flag", "level"), [([], logging.CRITICAL), (["-v"], logging.DEBUG)])
def test_kafka_python_logs_only_with_verbose(
    flag: list[str], level: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding 10: ``attune topics list|create`` printed ~20 kafka-python INFO lines
    (tests/integration/test_docs_cli.py runs them against the real broker)."""
    logging.getLogger("kafka").setLevel(logging.NOTSET)
    try:
        assert main([*flag, "config"]) == 0
        assert logging.getLogger("kafka").level == level
    finally:
        logging.getLogger("kafka").setLevel(logging.NOTSET)
    capsys.readouterr()


def test_topics_on_an_unreachable_broker_is_one_line_naming_the_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """kafka-python's bootstrap failure (after ~30 s of retries, each logged) ended in a
    traceback: ``KafkaTimeoutError`` was not among the errors the CLI reports."""
    from kafka.errors import KafkaTimeoutError

    from attune.flows import topics

    def unreachable(**_: object) -> None:
        raise KafkaTimeoutError("Unable to bootstrap from 127.0.0.1:1")

    monkeypatch.setattr(topics, "KafkaAdminClient", unreachable)
    assert main(["topics", "list", "--bootstrap", "127.0.0.1:1"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("attune topics: Kafka at 127.0.0.1:1 is not reachable (")
    assert line.endswith(
        "start local servers with `attune local up`, or point --bootstrap / "
        "ATTUNE_KAFKA_BOOTSTRAP at a broker"
    )
