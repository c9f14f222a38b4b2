"""Planning's rules (services/planning/rules.py) on their edges: pure, no I/O."""

import ast
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from services.planning import rules
from services.planning.deadlines import DeadlinePolicy, due_at
from services.planning.domain import FINAL_STATES, TRANSITIONS
from services.planning.rules import (
    ADMISSION_NOTICE_HOURS,
    ADULT_AGE,
    ASSUME_SIP_NEEDED,
    READMISSION,
    SUSPEND_ON_READMISSION,
    admission_notice_due,
    admission_notice_late,
    is_child,
    readmission_looks_for_case,
    readmission_resumes,
    sip_needed,
)
from services.planning.settings import PlanningSettings
from services.planning.stays import Stay
from shared.clock import STOCKHOLM
from tests.support.personnummer import ADULT, CHILD, SAMORDNINGSNUMMER


def se(*args: int) -> datetime:
    return datetime(*args, tzinfo=STOCKHOLM)


# ---- the admission notice: 24 clock hours (LUS 2017:612) ----------------------------------------------
def test_admission_notice_is_due_exactly_24_clock_hours_after_the_admission():
    admitted = datetime(2026, 11, 20, 9, 15, 30, 250000, tzinfo=UTC)
    assert ADMISSION_NOTICE_HOURS == 24
    assert admission_notice_due(admitted) == datetime(2026, 11, 21, 9, 15, 30, 250000, tzinfo=UTC)
    assert admission_notice_due(admitted).tzinfo == UTC


def test_admission_notice_at_exactly_24_hours_is_on_time_a_microsecond_later_is_late():
    admitted = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    exactly = admitted + timedelta(hours=24)
    assert not admission_notice_late(admitted, admitted)
    assert not admission_notice_late(admitted, exactly - timedelta(microseconds=1))
    assert not admission_notice_late(admitted, exactly)
    assert admission_notice_late(admitted, exactly + timedelta(microseconds=1))


def test_admission_notice_counts_clock_hours_across_the_daylight_saving_change():
    admitted = se(2026, 3, 28, 12)  # the night to Sunday 29 March is an hour shorter
    assert admission_notice_due(admitted) == se(2026, 3, 29, 13)
    assert not admission_notice_late(admitted, se(2026, 3, 29, 13))
    assert admission_notice_late(admitted, se(2026, 3, 29, 13, 0, 1))
    # half an hour past the same wall time next day is only 23.5 clock hours: on time
    assert not admission_notice_late(admitted, se(2026, 3, 29, 12, 30))


def test_admission_notice_refuses_a_naive_admission_time():
    with pytest.raises(ValueError, match="aware"):
        admission_notice_due(datetime(2026, 11, 20, 9))


@pytest.mark.parametrize("counting", ["calendar", "working"])
def test_the_deadline_policy_asks_the_rule_for_the_admission_notice(counting):
    admitted = se(2026, 12, 24, 8)  # julafton: no working-day counting for this one
    policy = DeadlinePolicy(day_counting=counting)
    assert due_at("admission-notice", admitted, policy) == admission_notice_due(admitted)


# ---- SIP needed: help from both kommun and region, and the default for an unstated need --------------
@pytest.mark.parametrize(
    ("kommun", "region", "expected"),
    [(True, True, True), (True, False, False), (False, True, False), (False, False, False)],
)
def test_sip_needed_only_when_both_kommun_and_region(kommun, region, expected):
    assert sip_needed(kommun, region) is expected
    # a stated need is never overridden by the default
    assert sip_needed(kommun, region, assume=not expected) is expected


def test_an_unstated_need_is_assumed_by_default():
    assert ASSUME_SIP_NEEDED is True
    assert PlanningSettings.model_fields["intake_assume_sip_needed"].default is ASSUME_SIP_NEEDED
    assert sip_needed(None, None) is True
    assert sip_needed(None, True) is True
    assert sip_needed(True, None) is True
    assert sip_needed(None, False) is False  # a stated "no" still decides


def test_an_unstated_need_is_not_assumed_when_configured_so():
    assert sip_needed(None, None, assume=False) is False
    assert sip_needed(True, None, assume=False) is False
    assert sip_needed(None, True, assume=False) is False
    assert sip_needed(True, True, assume=False) is True


# ---- age: under 18 the guardians take part ----------------------------------------------------------
def test_a_child_is_an_adult_from_the_18th_birthday():
    assert CHILD.startswith("20170101")  # born 1 January 2017
    assert ADULT_AGE == 18
    assert is_child(CHILD, date(2034, 12, 31))  # 17 years and 364 days
    assert not is_child(CHILD, date(2035, 1, 1))  # the 18th birthday
    assert not is_child(CHILD, date(2035, 1, 2))
    assert is_child(CHILD, date(2017, 1, 1))  # the day of birth


def test_age_of_a_samordningsnummer_counts_from_the_real_birth_day():
    # 191401682396: born 8 January 1914 (day + 60)
    assert not is_child(SAMORDNINGSNUMMER, date(2026, 11, 20))
    assert is_child(SAMORDNINGSNUMMER, date(1932, 1, 7))  # the day before the 18th birthday
    assert not is_child(SAMORDNINGSNUMMER, date(1932, 1, 8))


def test_an_adult_test_person_is_not_a_child():
    assert not is_child(ADULT, date(2026, 11, 20))
    assert is_child(ADULT, date(2017, 12, 31))  # born 2000-01-01: 17 on the last day of 2017
    assert not is_child(ADULT, date(2018, 1, 1))


def test_is_child_refuses_what_is_not_a_swedish_identifier():
    with pytest.raises(ValueError):
        is_child("200001012385", date(2026, 11, 20))  # wrong check digit


# ---- readmission ------------------------------------------------------------------------------------
def stay(kind: str = "personnummer", **kw) -> Stay:
    return Stay(
        hospital_id="SE2321000016-H1", stay_id="S1", patient_system="x", patient_value=ADULT,
        patient_kind=kind, **kw,
    )  # fmt: skip


def test_readmission_suspends_every_case_taken_up_and_not_yet_suspended():
    assert SUSPEND_ON_READMISSION == frozenset(
        {"consent_pending", "preparing", "invitation_requested", "invited", "meeting_scheduled",
         "plan_drafted", "established", "follow_up_due"}
    )  # fmt: skip
    # the boundary: not a proposal not yet taken up, not one already suspended, no ended case
    assert "need_identified" not in SUSPEND_ON_READMISSION
    assert "suspended" not in SUSPEND_ON_READMISSION
    assert not SUSPEND_ON_READMISSION & FINAL_STATES
    # every one of them may be suspended by the lifecycle
    assert all("suspended" in TRANSITIONS[s] for s in SUSPEND_ON_READMISSION)


def test_an_admission_that_changed_nothing_on_a_stay_without_a_case_looks_for_a_case_to_suspend():
    assert readmission_looks_for_case(stay(), "admitted", "none")
    assert readmission_looks_for_case(stay("samordningsnummer"), "admitted", "none")


@pytest.mark.parametrize(
    ("s", "kind", "effect"),
    [
        (stay(), "admitted", "ignored"),  # a duplicate admission
        (stay(case_id="c1", case_opened_by="ready-for-discharge"), "admitted", "none"),  # this stay's own
        (stay("other"), "admitted", "none"),  # no Swedish identifier: no SIP to find
        (stay(), "ready-for-discharge", "none"),
        (stay(), "discharged", "open-case"),
    ],
)
def test_no_readmission_lookup(s, kind, effect):
    assert not readmission_looks_for_case(s, kind, effect)


def test_out_of_hospital_again_resumes_a_sip_suspended_on_readmission():
    carried = stay(case_id="c1", case_opened_by=READMISSION)
    assert readmission_resumes(carried, "ready-for-discharge", "open-case")
    assert readmission_resumes(carried, "ready-for-discharge", "earlier-ready")
    assert readmission_resumes(carried, "discharged", "none")  # the discharge resumes it in any case
    assert readmission_resumes(carried, "discharged", "ignored")
    # a duplicate or stale ready-for-discharge does not; other events do not
    assert not readmission_resumes(carried, "ready-for-discharge", "ignored")
    assert not readmission_resumes(carried, "ready-for-discharge", "none")
    assert not readmission_resumes(carried, "leave-ended", "none")
    assert not readmission_resumes(carried, "admitted", "none")


def test_a_stay_that_opened_its_own_case_is_not_resumed_as_a_readmission():
    own = stay(case_id="c1", case_opened_by="ready-for-discharge")
    assert not readmission_resumes(own, "discharged", "none")
    assert not readmission_resumes(stay(), "ready-for-discharge", "open-case")


def test_rules_import_only_pure_modules():
    """No adapter, transport, storage or clock behind the rules (import-linter checks it as well)."""
    tree = ast.parse(Path(rules.__file__).read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    assert imported == {
        "__future__",
        "datetime",
        "services.planning.domain",
        "services.planning.stays",
        "shared.identifiers",
    }
