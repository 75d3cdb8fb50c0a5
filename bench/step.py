"""``python -m attune.bench.step``: the CPU the per-user step spends per event, and its snapshots.

The ``user_state`` step of the flow (:class:`~attune.operators.user_logic.UserLogic`:
:func:`~attune.operators.user_step.fold_batch` per batch of a user, its timer, its
snapshot) is where most of the flow's own Python time goes. This benchmark runs it alone,
without Bytewax, Kafka or Redis, the way Bytewax drives it:

- the workload is the project generator's (:func:`attune.workload.generator.generate`,
  seeded), routed through identity stitching as the flow does (anonymous-only events and
  links through :func:`~attune.operators.identity.identity_step`, untimed), so the step
  sees the flow's inputs: events keyed by user or anonymous id, hand-overs and forgets;
- the inputs are cut into epochs of ``--epoch-events``; per epoch, in order: the simulated
  wall clock moves one :data:`EPOCH_MS` on, the stream clock reads the source's
  watermark as of the previous epoch, the timers that are due fire
  (:meth:`UserLogic.on_notify`), every key's inputs of the epoch go in as one batch
  (:meth:`UserLogic.on_batch`), each key awoken asks :meth:`UserLogic.notify_at` again,
  and every key awoken that was not discarded is snapshotted (Bytewax 0.21 snapshots
  every key touched in an epoch, recovery on or not);
- models are off (no model or cluster board), the rules are the shipped defaults; with
  ``--models`` they are on, over boards that hold fixed parameters: one untimed run with
  models on but nothing published gives the session summaries and persona vectors, the
  shared learners (:class:`~attune.operators.models.ModelLearner`,
  :class:`~attune.operators.clustering.ClusterModel`) learn them all and publish once, and
  the timed runs read those parameters (the propensity score, the persona, the session
  summaries and the recommendations all run, as in the flow, with parameters that do not
  move during a run, so that the outputs repeat).

The wall clock starts at :data:`WALL_START_MS` (2100), after any real time, so a key whose
judgement is pending (its timer polls every ``TIMER_POLL``, real time) is notified at the
next epoch, as it is in a flow whose epoch is at least that long. Everything the step
emits is therefore the same in every run: its SHA-256 (of the ``repr`` of every output)
is printed, a quick check that an optimisation changed no output (the golden test,
``tests/unit/test_golden.py``, is the full one).

Timing: process CPU time (``time.process_time``) of the step (batches and timers) and,
apart, of the snapshots, per generated event; each repeat runs the whole workload from fresh
states, and the table shows the minimum over the repeats (the machine is shared: other
processes only ever add time) and the median. ``--profile`` adds a cProfile of one more
run, by own time.

>>> runs = [Result(10, 12, 2, 3, 4, 1, 100, 5, s, s / 10, "ab") for s in (1.0e-4, 2.0e-4)]
>>> print(table(runs).splitlines()[2])
step        10.00      15.00
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import os
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from bytewax.operators import StatefulBatchLogic

from attune.flows.personalize import profile_config
from attune.flows.settings import Settings
from attune.operators.clock import FixedClock
from attune.operators.clustering import ClusterModel, ClusterVector, LocalBoard
from attune.operators.events import Event, ItemUpdate
from attune.operators.identity import IdentityState, Link, identity_input, identity_step
from attune.operators.models import LocalModelBoard, ModelLearner, SessionSummary
from attune.operators.stream_clock import StreamClock
from attune.operators.user_config import ProfileConfig
from attune.operators.user_logic import Keyed, UserLogic
from attune.workload.generator import GeneratorConfig, generate

DEFAULT_USERS = 500
DEFAULT_DAYS = 5
DEFAULT_SEED = 7
DEFAULT_EPOCH_EVENTS = 250
DEFAULT_REPEATS = 5
#: Simulated wall time per epoch: one timer poll (``user_logic.TIMER_POLL``).
EPOCH_MS = 1000
#: The simulated wall clock's start, 2100-01-01T00:00Z: later than any real "now".
WALL_START_MS = 4_102_444_800_000
PARTITION = "events:0"


# --- the workload ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Workload:
    """The per-user step's inputs in arrival order, with the source's watermark after each."""

    inputs: list[Keyed]
    watermarks: list[int]
    events: int  # generated events
    cfg: ProfileConfig


def workload(users: int, days: int, seed: int, *, models: bool = False) -> Workload:
    """The generated events, routed as the flow routes them to the ``user_state`` step,
    and the step's configuration (default settings, the generated catalogue; models off,
    or on over parameters learnt from the workload itself: :func:`trained`)."""
    generated = generate(GeneratorConfig(users=users, days=days, seed=seed))
    items = list(generated.items)
    cfg = config(items)
    identity: dict[str, IdentityState] = {}
    inputs: list[Keyed] = []
    watermarks: list[int] = []
    watermark = 0
    events = 0

    def stitch(item: Event | Link) -> None:
        key = item.anonymous_id or ""
        identity[key], routed = identity_step(identity.get(key), item, cfg.consent)
        inputs.extend(routed)

    for event in generated.events:
        events += 1
        if event.user_id is None:
            stitch(event)
        else:
            inputs.append((event.user_id, event))
            linked = identity_input(event)
            if linked is not None:
                stitch(linked)
        watermark = max(watermark, event.event_time)
        watermarks.extend([watermark] * (len(inputs) - len(watermarks)))
    work = Workload(inputs, watermarks, events, cfg)
    return trained(work, items) if models else work


def config(items: list[ItemUpdate]) -> ProfileConfig:
    """The flow's per-user configuration from default settings, models off."""
    return profile_config(Settings(), items, None, None)


def trained(work: Workload, items: list[ItemUpdate]) -> Workload:
    """``work`` with models on: the boards hold the parameters the shared learners learn
    from one run of the workload with models on and nothing published (every session
    summary and persona vector it emits), published once. Deterministic: the learners are
    seeded, and the first run's outputs repeat."""
    settings = Settings()
    models, personas = LocalModelBoard(), LocalBoard()
    first = replace(work, cfg=profile_config(settings, items, personas, models))
    summaries: list[SessionSummary] = []
    vectors: list[tuple[float, ...]] = []
    for out in run(first, DEFAULT_EPOCH_EVENTS, keep=True).kept:
        if isinstance(out, SessionSummary):
            summaries.append(out)
        elif isinstance(out, ClusterVector):
            vectors.append(out.vector)
    learner = ModelLearner({i.item_id: "/".join(i.category_path) for i in items}, 0)
    for summary in summaries:
        learner.learn(summary)
    models.put(learner.publish().snapshot)
    clusters = ClusterModel(k=settings.cluster_k, seed=settings.cluster_seed)
    clusters.learn_many(vectors)
    personas.put(clusters.params())
    if not summaries or not vectors or not personas.params or not personas.params.ready:
        raise RuntimeError(
            f"--models: the workload gave {len(summaries)} session summaries and "
            f"{len(vectors)} persona vectors, too few to train on: give more --users or --days"
        )
    return first


# --- one run ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    """One run over the whole workload."""

    events: int  # generated events
    inputs: int  # inputs of the step (events, hand-overs, forgets)
    batches: int  # on_batch calls
    notifies: int  # on_notify calls
    snapshots: int  # snapshot calls
    discarded: int  # keys discarded (merged, or idle)
    snapshot_bytes: int  # total size of the snapshots
    outputs: int
    step_s: float  # process CPU seconds: batches, timers, notify_at
    snapshot_s: float  # process CPU seconds: snapshots
    digest: str  # SHA-256 of the outputs' reprs
    kept: tuple[object, ...] = ()  # the outputs themselves, with ``run(keep=True)``


def run(work: Workload, epoch_events: int, *, keep: bool = False) -> Result:
    """The workload through fresh :class:`UserLogic` states, epoch by epoch."""
    base = work.cfg
    wall = FixedClock(WALL_START_MS)
    stream = StreamClock(wall_ms=wall.now_ms, monotonic=lambda: wall.ms / 1000)
    stream.reset(lateness_ms=base.triggers.settle_ms)
    stream.expect([PARTITION])
    cfg = replace(base, clock=wall, stream_clock=stream)
    logics: dict[str, UserLogic] = {}
    timers: dict[str, datetime] = {}
    outputs: list[object] = []
    batches = notifies = snapshots = discarded = size = 0
    step_s = snapshot_s = 0.0
    inputs = work.inputs
    for start in range(0, len(inputs), epoch_events):
        wall.advance(EPOCH_MS)
        if start:
            stream.advance(PARTITION, work.watermarks[start - 1])
        by_key: dict[str, list[Keyed]] = {}
        for keyed in inputs[start : start + epoch_events]:
            by_key.setdefault(keyed[0], []).append(keyed)
        c0 = time.process_time()
        now = datetime.fromtimestamp(wall.ms / 1000, UTC)
        awake: dict[str, bool] = {}  # key -> retained
        for key in [k for k, at in timers.items() if at <= now]:
            out, discard = logics[key].on_notify()
            outputs.extend(out)
            notifies += 1
            awake[key] = discard is not StatefulBatchLogic.DISCARD
        for key, values in by_key.items():
            logic = logics.get(key)
            if logic is None:
                logic = logics[key] = UserLogic(None, cfg)
            out, discard = logic.on_batch(values)
            outputs.extend(out)
            batches += 1
            awake[key] = discard is not StatefulBatchLogic.DISCARD
        for key, retained in awake.items():
            if retained:
                at = logics[key].notify_at()
                if at is None:
                    timers.pop(key, None)
                else:
                    timers[key] = at
            else:
                discarded += 1
                del logics[key]
                timers.pop(key, None)
        c1 = time.process_time()
        taken = [logics[key].snapshot() for key, retained in awake.items() if retained]
        c2 = time.process_time()
        step_s += c1 - c0
        snapshot_s += c2 - c1
        snapshots += len(taken)
        size += sum(map(len, taken))
    digest = hashlib.sha256("\n".join(map(repr, outputs)).encode()).hexdigest()
    return Result(
        work.events,
        len(inputs),
        batches,
        notifies,
        snapshots,
        discarded,
        size,
        len(outputs),
        step_s,
        snapshot_s,
        digest,
        tuple(outputs) if keep else (),
    )


# --- report ----------------------------------------------------------------------------------


def table(results: Sequence[Result]) -> str:
    """Per-event CPU microseconds of the step and of the snapshots: minimum and median."""
    rows = [("", "min us", "median us")]
    for name, seconds in (
        ("step", [r.step_s for r in results]),
        ("snapshots", [r.snapshot_s for r in results]),
    ):
        per_event = [s / r.events * 1e6 for s, r in zip(seconds, results, strict=True)]
        rows.append((name, f"{min(per_event):.2f}", f"{statistics.median(per_event):.2f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [rows[0], tuple("-" * w for w in widths), *rows[1:]]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in lines
    )


def profile(work: Workload, epoch_events: int, top: int) -> str:
    """cProfile of one more run, by own time (the snapshots included)."""
    profiler = cProfile.Profile()
    profiler.enable()
    run(work, epoch_events)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


# --- command line ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=int, default=DEFAULT_USERS, help="default %(default)s")
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS, help="default %(default)s")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="default %(default)s")
    parser.add_argument(
        "--epoch-events",
        type=int,
        default=DEFAULT_EPOCH_EVENTS,
        help="inputs per epoch: a snapshot of every key touched after each (default %(default)s)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=DEFAULT_REPEATS,
        help="runs over the whole workload; the table shows min and median (default %(default)s)",
    )
    parser.add_argument(
        "--models",
        action="store_true",
        help="models on (propensity, personas, session summaries, recommendations) over "
        "parameters learnt from the workload, published once before the timed runs",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also print a cProfile of one more run"
    )
    parser.add_argument("--json", type=Path, help="write every figure to this file")


def main_run(args: argparse.Namespace) -> int:
    work = workload(args.users, args.days, args.seed, models=args.models)
    results = [run(work, args.epoch_events) for _ in range(args.repeats)]
    first = results[0]
    if any(r.digest != first.digest for r in results):
        raise AssertionError("the step's outputs differ between runs of the same workload")
    print(
        f"attune bench step: {args.users} users x {args.days} days (seed {args.seed}), "
        f"models {'on' if args.models else 'off'}, "
        f"{first.events:,} events, {first.inputs:,} inputs, epochs of {args.epoch_events} "
        f"inputs; {args.repeats} repeats; Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average {[round(x, 2) for x in os.getloadavg()]}"
    )
    print(table(results))
    mean_bytes = first.snapshot_bytes / max(first.snapshots, 1)
    print(
        f"counts: batches {first.batches:,}, timer notifications {first.notifies:,}, "
        f"snapshots taken {first.snapshots:,} ({mean_bytes:,.0f} bytes mean), "
        f"keys discarded {first.discarded:,}, outputs {first.outputs:,}"
    )
    print(f"outputs sha256: {first.digest}")
    if args.profile:
        print(profile(work, args.epoch_events, 30))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m attune.bench.step``."""
    parser = argparse.ArgumentParser(
        prog="python -m attune.bench.step",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    add_arguments(parser)
    return main_run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
