"""``attune chaos`` on a shortened schedule, on the test session's real broker and Redis.

Three SIGKILLs of the flow at seeded points, the broker frozen (SIGSTOP) for a few
seconds, and one process of a 2-process cluster killed: after each, restarted from
the recovery store, the profiles in Redis equal the ground truth (0 lost, 0 counted
twice) and every trigger id of a clean run is published, none with a second id for
one cause. The full schedule (20 kills, 20 s broker pauses, Redis stopped and frozen)
is the documented command in docs/reliability.md, "Chaos".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from attune.bench.chaos import Schedule, Servers, format_table, run_schedule
from attune.flows.local import LocalServers
from attune.flows.settings import Settings

pytestmark = pytest.mark.integration


def test_short_chaos_schedule_loses_and_doubles_nothing(
    local_test_settings: Settings, local_servers: LocalServers, tmp_path: Path
) -> None:
    schedule = Schedule(
        users=150,
        days=3,
        seed=21,
        kills=3,
        broker_pause_s=3.0,
        faults=("sigkill", "broker-freeze", "cluster-kill"),
        batch_size=1000,  # the default; the full schedule's 250 is for 20 kills
    )
    rows = run_schedule(Servers(local_test_settings, local_servers), schedule, tmp_path)
    table = format_table(rows)
    assert [r.fault for r in rows] == ["none", "sigkill", "broker-freeze", "cluster-kill"], table
    reference = rows[0]
    assert reference.expected > 5000 and reference.triggers_expected > 20, table
    for row in rows:
        assert row.completed, table
        assert (row.lost, row.twice, row.users_wrong) == (0, 0, 0), table
        assert row.applied == row.expected == reference.expected, table
        assert (row.triggers_missing, row.triggers_beyond_id, row.triggers_extra) == (0, 0, 0)
        assert row.ok, table
    kills = rows[1]
    assert kills.note.startswith("3 kills"), table
    assert kills.recover_s is not None, table
