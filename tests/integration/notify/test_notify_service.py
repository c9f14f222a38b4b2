"""notify against the real RabbitMQ (per-test vhost) and a real SMTP server process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import aio_pika
import pytest
import sqlalchemy as sa

from services.notify.adapters.store import notifications
from services.notify.app import create_app
from services.notify.domain import DedupeKey
from services.notify.settings import NotifySettings
from shared.contracts import SendInvitation
from shared.messaging import declare_topology_at
from shared.persistence import make_engine
from tests.support.personnummer import personnummer_shaped

pytestmark = pytest.mark.broker


@pytest.fixture
async def amqp_url(amqp_url: str) -> str:
    """The whole topology first, as the deployment's definitions pre-create it: one service runs here
    and declares only its own part, but the tests read planning's queue."""
    await declare_topology_at(amqp_url)
    return amqp_url


SOC = "SE2120001-SOC0180"
VC = "SE2321000016-VC001"
ADDRESSES = {SOC: "sip-socialtjanst@stockholm.example", VC: "fast-vardkontakt@vc-sodermalm.example"}
SENT_QUEUE = "planning.notify.invitation-sent.v1"


@pytest.fixture
def settings(tmp_path: Path, amqp_url: str, smtp: Any, directory_path: Path) -> NotifySettings:
    return NotifySettings(
        amqp_url=amqp_url,
        data_dir=str(tmp_path / "data"),
        directory_path=str(directory_path),
        smtp_port=smtp.smtp_port,
        send_timeout=3.0,
        dispatch_interval=0.1,
        retry_base_seconds=0.3,
        retry_max_seconds=1.0,
        max_send_attempts=50,
    )


@asynccontextmanager
async def running(settings: NotifySettings) -> AsyncIterator[Any]:
    app = create_app(settings)
    runtime = app.state.runtime
    await runtime.start()
    try:
        yield app
    finally:
        await runtime.stop()


def invitation(*recipients: str) -> SendInvitation:
    return SendInvitation(
        case_id=uuid4(),
        case_reference="SIP-2026-4F3A9C",
        consent_id=uuid4(),
        recipients=recipients,
        invitation_due_at=datetime.now(UTC) + timedelta(days=3),
        plan_url="https://sip.example/fhir/CarePlan/7d9f2c1e",
        correlation_id=f"corr-{uuid4().hex[:8]}",
    )


async def publish(amqp_url: str, cmd: SendInvitation) -> None:
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        exchange = await ch.get_exchange("notify.commands", ensure=True)
        await exchange.publish(
            aio_pika.Message(
                cmd.model_dump_json().encode(),
                message_id=str(cmd.message_id),
                correlation_id=cmd.correlation_id,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key="notify.send-invitation.v1",
            mandatory=True,
        )


async def invitation_sent_events(amqp_url: str, count: int, timeout: float = 20.0) -> list[dict]:
    conn = await aio_pika.connect(amqp_url)
    out: list[dict] = []
    async with conn:
        ch = await conn.channel()
        queue = await ch.declare_queue(SENT_QUEUE, passive=True)
        deadline = asyncio.get_running_loop().time() + timeout
        while len(out) < count and asyncio.get_running_loop().time() < deadline:
            msg = await queue.get(fail=False)
            if msg is None:
                await asyncio.sleep(0.1)
                continue
            await msg.ack()
            out.append({"body": json.loads(msg.body), "correlation_id": msg.correlation_id})
    return out


async def mails(smtp: Any, count: int, timeout: float = 30.0) -> list:
    # the sink is polled from a thread: the service under test shares this event loop
    return await asyncio.to_thread(smtp.wait_for, count, timeout)


def recipients_of(msgs: list) -> list[str]:
    return sorted(str(m["To"]) for m in msgs)


def assert_no_personal_data(msgs: list) -> None:
    for m in msgs:
        assert not personnummer_shaped(m.get_content()), "personnummer-shaped number in a mail body"
        assert not personnummer_shaped(str(m["Subject"]))


async def test_invitation_mails_each_recipient_once_and_publishes_invitation_sent(settings, smtp, amqp_url):
    cmd = invitation(SOC, VC)
    async with running(settings):
        await publish(amqp_url, cmd)
        got = await mails(smtp, 2)
        events = await invitation_sent_events(amqp_url, 2)

        assert recipients_of(got) == sorted(ADDRESSES.values())
        assert_no_personal_data(got)
        for m in got:
            assert "SIP-2026-4F3A9C" in str(m["Subject"])
            assert cmd.plan_url in m.get_content()
            hsa = next(h for h, a in ADDRESSES.items() if a == str(m["To"]))
            nid = DedupeKey(str(cmd.message_id), hsa, "email").notification_id()
            assert m["Message-ID"] == f"<{nid}@sip-suite>"
        assert sorted(e["body"]["recipient_hsa_id"] for e in events) == [SOC, VC]
        assert all(e["body"]["case_id"] == str(cmd.case_id) for e in events)
        assert all(e["body"]["channel"] == "email" for e in events)
        assert all(e["correlation_id"] == cmd.correlation_id for e in events)

        # redelivery: the same message again → no new mail; a marker shows it was consumed
        await publish(amqp_url, cmd)
        marker = invitation(SOC)
        await publish(amqp_url, marker)
        got = await mails(smtp, 3)
        await asyncio.sleep(1.0)  # anything the duplicate caused would have been sent by now
        got = smtp.messages()
        assert len(got) == 3
        assert sum(1 for m in got if str(m["To"]) == ADDRESSES[SOC]) == 2
        assert sum(1 for m in got if str(m["To"]) == ADDRESSES[VC]) == 1
        assert len(await invitation_sent_events(amqp_url, 1)) == 1  # only the marker's


async def test_smtp_down_for_a_while_mail_arrives_exactly_once(settings, smtp, amqp_url):
    await asyncio.to_thread(smtp.proc.stop)
    cmd = invitation(SOC)
    async with running(settings) as app:
        await publish(amqp_url, cmd)
        nid = DedupeKey(str(cmd.message_id), SOC, "email").notification_id()
        # wait until the dispatcher has met the dead server: the server is away, not the mail, so
        # no attempt is counted against it (issue #17), and notify is not ready, naming smtp
        row = None
        for _ in range(100):
            async with app.state.runtime.engine.connect() as conn:
                row = (
                    await conn.execute(sa.select(notifications).where(notifications.c.id == str(nid)))
                ).first()
            if row is not None and row.last_error:
                break
            await asyncio.sleep(0.1)
        assert row is not None and row.status in ("pending", "sending") and row.attempts == 0
        assert row.last_error and "mail server" in row.last_error
        assert "smtp" in app.state.runtime.dependencies.unavailable()
        await asyncio.sleep(2.0)
        await asyncio.to_thread(smtp.proc.start)

        got = await mails(smtp, 1)
        events = await invitation_sent_events(amqp_url, 1)
        await asyncio.sleep(1.5)
        got = smtp.messages()
        assert recipients_of(got) == [ADDRESSES[SOC]]
        assert got[0]["Message-ID"] == f"<{nid}@sip-suite>"
        assert [e["body"]["notification_id"] for e in events] == [str(nid)]
        async with app.state.runtime.engine.connect() as conn:
            row = (await conn.execute(sa.select(notifications).where(notifications.c.id == str(nid)))).first()
        assert row.status == "sent" and row.attempts == 1
        assert app.state.runtime.dependencies.ready


async def test_crash_rule_notification_left_sending_is_sent_at_start(settings, smtp, amqp_url):
    """Crash between 'sending' and recording: at start-up it is sent again, same Message-ID."""
    nid = DedupeKey("crashed-cause", SOC, "email").notification_id()
    case_id = uuid4()
    now = datetime.now(UTC)
    prepared = create_app(settings).state.runtime  # the schema as the service makes it at start
    await prepared.prepare_database()
    await prepared.engine.dispose()
    engine = make_engine(settings.sqlalchemy_url("notify"))
    async with engine.begin() as conn:
        await conn.execute(
            notifications.insert().values(
                id=str(nid), cause_message_id="crashed-cause", case_id=str(case_id),
                case_reference="SIP-2026-CRASH1", correlation_id="corr-crash", recipient_hsa_id=SOC,
                channel="email", address=ADDRESSES[SOC], language="sv",
                subject="Kallelse till SIP-planering – SIP-2026-CRASH1", body="Ärende: SIP-2026-CRASH1\n",
                status="sending", attempts=1, next_attempt_at=now, created_at=now, updated_at=now,
            )
        )  # fmt: skip
    await engine.dispose()

    async with running(settings) as app:
        got = await mails(smtp, 1)
        events = await invitation_sent_events(amqp_url, 1)
        assert recipients_of(got) == [ADDRESSES[SOC]]
        assert got[0]["Message-ID"] == f"<{nid}@sip-suite>"
        assert events[0]["body"]["notification_id"] == str(nid)
        assert events[0]["correlation_id"] == "corr-crash"
        async with app.state.runtime.engine.connect() as conn:
            row = (await conn.execute(sa.select(notifications).where(notifications.c.id == str(nid)))).first()
        assert (row.status, row.attempts) == ("sent", 2)


async def test_unknown_recipient_goes_to_the_dlq_with_its_reason(settings, smtp, amqp_url):
    cmd = invitation(SOC, "SE9999999-NOPE")
    async with running(settings):
        await publish(amqp_url, cmd)
        conn = await aio_pika.connect(amqp_url)
        async with conn:
            ch = await conn.channel()
            dlq = await ch.declare_queue("notify.notify.send-invitation.v1.dlq", passive=True)
            msg = None
            for _ in range(100):
                msg = await dlq.get(fail=False)
                if msg is not None:
                    break
                await asyncio.sleep(0.1)
            assert msg is not None
            await msg.ack()
            assert "SE9999999-NOPE" in str(msg.headers["x-sip-error"])
        await asyncio.sleep(0.5)
        assert smtp.messages() == []  # nobody is invited from a refused command
