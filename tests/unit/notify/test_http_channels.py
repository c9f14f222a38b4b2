"""The webhook and SMS channels: what they send, how they sign it, how answers are classified.

These use httpx's in-process transport; the real-socket tests are in tests/integration/notify.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from uuid import uuid4

import httpx
import pytest

from services.notify.adapters.http_channels import (
    SmsGatewaySender,
    WebhookChannelSender,
    WebhookSecrets,
    classify_exception,
    classify_status,
    secret_env_name,
)
from services.notify.domain import Notification
from services.notify.fhir import communication_resource
from services.notify.ports import Delivery, PermanentSendError, TransientSendError
from services.notify.signing import verify_signature

HSA = "SE2321000016-VC001"
SECRET = "s3cret"
T = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def notification(channel: str, address: str | None, body: str = "Ärende: SIP-2026-4F3A9C") -> Notification:
    return Notification(
        id=uuid4(), cause_message_id="m-1", case_id=uuid4(), case_reference="SIP-2026-4F3A9C",
        correlation_id="corr-1", recipient_hsa_id=HSA, channel=channel, address=address, language="sv",  # type: ignore[arg-type]
        subject="Kallelse till SIP-planering – SIP-2026-4F3A9C", body=body, status="sending", attempts=1,
        next_attempt_at=T, created_at=T, updated_at=T, plan_url="https://sip.example/fhir/CarePlan/abc",
        sender_hsa_id="SE2120001-SOC0180",
    )  # fmt: skip


def delivery(n: Notification) -> Delivery:
    return Delivery(
        notification=n, build_communication=lambda: communication_resource(n, sent_at=T, for_delivery=True)
    )


class Recorder:
    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.statuses.pop(0) if self.statuses else 200)


@pytest.mark.parametrize(
    "status, kind",
    [(200, None), (201, None), (202, None), (204, None),
     (408, TransientSendError), (429, TransientSendError), (500, TransientSendError),
     (502, TransientSendError), (503, TransientSendError), (504, TransientSendError),
     (400, PermanentSendError), (401, PermanentSendError), (403, PermanentSendError),
     (404, PermanentSendError), (410, PermanentSendError), (422, PermanentSendError),
     (301, PermanentSendError), (307, PermanentSendError)],
)  # fmt: skip
def test_status_classification(status, kind):
    got = classify_status(status, "webhook")
    assert (type(got) if got is not None else None) is kind
    if got is not None:
        assert str(got).startswith(f"webhook answered HTTP {status}")


@pytest.mark.parametrize(
    "exc, kind",
    [(httpx.ConnectError("refused"), TransientSendError), (httpx.ReadTimeout("slow"), TransientSendError),
     (httpx.RemoteProtocolError("eof"), TransientSendError), (ConnectionResetError(), TransientSendError),
     (httpx.UnsupportedProtocol("ftp"), PermanentSendError), (httpx.InvalidURL("bad"), PermanentSendError)],
)  # fmt: skip
def test_exception_classification(exc, kind):
    assert type(classify_exception(exc, "webhook")) is kind


async def test_webhook_posts_a_signed_fhir_communication():
    rec = Recorder(202)
    n = notification("webhook", "https://vc.example/hook")
    sender = WebhookChannelSender(
        WebhookSecrets({HSA: SECRET}), timeout=5, transport=httpx.MockTransport(rec)
    )
    await sender.deliver(delivery(n))
    [req] = rec.requests
    assert req.method == "POST" and str(req.url) == "https://vc.example/hook"
    assert req.headers["content-type"] == "application/fhir+json"
    assert req.headers["x-sip-delivery-id"] == str(n.id) == req.headers["idempotency-key"]
    assert verify_signature(SECRET, req.content, req.headers["x-sip-signature"])
    assert not verify_signature("wrong", req.content, req.headers["x-sip-signature"])
    body = json.loads(req.content)
    assert body["resourceType"] == "Communication" and body["id"] == str(n.id)
    assert body["status"] == "completed" and body["sent"] == "2026-03-02T08:00:00Z"
    assert body["payload"] == [{"contentString": n.body}]
    assert "subject" not in body  # no patient reference, ever


async def test_webhook_failures_are_classified():
    n = notification("webhook", "https://vc.example/hook")
    for status, kind in ((503, TransientSendError), (429, TransientSendError), (400, PermanentSendError)):
        sender = WebhookChannelSender(
            WebhookSecrets({HSA: SECRET}), timeout=5, transport=httpx.MockTransport(Recorder(status))
        )
        with pytest.raises(kind):
            await sender.deliver(delivery(n))


async def test_webhook_without_a_secret_or_over_plain_http_is_refused_before_sending():
    rec = Recorder()
    no_secret = WebhookChannelSender(WebhookSecrets({}), timeout=5, transport=httpx.MockTransport(rec))
    with pytest.raises(PermanentSendError, match="NOTIFY_WEBHOOK_SECRET_SE2321000016_VC001"):
        await no_secret.deliver(delivery(notification("webhook", "https://vc.example/hook")))
    plain = WebhookChannelSender(WebhookSecrets({HSA: SECRET}), timeout=5, transport=httpx.MockTransport(rec))
    with pytest.raises(PermanentSendError, match="https"):
        await plain.deliver(delivery(notification("webhook", "http://vc.example/hook")))
    assert rec.requests == []
    # plain http to the loopback interface is allowed (development, tests)
    await plain.deliver(delivery(notification("webhook", "http://127.0.0.1:9/hook")))
    assert len(rec.requests) == 1


def test_webhook_secrets_come_from_the_environment_or_a_file(tmp_path):
    assert secret_env_name("SE2321000016-VC001") == "NOTIFY_WEBHOOK_SECRET_SE2321000016_VC001"
    file = tmp_path / "secrets.yaml"
    file.write_text("SE2321000016-VC001: from-file\nSE2120001-SOC0180: soc-file\n")
    secrets = WebhookSecrets.load(
        file=str(file), environ={"NOTIFY_WEBHOOK_SECRET_SE2321000016_VC001": "from-env", "PATH": "/bin"}
    )
    assert secrets.get("SE2321000016-VC001") == "from-env"  # the environment wins
    assert secrets.get("SE2120001-SOC0180") == "soc-file"
    assert secrets.get("SE0000000-NONE") is None


async def test_sms_gateway_gets_to_and_text_with_a_bearer_token():
    rec = Recorder(200, 201)
    n = notification(
        "sms", "+46700000000, +46 70-111 11 11", body="Kallelse till SIP, ärende SIP-2026-4F3A9C."
    )
    sender = SmsGatewaySender(
        url="https://sms.example/send", token="tok", timeout=5, transport=httpx.MockTransport(rec)
    )
    await sender.deliver(delivery(n))
    assert [json.loads(r.content) for r in rec.requests] == [
        {"to": "+46700000000", "text": n.body},
        {"to": "+46701111111", "text": n.body},
    ]
    assert all(r.headers["authorization"] == "Bearer tok" for r in rec.requests)
    assert [r.headers["idempotency-key"] for r in rec.requests] == [f"{n.id}:0", f"{n.id}:1"]


async def test_sms_failures_are_classified_and_a_missing_gateway_is_permanent():
    n = notification("sms", "+46700000000")
    for status, kind in ((503, TransientSendError), (408, TransientSendError), (401, PermanentSendError)):
        sender = SmsGatewaySender(
            url="https://sms.example/send",
            token=None,
            timeout=5,
            transport=httpx.MockTransport(Recorder(status)),
        )
        with pytest.raises(kind):
            await sender.deliver(delivery(n))
    with pytest.raises(PermanentSendError, match="no SMS gateway"):
        await SmsGatewaySender(url=None, token=None, timeout=5).deliver(delivery(n))
    bad = notification("sms", "call reception")
    with pytest.raises(PermanentSendError, match="not a phone number"):
        await SmsGatewaySender(url="https://sms.example/send", token=None, timeout=5).deliver(delivery(bad))
