"""notify's use cases as stories, through the handler table with the in-memory unit of work.

No broker, no database: each message goes the way the generic subscriber takes it
(:func:`shared.handler_table.handle`: one unit of work, the inbox, the handler), the withdrawal
through its own path (:func:`services.notify.handlers.table.withdraw`, under the send gate).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
import yaml

from services.notify.adapters.memory import InMemoryNotifyUnitOfWork
from services.notify.domain import Notification
from services.notify.gate import SendGate
from services.notify.handlers.table import HANDLERS, NotifyDeps, withdraw
from shared.clock import FixedClock
from shared.contracts import CaseNotice, ConsentWithdrawn, DeadlineBreached, SendInvitation
from shared.directory import Directory, UnknownRecipient
from shared.handler_table import handle
from shared.topology import subscription, subscriptions_of
from tests.support.personnummer import ADULT
from tests.unit.notify.conftest import DIRECTORY, T0

SOC = "SE2120001-SOC0180"  # social services: e-mail
VC = "SE2321000016-VC001"  # primary care: e-mail (two addresses), webhook, SMS
REF = "SIP-2026-4F3A9C"


@pytest.fixture
def uow() -> InMemoryNotifyUnitOfWork:
    """A directory of three organisations, a clock at 2 March 2026 09:00 (Stockholm), no notifications."""
    directory = Directory.model_validate(yaml.safe_load(DIRECTORY))
    return InMemoryNotifyUnitOfWork(NotifyDeps(directory=directory, clock=FixedClock(T0)))


async def deliver(uow: InMemoryNotifyUnitOfWork, msg) -> bool:
    """What the generic subscriber does with a delivery: False when the inbox has seen it."""
    return await handle("notify", HANDLERS, lambda: uow, msg)


def everything(uow: InMemoryNotifyUnitOfWork) -> list[Notification]:
    return list(uow.notifications.rows.values())


def invitation(*recipients: str, **kw) -> SendInvitation:
    return SendInvitation(
        case_id=kw.pop("case_id", uuid4()), case_reference=REF, consent_id=kw.pop("consent_id", uuid4()),
        recipients=recipients, invitation_due_at=T0 + timedelta(days=3),
        plan_url="https://sip.example/fhir/CarePlan/abc", correlation_id="corr-1", **kw,
    )  # fmt: skip


async def test_an_invitation_queues_one_notification_per_participant_and_channel_kind(uow):
    cmd = invitation(SOC, VC)

    assert await deliver(uow, cmd)

    queued = everything(uow)
    assert sorted((n.recipient_hsa_id, n.channel) for n in queued) == [
        (SOC, "email"), (VC, "email"), (VC, "sms"), (VC, "webhook"),
    ]  # fmt: skip
    assert all(n.status == "pending" and n.kind == "invitation" for n in queued)
    assert all(n.case_id == cmd.case_id and n.consent_id == cmd.consent_id for n in queued)
    assert all(REF in n.subject for n in queued if n.channel == "email")
    assert uow.commits == 1


async def test_a_redelivered_invitation_adds_nothing(uow):
    cmd = invitation(SOC, VC)
    await deliver(uow, cmd)
    before = everything(uow)

    assert not await deliver(uow, cmd)  # the inbox has it

    assert everything(uow) == before


async def test_an_invitation_to_an_unknown_organisation_changes_nothing_and_can_be_retried(uow):
    cmd = invitation(SOC, "SE0000000000-GONE")

    with pytest.raises(UnknownRecipient):
        await deliver(uow, cmd)

    assert everything(uow) == [] and uow.inbox == set()  # rolled back, the inbox claim too
    with pytest.raises(UnknownRecipient):  # a redelivery is handled again (and refused again)
        await deliver(uow, cmd)


async def test_a_meeting_time_brings_a_calendar_and_a_reminder_the_day_before(uow):
    start = T0 + timedelta(days=7)
    await deliver(uow, invitation(SOC, meeting_start=start, meeting_end=start + timedelta(hours=1)))

    mail = next(n for n in everything(uow) if n.kind == "invitation")
    reminder = next(n for n in everything(uow) if n.kind == "reminder")
    assert mail.ics is not None and "BEGIN:VCALENDAR" in mail.ics
    assert reminder.recipient_hsa_id == SOC and reminder.next_attempt_at == start - timedelta(hours=24)


def breach(**kw) -> DeadlineBreached:
    return DeadlineBreached(
        case_id=uuid4(), case_reference=REF, kind="invitation", due_at=T0 - timedelta(hours=1),
        breached_at=T0, owner_hsa_id=SOC, correlation_id="corr-b", **kw,
    )  # fmt: skip


async def test_a_breached_deadline_is_escalated_to_the_owning_unit_once(uow):
    ev = breach()

    assert await deliver(uow, ev)
    assert not await deliver(uow, ev)

    (escalation,) = everything(uow)
    assert escalation.kind == "deadline-escalation" and escalation.recipient_hsa_id == SOC
    assert escalation.status == "pending" and escalation.case_id == ev.case_id


async def test_the_same_breach_published_again_under_its_own_id_adds_nothing(uow):
    ev = breach()
    await deliver(uow, ev)

    # planning derives the id from the case, the kind and the cycle: a re-published breach is the same
    assert await deliver(uow, ev.model_copy(update={"correlation_id": "corr-again"})) is False
    assert len(everything(uow)) == 1


def notice(kind: str, case_id, **kw) -> CaseNotice:
    return CaseNotice(
        case_id=case_id, case_reference=REF, kind=kind, recipients=(SOC, VC), owner_hsa_id=VC,
        consent_id=kw.pop("consent_id", uuid4()), plan_url=f"https://sip.example/fhir/CarePlan/{case_id}",
        plan_version=2, correlation_id="corr-n", **kw,
    )  # fmt: skip


async def test_an_established_plan_is_announced_to_every_participant_once(uow):
    case_id = uuid4()
    msg = notice("plan-established", case_id)

    assert await deliver(uow, msg)
    assert not await deliver(uow, msg)

    told = everything(uow)
    assert {(n.recipient_hsa_id, n.channel) for n in told} == {
        (SOC, "email"), (VC, "email"), (VC, "sms"), (VC, "webhook"),
    }  # fmt: skip
    assert all(n.kind == "plan-established" and n.status == "pending" for n in told)
    assert all(n.plan_url == msg.plan_url for n in told if n.channel == "email")


def withdrawn(cmd: SendInvitation) -> ConsentWithdrawn:
    return ConsentWithdrawn(
        consent_id=cmd.consent_id, case_id=cmd.case_id, patient_identifier=ADULT, cause="withdrawal",
        effective_at=datetime(2026, 3, 2, 7, 30, tzinfo=UTC), correlation_id="corr-w",
    )  # fmt: skip


async def stop(uow: InMemoryNotifyUnitOfWork, ev: ConsentWithdrawn):
    consumer = subscription("notify", ConsentWithdrawn).queue_name
    return await withdraw(ev, consumer=consumer, uow=lambda: uow, reader=lambda: uow, gate=SendGate(), wait=5)


async def test_a_withdrawal_cancels_what_is_unsent_and_tells_the_participants(uow):
    cmd = invitation(SOC, VC)
    await deliver(uow, cmd)
    ev = withdrawn(cmd)

    outcome = await stop(uow, ev)

    assert outcome is not None and outcome.cases == [cmd.case_id]
    found = everything(uow)
    invitations = [n for n in found if n.kind == "invitation"]
    assert all(n.status == "cancelled" and n.status_reason == "consent withdrawn" for n in invitations)
    assert sorted(outcome.cancelled) == sorted(n.id for n in invitations)
    told = [n for n in found if n.kind == "consent-withdrawn"]
    assert {(n.recipient_hsa_id, n.channel) for n in told} == {
        (SOC, "email"), (VC, "email"), (VC, "sms"), (VC, "webhook"),
    }  # fmt: skip
    assert all(n.status == "pending" for n in told)
    assert await stop(uow, ev) is None  # delivered again: nothing more
    assert len(everything(uow)) == len(found)


async def test_an_invitation_after_the_withdrawal_is_recorded_cancelled_never_queued(uow):
    first = invitation(SOC)
    await deliver(uow, first)
    await stop(uow, withdrawn(first))

    late = invitation(VC, case_id=first.case_id, consent_id=first.consent_id)
    await deliver(uow, late)

    late_ones = [n for n in everything(uow) if n.cause_message_id == str(late.message_id)]
    assert late_ones and all(n.status == "cancelled" for n in late_ones)


def test_the_table_and_the_withdrawal_cover_every_queue_of_notify():
    served = {*HANDLERS, ConsentWithdrawn}
    assert served == {s.contract for s in subscriptions_of("notify")}
