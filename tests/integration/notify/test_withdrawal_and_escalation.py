"""Consent withdrawn and deadline escalation (issues #4, #6) against the real RabbitMQ (per-test vhost)
and a real SMTP server process (the mail sink), optionally behind a slow TCP relay."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aio_pika
import httpx
import pytest
import sqlalchemy as sa
from faststream.rabbit import TestRabbitBroker

from services.notify.adapters.store import SqlNotificationRepository, consent_withdrawals
from services.notify.app import create_app
from services.notify.domain import DedupeKey, withdrawal_cause_key
from services.notify.settings import NotifySettings
from services.notify.templates import contains_health_data
from shared.contracts import ConsentWithdrawn, Contract, DeadlineBreached, SendInvitation
from shared.topology import contract_exchange
from tests.integration.notify.test_notify_service import mails, running
from tests.support.personnummer import ADULTS, CHILD, SAMORDNINGSNUMMER, personnummer_shaped

pytestmark = pytest.mark.broker

SOC = "SE2120001-SOC0180"
VC = "SE2321000016-VC001"
ADDRESSES = {SOC: "sip-socialtjanst@stockholm.example", VC: "fast-vardkontakt@vc-sodermalm.example"}
PERSON = ADULTS[3]
COMMANDS = 50


def _settings(tmp_path: Path, amqp_url: str, directory_path: Path, smtp_port: int) -> NotifySettings:
    return NotifySettings(
        amqp_url=amqp_url,
        data_dir=str(tmp_path / "data"),
        directory_path=str(directory_path),
        smtp_port=smtp_port,
        send_timeout=3.0,
        dispatch_interval=0.1,
        retry_base_seconds=0.3,
        retry_max_seconds=1.0,
        max_send_attempts=50,
        auth_required=False,  # the HTTP API is read below without tokens (ignored where unknown)
    )


@pytest.fixture
def settings(tmp_path: Path, amqp_url: str, smtp: Any, directory_path: Path) -> NotifySettings:
    return _settings(tmp_path, amqp_url, directory_path, smtp.smtp_port)


def invitations_for_one_case(n: int) -> list[SendInvitation]:
    case_id, consent_id = uuid4(), uuid4()
    return [
        SendInvitation(
            case_id=case_id,
            case_reference="SIP-2026-7C0DE1",
            consent_id=consent_id,
            recipients=(SOC, VC),
            invitation_due_at=datetime.now(UTC) + timedelta(days=3),
            plan_url=f"https://sip.example/fhir/CarePlan/{case_id}",
            correlation_id="corr-case",
        )
        for _ in range(n)
    ]


def withdrawal_of(cmd: SendInvitation, **kw: Any) -> ConsentWithdrawn:
    fields: dict[str, Any] = dict(
        consent_id=cmd.consent_id,
        case_id=cmd.case_id,
        patient_identifier=PERSON,
        cause="withdrawal",
        effective_at=datetime.now(UTC),
        correlation_id="corr-case",
    )
    fields.update(kw)
    return ConsentWithdrawn(**fields)


async def publish(amqp_url: str, *messages: Contract) -> None:
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        for msg in messages:
            exchange = await ch.get_exchange(msg.exchange, ensure=True)
            await exchange.publish(
                aio_pika.Message(
                    msg.model_dump_json().encode(),
                    message_id=str(msg.message_id),
                    correlation_id=msg.correlation_id,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=msg.routing_key,
                mandatory=True,
            )


async def api(app: Any, path: str) -> Any:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://notify") as client:
        r = await client.get(path)
    assert r.status_code == 200, r.text
    return r.json()


async def wait_until(check: Any, timeout: float = 20.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result or asyncio.get_running_loop().time() > deadline:
            return result
        await asyncio.sleep(0.1)


async def withdrawal_recorded(app: Any, consent_id: UUID) -> Any:
    async with app.state.runtime.engine.connect() as conn:
        return (
            await conn.execute(
                sa.select(consent_withdrawals).where(consent_withdrawals.c.consent_id == str(consent_id))
            )
        ).first()


def kind_of(mail: Any) -> str:
    subject = str(mail["Subject"])
    if subject.startswith(("Kallelse till SIP-planering", "Ändrad kallelse till SIP-planering")):
        return "invitation"
    if subject.startswith("SIP pausad: samtycket är återkallat"):
        return "consent-withdrawn"
    return subject


def assert_safe_notice(mail: Any) -> None:
    text = str(mail["Subject"]) + "\n" + mail.get_content()
    for number in (*ADULTS, CHILD, SAMORDNINGSNUMMER):
        assert number not in text and f"{number[2:8]}-{number[8:]}" not in text
    assert not personnummer_shaped(text), "personnummer-shaped number in a withdrawal notice"
    assert not contains_health_data(text), "health data in a withdrawal notice"
    assert "SIP-2026-7C0DE1" in text and "http" not in mail.get_content()


@asynccontextmanager
async def slow_relay(upstream_port: int, delay: float) -> AsyncIterator[int]:
    """A TCP relay in front of the SMTP server that holds every new connection for ``delay`` s and
    every reply of the server for ``delay / 8`` s — notify reuses its SMTP connections, so a slow
    server must be slow on each mail, not only when a connection is opened."""
    tasks: set[asyncio.Task[Any]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hold: float = 0.0) -> None:
        try:
            while data := await reader.read(65536):
                if hold:
                    await asyncio.sleep(hold)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await asyncio.sleep(delay)
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer, delay / 8))
        except (ConnectionError, asyncio.CancelledError):
            writer.close()
        finally:
            tasks.discard(asyncio.current_task())  # type: ignore[arg-type]

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for t in list(tasks):
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


# ---- consent withdrawn ------------------------------------------------------------------------
async def test_withdrawal_stops_every_queued_invitation_and_tells_each_participant_once(
    settings, smtp, amqp_url
):
    await asyncio.to_thread(smtp.proc.stop)  # the mail server is down: the invitations stay pending
    commands = invitations_for_one_case(COMMANDS)
    case_id = commands[0].case_id
    async with running(settings) as app:
        await publish(amqp_url, *commands)

        async def all_recorded_and_tried() -> bool:
            items = await api(app, f"/notifications?case_id={case_id}")
            # tried: the server being away is recorded as the last error (and costs no attempt)
            return len(items) == 2 * COMMANDS and any(i["last_error"] for i in items)

        assert await wait_until(all_recorded_and_tried), "the invitations were not recorded"

        ev = withdrawal_of(commands[0])
        await publish(amqp_url, ev)
        assert await wait_until(lambda: withdrawal_recorded(app, ev.consent_id))

        items = await api(app, f"/notifications?case_id={case_id}")
        invites = [i for i in items if i["kind"] == "invitation"]
        assert len(invites) == 2 * COMMANDS
        assert {(i["status"], i["status_reason"]) for i in invites} == {("cancelled", "consent withdrawn")}
        assert any(i["last_error"] for i in invites)  # some were waiting for a retry when stopped
        one = await api(app, f"/fhir/Communication/{invites[0]['id']}")
        assert (one["status"], one["statusReason"]["text"]) == ("not-done", "consent withdrawn")
        notices = [i for i in items if i["kind"] == "consent-withdrawn"]
        assert sorted(i["recipient_hsa_id"] for i in notices) == [SOC, VC]

        await asyncio.to_thread(smtp.proc.start)  # the mail server is back
        got = await mails(smtp, 2)
        await asyncio.sleep(2.5)  # > retry_max: every cancelled invitation would have come due by now
        got = smtp.messages()
        assert sorted(kind_of(m) for m in got) == [
            "consent-withdrawn",
            "consent-withdrawn",
        ]  # zero invitations
        assert sorted(str(m["To"]) for m in got) == sorted(ADDRESSES.values())
        cause = withdrawal_cause_key(ev.consent_id, case_id)
        for m in got:
            assert_safe_notice(m)
            hsa = next(h for h, a in ADDRESSES.items() if a == str(m["To"]))
            assert m["Message-ID"] == f"<{DedupeKey(cause, hsa, 'email').notification_id()}@sip-suite>"

        # the same withdrawal again (redelivery), then a marker withdrawal of another consent
        marker = withdrawal_of(commands[0], consent_id=uuid4(), case_id=uuid4())
        await publish(amqp_url, ev, marker)
        assert await wait_until(lambda: withdrawal_recorded(app, marker.consent_id))
        await asyncio.sleep(1.5)
        assert len(smtp.messages()) == 2  # nothing new
        after = await api(app, f"/notifications?case_id={case_id}")
        assert sorted((i["id"], i["status"]) for i in after if i["kind"] == "invitation") == sorted(
            (i["id"], "cancelled") for i in invites
        )
        assert len(after) == len(items)


async def test_no_invitation_reaches_the_mail_server_after_the_withdrawal_commits(
    tmp_path, smtp, amqp_url, directory_path
):
    """A slow mail server: some invitations are delivered, some are in flight, most wait. After the
    withdrawal commits, nothing more arrives; what arrived before is recorded sent, the rest cancelled."""
    async with slow_relay(smtp.smtp_port, delay=0.4) as port:
        settings = _settings(tmp_path, amqp_url, directory_path, port)
        commands = invitations_for_one_case(COMMANDS)
        case_id = commands[0].case_id
        async with running(settings) as app:
            await publish(amqp_url, *commands)
            await mails(smtp, 8)  # the first invitations are through; more are in flight

            ev = withdrawal_of(commands[0])
            await publish(amqp_url, ev)
            row = await wait_until(lambda: withdrawal_recorded(app, ev.consent_id))
            assert row is not None
            committed = row.recorded_at.timestamp()  # taken after the in-flight sends were over

            await mails(smtp, 100 + 2, timeout=3.0)  # give any stray invitation the chance to arrive
            got = sorted(smtp.directory.glob("*.eml"))
            messages = smtp.messages()
            invitation_mails = [
                (p, m) for p, m in zip(got, messages, strict=True) if kind_of(m) == "invitation"
            ]
            late = [str(m["Message-ID"]) for p, m in invitation_mails if os.stat(p).st_mtime >= committed]
            assert late == [], "invitation e-mail arrived after the withdrawal was committed"

            items = await api(app, f"/notifications?case_id={case_id}")
            invites = {i["id"]: i for i in items if i["kind"] == "invitation"}
            sent = {k for k, i in invites.items() if i["status"] == "sent"}
            cancelled = {k for k, i in invites.items() if i["status"] == "cancelled"}
            assert sent | cancelled == set(invites) and len(invites) == 2 * COMMANDS
            assert sent and cancelled, (len(sent), len(cancelled))
            assert {invites[k]["status_reason"] for k in cancelled} == {"consent withdrawn"}
            # exactly the invitations recorded sent reached the server, each once
            arrived = [str(m["Message-ID"]) for _, m in invitation_mails]
            assert sorted(arrived) == sorted(f"<{k}@sip-suite>" for k in sent)

            notices = [m for m in smtp.messages() if kind_of(m) == "consent-withdrawn"]
            assert sorted(str(m["To"]) for m in notices) == sorted(ADDRESSES.values())
            for m in notices:
                assert_safe_notice(m)


# ---- deadline escalation ----------------------------------------------------------------------
def breach(owner: str, **kw: Any) -> DeadlineBreached:
    fields: dict[str, Any] = dict(
        case_id=uuid4(),
        case_reference="SIP-2026-0BEEF1",
        kind="invitation",
        due_at=datetime(2026, 3, 5, 11, 0, tzinfo=UTC),
        breached_at=datetime(2026, 3, 5, 11, 1, tzinfo=UTC),
        owner_hsa_id=owner,
        correlation_id=f"corr-{uuid4().hex[:8]}",
    )
    fields.update(kw)
    return DeadlineBreached(**fields)


async def test_a_breach_mails_the_owner_exactly_once(settings, smtp, amqp_url):
    ev = breach(SOC)
    async with running(settings):
        await publish(amqp_url, ev)
        [mail] = await mails(smtp, 1)
        assert str(mail["To"]) == ADDRESSES[SOC]  # from config/directory.yaml
        assert str(mail["Subject"]) == "Tidsfristen har passerat – SIP-2026-0BEEF1"
        body = mail.get_content()
        assert "skicka kallelsen till SIP-planering" in body and "5 mars 2026 kl. 12:00" in body
        assert f"/cases/{ev.case_id}" in body
        assert not personnummer_shaped(body) and not contains_health_data(body)
        assert (
            mail["Message-ID"]
            == f"<{DedupeKey(str(ev.message_id), SOC, 'email').notification_id()}@sip-suite>"
        )

        await publish(amqp_url, ev)  # redelivered
        marker = breach(VC)
        await publish(amqp_url, marker)
        got = await mails(smtp, 2)
        await asyncio.sleep(1.0)  # anything the duplicate caused would have been sent by now
        got = smtp.messages()
        assert sorted(str(m["To"]) for m in got) == sorted(ADDRESSES.values())  # the marker's, nothing more


async def test_a_breach_for_an_owner_not_in_the_directory_goes_to_the_dlq_with_the_reason(
    settings, smtp, amqp_url
):
    ev = breach("SE9999999-NOPE")
    async with running(settings):
        await publish(amqp_url, ev)
        conn = await aio_pika.connect(amqp_url)
        async with conn:
            ch = await conn.channel()
            dlq = await ch.declare_queue("notify.planning.deadline-breached.v1.dlq", passive=True)
            msg = None
            for _ in range(100):
                msg = await dlq.get(fail=False)
                if msg is not None:
                    break
                await asyncio.sleep(0.1)
            assert msg is not None
            await msg.ack()
            assert msg.message_id == str(ev.message_id)
            reason = str(msg.headers["x-sip-error"])
            assert reason == "owner_hsa_id: SE9999999-NOPE is not in the organisation directory"
            assert msg.headers["x-sip-error-type"] == "UnknownRecipient"
        await asyncio.sleep(0.5)
        assert smtp.messages() == []


# ---- the same rules on PostgreSQL (row locks, advisory locks) --------------------------------
@pytest.mark.postgres
async def test_on_postgresql_a_withdrawal_cancels_claimed_and_late_invitations(
    tmp_path, pg_url, directory_path
):
    class Recording:
        def __init__(self) -> None:
            self.sent: list[Any] = []

        async def send(self, email: Any) -> None:
            self.sent.append(email)

    sender = Recording()
    settings = NotifySettings(
        database_url=pg_url, data_dir=str(tmp_path), directory_path=str(directory_path), auth_required=False
    )
    app = create_app(settings, sender=sender)
    runtime = app.state.runtime
    await runtime.prepare_database()  # as the service does at start (Alembic on PostgreSQL)
    first, second, late = invitations_for_one_case(3)

    async def send(br: Any, msg: Contract) -> None:
        await br.publish(
            msg.model_dump(mode="json"), exchange=contract_exchange(type(msg)), routing_key=msg.routing_key
        )

    try:
        async with TestRabbitBroker(runtime.broker) as br:
            await send(br, first)
            await send(br, second)
            d = app.state.dispatcher
            items = await api(app, f"/notifications?case_id={first.case_id}")
            sent_id = next(UUID(i["id"]) for i in items)
            assert await d.deliver(sent_id) == "sent"
            claimed_id = next(UUID(i["id"]) for i in items if UUID(i["id"]) != sent_id)
            async with runtime.unit_of_work() as uow:
                claimed = await SqlNotificationRepository(uow.conn).claim(claimed_id, datetime.now(UTC))
            await send(br, withdrawal_of(first))
            await send(br, late)  # under the withdrawn consent, after the withdrawal
            assert await d.send_claimed(claimed) == "cancelled"
            while await d.dispatch_once():
                pass
        items = await api(app, f"/notifications?case_id={first.case_id}")
        status = {i["id"]: i["status"] for i in items if i["kind"] == "invitation"}
        assert len(status) == 6 and status.pop(str(sent_id)) == "sent"
        assert set(status.values()) == {"cancelled"}
        assert sorted(i["recipient_hsa_id"] for i in items if i["kind"] == "consent-withdrawn") == [SOC, VC]
        assert sorted(kind_of_subject(m.subject) for m in sender.sent) == [
            "consent-withdrawn", "consent-withdrawn", "invitation",
        ]  # fmt: skip
    finally:
        await runtime.engine.dispose()


def kind_of_subject(subject: str) -> str:
    return kind_of({"Subject": subject})
