"""Deadline escalation (issue #6): a DeadlineBreached tells the owning unit, once per breach."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest
from faststream.rabbit import TestRabbitBroker

from services.notify import handlers
from services.notify.adapters.store import SqlNotificationRepository
from services.notify.domain import DedupeKey
from services.notify.templates import contains_health_data, contains_personal_number
from shared.contracts import DeadlineBreached
from shared.directory import UnknownRecipient, load_directory
from shared.topology import contract_exchange
from tests.unit.notify.test_subscriber_and_handler import invitation
from tests.unit.notify.test_withdrawal import accept, of_case

SOC = "SE2120001-SOC0180"
VC = "SE2321000016-VC001"
DUE = datetime(2026, 3, 5, 11, 0, tzinfo=UTC)  # 12:00 in Stockholm


def breach(owner: str = SOC, kind: str = "invitation", **kw) -> DeadlineBreached:
    fields = dict(
        case_id=uuid4(),
        case_reference="SIP-2026-4F3A9C",
        kind=kind,
        due_at=DUE,
        breached_at=datetime(2026, 3, 5, 11, 1, tzinfo=UTC),
        owner_hsa_id=owner,
        correlation_id="corr-b",
    )
    fields.update(kw)
    return DeadlineBreached(**fields)


async def publish(br, ev: DeadlineBreached) -> None:
    await br.publish(
        ev.model_dump(mode="json"), exchange=contract_exchange(DeadlineBreached), routing_key=ev.routing_key
    )


async def escalate(app, settings, clock, ev: DeadlineBreached):
    async with app.state.runtime.unit_of_work() as uow:
        return await handlers.escalate_deadline(
            ev,
            directory=load_directory(settings.directory_path),
            repo=SqlNotificationRepository(uow.conn),
            clock=clock,
            options=handlers.InvitationOptions.of(settings),
        )


async def test_a_breach_escalates_to_the_owner_once(app, settings, clock, sender):
    ev = breach()
    async with TestRabbitBroker(app.state.runtime.broker) as br:
        await publish(br, ev)
        await publish(br, ev)  # redelivered
    [n] = await of_case(app, ev.case_id)
    assert (n.kind, n.recipient_hsa_id, n.channel, n.status) == (
        "deadline-escalation",
        SOC,
        "email",
        "pending",
    )
    assert n.id == DedupeKey(str(ev.message_id), SOC, "email").notification_id()
    assert n.address == "sip-socialtjanst@stockholm.example" and n.correlation_id == "corr-b"
    assert n.subject == "Tidsfristen har passerat – SIP-2026-4F3A9C"
    assert "skicka kallelsen till SIP-planering" in n.body  # which deadline
    assert "5 mars 2026 kl. 12:00" in n.body  # when it was due (Stockholm time)
    assert f"http://127.0.0.1:8080/cases/{ev.case_id}" in n.body  # where to read the case
    assert not contains_personal_number(n.body) and not contains_health_data(n.body)

    # handler-level idempotency too (the dedupe key holds without the inbox)
    assert await escalate(app, settings, clock, ev) == []

    await app.state.dispatcher.dispatch_once()
    [mail] = sender.sent
    assert mail.to == ("sip-socialtjanst@stockholm.example",) and mail.message_id == f"<{n.id}@sip-suite>"
    assert (await app.state.dispatcher.dispatch_once(), len(sender.sent)) == (0, 1)
    rt = app.state.runtime
    import sqlalchemy as sa

    async with rt.engine.connect() as conn:  # an escalation is not an invitation: no InvitationSent
        assert list(await conn.execute(sa.select(rt.outbox))) == []


async def test_every_channel_of_the_owner_gets_it(app, settings, clock):
    ev = breach(owner=VC, kind="follow-up")
    created = await escalate(app, settings, clock, ev)
    assert sorted(n.channel for n in created) == ["email", "sms", "webhook"]
    sms = next(n for n in created if n.channel == "sms")
    assert sms.body.startswith("Tidsfristen i SIP SIP-2026-4F3A9C har passerat") and len(sms.body) < 320
    assert "följa upp planen" in next(n for n in created if n.channel == "email").body


async def test_a_new_breach_of_the_same_case_is_a_new_escalation(app, settings, clock):
    ev = breach()
    await escalate(app, settings, clock, ev)
    again = await escalate(app, settings, clock, breach(case_id=ev.case_id, kind="meeting"))
    assert len(again) == 1 and len(await of_case(app, ev.case_id)) == 2


async def test_an_owner_not_in_the_directory_is_refused_with_the_reason(app, settings, clock):
    with pytest.raises(UnknownRecipient, match="owner_hsa_id: SE9999999-NOPE is not in the organisation"):
        await escalate(app, settings, clock, breach(owner="SE9999999-NOPE"))


async def test_an_owner_without_channels_is_recorded_failed(app, settings, clock):
    [n] = await escalate(app, settings, clock, breach(owner="SE2321000016-NONE"))
    assert (n.status, n.last_error) == ("failed", handlers.NO_CHANNEL)


@pytest.mark.parametrize(
    "kind, phrase",
    [
        ("admission-notice", "skicka inskrivningsmeddelandet"),
        ("consent-expiry", "förnya samtycket innan det upphör"),
        ("some-new-kind", "ta nästa steg"),  # the kinds are an open set: unknown ones read generically
    ],
)
async def test_every_deadline_kind_has_a_text(app, settings, clock, kind, phrase):
    [n] = await escalate(app, settings, clock, breach(kind=kind))
    assert phrase in n.body and kind not in n.body


async def test_the_owner_written_to_in_english_before_gets_english(app, settings, clock):
    cmd = invitation(SOC, language="en")
    await accept(app, settings, clock, cmd)
    [n] = await escalate(app, settings, clock, breach(case_id=cmd.case_id))
    assert n.language == "en" and n.subject == "The deadline has passed – SIP-2026-4F3A9C"


async def test_a_case_reference_shaped_like_a_personnummer_is_refused(app, settings, clock):
    ev = breach(case_reference="191212121212")
    with pytest.raises(handlers.EscalationRefused, match="personal identity number"):
        await escalate(app, settings, clock, ev)
    assert await of_case(app, ev.case_id) == []
