"""The embedded default: the dataflow's outputs kept in process, summarised on screen.

For the first run and for demos, with no Kafka and no Redis: the flow's Redis
operations, segment changes and dead letters are applied to a
:class:`LocalStore` (plain dicts), and ``attune run`` prints a summary (events/s,
users, sessions, segment sizes, sample profiles) and writes a JSON report.
This is a demo sink, not a stand-in for Redis in tests: integration tests use
the real server.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import orjson
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from attune.flows.sinks import Sinks
from attune.operators.clustering import ClusterParams, LocalBoard
from attune.operators.consent import withheld_total
from attune.operators.events import DeadLetter, ErasureConfirmation, SegmentChange, Trigger
from attune.operators.models import LocalModelBoard
from attune.operators.redis_keys import RedisKeys
from attune.operators.redis_sink import (
    AliasWrite,
    ForgetUser,
    JsonWrite,
    ProfileWrite,
    RecsWrite,
    SegmentsWrite,
    TrendingWrite,
)

#: Where the model learner's snapshot goes by default (``RedisKeys().model("recs")``).
DEFAULT_MODELS_KEY = RedisKeys().model("recs")


@dataclass
class LocalStore:
    """What the flow wrote, by kind. Thread-safe (workers share it)."""

    profiles: dict[str, dict[str, str]] = field(default_factory=dict)
    segments: dict[str, set[str]] = field(default_factory=dict)
    audiences: dict[str, set[str]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    segment_changes: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    dead_examples: list[str] = field(default_factory=list)
    models: dict[str, bytes] = field(default_factory=dict)
    triggers: list[Trigger] = field(default_factory=list)
    erasures: list[ErasureConfirmation] = field(default_factory=list)
    board: LocalBoard = field(default_factory=LocalBoard)
    board_key: str = ""
    recs: dict[str, bytes] = field(default_factory=dict)
    trending: dict[str, dict[str, float]] = field(default_factory=dict)
    model_board: LocalModelBoard = field(default_factory=LocalModelBoard)
    models_key: str = DEFAULT_MODELS_KEY
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    _shared: ClassVar[LocalStore | None] = None

    @classmethod
    def shared(cls) -> LocalStore:
        """The process's store (what ``python -m bytewax.run`` writes into)."""
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def sinks(self, board_key: str, models_key: str = DEFAULT_MODELS_KEY) -> Sinks:
        """The flow's sinks writing here; cluster params under ``board_key`` feed the board,
        the model snapshot under ``models_key`` the model board (the flow's keys from its
        settings: :func:`attune.flows.personalize.default_sinks`)."""
        self.board_key = board_key
        self.models_key = models_key
        sink = LocalStoreSink(self)
        return Sinks(sink, sink, sink, sink, self.board, erasures=sink, models=self.model_board)

    def apply(self, items: list[Any]) -> None:
        with self.lock:
            for item in items:
                self._apply(item)

    def _apply(self, item: Any) -> None:  # noqa: PLR0912 - one branch per output type the flow writes
        if isinstance(item, ProfileWrite):
            self.profiles[item.user] = dict(item.fields)
        elif isinstance(item, SegmentsWrite):
            mine = self.segments.setdefault(item.user, set())
            for name in item.entered:
                mine.add(name)
                self.audiences.setdefault(name, set()).add(item.user)
            for name in item.exited:
                mine.discard(name)
                self.audiences.setdefault(name, set()).discard(item.user)
        elif isinstance(item, ForgetUser):
            self.profiles.pop(item.user, None)
            self.segments.pop(item.user, None)
            self.recs.pop(item.user, None)
            if not item.keep_alias:
                self.aliases.pop(item.user, None)
            for name in item.audiences:
                self.audiences.get(name, set()).discard(item.user)
        elif isinstance(item, AliasWrite):
            self.aliases[item.anonymous_id] = item.user
        elif isinstance(item, JsonWrite):
            self.models[item.key] = item.value
            if item.key == self.board_key:
                self.board.put(ClusterParams.from_json(item.value))
            elif item.key == self.models_key:
                self.model_board.put(item.value)
        elif isinstance(item, RecsWrite):
            self.recs[item.user] = item.value
        elif isinstance(item, TrendingWrite):
            scope = self.trending.setdefault(item.scope, {})
            scope.update(item.members)
            if len(scope) > item.keep:
                best = sorted(scope.items(), key=lambda kv: -kv[1])[: item.keep]
                self.trending[item.scope] = dict(best)
        elif isinstance(item, SegmentChange):
            self.segment_changes[f"{item.segment} {item.change}"] += 1
        elif isinstance(item, Trigger):
            self.triggers.append(item)
        elif isinstance(item, ErasureConfirmation):
            self.erasures.append(item)
        elif isinstance(item, DeadLetter):
            self.dead_letters[item.error_class.value] += 1
            if len(self.dead_examples) < 3:
                self.dead_examples.append(item.reason)
        else:
            raise TypeError(f"the embedded store does not take {type(item).__name__}")

    def _personas(self) -> list[dict[str, Any]]:
        params = self.board.get()
        if params is None:
            return []
        return [
            {
                "segment": f"persona_{p.cluster}",
                "size": p.size,
                "label": p.label,
                "centroid": {k: round(v, 2) for k, v in p.centroid.items()},
            }
            for p in params.personas
        ]

    def events_applied(self) -> int:
        return sum(int(p.get("events") or 0) for p in self.profiles.values())

    def report(self, elapsed_s: float, samples: int = 3) -> dict[str, Any]:
        """The summary as a JSON-able dict."""
        events = self.events_applied()
        dead = sum(self.dead_letters.values())
        busiest = sorted(
            self.profiles.items(), key=lambda kv: (-int(kv[1].get("events") or 0), kv[0])
        )
        return {
            "elapsed_s": round(elapsed_s, 3),
            "events_applied": events,
            "dead_letters": dead,
            "events_per_s": round((events + dead) / elapsed_s, 1) if elapsed_s > 0 else None,
            "users": len(self.profiles),
            "users_with_recommendations": len(self.recs),
            "anonymous_merged": len(self.aliases),
            "sessions": sum(int(p.get("sessions") or 0) for p in self.profiles.values()),
            "segment_sizes": {k: len(v) for k, v in sorted(self.audiences.items())},
            "segment_changes": dict(sorted(self.segment_changes.items())),
            "triggers": dict(sorted(Counter(t.kind for t in self.triggers).items())),
            "events_withheld": withheld_total(),
            "erasures": len(self.erasures),
            "dead_letters_by_class": dict(sorted(self.dead_letters.items())),
            "dead_letter_examples": self.dead_examples,
            "personas": self._personas(),
            "sample_profiles": {
                user: {**fields, "segments": sorted(self.segments.get(user, ()))}
                for user, fields in busiest[:samples]
            },
        }


def render(report: dict[str, Any]) -> str:
    """The report as text for a terminal."""
    lines = [
        f"events applied   {report['events_applied']:>10}   "
        f"({report['events_per_s']} events/s incl. dead letters, {report['elapsed_s']} s)",
        f"dead letters     {report['dead_letters']:>10}   {report['dead_letters_by_class']}",
        f"users            {report['users']:>10}   "
        f"(+{report['anonymous_merged']} anonymous ids merged into users)",
        f"sessions         {report['sessions']:>10}",
        f"triggers         {sum(report['triggers'].values()):>10}   {report['triggers']}",
        f"privacy          {report['events_withheld']:>10}   events withheld (no consent), "
        f"{report['erasures']} erasures",
        "segment sizes:",
    ]
    lines += [f"  {name:<26}{n:>8}" for name, n in report["segment_sizes"].items()]
    if report.get("personas"):
        lines.append("personas (online k-means on behaviour):")
        lines += [f"  {p['segment']:<12}{p['size']:>6}  {p['label']}" for p in report["personas"]]
    lines.append("sample profiles (busiest users):")
    for user, fields in report["sample_profiles"].items():
        lines.append(f"  {user}")
        lines.append("    " + ", ".join(f"{k}={v}" for k, v in fields.items()))
    return "\n".join(lines)


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))


class _StorePartition(StatelessSinkPartition[Any]):
    def __init__(self, store: LocalStore) -> None:
        self.store = store

    def write_batch(self, items: list[Any]) -> None:
        self.store.apply(items)


class LocalStoreSink(DynamicSink[Any]):
    """Applies every output to a :class:`LocalStore`."""

    def __init__(self, store: LocalStore) -> None:
        self.store = store

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StorePartition:
        return _StorePartition(self.store)
