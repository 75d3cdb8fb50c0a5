"""The flow's own lists judged at the targets that follow them (``attune.bench.recs_quality``)."""

from __future__ import annotations

import pytest

from attune.bench.recs_quality import HEADER, SETTINGS, HitRate, main, measure
from attune.workload.generator import GeneratorConfig


def test_the_list_in_force_is_the_latest_ranked_before_the_target() -> None:
    hr = HitRate()
    hr.add_list("u", 2_000, ["b"])
    hr.add_list("u", 1_000, ["a"])  # a late list goes among the earlier ones
    assert hr.target("u", 1_000, "a") is None  # ranked at the target's own time: not before
    assert hr.target("u", 1_500, "a") is True
    assert hr.target("u", 2_500, "a") is False  # the list at 2,000 replaced it
    assert hr.target("v", 9_000, "a") is None  # another user's lists do not count
    assert (hr.targets, hr.covered, hr.hits) == (4, 2, 1)


def test_a_tiny_run_counts_calls_and_targets() -> None:
    config = GeneratorConfig(users=30, days=1, seed=1, items=64)
    every = measure("default", config, batch_size=5, gap_s=0)
    assert every.calls > 0 and every.events > 0
    assert 0 < every.covered <= every.targets and every.hits <= every.covered
    held = measure("default", config, batch_size=5, gap_s=600)
    assert held.targets == every.targets  # the same interactions, judged against fewer lists
    assert held.calls < every.calls
    row = held.line()
    assert row.startswith("| default | 5 | 600 |")
    assert row.count("|") == HEADER.splitlines()[0].count("|")


def test_an_unknown_setting_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--settings", "nope", "--users", "5", "--days", "1"])
    assert "unknown generator setting 'nope'" in capsys.readouterr().err
    assert set(SETTINGS) == {"default", "alt"}
