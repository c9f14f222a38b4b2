"""Consent withdrawn (issue #4): unsent notifications are stopped, participants are told, once.

The cancel-vs-dispatch race rule (services/notify/domain.py, dispatcher.py, gate.py): a notification
claimed by the dispatcher and cancelled before its send is not sent; a send already in progress
finishes before the withdrawal commits; none starts after it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import httpx
import pytest
from faststream.rabbit import TestRabbitBroker

from services.notify import handlers
from services.notify.adapters.store import SqlNotificationRepository
from services.notify.domain import DedupeKey, Notification, withdrawal_cause_key
from services.notify.ports import Delivery
from services.notify.templates import contains_health_data, contains_personal_number
from shared.contracts import ConsentWithdrawn, SendInvitation
from shared.directory import load_directory
from shared.topology import contract_exchange
from tests.support.personnummer import ADULT
from tests.unit.notify.test_subscriber_and_handler import invitation

SOC = "SE2120001-SOC0180"
VC = "SE2321000016-VC001"  # e-mail (two addresses), webhook and SMS in the unit directory


def withdrawal(cmd: SendInvitation, **kw) -> ConsentWithdrawn:
    fields = dict(
        consent_id=cmd.consent_id,
        case_id=cmd.case_id,
        patient_identifier=ADULT,
        cause="withdrawal",
        effective_at=datetime(2026, 3, 2, 7, 30, tzinfo=UTC),
        correlation_id="corr-w",
    )
    fields.update(kw)
    return ConsentWithdrawn(**fields)


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
        )


async def of_case(app, case_id: UUID) -> list[Notification]:
    async with app.state.runtime.engine.connect() as conn:
        return await SqlNotificationRepository(conn).for_case(case_id)


async def claim(app, clock, nid: UUID) -> Notification:
    async with app.state.runtime.unit_of_work() as uow:
        n = await SqlNotificationRepository(uow.conn).claim(nid, clock.now())
    assert n is not None
    return n


def notices(found: list[Notification]) -> list[Notification]:
    return [n for n in found if n.kind == "consent-withdrawn"]


def invitations(found: list[Notification]) -> list[Notification]:
    return [n for n in found if n.kind == "invitation"]


async def read(app, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://notify") as client:
        return await client.get(path)


# ---- the race rule ----------------------------------------------------------------------------
async def test_a_notification_claimed_by_the_dispatcher_and_then_cancelled_is_not_sent(
    app, settings, clock, sender
):
    cmd = invitation(SOC)
    [n] = await accept(app, settings, clock, cmd)
    claimed = await claim(app, clock, n.id)  # the dispatcher picked it: pending → sending
    async with TestRabbitBroker(app.state.runtime.broker) as br:
        await publish(br, withdrawal(cmd))

    assert await app.state.dispatcher.send_claimed(claimed) == "cancelled"
    assert sender.sent == []
    stored = {x.id: x for x in await of_case(app, cmd.case_id)}[n.id]
    assert (stored.status, stored.status_reason, stored.sent_at) == ("cancelled", "consent withdrawn", None)

    # what the dispatcher sends afterwards is the withdrawal notice only
    await app.state.dispatcher.dispatch_once()
    assert [m.subject for m in sender.sent] == ["SIP pausad: samtycket är återkallat – SIP-2026-4F3A9C"]
    assert {x.id: x for x in await of_case(app, cmd.case_id)}[n.id].status == "cancelled"


async def test_a_notification_cancelled_before_its_claim_cannot_be_claimed(app, settings, clock, sender):
    cmd = invitation(SOC)
    [n] = await accept(app, settings, clock, cmd)
    async with TestRabbitBroker(app.state.runtime.broker) as br:
        await publish(br, withdrawal(cmd))
    assert await app.state.dispatcher.deliver(n.id) is None
    assert sender.sent == []


class GatedChannel:
    """A channel whose first delivery blocks until released (a slow SMTP/webhook conversation)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.delivered: list[Delivery] = []

    async def deliver(self, delivery: Delivery) -> None:
        self.entered.set()
        await self.release.wait()
        self.delivered.append(delivery)


async def test_a_send_in_progress_finishes_before_the_withdrawal_commits_and_none_starts_after(
    app, settings, clock
):
    cmd = invitation(SOC)
    other = cmd.model_copy(update={"message_id": uuid4()})  # a second invitation, same case
    [first] = await accept(app, settings, clock, cmd)
    [second] = await accept(app, settings, clock, other)
    slow = GatedChannel()
    d = app.state.dispatcher
    d.channels["email"] = slow

    sending = asyncio.create_task(d.deliver(first.id))
    await asyncio.wait_for(slow.entered.wait(), 5)  # the first is with the channel now
    claimed_second = await claim(app, clock, second.id)  # the second is claimed, not yet sent

    async with TestRabbitBroker(app.state.runtime.broker) as br:
        stopping = asyncio.create_task(publish(br, withdrawal(cmd)))
        for _ in range(100):
            if d.gate.busy(cmd.case_id) == (1, True):
                break
            await asyncio.sleep(0.01)
        assert d.gate.busy(cmd.case_id) == (1, True)  # the withdrawal waits for the send in progress
        late = asyncio.create_task(d.send_claimed(claimed_second))  # must wait behind the withdrawal
        await asyncio.sleep(0.05)
        assert not stopping.done() and not late.done()
        assert {n.status for n in await of_case(app, cmd.case_id)} == {"sending"}  # nothing committed

        slow.release.set()
        assert await asyncio.wait_for(sending, 5) == "sent"
        await asyncio.wait_for(stopping, 5)
        assert await asyncio.wait_for(late, 5) == "cancelled"

    assert [x.notification.id for x in slow.delivered] == [first.id]  # the second never reached it
    by_id = {n.id: n for n in await of_case(app, cmd.case_id)}
    assert by_id[first.id].status == "sent"  # delivered before the withdrawal: recorded truthfully
    assert (by_id[second.id].status, by_id[second.id].status_reason) == ("cancelled", "consent withdrawn")
    assert d.gate.busy(cmd.case_id) == (0, False)


# ---- cancelling and telling -------------------------------------------------------------------
async def test_withdrawal_cancels_every_unsent_notification_and_tells_each_participant_once(
    app, settings, clock, sender, webhook, sms
):
    from services.notify.ports import TransientSendError

    first = invitation(SOC, VC)
    created = await accept(app, settings, clock, first)
    d = app.state.dispatcher
    sent_email = next(n for n in created if n.recipient_hsa_id == SOC)
    assert await d.deliver(sent_email.id) == "sent"  # delivered before the withdrawal: stays sent
    retrying = next(n for n in created if n.channel == "webhook")
    webhook.errors = [TransientSendError("webhook answered HTTP 503 Service Unavailable")]
    assert await d.deliver(retrying.id) == "pending"  # waiting for a retry
    more = [await accept(app, settings, clock, invitation(SOC).model_copy(update={
        "message_id": uuid4(), "case_id": first.case_id, "consent_id": first.consent_id,
    })) for _ in range(5)]  # fmt: skip
    unsent = {n.id for n in created if n.id != sent_email.id} | {n.id for batch in more for n in batch}

    ev = withdrawal(first)
    async with TestRabbitBroker(app.state.runtime.broker) as br:
        await publish(br, ev)
        after_first = await of_case(app, first.case_id)
        await publish(br, ev)  # redelivered: nothing new
        await publish(br, ev.model_copy(update={"message_id": uuid4()}))  # re-published: nothing new
    found = await of_case(app, first.case_id)
    assert [(n.id, n.status) for n in found] == [(n.id, n.status) for n in after_first]

    by_id = {n.id: n for n in found}
    assert {i for i, n in by_id.items() if n.status == "cancelled"} == unsent
    assert by_id[sent_email.id].status == "sent"
    for nid in unsent:
        assert by_id[nid].status_reason == "consent withdrawn" and by_id[nid].cancelled_at == clock.now()

    told = notices(found)
    # one notice per participant organisation and channel kind: SOC e-mail; VC e-mail, webhook, SMS
    assert sorted((n.recipient_hsa_id, n.channel) for n in told) == [
        (SOC, "email"), (VC, "email"), (VC, "sms"), (VC, "webhook"),
    ]  # fmt: skip
    cause = withdrawal_cause_key(first.consent_id, first.case_id)
    for n in told:
        assert n.status == "pending" and n.cause_message_id == cause
        assert n.id == DedupeKey(cause, n.recipient_hsa_id, n.channel).notification_id()
        assert "SIP-2026-4F3A9C" in n.subject
        assert not contains_personal_number(n.subject + n.body) and ADULT not in n.body
        assert not contains_health_data(n.subject + n.body) and "http" not in n.body
        assert n.correlation_id == "corr-w"

    # nothing but the notices goes out afterwards, even when every retry comes due
    clock.advance(timedelta(hours=1))
    sender.sent.clear()
    while await d.dispatch_once():
        pass
    assert len(sender.sent) == 2 and all("samtycket är återkallat" in m.subject for m in sender.sent)
    assert [x.notification.kind for x in webhook.delivered] == ["consent-withdrawn"]
    assert [x.notification.kind for x in sms.delivered] == ["consent-withdrawn"]
    assert "återkallat" in sms.delivered[0].notification.body


async def test_a_cancelled_notification_is_recorded_over_the_api_and_as_fhir_not_done(app, settings, clock):
    cmd = invitation(SOC)
    [n] = await accept(app, settings, clock, cmd)
    async with TestRabbitBroker(app.state.runtime.broker) as br:
        await publish(br, withdrawal(cmd))

    items = (await read(app, f"/notifications?case_id={cmd.case_id}")).json()
    mine = next(i for i in items if i["id"] == str(n.id))
    assert (mine["status"], mine["status_reason"], mine["next_attempt_at"]) == (
        "cancelled", "consent withdrawn", None,
    )  # fmt: skip
    assert mine["cancelled_at"] is not None
    assert (await read(app, f"/notifications/{n.id}")).json()["status"] == "cancelled"
    comm = (await read(app, f"/fhir/Communication/{n.id}")).json()
    assert comm["status"] == "not-done" and "sent" not in comm
    assert comm["statusReason"]["coding"][0]["code"] == "consent-withdrawn"
    assert comm["statusReason"]["text"] == "consent withdrawn"
    notice = next(i for i in items if i["kind"] == "consent-withdrawn")
    comm = (await read(app, f"/fhir/Communication/{notice['id']}")).json()
    assert comm["category"][0]["coding"][0]["code"] == "consent-withdrawn"
    assert comm["status"] == "preparation"


async def test_an_invitation_arriving_after_the_withdrawal_is_recorded_cancelled_and_never_sent(
    app, settings, clock, sender
):
    cmd = invitation(SOC)
    async with TestRabbitBroker(app.state.runtime.broker) as br:
        await publish(br, withdrawal(cmd))  # notify has seen nothing of the case yet
        assert await of_case(app, cmd.case_id) == []
        await publish(br, cmd)  # the invitation under the withdrawn consent comes later
    found = await of_case(app, cmd.case_id)
    [inv] = invitations(found)
    assert (inv.status, inv.status_reason) == ("cancelled", "consent withdrawn")
    assert [(n.recipient_hsa_id, n.status) for n in notices(found)] == [(SOC, "pending")]
    while await app.state.dispatcher.dispatch_once():
        pass
    assert [m.subject for m in sender.sent] == ["SIP pausad: samtycket är återkallat – SIP-2026-4F3A9C"]

    # a new consent is a new record: an invitation under it is sent
    renewed = invitation(SOC).model_copy(update={"case_id": cmd.case_id})
    async with TestRabbitBroker(app.state.runtime.broker) as br:
        await publish(br, renewed)
    [new] = [n for n in invitations(await of_case(app, cmd.case_id)) if n.consent_id == renewed.consent_id]
    assert new.status == "pending"


async def test_a_withdrawal_without_a_case_stops_what_was_sent_under_the_consent(app, settings, clock):
    cmd = invitation(SOC)
    await accept(app, settings, clock, cmd)
    async with TestRabbitBroker(app.state.runtime.broker) as br:
        await publish(br, withdrawal(cmd, case_id=None))
    found = await of_case(app, cmd.case_id)
    assert [x.status for x in invitations(found)] == ["cancelled"]
    assert [x.recipient_hsa_id for x in notices(found)] == [SOC]


async def test_a_cancellation_makulering_stops_sends_with_its_own_reason_and_text(app, settings, clock):
    cmd = invitation(SOC, language="en")
    await accept(app, settings, clock, cmd)
    async with TestRabbitBroker(app.state.runtime.broker) as br:
        await publish(br, withdrawal(cmd, cause="cancellation"))
    found = await of_case(app, cmd.case_id)
    assert invitations(found)[0].status_reason == "consent cancelled as wrongly registered"
    [notice] = notices(found)
    assert notice.language == "en"
    assert notice.subject == "SIP paused: consent not valid – SIP-2026-4F3A9C"
    assert "withdrawn" not in notice.body


async def test_a_later_withdrawal_does_not_cancel_the_notices_of_an_earlier_one(app, settings, clock):
    cmd = invitation(SOC)
    await accept(app, settings, clock, cmd)
    async with TestRabbitBroker(app.state.runtime.broker) as br:
        await publish(br, withdrawal(cmd))
        await publish(br, withdrawal(cmd, consent_id=uuid4()))  # another consent of the case
    told = notices(await of_case(app, cmd.case_id))
    assert len(told) == 2 and {n.status for n in told} == {"pending"}


async def test_the_person_identifier_is_never_stored(app, settings, clock):
    import sqlalchemy as sa

    cmd = invitation(SOC)
    await accept(app, settings, clock, cmd)
    async with TestRabbitBroker(app.state.runtime.broker) as br:
        await publish(br, withdrawal(cmd))
    runtime = app.state.runtime
    async with runtime.engine.connect() as conn:
        for table in runtime.metadata.sorted_tables:
            for row in await conn.execute(sa.select(table)):
                assert ADULT not in " ".join(str(v) for v in row), table.name


@pytest.mark.parametrize("language", ["sv", "en"])
async def test_the_notice_language_follows_what_the_participant_was_sent(app, settings, clock, language):
    cmd = invitation(SOC, language=language)
    await accept(app, settings, clock, cmd)
    async with TestRabbitBroker(app.state.runtime.broker) as br:
        await publish(br, withdrawal(cmd))
    [notice] = notices(await of_case(app, cmd.case_id))
    assert notice.language == language
