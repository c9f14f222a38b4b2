"""planning reacts to its own breached deadlines in-process, and drains the queue an earlier version used.

Since 2026-12 the scheduler makes planning's reaction to a breach (a follow-up that came due) in the
transaction that marks the deadline breached: no RabbitMQ round trip, no planning queue for
``planning.deadline-breached.v1`` (notify still gets the event). A deployment upgraded from an earlier
version still has that queue (``planning.planning.deadline-breached.v1``), possibly with messages:
planning handles them once (inbox under the old queue's name) and deletes the queue, its retry queue
and its empty dead-letter queue. Real RabbitMQ, SQLite (and PostgreSQL on the PostgreSQL pass).
"""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import aio_pika
import aio_pika.exceptions
import httpx
import pytest

from services.planning.app import create_app
from services.planning.settings import PlanningSettings
from shared.clock import FixedClock
from shared.contracts import ConsentGranted, DeadlineBreached, InvitationSent
from shared.messaging import declare_topology_at
from shared.topology import RETIRED, dead_letter_queue, retry_queue, work_queue
from tests.support.personnummer import ADULTS

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.broker

SOC, VC = "SE2120001-SOC0180", "SE2321000016-VC001"
ACTOR = {"X-Sip-Organisation": VC}
T0 = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
OLD_QUEUE = "planning.planning.deadline-breached.v1"
NOTICES = "notify.planning.case-notice.v1"


@pytest.fixture
async def amqp_url(amqp_url: str) -> str:
    await declare_topology_at(amqp_url)  # the deployment's definitions (notify's queues too)
    return amqp_url


@asynccontextmanager
async def planning(amqp_url: str, data_dir: Path, clock: FixedClock):
    settings = PlanningSettings(
        amqp_url=amqp_url, data_dir=str(data_dir), directory_path=str(REPO / "config/directory.yaml"),
        deadline_check_interval=0.1,
    )  # fmt: skip
    app = create_app(settings, clock=clock)
    await app.state.runtime.start()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://planning"
        ) as api:
            yield api
    finally:
        await app.state.runtime.stop()


async def publish(amqp_url: str, msg) -> None:
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        ex = await ch.get_exchange(msg.exchange)
        await ex.publish(aio_pika.Message(msg.model_dump_json().encode(), message_id=str(msg.message_id),
                                          content_type="application/json"), routing_key=msg.routing_key)  # fmt: skip


async def drain(amqp_url: str, queue: str) -> list[dict]:
    """Everything waiting in ``queue`` now."""
    conn = await aio_pika.connect(amqp_url)
    got = []
    async with conn:
        q = await (await conn.channel()).declare_queue(queue, passive=True)
        while (m := await q.get(fail=False)) is not None:
            await m.ack()
            got.append(json.loads(m.body))
    return got


async def exists(amqp_url: str, queue: str) -> bool:
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        try:
            await (await conn.channel()).declare_queue(queue, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return False
    return True


async def wait_state(api: httpx.AsyncClient, case_id: str, state: str) -> None:
    body: dict = {}
    for _ in range(200):
        body = (await api.get(f"/cases/{case_id}")).json()
        if body["state"] == state:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"case stayed {body.get('state')}, expected {state}")


async def established_case(api: httpx.AsyncClient, amqp_url: str) -> str:
    """A proposed SIP taken to an established plan whose follow-up is 2027-03-01."""
    pnr = ADULTS[21]
    r = await api.post("/cases", json={"patient_identifier": pnr, "kommun_code": "0180",
                                       "primary_care_unit_hsa_id": VC, "proposed_by": "relative"})  # fmt: skip
    cid = r.json()["id"]
    await api.post(f"/cases/{cid}/accept", headers=ACTOR)
    await publish(amqp_url, ConsentGranted(consent_id=uuid4(), case_id=cid, patient_identifier=pnr,
                                           purposes=("draw-up-plan", "share-information", "send-invitation"),
                                           recipients=(SOC, VC)))  # fmt: skip
    await wait_state(api, cid, "preparing")
    await api.post(f"/cases/{cid}/invite", headers=ACTOR)
    await publish(amqp_url, InvitationSent(case_id=cid, notification_id=uuid4(), recipient_hsa_id=SOC,
                                           channel="email", sent_at=T0))  # fmt: skip
    await wait_state(api, cid, "invited")
    start = datetime(2027, 1, 12, 9, 0, tzinfo=UTC)
    r = await api.put(f"/cases/{cid}/meeting", headers=ACTOR,
                      json={"start": start.isoformat(), "end": (start + timedelta(hours=1)).isoformat(),
                            "video_url": "https://video.example/sip-2"})  # fmt: skip
    assert r.status_code == 200 and r.json()["state"] == "meeting_scheduled", r.text
    plan = {
        "needs": ["Stöd i hemmet"], "goals": [{"id": "g1", "description": "Bo kvar hemma"}],
        "interventions": [{"id": "i1", "description": "Hemtjänst", "goal_ids": ["g1"],
                           "responsible": {"kind": "organisation", "hsa_id": SOC}}],
        "overall_responsibility_hsa_id": VC, "coordination": "Vårdcentralen samordnar.",
        "follow_up_date": "2027-03-01",
    }  # fmt: skip
    r = await api.put(f"/cases/{cid}/plan", json=plan, headers=ACTOR)
    assert r.json()["state"] == "plan_drafted", r.text
    version = int((await api.get(f"/fhir/CarePlan/{cid}")).json()["meta"]["versionId"])
    r = await api.post(f"/cases/{cid}/plan/approve", headers=ACTOR,
                       json={"version": version, "approved_by": "person", "method": "oral"})  # fmt: skip
    assert r.json()["state"] == "established", r.text
    return cid


def follow_up_notices(notices: list[dict], cid: str) -> list[dict]:
    return [n for n in notices if n["case_id"] == cid and n["kind"] == "follow-up-due"]


async def test_a_follow_up_that_comes_due_is_handled_in_the_schedulers_transaction(amqp_url, tmp_path):
    clock = FixedClock(T0)
    async with planning(amqp_url, tmp_path, clock) as api:
        cid = await established_case(api, amqp_url)
        await drain(amqp_url, NOTICES)
        assert not await exists(amqp_url, OLD_QUEUE)  # planning has no queue for its own breaches

        clock.advance(datetime(2027, 3, 2, 12, 0, tzinfo=UTC) - T0)
        await wait_state(api, cid, "follow_up_due")

        # notify still gets the public event; the follow-up-due notice goes out once
        await asyncio.sleep(0.5)
        breaches = [
            b for b in await drain(amqp_url, "notify.planning.deadline-breached.v1") if b["case_id"] == cid
        ]
        assert [b["kind"] for b in breaches if b["kind"] == "follow-up"] == ["follow-up"]
        assert len(follow_up_notices(await drain(amqp_url, NOTICES), cid)) == 1
    assert not await exists(amqp_url, OLD_QUEUE)


async def test_the_queue_an_earlier_version_left_is_drained_once_and_deleted(amqp_url, tmp_path):
    clock = FixedClock(T0)
    async with planning(amqp_url, tmp_path, clock) as api:
        cid = await established_case(api, amqp_url)
        version = (await api.get(f"/fhir/CarePlan/{cid}")).json()["meta"]["versionId"]
    await drain(amqp_url, NOTICES)

    # the upgrade's starting point: the queue, retry queue and DLQ an earlier version declared, with a
    # follow-up breach waiting in it (twice: redelivered) and an invitation breach (nothing to do)
    [old] = [s for s in RETIRED if s.consumer == "planning"]
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        for q in (work_queue(old), dead_letter_queue(old), retry_queue(old, 5.0)):
            await ch.declare_queue(q.name, durable=True, arguments=dict(q.arguments or {}))
        await (await ch.get_queue(OLD_QUEUE)).bind("planning.events", routing_key=old.contract.routing_key)
        await (await ch.get_queue(old.dlq_name)).bind(old.dlx_name, routing_key=old.contract.routing_key)
        due = datetime(2027, 3, 1, 7, 0, tzinfo=UTC)
        follow_up = DeadlineBreached(case_id=cid, case_reference="SIP-OLD", kind="follow-up", due_at=due,
                                     breached_at=due, owner_hsa_id=VC)  # fmt: skip
        other = DeadlineBreached(case_id=cid, case_reference="SIP-OLD", kind="invitation", due_at=T0,
                                 breached_at=T0, owner_hsa_id=VC)  # fmt: skip
        for msg in (follow_up, follow_up, other):
            await ch.default_exchange.publish(
                aio_pika.Message(msg.model_dump_json().encode(), message_id=str(msg.message_id)),
                routing_key=OLD_QUEUE,
            )

    async with planning(amqp_url, tmp_path, clock) as api:  # the new version starts (clock not moved)
        await wait_state(api, cid, "follow_up_due")
        for _ in range(100):
            if not await exists(amqp_url, OLD_QUEUE):
                break
            await asyncio.sleep(0.1)
        assert not await exists(amqp_url, OLD_QUEUE)
        assert not await exists(amqp_url, old.retry_queue_name)
        assert not await exists(amqp_url, old.dlq_name)  # it was empty
        # once: one follow-up-due notice and one plan version more, for the two copies
        await asyncio.sleep(0.5)
        assert len(follow_up_notices(await drain(amqp_url, NOTICES), cid)) == 1
        now = (await api.get(f"/fhir/CarePlan/{cid}")).json()["meta"]["versionId"]
        assert int(now) == int(version) + 1
