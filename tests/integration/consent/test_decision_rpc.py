"""The consent gate over RabbitMQ request/reply against the real broker (own vhost per test)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import aio_pika
import pytest
import sqlalchemy as sa

from services.consent.adapters.store import audit_events
from services.consent.app import create_app, prepare_database
from services.consent.settings import ConsentSettings
from shared.consent_gate import ConsentGateClient, ConsentGateUnavailable
from shared.messaging import declare_topology_at, make_broker
from tests.support.personnummer import ADULTS

pytestmark = pytest.mark.broker

SOC, VC, SCHOOL = "SE2120001-SOC0180", "SE2321000016-VC001", "SE2120001-SKOLA1"
REC = "SE2321000016-REC1"
ACTOR = {"X-Sip-Organisation": REC}  # the sandbox's acting organisation (authentication is off here)


@pytest.fixture
async def consent_service(amqp_url, tmp_path):
    app = create_app(ConsentSettings(amqp_url=amqp_url, data_dir=str(tmp_path)))
    rt = app.state.runtime
    await prepare_database(rt)
    await rt.start()
    try:
        yield app, rt
    finally:
        await rt.stop()


async def _grant(app, **kw):
    import httpx

    body = {
        "patient_identifier": ADULTS[0],
        "decision": "granted",
        "purposes": ["share-information"],
        "recipients": [SOC, VC],
        "excluded_organisations": [SCHOOL],
        **kw,
    }
    if "case_id" in kw:  # planning asked consent for the case, which the recording unit owns
        from uuid import UUID

        from services.consent import handlers
        from services.consent.adapters.store import SqlConsentRepository
        from shared.clock import SystemClock
        from shared.contracts import ConsentRequested

        rt = app.state.runtime
        async with rt.unit_of_work() as uow:
            await handlers.request_consent(
                ConsentRequested(
                    case_id=UUID(kw["case_id"]), patient_identifier=ADULTS[0], proposed_recipients=(SOC, VC),
                    requested_by_hsa_id=REC,
                ),
                repo=SqlConsentRepository(uow.conn),
                clock=SystemClock(),
            )  # fmt: skip
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://t", headers=ACTOR
    ) as http:
        r = await http.post("/consents", json=body)
        assert r.status_code == 201, r.text
        return r.json(), http


async def test_decision_request_reply_over_the_real_broker(consent_service, amqp_url):
    app, rt = consent_service
    consent, _ = await _grant(app)
    # a caller as planning would be: its own broker, built the suite's way
    caller = make_broker(service="planning", amqp_url=amqp_url)
    await caller.connect()
    try:
        gate = ConsentGateClient(broker=caller, timeout=5)
        pipelined = ConsentGateClient(amqp_url=amqp_url, timeout=5)
        for client in (gate, pipelined):
            permit = await client.decide(
                patient_identifier=ADULTS[0],
                recipient_hsa_id=SOC,
                category="care-needs",
                purpose="share-information",
                requested_by="planning",
                correlation_id=f"corr-rpc-{id(client)}",
            )
            assert (permit.decision, permit.basis, permit.consent_id) == (
                "permit",
                "consent",
                _uuid(consent["id"]),
            )
            deny = await client.decide(
                patient_identifier=ADULTS[0],
                recipient_hsa_id=SCHOOL,
                category="care-needs",
                purpose="share-information",
            )
            assert (deny.decision, deny.reason) == ("deny", "organisation-excluded")
            lus = await client.decide(
                patient_identifier=ADULTS[1],
                recipient_hsa_id=SOC,
                category="lus-admission-notice",
                purpose="draw-up-plan",
            )
            assert (lus.decision, lus.basis) == ("permit", "lus-logistics")
        # many in flight at once on the pipelined client: every answer matches its question
        asks = [(SOC if i % 2 else SCHOOL, i) for i in range(40)]
        replies = await asyncio.gather(
            *(
                pipelined.decide(
                    patient_identifier=ADULTS[0],
                    recipient_hsa_id=org,
                    category="sip-plan",
                    purpose="share-information",
                )
                for org, _ in asks
            )
        )
        assert [r.decision for r in replies] == ["permit" if org == SOC else "deny" for org, _ in asks]
        await pipelined.aclose()
    finally:
        await caller.stop()

    # every answer is in the audit log, with the channel and the business correlation id
    async with rt.engine.connect() as conn:
        rows = (await conn.execute(sa.select(audit_events).where(audit_events.c.channel == "amqp"))).all()
    assert len(rows) == 6 + 40
    assert sum(r.outcome == "permit" for r in rows) == 4 + 20
    [traced] = [r for r in rows if r.correlation_id == f"corr-rpc-{id(pipelined)}"]
    assert traced.requested_by == "planning" and traced.recipient_hsa_id == SOC


async def test_withdrawal_reaches_planning_queue_and_the_gate_denies_at_once(consent_service, amqp_url):
    app, _rt = consent_service
    await declare_topology_at(
        amqp_url
    )  # planning's queue, as the definitions pre-create it (no planning here)
    consent, _ = await _grant(app, case_id="2b7e1f1e-0d7c-4a55-9a38-1d7b6d1c2a01")
    import httpx

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://t", headers=ACTOR
    ) as http:
        w = await http.post(f"/consents/{consent['id']}/withdraw", json={"recorded_by_hsa_id": REC})
        assert w.status_code == 200
    client = ConsentGateClient(amqp_url=amqp_url, timeout=5)
    try:
        d = await client.decide(
            patient_identifier=ADULTS[0],
            recipient_hsa_id=SOC,
            category="sip-plan",
            purpose="share-information",
        )
    finally:
        await client.aclose()
    assert (d.decision, d.reason) == ("deny", "consent-withdrawn")
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue("planning.consent.withdrawn.v1", passive=True)
        msg = None
        for _ in range(100):
            msg = await q.get(fail=False)
            if msg is not None:
                break
            await asyncio.sleep(0.1)
        assert msg is not None, "ConsentWithdrawn did not arrive"
        await msg.ack()
        body = json.loads(msg.body)
        assert body["consent_id"] == consent["id"] and body["cause"] == "withdrawal"
        assert msg.type == "consent.withdrawn.v1" and msg.delivery_mode == aio_pika.DeliveryMode.PERSISTENT


async def test_a_bad_request_is_answered_without_echoing_values(consent_service, amqp_url):
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        ch = await conn.channel()
        reply = await ch.get_queue("amq.rabbitmq.reply-to", ensure=False)
        got: asyncio.Future = asyncio.get_running_loop().create_future()

        async def on_reply(m: aio_pika.abc.AbstractIncomingMessage) -> None:
            got.set_result(m)

        await reply.consume(on_reply, no_ack=True)
        ex = await ch.get_exchange("consent.commands", ensure=False)
        await ex.publish(
            aio_pika.Message(
                json.dumps({"patient_identifier": "191212121213", "recipient_hsa_id": SOC}).encode(),
                content_type="application/json",
                reply_to="amq.rabbitmq.reply-to",
                correlation_id="bad-1",
            ),
            routing_key="consent.decide.v1",
        )
        answer = await asyncio.wait_for(got, 10)
        body = json.loads(answer.body)
        assert (body["decision"], body["reason"]) == ("deny", "invalid-request")
        assert "patient_identifier" in body["detail"] and "191212121213" not in body["detail"]
        assert answer.correlation_id == "bad-1"


async def test_without_a_consent_service_the_client_raises_unavailable(amqp_url):
    from shared.messaging import declare_service_topology

    caller = make_broker(service="planning", amqp_url=amqp_url)
    await caller.connect()
    # planning's part: consent.commands exists, but no consent service ever bound its queue
    await declare_service_topology(caller, "planning")
    try:
        for client in (
            ConsentGateClient(broker=caller, timeout=2),
            ConsentGateClient(amqp_url=amqp_url, timeout=2),
        ):
            with pytest.raises(ConsentGateUnavailable):
                await client.decide(
                    patient_identifier=ADULTS[0],
                    recipient_hsa_id=SOC,
                    category="sip-plan",
                    purpose="share-information",
                    at=datetime.now(UTC) + timedelta(seconds=1),
                )
            await client.aclose()
    finally:
        await caller.stop()


def _uuid(value: str):
    from uuid import UUID

    return UUID(value)
