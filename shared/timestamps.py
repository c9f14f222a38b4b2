"""The one aware-datetime type of the suite: a time that can be converted to UTC and stored.

Python's ``datetime`` runs from 0001-01-01 to 9999-12-31. A time near either end with a UTC offset
(``0001-01-01T00:00:00+01:00``, ``9999-12-31T23:59:59-01:00``) cannot be converted to UTC at all
(``OverflowError``), and one just inside the ends can be converted but not moved by the days a
deadline is counted in (3 days after ready-for-discharge, 365 days before a consent runs out, …).
Every time the suite takes in — contracts, API bodies, query parameters, HL7 v2 and FHIR fields —
is therefore refused *at the door* unless it lies in :data:`EARLIEST` ≤ t < :data:`LATEST` (UTC):
far from both ends, so whatever the services compute from it and store stays representable.

- :data:`Timestamp` — the pydantic type (``AwareDatetime`` + this check) for models and parameters;
- :func:`check_storable` — the same check for parsers that build datetimes themselves (HL7 ``DTM``,
  FHIR ``dateTime``); it raises :class:`TimeOutOfRange`, a ``ValueError``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime

#: the first and the first-not-allowed instant (UTC): two years inside Python's range at each end
EARLIEST = datetime(2, 1, 1, tzinfo=UTC)
LATEST = datetime(9998, 1, 1, tzinfo=UTC)
RANGE_TEXT = "0002-01-01T00:00:00Z up to 9997-12-31T23:59:59Z"


class TimeOutOfRange(ValueError):
    """A time that cannot be converted to UTC, or lies outside what the suite stores."""


def check_storable(value: datetime) -> datetime:
    """``value`` unchanged when it is aware and storable; else :class:`TimeOutOfRange` (a ValueError)."""
    try:
        offset = value.utcoffset()
    except (OverflowError, ValueError) as exc:  # a tzinfo that cannot answer for this date
        raise TimeOutOfRange(f"the time has no usable UTC offset ({exc})") from None
    if offset is None:
        raise TimeOutOfRange("the time has no UTC offset (time zone)")
    try:
        utc = value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise TimeOutOfRange(
            f"the time cannot be converted to UTC; times are accepted from {RANGE_TEXT}"
        ) from None
    if not EARLIEST <= utc < LATEST:
        raise TimeOutOfRange(f"the time is outside the accepted range {RANGE_TEXT}")
    return value


def is_storable(value: datetime) -> bool:
    try:
        check_storable(value)
    except TimeOutOfRange:
        return False
    return True


Timestamp = Annotated[AwareDatetime, AfterValidator(check_storable)]
"""An aware datetime that converts to UTC and lies within :data:`EARLIEST` … :data:`LATEST`."""
