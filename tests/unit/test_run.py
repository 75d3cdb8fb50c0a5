"""``attune run`` with no servers: the embedded default prints a summary and a report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from attune.flows.cli import main
from attune.flows.embedded import LocalStore


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
    assert (
        "set both --kafka / ATTUNE_KAFKA_BOOTSTRAP and --redis / ATTUNE_REDIS_URL"
        in capsys.readouterr().err
    )


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


def test_attune_run_embedded_keys_follow_the_redis_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a non-default ``ATTUNE_REDIS_PREFIX`` the embedded store still hears the model
    learner (its snapshot is published under the prefix, and the per-user step reads it)
    and writes recommendations (issue 13, item 8)."""
    monkeypatch.setattr("attune.flows.run.tune_gc", lambda: None)
    monkeypatch.setenv("ATTUNE_REDIS_PREFIX", "shop1:")
    stores: list[LocalStore] = []

    class Recorded(LocalStore):
        def __init__(self) -> None:
            super().__init__()
            stores.append(self)

    monkeypatch.setattr("attune.flows.run.LocalStore", Recorded)
    report = tmp_path / "report.json"
    code = main(["run", "--users", "60", "--days", "2", "--seed", "5", "--report", str(report)])
    assert code == 0
    (store,) = stores
    assert (store.board_key, store.models_key) == ("shop1:model:clusters", "shop1:model:recs")
    assert "shop1:model:recs" in store.models
    assert not any(key.startswith("attune:") for key in store.models)
    assert store.model_board.get() is not None  # the snapshot reached the per-user step
    data = orjson.loads(report.read_bytes())
    assert data["users"] > 40
    assert data["users_with_recommendations"] > data["users"] // 2
