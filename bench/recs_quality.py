"""The quality of the lists the flow itself writes: ``python -m attune.bench.recs_quality``.

``attune evaluate`` ranks on its own, freshly, before every new-item interaction: it
measures the ranking, not *when* the flow ranks. A user's list in Redis is only as
fresh as the flow's last ranking of it (once per batch with a product view, cart change
or purchase, at most once per ``ATTUNE_RECS_MIN_GAP_S`` of the user's event time), so a
coalescing rule that ranks less often has a staleness cost ``evaluate`` cannot see. This
bench shows it:

1. the flow runs in process (embedded sinks, one worker, the generator's events handed
   over ``--batch-sizes`` events at a time: 1,000 is a replay's batch, where one batch
   of a user often holds a whole session; a small batch is closer to a live stream, one
   or two events of a user per batch) with :func:`attune.operators.models.rank_many`
   replaced by a recorder of each ranked user's user, event time (``UserSignals.now_ms``, the latest
   event time the list saw) and items, and the models stage's
   :func:`~attune.operators.scoring.observe` by one that also notes each product view,
   add to cart and purchased line, with its user and event time;
2. a **target** is such an interaction with an item the user had not interacted with
   before (as ``attune evaluate``'s protocol); the list **in force** at a target at
   event time ``t`` is the user's latest list ranked at an event time before ``t``
   (the list a page shown at ``t`` would have read; the one ranked at ``t`` itself
   already saw the target);
3. it prints, per minimum gap: rank calls per event, targets that had a list in force,
   and HR@10 over those (the target among the list's items).

The learner publishes by count only (``models_publish_min_s`` 0, as the golden test), so a
run repeats exactly; two runs with different gaps still differ a little by the snapshot
each list is ranked against (a list ranked later may read a newer one).

>>> hr = HitRate()
>>> hr.add_list("u", 1_000, ["a", "b"])
>>> hr.target("u", 500, "a"), hr.target("u", 2_000, "a"), hr.target("u", 2_000, "c")
(None, True, False)
>>> hr.covered, hr.hits
(2, 1)
"""

from __future__ import annotations

import argparse
import bisect
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

from bytewax.testing import run_main

import attune.flows  # noqa: F401 - before numpy: single-threaded BLAS, as in the flow
from attune.flows.embedded import LocalStore
from attune.flows.personalize import build_flow
from attune.flows.settings import Settings
from attune.operators import models as models_module
from attune.operators import scoring
from attune.operators.events import AddToCart, Event, ProductView, Purchase
from attune.operators.ranking import Filters, Models, Recommendation, UserSignals, rank_many
from attune.operators.sources import EventListSource
from attune.operators.user_config import ProfileConfig
from attune.operators.user_state import UserState
from attune.workload.generator import GeneratorConfig, generate

#: Named generator settings: the bench's own, and one that differs where coalescing could
#: flatter it (a small catalogue, most users anonymous, many late events).
SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "alt": {"items": 200, "anonymous_share": 0.6, "identify_share": 0.2, "late_share": 0.2},
}


@dataclass
class HitRate:
    """Lists by user in event-time order, and the targets judged against them."""

    times: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    lists: dict[str, list[frozenset[str]]] = field(default_factory=lambda: defaultdict(list))
    targets: int = 0
    covered: int = 0
    hits: int = 0

    def add_list(self, user: str, at_ms: int, items: Sequence[str]) -> None:
        times, lists = self.times[user], self.lists[user]
        i = bisect.bisect_right(times, at_ms)  # a late list among the earlier ones
        times.insert(i, at_ms)
        lists.insert(i, frozenset(items))

    def target(self, user: str, at_ms: int, item: str) -> bool | None:
        """Whether the list in force at ``at_ms`` held ``item`` (``None``: no list yet)."""
        self.targets += 1
        i = bisect.bisect_left(self.times.get(user, []), at_ms)
        if i == 0:
            return None
        self.covered += 1
        hit = item in self.lists[user][i - 1]
        self.hits += hit
        return hit


@dataclass(frozen=True, slots=True)
class Row:
    setting: str
    batch_size: int
    gap_s: int
    events: int
    calls: int
    targets: int
    covered: int
    hits: int
    seconds: float

    def line(self) -> str:
        hr = self.hits / self.covered if self.covered else float("nan")
        return (
            f"| {self.setting} | {self.batch_size:,} | {self.gap_s} | {self.events:,} | "
            f"{self.calls:,} | {self.calls / self.events:.4f} | {self.covered:,} of "
            f"{self.targets:,} | {hr:.2%} |"
        )


HEADER = (
    "| generator | batch | min gap s | events | rank calls | calls per event | "
    "targets with a list | HR@10 of the list in force |\n|---|---|---|---|---|---|---|---|"
)


def measure(
    setting: str, config: GeneratorConfig, batch_size: int, gap_s: int, snapshot: bool = False
) -> Row:
    """One in-process run of the flow; its rank calls and the hit rate of its lists."""
    g = generate(config)
    events = tuple(g.events)
    settings = Settings.from_env().replace(
        kafka_bootstrap="",
        redis_url="",
        input_file=None,
        recs_min_gap_s=gap_s,
        models_publish_min_s=0,  # publications by count only, as tests.golden: the
        # snapshots a list is ranked against must not depend on this machine's speed
    )
    hr = HitRate()
    seen: dict[str, set[str]] = defaultdict(set)
    pending: list[tuple[str, int, str]] = []
    calls = 0

    def record(
        signals: Sequence[UserSignals],
        models: Models,
        k: int = 10,
        filters: Filters | None = None,
    ) -> list[list[Recommendation]]:
        nonlocal calls
        calls += len(signals)
        lists = rank_many(signals, models, k, filters)
        for sig, recs in zip(signals, lists, strict=True):
            hr.add_list(sig.user, sig.now_ms, [r.item for r in recs])
        return lists

    observe = scoring.observe

    def noting(st: UserState, event: Event, cfg: ProfileConfig) -> None:
        p = event.payload
        items: tuple[str, ...] = ()
        if isinstance(p, ProductView | AddToCart):
            items = (p.item_id,)
        elif isinstance(p, Purchase):
            items = tuple(line.item_id for line in p.lines)
        for item in items:
            if item not in seen[st.user_id]:
                seen[st.user_id].add(item)
                pending.append((st.user_id, event.event_time, item))
        observe(st, event, cfg)

    def make() -> Iterator[Event]:
        return iter(events)

    store = LocalStore()
    source = EventListSource(
        make, allowed_lateness_ms=settings.allowed_lateness_s * 1000, batch_size=batch_size
    )
    flow = build_flow(settings, source=source, sinks=store.sinks("recs-quality"), items=g.items)
    t0 = time.process_time()
    with (
        mock.patch.object(models_module, "rank_many", record),
        mock.patch.object(scoring, "observe", noting),
    ):
        run_main(flow)
    seconds = time.process_time() - t0
    for user, at, item in pending:  # after the run: a list may arrive after its targets
        hr.target(user, at, item)
    return Row(
        setting, batch_size, gap_s, len(events), calls, hr.targets, hr.covered, hr.hits, seconds
    )


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m attune.bench.recs_quality", description=__doc__
    )
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--gaps", type=_ints, default=[0, 10, 30, 60], help="min gaps, s")
    parser.add_argument("--batch-sizes", type=_ints, default=[1000, 20], help="source batch")
    parser.add_argument(
        "--settings", default="default,alt", help=f"generator settings ({', '.join(SETTINGS)})"
    )
    args = parser.parse_args(argv)
    print(HEADER)
    for name in args.settings.split(","):
        if name not in SETTINGS:
            parser.error(f"unknown generator setting {name!r}: one of {', '.join(SETTINGS)}")
        config = GeneratorConfig(args.users, args.days, args.seed, **SETTINGS[name])
        for batch in args.batch_sizes:
            for gap in args.gaps:
                row = measure(name, config, batch, gap)
                print(row.line(), flush=True)
                print(f"  ({row.seconds:.0f} s CPU)", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
