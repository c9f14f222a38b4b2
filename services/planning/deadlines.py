"""Deadlines of a SIP case and how their days are counted. Pure: no I/O, no clock.

Kinds (:data:`DeadlineKind`) and what ``start`` means for each:

- ``admission-notice``: start = the admission; due ``start + 24 h`` — always 24 clock hours (LUS; the
  rule is :func:`services.planning.rules.admission_notice_due`);
- ``invitation``: start = the exact ready-for-discharge timestamp; due ``invitation_days`` days later
  (LUS: 3; ``PLANNING_INVITATION_DEADLINE_DAYS``);
- ``meeting``: start = when the invitation was sent; due ``meeting_days`` days later (a regional
  agreement; ``PLANNING_MEETING_DEADLINE_DAYS``);
- ``follow-up``: start = the planned follow-up time in the plan; due ``follow_up_grace_days`` days
  later (0 = at the planned time; ``PLANNING_FOLLOW_UP_GRACE_DAYS``);
- ``consent-expiry``: start = the consent's ``valid_until``; due ``consent_expiry_warning_days`` days
  *before* it (``PLANNING_CONSENT_EXPIRY_WARNING_DAYS``): a breach says "the consent runs out soon".

**Day counting** (``PLANNING_DEADLINE_DAY_COUNTING``) is configuration, in Europe/Stockholm local time:

- ``calendar``: the deadline is at the **same local clock time N calendar days later**. Across a
  daylight-saving change the span is one hour shorter or longer than ``N × 24 h``, never a different
  clock time (3 days after Fri 2026-03-27 12:00 CET is Mon 2026-03-30 12:00 CEST: 71 hours).
- ``working``: the deadline is at the **same local clock time on the Nth working day after the start
  day**. Days are stepped one at a time from the day after the start day; only working days count.
  A start on a non-working day is treated the same way (Saturday 10:00 + 3 working days = Wednesday
  10:00). Working days are Monday–Friday that are neither a Swedish public holiday (*allmän
  helgdag*: ``holidays`` category PUBLIC) nor midsommarafton, julafton or nyårsafton (category
  DE_FACTO: by SFS 1977:480 §7 they are treated as Sundays, and workplaces are closed). The
  ``holidays`` package does *not* count ordinary Sundays as holidays unless asked
  (``include_sundays=False`` by default) — weekends are excluded here by the weekday test instead.
  Days before a holiday (skärtorsdagen, trettondagsafton, …) are ordinary working days.
- A local time that does not exist on the target day (the spring-forward gap, 02:00–03:00) moves
  forward by the gap (02:30 → 03:30 CEST); an ambiguous one (the autumn repeat) is the first of the two.
- Negative N (``consent-expiry``) counts backwards the same way.

``admission-notice`` ignores the day counting: the law says 24 hours.
Every result is an aware UTC datetime.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, get_args
from uuid import UUID
from zoneinfo import ZoneInfo

from services.planning.rules import admission_notice_due
from shared.clock import STOCKHOLM

if TYPE_CHECKING:
    from services.planning.settings import PlanningSettings

DeadlineKind = Literal["admission-notice", "invitation", "meeting", "follow-up", "consent-expiry"]
DEADLINE_KINDS: tuple[str, ...] = get_args(DeadlineKind)
DayCounting = Literal["calendar", "working"]


@dataclass(frozen=True)
class DeadlinePolicy:
    """How long each kind of deadline runs; built from the planning settings (:meth:`from_settings`)."""

    day_counting: DayCounting = "calendar"
    invitation_days: int = 3
    meeting_days: int = 14
    follow_up_grace_days: int = 0
    consent_expiry_warning_days: int = 14
    timezone: ZoneInfo = STOCKHOLM

    @classmethod
    def from_settings(cls, settings: PlanningSettings | Any) -> DeadlinePolicy:
        return cls(
            day_counting=settings.deadline_day_counting,
            invitation_days=settings.invitation_deadline_days,
            meeting_days=settings.meeting_deadline_days,
            follow_up_grace_days=settings.follow_up_grace_days,
            consent_expiry_warning_days=settings.consent_expiry_warning_days,
        )


# ---- the records the deadline store keeps and answers (adapters/deadline_store.py) ------------------
@dataclass(frozen=True)
class Deadline:
    """One cycle of a case's deadline of one kind, as stored (``case_deadlines``)."""

    id: int
    case_id: UUID
    case_reference: str
    kind: str
    cycle: int
    status: str
    started_at: datetime
    due_at: datetime
    owner_hsa_id: str
    correlation_id: str | None
    met_at: datetime | None
    breached_at: datetime | None
    escalated_to: str | None
    breach_message_id: str | None
    cancelled_at: datetime | None
    cancel_reason: str | None

    @property
    def met_late(self) -> bool:
        return self.met_at is not None and self.met_at > self.due_at


@dataclass(frozen=True)
class NextDeadline:
    """One open case for the coordinators' overview: its next pending deadline (if any) and owner."""

    case_id: UUID
    case_reference: str
    case_state: str
    owner_hsa_id: str
    kind: str | None
    due_at: datetime | None
    breached_unmet: int  # escalated deadlines of the case not (yet) met


#: ``DeadlineBreached.message_id`` = uuid5(this, "<case id>/<kind>/<cycle>"): one breach, one id
BREACH_NAMESPACE = uuid.UUID("5f0c6b8e-2d7a-4b8e-9a51-6a1f3c2d9e10")


def breach_message_id(case_id: UUID | str, kind: str, cycle: int) -> UUID:
    return uuid.uuid5(BREACH_NAMESPACE, f"{case_id}/{kind}/{cycle}")


@lru_cache(maxsize=64)
def _swedish_days_off(year: int) -> frozenset[date]:
    """Public holidays plus midsommarafton, julafton and nyårsafton of ``year`` (not ordinary weekends).
    ``holidays`` is imported here, on first use: importing it costs planning a third of a second."""
    import holidays
    from holidays.constants import DE_FACTO, PUBLIC

    return frozenset(holidays.Sweden(years=year, categories=(PUBLIC, DE_FACTO)).keys())


def is_working_day(day: date) -> bool:
    """Monday–Friday and not a Swedish public holiday, midsommarafton, julafton or nyårsafton."""
    return day.weekday() < 5 and day not in _swedish_days_off(day.year)


def add_days(start: datetime, days: int, counting: DayCounting, tz: ZoneInfo = STOCKHOLM) -> datetime:
    """``start`` moved ``days`` calendar or working days, at the same local clock time (UTC result)."""
    if start.tzinfo is None:
        raise ValueError("deadlines are counted from aware datetimes only")
    local = start.astimezone(tz)
    day = local.date()
    if counting == "calendar":
        day += timedelta(days=days)
    elif counting == "working":
        step = timedelta(days=1 if days >= 0 else -1)
        left = abs(days)
        while left:
            day += step
            if is_working_day(day):
                left -= 1
    else:
        raise ValueError(f"unknown day counting {counting!r}")
    wall = datetime.combine(day, local.timetz().replace(tzinfo=None), tzinfo=tz)  # fold=0: the first one
    # a wall time in the spring-forward gap maps (fold=0) to the offset before the gap: 02:30 → 03:30
    return wall.astimezone(UTC)


def due_at(kind: DeadlineKind | str, start: datetime, policy: DeadlinePolicy | Any) -> datetime:
    """When a deadline of ``kind`` that starts at ``start`` falls due (aware UTC); see the module doc.

    ``policy`` is a :class:`DeadlinePolicy` or the planning settings.
    """
    if not isinstance(policy, DeadlinePolicy):
        policy = DeadlinePolicy.from_settings(policy)
    if start.tzinfo is None:
        raise ValueError("deadlines are counted from aware datetimes only")
    if kind == "admission-notice":
        return admission_notice_due(start)
    days = {
        "invitation": policy.invitation_days,
        "meeting": policy.meeting_days,
        "follow-up": policy.follow_up_grace_days,
        "consent-expiry": -policy.consent_expiry_warning_days,
    }.get(kind)
    if days is None:
        raise ValueError(f"unknown deadline kind {kind!r}")
    return add_days(start, days, policy.day_counting, policy.timezone)
