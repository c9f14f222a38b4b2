"""Metrics and trace propagation of a runtime against the real RabbitMQ (a fresh vhost per test)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from uuid import uuid4

import aio_pika
import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from shared.contracts import ConsentDeclined, RecordConsent
from shared.messaging import declare_topology_at
from shared.runtime import ServiceRuntime
from shared.settings import ServiceSettings
from shared.topology import contract_exchange, subscription, work_queue
from shared.tracing import extract_span_context, trace_id_for
from tests.support.personnummer import ADULTS

pytestmark = pytest.mark.broker


@pytest.fixture
async def amqp_url(amqp_url: str) -> str:
    """The whole topology first, as the deployment's definitions pre-create it: one service runs here
    and declares only its own part, but the tests read planning's queues."""
    await declare_topology_at(amqp_url)
    return amqp_url


QUEUE = "consent.consent.record.v1"


async def _publish(amqp_url: str, body: bytes, message_id: str, headers: dict | None = None) -> None:
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
        ex = await ch.get_exchange("consent.commands")
        await ex.publish(
            aio_pika.Message(
                body,
                message_id=message_id,
                content_type="application/json",
                headers=headers or {},
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key="consent.record.v1",
            mandatory=True,
        )


async def _drain(amqp_url: str, queue: str, n: int, timeout: float = 20.0) -> list:
    conn = await aio_pika.connect(amqp_url)
    out: list = []
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue(queue, passive=True)
        for _ in range(int(timeout / 0.1)):
            m = await q.get(fail=False)
            if m is None:
                if len(out) >= n:
                    break
                await asyncio.sleep(0.1)
                continue
            await m.ack()
            out.append(m)
    return out


class Scraper:
    def __init__(self, rt: ServiceRuntime) -> None:
        self.app = FastAPI()
        rt.add_health_routes(self.app)

    async def values(self) -> dict[tuple[str, tuple], float]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://t") as c:
            text = (await c.get("/metrics")).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }

    async def consumed(self, outcome: str) -> float:
        return (await self.values()).get(
            ("sip_messages_consumed_total", (("outcome", outcome), ("queue", QUEUE))), 0.0
        )

    async def wait(self, outcome: str, n: int, timeout: float = 20.0) -> None:
        for _ in range(int(timeout / 0.1)):
            if await self.consumed(outcome) >= n:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{outcome} did not reach {n}: {await self.consumed(outcome)}")


@pytest.fixture
async def runtime(amqp_url: str, tmp_path: Path):
    rt = ServiceRuntime("consent", ServiceSettings(amqp_url=amqp_url, data_dir=str(tmp_path)), sa.MetaData())
    sub = subscription("consent", RecordConsent)
    failed_once: set[str] = set()

    @rt.broker.subscriber(work_queue(sub), contract_exchange(RecordConsent), title=sub.queue_name)
    async def on_record(msg: RecordConsent) -> None:
        if msg.recorded_by_hsa_id == "SE-FLAKY" and msg.correlation_id not in failed_once:
            failed_once.add(str(msg.correlation_id))
            # transient and about neither the message nor a dependency: retried (a ConnectionError would
            # mean a dependency is away: held without spending an attempt, see shared/dependencies.py)
            raise RuntimeError("a transient fault in the handler")
        async with rt.unit_of_work() as uow:
            if await uow.first_time(sub.queue_name, str(msg.message_id)):
                await uow.send(
                    ConsentDeclined(
                        consent_id=uuid4(),
                        case_id=None,
                        patient_identifier=msg.patient_identifier,
                        correlation_id=msg.correlation_id,
                    )
                )

    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop()


def record(i: int, correlation_id: str, by: str = "SE-R") -> RecordConsent:
    return RecordConsent(
        patient_identifier=ADULTS[i],
        decision="declined",
        recorded_by_hsa_id=by,
        correlation_id=correlation_id,
    )


async def test_consumed_counter_is_n_after_n_messages_and_poison_counts_as_dead_lettered(
    runtime: ServiceRuntime, amqp_url: str
):
    metrics = Scraper(runtime)
    n = 7
    for i in range(n):
        await _publish(amqp_url, record(i, f"c-{i}").model_dump_json().encode(), f"good-{i}")
    await metrics.wait("ok", n)
    await asyncio.sleep(0.5)  # nothing more arrives
    assert await metrics.consumed("ok") == n
    assert await metrics.consumed("dead_lettered") == 0
    for _ in range(100):  # the relay publishes each handler's message
        values = await metrics.values()
        if values.get(("sip_messages_published_total", (("routing_key", "consent.declined.v1"),))) == n:
            break
        await asyncio.sleep(0.1)
    assert values[("sip_messages_published_total", (("routing_key", "consent.declined.v1"),))] == n
    assert values[("sip_outbox_backlog", ())] == 0
    assert values[("sip_message_handler_duration_seconds_count", (("queue", QUEUE),))] == n

    await _publish(amqp_url, b"{not json", "poison-1")
    await metrics.wait("dead_lettered", 1)
    values = await metrics.values()
    assert values[("sip_messages_consumed_total", (("outcome", "dead_lettered"), ("queue", QUEUE)))] == 1
    assert sum(v for (name, _), v in values.items() if name == "sip_dead_letters_total") == 1
    assert await metrics.consumed("ok") == n

    # a transient failure: counted as retried, then ok
    await _publish(amqp_url, record(9, "c-flaky", by="SE-FLAKY").model_dump_json().encode(), "flaky-1")
    await metrics.wait("ok", n + 1)
    assert await metrics.consumed("retried") == 1
    assert await metrics.consumed("dead_lettered") == 1
    text = str(await metrics.values())
    assert all(p not in text and p[2:] not in text for p in ADULTS[:10])


async def test_traceparent_goes_through_the_outbox_into_the_published_headers(
    runtime: ServiceRuntime, amqp_url: str
):
    cid = str(uuid4())
    # the sender's traceparent is in the correlation id's trace: the consumer continues it
    sender = f"00-{trace_id_for(cid):032x}-00f067aa0ba902b7-01"
    await _publish(amqp_url, record(1, cid).model_dump_json().encode(), "t-1", {"traceparent": sender})
    # no traceparent and no AMQP correlation id: the body's correlation id decides the trace
    await _publish(amqp_url, record(2, "c-body").model_dump_json().encode(), "t-2")
    published = await _drain(amqp_url, "planning.consent.declined.v1", 2)
    by_cid = {m.correlation_id: m for m in published}
    assert set(by_cid) == {cid, "c-body"}
    first = extract_span_context(by_cid[cid].headers)
    second = extract_span_context(by_cid["c-body"].headers)
    assert first is not None and second is not None
    assert first.trace_id == trace_id_for(cid) == int(cid.replace("-", ""), 16)
    assert second.trace_id == trace_id_for("c-body")


@pytest.mark.postgres
async def test_an_older_outbox_on_postgresql_gets_the_traceparent_column(pg_url: str):
    from shared.persistence import make_engine, outbox_table, upgrade_outbox

    engine = make_engine(pg_url)
    outbox = outbox_table(sa.MetaData())
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE outbox (id SERIAL PRIMARY KEY, message_id VARCHAR(36))"))
            await conn.run_sync(upgrade_outbox, outbox)
            await conn.run_sync(upgrade_outbox, outbox)  # a second replica starting: no error
            cols = await conn.run_sync(lambda c: {x["name"] for x in sa.inspect(c).get_columns("outbox")})
    finally:
        await engine.dispose()
    assert "traceparent" in cols
