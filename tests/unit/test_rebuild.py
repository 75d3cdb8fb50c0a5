"""``attune rebuild-redis``: the users' keys rebuilt from a real Bytewax recovery store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import run_main

from attune.bench.chaos import profile_differences
from attune.flows.embedded import LocalStore
from attune.flows.personalize import build_flow
from attune.flows.rebuild import (
    RecoveryStoreError,
    read_states,
    rebuild,
    resume_epoch,
    user_writes,
)
from attune.flows.settings import Settings
from attune.operators.events import Event
from attune.operators.redis_sink import ProfileWrite, SegmentsWrite
from attune.operators.sources import EventListSource
from attune.operators.user_state import UserState
from attune.workload.generator import GeneratorConfig, generate

SETTINGS = Settings.from_env().replace(kafka_bootstrap="", redis_url="")


@pytest.fixture(scope="module")
def recovered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LocalStore, object]:
    """A run of the flow with a recovery store: the store and what the flow wrote."""
    g = generate(GeneratorConfig(users=60, days=2, seed=11))
    events = tuple(g.events)

    def make() -> Iterator[Event]:
        return iter(events)

    db = tmp_path_factory.mktemp("recovery")
    init_db_dir(db, 2)
    store = LocalStore()
    source = EventListSource(make, allowed_lateness_ms=SETTINGS.allowed_lateness_s * 1000)
    flow = build_flow(SETTINGS, source=source, sinks=store.sinks("m"), items=g.items)
    run_main(flow, recovery_config=RecoveryConfig(str(db)))
    return db, store, g.truth


def test_the_rebuilt_keys_are_what_the_flow_wrote_last(
    recovered: tuple[Path, LocalStore, object],
) -> None:
    db, store, truth = recovered
    assert resume_epoch(db) is not None
    states = {k: s for k, s in read_states(db) if isinstance(s, UserState)}
    profiles: dict[str, dict[str, str | None]] = {}
    for state in states.values():
        writes = user_writes(state)
        if not writes:
            continue
        profile, segments = writes
        assert isinstance(profile, ProfileWrite) and isinstance(segments, SegmentsWrite)
        assert profile.fields == store.profiles[state.user_id], state.user_id
        assert set(segments.entered) == store.segments.get(state.user_id, set())
        profiles[state.user_id] = dict(profile.fields)
    # every user the flow wrote a profile for is rebuilt, and the truth holds for them
    assert set(profiles) == set(store.profiles) and len(profiles) > 40
    assert profile_differences(profiles, truth) == {}  # type: ignore[arg-type]


def test_a_wrong_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(RecoveryStoreError, match="does not exist"):
        resume_epoch(tmp_path / "nope")
    with pytest.raises(RecoveryStoreError, match=r"no Bytewax recovery partitions"):
        rebuild(tmp_path, SETTINGS.replace(redis_url="redis://127.0.0.1:1/0"))
