"""The consent service against the real RabbitMQ: request in, consent recorded over HTTP, decision out."""

import asyncio
import json
from uuid import uuid4

import aio_pika
import httpx
import pytest

from services.consent.app import create_app
from services.consent.settings import ConsentSettings
from shared.contracts import ConsentRequested
from shared.messaging import declare_topology_at
from tests.support.personnummer import ADULT, ADULTS

pytestmark = pytest.mark.broker


@pytest.fixture
async def amqp_url(amqp_url: str) -> str:
    """The whole topology first, as the deployment's definitions pre-create it: one service runs here
    and declares only its own part, but the tests read planning's queues."""
    await declare_topology_at(amqp_url)
    return amqp_url


async def _get_one(amqp_url: str, queue: str, timeout: float = 15.0) -> aio_pika.abc.AbstractIncomingMessage:
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue(queue, passive=True)
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            m = await q.get(fail=False)
            if m is not None:
                await m.ack()
                return m
            await asyncio.sleep(0.1)
    raise AssertionError(f"nothing arrived in {queue}")


@pytest.fixture(params=["sqlite", "postgres"])
def consent_settings(request, amqp_url, tmp_path):
    if request.param == "postgres":
        pg_url = request.getfixturevalue("pg_url")
        return ConsentSettings(amqp_url=amqp_url, database_url=pg_url)
    return ConsentSettings(amqp_url=amqp_url, data_dir=str(tmp_path))


async def test_request_then_http_consent_publishes_granted(consent_settings, amqp_url):
    app = create_app(consent_settings)
    rt = app.state.runtime
    await rt.start()
    try:
        case_id = uuid4()
        req = ConsentRequested(
            case_id=case_id,
            patient_identifier=ADULT,
            proposed_recipients=("SE2120001-SOC0180",),
            correlation_id="c-42",
        )
        await rt.broker.publish(
            req.model_dump_json().encode(),
            exchange="consent.commands",
            routing_key=req.routing_key,
            persist=True,
            message_id=str(req.message_id),
        )
        # the sandbox's acting organisation (authentication is off here): the participant the case
        # proposed, who collects and records the consent
        actor = {"X-Sip-Organisation": "SE2120001-SOC0180"}
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://t", headers=actor
        ) as http:
            for _ in range(100):
                pending = (await http.get("/consent-requests")).json()
                if pending:
                    break
                await asyncio.sleep(0.1)
            assert [p["case_id"] for p in pending] == [str(case_id)]
            assert ADULT not in json.dumps(pending)  # masked in the work list
            body = {
                "case_id": str(case_id),
                "patient_identifier": ADULT,
                "decision": "granted",
                "method": "written",
            }
            r1 = await http.post("/consents", json=body, headers={"Idempotency-Key": "k1"})
            r2 = await http.post("/consents", json=body, headers={"Idempotency-Key": "k1"})
            assert r1.status_code == 201 and r2.status_code == 200
            assert r1.json()["id"] == r2.json()["id"]
            assert r1.json()["recipients"] == ["SE2120001-SOC0180"]
            fhir = await http.get(f"/fhir/Consent/{r1.json()['id']}")
            assert fhir.headers["content-type"].startswith("application/fhir+json")
            assert fhir.json()["provision"]["type"] == "permit"
            bad = await http.post("/consents", json={**body, "patient_identifier": "191212121213"})
            assert bad.status_code == 422 and "check digit" in bad.text
            missing = await http.get(f"/fhir/Consent/{uuid4()}")
            assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"
        msg = await _get_one(amqp_url, "planning.consent.granted.v1")
        event = json.loads(msg.body)
        assert event["case_id"] == str(case_id)
        assert event["correlation_id"] == "c-42"
        assert msg.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert msg.message_id == event["message_id"]
    finally:
        await rt.stop()


async def test_consent_recorded_by_message(consent_settings, amqp_url):
    app = create_app(consent_settings)
    rt = app.state.runtime
    await rt.start()
    try:
        body = {"patient_identifier": ADULTS[2], "decision": "declined", "recorded_by_hsa_id": "SE-X1"}
        await rt.broker.publish(
            json.dumps(body).encode(),
            exchange="consent.commands",
            routing_key="consent.record.v1",
            persist=True,
        )
        msg = await _get_one(amqp_url, "planning.consent.declined.v1")
        assert json.loads(msg.body)["patient_identifier"] == ADULTS[2]
    finally:
        await rt.stop()
