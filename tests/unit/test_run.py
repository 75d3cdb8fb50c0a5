"""``attune run`` with no servers: the embedded default prints a summary and a report."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from flows.cli import main


def test_attune_run_embedded_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "report.json"
    code = main(["run", "--users", "80", "--days", "3", "--seed", "5", "--report", str(report)])
    assert code == 0
    out = capsys.readouterr().out
    assert "events applied" in out and "segment sizes" in out and "sample profiles" in out
    data = orjson.loads(report.read_bytes())
    assert data["users"] > 50
    assert data["events_applied"] > 1000
    assert data["sessions"] >= data["users"]
    assert set(data["segment_sizes"]) >= {"new_visitor", "interested_but_hesitant"}


def test_attune_run_refuses_half_a_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--kafka", "127.0.0.1:1", "--users", "5"]) == 1
    assert "set both ATTUNE_KAFKA_BOOTSTRAP and ATTUNE_REDIS_URL" in capsys.readouterr().err
