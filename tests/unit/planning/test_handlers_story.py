"""planning's table of event handlers as stories, with the in-memory unit of work.

No broker, no database: a case is opened from a discharge (the hospital's path, in the same unit of
work), then each event goes the way the generic subscriber takes it (:func:`shared.handler_table.handle`:
one unit of work, the inbox, the handler). What planning would publish is ``uow.sent``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest

from services.planning import handlers
from services.planning.adapters.memory import InMemoryPlanningUnitOfWork
from services.planning.deadlines import DeadlinePolicy
from services.planning.domain import SipCase
from services.planning.handlers import HANDLERS, OWN_EVENT_HANDLERS, PlanningDeps
from shared.clock import FixedClock
from shared.contracts import (
    ConsentDeclined,
    ConsentGranted,
    ConsentRequested,
    ConsentWithdrawn,
    DeadlineBreached,
    DischargeNotified,
    HospitalStayEvent,
    InvitationSent,
    SendInvitation,
)
from shared.directory import load_directory
from shared.errors import PermanentError
from shared.handler_table import handle
from shared.topology import retired_of, subscriptions_of
from tests.support.personnummer import ADULT

REPO = Path(__file__).resolve().parents[3]
DIRECTORY = load_directory(REPO / "config" / "directory.yaml")
NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
VC = "SE2321000016-VC001"  # the primary-care unit: owns the case
SOC = "SE2120001-SOC0180"  # social services


@pytest.fixture
def uow() -> InMemoryPlanningUnitOfWork:
    """A clock at 20 November 2026 10:00 UTC, the default deadline policy, no cases."""
    return InMemoryPlanningUnitOfWork(
        PlanningDeps(clock=FixedClock(NOW), policy=DeadlinePolicy(), web_base_url="https://sip.example")
    )


async def deliver(uow: InMemoryPlanningUnitOfWork, msg) -> bool:
    """What the generic subscriber does with a delivery: False when the inbox has seen it."""
    return await handle("planning", HANDLERS, lambda: uow, msg)


async def react(uow: InMemoryPlanningUnitOfWork, event) -> None:
    """What the scheduler does with a breach it raised: planning's own reaction, in one transaction
    (in-process, OWN_EVENT_HANDLERS; no queue, no inbox)."""
    async with uow:
        await OWN_EVENT_HANDLERS[type(event)](uow, event)


async def discharged(uow: InMemoryPlanningUnitOfWork) -> SipCase:
    """Given: a hospital discharge opened a case that waits for the person's consent."""
    msg = DischargeNotified(
        episode_id="VISIT-1", hospital_hsa_id="SE2321000016-SJH01",
        patient={"identifier": ADULT, "kommun_code": "0180", "primary_care_unit_hsa_id": VC},
        ready_for_discharge_at=NOW - timedelta(hours=2), needs_kommun_support=True,
        needs_region_support=True, correlation_id="corr-1",
    )  # fmt: skip
    async with uow:
        case = await handlers.handle_discharge(
            msg, repo=uow.cases, outbox=uow, directory=DIRECTORY, clock=uow.deps.clock,
            deadlines=uow.deadlines, policy=uow.deps.policy,
        )  # fmt: skip
    assert case is not None and case.state == "consent_pending"
    assert [type(m) for m in uow.sent] == [ConsentRequested]
    uow.sent.clear()
    return case


def granted(case: SipCase, **kw) -> ConsentGranted:
    return ConsentGranted(
        consent_id=kw.pop("consent_id", uuid4()), case_id=case.id, patient_identifier=ADULT,
        purposes=("draw-up-plan", "send-invitation"), recipients=(VC, SOC), **kw,
    )  # fmt: skip


async def test_a_granted_consent_drafts_the_plan_and_invites_the_participants_once(uow):
    case = await discharged(uow)
    ev = granted(case)

    assert await deliver(uow, ev)
    assert not await deliver(uow, ev)  # redelivered: the inbox has it

    now = await uow.cases.get_case(case.id)
    assert now.state == "invitation_requested" and now.consent_id == ev.consent_id
    (invite,) = uow.sent
    assert isinstance(invite, SendInvitation)
    assert invite.case_id == case.id and set(invite.recipients) == {VC, SOC}
    assert invite.plan_url == f"https://sip.example/plans/{case.id}"
    assert (await uow.cases.latest_plan(case.id))["resourceType"] == "CarePlan"


async def test_a_declined_consent_ends_the_case_and_its_deadlines(uow):
    case = await discharged(uow)

    await deliver(uow, ConsentDeclined(consent_id=uuid4(), case_id=case.id, patient_identifier=ADULT))

    assert (await uow.cases.get_case(case.id)).state == "declined"
    assert ("case_ended:declined", case.id) in uow.deadlines.told
    assert uow.sent == []


async def test_the_first_invitation_sent_makes_the_case_invited_and_meets_the_deadline(uow):
    case = await discharged(uow)
    await deliver(uow, granted(case))
    sent = InvitationSent(
        case_id=case.id, notification_id=uuid4(), recipient_hsa_id=SOC, channel="email", sent_at=NOW
    )

    await deliver(uow, sent)

    now = await uow.cases.get_case(case.id)
    assert now.state == "invited" and now.invited_at == NOW and now.invitation_deadline_met
    assert ("invitation_sent", case.id) in uow.deadlines.told
    assert await uow.cases.invited_recipients(case.id) == [SOC]


async def test_a_withdrawn_consent_closes_the_case_it_rests_on(uow):
    case = await discharged(uow)
    ev = granted(case)
    await deliver(uow, ev)

    await deliver(
        uow,
        ConsentWithdrawn(
            consent_id=ev.consent_id, case_id=case.id, patient_identifier=ADULT, cause="withdrawal",
            effective_at=NOW,
        ),
    )  # fmt: skip

    now = await uow.cases.get_case(case.id)
    assert now.state == "consent_withdrawn" and now.closed_reason == "consent withdrawn"
    assert ("case_ended:consent withdrawn", case.id) in uow.deadlines.told


async def test_an_invitation_deadline_breach_is_notifys_to_escalate_planning_changes_nothing(uow):
    case = await discharged(uow)
    before = await uow.cases.get_case(case.id)

    await react(
        uow,
        DeadlineBreached(
            case_id=case.id, case_reference=case.reference, kind="invitation", due_at=NOW,
            breached_at=NOW, owner_hsa_id=VC,
        ),
    )  # fmt: skip

    assert await uow.cases.get_case(case.id) == before and uow.sent == []


async def test_an_event_for_an_unknown_case_is_refused_and_leaves_nothing_behind(uow):
    sent = InvitationSent(
        case_id=uuid4(), notification_id=uuid4(), recipient_hsa_id=SOC, channel="email", sent_at=NOW
    )

    with pytest.raises(PermanentError):
        await deliver(uow, sent)

    assert uow.inbox == set() and uow.cases.invitations == []


def test_the_table_covers_every_queue_of_planning_but_the_hospitals_two():
    hospital = {DischargeNotified, HospitalStayEvent}  # their own subscribers: the message store
    assert set(HANDLERS) == {s.contract for s in subscriptions_of("planning")} - hospital


def test_planning_reacts_to_its_own_breaches_in_process_and_subscribes_to_them_no_more():
    assert set(OWN_EVENT_HANDLERS) == {DeadlineBreached}
    assert DeadlineBreached not in {s.contract for s in subscriptions_of("planning")}
    # the queue an earlier version used is drained and deleted at start, with these handlers
    assert {s.contract for s in retired_of("planning")} == set(OWN_EVENT_HANDLERS)
