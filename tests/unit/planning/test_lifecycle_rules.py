"""Issue #22 in planning: a step the lifecycle does not allow yet names what is missing (not an
assertion), reasons must say something, and the person's meeting needs travel to notify."""

from __future__ import annotations

from datetime import date, timedelta
from uuid import uuid4

import pytest
from pydantic import ValidationError

from services.planning import handlers, lifecycle
from services.planning.adapters.store import SqlCaseRepository
from services.planning.domain import ConsentMissing, InvalidTransition, MissingReason
from services.planning.plan import STORED, FollowUp, Meeting, MeetingPreferences
from shared.clock import FixedClock
from shared.contracts import CaseNotice, ConsentGranted, MeetingNeeds, SendInvitation
from tests.support.personnummer import ADULTS
from tests.unit.planning.test_planning_handlers import DIRECTORY, NOW, Outbox, conn  # noqa: F401

VC, SOC = "SE2321000016-VC001", "SE2120001-SOC0180"
PNR = ADULTS[5]


async def _proposed(repo: SqlCaseRepository, *, accept: bool = True):
    case = await lifecycle.propose(
        lifecycle.Proposal(patient_identifier=PNR, kommun_code="0180", primary_care_unit_hsa_id=VC,
                           proposed_by="relative"),
        repo=repo, directory=DIRECTORY, now=NOW,
    )  # fmt: skip
    if accept:
        case = await lifecycle.accept(case.id, repo=repo, outbox=Outbox(), now=NOW, agent_hsa_id=VC)
    return case


@pytest.mark.parametrize("accepted", [True, False], ids=["consent_pending", "need_identified"])
async def test_inviting_before_the_consent_names_the_missing_consent(conn, accepted):  # noqa: F811
    repo, out = SqlCaseRepository(conn), Outbox()
    case = await _proposed(repo, accept=accepted)
    versions = await repo.next_plan_version(case.id)
    with pytest.raises(ConsentMissing) as refused:
        await lifecycle.invite(case.id, repo=repo, outbox=out, now=NOW, agent_hsa_id=VC, web_base_url="x")
    assert isinstance(refused.value, InvalidTransition)  # → HTTP 409
    assert refused.value.missing == "consent" and refused.value.current == case.state
    assert case.state in str(refused.value) and "consent is missing" in str(refused.value)
    assert out.sent == [] and await repo.next_plan_version(case.id) == versions
    assert (await repo.get_case(case.id)).state == case.state


async def test_the_invitation_builder_refuses_a_case_without_consent_instead_of_asserting(conn):  # noqa: F811
    case = await _proposed(SqlCaseRepository(conn))
    with pytest.raises(ConsentMissing):
        handlers.invitation(case, case.participant_ids, "http://planning")


@pytest.mark.parametrize("blank", ["", "   ", "\t\n "])
async def test_a_blank_reason_is_no_reason(conn, blank):  # noqa: F811
    repo = SqlCaseRepository(conn)
    case = await _proposed(repo, accept=False)
    with pytest.raises(MissingReason):
        await lifecycle.refuse(case.id, blank, repo=repo, now=NOW, agent_hsa_id=VC)
    case = await lifecycle.refuse(case.id, "  behovet täcks redan \n", repo=repo, now=NOW, agent_hsa_id=VC)
    assert case.state == "refused" and case.closed_reason == "behovet täcks redan"
    other = await _proposed(repo)
    with pytest.raises(MissingReason):
        await lifecycle.close(other.id, blank, repo=repo, now=NOW, agent_hsa_id=VC)
    with pytest.raises(ValidationError, match="reason"):
        FollowUp(outcome="close", reason=blank)
    assert FollowUp(outcome="close", reason=" målen nådda ").reason == "målen nådda"


def test_need_texts_are_trimmed_and_must_say_something_and_nothing_about_health():
    prefs = MeetingPreferences(place="  Hemma ", disturbances=" starkt ljus ")
    assert (prefs.place, prefs.disturbances) == ("Hemma", "starkt ljus")
    for field in ("place", "time_of_day", "disturbances", "room"):
        for bad in ("   ", "inte nära psykosmottagningen", "F32.1", f"{PNR[:8]}-{PNR[8:]}"):
            with pytest.raises(ValidationError) as refused:
                MeetingPreferences(**{field: bad})
            assert field in str(refused.value)
    # what was stored before these rules stays readable
    stored = MeetingPreferences.model_validate({"place": "  ", "disturbances": "epilepsi"}, context=STORED)
    assert stored.place is None


async def test_the_needs_travel_on_the_invitation_the_new_time_and_the_notices(conn):  # noqa: F811
    repo, out = SqlCaseRepository(conn), Outbox()
    case = await _proposed(repo)
    prefs = MeetingPreferences(interpreter_language="ar", picture_support=True, longest_duration_minutes=60,
                               someone_stays_after=True, disturbances="starkt ljus", place="Hemma",
                               time_of_day="förmiddag", attend_all=False)  # fmt: skip
    await lifecycle.record_preferences(case.id, prefs, repo=repo, now=NOW, agent_hsa_id=VC)
    await handlers.handle_consent_granted(
        ConsentGranted(consent_id=uuid4(), case_id=case.id, patient_identifier=PNR,
                       purposes=("draw-up-plan", "send-invitation"), recipients=case.participant_ids),
        repo=repo, outbox=out, clock=FixedClock(NOW), web_base_url="x",
    )  # fmt: skip
    await lifecycle.invite(case.id, repo=repo, outbox=out, now=NOW, agent_hsa_id=VC, web_base_url="x")
    start = NOW + timedelta(days=2)
    meeting = Meeting(start=start, end=start + timedelta(hours=1), location="Rum 3")
    await repo.update_case((await repo.get_case(case.id)).move_to("invited"))
    await lifecycle.schedule_meeting(case.id, meeting, repo=repo, outbox=out, now=NOW, agent_hsa_id=VC,
                                     web_base_url="x")  # fmt: skip
    expected = MeetingNeeds(interpreter_language="ar", picture_support=True, longest_duration_minutes=60,
                            someone_stays_after=True, avoid="starkt ljus", place="Hemma", time_of_day="förmiddag",
                            attends_whole_meeting=False)  # fmt: skip
    invitations = [m for m in out.sent if isinstance(m, SendInvitation)]
    assert len(invitations) == 2 and all(m.meeting_needs == expected for m in invitations)
    assert PNR not in invitations[0].model_dump_json()
    case = await repo.get_case(case.id)
    for kind in ("plan-established", "follow-up-due"):
        n = handlers.notice(case, kind, "x", follow_up_date=date(2027, 3, 1))
        assert isinstance(n, CaseNotice) and n.meeting_needs == expected
    assert handlers.notice(case, "case-closed", "x", reason_code="other").meeting_needs is None


async def test_no_preferences_no_needs(conn):  # noqa: F811
    repo = SqlCaseRepository(conn)
    case = await _proposed(repo)
    assert handlers.notice(case, "plan-established", "x").meeting_needs is None
    await lifecycle.record_preferences(case.id, MeetingPreferences(), repo=repo, now=NOW, agent_hsa_id=VC)
    case = await repo.get_case(case.id)
    assert handlers.notice(case, "plan-established", "x").meeting_needs is None
