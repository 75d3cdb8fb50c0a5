"""``attune run`` with no servers: the embedded default prints a summary and a report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from attune.flows.cli import main


def test_attune_run_embedded_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "attune.flows.run.tune_gc", lambda: None
    )  # keeps this process's GC as it is
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


def test_tune_gc_freezes_start_up_and_raises_the_thresholds() -> None:
    # in a child process: the thresholds and the frozen generation are process-wide
    code = (
        "import gc, attune.flows; attune.flows.tune_gc(); "
        "print(gc.get_threshold() == attune.flows.GC_THRESHOLDS, gc.get_freeze_count() > 0)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["True", "True"]
