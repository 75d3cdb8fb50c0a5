"""``attune topics list|create`` against the real broker print their result, not kafka-python's
connection chatter (issue 16, finding 10: about 20 INFO lines)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from attune.flows import topics
from tests.unit.test_docs import ROOT, docs_env, topic_env

pytestmark = pytest.mark.integration


def test_topics_create_and_list_print_only_their_lines(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"test.docs-cli.{uuid.uuid4().hex[:10]}."
    env = docs_env(
        tmp_path,
        {"ATTUNE_KAFKA_BOOTSTRAP": kafka_bootstrap, **topic_env(prefix)},
    )
    try:
        for action in ("create", "list"):
            done = subprocess.run(
                [sys.executable, "-m", "attune.flows.cli", "topics", action, "--partitions", "1"]
                if action == "create"
                else [sys.executable, "-m", "attune.flows.cli", "topics", action],
                check=False,
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
            assert " kafka." not in done.stderr, done.stderr  # no kafka-python log line
            assert f"{prefix}events" in done.stdout
    finally:
        mine = [t for t in topics.list_topics(kafka_bootstrap) if t.startswith(prefix)]
        if mine:
            topics.delete_topics(kafka_bootstrap, mine)
