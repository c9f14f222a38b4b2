"""consent's request/reply queue is a quorum queue (replicated on a RabbitMQ cluster, so losing a node
stops neither the decisions nor consent's other consumers). Where an earlier version left it classic —
a queue's type cannot change in place — consent replaces it at start, once the requests waiting in
it have expired, and answers decisions through the new one."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from urllib.parse import unquote, urlsplit

import aio_pika
import pytest

from services.consent.app import create_app, prepare_database
from services.consent.settings import ConsentSettings
from shared.consent_gate import ConsentGateClient
from shared.messaging import declare_topology_at
from shared.topology import DECISION_REQUEST_TTL_MS, decision_queue
from tests.support.personnummer import ADULTS

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]


def queue_types(amqp_url: str) -> dict[str, str]:
    vhost = unquote(urlsplit(amqp_url).path[1:]) or "/"
    out = subprocess.run(
        ["rabbitmqctl", "-q", "--formatter", "json", "list_queues", "-p", vhost, "name", "type"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return {q["name"]: q["type"] for q in json.loads(out.stdout)}


async def _leave_a_classic_queue_with_a_waiting_request(amqp_url: str, expires_ms: int) -> None:
    """What a version before 2026-12 left: the classic queue, one request not yet expired in it."""
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        ch = await conn.channel()
        name = decision_queue().name
        await ch.declare_queue(name, durable=True, arguments={"x-message-ttl": DECISION_REQUEST_TTL_MS})
        await ch.default_exchange.publish(
            aio_pika.Message(b"{}", expiration=expires_ms / 1000), routing_key=name
        )


def test_the_decision_queue_is_a_quorum_queue(amqp_url: str, tmp_path):
    async def run() -> None:
        app = create_app(ConsentSettings(amqp_url=amqp_url, data_dir=str(tmp_path)))
        await prepare_database(app.state.runtime)
        await app.state.runtime.start()
        await app.state.runtime.stop()

    asyncio.run(run())
    assert queue_types(amqp_url)[decision_queue().name] == "quorum"


def test_a_classic_queue_left_by_an_earlier_version_is_replaced_and_decisions_flow(amqp_url: str, tmp_path):
    asyncio.run(declare_topology_at(amqp_url))
    asyncio.run(_leave_a_classic_queue_with_a_waiting_request(amqp_url, expires_ms=2000))
    assert queue_types(amqp_url)[decision_queue().name] == "classic"

    async def run() -> tuple[float, str]:
        app = create_app(ConsentSettings(amqp_url=amqp_url, data_dir=str(tmp_path)))
        rt = app.state.runtime
        await prepare_database(rt)
        started = time.monotonic()
        await rt.start()  # waits for the waiting request to expire, then replaces the queue
        took = time.monotonic() - started
        try:
            async with ConsentGateClient(amqp_url=amqp_url, timeout=10) as gate:
                decision = await gate.decide(
                    patient_identifier=ADULTS[0], recipient_hsa_id="SE2120001-SOC0180",
                    category="care-needs", purpose="share-information",
                )  # fmt: skip
        finally:
            await rt.stop()
        return took, decision.decision

    took, outcome = asyncio.run(run())
    assert queue_types(amqp_url)[decision_queue().name] == "quorum"
    assert took >= 1.0  # it did not delete the queue while a request was still waiting in it
    assert outcome == "deny"  # answered (no consent recorded: the safe default)
