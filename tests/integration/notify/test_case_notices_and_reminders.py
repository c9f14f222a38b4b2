"""Case notices and meeting reminders (issue #6) against the real RabbitMQ (per-test vhost) and a real
SMTP server process (the mail sink); addresses from config/directory.yaml."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from faststream.rabbit import TestRabbitBroker

from services.notify.adapters.store import SqlNotificationRepository
from services.notify.app import create_app
from services.notify.domain import DedupeKey, reminder_cause_key
from services.notify.settings import NotifySettings
from services.notify.templates import contains_health_data
from shared.clock import FixedClock
from shared.contracts import CaseNotice, SendInvitation
from shared.topology import contract_exchange
from tests.integration.notify.test_notify_service import mails, running
from tests.integration.notify.test_withdrawal_and_escalation import _settings, publish
from tests.support.personnummer import ADULTS, CHILD, SAMORDNINGSNUMMER, personnummer_shaped

pytestmark = pytest.mark.broker

SOC = "SE2120001-SOC0180"
VC = "SE2321000016-VC001"
ADDRESSES = {SOC: "sip-socialtjanst@stockholm.example", VC: "fast-vardkontakt@vc-sodermalm.example"}
REF = "SIP-2026-5EA1ED"


@pytest.fixture
def settings(tmp_path: Path, amqp_url: str, smtp: Any, directory_path: Path) -> NotifySettings:
    return _settings(tmp_path, amqp_url, directory_path, smtp.smtp_port)


def notice(kind: str, *recipients: str, **kw: Any) -> CaseNotice:
    case_id = kw.pop("case_id", uuid4())
    fields: dict[str, Any] = dict(
        case_id=case_id,
        case_reference=REF,
        kind=kind,
        recipients=recipients,
        owner_hsa_id=VC,
        consent_id=uuid4(),
        plan_url=f"https://sip.example/fhir/CarePlan/{case_id}",
        correlation_id=f"corr-{uuid4().hex[:8]}",
    )
    fields.update(kw)
    return CaseNotice(**fields)


def assert_safe(mail: Any) -> None:
    text = str(mail["Subject"]) + "\n" + mail.get_content()
    for number in (*ADULTS, CHILD, SAMORDNINGSNUMMER):
        assert number not in text and f"{number[2:8]}-{number[8:]}" not in text
    assert not personnummer_shaped(text), "personnummer-shaped number in a notice"
    assert not contains_health_data(text), "health data in a notice"


def to_of(mail: Any) -> str:
    return str(mail["To"])


async def exactly_once(smtp: Any, amqp_url: str, msg: CaseNotice, expected: int) -> list[Any]:
    """Publish ``msg``, wait for its mails; publish it again plus a marker notice of another case to
    SOC, wait for the marker: nothing else may have arrived."""
    await publish(amqp_url, msg)
    got = await mails(smtp, expected)
    await publish(amqp_url, msg, notice("case-closed", SOC, reason_code="other"))  # redelivery, marker
    await mails(smtp, expected + 1)
    await asyncio.sleep(1.0)  # anything the duplicate caused would have been sent by now
    everything = smtp.messages()
    assert len(everything) == expected + 1, [str(m["Subject"]) for m in everything]
    return got


async def test_plan_established_mails_each_recipient_once_without_personal_data(settings, smtp, amqp_url):
    msg = notice("plan-established", SOC, VC, plan_version=2)
    async with running(settings):
        got = await exactly_once(smtp, amqp_url, msg, 2)
    assert sorted(to_of(m) for m in got) == sorted(ADDRESSES.values())
    for m in got:
        assert str(m["Subject"]) == f"SIP-planen är fastställd – {REF}"
        assert msg.plan_url in m.get_content()
        assert_safe(m)
        hsa = next(h for h, a in ADDRESSES.items() if a == to_of(m))
        assert (
            m["Message-ID"] == f"<{DedupeKey(str(msg.message_id), hsa, 'email').notification_id()}@sip-suite>"
        )


async def test_case_closed_mails_each_recipient_once_without_personal_data(settings, smtp, amqp_url):
    msg = notice("case-closed", SOC, VC, reason_code="deceased")
    async with running(settings):
        got = await exactly_once(smtp, amqp_url, msg, 2)
    assert sorted(to_of(m) for m in got) == sorted(ADDRESSES.values())
    for m in got:
        assert str(m["Subject"]) == f"SIP avslutad – {REF}"
        assert "Orsak: ärendet är avslutat av den ansvariga verksamheten." in m.get_content()
        assert_safe(m)


async def test_follow_up_due_mails_each_recipient(settings, smtp, amqp_url):
    msg = notice("follow-up-due", SOC, VC, follow_up_date=date(2026, 9, 1))
    async with running(settings):
        await publish(amqp_url, msg)
        got = await mails(smtp, 2)
    assert sorted(to_of(m) for m in got) == sorted(ADDRESSES.values())
    for m in got:
        assert "senast 1 september 2026" in m.get_content()
        assert_safe(m)


# ---- the reminder before the meeting, with a clock the test moves --------------------------------
@asynccontextmanager
async def running_at(settings: NotifySettings, clock: FixedClock) -> AsyncIterator[Any]:
    app = create_app(settings, clock=clock)
    await app.state.runtime.start()
    try:
        yield app
    finally:
        await app.state.runtime.stop()


def subjects(got: list[Any]) -> list[str]:
    return sorted(str(m["Subject"]).split(" – ")[0] for m in got)


async def test_the_reminder_reaches_the_smtp_server_when_due_and_only_then(settings, smtp, amqp_url):
    clock = FixedClock(datetime.now(UTC))
    meeting = clock.now() + timedelta(days=3)
    cmd = SendInvitation(
        case_id=uuid4(), case_reference=REF, consent_id=uuid4(), recipients=(SOC, VC),
        invitation_due_at=clock.now() + timedelta(days=1), plan_url="https://sip.example/fhir/CarePlan/r1",
        meeting_start=meeting, correlation_id="corr-r",
    )  # fmt: skip
    async with running_at(settings, clock):
        await publish(amqp_url, cmd)
        await mails(smtp, 2)
        await asyncio.sleep(1.0)  # ten dispatcher polls: the reminders are not due
        assert subjects(smtp.messages()) == ["Kallelse till SIP-planering"] * 2

        clock.advance(timedelta(days=2, minutes=1))  # past meeting − 24 h
        got = await mails(smtp, 4)
        await asyncio.sleep(1.0)
        got = smtp.messages()
        assert len(got) == 4
    reminders = [m for m in got if str(m["Subject"]).startswith("Påminnelse: SIP-möte")]
    assert sorted(to_of(m) for m in reminders) == sorted(ADDRESSES.values())
    for m in reminders:
        assert_safe(m)
        hsa = next(h for h, a in ADDRESSES.items() if a == to_of(m))
        key = DedupeKey(reminder_cause_key(str(cmd.message_id)), hsa, "email")
        assert m["Message-ID"] == f"<{key.notification_id()}@sip-suite>"


# ---- the same rules on PostgreSQL ------------------------------------------------------------------
@pytest.mark.postgres
async def test_on_postgresql_reminders_are_superseded_and_notices_recorded(tmp_path, pg_url, directory_path):
    clock = FixedClock(datetime(2026, 3, 2, 8, 0, tzinfo=UTC))
    settings = NotifySettings(
        database_url=pg_url, data_dir=str(tmp_path), directory_path=str(directory_path), auth_required=False
    )
    app = create_app(settings, clock=clock)
    runtime = app.state.runtime
    await runtime.prepare_database()  # as the service does at start (Alembic on PostgreSQL)
    first = SendInvitation(
        case_id=uuid4(), case_reference=REF, consent_id=uuid4(), recipients=(SOC,),
        invitation_due_at=clock.now() + timedelta(days=1), plan_url="https://sip.example/fhir/CarePlan/p",
        meeting_start=clock.now() + timedelta(days=3),
    )  # fmt: skip
    later = first.model_copy(
        update={
            "message_id": uuid4(),
            "meeting_start": clock.now() + timedelta(days=4),
            "occurred_at": first.occurred_at + timedelta(hours=1),
        }
    )
    closed = notice("case-closed", SOC, case_id=first.case_id, consent_id=first.consent_id)

    async def send(br: Any, msg: Any) -> None:
        await br.publish(
            msg.model_dump(mode="json"), exchange=contract_exchange(type(msg)), routing_key=msg.routing_key
        )

    try:
        async with TestRabbitBroker(runtime.broker) as br:
            await send(br, first)
            await send(br, later)
            async with runtime.engine.connect() as conn:
                found = await SqlNotificationRepository(conn).for_case(first.case_id)
            assert sorted(
                (n.kind, n.status, n.status_reason or "") for n in found if n.kind == "reminder"
            ) == [
                ("reminder", "cancelled", "superseded by a later invitation with another meeting time"),
                ("reminder", "pending", ""),
            ]
            await send(br, closed)
            async with runtime.engine.connect() as conn:
                found = await SqlNotificationRepository(conn).for_case(first.case_id)
        assert {n.status for n in found if n.kind == "reminder"} == {"cancelled"}
        assert [n.status for n in found if n.kind == "case-closed"] == ["pending"]
    finally:
        await runtime.engine.dispose()
