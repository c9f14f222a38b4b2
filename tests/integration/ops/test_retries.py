"""Retries on the real broker: immediate, then delayed in <queue>.retry, then the DLQ with the reason."""

import asyncio
import itertools
import time

import aio_pika
import pytest

from shared.contracts import RecordConsent
from shared.messaging import declare_topology, make_broker
from shared.topology import contract_exchange, subscription, work_queue
from tests.support.personnummer import ADULT

pytestmark = pytest.mark.broker
SUB = subscription("consent", RecordConsent)


async def _start(amqp_url, handler, *, max_attempts=6, delay=1.0):
    broker = make_broker(service="consent", amqp_url=amqp_url, max_attempts=max_attempts)
    broker.subscriber(work_queue(SUB), contract_exchange(RecordConsent))(handler)
    await broker.connect()
    await declare_topology(broker, retry_delay_seconds=delay)
    await broker.start()
    return broker


async def _publish(broker, message_id):
    cmd = RecordConsent(patient_identifier=ADULT, decision="granted", recorded_by_hsa_id="SE-R")
    await broker.publish(cmd.model_dump_json().encode(), exchange=contract_exchange(RecordConsent),
                         routing_key=cmd.routing_key, persist=True, message_id=message_id,
                         content_type="application/json")  # fmt: skip


async def test_transient_failure_is_retried_immediately_then_after_a_delay(amqp_url):
    calls: list[float] = []

    async def flaky(msg: RecordConsent) -> None:
        calls.append(time.monotonic())
        if len(calls) < 4:
            raise ConnectionError("database unavailable")

    broker = await _start(amqp_url, flaky, delay=1.5)
    try:
        await _publish(broker, "flaky-1")
        for _ in range(100):
            if len(calls) >= 4:
                break
            await asyncio.sleep(0.1)
        assert len(calls) == 4  # attempt 1, immediate 2, delayed 3, immediate 4 → success
        gaps = [b - a for a, b in itertools.pairwise(calls)]
        assert gaps[0] < 1.0  # immediate
        assert gaps[1] >= 1.4  # waited in the retry queue
        await asyncio.sleep(2.0)
        assert len(calls) == 4  # processed once it succeeded; nothing more
    finally:
        await broker.stop()


async def test_persistent_failure_ends_in_the_dlq_with_reason_and_count(amqp_url):
    calls = 0

    async def broken(msg: RecordConsent) -> None:
        nonlocal calls
        calls += 1
        raise TimeoutError("upstream timed out")

    broker = await _start(amqp_url, broken, max_attempts=4, delay=0.5)
    try:
        await _publish(broker, "broken-1")
        conn = await aio_pika.connect(amqp_url)
        async with conn:
            ch = await conn.channel()
            dlq = await ch.declare_queue(SUB.dlq_name, passive=True)
            m = None
            for _ in range(100):
                m = await dlq.get(fail=False)
                if m:
                    break
                await asyncio.sleep(0.1)
            assert m is not None and m.message_id == "broken-1"
            assert m.headers["x-sip-error"] == "upstream timed out"
            assert m.headers["x-sip-attempts"] == 4
            assert m.headers["x-sip-original-routing-key"] == "consent.record.v1"
            assert m.routing_key == "consent.record.v1"
            await m.ack()
            # retries went only to this consumer's queue: planning's queues on other exchanges saw nothing
            for name in (SUB.retry_queue_name, SUB.queue_name):
                q = await ch.declare_queue(name, passive=True)
                assert q.declaration_result.message_count == 0
        assert calls == 4
    finally:
        await broker.stop()
