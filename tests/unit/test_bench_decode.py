"""``attune bench decode``: it runs, checks every row against decode_event, and reports.

The figures themselves are printed, never asserted (design.md, "Targets").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attune.bench import decode


def test_a_small_run_prints_every_row_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "decode.json"
    assert decode.main(["--events", "20", "--repeats", "2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    names = [step for step, _, _ in decode.steps()] + [step for step, _ in decode.batch_steps()]
    for step in names:
        assert text.count(step) >= 3  # one row per corpus
    assert "generated: decode_event" in text and "minimal, privacy: decode_event" in text
    rows = json.loads(out.read_text())
    assert len(rows) == 3 * len(names)
    assert all(len(r["cpu_us"]) == 2 and r["events"] == 20 for r in rows)


def test_the_minimal_corpus_has_no_optional_field() -> None:
    events = decode.minimal(10)
    assert len({e.event_type for e in events}) == 10
    assert all(e.context is None and e.anonymous_id is None for e in events)
    for e in events:
        for name in ("category", "price_minor", "title", "results_count"):
            assert getattr(e.payload, name, None) is None


def test_a_row_that_differs_from_decode_event_fails_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    corpus = decode.corpora(5)[0]
    monkeypatch.setattr(decode, "decode_event_before", lambda codec, data: None)
    with pytest.raises(AssertionError, match="decode_event before differs"):
        decode.check(corpus)


def test_the_source_path_check_fails_on_a_routing_that_loses_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    corpus = decode.corpora(5)[0]
    monkeypatch.setattr(decode, "route", lambda items: ([], [], []))
    with pytest.raises(AssertionError, match="the routing lost events"):
        decode.check_source(corpus)
