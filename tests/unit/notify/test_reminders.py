"""The reminder before the SIP meeting (issue #6), with a controllable clock (T0 = 2026-03-02 08:00 UTC).

A reminder is never sent before it is due (meeting − NOTIFY_REMINDER_HOURS), is sent once, is
superseded by a later invitation with another meeting time, and is cancelled by a consent withdrawal,
by the case closing, and when it comes due only after its meeting began.
"""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID, uuid4

from faststream.rabbit import TestRabbitBroker

from services.notify import handlers
from services.notify.adapters.store import SqlNotificationRepository
from services.notify.domain import DedupeKey, Notification, reminder_cause_key, reminder_due_at
from services.notify.settings import NotifySettings
from services.notify.templates import contains_health_data, contains_personal_number
from shared.contracts import ConsentWithdrawn, SendInvitation
from shared.directory import load_directory
from shared.topology import contract_exchange
from tests.support.personnummer import ADULT
from tests.unit.notify.conftest import T0
from tests.unit.notify.test_case_notices import case_notice
from tests.unit.notify.test_subscriber_and_handler import invitation

SOC = "SE2120001-SOC0180"  # e-mail only
VC = "SE2321000016-VC001"  # e-mail, webhook, SMS
MEETING = T0 + timedelta(days=3)  # 2026-03-05 08:00 UTC = 09:00 in Stockholm
DUE = MEETING - timedelta(hours=24)


async def publish(br, msg) -> None:
    await br.publish(
        msg.model_dump(mode="json"), exchange=contract_exchange(type(msg)), routing_key=msg.routing_key
    )


async def accept(app, settings, clock, cmd: SendInvitation) -> list[Notification]:
    async with app.state.runtime.unit_of_work() as uow:
        return await handlers.accept_invitation(
            cmd,
            directory=load_directory(settings.directory_path),
            repo=SqlNotificationRepository(uow.conn),
            clock=clock,
            options=handlers.InvitationOptions.of(settings),
        )


async def of_case(app, case_id: UUID) -> list[Notification]:
    async with app.state.runtime.engine.connect() as conn:
        return await SqlNotificationRepository(conn).for_case(case_id)


async def reminders(app, case_id: UUID) -> list[Notification]:
    return [n for n in await of_case(app, case_id) if n.kind == "reminder"]


def moved(first: SendInvitation, start, hours_later: float = 1) -> SendInvitation:
    """A later invitation of the same case (planning moved the meeting)."""
    return first.model_copy(
        update={
            "message_id": uuid4(),
            "meeting_start": start,
            "occurred_at": first.occurred_at + timedelta(hours=hours_later),
        }
    )


def subjects(sender) -> list[str]:
    return [m.subject for m in sender.sent]


def test_the_reminder_is_due_the_lead_before_the_meeting_unless_that_has_passed():
    lead = timedelta(hours=24)
    assert reminder_due_at(MEETING, T0, lead=lead) == DUE
    assert reminder_due_at(T0 + timedelta(hours=23), T0, lead=lead) is None  # the invitation says it
    assert reminder_due_at(T0 + timedelta(hours=24), T0, lead=lead) is None
    assert NotifySettings().reminder_hours == 24


async def test_a_reminder_is_not_sent_before_it_is_due_and_then_once(app, settings, clock, sender):
    cmd = invitation(SOC, meeting_start=MEETING)
    async with TestRabbitBroker(app.state.runtime.broker) as br:
        await publish(br, cmd)
        await publish(br, cmd)  # redelivered: no second reminder
    [r] = await reminders(app, cmd.case_id)
    assert (r.status, r.next_attempt_at, r.meeting_start, r.recipient_hsa_id) == (
        "pending",
        DUE,
        MEETING,
        SOC,
    )
    assert r.id == DedupeKey(reminder_cause_key(str(cmd.message_id)), SOC, "email").notification_id()
    assert r.consent_id == cmd.consent_id and r.ics is None

    d = app.state.dispatcher
    await d.dispatch_once()
    assert subjects(sender) == ["Kallelse till SIP-planering – SIP-2026-4F3A9C"]  # the invitation only
    assert await d.deliver(r.id) is None  # not even a direct claim sends it early
    clock.advance(DUE - T0 - timedelta(seconds=1))  # one second before it is due
    assert await d.dispatch_once() == 0
    assert len(sender.sent) == 1

    clock.advance(timedelta(seconds=2))  # past meeting − 24 h
    await d.dispatch_once()
    assert len(sender.sent) == 2
    mail = sender.sent[-1]
    assert mail.subject == "Påminnelse: SIP-möte 5 mar kl. 09:00 – SIP-2026-4F3A9C"
    assert "torsdag 5 mars 2026 kl. 09:00 (CET)" in mail.body and cmd.plan_url in mail.body
    assert not contains_personal_number(mail.body) and not contains_health_data(mail.body)
    assert mail.message_id == f"<{r.id}@sip-suite>" and mail.calendar is None
    clock.advance(timedelta(hours=1))
    assert await d.dispatch_once() == 0
    assert len(sender.sent) == 2
    [r] = await reminders(app, cmd.case_id)
    assert r.status == "sent"


async def test_every_channel_of_every_recipient_gets_one_reminder(app, settings, clock, sender, webhook, sms):
    cmd = invitation(SOC, VC, meeting_start=MEETING)
    created = await accept(app, settings, clock, cmd)
    assert sorted((n.kind, n.recipient_hsa_id, n.channel) for n in created if n.kind == "reminder") == [
        ("reminder", SOC, "email"), ("reminder", VC, "email"), ("reminder", VC, "sms"),
        ("reminder", VC, "webhook"),
    ]  # fmt: skip
    await app.state.dispatcher.dispatch_once()  # the invitations
    assert len(sms.delivered) == len(webhook.delivered) == 1
    clock.advance(DUE - T0)
    await app.state.dispatcher.dispatch_once()
    assert len(sms.delivered) == len(webhook.delivered) == 2
    assert sms.delivered[-1].notification.body.startswith("Påminnelse: SIP-möte 5 mar kl. 09:00")
    assert webhook.delivered[-1].notification.kind == "reminder"


async def test_a_new_meeting_time_cancels_the_old_reminder_and_schedules_a_new_one(
    app, settings, clock, sender
):
    first = invitation(SOC, meeting_start=MEETING)
    await accept(app, settings, clock, first)
    clock.advance(timedelta(hours=2))
    later = moved(first, MEETING + timedelta(days=2))
    await accept(app, settings, clock, later)

    by_cause = {n.cause_message_id: n for n in await reminders(app, first.case_id)}
    old = by_cause[reminder_cause_key(str(first.message_id))]
    new = by_cause[reminder_cause_key(str(later.message_id))]
    assert (old.status, old.status_reason) == (
        "cancelled",
        "superseded by a later invitation with another meeting time",
    )
    assert (new.status, new.next_attempt_at) == ("pending", MEETING + timedelta(days=1))

    d = app.state.dispatcher
    await d.dispatch_once()  # the two invitations
    clock.advance(DUE - clock.now() + timedelta(minutes=1))  # the old reminder's time
    assert await d.dispatch_once() == 0
    clock.advance(timedelta(days=2))  # the new one's
    await d.dispatch_once()
    reminder_mails = [s for s in subjects(sender) if s.startswith("Påminnelse")]
    assert reminder_mails == ["Påminnelse: SIP-möte 7 mar kl. 09:00 – SIP-2026-4F3A9C"]


async def test_an_older_invitation_delivered_late_neither_schedules_nor_cancels(app, settings, clock):
    first = invitation(SOC, meeting_start=MEETING)
    later = moved(first, MEETING + timedelta(days=2))
    await accept(app, settings, clock, later)
    await accept(app, settings, clock, first)  # out of order: the older time is out of date
    [r] = await reminders(app, first.case_id)
    assert (r.cause_message_id, r.status) == (reminder_cause_key(str(later.message_id)), "pending")


async def test_an_invitation_with_the_same_time_does_not_remind_twice(app, settings, clock):
    first = invitation(SOC, meeting_start=MEETING)
    await accept(app, settings, clock, first)
    again = moved(first, MEETING).model_copy(update={"recipients": (SOC, VC)})  # one more participant
    await accept(app, settings, clock, again)
    found = await reminders(app, first.case_id)
    assert sorted((n.recipient_hsa_id, n.channel, n.status) for n in found) == [
        (SOC, "email", "pending"), (VC, "email", "pending"), (VC, "sms", "pending"), (VC, "webhook", "pending"),
    ]  # fmt: skip


async def test_an_invitation_without_a_meeting_time_leaves_the_reminders_alone(app, settings, clock):
    first = invitation(SOC, meeting_start=MEETING)
    await accept(app, settings, clock, first)
    await accept(app, settings, clock, moved(first, None))
    [r] = await reminders(app, first.case_id)
    assert r.status == "pending"


async def test_a_meeting_less_than_the_lead_ahead_gets_no_reminder(app, settings, clock, sender):
    cmd = invitation(SOC, meeting_start=T0 + timedelta(hours=20))
    await accept(app, settings, clock, cmd)
    assert await reminders(app, cmd.case_id) == []
    clock.advance(timedelta(hours=19))
    await app.state.dispatcher.dispatch_once()
    assert [s.split(" –")[0] for s in subjects(sender)] == ["Kallelse till SIP-planering"]


async def test_the_lead_is_a_setting(app, settings, clock):
    cmd = invitation(SOC, meeting_start=MEETING)
    async with app.state.runtime.unit_of_work() as uow:
        await handlers.accept_invitation(
            cmd, directory=load_directory(settings.directory_path), repo=SqlNotificationRepository(uow.conn),
            clock=clock, options=handlers.InvitationOptions.of(settings.model_copy(update={"reminder_hours": 2})),
        )  # fmt: skip
    [r] = await reminders(app, cmd.case_id)
    assert r.next_attempt_at == MEETING - timedelta(hours=2)


def withdrawal(cmd: SendInvitation) -> ConsentWithdrawn:
    return ConsentWithdrawn(
        consent_id=cmd.consent_id, case_id=cmd.case_id, patient_identifier=ADULT, cause="withdrawal",
        effective_at=T0,
    )  # fmt: skip


async def test_a_withdrawal_cancels_a_pending_reminder(app, settings, clock, sender):
    cmd = invitation(SOC, meeting_start=MEETING)
    async with TestRabbitBroker(app.state.runtime.broker) as br:
        await publish(br, cmd)
        await app.state.dispatcher.dispatch_once()  # the invitation is sent
        clock.advance(timedelta(hours=1))
        await publish(br, withdrawal(cmd))
    [r] = await reminders(app, cmd.case_id)
    assert (r.status, r.status_reason) == ("cancelled", "consent withdrawn")
    clock.advance(DUE - clock.now() + timedelta(hours=1))
    await app.state.dispatcher.dispatch_once()
    assert [s.split(" –")[0] for s in subjects(sender)] == [
        "Kallelse till SIP-planering",
        "SIP pausad: samtycket är återkallat",
    ]  # no reminder


async def test_an_invitation_under_a_withdrawn_consent_records_its_reminder_cancelled(app, settings, clock):
    cmd = invitation(SOC, meeting_start=MEETING)
    async with TestRabbitBroker(app.state.runtime.broker) as br:
        await publish(br, withdrawal(cmd))
        await publish(br, cmd)
    [r] = await reminders(app, cmd.case_id)
    assert (r.status, r.status_reason) == ("cancelled", "consent withdrawn")


async def test_the_case_closing_cancels_its_pending_reminders(app, settings, clock):
    cmd = invitation(SOC, meeting_start=MEETING)
    await accept(app, settings, clock, cmd)
    async with TestRabbitBroker(app.state.runtime.broker) as br:
        await publish(br, case_notice("case-closed", SOC, case_id=cmd.case_id, consent_id=cmd.consent_id))
    [r] = await reminders(app, cmd.case_id)
    assert (r.status, r.status_reason) == ("cancelled", "the case was closed")


async def test_a_reminder_that_comes_due_after_its_meeting_began_is_cancelled_not_sent(
    app, settings, clock, sender
):
    cmd = invitation(SOC, meeting_start=MEETING)
    await accept(app, settings, clock, cmd)
    await app.state.dispatcher.dispatch_once()
    clock.advance(MEETING - T0 + timedelta(minutes=5))  # notify was down from before DUE until now
    await app.state.dispatcher.dispatch_once()
    [r] = await reminders(app, cmd.case_id)
    assert (r.status, r.status_reason) == ("cancelled", "the meeting had already started")
    assert len(sender.sent) == 1
