"""``attune evaluate`` end to end on a tiny generated log, and on bad input."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from attune.flows.cli import main
from attune.flows.evaluate import METHODS, EvaluationError, replay
from attune.flows.generate import write_files
from attune.workload.generator import GeneratorConfig, generate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("evaluate") / "e.avro"
    write_files(generate(GeneratorConfig(users=60, days=3, seed=4)), out, progress=False)
    return out


def test_evaluate_end_to_end_writes_table_json_and_plots(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "res.json"
    plots = tmp_path / "plots"
    code = main(
        ["evaluate", str(log), "--sample", "1", "--k", "5", "--json", str(out_json),
         "--plots", str(plots)]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr()
    assert "HR@5" in printed.out and "propensity: ROC AUC" in printed.out
    for name in METHODS:
        assert f"\n{name} " in printed.out
    assert "evaluate [" in printed.err  # the progress bar
    res = orjson.loads(out_json.read_bytes())
    assert res["k"] == 5 and res["sample"] == 1
    points = {m["points"] for m in res["methods"].values()}
    assert len(points) == 1 and points.pop() > 50  # every method asked at the same points
    for m in res["methods"].values():
        assert 0.0 <= m["ndcg"] <= m["hr"] <= 1.0
        assert m["mrr"] <= m["hr"]
        assert 0.0 < m["coverage"] <= 1.0
        assert m["diversity"] is None or 0.0 <= m["diversity"] <= 1.0
    p = res["propensity"]
    assert p["sessions"] > 0 and 0 < p["positives"] < p["sessions"]
    assert p["auc"] is None or 0.0 <= p["auc"] <= 1.0
    assert res["events"] > 0 and res["catalogue_items"] > 0 and res["elapsed_s"] >= 0
    days = res["over_time"]["points_by_day"]
    assert sum(days.values()) == res["methods"]["attune"]["points"]
    pngs = sorted(plots.glob("*.png"))
    assert [x.name for x in pngs] == [
        "hr_over_time.png", "ndcg_over_time.png", "propensity_over_time.png"
    ]  # fmt: skip
    assert all(x.read_bytes()[:8] == PNG_MAGIC for x in pngs)


def test_sampling_keeps_the_same_points_for_every_method(log: Path) -> None:
    every = replay(log, sample=1, progress=False)
    some = replay(log, sample=3, progress=False)
    assert every["eligible_points"] == some["eligible_points"]
    n_all = every["methods"]["attune"]["points"]
    n_some = some["methods"]["attune"]["points"]
    assert 0 < n_some < n_all
    assert {m["points"] for m in some["methods"].values()} == {n_some}
    # learning does not depend on sampling: propensity sees the same sessions
    assert every["propensity"] == some["propensity"]


def test_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.avro"
    with pytest.raises(EvaluationError, match=r"events file .*nope.avro does not exist"):
        replay(missing, progress=False)
    assert main(["evaluate", str(missing)]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_not_an_avro_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.avro"
    bad.write_bytes(b"timestamp,visitorid,event\n1,2,view\n")
    with pytest.raises(EvaluationError, match=r"holds no readable events.*not an Avro container"):
        replay(bad, progress=False)


def test_truncated_file_counts_dead_letters_and_goes_on(log: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.avro"
    data = log.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    res = replay(cut, items_path=log.with_suffix(".items.avro"), sample=1, progress=False)
    assert res["dead_letters"] >= 1
    assert 0 < res["events"] < replay(log, sample=50, progress=False)["events"]


def test_bad_options(log: Path, tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="--k must be >= 1"):
        replay(log, k=0, progress=False)
    with pytest.raises(EvaluationError, match="--sample must be >= 1"):
        replay(log, sample=0, progress=False)
    with pytest.raises(EvaluationError, match=r"items file .* does not exist"):
        replay(log, items_path=tmp_path / "none.avro", progress=False)


def test_without_a_catalogue_items_come_from_events(log: Path, tmp_path: Path) -> None:
    alone = tmp_path / "alone.avro"
    alone.write_bytes(log.read_bytes())  # no alone.items.avro next to it
    res = replay(alone, sample=2, progress=False)
    assert res["items_file"] is None
    assert res["catalogue_items"] > 0 and res["methods"]["attune"]["points"] > 0
