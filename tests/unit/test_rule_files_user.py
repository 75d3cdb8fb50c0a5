"""A user's own rule files (issue 16): a segments file without the shipped segments, and
disabled trigger rules that say no more than their name."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from attune.operators.rule_files import (
    TriggerRuleError,
    load_rules,
    load_trigger_rules,
    parse_trigger_rules,
)
from attune.operators.triggers import KINDS

OWN_SEGMENTS = """segments:
  - name: big_cart
    description: a cart worth 50.00 or more
    condition: {feature: cart_value_minor, op: ">=", value: 5000}
"""


def test_own_segments_without_high_value_skip_the_shipped_rule_that_needs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 2: the shipped ``high_value_cart_offer`` needs ``high_value``; a segments file
    without it was a start-up failure (``unknown segment 'high_value'``)."""
    own = tmp_path / "segments.yaml"
    own.write_text(OWN_SEGMENTS)
    segments = load_rules(own).names
    assert "high_value" not in segments
    with caplog.at_level(logging.WARNING, logger="attune.operators.rule_files"):
        rules = load_trigger_rules(segments=segments, kinds=KINDS)
    assert "high_value_cart_offer" not in rules.names
    # not_in_segment on a segment nobody is in always holds: the plain reminder stays.
    assert "cart_reminder" in rules.names
    (record,) = caplog.records
    message = record.getMessage()
    assert "\n" not in message
    assert message.endswith(
        "skipped shipped trigger rule(s) needing a segment your segments file does not "
        "define: high_value_cart_offer (in_segment high_value)"
    )


def test_a_user_file_that_disables_the_rule_silences_the_report(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    own = tmp_path / "segments.yaml"
    own.write_text(OWN_SEGMENTS)
    mine = tmp_path / "mine.yaml"
    mine.write_text("rules:\n  - name: high_value_cart_offer\n    enabled: false\n")
    with caplog.at_level(logging.WARNING, logger="attune.operators.rule_files"):
        rules = load_trigger_rules(extra=mine, segments=load_rules(own).names, kinds=KINDS)
    assert caplog.records == []
    assert "cart_reminder" in rules.names


def test_the_shipped_segments_keep_every_shipped_rule(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="attune.operators.rule_files"):
        rules = load_trigger_rules(segments=load_rules().names, kinds=KINDS)
    assert caplog.records == []
    assert rules.names[:2] == ("high_value_cart_offer", "cart_reminder")


def test_a_user_rule_on_an_unknown_segment_is_still_an_error(tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text(
        "rules:\n  - name: vip\n    description: d\n    when: {in_segment: staff}\n"
        "    publish: {}\n"
    )
    with pytest.raises(TriggerRuleError, match="unknown segment 'staff'"):
        load_trigger_rules(extra=mine, segments=load_rules().names, kinds=KINDS)


def test_a_disabled_rule_needs_no_description_nor_action() -> None:
    """Finding 9: ``enabled: false`` demanded a description and an action."""
    rules = parse_trigger_rules(
        "rules:\n  - name: cart_reminder\n    enabled: false\n", kinds=KINDS
    )
    assert rules.names == ()  # parsed, and off
    with pytest.raises(TriggerRuleError, match="missing 'description'"):
        parse_trigger_rules("rules:\n  - name: r\n    publish: {}\n")
    with pytest.raises(TriggerRuleError, match="exactly one action"):
        parse_trigger_rules("rules:\n  - name: r\n    description: d\n")
    # What a disabled rule does say is still checked.
    with pytest.raises(TriggerRuleError, match="cooldown"):
        parse_trigger_rules("rules:\n  - name: r\n    enabled: false\n    cooldown: 6x\n")


def test_attune_run_with_own_segments_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same through ``attune run --segments``: it ran into ``flows/rules.yaml:37: rule
    'high_value_cart_offer': unknown segment 'high_value'`` before any event."""
    from attune.flows.cli import main

    own = tmp_path / "segments.yaml"
    own.write_text(OWN_SEGMENTS)
    report = tmp_path / "r.json"
    with caplog.at_level(logging.WARNING, logger="attune.operators.rule_files"):
        code = main(
            ["run", "--segments", str(own), "--users", "5", "--days", "1", "--report", str(report)]
        )
    assert code == 0, capsys.readouterr().err
    assert report.is_file()
    mine = [r for r in caplog.records if r.name == "attune.operators.rule_files"]
    assert [r.getMessage().split(": ", 1)[1] for r in mine] == [
        "skipped shipped trigger rule(s) needing a segment your segments file does not "
        "define: high_value_cart_offer (in_segment high_value)"
    ]
