"""The one seam for time: production uses the wall clock, tests inject a clock they move by hand."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)


class ManualClock:
    """A clock for tests: starts at a fixed instant and moves only when told.

    >>> c = ManualClock(datetime(2026, 1, 1, tzinfo=timezone.utc)); c.advance(hours=12); c.now().hour
    12
    """

    def __init__(self, start: datetime) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def advance(self, **delta: float) -> None:
        self._now += timedelta(**delta)
