"""Ranking per call on real calls: ``python -m attune.bench.rank``.

``rank`` is the largest cost of the flow (one call per batch of a user with a
relevant event), and its cost depends on what the flow hands it: the users'
recent items, the snapshot's co-visitation lists, embeddings and trending. So
this bench does not invent inputs; it records them:

1. **Capture**: the flow runs in process (embedded sinks, one worker) on a
   generated workload, with :func:`attune.operators.models.rank_many` replaced by a
   recorder that keeps each user's :class:`~attune.operators.ranking.UserSignals`,
   the snapshot's :class:`~attune.operators.ranking.Models`, ``k``, filters and which
   ``rank_many`` call (the flow's group: one snapshot and config of one Bytewax batch)
   it came in.
2. **Replay**: every recorded call again, in order, against *fresh* copies of
   the models (one per snapshot, the co-visitation row cache handed from one
   snapshot to the next as :class:`~attune.operators.models.ModelReader` does),
   so that the per-snapshot caches are filled inside the timed calls exactly as
   in the flow. Each call is timed in CPU time of the thread (``thread_time_ns``):
   on a shared machine the wall clock also counts the time other processes held
   the CPU (a run on a loaded 2-CPU box read 17 ms median at 20,000 items by the
   wall clock, 5 ms in CPU time).

It does so for :func:`~attune.operators.ranking.rank`, for
:func:`~attune.operators.ranking.rank_many` (the calls grouped as the flow grouped
them, and in chunks of 1, 10 and 60 consecutive calls of one snapshot; CPU time per
user, and how many lists are equal to rank's: items, order, scores, reasons) and for the
full-catalogue reference :func:`~attune.operators.ranking.rank_full`, in the
same run, over a 2,000-item and a 20,000-item catalogue, and prints median and
p99 microseconds per call, the ratio rank / rank_full and how many of rank's
items rank_full also lists (a cheap check that the bounded ranking did not drift
far; ``attune evaluate`` is the quality measure).

(Session 7 compared every captured call with a verbatim copy of the ranking before
its rewrite as well: 0 lists differed after the bit-identical pass, 84 of 6,029 item
lists after the sparse content vectors and the smaller MMR pool; the copy was then
removed, ``rank_full`` and ``attune evaluate`` being the checks that stay true.)

Import order matters: :mod:`attune.flows` is imported first so that BLAS runs
single-threaded as in the flow (numpy timings are 1.7-2x worse otherwise).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar
from unittest import mock

from bytewax.testing import run_main

import attune.flows  # noqa: F401 - before numpy: single-threaded BLAS, as in the flow
from attune.flows.embedded import LocalStore
from attune.flows.personalize import build_flow
from attune.flows.settings import Settings
from attune.operators import models as models_module
from attune.operators.events import Event
from attune.operators.ranking import (
    CovisitRows,
    Filters,
    Models,
    Recommendation,
    UserSignals,
    rank,
    rank_full,
    rank_many,
)
from attune.operators.sources import EventListSource
from attune.workload.generator import GeneratorConfig, generate

T = TypeVar("T")

Ranker = Callable[[UserSignals, Models, int, Filters | None], list[Recommendation]]


@dataclass(frozen=True, slots=True)
class Call:
    """One recorded user of a ``rank_many`` call of the flow (``group``: which call)."""

    signals: UserSignals
    models: Models
    k: int
    filters: Filters | None
    group: int = 0


@dataclass(frozen=True, slots=True)
class Timing:
    """Per-call CPU times of one ranker over the replayed calls, and what it returned."""

    name: str
    ns: list[int]
    lists: list[list[str]]

    def median_us(self) -> float:
        return statistics.median(self.ns) / 1e3

    def p99_us(self) -> float:
        return _quantile(self.ns, 0.99) / 1e3


def _quantile(values: Sequence[int], q: float) -> float:
    """The ``q`` quantile by the nearest rank (``values`` non-empty)."""
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def capture(config: GeneratorConfig) -> list[Call]:
    """Run the flow in process on the generated workload and record every user ranked."""
    g = generate(config)
    events = tuple(g.events)
    settings = Settings.from_env().replace(kafka_bootstrap="", redis_url="", input_file=None)
    calls: list[Call] = []

    groups = itertools.count()

    def record(
        signals: Sequence[UserSignals],
        models: Models,
        k: int = 10,
        filters: Filters | None = None,
    ) -> list[list[Recommendation]]:
        group = next(groups)
        calls.extend(Call(s, models, k, filters, group) for s in signals)
        return rank_many(signals, models, k, filters)

    def make() -> Iterator[Event]:
        return iter(events)

    store = LocalStore()
    source = EventListSource(make, allowed_lateness_ms=settings.allowed_lateness_s * 1000)
    flow = build_flow(settings, source=source, sinks=store.sinks("bench-rank"), items=g.items)
    with mock.patch.object(models_module, "rank_many", record):
        run_main(flow)
    return calls


def _fresh(models: Models, rows: CovisitRows) -> Models:
    """The snapshot's models without any of the caches a call fills."""
    return Models(
        models.catalogue,
        models.covisit,
        models.trending,
        models.embeddings,
        covisit_rows_cache=rows,
        covisit_arrays=models.covisit_arrays,
    )


def replay(calls: Sequence[Call], name: str, ranker: Ranker) -> Timing:
    """Every call in order against fresh models per snapshot, each call timed."""
    ns, lists = replay_full_lists(calls, ranker)
    return Timing(name, ns, [[r.item for r in recs] for recs in lists])


def chunks(calls: Sequence[Call], size: int | None) -> list[list[int]]:
    """Indices of ``calls`` in the groups ``rank_many`` gets: the flow's own groups
    (``size`` ``None``), else runs of at most ``size`` consecutive calls of one snapshot,
    k and filters."""
    out: list[list[int]] = []
    last: tuple[object, ...] | None = None
    for i, c in enumerate(calls):
        key = (c.group,) if size is None else (id(c.models), c.k, c.filters)
        if key != last or (size is not None and len(out[-1]) >= size):
            out.append([])
            last = key
        out[-1].append(i)
    return out


@dataclass(frozen=True, slots=True)
class BatchTiming:
    """CPU time of ``rank_many`` over the groups of one chunking, and its lists."""

    name: str
    ns: int
    users: int
    groups: int
    lists: list[list[Recommendation]]

    def per_user_us(self) -> float:
        return self.ns / self.users / 1e3 if self.users else 0.0


def replay_many(calls: Sequence[Call], name: str, size: int | None) -> BatchTiming:
    """:func:`rank_many` over the ``chunks`` of ``calls``, in order, against fresh models
    per snapshot (as :func:`replay`), each call timed."""
    fresh: dict[int, Models] = {}
    rows = CovisitRows()
    total = 0
    groups = chunks(calls, size)
    lists: list[list[Recommendation]] = [[] for _ in calls]
    clock = time.thread_time_ns
    for idx in groups:
        c = calls[idx[0]]
        m = fresh.get(id(c.models))
        if m is None:
            m = fresh[id(c.models)] = _fresh(c.models, rows)
        signals = [calls[i].signals for i in idx]
        t0 = clock()
        got = rank_many(signals, m, c.k, c.filters)
        total += clock() - t0
        for i, recs in zip(idx, got, strict=True):
            lists[i] = recs
    return BatchTiming(name, total, len(calls), len(groups), lists)


def report_many(calls: Sequence[Call]) -> str:
    """rank against rank_many (per user, CPU) and how many lists are equal, as table rows."""
    fast = replay_full_lists(calls)
    rows = [
        f"| rank, one call per user | {len(calls):,} | {sum(fast[0]) / len(calls) / 1e3:,.0f} "
        f"| {len(calls):,} | - |"
    ]
    for name, size in (("flow's groups", None), ("1", 1), ("10", 10), ("60", 60)):
        t = replay_many(calls, name, size)
        equal = sum(a == b for a, b in zip(fast[1], t.lists, strict=True))
        rows.append(
            f"| rank_many, {name} | {t.users:,} | {t.per_user_us():,.0f} | {t.groups:,} | "
            f"{equal:,} of {len(calls):,} |"
        )
    return "\n".join(rows)


def replay_full_lists(
    calls: Sequence[Call], ranker: Ranker = rank
) -> tuple[list[int], list[list[Recommendation]]]:
    """Every call in order against fresh models per snapshot (the co-visitation row
    cache handed on), each call timed in CPU time of the thread, keeping the whole
    recommendations (for equality)."""
    fresh: dict[int, Models] = {}
    rows = CovisitRows()
    ns: list[int] = []
    lists: list[list[Recommendation]] = []
    clock = time.thread_time_ns
    for c in calls:
        m = fresh.get(id(c.models))
        if m is None:
            m = fresh[id(c.models)] = _fresh(c.models, rows)
        t0 = clock()
        recs = ranker(c.signals, m, c.k, c.filters)
        ns.append(clock() - t0)
        lists.append(recs)
    return ns, lists


MANY_HEADER = (
    "| ranker, grouping | users | mean CPU us per user | calls | lists equal to rank's |\n"
    "|---|---|---|---|---|"
)


def overlap(a: Sequence[Sequence[str]], b: Sequence[Sequence[str]]) -> float:
    """Mean share of each list of ``a`` that the matching list of ``b`` also holds."""
    shares = [len(set(x) & set(y)) / len(x) for x, y in zip(a, b, strict=True) if x]
    return statistics.fmean(shares) if shares else 1.0


def every_nth(calls: Sequence[T], limit: int | None) -> list[T]:
    """At most ``limit`` calls, evenly spaced, in order (all of them without a limit)."""
    if limit is None or len(calls) <= limit:
        return list(calls)
    step = len(calls) / limit
    return [calls[int(i * step)] for i in range(limit)]


def report(label: str, calls: Sequence[Call], full_limit: int | None) -> str:
    """The figures of one catalogue size, as table rows."""
    fast = replay(calls, "rank", rank)
    sample = every_nth(calls, full_limit)
    full = replay(sample, "rank_full", rank_full)
    fast_sample = replay(sample, "rank", rank)
    ratio = fast_sample.median_us() / full.median_us() if full.ns else float("nan")
    snaps = len({id(c.models) for c in calls})
    return (
        f"| {label} | {len(calls):,} ({snaps} snapshots) | {fast.median_us():,.0f} | "
        f"{fast.p99_us():,.0f} | {full.median_us():,.0f} ({len(sample):,} calls) | "
        f"{full.p99_us():,.0f} | {ratio:.2f} | {overlap(fast_sample.lists, full.lists):.1%} |"
    )


HEADER = (
    "| catalogue | rank calls | rank median CPU us | rank p99 CPU us | rank_full median CPU us | "
    "rank_full p99 CPU us | rank / rank_full (median) | rank's items also in rank_full |\n"
    "|---|---|---|---|---|---|---|---|"
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attune.bench.rank", description=__doc__)
    parser.add_argument("--users", type=int, default=1000, help="users of the 2,000-item run")
    parser.add_argument("--days", type=int, default=7, help="days of the 2,000-item run")
    parser.add_argument("--big-users", type=int, default=500, help="users of the 20,000-item run")
    parser.add_argument("--big-days", type=int, default=3, help="days of the 20,000-item run")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument(
        "--full-calls",
        type=int,
        default=2000,
        help="rank_full on at most this many calls, evenly spaced (it is slow at 20,000)",
    )
    parser.add_argument("--no-big", action="store_true", help="skip the 20,000-item run")
    args = parser.parse_args(argv)
    runs = [("2,000 items", GeneratorConfig(args.users, args.days, args.seed, items=2000))]
    if not args.no_big:
        runs.append(
            ("20,000 items", GeneratorConfig(args.big_users, args.big_days, args.seed, items=20000))
        )
    rows = []
    many = []
    for label, config in runs:
        t0 = time.perf_counter()
        calls = capture(config)
        print(f"{label}: captured {len(calls):,} calls in {time.perf_counter() - t0:.1f}s",
              file=sys.stderr)  # fmt: skip
        rows.append(report(label, calls, args.full_calls))
        many.append(f"{label}:\n\n{MANY_HEADER}\n{report_many(calls)}")
    print(HEADER)
    print("\n".join(rows))
    for table in many:
        print()
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
