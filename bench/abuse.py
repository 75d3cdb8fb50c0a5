"""``python -m attune.bench.abuse``: the flow's memory under abuse (issue 15, item 4).

Two abuses, each run by the real dataflow (``build_flow``) in a process of its own whose
resident memory this bench samples (``/proc/<pid>/status``: ``VmRSS`` every 0.1 s and the
peak, ``VmHWM``):

1. **Many users**: 200,000 distinct users, each a product view and an add to cart a
   minute apart (so every one holds a session, a pending cart and its timer), users
   starting 20 ms of event time apart. Run beside a small run of the same shape
   (2,000 users), so the slope ``(peak RSS(200k) - peak RSS(2k)) / 198,000`` is the
   memory one more active user costs, start-up and shared models excluded.
2. **One user**: 100,000 events in one session (100 ms apart: views, dwells, searches,
   adds and removes), beside a run of 10,000 events of the same user. The per-user caps
   (docs/reliability.md, "Memory under abuse") must make the two peaks equal up to noise:
   a user's state does not grow with its event count.

Input: an Avro container file (``FileEventSource``, what ``attune run --input`` reads),
written to a temporary directory first: the flow reads and decodes it as a replay, and
neither a broker nor Redis shares the machine's memory with it or adds its buffers to
the flow's. Output: the embedded sinks (models, personas, boards: what the flow reads
back), with the profiles, recommendations and triggers counted and dropped rather than
kept, so that the flow's own memory is what is measured.

The bound printed is the documented one (docs/reliability.md): the design's 4 KB of
worker memory per active user, and for one user's flood at most 1 MiB of growth from
10,000 to 100,000 events. Memory, not time: the figures do not depend on the machine's
load (the run's wall time is printed for information only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The documented bounds (docs/reliability.md, "Memory under abuse"): worker memory per active
#: user (the design's target) and the growth of one user's flood from 10k to 100k events.
BOUND_PER_USER_BYTES = 4 * 1024
BOUND_ONE_USER_GROWTH_BYTES = 1024 * 1024
T0 = 1_767_571_200_000
USER_STAGGER_MS = 20
FLOOD_STEP_MS = 100


def many_users(n: int, items: list[str]) -> Iterator[Any]:
    """``n`` users, each a product view then an add to cart a minute later."""
    from attune.operators.events import AddToCart, Context, Event, EventType, ProductView

    ctx = Context(device="MOBILE", channel="WEB", country="DE")
    # interleaved as a collector would see them: user i's view, then later its add
    pending: list[tuple[int, Any]] = []
    for i in range(n):
        t = T0 + i * USER_STAGGER_MS
        user = f"abuse-{i:07d}"
        item = items[i % len(items)]
        while pending and pending[0][0] <= t:
            yield pending.pop(0)[1]
        yield Event(f"v{i}", EventType.PRODUCT_VIEW, t, ProductView(item, price_minor=1000),
                    user_id=user, session_id=f"s{i}", context=ctx)  # fmt: skip
        add = Event(f"a{i}", EventType.ADD_TO_CART, t + 60_000, AddToCart(item, 1, 1000, "EUR"),
                    user_id=user, session_id=f"s{i}", context=ctx)  # fmt: skip
        pending.append((t + 60_000, add))
    for _, event in pending:
        yield event


def one_user(n: int, items: list[str]) -> Iterator[Any]:
    """One user, ``n`` events 100 ms apart (one session): views, dwells, searches, adds
    (every 10th event, 50 distinct items) and removes (every 40th)."""
    from attune.operators.events import (
        AddToCart,
        Context,
        Dwell,
        Event,
        EventType,
        PageView,
        Payload,
        ProductView,
        RemoveFromCart,
        Search,
    )

    ctx = Context(device="DESKTOP", channel="WEB", country="DE")
    for j in range(n):
        t = T0 + j * FLOOD_STEP_MS
        item = items[j % 50]
        kind = j % 40
        payload: Payload
        if kind == 39:
            typ, payload = EventType.REMOVE_FROM_CART, RemoveFromCart(item, 1)
        elif kind % 10 == 9:
            typ, payload = EventType.ADD_TO_CART, AddToCart(item, 1, 1000, "EUR")
        elif kind % 4 == 1:
            typ, payload = EventType.DWELL, Dwell(5_000, item)
        elif kind % 4 == 2:
            typ, payload = EventType.SEARCH, Search(f"query {j % 300}")
        elif kind % 4 == 3:
            typ, payload = EventType.PAGE_VIEW, PageView(title=f"page {j % 500}")
        else:
            typ, payload = EventType.PRODUCT_VIEW, ProductView(item, price_minor=1000)
        yield Event(f"f{j}", typ, t, payload, user_id="flooder", session_id="s-flood",
                    context=ctx)  # fmt: skip


# --- the child: one flow run ------------------------------------------------------------------


def catalogue() -> list[Any]:
    """The items the events name: a generated shop's catalogue (the same in both processes)."""
    from attune.workload.generator import GeneratorConfig, generate

    return list(generate(GeneratorConfig(users=1, days=1, seed=3)).items)


def child(events_path: Path) -> None:
    """Run the flow over ``events_path``; print one JSON line of what it wrote."""
    from bytewax.testing import run_main

    from attune.flows.embedded import LocalStore
    from attune.flows.personalize import build_flow
    from attune.flows.settings import Settings
    from attune.operators.events import DeadLetter, SegmentChange, Trigger
    from attune.operators.redis_sink import JsonWrite
    from attune.operators.sources import FileEventSource

    class CountingStore(LocalStore):
        """The embedded store, keeping only what the flow reads back (model and cluster
        parameters); everything else is counted and dropped."""

        counts: dict[str, int]

        def _apply(self, item: Any) -> None:
            if isinstance(item, JsonWrite):
                super()._apply(item)
            name = type(item).__name__
            self.counts[name] = self.counts.get(name, 0) + 1

    settings = Settings.from_env()
    store = CountingStore()
    store.counts = {}
    items = catalogue()
    source = FileEventSource(events_path, allowed_lateness_ms=settings.allowed_lateness_s * 1000)
    sinks = store.sinks(
        f"{settings.redis_prefix}model:clusters", f"{settings.redis_prefix}model:recs"
    )
    started = time.monotonic()
    run_main(build_flow(settings, source=source, sinks=sinks, items=items))
    print(json.dumps({"seconds": round(time.monotonic() - started, 1), "outputs": store.counts}))
    _ = (DeadLetter, SegmentChange, Trigger)  # imported for the counts' names only


# --- the parent: write the input, run, sample ---------------------------------------------------


@dataclass
class Run:
    label: str
    events: int
    peak_rss: int  # bytes
    seconds: float
    outputs: dict[str, int]


def _status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def run_flow(label: str, events: Iterator[Any], n_events: int, tmp: Path) -> Run:
    from attune.flows.generate import sync_marker, write_events

    events_path = tmp / f"{label}.avro"
    written = write_events(events_path, events, sync_marker(0, label))
    assert written == n_events, (written, n_events)
    env = {**os.environ, "ATTUNE_ALLOWED_LATENESS_S": "600"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "attune.bench.abuse", "--child", str(events_path)],
        stdout=subprocess.PIPE,
        env=env,
    )
    peak = 0
    started = time.monotonic()
    said = started
    while proc.poll() is None:
        st = _status(proc.pid)
        peak = max(peak, st.get("VmHWM", 0), st.get("VmRSS", 0))
        if time.monotonic() - said >= 60:  # a long run says how it is going
            said = time.monotonic()
            print(f"  {label}: {said - started:.0f} s, RSS {st.get('VmRSS', 0) / 2**20:.1f} MiB, "
                  f"peak {peak / 2**20:.1f} MiB", file=sys.stderr, flush=True)  # fmt: skip
        time.sleep(0.1)
    out = proc.stdout.read().decode() if proc.stdout else ""
    if proc.returncode != 0:
        raise SystemExit(f"the flow run {label} failed (exit {proc.returncode})")
    report = json.loads(out.strip().splitlines()[-1])
    events_path.unlink()
    return Run(label, n_events, peak, report["seconds"], report["outputs"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attune.bench.abuse", description=__doc__)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--base-users", type=int, default=2_000)
    parser.add_argument("--flood", type=int, default=100_000)
    parser.add_argument("--base-flood", type=int, default=10_000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0

    ids = [i.item_id for i in catalogue() if i.in_stock][:500]
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="attune-abuse-") as tmp_dir:
        tmp = Path(tmp_dir)
        plan = [
            ("users-base", many_users, args.base_users, 2 * args.base_users, args.users),
            ("users", many_users, args.users, 2 * args.users, args.users),
            ("flood-base", one_user, args.base_flood, args.base_flood, args.flood),
            ("flood", one_user, args.flood, args.flood, args.flood),
        ]
        for label, make, n, count, part in plan:
            if part == 0:  # --users 0 or --flood 0: that part is not run
                continue
            print(f"running {label}: {count:,} events ...", file=sys.stderr, flush=True)
            runs.append(run_flow(label, make(n, ids), count, tmp))
    by = {r.label: r for r in runs}
    mib = 1024 * 1024
    print("run           events      peak RSS MiB  seconds  outputs")
    for r in runs:
        outs = ", ".join(f"{k} {v:,}" for k, v in sorted(r.outputs.items()))
        print(f"{r.label:<12} {r.events:>9,}  {r.peak_rss / mib:>12.1f}  {r.seconds:>7.1f}  {outs}")
    per_user = growth = None
    if "users" in by:
        per_user = (by["users"].peak_rss - by["users-base"].peak_rss) / (
            args.users - args.base_users
        )
        verdict = "PASS" if per_user <= BOUND_PER_USER_BYTES else "FAIL"
        print(
            f"\nmany users: {args.users:,} users, peak RSS {by['users'].peak_rss / mib:.1f} MiB; "
            f"RSS per user (slope over {args.base_users:,} -> {args.users:,}) "
            f"{per_user:,.0f} bytes; bound {BOUND_PER_USER_BYTES:,} bytes: {verdict}"
        )
    if "flood" in by:
        growth = by["flood"].peak_rss - by["flood-base"].peak_rss
        verdict = "PASS" if growth <= BOUND_ONE_USER_GROWTH_BYTES else "FAIL"
        print(
            f"one user: {args.flood:,} events in one session, peak RSS "
            f"{by['flood'].peak_rss / mib:.1f} MiB; growth over {args.base_flood:,} events "
            f"{growth / mib:+.2f} MiB; bound {BOUND_ONE_USER_GROWTH_BYTES / mib:.0f} MiB: "
            f"{verdict}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "runs": [r.__dict__ for r in runs],
                    "rss_per_user_bytes": per_user,
                    "bound_per_user_bytes": BOUND_PER_USER_BYTES,
                    "one_user_growth_bytes": growth,
                    "bound_one_user_growth_bytes": BOUND_ONE_USER_GROWTH_BYTES,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
