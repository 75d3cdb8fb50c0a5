"""The chaos command's checker (attune.bench.chaos): pure functions, no servers."""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

import orjson
import pytest

from attune.bench.chaos import (
    FAULTS,
    Row,
    TriggerKey,
    check_triggers,
    count_events,
    format_table,
    kill_points,
    profile_differences,
    resume_epochs,
    schedule_of,
    snapshots_past_resume,
    stray_anonymous,
)
from attune.workload.generator import GeneratorConfig, ground_truth
from attune.workload.truth import GroundTruth


def row(**changes: object) -> Row:
    base: dict[str, object] = dict(
        fault="sigkill", events_in=100, expected=90, applied=90, lost=0, twice=0,
        users_wrong=0, stray_anonymous=0, triggers_expected=5, triggers_published=7,
        triggers_missing=0,
        triggers_repeated=2, triggers_beyond_id=0, triggers_extra=0, restarts=0,
        recover_s=1.5, note="3 kills",
    )  # fmt: skip
    base.update(changes)
    return Row(**base)  # type: ignore[arg-type]


def test_count_events_separates_loss_from_double_counting() -> None:
    # one user short by 2 and another over by 2 must not cancel out
    counts = count_events({"a": 1, "b": 7}, {"a": 3, "b": 5})
    assert (counts.expected, counts.applied, counts.lost, counts.twice) == (8, 8, 2, 2)


def test_count_events_missing_profile_loses_all_its_events() -> None:
    counts = count_events({}, {"a": 4})
    assert (counts.applied, counts.lost, counts.twice) == (0, 4, 0)


def test_count_events_ignores_users_outside_the_truth() -> None:
    # non-exact users (consent restricted, erased) are not compared
    counts = count_events({"a": 3, "restricted": 99}, {"a": 3})
    assert (counts.applied, counts.lost, counts.twice) == (3, 0, 0)


@pytest.fixture(scope="module")
def truth() -> GroundTruth:
    return ground_truth(GeneratorConfig(users=30, days=2, seed=5))


def profiles_of(truth: GroundTruth) -> dict[str, dict[str, str | None]]:
    cols = ("events", "page_views", "product_views", "searches", "add_to_carts", "purchases",
            "revenue_minor", "sessions", "first_seen_ms", "last_seen_ms")  # fmt: skip
    return {u: {c: str(getattr(truth.users[u], c)) for c in cols} for u in truth.exact_users()}


def test_profile_differences_empty_for_the_truth(truth: GroundTruth) -> None:
    assert truth.exact_users()
    assert profile_differences(profiles_of(truth), truth) == {}


def test_profile_differences_names_the_user_and_field(truth: GroundTruth) -> None:
    profiles = profiles_of(truth)
    first, second = truth.exact_users()[:2]
    profiles[first]["purchases"] = str(truth.users[first].purchases + 1)
    del profiles[second]
    diff = profile_differences(profiles, truth)
    assert diff == {
        first: {"purchases": (profiles[first]["purchases"], truth.users[first].purchases)},
        second: "no profile",
    }


def key(i: str, cause: int, kind: str = "cart_abandoned", user: str = "u1") -> TriggerKey:
    return TriggerKey(i, kind, user, cause)


def test_check_triggers_same_id_repeats_are_tolerated() -> None:
    ref = [key("a", 1), key("b", 2)]
    counts = check_triggers(ref, ref + ref + [key("a", 1)])
    assert (counts.missing, counts.repeated, counts.beyond_id, counts.extra) == (0, 3, 0, 0)


def test_check_triggers_a_second_id_for_one_cause_is_a_duplicate() -> None:
    ref = [key("a", 1)]
    counts = check_triggers(ref, [key("a", 1), key("a2", 1)])
    assert (counts.beyond_id, counts.extra, counts.missing) == (1, 1, 0)
    # the same id for another user's cause is not
    other = check_triggers(ref, [key("a", 1), key("c", 1, user="u2")])
    assert other.beyond_id == 0 and other.extra == 1


def test_check_triggers_missing() -> None:
    counts = check_triggers([key("a", 1), key("b", 2), key("c", 3)], [key("b", 2)])
    assert (counts.expected, counts.missing) == (3, 2)


@pytest.mark.parametrize(
    "changes",
    [
        {"lost": 1},
        {"twice": 1},
        {"users_wrong": 1},
        {"stray_anonymous": 1},
        {"triggers_missing": 1},
        {"triggers_beyond_id": 1},
        {"triggers_extra": 1},
        {"completed": False},
    ],
)
def test_a_row_fails_on_any_loss_double_or_missing_trigger(changes: dict[str, object]) -> None:
    assert row().ok
    assert not row(**changes).ok


def test_repeated_trigger_ids_and_restarts_do_not_fail_a_row() -> None:
    assert row(triggers_repeated=40, restarts=3, recover_s=None).ok


def test_table_and_json() -> None:
    text = format_table([row(), row(fault="redis-stop", lost=7, note="died")])
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["fault", "events", "in"]
    assert lines[1].split()[0] == "sigkill" and lines[1].split()[-1] == "yes"
    assert lines[2].split()[0] == "redis-stop" and lines[2].split()[-1] == "NO"
    assert "redis-stop: died" in lines
    doc = orjson.loads(orjson.dumps(row(lost=2).as_dict()))
    assert doc["lost"] == 2 and doc["ok"] is False


def test_kill_points_are_seeded_spaced_and_inside_the_stream() -> None:
    assert kill_points(20, 30_000, 3) == kill_points(20, 30_000, 3)
    assert kill_points(20, 30_000, 3) != kill_points(20, 30_000, 4)
    points = kill_points(20, 30_000, 3)
    assert len(set(points)) == 20 and points == sorted(points)
    assert points[0] > 0 and points[-1] < 30_000
    assert kill_points(0, 100, 1) == []
    with pytest.raises(ValueError, match="do not fit"):
        kill_points(50, 60, 1)


def test_schedule_flags() -> None:
    ns = argparse.Namespace(
        users=50, days=2, seed=1, kills=2, broker_pause=1.5, redis_pause=2.0,
        faults=" sigkill , cluster-kill",
    )  # fmt: skip
    s = schedule_of(ns)
    assert s.faults == ("sigkill", "cluster-kill") and s.kills == 2 and s.broker_pause_s == 1.5
    ns.faults = "sigkill,redis-explode"
    with pytest.raises(ValueError, match="redis-explode"):
        schedule_of(ns)
    ns.faults = ",".join(FAULTS)
    assert schedule_of(ns).faults == FAULTS


def test_resume_epochs_reads_bytewax_recovery_partitions(tmp_path: Path) -> None:
    # the two tables of Bytewax 0.21's partitions it reads (bytewax/src/recovery.rs)
    for part, rows in ((0, [(0, 1), (1, 1), (2, 5)]), (1, [(0, 1), (1, 2), (2, 4)])):
        db = sqlite3.connect(tmp_path / f"part-{part}.sqlite3")
        db.execute("CREATE TABLE exs (ex_num INTEGER, worker_count INTEGER, resume_epoch INTEGER)")
        db.execute("CREATE TABLE snaps (step_id TEXT, state_key TEXT, snap_epoch INTEGER)")
        db.executemany("INSERT INTO exs VALUES (?, 1, ?)", rows)
        db.execute("INSERT INTO snaps VALUES ('s', 'k', ?)", (7 + part,))
        db.commit()
        db.close()
    assert resume_epochs(tmp_path) == ([2, 5], 8)
    assert resume_epochs(tmp_path / "missing") == ([], 0)


def test_snapshots_past_the_resume_epoch_are_counted_per_step(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "part-0.sqlite3")
    db.execute("CREATE TABLE exs (ex_num INTEGER, worker_count INTEGER, resume_epoch INTEGER)")
    db.execute("CREATE TABLE fronts (ex_num INT, worker_index INT, worker_frontier INT)")
    db.execute("CREATE TABLE snaps (step_id TEXT, state_key TEXT, snap_epoch INTEGER)")
    db.executemany("INSERT INTO exs VALUES (?, 1, ?)", [(0, 1), (1, 3)])
    db.execute("INSERT INTO fronts VALUES (1, 0, 5)")  # the restart resumes from epoch 5
    db.executemany(
        "INSERT INTO snaps VALUES (?, ?, ?)",
        [("f.identity", "a", 4), ("f.identity", "a", 5), ("f.user_state", "u", 5),
         ("f.user_state", "v", 6), ("f.user_state", "w", 3)],
    )  # fmt: skip
    db.commit()
    db.close()
    assert snapshots_past_resume(tmp_path) == {"identity": 1, "user_state": 2}
    assert snapshots_past_resume(tmp_path / "missing") == {}


def test_stray_anonymous_profiles(truth: GroundTruth) -> None:
    linked = sorted(a for a, u in truth.anonymous_to_user.items() if a != u)
    assert linked
    profiles: dict[str, object] = {u: {} for u in truth.exact_users()}
    assert stray_anonymous(profiles, truth) == []
    profiles[linked[0]] = {"events": "12"}
    assert stray_anonymous(profiles, truth) == [linked[0]]
