from __future__ import annotations

import email
import email.policy

import aiosmtplib
import httpx
import pytest

from services.notify.adapters.smtp import build_message, classify, flatten, scrub
from services.notify.ports import ChannelUnavailable, OutgoingEmail, PermanentSendError, TransientSendError
from tests.unit.notify.test_dispatcher import accept


@pytest.mark.parametrize(
    "exc, kind",
    [
        (aiosmtplib.SMTPResponseException(451, "try later"), TransientSendError),
        (aiosmtplib.SMTPResponseException(421, "closing"), TransientSendError),
        (aiosmtplib.SMTPResponseException(550, "no such user x@y.example"), PermanentSendError),
        (aiosmtplib.SMTPAuthenticationError(535, "bad credentials"), PermanentSendError),
        (aiosmtplib.SMTPSenderRefused(553, "sender refused", "a@b.example"), PermanentSendError),
        (aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(450, "busy", "a@b")]),
         TransientSendError),
        (aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(550, "gone", "a@b")]),
         PermanentSendError),
        (aiosmtplib.SMTPConnectError("refused"), ChannelUnavailable),
        (aiosmtplib.SMTPServerDisconnected("gone"), ChannelUnavailable),
        (aiosmtplib.SMTPTimeoutError("slow"), ChannelUnavailable),
        (ConnectionRefusedError(111, "refused"), ChannelUnavailable),
        (TimeoutError(), ChannelUnavailable),
        (aiosmtplib.SMTPNotSupported("STARTTLS extension not supported"), PermanentSendError),
    ],
)  # fmt: skip
def test_classify(exc, kind):
    assert type(classify(exc)) is kind


def test_error_text_keeps_no_address_or_personnummer():
    text = str(classify(aiosmtplib.SMTPResponseException(550, "<a.b@c.example> unknown; 19121212-1212")))
    assert "a.b@c.example" not in text and "19121212" not in text
    assert text.startswith("SMTP 550")
    assert scrub("user x@y.z rejected") == "user <address> rejected"


def test_message_headers():
    raw = flatten(
        build_message(
            OutgoingEmail("<abc@sip-suite>", ("a@x.example", "b@x.example"), "Ämne", "Text åäö"),
            "sip-suite@localhost",
        )
    )
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Message-ID"] == "<abc@sip-suite>"
    assert msg["To"] == "a@x.example, b@x.example"
    assert msg["Subject"] == "Ämne"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Content-Language"] == "sv"
    assert msg.get_content().strip() == "Text åäö"


async def test_http_list_hides_addresses_detail_shows_them(app, settings, clock):
    created = await accept(app, settings, clock, "SE2120001-SOC0180", "SE2321000016-VC001")
    case_id = created[0].case_id
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://notify") as client:
        r = await client.get("/notifications", params={"case_id": str(case_id)})
        assert r.status_code == 200
        items = r.json()
        assert {(i["recipient_hsa_id"], i["channel"], i["status"]) for i in items} == {
            ("SE2120001-SOC0180", "email", "pending"),
            ("SE2321000016-VC001", "email", "pending"),
            ("SE2321000016-VC001", "webhook", "pending"),
            ("SE2321000016-VC001", "sms", "pending"),
        }
        assert "@" not in r.text  # no contact addresses in the list
        assert all("body" not in i and "address" not in i for i in items)

        email_id = next(i["id"] for i in items if i["recipient_hsa_id"] == "SE2120001-SOC0180")
        r = await client.get(f"/notifications/{email_id}")
        assert r.status_code == 200
        one = r.json()
        assert one["address"] == "sip-socialtjanst@stockholm.example"
        assert one["attempts"] == 0 and one["sent_at"] is None
        assert one["email_message_id"] == f"<{email_id}@sip-suite>"

        r = await client.get("/notifications/00000000-0000-0000-0000-000000000000")
        assert r.status_code == 404
        r = await client.get("/notifications")
        assert r.status_code == 422
