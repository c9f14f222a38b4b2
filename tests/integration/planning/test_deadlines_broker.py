"""A breached deadline reaches the real RabbitMQ: planning.events, planning.deadline-breached.v1, once."""

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import aio_pika
import pytest

from services.planning.adapters import deadline_store as ds
from services.planning.adapters.store import metadata
from services.planning.scheduler import scheduler_job
from services.planning.settings import PlanningSettings
from shared.clock import FixedClock
from shared.runtime import ServiceRuntime

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.broker
T0 = datetime(2026, 12, 23, 14, 0, tzinfo=UTC)


async def test_the_scheduler_publishes_the_breach_to_planning_events(amqp_url, tmp_path):
    settings = PlanningSettings(
        amqp_url=amqp_url, data_dir=str(tmp_path), directory_path=str(REPO / "config/directory.yaml")
    )
    clock = FixedClock(T0)
    runtime = ServiceRuntime("planning", settings, metadata)
    # as app.py registers it
    runtime.background.append(scheduler_job(runtime, clock, 0.05, deadlines=ds.SqlDeadlines))
    conn = await aio_pika.connect(amqp_url)
    try:
        await runtime.start(consume=False)
        ch = await conn.channel()
        # an escalation consumer's queue (the suite has none yet: a mandatory publish needs one)
        queue = await ch.declare_queue(f"test.escalations.{uuid4().hex[:6]}", exclusive=True)
        await queue.bind("planning.events", routing_key="planning.deadline-breached.v1")

        case_id = uuid4()
        async with runtime.engine.begin() as db:
            await ds.schedule(
                db, case_id, "invitation", T0 + timedelta(days=3), "SE2321000016-VC01", started_at=T0,
                case_reference="SIP-2026-ABC123", correlation_id="corr-broker",
            )  # fmt: skip
        await asyncio.sleep(0.3)
        assert await queue.get(fail=False) is None  # not due yet
        clock.advance(timedelta(days=3))

        msg = None
        for _ in range(100):
            msg = await queue.get(fail=False)
            if msg is not None:
                break
            await asyncio.sleep(0.1)
        assert msg is not None, "no breach published"
        await msg.ack()
        assert msg.exchange == "planning.events"
        assert msg.routing_key == "planning.deadline-breached.v1"
        assert msg.type == "planning.deadline-breached.v1"
        assert msg.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert msg.message_id == str(ds.breach_message_id(case_id, "invitation", 1))
        assert msg.correlation_id == "corr-broker"
        body = json.loads(msg.body)
        assert body["case_id"] == str(case_id) and body["case_reference"] == "SIP-2026-ABC123"
        assert body["kind"] == "invitation" and body["owner_hsa_id"] == "SE2321000016-VC01"
        assert set(body) == {
            "message_id", "occurred_at", "correlation_id",
            "case_id", "case_reference", "kind", "due_at", "breached_at", "owner_hsa_id",
        }  # fmt: skip

        await asyncio.sleep(0.5)  # more scheduler passes: no second breach
        assert await queue.get(fail=False) is None
    finally:
        await runtime.stop()
        await conn.close()
