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


def test_the_latency_bench_polls_last_seen_ms_out_of_the_profile_string() -> None:
    # bench/latency.py's poll, against a real server as the bench runs it (here for the
    # server this module needs anyway).
    from attune.bench.latency import LAST_SEEN_AT, POLL_SCRIPT
    from attune.operators.redis_keys import encode_profile

    with redis_memory.OwnRedis() as client:
        client.set("a", encode_profile({"events": "1", "last_seen_ms": "17", "device_top": "x"}))
        client.set("b", encode_profile({"first_seen_ms": "5"}))  # no last_seen_ms yet
        client.set("c", encode_profile({"last_seen_ms": "99"}))  # the last value written
        keys = ("a", "b", "missing", "c")
        assert client.eval(POLL_SCRIPT, len(keys), *keys, LAST_SEEN_AT) == b"17,,,99"
