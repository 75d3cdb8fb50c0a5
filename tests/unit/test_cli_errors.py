"""The CLI's error line names the cause, not the wrapper around it (issues 15 and 16:
`attune run --input` with a missing file ended in Bytewax's "error calling
`StatefulSourcePartition.next_batch`" and never said "no such file")."""

from __future__ import annotations

from pathlib import Path

import pytest

from attune.flows.cli import main


def test_a_missing_input_file_is_named_in_the_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.avro"
    code = main(["run", "--input", str(missing), "--report", str(tmp_path / "r.json")])
    assert code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("attune run: ")
    assert "No such file or directory" in last and str(missing) in last
    assert "next_batch" not in last
