from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest
import sqlalchemy as sa
from faststream.rabbit import TestRabbitBroker

from services.notify import handlers
from services.notify.adapters.store import SqlNotificationRepository, notifications
from services.notify.domain import DedupeKey
from shared.contracts import SendInvitation
from shared.directory import UnknownRecipient, load_directory
from shared.topology import contract_exchange


def invitation(*recipients: str, **kw) -> SendInvitation:
    return SendInvitation(
        case_id=uuid4(),
        case_reference="SIP-2026-4F3A9C",
        consent_id=uuid4(),
        recipients=recipients,
        invitation_due_at=datetime(2026, 3, 5, 12, 0, tzinfo=UTC),
        plan_url="https://sip.example/fhir/CarePlan/abc",
        correlation_id="corr-1",
        **kw,
    )


async def rows(runtime) -> list:
    async with runtime.engine.connect() as conn:
        return list(await conn.execute(sa.select(notifications).order_by(notifications.c.recipient_hsa_id)))


async def publish(br, cmd: SendInvitation) -> None:
    await br.publish(
        cmd.model_dump(mode="json"),
        exchange=contract_exchange(SendInvitation),
        routing_key=SendInvitation.routing_key,
    )


async def test_send_invitation_creates_one_pending_email_notification_per_recipient(app):
    runtime = app.state.runtime
    cmd = invitation("SE2120001-SOC0180", "SE2321000016-VC001")
    async with TestRabbitBroker(runtime.broker) as br:
        await publish(br, cmd)
    got = await rows(runtime)
    emails = [r for r in got if r.channel == "email"]
    assert [(r.recipient_hsa_id, r.status) for r in emails] == [
        ("SE2120001-SOC0180", "pending"),
        ("SE2321000016-VC001", "pending"),
    ]
    assert emails[0].address == "sip-socialtjanst@stockholm.example"
    # one e-mail notification per organisation, to all of its addresses
    assert emails[1].address == "fast-vardkontakt@vc-sodermalm.example, reception@vc-sodermalm.example"
    assert all(r.cause_message_id == str(cmd.message_id) for r in got)
    assert all("SIP-2026-4F3A9C" in r.subject and r.correlation_id == "corr-1" for r in emails)
    assert emails[0].id == str(DedupeKey(str(cmd.message_id), "SE2120001-SOC0180", "email").notification_id())


async def test_webhook_and_sms_channels_get_a_pending_notification_each(app):
    runtime = app.state.runtime
    async with TestRabbitBroker(runtime.broker) as br:
        await publish(br, invitation("SE2321000016-VC001"))
    got = {r.channel: r for r in await rows(runtime)}
    assert set(got) == {"email", "webhook", "sms"}
    assert all(r.status == "pending" and r.last_error is None for r in got.values())
    assert got["webhook"].address == "https://vc.example/hook"
    assert got["sms"].address == "+46700000000"
    assert got["sms"].body.startswith("Kallelse till SIP") and len(got["sms"].body) < 320
    assert got["webhook"].body == got["email"].body  # the full text, carried in the Communication


async def test_the_same_message_twice_creates_nothing_new(app):
    runtime = app.state.runtime
    cmd = invitation("SE2120001-SOC0180", "SE2321000016-VC001")
    async with TestRabbitBroker(runtime.broker) as br:
        await publish(br, cmd)
        first = await rows(runtime)
        await publish(br, cmd)
        await publish(br, cmd)
    second = await rows(runtime)
    assert len(first) == 4  # 2 e-mail + webhook + sms
    assert [r.id for r in second] == [r.id for r in first]


async def test_handler_is_idempotent_without_the_inbox(app, settings, clock):
    """The unique dedupe key holds even if the inbox were bypassed."""
    runtime = app.state.runtime
    directory = load_directory(settings.directory_path)
    cmd = invitation("SE2120001-SOC0180", "SE2120001-SOC0180")  # named twice: invited once
    async with runtime.unit_of_work() as uow:
        repo = SqlNotificationRepository(uow.conn)
        created = await handlers.accept_invitation(cmd, directory=directory, repo=repo, clock=clock)
        again = await handlers.accept_invitation(cmd, directory=directory, repo=repo, clock=clock)
    assert len(created) == 1
    assert again == []
    assert len(await rows(runtime)) == 1


async def test_unknown_recipient_refuses_the_whole_command(app, settings, clock):
    runtime = app.state.runtime
    directory = load_directory(settings.directory_path)
    cmd = invitation("SE2120001-SOC0180", "SE9999999-NOPE")
    with pytest.raises(UnknownRecipient, match="SE9999999-NOPE"):
        async with runtime.unit_of_work() as uow:
            await handlers.accept_invitation(
                cmd, directory=directory, repo=SqlNotificationRepository(uow.conn), clock=clock
            )
    assert await rows(runtime) == []


async def test_organisation_without_channels_is_recorded_failed(app, settings, clock):
    runtime = app.state.runtime
    directory = load_directory(settings.directory_path)
    async with runtime.unit_of_work() as uow:
        created = await handlers.accept_invitation(
            invitation("SE2321000016-NONE"),
            directory=directory,
            repo=SqlNotificationRepository(uow.conn),
            clock=clock,
        )
    assert [(n.status, n.last_error) for n in created] == [("failed", handlers.NO_CHANNEL)]


async def test_case_reference_shaped_like_a_personnummer_is_refused(app, settings, clock):
    runtime = app.state.runtime
    cmd = invitation("SE2120001-SOC0180").model_copy(update={"case_reference": "191212121212"})
    with pytest.raises(handlers.InvitationRefused):
        async with runtime.unit_of_work() as uow:
            await handlers.accept_invitation(
                cmd,
                directory=load_directory(settings.directory_path),
                repo=SqlNotificationRepository(uow.conn),
                clock=clock,
            )
    assert await rows(runtime) == []
