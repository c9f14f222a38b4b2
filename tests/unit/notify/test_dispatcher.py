from __future__ import annotations

import json
from datetime import timedelta
from uuid import UUID

import sqlalchemy as sa

from services.notify import handlers
from services.notify.adapters.store import SqlNotificationRepository, notifications
from services.notify.ports import PermanentSendError, TransientSendError
from shared.directory import load_directory
from tests.unit.notify.test_subscriber_and_handler import invitation


async def accept(app, settings, clock, *recipients: str):
    runtime = app.state.runtime
    async with runtime.unit_of_work() as uow:
        return await handlers.accept_invitation(
            invitation(*recipients),
            directory=load_directory(settings.directory_path),
            repo=SqlNotificationRepository(uow.conn),
            clock=clock,
        )


async def get(app, nid: UUID):
    async with app.state.runtime.engine.connect() as conn:
        return await SqlNotificationRepository(conn).get(nid)


async def outbox(app) -> list:
    rt = app.state.runtime
    async with rt.engine.connect() as conn:
        return list(await conn.execute(sa.select(rt.outbox)))


async def test_success_marks_sent_and_enqueues_invitation_sent(app, settings, clock, sender):
    [n] = await accept(app, settings, clock, "SE2120001-SOC0180")
    assert await app.state.dispatcher.dispatch_once() == 1
    [mail] = sender.sent
    assert mail.message_id == f"<{n.id}@sip-suite>"
    assert mail.to == ("sip-socialtjanst@stockholm.example",)
    stored = await get(app, n.id)
    assert (stored.status, stored.attempts, stored.sent_at) == ("sent", 1, clock.now())
    [row] = await outbox(app)
    assert row.routing_key == "notify.invitation-sent.v1"
    assert row.correlation_id == "corr-1"
    body = json.loads(row.body)
    assert body["notification_id"] == str(n.id)
    assert body["recipient_hsa_id"] == "SE2120001-SOC0180"
    assert body["channel"] == "email"
    # nothing more is due: a second pass sends nothing
    assert await app.state.dispatcher.dispatch_once() == 0
    assert len(sender.sent) == 1


async def test_transient_failure_backs_off_then_succeeds_with_the_same_message_id(
    app, settings, clock, sender
):
    [n] = await accept(app, settings, clock, "SE2120001-SOC0180")
    sender.errors = [TransientSendError("cannot reach the mail server (ConnectionRefusedError)")] * 2
    d = app.state.dispatcher
    await d.dispatch_once()
    s = await get(app, n.id)
    assert (s.status, s.attempts) == ("pending", 1)
    assert s.next_attempt_at == clock.now() + timedelta(seconds=2)  # base 2 s
    assert "cannot reach" in s.last_error
    assert await d.dispatch_once() == 0  # not due yet
    clock.advance(timedelta(seconds=2))
    await d.dispatch_once()
    s = await get(app, n.id)
    assert (s.status, s.attempts) == ("pending", 2)
    assert s.next_attempt_at == clock.now() + timedelta(seconds=4)  # doubled
    clock.advance(timedelta(seconds=4))
    await d.dispatch_once()
    s = await get(app, n.id)
    assert (s.status, s.attempts, s.last_error) == ("sent", 3, None)
    assert [m.message_id for m in sender.sent] == [f"<{n.id}@sip-suite>"]
    assert len(await outbox(app)) == 1


async def test_permanent_failure_fails_at_once_without_event(app, settings, clock, sender):
    [n] = await accept(app, settings, clock, "SE2120001-SOC0180")
    sender.errors = [PermanentSendError("SMTP 550: mailbox unavailable")]
    assert await app.state.dispatcher.deliver(n.id) == "failed"
    s = await get(app, n.id)
    assert (s.status, s.attempts, s.last_error) == ("failed", 1, "SMTP 550: mailbox unavailable")
    assert await outbox(app) == []
    assert await app.state.dispatcher.dispatch_once() == 0


async def test_attempts_are_exhausted(app, settings, clock, sender):
    [n] = await accept(app, settings, clock, "SE2120001-SOC0180")
    sender.errors = [TransientSendError("timed out talking to the mail server")] * 5
    d = app.state.dispatcher
    for _ in range(settings.max_send_attempts):
        await d.dispatch_once()
        clock.advance(timedelta(minutes=5))
    s = await get(app, n.id)
    assert (s.status, s.attempts) == ("failed", settings.max_send_attempts)
    assert s.last_error.startswith("gave up after 3 attempts")
    assert sender.sent == [] and await outbox(app) == []


async def test_unexpected_sender_error_is_retried_not_lost(app, settings, clock, sender):
    [n] = await accept(app, settings, clock, "SE2120001-SOC0180")
    sender.errors = [RuntimeError("bug")]
    assert await app.state.dispatcher.deliver(n.id) == "pending"


async def test_claim_happens_once(app, settings, clock, sender):
    [n] = await accept(app, settings, clock, "SE2120001-SOC0180")
    async with app.state.runtime.unit_of_work() as uow:
        assert await SqlNotificationRepository(uow.conn).claim(n.id, clock.now()) is not None
    assert await app.state.dispatcher.deliver(n.id) is None  # already 'sending': not sent twice
    assert sender.sent == []


async def test_crash_rule_a_claim_past_its_lease_is_taken_over_and_sent_again(app, settings, clock, sender):
    """A row left in 'sending' by a dispatcher that died mid-send is claimed again once its lease ran
    out — by this or any other replica — and sent again with the same Message-ID. Before that, no
    other dispatcher touches it (it may be sending right now), not even one that just started."""
    [n] = await accept(app, settings, clock, "SE2120001-SOC0180")
    async with app.state.runtime.unit_of_work() as uow:
        assert await SqlNotificationRepository(uow.conn).claim(n.id, clock.now(), timedelta(seconds=60))
    d = app.state.dispatcher
    assert await d.dispatch_once() == 0  # under its lease: not picked up
    assert await d.release_in_flight() == 0  # a replica starting does not release a leased claim
    clock.advance(timedelta(seconds=59))
    assert await d.dispatch_once() == 0
    clock.advance(timedelta(seconds=2))
    assert await d.dispatch_once() == 1
    s = await get(app, n.id)
    assert (s.status, s.attempts) == ("sent", 2)
    assert [m.message_id for m in sender.sent] == [f"<{n.id}@sip-suite>"]


async def test_crash_rule_a_restarted_replica_takes_its_own_claims_back_at_once(app, settings, clock, sender):
    """Its own claims (same replica id): sent again at start-up, without waiting for the lease; another
    replica's claim under its lease is left alone."""
    mine, theirs = (await accept(app, settings, clock, "SE2120001-SOC0180", "SE2321000016-VC001"))[:2]
    d = app.state.dispatcher
    async with app.state.runtime.unit_of_work() as uow:
        repo = SqlNotificationRepository(uow.conn)
        assert await repo.claim(mine.id, clock.now(), timedelta(seconds=300), by=d.owner)
        assert await repo.claim(theirs.id, clock.now(), timedelta(seconds=300), by="other-replica:8082")
    assert await d.release_in_flight() == 1
    await d.dispatch_once()
    assert (await get(app, mine.id)).status == "sent"
    assert (await get(app, theirs.id)).status == "sending"


async def test_crash_rule_a_claim_from_before_leases_is_released_at_start(app, settings, clock, sender):
    [n] = await accept(app, settings, clock, "SE2120001-SOC0180")
    async with app.state.runtime.unit_of_work() as uow:
        await uow.conn.execute(
            notifications.update().values(status="sending", attempts=1, claimed_until=None)
        )
    d = app.state.dispatcher
    assert await d.release_in_flight() == 1
    await d.dispatch_once()
    s = await get(app, n.id)
    assert (s.status, s.attempts) == ("sent", 2)


async def test_a_taken_over_claim_records_nothing(app, settings, clock, sender):
    """The first dispatcher's late outcome does not overwrite the claim that took the row over."""
    [n] = await accept(app, settings, clock, "SE2120001-SOC0180")
    async with app.state.runtime.unit_of_work() as uow:
        first = await SqlNotificationRepository(uow.conn).claim(n.id, clock.now(), timedelta(seconds=1))
    clock.advance(timedelta(seconds=5))
    async with app.state.runtime.unit_of_work() as uow:
        second = await SqlNotificationRepository(uow.conn).claim(n.id, clock.now(), timedelta(seconds=60))
    assert first is not None and second is not None and second.attempts == first.attempts + 1
    async with app.state.runtime.unit_of_work() as uow:
        repo = SqlNotificationRepository(uow.conn)
        assert not await repo.mark_failed(n.id, clock.now(), "late", attempts=first.attempts)
        assert await repo.mark_sent(n.id, clock.now(), attempts=second.attempts)


async def test_smtp_unavailable_spends_no_attempt_and_marks_the_dependency(app, settings, clock, sender):
    """A mail server that refuses connections: the mail goes back without an attempt counted (down
    for hours, it fails no invitation), notify is not ready and says why; the next send that goes
    through brings it back."""
    from services.notify.ports import ChannelUnavailable

    [n] = await accept(app, settings, clock, "SE2120001-SOC0180")
    runtime = app.state.runtime
    for _ in range(settings.max_send_attempts + 3):
        sender.errors = [ChannelUnavailable("cannot reach the mail server (SMTPConnectError)")]
        assert await app.state.dispatcher.deliver(n.id) == "pending"
        clock.advance(timedelta(seconds=settings.retry_max_seconds + 1000))
    s = await get(app, n.id)
    assert (s.status, s.attempts) == ("pending", 0)
    assert not runtime.dependencies.ready
    assert "mail server" in runtime.dependencies.unavailable()["smtp"]["reason"]
    assert await app.state.dispatcher.deliver(n.id) == "sent"
    assert runtime.dependencies.ready
    assert (await get(app, n.id)).attempts == 1


async def test_every_channel_of_an_organisation_is_dispatched(app, settings, clock, sender, webhook, sms):
    await accept(app, settings, clock, "SE2321000016-VC001")
    assert await app.state.dispatcher.dispatch_once() == 3  # e-mail, webhook, SMS
    async with app.state.runtime.engine.connect() as conn:
        statuses = dict(
            (await conn.execute(sa.select(notifications.c.channel, notifications.c.status))).all()
        )
    assert statuses == {"email": "sent", "webhook": "sent", "sms": "sent"}
    assert sender.sent[0].to == ("fast-vardkontakt@vc-sodermalm.example", "reception@vc-sodermalm.example")
    [hook] = webhook.delivered
    assert hook.notification.address == "https://vc.example/hook"
    comm = hook.communication
    assert comm["resourceType"] == "Communication" and comm["status"] == "completed"
    assert comm["id"] == str(hook.notification.id)
    assert comm["recipient"][0]["identifier"]["value"] == "SE2321000016-VC001"
    [text] = sms.delivered
    assert text.notification.address == "+46700000000"
    assert text.notification.body.startswith("Kallelse till SIP, ärende SIP-2026-4F3A9C")
    assert len(text.notification.body) < 320
    # each channel's delivery is reported, so planning sees how every organisation was reached
    channels = sorted(json.loads(r.body)["channel"] for r in await outbox(app))
    assert channels == ["email", "sms", "webhook"]


async def test_a_failing_channel_does_not_hold_back_the_others(app, settings, clock, sender, webhook, sms):
    await accept(app, settings, clock, "SE2321000016-VC001")
    webhook.errors = [TransientSendError("webhook answered HTTP 503 Service Unavailable")]
    sms.errors = [PermanentSendError("sms gateway answered HTTP 400 Bad Request")]
    await app.state.dispatcher.dispatch_once()
    async with app.state.runtime.engine.connect() as conn:
        rows = {
            r.channel: r
            for r in await conn.execute(
                sa.select(notifications.c.channel, notifications.c.status, notifications.c.last_error)
            )
        }
    assert rows["email"].status == "sent"
    assert (rows["webhook"].status, rows["webhook"].last_error) == (
        "pending",
        "webhook answered HTTP 503 Service Unavailable",
    )
    assert (rows["sms"].status, rows["sms"].last_error) == (
        "failed",
        "sms gateway answered HTTP 400 Bad Request",
    )
    clock.advance(timedelta(seconds=2))
    await app.state.dispatcher.dispatch_once()
    assert len(webhook.delivered) == 1 and sms.delivered == []
