"""Planning against the real RabbitMQ, on SQLite and on PostgreSQL."""

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import aio_pika
import pytest

from services.planning.app import create_app
from services.planning.settings import PlanningSettings
from shared.contracts import DischargeNotified
from shared.messaging import declare_topology_at
from tests.support.personnummer import ADULTS

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.broker


@pytest.fixture
async def amqp_url(amqp_url: str) -> str:
    """The whole topology first, as the deployment's definitions pre-create it: one service runs here
    and declares only its own part, but the tests read consent's and notify's queues."""
    await declare_topology_at(amqp_url)
    return amqp_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def settings(request, amqp_url, tmp_path):
    common = dict(amqp_url=amqp_url, directory_path=str(REPO / "config/directory.yaml"))
    if request.param == "postgres":
        return PlanningSettings(database_url=request.getfixturevalue("pg_url"), **common)
    return PlanningSettings(data_dir=str(tmp_path), **common)


def discharge(pnr, **kw):
    return DischargeNotified(
        episode_id=kw.pop("episode_id", f"V-{uuid4().hex[:6]}"), hospital_hsa_id="SE2321000016-SJH01",
        patient={"identifier": pnr, "kommun_code": kw.pop("kommun", "0180")},
        ready_for_discharge_at=datetime.now(UTC), needs_kommun_support=True, needs_region_support=True, **kw,
    )  # fmt: skip


async def publish(amqp_url, body: bytes, message_id: str):
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        ex = await ch.get_exchange("hospital.events")
        await ex.publish(aio_pika.Message(body, message_id=message_id, content_type="application/json",
                                          delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                         routing_key="hospital.discharge.v1", mandatory=True)  # fmt: skip


async def take(amqp_url, queue, n, timeout=20.0):
    got = []
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue(queue, passive=True)
        for _ in range(int(timeout / 0.1)):
            m = await q.get(fail=False)
            if m is not None:
                await m.ack()
                got.append(m)
                if len(got) >= n:
                    break
            else:
                await asyncio.sleep(0.1)
    return got


async def test_discharges_flow_invalid_and_unroutable_go_to_dlq_with_reasons(settings, amqp_url):
    app = create_app(settings)
    rt = app.state.runtime
    await rt.start()
    try:
        bad = json.loads(discharge(ADULTS[8]).model_dump_json())
        bad["patient"]["identifier"] = "191212121213"
        await publish(amqp_url, json.dumps(bad).encode(), "bad-check-digit")
        unroutable = discharge(ADULTS[9], kommun="9999")
        await publish(amqp_url, unroutable.model_dump_json().encode(), "unknown-kommun")
        good = discharge(ADULTS[10], correlation_id="corr-good")
        await publish(amqp_url, good.model_dump_json().encode(), str(good.message_id))
        await publish(amqp_url, good.model_dump_json().encode(), str(good.message_id))  # duplicate delivery

        [req] = await take(amqp_url, "consent.consent.request.v1", 1)
        body = json.loads(req.body)
        assert body["patient_identifier"] == ADULTS[10] and body["correlation_id"] == "corr-good"
        assert req.correlation_id == "corr-good"
        dead = {
            m.message_id: m.headers["x-sip-error"]
            for m in await take(amqp_url, "planning.hospital.discharge.v1.dlq", 2)
        }
        assert set(dead) == {"bad-check-digit", "unknown-kommun"}
        assert "patient.identifier" in dead["bad-check-digit"] and "check digit" in dead["bad-check-digit"]
        assert "kommun code 9999" in dead["unknown-kommun"]
        assert "191212121213" not in dead["bad-check-digit"]  # the reason never echoes the value
        await asyncio.sleep(1.0)
        assert (
            await take(amqp_url, "consent.consent.request.v1", 1, timeout=1.0) == []
        )  # duplicate: no effect
    finally:
        await rt.stop()
