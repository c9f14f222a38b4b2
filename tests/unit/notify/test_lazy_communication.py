"""The FHIR Communication of a delivery is built only for the channel that posts it (the webhook).

E-mail and SMS never read it, so they must not pay for building and validating it; the webhook's
payload stays what it was when every delivery carried a ready-built Communication.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from services.notify import fhir
from services.notify.adapters.http_channels import WebhookChannelSender, WebhookSecrets
from services.notify.app import create_app
from services.notify.fhir import communication_resource
from services.notify.ports import Delivery
from services.notify.signing import verify_signature
from tests.unit.notify.conftest import T0, FakeChannel
from tests.unit.notify.test_dispatcher import accept, get

SOC, VC = "SE2120001-SOC0180", "SE2321000016-VC001"
SECRET = "test-webhook-secret"


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts Communications built for deliveries (the dispatcher's use of the builder)."""
    calls: list[str] = []

    def counting(n: Any, **kw: Any) -> dict[str, Any]:
        calls.append(n.channel)
        return communication_resource(n, **kw)

    monkeypatch.setattr("services.notify.dispatcher.communication_resource", counting)
    return calls


async def test_no_communication_is_built_for_an_email_delivery(app, settings, clock, sender, built):
    [n] = await accept(app, settings, clock, SOC)  # an organisation reached by e-mail only
    assert await app.state.dispatcher.dispatch_once() == 1
    assert (await get(app, n.id)).status == "sent"
    assert [m.message_id for m in sender.sent] == [f"<{n.id}@sip-suite>"]
    assert built == []


async def test_only_the_webhook_delivery_builds_its_communication(app, settings, clock, webhook, sms, built):
    await accept(app, settings, clock, VC)  # e-mail, webhook and SMS
    assert await app.state.dispatcher.dispatch_once() == 3
    [hook], [text] = webhook.delivered, sms.delivered
    assert built == []  # the fake channels did not read it either
    comm = hook.communication
    assert built == ["webhook"]
    assert hook.communication is comm and built == ["webhook"]  # built once per attempt
    assert comm == communication_resource(hook.notification, sent_at=T0, for_delivery=True)
    assert text.notification.channel == "sms" and "communication" not in vars(text)


def test_a_delivery_builds_its_communication_on_first_access_only():
    calls: list[int] = []
    d = Delivery(notification=None, build_communication=lambda: calls.append(1) or {"id": "x"})  # type: ignore[arg-type]
    assert calls == []
    assert d.communication == {"id": "x"} and d.communication is d.communication
    assert calls == [1]
    assert "build_communication" not in repr(d)


async def test_the_webhook_payload_is_the_communication_of_the_attempt_byte_for_byte(settings, clock, sender):
    """Through the dispatcher and the real webhook channel: the signed body is exactly the validated
    Communication (status completed, sent = the attempt's time) serialised as before."""
    requests: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(202)

    hook = WebhookChannelSender(
        WebhookSecrets({VC: SECRET}), timeout=5, transport=httpx.MockTransport(receiver)
    )
    app = create_app(settings, clock=clock, sender=sender, channels={"webhook": hook, "sms": FakeChannel()})
    await app.state.runtime.prepare_database()
    try:
        created = await accept(app, settings, clock, VC)
        assert await app.state.dispatcher.dispatch_once() == 3
        [n] = [x for x in created if x.channel == "webhook"]
        [request] = requests
        expected = json.dumps(
            fhir.communication_resource(await get(app, n.id), sent_at=T0, for_delivery=True),
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()
        assert request.content == expected
        assert verify_signature(SECRET, request.content, request.headers["X-Sip-Signature"])
        assert request.headers["X-Sip-Delivery-Id"] == str(n.id)
        payload = json.loads(request.content)
        assert payload["resourceType"] == "Communication" and payload["status"] == "completed"
        assert payload["sent"] == "2026-03-02T08:00:00Z" and payload["id"] == str(n.id)
        assert (await get(app, n.id)).status == "sent"
    finally:
        await app.state.runtime.engine.dispose()
