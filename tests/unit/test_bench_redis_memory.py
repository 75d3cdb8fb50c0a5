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
    argv += ["--alias-buckets", "1"]  # at 60 users, more buckets would mostly be new keys
    assert redis_memory.main([*argv, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert list(redis_memory.LAYOUTS) == [
        "previous (hash, set, recs v2)",
        "three keys (string, hash, v3)",
        "current (one hash per user)",
    ]
    assert all(layout in printed for layout in redis_memory.LAYOUTS)
    figures = {f["layout"]: f for f in orjson.loads(out.read_bytes())["figures"]}
    previous, three, current = (figures[layout] for layout in redis_memory.LAYOUTS)
    for f in (previous, three, current):
        assert f["users"] > 0 and f["slope_b"] > 0 and f["usage_b"] > 0
        verdicts = (
            redis_memory.verdict(f["slope_b"], 400),
            redis_memory.verdict(f["usage_b"], 300),
        )
        assert all(v in printed for v in verdicts)
    assert current["usage_b"] < three["usage_b"] < previous["usage_b"]  # each one smaller
    assert {"profile (string)", "profile (hash)"} <= {*previous["value_b"], *three["value_b"]}
    assert set(current["value_b"]) == {"user hash (hash)"}  # one key per user
    assert current["keys_per_user"] == 1 and three["keys_per_user"] > 1
    # every sampled hash is a listpack: no value longer than hash-max-listpack-value
    assert set(current["encodings"]) == {"user hash: listpack"}
    # an alias is a key in the earlier layouts, a field of an alias bucket in the current
    assert three["part_slope_b"]["aliases"] > 100
    assert current["part_slope_b"]["aliases"] < three["part_slope_b"]["aliases"] / 2


def test_synthetic_ids_are_distinct_and_as_long_as_their_source() -> None:
    ids = {redis_memory.synthetic_id("uffac1148d3", i) for i in range(1000)}
    assert len(ids) == 1000 and {len(i) for i in ids} == {11}
    assert len(redis_memory.synthetic_id("x" * 100, 1)) == 100


def test_the_latency_bench_polls_last_seen_ms_out_of_the_profile_in_the_users_hash() -> None:
    # bench/latency.py's poll, against a real server as the bench runs it (here for the
    # server this module needs anyway), on hashes as the sink writes them.
    from attune.bench.latency import LAST_SEEN_AT, POLL_SCRIPT, PROFILE_PIECES
    from attune.operators.redis_sink import ProfileWrite, RedisOp, SegmentsWrite, plan

    long = "x" * 150  # a profile in three pieces, last_seen_ms in the second
    ops: list[RedisOp] = [
        ProfileWrite("a", {"events": "1", "last_seen_ms": "17", "device_top": "x"}),
        ProfileWrite("b", {"first_seen_ms": "5"}),  # no last_seen_ms yet
        ProfileWrite("c", {"last_seen_ms": "99"}),  # the last value written
        ProfileWrite("d", {"events": "9" * 60, "last_seen_ms": "1767", "device_top": long}),
        SegmentsWrite("e", entered=("vip",)),  # a hash without a profile
    ]
    with redis_memory.OwnRedis() as client:
        for command in plan(ops):
            client.execute_command(*command)
        keys = [redis_memory.KEYS.user(u) for u in ("a", "b", "missing", "c", "d", "e")]
        polled = client.eval(POLL_SCRIPT, len(keys), *keys, LAST_SEEN_AT, *PROFILE_PIECES)
        # last_seen_ms as format 3 stores it: base 36 (the bench reads it with int(x, 36))
        assert polled == b"h,,,2r,1d3,"
