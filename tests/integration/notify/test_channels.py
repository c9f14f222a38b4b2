"""notify's webhook and SMS channels against real HTTP receivers on localhost, and the calendar
invitation through a real SMTP server — with the real RabbitMQ (per-test vhost) in between."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fhir.resources.R4B.communication import Communication
from icalendar import Calendar

from services.notify.adapters.http_channels import secret_env_name
from services.notify.adapters.store import notifications
from services.notify.app import create_app
from services.notify.domain import DedupeKey
from services.notify.settings import NotifySettings
from services.notify.signing import verify_signature
from shared.contracts import SendInvitation
from shared.messaging import declare_topology_at
from tests.integration.notify.test_notify_service import (
    ADDRESSES,
    SOC,
    VC,
    invitation,
    invitation_sent_events,
    mails,
    publish,
)
from tests.support.infra import free_port

pytestmark = pytest.mark.broker


@pytest.fixture
async def amqp_url(amqp_url: str) -> str:
    """The whole topology first, as the deployment's definitions pre-create it: one service runs here
    and declares only its own part, but the tests read planning's queue."""
    await declare_topology_at(amqp_url)
    return amqp_url


HOOK = "SE2321000016-HOOK1"
SMS = "SE2321000016-SMS01"
SECRET = "webhook-secret-for-tests-only"
TOKEN = "gateway-token-for-tests-only"


# ---- a real HTTP receiver -------------------------------------------------------------------
@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int


@dataclass
class Receiver:
    """An HTTP server in a thread: answers the queued statuses in turn, then ``then``."""

    port: int
    statuses: list[int]
    then: int = 200
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def accepted(self) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if 200 <= r.answered < 300]

    def all(self) -> list[Received]:
        with self.lock:
            return list(self.requests)


@contextmanager
def receiver(*statuses: int, then: int = 200) -> Iterator[Receiver]:
    rec = Receiver(port=0, statuses=list(statuses), then=then)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with rec.lock:
                status = rec.statuses.pop(0) if rec.statuses else rec.then
                rec.requests.append(Received(self.path, dict(self.headers.items()), body, status))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()


# ---- notify with a directory pointing at the receivers ---------------------------------------
def directory(tmp_path: Path, *, webhook_url: str | None = None, sms: bool = False) -> Path:
    lines = ["organisations:"]
    if webhook_url:
        lines += [
            f"  - hsa_id: {HOOK}",
            "    name: Vårdcentralen med webhook",
            "    kind: primary_care_unit",
            "    channels:",
            f'      - {{type: webhook, url: "{webhook_url}"}}',
        ]
    if sms:
        lines += [
            f"  - hsa_id: {SMS}",
            "    name: Hemtjänsten med SMS",
            "    kind: kommun_social_services",
            "    channels:",
            '      - {type: sms, number: "+46700000001"}',
        ]
    path = tmp_path / "directory.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def settings_for(tmp_path: Path, amqp_url: str, directory_path: Path, **kw: Any) -> NotifySettings:
    return NotifySettings(
        amqp_url=amqp_url,
        data_dir=str(tmp_path / "data"),
        directory_path=str(directory_path),
        smtp_port=free_port(),  # nobody listens: these organisations have no e-mail channel
        http_timeout=3.0,
        dispatch_interval=0.1,
        retry_base_seconds=0.2,
        retry_max_seconds=0.5,
        max_send_attempts=20,
        **kw,
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


async def row_when(app: Any, nid: Any, done: Any, timeout: float = 15.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    row = None
    while asyncio.get_running_loop().time() < deadline:
        async with app.state.runtime.engine.connect() as conn:
            row = (await conn.execute(sa.select(notifications).where(notifications.c.id == str(nid)))).first()
        if row is not None and done(row):
            return row
        await asyncio.sleep(0.1)
    return row


async def fhir(app: Any, path: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://notify") as c:
        return await c.get(path)


# ---- the tests ------------------------------------------------------------------------------
async def test_webhook_503_twice_then_accepted_arrives_once_signed(tmp_path, amqp_url, monkeypatch):
    monkeypatch.setenv(secret_env_name(HOOK), SECRET)
    with receiver(503, 503) as rec:
        settings = settings_for(tmp_path, amqp_url, directory(tmp_path, webhook_url=f"{rec.url}/sip/hook"))
        cmd = invitation(HOOK)
        nid = DedupeKey(str(cmd.message_id), HOOK, "webhook").notification_id()
        async with running(settings) as app:
            await publish(amqp_url, cmd)
            row = await row_when(app, nid, lambda r: r.status == "sent")
            events = await invitation_sent_events(amqp_url, 1)
            await asyncio.sleep(1.0)  # a duplicate, if any, would have been posted by now

            assert row is not None and (row.status, row.attempts, row.last_error) == ("sent", 3, None)
            got = rec.all()
            assert [r.answered for r in got] == [503, 503, 200]
            [ok] = rec.accepted()  # exactly once
            assert ok.path == "/sip/hook"
            assert ok.headers["Content-Type"] == "application/fhir+json"
            assert verify_signature(SECRET, ok.body, ok.headers["X-Sip-Signature"])
            assert not verify_signature("another-secret", ok.body, ok.headers["X-Sip-Signature"])
            assert not verify_signature(
                SECRET, ok.body.replace(b"SIP-2026", b"SIP-2027"), ok.headers["X-Sip-Signature"]
            )
            # every attempt is the same delivery: the receiver can deduplicate on it
            assert {r.headers["X-Sip-Delivery-Id"] for r in got} == {str(nid)}
            comm = Communication.model_validate_json(ok.body)
            assert comm.id == str(nid) and comm.status == "completed"
            assert comm.recipient[0].identifier.value == HOOK
            assert "SIP-2026-4F3A9C" in comm.payload[0].contentString
            assert [e["body"]["channel"] for e in events] == ["webhook"]
            assert events[0]["body"]["notification_id"] == str(nid)

            record = (await fhir(app, f"/fhir/Communication/{nid}")).json()
            assert record["status"] == "completed" and "sent" in record


async def test_webhook_400_fails_permanently_with_the_reason(tmp_path, amqp_url, monkeypatch):
    monkeypatch.setenv(secret_env_name(HOOK), SECRET)
    with receiver(then=400) as rec:
        settings = settings_for(tmp_path, amqp_url, directory(tmp_path, webhook_url=f"{rec.url}/hook"))
        cmd = invitation(HOOK)
        nid = DedupeKey(str(cmd.message_id), HOOK, "webhook").notification_id()
        async with running(settings) as app:
            await publish(amqp_url, cmd)
            row = await row_when(app, nid, lambda r: r.status == "failed")
            await asyncio.sleep(1.0)  # no retry may follow

            assert row is not None
            assert (row.status, row.attempts) == ("failed", 1)
            assert row.last_error == "webhook answered HTTP 400 Bad Request"
            assert [r.answered for r in rec.all()] == [400]
            assert await invitation_sent_events(amqp_url, 1, timeout=1.0) == []

            record = (await fhir(app, f"/fhir/Communication/{nid}")).json()
            assert record["status"] == "not-done"
            assert record["statusReason"]["text"] == "webhook answered HTTP 400 Bad Request"
            status = (await fhir(app, f"/notifications?case_id={cmd.case_id}")).json()
            assert [(s["channel"], s["status"], s["last_error"]) for s in status] == [
                ("webhook", "failed", "webhook answered HTTP 400 Bad Request")
            ]


async def test_sms_gateway_429_then_accepted_gets_the_text_once(tmp_path, amqp_url):
    with receiver(429) as gateway:
        settings = settings_for(
            tmp_path,
            amqp_url,
            directory(tmp_path, sms=True),
            sms_gateway_url=f"{gateway.url}/messages",
            sms_gateway_token=TOKEN,
        )
        cmd = invitation(SMS).model_copy(update={"interpreter_language": "ar"})
        nid = DedupeKey(str(cmd.message_id), SMS, "sms").notification_id()
        async with running(settings) as app:
            await publish(amqp_url, cmd)
            row = await row_when(app, nid, lambda r: r.status == "sent")
            await asyncio.sleep(0.8)
            assert row is not None and (row.status, row.attempts) == ("sent", 2)
            assert [r.answered for r in gateway.all()] == [429, 200]
            [ok] = gateway.accepted()
            assert ok.headers["Authorization"] == f"Bearer {TOKEN}"
            sent = json.loads(ok.body)
            assert set(sent) == {"to", "text"} and sent["to"] == "+46700000001"
            assert "SIP-2026-4F3A9C" in sent["text"] and "Tolk: arabiska behövs" in sent["text"]


async def test_invitation_with_a_meeting_reaches_the_smtp_server_with_its_calendar(
    tmp_path, amqp_url, smtp, directory_path
):
    settings = settings_for(tmp_path, amqp_url, directory_path).model_copy(
        update={"smtp_port": smtp.smtp_port}
    )
    start = datetime(2026, 3, 5, 9, 0, tzinfo=UTC)  # 10:00 in Stockholm
    cmd = SendInvitation(
        **{
            **invitation(SOC, VC).model_dump(),
            "meeting_start": start,
            "meeting_end": start + timedelta(hours=1),
            "meeting_video_url": "https://video.region.example/m/8f3c2a",
        }
    )
    async with running(settings):
        await publish(amqp_url, cmd)
        got: list[EmailMessage] = await mails(smtp, 2)
    assert sorted(str(m["To"]) for m in got) == sorted(ADDRESSES.values())
    for m in got:
        [part] = [p for p in m.walk() if p.get_content_type() == "text/calendar"]
        assert part.get_param("method") == "REQUEST"
        ev = Calendar.from_ical(part.get_content()).walk("VEVENT")[0]
        assert ev["DTSTART"].params["TZID"] == "Europe/Stockholm"
        assert (ev.decoded("DTSTART").hour, ev.decoded("DTSTART").minute) == (10, 0)
        assert sorted(str(a) for a in ev.get("ATTENDEE")) == sorted(f"mailto:{a}" for a in ADDRESSES.values())
        assert str(ev["URL"]) == "https://video.region.example/m/8f3c2a"
        assert str(ev["UID"]) == f"sip-case-{cmd.case_id}@sip-suite"
        body = m.get_body(preferencelist=("plain",)).get_content()
        assert "https://video.region.example/m/8f3c2a" in body
        assert any(p.get_filename() == "invite.ics" for p in m.iter_attachments())
