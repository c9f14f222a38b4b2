from datetime import UTC, datetime, timedelta
from itertools import product
from uuid import uuid4

import pytest

from services.planning.domain import (
    TRANSITIONS,
    InvalidTransition,
    Participant,
    SipCase,
    invitation_deadline,
    invitees,
    new_reference,
)
from shared.errors import PermanentError

NOW = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)
STATES = sorted(TRANSITIONS)


def case(state="consent_pending", **kw) -> SipCase:
    base = dict(
        id=uuid4(), reference="SIP-2026-ABC123", hospital_hsa_id="H", episode_id="E",
        patient_identifier="191212121212", is_child=False, kommun_code="0180", owner_hsa_id="VC",
        participants=(Participant("SOC", "Soc", "kommun_social_services"), Participant("VC", "Vc", "primary_care_unit")),
        state=state, opened_at=NOW, ready_for_discharge_at=NOW, invitation_due_at=NOW + timedelta(days=3),
    )  # fmt: skip
    base.update(kw)
    return SipCase(**base)


# The lifecycle, written out as the table the law and practice describe (SIP.md). Every pair of states
# not listed here must be refused.
ENDINGS = ("suspended", "cancelled", "closed", "consent_withdrawn")
ALLOWED = {
    ("need_identified", "consent_pending"),  # a proposal is taken up
    ("need_identified", "refused"),  # ... or refused, with a reason
    ("need_identified", "cancelled"),
    ("consent_pending", "preparing"),  # a proposed SIP: participants and preferences gathered
    ("consent_pending", "invitation_requested"),  # a discharge: invite at once (LUS clock)
    ("consent_pending", "declined"),
    ("consent_pending", "suspended"),
    ("consent_pending", "cancelled"),
    ("consent_pending", "closed"),
    ("preparing", "invitation_requested"),
    ("invitation_requested", "invited"),
    ("invited", "meeting_scheduled"),
    ("meeting_scheduled", "plan_drafted"),
    ("plan_drafted", "established"),  # the person's recorded approval
    ("established", "plan_drafted"),  # a change: a new version, in force only when approved
    ("established", "follow_up_due"),
    ("follow_up_due", "plan_drafted"),  # followed up: revise
    ("follow_up_due", "established"),  # followed up: continue
    *(
        (s, e)
        for s in (
            "preparing",
            "invitation_requested",
            "invited",
            "meeting_scheduled",
            "plan_drafted",
            "established",
            "follow_up_due",
        )
        for e in ENDINGS
    ),
    # a suspended case resumes where it was, or ends
    *(
        ("suspended", s)
        for s in (
            "consent_pending",
            "preparing",
            "invitation_requested",
            "invited",
            "meeting_scheduled",
            "plan_drafted",
            "established",
            "follow_up_due",
        )
    ),
    ("suspended", "cancelled"),
    ("suspended", "closed"),
    ("suspended", "consent_withdrawn"),
}


@pytest.mark.parametrize(("current", "target"), sorted(product(STATES, STATES)))
def test_every_transition_is_either_allowed_or_refused(current, target):
    # a suspended case may only resume to where it was; here it was suspended from the target
    c = case(current, suspended_from=target if current == "suspended" else None)
    reason = {"closed_reason": "deceased"} if target in ("cancelled", "closed", "refused") else {}
    if (current, target) in ALLOWED:
        assert c.move_to(target, **reason).state == target
    else:
        with pytest.raises(InvalidTransition) as err:
            c.move_to(target, **reason)
        assert f"from {current} to {target}" in str(err.value)
        assert isinstance(err.value, PermanentError)  # a refused transition is never retried


def test_transition_table_is_what_the_tests_say():
    assert {(a, b) for a, bs in TRANSITIONS.items() for b in bs} == ALLOWED


@pytest.mark.parametrize(("current", "target"), [("consent_pending", "cancelled"), ("consent_pending", "closed"),
                                                 ("need_identified", "refused")])  # fmt: skip
def test_ending_a_case_needs_a_recorded_reason(current, target):
    with pytest.raises(PermanentError, match="reason"):
        case(current).move_to(target)


def test_a_suspended_case_resumes_only_where_it_was_with_a_new_deadline():
    c = case("invitation_requested").suspend()
    assert c.state == "suspended" and c.suspended_from == "invitation_requested"
    with pytest.raises(InvalidTransition):
        c.move_to("consent_pending")
    later = NOW + timedelta(days=5)
    r = c.resume(later, 3)
    assert r.state == "invitation_requested" and r.suspended_from is None
    assert r.ready_for_discharge_at == later and r.invitation_due_at == later + timedelta(days=3)


def test_invitation_deadline_is_three_days_from_the_exact_ready_timestamp():
    ready = datetime(2026, 12, 30, 23, 59, 59, 123456, tzinfo=UTC)
    assert invitation_deadline(ready) == datetime(2027, 1, 2, 23, 59, 59, 123456, tzinfo=UTC)
    assert invitation_deadline(ready, 5) == ready + timedelta(days=5)
    with pytest.raises(ValueError):
        invitation_deadline(datetime(2026, 1, 1))


def test_deadline_met_is_known_only_once_invited():
    c = case("invitation_requested")
    assert c.invitation_deadline_met is None
    assert c.move_to("invited", invited_at=c.invitation_due_at).invitation_deadline_met is True
    late = c.move_to("invited", invited_at=c.invitation_due_at + timedelta(seconds=1))
    assert late.invitation_deadline_met is False


def test_only_consented_organisations_are_invited():
    assert invitees(("A", "B", "C"), ()) == ("A", "B", "C")
    assert invitees(("A", "B", "C"), ("C", "A", "X")) == ("A", "C")
    assert invitees(("A",), ("X",)) == ()


def test_reference_does_not_look_like_a_personnummer():
    import re

    for _ in range(200):
        ref = new_reference(uuid4(), NOW)
        assert re.fullmatch(r"SIP-2026-[0-9A-F]{6}", ref)
        assert not re.search(r"\d{6}[-+]?\d{4}", ref)
