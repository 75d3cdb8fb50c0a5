"""``attune inspect``: decode an Avro event file and summarise it, dead letters included.

A quick look at a replay file or a generator output: counts per event type,
users, sessions, time range, and what could not be decoded, by error class.
Corrupt records are counted, never fatal.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import fastavro

from attune.operators.container import read_events_file
from attune.operators.events import DeadLetter

#: Inactivity gap that separates two sessions of one user (design default).
SESSION_GAP_MS = 30 * 60 * 1000


@dataclass(slots=True)
class FileSummary:
    """What one event file holds."""

    path: str
    events: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    users: int = 0
    anonymous_only: int = 0
    sessions: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    dead_letters: int = 0
    dead_by_class: Counter[str] = field(default_factory=Counter)
    dead_examples: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"{self.path}: {self.events} events, {self.dead_letters} dead letters"]
        if self.first_ms is not None and self.last_ms is not None:
            lines.append(f"  event time   {_iso(self.first_ms)} .. {_iso(self.last_ms)}")
        lines.append(
            f"  users        {self.users} ({self.anonymous_only} anonymous only, by user key, "
            "no identity stitching)"
        )
        lines.append(f"  sessions     {self.sessions} (30-minute inactivity gap per user key)")
        lines.append("  events by type:")
        for name, n in sorted(self.by_type.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"    {name:<18}{n:>10}")
        if self.dead_letters:
            lines.append("  dead letters by class:")
            for name, n in sorted(self.dead_by_class.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"    {name:<18}{n:>10}")
            lines.extend(f"  e.g. {example}" for example in self.dead_examples)
        return "\n".join(lines)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


#: The record an events file holds; what `attune generate` writes next to it.
EVENT_RECORD = "attune.event.Event"
ITEM_RECORD = "attune.item.ItemUpdate"
#: A dead letter's reason is cut to this many characters in the examples (a schema
#: resolution error can quote both schemas: tens of kilobytes).
REASON_CHARS = 200


class NotAnEventsFileError(ValueError):
    """The file is an Avro container of other records (the item catalogue, ...)."""


def writer_record(path: Path | str) -> str | None:
    """The full name of the record an Avro container file holds (its header's writer
    schema), or ``None`` when the header cannot be read (left to the events reader, which
    reports it)."""
    try:
        with open(path, "rb") as fh:
            schema = fastavro.reader(fh).writer_schema
    except (ValueError, EOFError, fastavro.read.SchemaResolutionError):
        return None
    if not isinstance(schema, dict):
        return None
    name, namespace = str(schema.get("name", "")), schema.get("namespace")
    return f"{namespace}.{name}" if namespace and "." not in name else name


def _short(reason: str) -> str:
    return reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 3] + "..."


def summarize_items(path: Path | str) -> str:
    """An item catalogue file (``e.items.avro``), in one line: records and distinct items."""
    records = 0
    items: set[str] = set()
    with open(path, "rb") as fh:
        for record in fastavro.reader(fh):
            records += 1
            if isinstance(record, dict):
                items.add(str(record.get("item_id")))
    return (
        f"{path}: not an events file: it holds {ITEM_RECORD} records (an item catalogue): "
        f"{records} updates of {len(items)} items"
    )


def inspect_file(path: Path | str) -> str:
    """What ``attune inspect`` prints for one file: an events summary, or one line for an
    item catalogue. Other Avro records are refused (:class:`NotAnEventsFileError`)."""
    record = writer_record(path)
    if record == ITEM_RECORD:
        return summarize_items(path)
    if record is not None and record != EVENT_RECORD:
        raise NotAnEventsFileError(
            f"{path}: not an events file: it holds {record} records "
            f"(attune inspect reads {EVENT_RECORD} files)"
        )
    return summarize(path).render()


def summarize(path: Path | str, max_examples: int = 3) -> FileSummary:
    """Read ``path`` and count what it holds; corrupt records become dead-letter counts."""
    summary = FileSummary(path=str(path))
    last_seen: dict[str, int] = {}
    known: set[str] = set()
    for _, item in read_events_file(path):
        if isinstance(item, DeadLetter):
            summary.dead_letters += 1
            summary.dead_by_class[item.error_class.value] += 1
            if len(summary.dead_examples) < max_examples:
                summary.dead_examples.append(f"record {item.source_offset}: {_short(item.reason)}")
            continue
        summary.events += 1
        summary.by_type[item.event_type.value] += 1
        t = item.event_time
        summary.first_ms = t if summary.first_ms is None else min(summary.first_ms, t)
        summary.last_ms = t if summary.last_ms is None else max(summary.last_ms, t)
        key = item.user_key
        if item.user_id:
            known.add(item.user_id)
        prev = last_seen.get(key)
        if prev is None or t - prev > SESSION_GAP_MS:
            summary.sessions += 1
        if prev is None or t > prev:
            last_seen[key] = t
    summary.users = len(last_seen)
    summary.anonymous_only = len(last_seen.keys() - known)
    return summary
