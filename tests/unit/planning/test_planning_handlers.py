"""Planning handlers on a real SQLite file (no broker): what they store and what they send."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest
import sqlalchemy as sa
from faststream.rabbit import TestRabbitBroker

from services.planning import handlers
from services.planning.adapters.store import SqlCaseRepository, metadata
from services.planning.app import create_app
from services.planning.fhir import care_plan
from services.planning.settings import PlanningSettings
from shared.clock import FixedClock
from shared.contracts import (
    ConsentDeclined,
    ConsentGranted,
    ConsentRequested,
    ConsentWithdrawn,
    DischargeNotified,
    InvitationSent,
    SendInvitation,
)
from shared.directory import UnknownRecipient, load_directory
from shared.errors import PermanentError
from shared.fhir import FhirValidationError, check_required_bindings
from shared.persistence import make_engine
from tests.support.personnummer import ADULT, CHILD

REPO = Path(__file__).resolve().parents[3]
DIRECTORY = load_directory(REPO / "config" / "directory.yaml")
NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


class Outbox:
    def __init__(self):
        self.sent = []

    async def send(self, m):
        self.sent.append(m)


def discharge(pnr=ADULT, kommun="0180", unit="SE2321000016-VC001", **kw) -> DischargeNotified:
    return DischargeNotified(
        episode_id=kw.pop("episode_id", "VISIT-1"), hospital_hsa_id="SE2321000016-SJH01",
        patient={"identifier": pnr, "kommun_code": kommun, "primary_care_unit_hsa_id": unit},
        ready_for_discharge_at=NOW - timedelta(hours=2), needs_kommun_support=kw.pop("kommun_help", True),
        needs_region_support=True, correlation_id="corr-1", **kw,
    )  # fmt: skip


@pytest.fixture
async def conn(tmp_path):
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/p.db")
    async with engine.begin() as c:
        await c.run_sync(metadata.create_all)
    async with engine.begin() as c:
        yield c
    await engine.dispose()


async def test_discharge_opens_case_and_asks_consent(conn):
    repo, out = SqlCaseRepository(conn), Outbox()
    case = await handlers.handle_discharge(discharge(), repo=repo, outbox=out, directory=DIRECTORY,
                                           clock=FixedClock(NOW))  # fmt: skip
    assert case is not None and case.state == "consent_pending"
    assert case.invitation_due_at == NOW - timedelta(hours=2) + timedelta(days=3)
    assert case.owner_hsa_id == "SE2321000016-VC001"
    assert case.participant_ids == ("SE2120001-SOC0180", "SE2321000016-VC001", "SE2321000016-SJH01")
    [req] = out.sent
    assert isinstance(req, ConsentRequested)
    assert req.case_id == case.id and req.proposed_recipients == case.participant_ids
    assert req.correlation_id == "corr-1" and req.is_child is False
    assert (await repo.get_case(case.id)) == case


async def test_resent_discharge_for_the_same_episode_has_no_second_effect(conn):
    repo, out = SqlCaseRepository(conn), Outbox()
    for _ in range(2):  # different message ids, same hospital episode
        await handlers.handle_discharge(
            discharge(), repo=repo, outbox=out, directory=DIRECTORY, clock=FixedClock(NOW)
        )
    assert len(out.sent) == 1
    assert len(await repo.open_cases()) == 1


async def test_no_case_when_only_the_region_is_needed(conn):
    repo, out = SqlCaseRepository(conn), Outbox()
    assert await handlers.handle_discharge(discharge(kommun_help=False), repo=repo, outbox=out,
                                           directory=DIRECTORY, clock=FixedClock(NOW)) is None  # fmt: skip
    assert out.sent == [] and await repo.open_cases() == []


async def test_child_is_marked_for_guardians(conn):
    out = Outbox()
    case = await handlers.handle_discharge(discharge(CHILD), repo=SqlCaseRepository(conn), outbox=out,
                                           directory=DIRECTORY, clock=FixedClock(NOW))  # fmt: skip
    assert case.is_child and out.sent[0].is_child


async def test_unknown_kommun_is_a_visible_permanent_error(conn):
    with pytest.raises(UnknownRecipient, match="kommun code 9999"):
        await handlers.handle_discharge(discharge(kommun="9999"), repo=SqlCaseRepository(conn), outbox=Outbox(),
                                        directory=DIRECTORY, clock=FixedClock(NOW))  # fmt: skip
    with pytest.raises(UnknownRecipient, match="SE-NOPE"):
        await handlers.handle_discharge(discharge(unit="SE-NOPE"), repo=SqlCaseRepository(conn), outbox=Outbox(),
                                        directory=DIRECTORY, clock=FixedClock(NOW))  # fmt: skip


async def _opened(conn):
    repo, out = SqlCaseRepository(conn), Outbox()
    case = await handlers.handle_discharge(
        discharge(), repo=repo, outbox=out, directory=DIRECTORY, clock=FixedClock(NOW)
    )
    return repo, case


async def test_consent_drafts_plan_and_invites_only_consented_participants(conn):
    repo, case = await _opened(conn)
    out = Outbox()
    ev = ConsentGranted(consent_id=uuid4(), case_id=case.id, patient_identifier=ADULT,
                        purposes=("draw-up-plan", "send-invitation"),
                        recipients=("SE2120001-SOC0180", "SE2321000016-VC001"))  # fmt: skip
    moved = await handlers.handle_consent_granted(ev, repo=repo, outbox=out, clock=FixedClock(NOW),
                                                  web_base_url="https://sip.example/")  # fmt: skip
    assert moved.state == "invitation_requested" and moved.consent_id == ev.consent_id
    [inv] = out.sent
    assert isinstance(inv, SendInvitation)
    assert inv.recipients == ("SE2120001-SOC0180", "SE2321000016-VC001")  # the hospital was not consented
    assert inv.plan_url == f"https://sip.example/plans/{case.id}"  # the web page, not the FHIR API
    assert inv.invitation_due_at == case.invitation_due_at and inv.correlation_id == "corr-1"
    plan = await repo.latest_plan(case.id)
    assert plan["resourceType"] == "CarePlan" and plan["meta"]["versionId"] == "1"
    # a second consent for the same case changes nothing
    again = await handlers.handle_consent_granted(ev.model_copy(update={"consent_id": uuid4()}), repo=repo,
                                                  outbox=out, clock=FixedClock(NOW), web_base_url="x")  # fmt: skip
    assert again is None and len(out.sent) == 1


async def test_consent_without_invitation_purpose_does_not_invite(conn):
    repo, case = await _opened(conn)
    out = Outbox()
    ev = ConsentGranted(consent_id=uuid4(), case_id=case.id, patient_identifier=ADULT,
                        purposes=("draw-up-plan",), recipients=())  # fmt: skip
    assert await handlers.handle_consent_granted(ev, repo=repo, outbox=out, clock=FixedClock(NOW),
                                                 web_base_url="x") is None  # fmt: skip
    assert out.sent == [] and (await repo.get_case(case.id)).state == "consent_pending"


async def test_consent_for_another_person_is_refused(conn):
    repo, case = await _opened(conn)
    ev = ConsentGranted(consent_id=uuid4(), case_id=case.id, patient_identifier=CHILD,
                        purposes=("draw-up-plan", "send-invitation"), recipients=())  # fmt: skip
    with pytest.raises(PermanentError, match="another person"):
        await handlers.handle_consent_granted(ev, repo=repo, outbox=Outbox(), clock=FixedClock(NOW),
                                              web_base_url="x")  # fmt: skip


async def test_declined_closes_without_invitation(conn):
    repo, case = await _opened(conn)
    moved = await handlers.handle_consent_declined(
        ConsentDeclined(consent_id=uuid4(), case_id=case.id, patient_identifier=ADULT), repo=repo
    )
    assert moved.state == "declined"
    assert await repo.open_cases() == []
    assert [c.state for c in await repo.open_cases(include_closed=True)] == ["declined"]


async def test_invitation_sent_marks_invited_and_versions_the_plan(conn):
    repo, case = await _opened(conn)
    await handlers.handle_consent_granted(
        ConsentGranted(consent_id=uuid4(), case_id=case.id, patient_identifier=ADULT,
                       purposes=("draw-up-plan", "send-invitation"), recipients=()),
        repo=repo, outbox=Outbox(), clock=FixedClock(NOW), web_base_url="x",
    )  # fmt: skip
    sent_at = NOW + timedelta(hours=1)
    for hsa in ("SE2120001-SOC0180", "SE2321000016-VC001"):
        await handlers.handle_invitation_sent(
            InvitationSent(case_id=case.id, notification_id=uuid4(), recipient_hsa_id=hsa, channel="email",
                           sent_at=sent_at), repo=repo, clock=FixedClock(NOW))  # fmt: skip
    c = await repo.get_case(case.id)
    assert c.state == "invited" and c.invited_at == sent_at and c.invitation_deadline_met is True
    plan = await repo.latest_plan(case.id)
    assert plan["meta"]["versionId"] == "2"
    task = next(r for r in plan["contained"] if r["resourceType"] == "Task")
    assert task["status"] == "completed"


async def test_a_meeting_goes_to_everyone_invited_even_before_their_delivery_is_confirmed(conn):
    """Regression (seen on PostgreSQL): the meeting time went only to the participants whose
    InvitationSent had come back, so one scheduled right after the first delivery reached one of three."""
    from services.planning import lifecycle
    from services.planning.plan import Meeting

    repo, case = await _opened(conn)
    consented = ("SE2120001-SOC0180", "SE2321000016-VC001")
    await handlers.handle_consent_granted(
        ConsentGranted(consent_id=uuid4(), case_id=case.id, patient_identifier=ADULT,
                       purposes=("draw-up-plan", "send-invitation"), recipients=consented),
        repo=repo, outbox=Outbox(), clock=FixedClock(NOW), web_base_url="x",
    )  # fmt: skip
    assert (await repo.get_case(case.id)).invitees == consented  # kept with the case
    await handlers.handle_invitation_sent(
        InvitationSent(case_id=case.id, notification_id=uuid4(), recipient_hsa_id=consented[0], channel="email",
                       sent_at=NOW), repo=repo, clock=FixedClock(NOW))  # fmt: skip
    out = Outbox()
    start = NOW + timedelta(days=2)
    await lifecycle.schedule_meeting(
        case.id, Meeting(start=start, end=start + timedelta(hours=1), location="Rum 3"), repo=repo, outbox=out, now=NOW,
        agent_hsa_id=consented[1], web_base_url="x",
    )  # fmt: skip
    [inv] = out.sent
    assert isinstance(inv, SendInvitation) and inv.recipients == consented and inv.meeting_start == start


def _plan():
    from services.planning.domain import Participant, SipCase

    c = SipCase(id=uuid4(), reference="SIP-2026-ABC123", hospital_hsa_id="SE2321000016-SJH01", episode_id="E",
                patient_identifier=ADULT, is_child=False, kommun_code="0180", owner_hsa_id="SE2321000016-VC001",
                participants=(Participant("SE2120001-SOC0180", "Soc", "kommun_social_services"),
                              Participant("SE2321000016-VC001", "VC", "primary_care_unit")),
                state="consent_pending", opened_at=NOW, ready_for_discharge_at=NOW,
                invitation_due_at=NOW + timedelta(days=3))  # fmt: skip
    return care_plan(c, version=1, at=NOW)


def test_care_plan_is_valid_r4_with_careteam_and_deadline_task():
    from fhir.resources.R4B.careplan import CarePlan

    model = CarePlan.model_validate(_plan())
    assert model.status == "draft" and model.intent == "plan"
    assert model.category[0].coding[0].code == "SIP"
    assert model.subject.identifier.system == "http://electronichealth.se/identifier/personnummer"
    team = next(r for r in model.contained if r.get_resource_type() == "CareTeam")
    assert [p.member.identifier.value for p in team.participant] == [
        ADULT,  # the person is a member of the team
        "SE2120001-SOC0180",
        "SE2321000016-VC001",
    ]
    task = next(r for r in model.contained if r.get_resource_type() == "Task")
    assert task.restriction.period.end.isoformat().startswith("2026-11-23T10:00")
    assert task.owner.identifier.value == "SE2321000016-VC001"


def test_bad_code_is_refused_naming_the_element():
    from fhir.resources.R4B.careplan import CarePlan

    bad = {**_plan(), "intent": "wish"}
    model = CarePlan.model_validate(bad)  # fhir.resources itself does not check the binding
    with pytest.raises(FhirValidationError) as err:
        check_required_bindings(model)
    assert err.value.element == "CarePlan.intent"


async def test_subscribers_with_test_broker(tmp_path):
    app = create_app(PlanningSettings(data_dir=str(tmp_path), directory_path=str(REPO / "config/directory.yaml")),
                     clock=FixedClock(NOW))  # fmt: skip
    rt = app.state.runtime
    async with rt.engine.begin() as c:
        await c.run_sync(metadata.create_all)
    ev = discharge()
    async with TestRabbitBroker(rt.broker) as br:
        await br.publish(ev.model_dump(mode="json"), exchange="hospital.events", routing_key=ev.routing_key)
        await br.publish(ev.model_dump(mode="json"), exchange="hospital.events", routing_key=ev.routing_key)
    async with rt.engine.connect() as c:
        rows = (await c.execute(sa.select(rt.outbox.c.routing_key, rt.outbox.c.body))).all()
        cases = await SqlCaseRepository(c).open_cases()
    assert [r.routing_key for r in rows] == ["consent.request.v1"]
    assert json.loads(rows[0].body)["case_id"] == str(cases[0].id)
    await rt.engine.dispose()


@pytest.fixture
def validations(monkeypatch):
    """The fhir.resources round trips (validate + required bindings + dump) made, by resource type."""
    from services.planning import fhir

    made: list[str] = []
    real = fhir._validated

    def counting(data, r5, kind):
        made.append(kind)
        return real(data, r5, kind)

    monkeypatch.setattr(fhir, "_validated", counting)
    return made


async def test_consent_and_invitations_store_unvalidated_exactly_what_validation_would(conn, validations):
    """Consent given and invitation sent are system transitions: their CarePlan versions are stored without
    the fhir.resources round trip — and are the validated rendering of the case as it was, to the byte
    that matters (GET /fhir/CarePlan serves the stored JSON)."""
    from fhir.resources.R4B.careplan import CarePlan

    from services.planning.adapters.deadline_store import SqlDeadlines
    from services.planning.adapters.store import case_from_snapshot

    clock = FixedClock(datetime(2026, 11, 20, 10, 0, 3, 250017, tzinfo=UTC))  # a real clock's microseconds
    repo = SqlCaseRepository(conn)
    case = await handlers.handle_discharge(discharge(), repo=repo, outbox=Outbox(), directory=DIRECTORY,
                                           clock=clock, deadlines=SqlDeadlines(conn))  # fmt: skip
    await handlers.handle_consent_granted(
        ConsentGranted(consent_id=uuid4(), case_id=case.id, patient_identifier=ADULT,
                       purposes=("draw-up-plan", "send-invitation"), recipients=case.participant_ids),
        repo=SqlCaseRepository(conn), outbox=Outbox(), clock=clock, web_base_url="x",
        deadlines=SqlDeadlines(conn),
    )  # fmt: skip
    for hsa in case.participant_ids:
        await handlers.handle_invitation_sent(
            InvitationSent(case_id=case.id, notification_id=uuid4(), recipient_hsa_id=hsa, channel="email",
                           sent_at=clock.now() + timedelta(minutes=1)),
            repo=SqlCaseRepository(conn), clock=clock, deadlines=SqlDeadlines(conn),
        )  # fmt: skip
    assert validations == []
    rows = await repo.plan_versions(case.id)
    assert [(r.version, r.reason) for r in rows] == [(2, "invitation sent"), (1, "consent given")]
    for r in rows:
        stored = json.loads(r.resource)
        assert stored == care_plan(case_from_snapshot(r.snapshot), version=r.version, at=r.recorded_at)
        check_required_bindings(CarePlan.model_validate(stored))
    assert stored["meta"]["lastUpdated"] == "2026-11-20T10:00:03.250017Z"


async def test_where_content_enters_the_plan_it_is_validated(conn, validations):
    """The coordinators' commands (preferences, meeting, plan) and the rarer system transitions keep the
    full validation; only consent given and invitation sent skip it."""
    from services.planning import lifecycle
    from services.planning.plan import Meeting, MeetingPreferences, PlanContent

    vc, soc = "SE2321000016-VC001", "SE2120001-SOC0180"
    repo, case = await _opened(conn)
    await lifecycle.record_preferences(case.id, MeetingPreferences(place="Hemma", interpreter_language="ar"),
                                       repo=repo, now=NOW, agent_hsa_id=vc)  # fmt: skip
    assert validations == ["CarePlan"]
    await handlers.handle_consent_granted(
        ConsentGranted(consent_id=uuid4(), case_id=case.id, patient_identifier=ADULT,
                       purposes=("draw-up-plan", "send-invitation"), recipients=(soc, vc)),
        repo=repo, outbox=Outbox(), clock=FixedClock(NOW), web_base_url="x",
    )  # fmt: skip
    await handlers.handle_invitation_sent(
        InvitationSent(case_id=case.id, notification_id=uuid4(), recipient_hsa_id=soc, channel="email",
                       sent_at=NOW), repo=repo, clock=FixedClock(NOW))  # fmt: skip
    assert validations == ["CarePlan"]
    start = NOW + timedelta(days=2)
    await lifecycle.schedule_meeting(case.id, Meeting(start=start, end=start + timedelta(hours=1), location="Rum 3"),
                                     repo=repo, outbox=Outbox(), now=NOW, agent_hsa_id=vc, web_base_url="x")  # fmt: skip
    content = PlanContent.model_validate({
        "needs": ["Stöd i hemmet"], "goals": [{"id": "g1", "description": "Bo kvar hemma"}],
        "overall_responsibility_hsa_id": vc, "coordination": "VC samordnar", "follow_up_date": "2027-03-01",
    })  # fmt: skip
    await lifecycle.draft_plan(case.id, content, repo=repo, now=NOW, agent_hsa_id=vc)
    assert validations == ["CarePlan"] * 3
    await handlers.handle_consent_withdrawn(
        ConsentWithdrawn(consent_id=(await repo.get_case(case.id)).consent_id, case_id=case.id,
                         patient_identifier=ADULT, cause="withdrawal", effective_at=NOW),
        repo=repo, clock=FixedClock(NOW),
    )  # fmt: skip
    assert validations == ["CarePlan"] * 4
    assert [r.version for r in await repo.plan_versions(case.id)] == [6, 5, 4, 3, 2, 1]


async def test_plan_versions_stay_consecutive_within_one_transaction(conn):
    """The next version is read with the case for update (SQLite) and kept up to date by the repository."""
    repo, case = await _opened(conn)
    locked = await repo.get_case(case.id, for_update=True)
    assert await repo.next_plan_version(case.id) == 1
    assert await handlers._new_plan_version(repo, locked, NOW) == 1
    assert await handlers._new_plan_version(repo, locked, NOW) == 2
    other = SqlCaseRepository(conn)
    assert await other.next_plan_version(case.id) == 3
    await other.get_case(case.id, for_update=True)
    assert await other.next_plan_version(case.id) == 3
    assert await repo.next_plan_version(case.id) == 3
    assert await repo.get_case(uuid4(), for_update=True) is None


async def test_an_invitation_is_recorded_once_per_recipient_and_channel(conn):
    repo, case = await _opened(conn)
    vc = "SE2321000016-VC001"
    assert await repo.record_invitation(case.id, vc, "email", NOW) is True
    assert await repo.record_invitation(case.id, vc, "email", NOW + timedelta(hours=1)) is False
    assert await repo.record_invitation(case.id, vc, "sms", NOW + timedelta(hours=2)) is True
    assert await repo.invited_recipients(case.id) == [vc]
    rows = (
        await conn.execute(sa.text("SELECT channel, sent_at FROM case_invitations ORDER BY channel"))
    ).all()
    assert [r.channel for r in rows] == ["email", "sms"] and rows[0].sent_at.startswith("2026-11-20 10:00:00")
