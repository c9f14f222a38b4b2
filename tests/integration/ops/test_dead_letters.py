"""Dead letters on the real broker: the reason is recorded, the queue keeps flowing, replay works."""

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import aio_pika
import pytest

from services.consent.app import create_app
from services.consent.settings import ConsentSettings
from shared.contracts import RecordConsent
from shared.messaging import declare_topology_at
from sipctl import deadletters
from tests.support.personnummer import ADULTS

pytestmark = pytest.mark.broker


@pytest.fixture
async def amqp_url(amqp_url: str) -> str:
    """The whole topology first, as the deployment's definitions pre-create it: one service runs here
    and declares only its own part, but the tests read other consumers' queues."""
    await declare_topology_at(amqp_url)
    return amqp_url


async def _publish(amqp_url, exchange, rk, body, message_id, headers=None):
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
        ex = await ch.get_exchange(exchange)
        await ex.publish(
            aio_pika.Message(
                body,
                message_id=message_id,
                headers=headers or {},
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=rk,
            mandatory=True,
        )


async def _count(amqp_url, queue):
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue(queue, passive=True)
        return q.declaration_result.message_count


async def _wait_count(amqp_url, queue, n, timeout=20.0):
    for _ in range(int(timeout / 0.2)):
        if await _count(amqp_url, queue) >= n:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{queue} did not reach {n}")


async def test_poison_goes_to_dlq_with_reason_stream_continues_and_replay_works(amqp_url, tmp_path):
    app = create_app(ConsentSettings(amqp_url=amqp_url, data_dir=str(tmp_path)))
    rt = app.state.runtime
    await rt.start()
    try:
        past = RecordConsent(
            patient_identifier=ADULTS[5],
            decision="granted",
            recorded_by_hsa_id="SE-R",
            valid_until=datetime.now(UTC) + timedelta(seconds=1),
        )
        await asyncio.sleep(1.1)  # now valid_until is in the past: a rule violation, permanent
        await _publish(
            amqp_url, "consent.commands", "consent.record.v1", past.model_dump_json().encode(), "rule-1"
        )
        await _publish(amqp_url, "consent.commands", "consent.record.v1", b"{not json", "garbage-1")
        good = RecordConsent(patient_identifier=ADULTS[6], decision="declined", recorded_by_hsa_id="SE-R")
        await _publish(
            amqp_url, "consent.commands", "consent.record.v1", good.model_dump_json().encode(), "good-1"
        )
        await _wait_count(amqp_url, "planning.consent.declined.v1", 1)  # the stream behind poison flowed
        await _wait_count(amqp_url, "consent.consent.record.v1.dlq", 2)

        items = await deadletters.list_dead_letters(amqp_url)
        reasons = {d.message_id: d.reason for d in items}
        assert set(reasons) == {"rule-1", "garbage-1"}
        assert "valid_until is in the past" in reasons["rule-1"]
        assert "not JSON" in reasons["garbage-1"]
        assert all(d.routing_key == "consent.record.v1" for d in items)
        assert await _count(amqp_url, "consent.consent.record.v1.dlq") == 2  # listing took nothing away

        # a message dead-lettered by a fault that has since been fixed: replay it by id
        fixed = RecordConsent(patient_identifier=ADULTS[7], decision="declined", recorded_by_hsa_id="SE-R")
        await _publish(
            amqp_url,
            "consent.dlx",
            "consent.record.v1",
            fixed.model_dump_json().encode(),
            "fixed-1",
            headers={
                "x-sip-error": "database unavailable",
                "x-sip-original-exchange": "consent.commands",
                "x-sip-original-routing-key": "consent.record.v1",
            },
        )
        await _wait_count(amqp_url, "consent.consent.record.v1.dlq", 3)
        out = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "sipctl",
                "dead-letters",
                "replay",
                "consent.consent.record.v1",
                "--id",
                "fixed-1",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={"SIP_AMQP_URL": amqp_url, "PATH": "/usr/bin:/bin"},
        )
        assert out.returncode == 0, out.stderr
        assert "replayed 1 message" in out.stdout
        await _wait_count(amqp_url, "planning.consent.declined.v1", 2)
        assert await _count(amqp_url, "consent.consent.record.v1.dlq") == 2  # the others stay
    finally:
        await rt.stop()
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue("planning.consent.declined.v1", passive=True)
        ids = []
        while (m := await q.get(fail=False)) is not None:
            ids.append(json.loads(m.body)["patient_identifier"])
            await m.ack()
    assert sorted(ids) == sorted([ADULTS[6], ADULTS[7]])
