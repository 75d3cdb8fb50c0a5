"""``attune inspect``: counts on a hand-made file, dead-letter counts on a corrupt one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from attune.flows.cli import main
from attune.flows.inspect import summarize
from attune.operators.container import write_container
from attune.operators.events import (
    AddToCart,
    Event,
    EventType,
    PageView,
    ProductView,
    event_to_record,
)
from attune.operators.schemas import EVENT

T0 = 1_767_571_200_000
MIN = 60_000


def ev(i: int, t: int, etype: EventType, user: str | None, anon: str | None = None) -> Event:
    payload: Any = {
        EventType.PAGE_VIEW: PageView("HOME"),
        EventType.PRODUCT_VIEW: ProductView("i1", "shoes/running"),
        EventType.ADD_TO_CART: AddToCart("i1", 1, 4999, "EUR"),
    }[etype]
    return Event(f"e{i}", etype, t, payload, user_id=user, anonymous_id=anon)


EVENTS = [
    ev(0, T0, EventType.PAGE_VIEW, "u1"),
    ev(1, T0 + 5 * MIN, EventType.PRODUCT_VIEW, "u1"),
    ev(2, T0 + 40 * MIN, EventType.PRODUCT_VIEW, "u1"),  # 35 min gap: second session
    ev(3, T0 + 41 * MIN, EventType.ADD_TO_CART, "u1"),
    ev(4, T0 + 2 * MIN, EventType.PAGE_VIEW, None, "a9"),  # anonymous-only visitor
]


def write(path: Path, events: list[Event]) -> Path:
    with path.open("wb") as fh:
        write_container(fh, EVENT, (event_to_record(e) for e in events), b"x" * 16, "null")
    return path


def test_counts_users_sessions_and_types(tmp_path: Path) -> None:
    s = summarize(write(tmp_path / "e.avro", EVENTS))
    assert s.events == 5 and s.dead_letters == 0
    assert dict(s.by_type) == {"PAGE_VIEW": 2, "PRODUCT_VIEW": 2, "ADD_TO_CART": 1}
    assert (s.users, s.anonymous_only, s.sessions) == (2, 1, 3)
    assert (s.first_ms, s.last_ms) == (T0, T0 + 41 * MIN)


def test_corrupt_file_gives_dead_letter_counts_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "e.avro", EVENTS)
    raw = bytearray(path.read_bytes())
    at = raw.index(b"\x04e2") + 3  # event_type of record 2
    raw[at] = 0x7E
    path.write_bytes(bytes(raw))
    s = summarize(path)
    assert s.events == 2  # records 0 and 1; 2..4 shared the corrupt block
    assert dict(s.dead_by_class) == {"INVALID_ENUM": 1}
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "INVALID_ENUM" in out and "record 2" in out
