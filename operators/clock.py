"""The one clock abstraction: wall-clock milliseconds, injectable in tests; time units.

Event time comes from events themselves; this clock only stamps what Attune
emits (``emit_time``, ``dead_time``) and drives processing-time fallbacks. Both
are epoch milliseconds, so durations are written in the units below.

>>> FixedClock(1_700_000_000_000).now_ms()
1700000000000
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


class Clock(Protocol):
    """Something that tells the wall-clock time in epoch milliseconds (UTC)."""

    def now_ms(self) -> int: ...


class SystemClock:
    """The machine's wall clock."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


@dataclass(slots=True)
class FixedClock:
    """A clock that says what a test tells it; :meth:`advance` moves it."""

    ms: int

    def now_ms(self) -> int:
        return self.ms

    def advance(self, ms: int) -> None:
        self.ms += ms
