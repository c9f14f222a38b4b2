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

pytestmark = [pytest.mark.broker, pytest.mark.store_free]
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


def _disk_full():
    import sqlite3

    from sqlalchemy.exc import OperationalError

    return OperationalError("INSERT INTO inbox …", {}, sqlite3.OperationalError("database or disk is full"))


async def _dlq_depth(amqp_url) -> int:
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        ch = await conn.channel()
        dlq = await ch.declare_queue(SUB.dlq_name, passive=True)
        return dlq.declaration_result.message_count or 0


@pytest.mark.parametrize("hold_max", [300.0, 0.3], ids=["held", "held-then-parked"])
async def test_a_dependency_outage_is_held_not_dead_lettered(amqp_url, hold_max):
    """A message that meets a full disk twenty times (far past SIP_MAX_ATTEMPTS = 2) is neither retried
    against its budget nor dead-lettered: it is held and run again until the disk has room, then takes
    effect once. Held past the hold maximum, it waits in the retry queue with its attempt count as it
    was, and still ends well. The monitor shows the outage meanwhile and the recovery after."""
    from shared.dependencies import DependencyMonitor

    monitor = DependencyMonitor("consent", backoff_initial=0.02, backoff_max=0.1)
    calls = 0
    done = asyncio.Event()
    seen_down = False

    async def disk_full_for_a_while(msg: RecordConsent) -> None:
        nonlocal calls, seen_down
        calls += 1
        seen_down = seen_down or not monitor.ready
        if calls <= 20:
            raise _disk_full()
        done.set()

    broker = make_broker(
        service="consent", amqp_url=amqp_url, max_attempts=2, dependencies=monitor, hold_max_seconds=hold_max
    )
    broker.subscriber(work_queue(SUB), contract_exchange(RecordConsent))(disk_full_for_a_while)
    await broker.connect()
    await declare_topology(broker, retry_delay_seconds=0.5)
    await broker.start()
    try:
        await _publish(broker, "held-1")
        await asyncio.wait_for(done.wait(), timeout=30)
        await asyncio.sleep(1.0)
        assert calls == 21  # effect once, after the outage
        assert seen_down and monitor.ready
        assert await _dlq_depth(amqp_url) == 0
    finally:
        await broker.stop()


async def test_an_error_about_the_message_still_goes_to_the_dlq_with_a_monitor(amqp_url):
    from shared.dependencies import DependencyMonitor

    monitor = DependencyMonitor("consent", backoff_initial=0.02, backoff_max=0.1)

    async def broken(msg: RecordConsent) -> None:
        raise KeyError("no such thing")

    broker = make_broker(service="consent", amqp_url=amqp_url, max_attempts=2, dependencies=monitor)
    broker.subscriber(work_queue(SUB), contract_exchange(RecordConsent))(broken)
    await broker.connect()
    await declare_topology(broker, retry_delay_seconds=0.3)
    await broker.start()
    try:
        await _publish(broker, "bad-1")
        for _ in range(100):
            if await _dlq_depth(amqp_url):
                break
            await asyncio.sleep(0.1)
        assert await _dlq_depth(amqp_url) == 1
        assert monitor.ready  # not a dependency: the service stays ready
    finally:
        await broker.stop()
