"""A digest of everything the flow writes for a fixed workload: the behaviour check of a
refactoring (issue 13: "Redis contents, every trigger id and every segment change equal
those of the commit before").

Every item the sinks receive (Redis operations with their values and TTLs, triggers,
segment changes, erasure confirmations, dead letters, model and persona snapshots) is
written as its ``repr``; the items are grouped by type and sorted, and each group is
hashed. Run it in a process of its own with a fixed ``PYTHONHASHSEED`` (the test does)::

    PYTHONHASHSEED=0 python -m tests.golden            # the digest, as JSON
    PYTHONHASHSEED=0 python -m tests.golden --dump d/  # and every group's items, one a line
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from bytewax.testing import run_main

from attune.flows.embedded import LocalStore
from attune.flows.personalize import build_flow
from attune.flows.settings import Settings
from attune.operators.events import Event
from attune.operators.sources import EventListSource
from attune.workload.generator import GeneratorConfig, generate

NO_POLICIES = Path(__file__).resolve().parent / "data" / "rules_without_policies.yaml"
#: A fixed pseudonym key: without one the embedded default draws a random key per process.
PSEUDONYM_KEY = "golden-digest-pseudonym-key-0123456789abcdef"
#: Fields that hold when the flow wrote something (wall clock): the one thing that differs.
#: Wall-clock times in the recorded items (a format-3 recs value's 3rd field among them).
WALL_CLOCK = re.compile(
    r"(emit_time=|dead_time=|processed_time=|\"generated_at\":|b'3\|[^|']*\|)\d+"
)
WORKLOADS = {"a": (250, 5, 5), "b": (120, 3, 11)}


class RecordingStore(LocalStore):
    """A :class:`LocalStore` that also keeps the ``repr`` of every item it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, list[str]] = defaultdict(list)

    def apply(self, items: list[Any]) -> None:
        for item in items:
            self.seen[type(item).__name__].append(WALL_CLOCK.sub(r"\1*", repr(item)))
        super().apply(items)


def outputs(users: int, days: int, seed: int, batch_size: int = 1000) -> dict[str, list[str]]:
    """Every item the flow writes for the generated workload, by type, sorted; the source
    hands the flow ``batch_size`` events at a time."""
    settings = Settings.from_env().replace(
        kafka_bootstrap="",
        redis_url="",
        trigger_rules_file=str(NO_POLICIES),
        pseudonym_key=PSEUDONYM_KEY,
        models_publish_min_s=0,  # publications by count only: the digest must not
        # depend on how fast this machine runs the flow
    )
    g = generate(GeneratorConfig(users=users, days=days, seed=seed))
    events = tuple(g.events)

    def make() -> Iterator[Event]:
        return iter(events)

    store = RecordingStore()
    source = EventListSource(
        make, allowed_lateness_ms=settings.allowed_lateness_s * 1000, batch_size=batch_size
    )
    run_main(build_flow(settings, source=source, sinks=store.sinks("m"), items=g.items))
    return {kind: sorted(reprs) for kind, reprs in sorted(store.seen.items())}


def digest(groups: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    return {
        kind: {
            "count": len(items),
            "sha256": hashlib.sha256("\n".join(items).encode()).hexdigest(),
        }
        for kind, items in groups.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.golden")
    parser.add_argument("--dump", type=Path, help="write every group's items here")
    parser.add_argument(
        "--batch-size", type=int, default=1000, help="events per source batch (1000)"
    )
    args = parser.parse_args(argv)
    result: dict[str, Any] = {}
    for name, (users, days, seed) in WORKLOADS.items():
        groups = outputs(users, days, seed, args.batch_size)
        result[name] = digest(groups)
        if args.dump:
            args.dump.mkdir(parents=True, exist_ok=True)
            for kind, items in groups.items():
                (args.dump / f"{name}.{kind}.txt").write_text("\n".join(items) + "\n")
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
