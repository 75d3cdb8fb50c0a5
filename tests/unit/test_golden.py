"""Behaviour is kept: everything the flow writes for two fixed workloads (every Redis
operation with its value and TTL, trigger, segment change, erasure confirmation, dead
letter and model snapshot) hashes to the digest recorded in ``tests/data/golden_digest.json``.

A change that means to change behaviour records a new digest in the same commit
(``PYTHONHASHSEED=0 python -m tests.golden > tests/data/golden_digest.json``) and says
why; ``--dump DIR`` writes the items to diff against the previous commit's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[2]
RECORDED = ROOT / "tests" / "data" / "golden_digest.json"


def _digest(hash_seed: str) -> dict[str, dict[str, object]]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    env = {k: v for k, v in env.items() if not k.startswith("ATTUNE_")}
    done = subprocess.run(
        [sys.executable, "-m", "tests.golden"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        check=True,
        timeout=600,
    )
    digest: dict[str, dict[str, object]] = orjson.loads(done.stdout)
    return digest


def test_the_flow_writes_exactly_what_it_wrote_before() -> None:
    now = _digest("0")
    before = orjson.loads(RECORDED.read_bytes())
    changed = {
        f"{workload}.{kind}": (before[workload].get(kind), now[workload].get(kind))
        for workload in before.keys() | now.keys()
        for kind in before.get(workload, {}).keys() | now.get(workload, {}).keys()
        if before.get(workload, {}).get(kind) != now.get(workload, {}).get(kind)
    }
    assert changed == {}


def test_what_the_flow_writes_does_not_depend_on_string_hashing() -> None:
    """Issue 15: no output may depend on an iteration order that ``hash()`` decides."""
    assert _digest("1") == orjson.loads(RECORDED.read_bytes())
