"""``python -m attune.bench.step``: it runs the per-user step on a tiny workload and prints
its figures and counts.

The figures themselves are printed, never asserted (design.md, "Targets").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attune.bench import step


def test_a_small_run_prints_its_figures_and_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "step.json"
    argv = ["--users", "20", "--days", "1", "--epoch-events", "50", "--repeats", "2"]
    assert step.main([*argv, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "attune bench step: 20 users x 1 days" in text
    for row in ("step ", "snapshots "):
        assert row in text
    assert "snapshots taken" in text and "outputs sha256: " in text
    runs = json.loads(out.read_text())
    assert len(runs) == 2
    assert runs[0]["events"] > 0 and runs[0]["snapshots"] > 0
    assert runs[0]["digest"] == runs[1]["digest"]  # the same outputs every run


def test_the_workload_routes_every_event_to_a_key() -> None:
    work = step.workload(users=20, days=1, seed=3)
    assert len(work.inputs) == len(work.watermarks) >= work.events
    assert all(key for key, _ in work.inputs)
    assert work.watermarks == sorted(work.watermarks)


def test_with_models_the_step_runs_them_over_parameters_learnt_from_the_workload(
    capsys: pytest.CaptureFixture[str],
) -> None:
    work = step.workload(users=60, days=3, seed=3, models=True)
    assert work.cfg.models is not None and work.cfg.board is not None
    assert work.cfg.board.get() is not None  # personas published before the timed runs
    snap = work.cfg.models.board.get()
    assert snap is not None and snap.propensity is not None
    first, again = step.run(work, 50), step.run(work, 50)
    assert first.digest == again.digest  # fixed parameters: the same outputs every run
    off = step.run(step.workload(users=60, days=3, seed=3), 50)
    assert first.outputs > off.outputs  # recommendations, summaries, personas, scores
    argv = ["--users", "60", "--days", "3", "--epoch-events", "50", "--repeats", "1"]
    assert step.main([*argv, "--models"]) == 0
    assert "models on" in capsys.readouterr().out
