"""Deadline arithmetic: calendar and Swedish working days in Stockholm time, and the 24 h admission rule."""

from datetime import UTC, date, datetime, timedelta
from uuid import UUID

import pytest
from pydantic import ValidationError

from services.planning.adapters.deadline_store import breach_message_id
from services.planning.deadlines import (
    STOCKHOLM,
    DeadlinePolicy,
    add_days,
    due_at,
    is_working_day,
)
from services.planning.settings import PlanningSettings
from shared.contracts import ALL_CONTRACTS, PLANNING_EVENTS, DeadlineBreached
from shared.topology import PUBLICATIONS

CALENDAR = DeadlinePolicy(day_counting="calendar")
WORKING = DeadlinePolicy(day_counting="working")


def se(*args: int) -> datetime:
    """A Stockholm wall-clock time (CET/CEST as of that date)."""
    return datetime(*args, tzinfo=STOCKHOLM)


@pytest.mark.parametrize(
    ("policy", "kind", "start", "expected"),
    [
        # calendar days: same local clock time N days later
        (CALENDAR, "invitation", se(2026, 4, 2, 15), se(2026, 4, 5, 15)),  # Easter is not skipped
        (CALENDAR, "invitation", se(2026, 12, 23, 15), se(2026, 12, 26, 15)),
        (CALENDAR, "meeting", se(2026, 5, 4, 9, 30), se(2026, 5, 18, 9, 30)),  # 14 days
        (CALENDAR, "follow-up", se(2026, 9, 1, 13), se(2026, 9, 1, 13)),  # grace 0: at the planned time
        (CALENDAR, "consent-expiry", se(2026, 7, 1, 0), se(2026, 6, 17, 0)),  # 14 days before
        # working days: weekends, public holidays and midsommarafton/julafton/nyårsafton do not count
        # Thu before Easter: Good Friday, Sat, Easter Sunday, Easter Monday skipped → Tue, Wed, Thu
        (WORKING, "invitation", se(2026, 4, 2, 15), se(2026, 4, 9, 15)),
        # Wed 23 Dec: julafton, juldagen, annandag jul (Sat), Sun skipped → Mon 28, Tue 29, Wed 30
        (WORKING, "invitation", se(2026, 12, 23, 15), se(2026, 12, 30, 15)),
        # Thu before midsommar: midsommarafton (Fri 19 Jun), Sat, Sun skipped → Mon 22, Tue 23, Wed 24
        (WORKING, "invitation", se(2026, 6, 18, 9), se(2026, 6, 24, 9)),
        # Tue 29 Dec: Wed 30; nyårsafton, nyårsdagen, the weekend skipped → Mon 4, Tue 5 Jan 2027
        (WORKING, "invitation", se(2026, 12, 29, 10), se(2027, 1, 5, 10)),
        # Wed before Ascension Day (Thu 14 May 2026) → Fri 15, Mon 18, Tue 19
        (WORKING, "invitation", se(2026, 5, 13, 8), se(2026, 5, 19, 8)),
        # a start on a Saturday: Mon, Tue, Wed
        (WORKING, "invitation", se(2026, 3, 7, 10), se(2026, 3, 11, 10)),
        # backwards for consent expiry (14 working days before Mon 13 Apr, across Easter)
        (WORKING, "consent-expiry", se(2026, 4, 13, 0), se(2026, 3, 20, 0)),
        # DST: spring forward on Sun 29 Mar 2026 — same clock time, so 71 h in calendar mode
        (CALENDAR, "invitation", se(2026, 3, 27, 12), se(2026, 3, 30, 12)),
        (WORKING, "invitation", se(2026, 3, 27, 12), se(2026, 4, 1, 12)),
        # DST: fall back on Sun 25 Oct 2026 — 73 h in calendar mode
        (CALENDAR, "invitation", se(2026, 10, 23, 12), se(2026, 10, 26, 12)),
        # the admission notice is 24 clock hours in either mode, also across the DST change
        (CALENDAR, "admission-notice", se(2026, 3, 28, 12), se(2026, 3, 29, 13)),
        (WORKING, "admission-notice", se(2026, 3, 28, 12), se(2026, 3, 29, 13)),
        (WORKING, "admission-notice", se(2026, 12, 24, 8), se(2026, 12, 25, 8)),
    ],
)
def test_due_at(policy, kind, start, expected):
    got = due_at(kind, start, policy)
    assert got.tzinfo is UTC
    assert got == expected
    assert got.astimezone(STOCKHOLM).time() == expected.time()


def test_dst_spans_are_71_and_73_hours_in_calendar_mode_and_24_for_the_admission_notice():
    assert due_at("invitation", se(2026, 3, 27, 12), CALENDAR) - se(2026, 3, 27, 12) == timedelta(hours=71)
    assert due_at("invitation", se(2026, 10, 23, 12), CALENDAR) - se(2026, 10, 23, 12) == timedelta(hours=73)
    start = se(2026, 3, 28, 12)
    assert due_at("admission-notice", start, WORKING) - start == timedelta(hours=24)


def test_a_wall_time_in_the_spring_gap_moves_forward_and_an_ambiguous_one_takes_the_first():
    # 02:30 does not exist on 29 Mar 2026 in Stockholm → 03:30 CEST
    assert add_days(se(2026, 3, 26, 2, 30), 3, "calendar") == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    # 02:30 happens twice on 25 Oct 2026 → the first (CEST, UTC+2)
    assert add_days(se(2026, 10, 22, 2, 30), 3, "calendar") == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("day", "working"),
    [
        (date(2026, 4, 1), True),  # Wed before Easter
        (date(2026, 4, 2), True),  # skärtorsdagen is a working day
        (date(2026, 4, 3), False),  # långfredagen
        (date(2026, 4, 6), False),  # annandag påsk
        (date(2026, 6, 19), False),  # midsommarafton (de facto)
        (date(2026, 12, 24), False),  # julafton (de facto)
        (date(2026, 12, 31), False),  # nyårsafton (de facto)
        (date(2027, 1, 6), False),  # trettondedag jul
        (date(2027, 1, 5), True),  # trettondagsafton is a working day
        (date(2026, 3, 8), False),  # an ordinary Sunday
        (date(2026, 3, 7), False),  # an ordinary Saturday
        (date(2026, 3, 9), True),
    ],
)
def test_swedish_working_days(day, working):
    assert is_working_day(day) is working


def test_the_policy_comes_from_the_planning_settings():
    settings = PlanningSettings(
        deadline_day_counting="working", invitation_deadline_days=2, meeting_deadline_days=5,
        follow_up_grace_days=1, consent_expiry_warning_days=3,
    )  # fmt: skip
    policy = DeadlinePolicy.from_settings(settings)
    assert policy == DeadlinePolicy("working", 2, 5, 1, 3)
    # due_at takes the settings directly too
    assert due_at("invitation", se(2026, 4, 2, 15), settings) == se(2026, 4, 8, 15)
    assert due_at("follow-up", se(2026, 4, 2, 15), settings) == se(2026, 4, 7, 15)
    assert PlanningSettings().deadline_day_counting == "calendar"
    with pytest.raises(ValidationError):
        PlanningSettings(deadline_day_counting="lunar")


def test_naive_times_and_unknown_kinds_are_refused():
    with pytest.raises(ValueError, match="aware"):
        due_at("invitation", datetime(2026, 4, 2, 15), CALENDAR)
    with pytest.raises(ValueError, match="unknown deadline kind"):
        due_at("lunch", se(2026, 4, 2, 15), CALENDAR)


def test_deadline_breached_contract_carries_no_personal_data():
    assert DeadlineBreached in ALL_CONTRACTS
    assert DeadlineBreached in PUBLICATIONS["planning"]
    assert DeadlineBreached.exchange == PLANNING_EVENTS
    assert DeadlineBreached.routing_key == "planning.deadline-breached.v1"
    assert set(DeadlineBreached.model_fields) == {
        "message_id", "occurred_at", "correlation_id",
        "case_id", "case_reference", "kind", "due_at", "breached_at", "owner_hsa_id",
    }  # fmt: skip
    with pytest.raises(ValidationError):
        DeadlineBreached(
            case_id=UUID(int=1), case_reference="SIP-2026-000001", kind="invitation",
            due_at=datetime(2026, 4, 9, 13, tzinfo=UTC), breached_at=datetime(2026, 4, 9, 13),  # naive
            owner_hsa_id="SE2321000016-VC01",
        )  # fmt: skip


def test_one_breach_message_id_per_case_kind_and_cycle():
    case = UUID(int=7)
    assert breach_message_id(case, "invitation", 1) == breach_message_id(str(case), "invitation", 1)
    assert breach_message_id(case, "invitation", 1) != breach_message_id(case, "invitation", 2)
    assert breach_message_id(case, "invitation", 1) != breach_message_id(case, "meeting", 1)
