"""``attune inspect`` on files that are not event files (issue 16, finding 8): the item
catalogue ``attune generate`` writes was read as 13 MISSING_FIELD dead letters whose reason
was an 88 KB dump of two schemas."""

from __future__ import annotations

from pathlib import Path

import fastavro
import pytest

from attune.flows.cli import main
from attune.flows.inspect import REASON_CHARS, summarize


def test_an_item_file_is_named_as_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "e.avro"
    assert main(["generate", "--users", "5", "--days", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    items = tmp_path / "e.items.avro"
    assert main(["inspect", str(items)]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith(
        f"{items}: not an events file: it holds attune.item.ItemUpdate records (an item "
        "catalogue): "
    )
    assert "dead letter" not in line and "MISSING_FIELD" not in line


def test_other_records_are_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.avro"
    schema = {
        "type": "record",
        "name": "Other",
        "namespace": "x.y",
        "fields": [{"name": "a", "type": "int"}],
    }
    with other.open("wb") as fh:
        fastavro.writer(fh, schema, [{"a": 1}])
    assert main(["inspect", str(other)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"attune inspect: {other}: not an events file: it holds x.y.Other records "
        "(attune inspect reads attune.event.Event files)"
    )


def test_dead_letter_reasons_are_cut_short(tmp_path: Path) -> None:
    """An events file whose writer schema cannot be resolved: its reasons quote schemas."""
    wrong = tmp_path / "wrong.avro"
    names = ["x" * 50 + str(i) for i in range(40)]
    schema = {
        "type": "record",
        "name": "Event",
        "namespace": "attune.event",
        "fields": [{"name": name, "type": "string"} for name in names],
    }
    with wrong.open("wb") as fh:
        fastavro.writer(fh, schema, [dict.fromkeys(names, "v" * 100)])
    summary = summarize(wrong)
    assert summary.dead_letters >= 1
    assert summary.dead_examples
    assert all(len(e) <= REASON_CHARS + len("record 0: ") for e in summary.dead_examples)
