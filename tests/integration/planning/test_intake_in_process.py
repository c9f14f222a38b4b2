"""planning's intake hands its stay events to their handler in-process, not through ``hospital.events``.

Since 2026-12 an accepted HL7 v2 / FHIR message is stored with its ACK and one outbox row per event
marked local; after the commit the relay hands the row to the stay-event handler in-process
(shared/local_delivery.py). ``hospital.events`` stays the hospitals' exchange: planning publishes
nothing there (and its broker user may not). What a subscription gave stays: once through the inbox
(a second hand-over after a crash has no effect), a bad event in the stay-event dead-letter queue with
the reason, a sick database waited out without counting attempts. Real RabbitMQ, SQLite (and
PostgreSQL on the PostgreSQL pass).
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path

import aio_pika
import httpx
import pytest
import sqlalchemy as sa

from services.planning.adapters.store import metadata
from services.planning.app import create_app
from services.planning.intake import intake_tables
from services.planning.settings import PlanningSettings
from shared.contracts import HospitalStayEvent
from shared.dependencies import DATABASE, DependencyUnavailable
from shared.local_delivery import LocalDelivery
from shared.messaging import declare_topology_at
from tests.unit.intake.messages import adt_bytes

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.broker

VC = "SE2321000016-VC001"
ACTOR = {"X-Sip-Organisation": VC}
STAY_QUEUE = "planning.hospital.stay-event.v1"


def hl7(trigger: str, control_id: str, visit: str, **kw) -> bytes:
    kw.setdefault("kommun", "0180")
    raw = adt_bytes(trigger, control_id=control_id, **kw).replace(b"V12345", visit.encode())
    return raw.replace(b"SE2321000131-E000000000111", VC.encode())  # a listed unit of the directory


@pytest.fixture
async def amqp_url(amqp_url: str) -> str:
    await declare_topology_at(amqp_url)  # the deployment's definitions
    return amqp_url


@asynccontextmanager
async def planning(amqp_url: str, data_dir: Path, *, handler=None, **extra):
    settings = PlanningSettings(
        amqp_url=amqp_url, data_dir=str(data_dir), directory_path=str(REPO / "config/directory.yaml"),
        mllp_enabled=False, **extra,
    )  # fmt: skip
    app = create_app(settings)
    runtime = app.state.runtime
    if handler is not None:  # the stay-event handler replaced (a failing one)
        LocalDelivery(runtime, {HospitalStayEvent: handler}, max_attempts=settings.max_attempts).install()
    await runtime.start()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://planning"
        ) as api:
            yield app, api
    finally:
        await runtime.stop()


async def probe(amqp_url: str):
    """A queue that sees everything published to ``hospital.events``."""
    conn = await aio_pika.connect(amqp_url)
    ch = await conn.channel()
    q = await ch.declare_queue("", exclusive=True)
    await q.bind("hospital.events", routing_key="#")
    return conn, q


async def queue_depth(amqp_url: str, name: str) -> int:
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        q = await (await conn.channel()).declare_queue(name, passive=True)
        return q.declaration_result.message_count or 0


async def stays(app) -> list:
    t = intake_tables(metadata)
    async with app.state.runtime.engine.connect() as c:
        return list((await c.execute(sa.select(t.c.status, t.c.correlation_id).order_by(t.c.id))).all())


async def until(check, what: str, tries: int = 150):
    for _ in range(tries):
        got = await check()
        if got:
            return got
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def unpublished(app) -> int:
    outbox = app.state.runtime.outbox
    async with app.state.runtime.engine.connect() as c:
        return await c.scalar(
            sa.select(sa.func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
        )


async def test_an_hl7_discharge_opens_its_case_in_process_and_nothing_goes_to_hospital_events(
    amqp_url, tmp_path
):
    conn, seen = await probe(amqp_url)
    async with conn, planning(amqp_url, tmp_path) as (app, api):
        ack = await app.state.intake.handle_hl7(hl7("A03", "IP-1", "V-IP-1"))
        assert b"MSA|AA|IP-1" in ack
        [(status, _)] = await until(
            lambda: _effected(app), "the message's effect written back to the message store"
        )
        assert status == "effected"
        cases = (await api.get("/cases", headers=ACTOR)).json()
        assert len(cases) == 1 and cases[0]["state"] == "consent_pending"
        await until(lambda: _zero(unpublished(app)), "the outbox drained (the consent request)")
        metrics = (await api.get("/metrics")).text
        assert f'sip_messages_consumed_total{{outcome="ok",queue="{STAY_QUEUE}"}} 1.0' in metrics
        # the hospitals' exchange carried nothing of planning's, and the stay-event queue was not used
        assert await seen.get(fail=False) is None
        assert await queue_depth(amqp_url, STAY_QUEUE) == 0


async def _effected(app):
    rows = await stays(app)
    return rows if rows and all(r.status == "effected" for r in rows) else None


async def _zero(count):
    return await count == 0


async def test_a_stay_event_handed_over_again_after_a_crash_has_no_second_effect(amqp_url, tmp_path):
    async with planning(amqp_url, tmp_path) as (app, api):
        await app.state.intake.handle_hl7(hl7("A03", "IP-2", "V-IP-2"))
        await until(lambda: _effected(app), "the first hand-over's effect")
        await until(lambda: _zero(unpublished(app)), "the outbox drained")
        # the relay died after the handler committed but before it marked the row: the row is
        # taken again (its claim expired) and handed over a second time
        runtime = app.state.runtime
        async with runtime.engine.begin() as c:
            done = await c.execute(
                runtime.outbox.update()
                .where(runtime.outbox.c.routing_key == HospitalStayEvent.routing_key)
                .values(published_at=None, claimed_by=None, claimed_until=None)
            )
            assert done.rowcount == 1
        runtime.relay.wake()
        await until(lambda: _zero(unpublished(app)), "the row handed over again and marked")
        cases = (await api.get("/cases", headers=ACTOR)).json()
        assert len(cases) == 1  # one case, and one consent request for it:
        out = runtime.outbox
        async with runtime.engine.connect() as c:
            keys = list((await c.execute(sa.select(out.c.routing_key))).scalars())
        assert sorted(keys) == ["consent.request.v1", HospitalStayEvent.routing_key]


async def test_a_failing_hand_over_is_retried_then_dead_lettered_with_the_reason(amqp_url, tmp_path):
    calls: list[str] = []

    async def failing(msg: HospitalStayEvent) -> None:
        calls.append(msg.event.stay_id)
        raise RuntimeError("the handler failed")

    async with planning(amqp_url, tmp_path, handler=failing, max_attempts=3) as (app, _api):
        ack = await app.state.intake.handle_hl7(hl7("A03", "IP-3", "V-IP-3"))
        assert b"MSA|AA|IP-3" in ack  # stored: our problem from here, not the sender's
        conn = await aio_pika.connect(amqp_url)
        async with conn:
            dlq = await (await conn.channel()).declare_queue(f"{STAY_QUEUE}.dlq", passive=True)
            msg = await until(lambda: dlq.get(fail=False, no_ack=False), "the dead letter", tries=200)
            headers = msg.headers
            assert headers["x-sip-error"] == "the handler failed"
            assert headers["x-sip-error-type"] == "RuntimeError"
            assert int(headers["x-sip-attempts"]) == 3
            # sipctl's replay sends it where a broker delivery of the contract goes: this same queue
            assert headers["x-sip-original-exchange"] == "hospital.events"
            assert headers["x-sip-original-routing-key"] == HospitalStayEvent.routing_key
            assert HospitalStayEvent.model_validate_json(msg.body).event.stay_id == "V-IP-3"
            await msg.ack()
        assert calls == ["V-IP-3"] * 3
        await until(lambda: _zero(unpublished(app)), "the dead-lettered row done")
        metrics = (await _api.get("/metrics")).text
        assert f'sip_dead_letters_total{{error_type="RuntimeError",queue="{STAY_QUEUE}"}} 1.0' in metrics


async def test_a_sick_database_during_the_hand_over_counts_no_attempt(amqp_url, tmp_path):
    outages = 4  # more than the attempts a bad message gets
    handled: list[str] = []

    async def sick_then_well(msg: HospitalStayEvent) -> None:
        if len(handled) < outages:
            handled.append("outage")
            raise DependencyUnavailable(DATABASE, "OperationalError: database is locked")
        handled.append(msg.event.stay_id)

    async with planning(
        amqp_url, tmp_path, handler=sick_then_well, max_attempts=2,
        dependency_backoff_initial_seconds=0.05, dependency_backoff_max_seconds=0.1,
    ) as (app, _api):  # fmt: skip
        await app.state.intake.handle_hl7(hl7("A03", "IP-4", "V-IP-4"))
        await until(lambda: _zero(unpublished(app)), "the row handed over once the database is back", 300)
        assert handled == ["outage"] * outages + ["V-IP-4"]
    assert await queue_depth(amqp_url, f"{STAY_QUEUE}.dlq") == 0
