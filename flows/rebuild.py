"""``attune rebuild-redis``: rewrite every live user's Redis keys from the flow's recovery store.

Redis is a cache of the flow's state: a Redis restarted empty (no persistence, a
failover to an empty replica, a ``FLUSHDB`` by mistake) loses every user's keys,
and the flow rewrites a user's keys only when that user's next batch comes.
This command reads the per-user states the flow snapshotted into its Bytewax
recovery store (``-r DIR``) and writes, for each user whose state holds events
and who was not erased, what the flow writes after that user's batch: the
profile (:func:`~attune.operators.profiles.profile_write`) and the segment hash
and audience memberships (rule segments and persona), through the flow's own
Redis sink (same encoding, same TTLs, one pipeline per batch of users).

What it does not rewrite, and why: recommendations (ranked with the shared
model snapshot; the user's next batch writes them, and
:class:`~attune.clients.recommendations.RecommendationClient` falls back to
trending meanwhile), aliases of anonymous ids (decided with the consent the
identity step held at the link), and the shared keys the learner publishes
(models, trending: written again at its next publication).

Bytewax 0.21's recovery store is a directory of SQLite partitions
(``part-<i>.sqlite3``, made by ``python -m bytewax.recovery DIR N``); the states
are rows of its ``snaps`` table, ``(step_id, state_key, snap_epoch, ser_change)``
with ``ser_change`` a pickle of what the step's ``snapshot()`` returned (``NULL``:
the state was discarded). A restart resumes from the epoch where every worker
had got to in the last execution, with each key's latest snapshot *before* that
epoch (bytewax src/recovery.rs); :func:`read_states` reads the same cut, so the
rebuild writes what a restart would hold. Run it while the flow is stopped or
running: it only reads the store.
"""

from __future__ import annotations

import argparse
import contextlib
import pickle
import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attune.flows.settings import Settings
from attune.operators import snapshots
from attune.operators.membership import audiences
from attune.operators.profiles import profile_write
from attune.operators.redis_sink import (
    RedisConfig,
    RedisOp,
    RedisSink,
    SegmentsWrite,
)
from attune.operators.user_state import UserState

#: The flow's per-user state step (``attune_personalize`` is the flow's id).
USER_STEP = "attune_personalize.user_state"
#: Users written per pipeline.
BATCH = 500


class RecoveryStoreError(RuntimeError):
    """The recovery directory is missing, empty or not Bytewax's; the message says which."""


def _partitions(recovery: Path) -> list[Path]:
    parts = sorted(recovery.glob("part-*.sqlite3"))
    if not recovery.is_dir():
        raise RecoveryStoreError(
            f"recovery directory {recovery} does not exist; "
            "pass the -r directory the flow runs with"
        )
    if not parts:
        raise RecoveryStoreError(
            f"{recovery} holds no Bytewax recovery partitions (part-*.sqlite3); pass the -r "
            "directory the flow runs with"
        )
    return parts


def resume_epoch(recovery: Path) -> int | None:
    """The epoch a restart of the flow would resume from (``None``: it never ran):
    over the last execution, the smallest frontier any worker reached."""
    last_ex = -1
    workers = 0
    start = 0
    frontier: dict[int, int] = {}
    parts = _partitions(recovery)
    for part in parts:
        with contextlib.closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True)) as db:
            row = db.execute(
                "SELECT ex_num, worker_count, resume_epoch FROM exs ORDER BY ex_num DESC LIMIT 1"
            ).fetchone()
            if row is not None and row[0] > last_ex:
                last_ex, workers, start = int(row[0]), int(row[1]), int(row[2])
    if last_ex < 0:
        return None
    for part in parts:
        with contextlib.closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True)) as db:
            for worker, front in db.execute(
                "SELECT worker_index, worker_frontier FROM fronts WHERE ex_num = ?", (last_ex,)
            ):
                frontier[int(worker)] = max(frontier.get(int(worker), start), int(front))
    return min(frontier.get(w, start) for w in range(workers))


def read_states(recovery: Path, step_id: str = USER_STEP) -> Iterator[tuple[str, Any]]:
    """``(key, state)`` of every live key of ``step_id`` in the store, as a restart
    would load them (latest snapshot before the resume epoch, discarded keys left out)."""
    epoch = resume_epoch(recovery)
    if epoch is None:
        return
    for part in _partitions(recovery):
        with contextlib.closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True)) as db:
            rows = db.execute(
                "SELECT s.state_key, s.ser_change FROM snaps s JOIN ("
                " SELECT state_key, MAX(snap_epoch) AS e FROM snaps"
                " WHERE step_id = ?1 AND snap_epoch < ?2 GROUP BY state_key"
                ") m ON s.state_key = m.state_key AND s.snap_epoch = m.e"
                " WHERE s.step_id = ?1",
                (step_id, epoch),
            )
            for key, blob in rows:
                if blob is not None:
                    yield str(key), snapshots.loads(pickle.loads(blob))


def user_writes(state: UserState) -> list[RedisOp]:
    """What the flow writes for ``state`` after the user's batch: nothing for an erased
    user (a tombstone) or one without events (consent withdrawn emptied it)."""
    if state.erased_at is not None or not state.activity.events:
        return []
    return [
        profile_write(state),
        SegmentsWrite(state.user_id, audiences(state.membership), ()),
    ]


@dataclass(frozen=True)
class RebuildReport:
    states: int
    users: int
    epoch: int | None


def rebuild(recovery: Path, settings: Settings) -> RebuildReport:
    """Write every live user's keys from ``recovery`` to the Redis of ``settings``."""
    epoch = resume_epoch(recovery)  # a wrong directory fails before Redis is asked
    sink = RedisSink(RedisConfig.from_settings(settings)).build("rebuild_redis", 0, 1)
    states = users = 0
    batch: list[RedisOp] = []
    try:
        for _key, state in read_states(recovery):
            states += 1
            if not isinstance(state, UserState):
                continue
            ops = user_writes(state)
            if ops:
                users += 1
                batch += ops
            if len(batch) >= 2 * BATCH:
                sink.write_batch(batch)
                batch = []
        if batch:
            sink.write_batch(batch)
    finally:
        sink.close()
    return RebuildReport(states, users, epoch)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``attune rebuild-redis`` on the CLI's subparsers."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "rebuild-redis",
        help="rewrite every live user's profile and segments in Redis from the recovery store",
        description="After Redis lost its data: rewrite each live user's profile, segment "
        "hash and audience memberships from the flow's Bytewax recovery store, as the flow "
        "would after the user's next batch (docs/reliability.md). Redis from ATTUNE_REDIS_URL "
        "or --redis.",
    )
    parser.add_argument("--recovery-dir", required=True, help="the flow's -r directory")
    parser.add_argument("--redis", help="Redis URL (ATTUNE_REDIS_URL)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env().replace(redis_url=args.redis)
    if not settings.redis_url:
        raise ValueError("no Redis to rebuild: set ATTUNE_REDIS_URL or pass --redis")
    report = rebuild(Path(args.recovery_dir), settings)
    print(
        f"rewrote {report.users} users' profiles and segments from {report.states} states "
        f"(recovery epoch {report.epoch}) to {RedisConfig.from_settings(settings).safe_url}",
        file=sys.stdout,
    )
    return 0
