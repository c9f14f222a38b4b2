"""Time as a port: services take a Clock so tests can control it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

# The one zone of the suite: Swedish local time, for deadline days, HL7/FHIR times without an offset,
# and times shown to people (texts, calendar files).
STOCKHOLM_ZONE_NAME = "Europe/Stockholm"
STOCKHOLM = ZoneInfo(STOCKHOLM_ZONE_NAME)


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock for tests: starts at ``at`` and moves only when told."""

    def __init__(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("FixedClock needs an aware datetime")
        self._now = at

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta
