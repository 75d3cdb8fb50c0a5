"""The CLI's error line names the cause, not the wrapper around it (issues 15 and 16:
`attune run --input` with a missing file ended in Bytewax's "error calling
`StatefulSourcePartition.next_batch`" and never said "no such file")."""

from __future__ import annotations

import logging
import socket
import subprocess
from pathlib import Path

import pytest

from attune.flows import run
from attune.flows.cli import main, root_cause


def test_a_missing_input_file_is_named_in_the_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.avro"
    code = main(["run", "--input", str(missing), "--report", str(tmp_path / "r.json")])
    assert code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("attune run: ")
    assert "does not exist" in last and str(missing) in last
    assert "next_batch" not in last


def test_an_unreachable_broker_is_one_line_without_librdkafka_noise(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "KAFKA_CHECK_S", 1.0)
    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["run", "--kafka", f"127.0.0.1:{port}", "--redis", "redis://127.0.0.1:1/0"])
    assert code == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # librdkafka's connection errors kept out
    assert err[0].startswith(f"attune run: Kafka at 127.0.0.1:{port} is not reachable (")
    assert err[0].endswith(
        "start local servers with `attune local up`, or point --kafka / "
        "ATTUNE_KAFKA_BOOTSTRAP at a broker"
    )


def test_the_error_line_stops_where_the_project_said_from_none() -> None:
    try:
        try:
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        except OSError:
            raise RuntimeError("Kafka at k:1 is not reachable: start `attune local up`") from None
    except RuntimeError as exc:
        assert str(root_cause(exc)) == "Kafka at k:1 is not reachable: start `attune local up`"


def test_local_status_prints_each_server_once(
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 16, finding 10: each status line was logged by the script runner and printed."""

    def fake_run(cmd: list[str], **_kw: object) -> subprocess.CompletedProcess[str]:
        name = "kafka" if "kafka" in cmd[1] else "redis"
        return subprocess.CompletedProcess(cmd, 0, stdout=f"up {name}-line\n")

    monkeypatch.setattr(subprocess, "run", fake_run)  # what the script runner calls
    with caplog.at_level(logging.INFO):
        assert main(["local", "status"]) == 0
    printed = capfd.readouterr().out
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for line in ("up kafka-line", "up redis-line"):
        assert printed.count(line) == 1 and line not in logged


def test_topics_delete_says_what_it_deleted(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 16, finding 10: `attune topics delete` printed nothing."""
    from attune.flows import topics

    monkeypatch.setattr(topics, "design_topics", lambda _settings: ["t.events", "t.dlq"])
    monkeypatch.setattr(topics, "delete_topics", lambda *_a, **_kw: ["t.events"])
    assert main(["topics", "delete", "--bootstrap", "k:1"]) == 0
    assert capsys.readouterr().out.split("\n") == [
        f"{'t.events':<32} deleted",
        f"{'t.dlq':<32} absent",
        "",
    ]
