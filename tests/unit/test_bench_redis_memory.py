"""``python -m attune.bench.redis_memory`` end to end at a tiny size, on a real redis-server.

It starts its own server on a free loopback port (the bench's :class:`OwnRedis`), so it
needs the binary; without one it is skipped, saying so.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest

from attune.bench import redis_memory

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed (on PATH)"
)


def test_the_bench_measures_both_layouts_and_judges_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "memory.json"
    argv = ["--users", "12", "--days", "1", "--small", "20", "--large", "60", "--sample", "5"]
    assert redis_memory.main([*argv, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "previous (hash, set, recs v2)" in printed and "current" in printed
    figures = {f["layout"]: f for f in orjson.loads(out.read_bytes())["figures"]}
    previous, current = figures["previous (hash, set, recs v2)"], figures["current"]
    for f in (previous, current):
        assert f["users"] > 0 and f["slope_b"] > 0 and f["usage_b"] > 0
        verdicts = (
            redis_memory.verdict(f["slope_b"], 400),
            redis_memory.verdict(f["usage_b"], 300),
        )
        assert all(v in printed for v in verdicts)
    assert current["usage_b"] < previous["usage_b"]  # the compact layout is smaller
    assert {"profile (string)", "profile (hash)"} <= {*previous["value_b"], *current["value_b"]}


def test_synthetic_ids_are_distinct_and_as_long_as_their_source() -> None:
    ids = {redis_memory.synthetic_id("uffac1148d3", i) for i in range(1000)}
    assert len(ids) == 1000 and {len(i) for i in ids} == {11}
    assert len(redis_memory.synthetic_id("x" * 100, 1)) == 100
