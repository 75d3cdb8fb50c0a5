"""The login hand-over survives a restart from a recovery store whose steps disagree.

Bytewax 0.21 writes each step's snapshots of an epoch in its own transaction as that step
closes the epoch, and its worker frontier (the resume epoch) only after all of them. A
SIGKILL in between leaves some steps' snapshots of the epoch in the store and not
others'; the restart resumes from that epoch, and its own, differently cut, epochs
overwrite only the keys they touch (``src/recovery.rs``: nothing deletes snapshots at or
after the resume epoch). A later restart can then load the identity step's state from
the killed execution (linked, its history handed over) with user states from the
restarted one (which never received that history), and the source replays the IDENTIFY.
The test builds that store directly: a run up to the IDENTIFY, and in it the identity
step's state of a run that went one event further.
"""

from __future__ import annotations

import pickle
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import timedelta
from pathlib import Path

from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import run_main

from attune.flows.embedded import LocalStore
from attune.flows.personalize import build_flow
from attune.flows.rebuild import read_states
from attune.flows.settings import Settings
from attune.operators import snapshots
from attune.operators.events import Event, EventType, Identify, PageView
from attune.operators.identity import IdentityState
from attune.operators.sources import EventListSource
from attune.operators.user_state import UserState

SETTINGS = Settings.from_env().replace(kafka_bootstrap="", redis_url="")
IDENTITY_STEP = "attune_personalize.identity"
T0 = 1_767_571_200_000
ANON, USER = "anon-1", "u1"


def _view(n: int, minute: int, *, user: str | None = None, anon: str | None = None) -> Event:
    return Event(f"e{n}", EventType.PAGE_VIEW, T0 + minute * 60_000, PageView(), user, anon)


def stream() -> list[Event]:
    """An anonymous visitor's 6 views, the user's own 2, the login, 2 more of the user's."""
    events = [_view(i, i, anon=ANON) for i in range(6)]
    events += [_view(10, 7, user=USER), _view(11, 8, user=USER)]
    events.append(Event("login", EventType.IDENTIFY, T0 + 9 * 60_000, Identify(), USER, ANON))
    events += [_view(12, 10, user=USER, anon=ANON), _view(13, 11, user=USER)]
    return events


LOGIN = 8  # index of the IDENTIFY in stream()


def run(events: list[Event], db: Path | None, store: LocalStore) -> None:
    """The flow over ``events`` (2 a batch, one epoch a batch), from ``db`` if given."""

    def make() -> Iterator[Event]:
        return iter(events)

    source = EventListSource(
        make, allowed_lateness_ms=SETTINGS.allowed_lateness_s * 1000, batch_size=2
    )
    flow = build_flow(SETTINGS, source=source, sinks=store.sinks("m"), items=[])
    if db is None:
        run_main(flow)
    else:
        run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(str(db)))


def new_store(path: Path) -> Path:
    path.mkdir()
    init_db_dir(path, 1)
    return path


def identity_row(db: Path, key: str) -> tuple[int, bytes]:
    """The newest snapshot of ``key`` in the identity step: ``(epoch, serialized change)``."""
    with closing(sqlite3.connect(db / "part-0.sqlite3")) as conn, conn:
        row = conn.execute(
            "SELECT snap_epoch, ser_change FROM snaps WHERE step_id = ? AND state_key = ?"
            " ORDER BY snap_epoch DESC LIMIT 1",
            (IDENTITY_STEP, key),
        ).fetchone()
    assert row is not None, f"no identity snapshot of {key} in {db}"
    return int(row[0]), bytes(row[1])


def put_identity_row(db: Path, key: str, change: bytes) -> None:
    """``change`` as the identity step's newest snapshot of ``key`` before the resume epoch."""
    with closing(sqlite3.connect(db / "part-0.sqlite3")) as conn, conn:
        (epoch,) = conn.execute(
            "SELECT MAX(snap_epoch) FROM snaps WHERE step_id = ? AND state_key = ?",
            (IDENTITY_STEP, key),
        ).fetchone()
        conn.execute(
            "UPDATE snaps SET ser_change = ?"
            " WHERE step_id = ? AND state_key = ? AND snap_epoch = ?",
            (change, IDENTITY_STEP, key, epoch),
        )


def test_a_replayed_login_hands_the_history_over_again_to_a_user_state_that_lacks_it(
    tmp_path: Path,
) -> None:
    events = stream()
    clean = LocalStore()
    run(events, None, clean)
    expected = int(clean.profiles[USER]["events"])
    assert expected == 11 and ANON not in clean.profiles  # 6 handed over + 5 of the user's

    # The killed execution: it got past the login, so its identity state is linked.
    ahead = new_store(tmp_path / "ahead")
    run(events[: LOGIN + 1], ahead, LocalStore())
    _, linked = identity_row(ahead, ANON)
    state = _state(linked)
    assert isinstance(state, IdentityState) and state.user_id == USER and state.buffer

    # The restarted execution committed the epochs before the login only; its store
    # takes the killed execution's identity snapshot (written, never overwritten).
    mixed = new_store(tmp_path / "mixed")
    run(events[:LOGIN], mixed, LocalStore())
    put_identity_row(mixed, ANON, linked)
    users = dict(read_states(mixed))
    assert isinstance(users[ANON], UserState) and users[ANON].activity.events == 6
    assert users[USER].activity.events == 2  # the history has not reached the user

    # The restart from that store replays the login.
    after = LocalStore()
    run(events, mixed, after)
    assert int(after.profiles[USER]["events"]) == expected
    users = dict(read_states(mixed))
    assert ANON not in users  # the anonymous key was forgotten
    assert users[USER].activity.events == expected


def _state(change: bytes) -> object:
    """The state in a serialized ``StateChange`` of the recovery store."""
    return snapshots.loads(pickle.loads(change))
