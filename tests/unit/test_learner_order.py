"""Issue 15, item 1: in a replay the shared learners learn in event-time order, so what they
publish does not depend on how the stream is cut into batches (docs/reliability.md, "What
the shared models decide").

The model learner (:class:`~attune.operators.models.ModelLearnerLogic`) and the persona
learner (:class:`~attune.operators.clustering.ClusterLearnerLogic`) are driven here as
Bytewax drives them, with a stream clock that is not live, by the same messages in
different batches, arrival orders and clock readings; and the flow itself is run on a
generated workload at several batch sizes.
"""

from __future__ import annotations

import pickle
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from attune.operators import clustering, models
from attune.operators.clustering import PUBLISH_EVERY as CLUSTER_EVERY
from attune.operators.clustering import ClusterLearnerLogic, ClusterVector, PublishParams
from attune.operators.events import MAX_EVENT_TIME_MS
from attune.operators.models import (
    ModelLearner,
    ModelLearnerLogic,
    ModelSnapshot,
    PublishModels,
    SessionSummary,
    SessionTouch,
)
from tests.golden import run

T0 = 1_767_571_200_000
HOUR = 3_600_000
LATENESS = 600_000
EVERY = 7  # the model learner publishes after every 7 summaries of the order

M = TypeVar("M")


@dataclass
class Clock:
    """A stream clock in a replay: ``now_ms`` the settled time; live only at the end of time
    (as the flow's clock is once a bounded input was read to its end)."""

    settled: int | None = None

    def live(self) -> bool:
        return self.settled is not None and self.settled >= MAX_EVENT_TIME_MS

    def now_ms(self) -> int | None:
        return self.settled


def summary(n: int) -> SessionSummary:
    """Session ``n`` of user ``u{n % 9}``, closed ``n`` minutes after ``T0`` (several close
    at the same time: the user and the start decide between them)."""
    t = T0 + (n // 3) * 60_000
    item = f"i{n % 5:03}"
    touches = (
        SessionTouch(item, t - 50_000, "view"),
        SessionTouch(f"i{(n + 1) % 5:03}", t - 40_000, "view"),
        SessionTouch(f"i{(n + 1) % 5:03}", t - 30_000, "cart"),
    )
    bought = n % 4 == 0
    return SessionSummary(
        f"u{n % 9}",
        t - 50_000 - n,
        t - 30_000,
        touches,
        ((t - 20_000, (item,)),) if bought else (),
        {"cart_lines": 1, "session_add_to_carts": n % 3},
        bought,
        ("vip",) if n % 2 else (),
        closed_ms=t,
    )


def vector(n: int) -> ClusterVector:
    t = T0 + (n // 3) * 60_000
    return ClusterVector(f"u{n % 11}", tuple(float((n * k) % 7) for k in range(8)), t)


def replay(
    make: Callable[[Clock], Any],
    messages: Sequence[M],
    closed: Callable[[M], int],
    sizes: list[int],
    rng: random.Random,
) -> list[Any]:
    """Everything a learner publishes when ``messages`` come in batches of the given
    sizes (cycled), each batch shuffled within the allowed lateness of its arrival (a
    message may come up to 10 minutes of event time after later ones), the clock's
    settled time trailing the newest message read by the lateness; then the end of input."""
    clock = Clock()
    logic = make(clock)
    out: list[Any] = []
    at, k = 0, 0
    while at < len(messages):
        batch = list(messages[at : at + sizes[k % len(sizes)]])
        at += len(batch)
        k += 1
        rng.shuffle(batch)
        newest = max(closed(m) for m in messages[:at])
        clock.settled = newest - LATENESS
        published, _ = logic.on_batch(batch)
        out += published
        if k % 3 == 0:  # a timer poll between batches
            published, _ = logic.on_notify()
            out += published
    published, _ = logic.on_eof()
    return out + list(published)


def _models(clock: Clock) -> ModelLearnerLogic:
    return ModelLearnerLogic(None, {}, publish_every=EVERY, publish_s=3600.0, clock=clock)


def _publications(out: list[PublishModels]) -> list[tuple[Any, ...]]:
    return [(p.version, p.through_ms, p.snapshot, p.trending, p.metrics) for p in out]


SUMMARIES = [summary(n) for n in range(60)]


@pytest.mark.parametrize(("sizes", "seed"), [([1], 1), ([5], 2), ([13, 2, 40], 3), ([60], 4)])
def test_the_model_learner_publishes_the_same_versions_in_any_batching(
    sizes: list[int], seed: int
) -> None:
    """Equal to learning the summaries one by one in (closed, user, start) order and
    publishing after every 7, and at the end; each version says what it was learnt
    through."""
    reference = ModelLearner({})
    expected: list[PublishModels] = []
    for s in sorted(SUMMARIES, key=SessionSummary.order_key):
        reference.learn(s)
        if reference.sessions % EVERY == 0:
            expected.append(reference.publish(through_ms=s.closed_ms))
    expected.append(reference.publish(through_ms=MAX_EVENT_TIME_MS))
    got = replay(_models, SUMMARIES, lambda s: s.closed_ms, sizes, random.Random(seed))
    assert _publications(got) == _publications(expected)
    snaps = [ModelSnapshot.from_bytes(p.snapshot) for p in got]
    assert [s.sessions for s in snaps] == [*range(EVERY, len(SUMMARIES), EVERY), len(SUMMARIES)]
    assert [s.through_ms for s in snaps][-1] == MAX_EVENT_TIME_MS


def test_a_replay_publishes_at_its_own_cadence_and_tailing_live_at_the_other() -> None:
    """A replay publishes after the first ``publish_every`` summaries, then after every
    ``replay_publish_every`` (the flow's ``ATTUNE_MODELS_REPLAY_PUBLISH_EVERY``); a live
    stream after every ``publish_every``."""

    def make(clock: Clock) -> ModelLearnerLogic:
        return ModelLearnerLogic(
            None, {}, publish_every=EVERY, replay_publish_every=25, publish_s=3600.0, clock=clock
        )

    got = replay(make, SUMMARIES, lambda s: s.closed_ms, [13], random.Random(5))
    sessions = [ModelSnapshot.from_bytes(p.snapshot).sessions for p in got]
    assert sessions == [EVERY, 25, 50, len(SUMMARIES)]
    live = make(LiveClock(settled=T0, is_live=True))
    published, _ = live.on_batch(SUMMARIES[:EVERY])
    assert [ModelSnapshot.from_bytes(p.snapshot).sessions for p in published] == [EVERY]
    with pytest.raises(ValueError, match="ATTUNE_MODELS_REPLAY_PUBLISH_EVERY"):
        ModelLearnerLogic(None, {}, replay_publish_every=0)


def test_summaries_wait_for_the_settled_time_and_survive_a_restart() -> None:
    """Nothing closed after the settled time is learnt; a snapshot taken while summaries
    wait restores them, and the run goes on as if uninterrupted."""
    clock = Clock(settled=T0 - 1)
    logic = _models(clock)
    first = SUMMARIES[:30]
    assert logic.on_batch(first)[0] == []  # nothing settled yet
    assert logic.learner.sessions == 0 and len(logic.learner.waiting) == 30
    clock.settled = first[13].closed_ms  # 13 and 14 close at the same time as 12
    out = list(logic.on_batch([])[0])
    assert logic.learner.sessions == 15
    assert [p.through_ms for p in out] == [first[6].closed_ms, first[13].closed_ms]
    again = ModelLearnerLogic(
        logic.snapshot(), {}, publish_every=EVERY, publish_s=3600.0, clock=clock
    )
    assert len(again.learner.waiting) == 15
    clock.settled = None
    rest = [*again.on_batch(SUMMARIES[30:])[0], *again.on_eof()[0]]
    whole = replay(_models, SUMMARIES, lambda s: s.closed_ms, [60], random.Random(0))
    assert _publications(out + rest) == _publications(whole)


def test_an_old_learner_snapshot_restores_without_waiting_summaries() -> None:
    tag, state = ModelLearner({}).__getstate__()
    del state["waiting"]  # a snapshot from before the field
    learner = ModelLearner.__new__(ModelLearner)
    learner.__setstate__((tag, state))
    assert learner.waiting == []
    assert pickle.loads(pickle.dumps(learner)).waiting == []


def _clusters(clock: Clock) -> ClusterLearnerLogic:
    return ClusterLearnerLogic(None, k=3, seed=7, clock=clock)


def _params(out: list[PublishParams]) -> list[bytes]:
    return [p.params.to_json() for p in out]


VECTORS = [vector(n) for n in range(5 * CLUSTER_EVERY + 17)]


@pytest.mark.parametrize(("sizes", "seed"), [([1], 1), ([97], 2), ([250, 3], 3), ([10_000], 4)])
def test_the_persona_learner_publishes_the_same_versions_in_any_batching(
    sizes: list[int], seed: int
) -> None:
    """Mini-batches of 200 vectors in (closed, user) order, one publication after each,
    the rest at the end, in every batching."""
    got = replay(_clusters, VECTORS, lambda v: v.closed_ms, sizes, random.Random(seed))
    reference = replay(_clusters, VECTORS, lambda v: v.closed_ms, [len(VECTORS)], random.Random())
    assert _params(got) == _params(reference)
    assert [p.params.n_learned for p in got] == [
        *range(CLUSTER_EVERY, len(VECTORS), CLUSTER_EVERY),
        len(VECTORS),
    ]


def test_a_persona_learner_snapshot_keeps_the_waiting_vectors() -> None:
    clock = Clock(settled=None)
    logic = _clusters(clock)
    logic.on_batch(VECTORS[:50])
    again = ClusterLearnerLogic(logic.snapshot(), k=3, seed=7, clock=clock)
    assert again.waiting == sorted(VECTORS[:50], key=ClusterVector.order_key)
    old = ClusterLearnerLogic(pickle.dumps(logic.model), k=3, seed=7, clock=clock)
    assert old.waiting == []  # a snapshot of the model alone (before the waiting vectors)


def test_the_flow_publishes_the_same_model_versions_at_any_batch_size() -> None:
    """The generated workload through the flow at 1,000 and 97 events a batch: every
    model publication (the snapshot, the propensity metrics, the persona parameters) and
    every trending write is the same, in the order written to each key."""
    runs = [run(120, 3, 11, batch_size) for batch_size in (1000, 97)]
    by_key: list[dict[str, list[str]]] = []
    for store in runs:
        writes: dict[str, list[str]] = {}  # per key, in the order written
        for kind in ("JsonWrite", "TrendingWrite"):
            for line in store.seen[kind]:
                writes.setdefault(line.split(",", 1)[0], []).append(line)
        by_key.append(writes)
    assert sum(map(len, by_key[0].values())) > 10
    assert by_key[0] == by_key[1]


def test_the_end_of_inputs_summaries_wait_for_the_learners_own_end_of_input() -> None:
    """A clock at the end of time (every partition read to its end) does not say that every
    worker's end-of-input summaries have arrived: they are learnt, in order, at the
    learner's own end of input (with 2 workers they arrived after the clock got there)."""
    clock = Clock(settled=MAX_EVENT_TIME_MS)
    logic = _models(clock)
    last = [
        SessionSummary(f"u{n}", T0 + n, T0 + n, (), (), {}, False, closed_ms=MAX_EVENT_TIME_MS)
        for n in range(3)
    ]
    logic.on_batch([last[2], SUMMARIES[0]])
    assert logic.learner.waiting == [last[2]] and logic.learner.sessions == 1
    logic.on_batch([last[0], last[1]])
    logic.on_notify()
    assert logic.learner.sessions == 1
    (published,), _ = logic.on_eof()
    assert logic.learner.sessions == 4 and not logic.learner.waiting
    assert published.through_ms == MAX_EVENT_TIME_MS


def test_what_waits_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A clock that stands still does not hold more than MAX_WAITING: the oldest are learnt
    (out of the replay's order, the one case where it is lost)."""
    monkeypatch.setattr(models, "MAX_WAITING", 10)
    monkeypatch.setattr(clustering, "MAX_WAITING", 2 * CLUSTER_EVERY)
    logic = _models(Clock(settled=T0 - 1))
    logic.on_batch(SUMMARIES[:25])
    assert len(logic.learner.waiting) == 10 and logic.learner.sessions == 15
    assert logic.learner.waiting == sorted(SUMMARIES, key=SessionSummary.order_key)[15:25]
    clusters = _clusters(Clock(settled=T0 - 1))
    clusters.on_batch(VECTORS[: 3 * CLUSTER_EVERY + 5])
    assert len(clusters.waiting) == CLUSTER_EVERY + 5  # whole mini-batches learnt
    assert clusters.model.n_learned == 2 * CLUSTER_EVERY


@dataclass
class LiveClock(Clock):
    """A stream clock that turns live (read to within seconds of the wall clock)."""

    is_live: bool = False

    def live(self) -> bool:
        return self.is_live


def test_tailing_live_the_learners_learn_as_messages_come_and_what_waited_first() -> None:
    """Live: learnt at once, published by count as before; the summaries that waited while
    the clock was not live are learnt first, in order."""
    clock = LiveClock(settled=T0 - 1)
    logic = _models(clock)
    logic.on_batch(list(reversed(SUMMARIES[:5])))
    assert logic.learner.sessions == 0
    clock.is_live = True
    later = list(reversed(SUMMARIES[5:9]))
    out = list(logic.on_batch(later)[0])
    assert logic.learner.sessions == 9 and not logic.learner.waiting
    reference = ModelLearner({})
    for s in [*sorted(SUMMARIES[:5], key=SessionSummary.order_key), *later]:
        reference.learn(s)
    # one publication, by count (7 or more unpublished), without an event-time stamp
    assert _publications(out) == _publications([reference.publish()])
    clusters = _clusters(LiveClock(settled=T0 - 1, is_live=True))
    clusters.on_batch(VECTORS[:3])
    assert clusters.model.n_learned == 3 and not clusters.waiting
