"""README.md stays true: its test command is what CI runs, its settings table is generated."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from attune.flows.settings import Settings, env_name, reference_markdown

ROOT = Path(__file__).resolve().parents[2]


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second() -> None:
    readme = (ROOT / "README.md").read_text()
    run_job, run_tests = (block.strip() for block in _bash_blocks(readme)[:2])
    assert "attune" in run_job
    assert "pytest" in run_tests
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert run_tests in ci_lines


def test_configuration_reference_is_generated_from_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- config-reference:start -->\n")[1].split(
        "<!-- config-reference:end -->"
    )[0]
    assert table == reference_markdown()


def test_settings_read_the_environment_and_mask_secrets() -> None:
    s = Settings.from_env(
        {env_name("redis_password"): "hunter2", "ATTUNE_REDIS_TTL_S": "60", "OTHER": "x"}
    )
    assert s.redis_ttl_s == 60
    assert s.masked()["redis_password"] == "***"
    assert "hunter2" not in repr(s)


def test_bad_setting_names_the_variable() -> None:
    with pytest.raises(ValueError, match="ATTUNE_PARTITIONS='three' is not an integer"):
        Settings.from_env({"ATTUNE_PARTITIONS": "three"})


def test_redis_doc_lists_the_profile_fields() -> None:
    from attune.operators.features import FEATURES, PROFILE_FIELDS

    doc = (ROOT / "docs" / "redis.md").read_text()
    table = doc.split("<!-- profile-fields:start -->\n")[1].split("<!-- profile-fields:end -->")[0]
    expected = ["| Field | Type | Meaning |", "|---|---|---|"] + [
        f"| `{name}` | {FEATURES[name][0]} | {FEATURES[name][1]} |" for name in PROFILE_FIELDS
    ]
    assert table == "\n".join(expected) + "\n"


def test_readme_command_table_lists_every_cli_command() -> None:
    """Every ``attune`` subcommand (and every benchmark of ``attune bench``) has a row, and
    every option a row shows is one its command takes."""
    import argparse

    from attune.flows.cli import build_parser

    def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return dict(sub.choices)

    top = commands(build_parser())
    expected = [f"attune {name}" for name in top if name != "bench"]
    expected += [f"attune bench {name}" for name in commands(top["bench"])]
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Commands\n\n")[1].split("\n\n")[0]
    rows = [line.split("|")[1].strip().strip("`") for line in table.splitlines()[2:]]
    missing = [c for c in expected if not any(re.match(rf"{c}(\s|$)", row) for row in rows)]
    assert len(expected) >= 11
    assert missing == []
    unknown = []
    for row in rows:
        words = row.split()
        if words[0] != "attune":
            continue  # python -m bytewax.run
        parser = top[words[1]]
        if words[1] == "bench":
            parser = commands(parser)[words[2]]
        for flag in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", row):
            if flag not in parser._option_string_actions:
                unknown.append((row, flag))
    assert unknown == []


def test_a_misspelt_attune_variable_is_warned_about_with_the_setting_it_resembles(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 16, finding 10: ``ATTUNE_REDIS_URI`` was ignored in silence."""
    env = {"ATTUNE_KAFKA_BOOTSTRAPS": "k:1", "ATTUNE_REDIS_URL": "redis://r:1/0"}
    with caplog.at_level(logging.WARNING, logger="attune.operators.settings"):
        settings = Settings.from_env(env)
        Settings.from_env(env)  # once per process and name
    assert settings.kafka_bootstrap == "" and settings.redis_url == "redis://r:1/0"
    assert [r.getMessage() for r in caplog.records] == [
        "ATTUNE_KAFKA_BOOTSTRAPS is not an Attune setting and is ignored "
        "(did you mean ATTUNE_KAFKA_BOOTSTRAP?)"
    ]
