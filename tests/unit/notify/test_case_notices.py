"""Case notices (issue #6): plan established, follow-up due, case closed → the participants, once."""

from __future__ import annotations

from datetime import date, timedelta
from uuid import UUID, uuid4

import pytest
from faststream.rabbit import TestRabbitBroker

from services.notify import handlers
from services.notify.adapters.store import SqlNotificationRepository
from services.notify.domain import DedupeKey, Notification
from services.notify.templates import contains_health_data, contains_personal_number
from shared.contracts import CaseNotice, ConsentWithdrawn
from shared.directory import UnknownRecipient, load_directory
from shared.topology import contract_exchange
from tests.support.personnummer import ADULT
from tests.unit.notify.conftest import T0
from tests.unit.notify.test_subscriber_and_handler import invitation

SOC = "SE2120001-SOC0180"  # e-mail only (unit directory)
VC = "SE2321000016-VC001"  # two e-mail addresses, a webhook and an SMS number
REF = "SIP-2026-4F3A9C"


def case_notice(kind: str = "plan-established", *recipients: str, **kw) -> CaseNotice:
    case_id = kw.pop("case_id", uuid4())
    fields = dict(
        case_id=case_id,
        case_reference=REF,
        kind=kind,
        recipients=recipients or (SOC, VC),
        owner_hsa_id=VC,
        consent_id=uuid4(),
        plan_url=f"https://sip.example/fhir/CarePlan/{case_id}",
        plan_version=2,
        follow_up_date=date(2026, 9, 1),
        correlation_id="corr-n",
    )
    fields.update(kw)
    return CaseNotice(**fields)


async def publish(br, msg) -> None:
    await br.publish(
        msg.model_dump(mode="json"), exchange=contract_exchange(type(msg)), routing_key=msg.routing_key
    )


async def of_case(app, case_id: UUID) -> list[Notification]:
    async with app.state.runtime.engine.connect() as conn:
        return await SqlNotificationRepository(conn).for_case(case_id)


async def handle(app, settings, clock, notice: CaseNotice) -> list[Notification]:
    async with app.state.runtime.unit_of_work() as uow:
        return await handlers.handle_case_notice(
            notice, directory=load_directory(settings.directory_path), repo=SqlNotificationRepository(uow.conn),
            clock=clock,
        )  # fmt: skip


def assert_safe(text: str) -> None:
    assert not contains_personal_number(text) and ADULT not in text
    assert not contains_health_data(text)


async def test_plan_established_reaches_every_recipient_on_every_channel_once(
    app, clock, sender, webhook, sms
):
    notice = case_notice("plan-established")
    async with TestRabbitBroker(app.state.runtime.broker) as br:
        await publish(br, notice)
        first = await of_case(app, notice.case_id)
        await publish(br, notice)  # redelivered
        await publish(br, notice)
    found = await of_case(app, notice.case_id)
    assert [n.id for n in found] == [n.id for n in first]
    assert sorted((n.recipient_hsa_id, n.channel) for n in found) == [
        (SOC, "email"), (VC, "email"), (VC, "sms"), (VC, "webhook"),
    ]  # fmt: skip
    for n in found:
        assert (n.kind, n.status, n.consent_id, n.sender_hsa_id) == (
            "plan-established", "pending", notice.consent_id, VC,
        )  # fmt: skip
        assert n.id == DedupeKey(str(notice.message_id), n.recipient_hsa_id, n.channel).notification_id()

    await app.state.dispatcher.dispatch_once()
    assert sorted(m.to for m in sender.sent) == [
        ("fast-vardkontakt@vc-sodermalm.example", "reception@vc-sodermalm.example"),
        ("sip-socialtjanst@stockholm.example",),
    ]
    for m in sender.sent:
        assert m.subject == f"SIP-planen är fastställd – {REF}"
        assert notice.plan_url in m.body and "fastställd" in m.body
        assert_safe(m.subject + m.body)
    assert len(webhook.delivered) == 1 and len(sms.delivered) == 1
    assert_safe(sms.delivered[0].notification.body)
    assert await app.state.dispatcher.dispatch_once() == 0  # nothing more


async def test_case_closed_reaches_the_recipients_with_the_reason_and_no_health_data(
    app, settings, clock, sender
):
    notice = case_notice("case-closed", SOC, reason_code="followed-up", plan_version=None)
    await handle(app, settings, clock, notice)
    assert await handle(app, settings, clock, notice) == []  # even without the inbox: once
    await app.state.dispatcher.dispatch_once()
    [mail] = sender.sent
    assert mail.subject == f"SIP avslutad – {REF}"
    assert "Orsak: planens mål är uppnådda eller insatserna avslutade." in mail.body
    assert_safe(mail.subject + mail.body)


@pytest.mark.parametrize(
    ("code", "phrase"),
    [
        ("deceased", "ärendet är avslutat av den ansvariga verksamheten"),  # a death is not told
        ("refused", "personen har valt att avsluta sin SIP"),
        ("consent-withdrawn", "samtycket är återkallat"),
        ("cancelled", "ärendet är avslutat av den ansvariga verksamheten"),
        (None, "ärendet är avslutat av den ansvariga verksamheten"),
    ],
)
async def test_every_closing_reason_maps_to_a_fixed_text(app, settings, clock, code, phrase):
    [n] = await handle(app, settings, clock, case_notice("case-closed", SOC, reason_code=code))
    assert f"Orsak: {phrase}." in n.body
    assert "avled" not in n.body.lower() and "död" not in n.body.lower()


async def test_follow_up_due_names_the_date(app, settings, clock, sender):
    notice = case_notice("follow-up-due", SOC, interpreter_language="ar")
    await handle(app, settings, clock, notice)
    await app.state.dispatcher.dispatch_once()
    [mail] = sender.sent
    assert mail.subject == f"Dags att följa upp SIP – {REF}"
    assert "senast 1 september 2026" in mail.body and "Tolk: arabiska behövs" in mail.body
    assert_safe(mail.body)


async def test_a_notice_without_the_field_its_kind_needs_is_refused(app, settings, clock):
    with pytest.raises(handlers.NoticeRefused, match="plan_url"):
        await handle(app, settings, clock, case_notice("plan-established", plan_url=None))
    with pytest.raises(handlers.NoticeRefused, match="follow_up_date"):
        await handle(app, settings, clock, case_notice("follow-up-due", follow_up_date=None))


async def test_an_unknown_recipient_refuses_the_notice_and_an_unknown_kind_is_ignored(app, settings, clock):
    with pytest.raises(UnknownRecipient, match="SE9999999-NOPE"):
        await handle(app, settings, clock, case_notice("case-closed", SOC, "SE9999999-NOPE"))
    notice = case_notice("plan-revised")
    assert await handle(app, settings, clock, notice) == []
    assert await of_case(app, notice.case_id) == []


async def test_a_recipient_written_to_in_english_before_gets_english(app, settings, clock):
    cmd = invitation(SOC, language="en")
    async with app.state.runtime.unit_of_work() as uow:
        await handlers.accept_invitation(
            cmd, directory=load_directory(settings.directory_path), repo=SqlNotificationRepository(uow.conn),
            clock=clock,
        )  # fmt: skip
    created = await handle(
        app, settings, clock, case_notice("plan-established", SOC, VC, case_id=cmd.case_id)
    )
    subjects = {n.recipient_hsa_id: n.subject for n in created if n.channel == "email"}
    assert subjects == {SOC: f"The SIP plan is agreed – {REF}", VC: f"SIP-planen är fastställd – {REF}"}


# ---- consent withdrawn ------------------------------------------------------------------------
def withdrawal(consent_id: UUID, case_id: UUID) -> ConsentWithdrawn:
    return ConsentWithdrawn(
        consent_id=consent_id, case_id=case_id, patient_identifier=ADULT, cause="withdrawal",
        effective_at=T0 - timedelta(minutes=5),
    )  # fmt: skip


async def test_plan_established_under_a_withdrawn_consent_is_recorded_cancelled_and_never_sent(
    app, settings, clock, sender
):
    cmd = invitation(SOC)
    async with TestRabbitBroker(app.state.runtime.broker) as br:
        await publish(br, cmd)
        await publish(br, withdrawal(cmd.consent_id, cmd.case_id))
        await app.state.dispatcher.dispatch_once()
        sender.sent.clear()  # the withdrawal notice
        plan = case_notice("plan-established", SOC, case_id=cmd.case_id, consent_id=cmd.consent_id)
        due = case_notice("follow-up-due", SOC, case_id=cmd.case_id, consent_id=cmd.consent_id)
        closed = case_notice("case-closed", SOC, case_id=cmd.case_id, consent_id=cmd.consent_id,
                             reason_code="consent-withdrawn")  # fmt: skip
        for msg in (plan, due, closed):
            await publish(br, msg)
    found = {n.cause_message_id: n for n in await of_case(app, cmd.case_id)}
    assert (found[str(plan.message_id)].status, found[str(plan.message_id)].status_reason) == (
        "cancelled", "consent withdrawn",
    )  # fmt: skip
    assert found[str(due.message_id)].status == "cancelled"
    assert found[str(closed.message_id)].status == "pending"  # the ending notice still goes out
    await app.state.dispatcher.dispatch_once()
    assert [m.subject for m in sender.sent] == [f"SIP avslutad – {REF}"]


async def test_a_withdrawal_cancels_an_unsent_plan_notice_but_not_the_closing_notice(app, settings, clock):
    plan = case_notice("plan-established", SOC)
    closed = case_notice("case-closed", SOC, case_id=plan.case_id, consent_id=plan.consent_id)
    await handle(app, settings, clock, plan)
    await handle(app, settings, clock, closed)
    async with TestRabbitBroker(app.state.runtime.broker) as br:
        await publish(br, withdrawal(plan.consent_id, plan.case_id))
    found = {n.cause_message_id: n for n in await of_case(app, plan.case_id)}
    assert found[str(plan.message_id)].status == "cancelled"
    assert found[str(closed.message_id)].status == "pending"


async def test_the_notice_subscriber_is_wired_to_its_queue(app):
    subscriber_queues = {s.queue.name for s in app.state.runtime.broker._subscribers}
    assert "notify.planning.case-notice.v1" in subscriber_queues
