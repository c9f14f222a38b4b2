"""Benchmark: what one consumed message costs a service before its handler does anything.

    .venv/bin/python -m benchmarks.consume_floor [--messages 4000]

A service runtime (consent's, on SQLite, this machine's RabbitMQ in a fresh vhost) with one
subscriber whose handler opens a unit of work and claims the message in the inbox — the part every
handler of the suite has — and nothing else. The queue is filled first; then the CPU seconds of
this process are measured while the runtime consumes it (faststream's decoding and middlewares, the
dead-letter middleware, metrics and tracing, aio-pika's delivery and ack, one SQLite transaction).
Prints CPU microseconds per message and messages per second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aio_pika

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.infra import rabbit_vhost
from tests.support.personnummer import ADULT


async def run(amqp_url: str, data_dir: str, n: int) -> tuple[float, float]:
    os.environ.update(SIP_AMQP_URL=amqp_url, SIP_DATA_DIR=data_dir, SIP_LOG_LEVEL="WARNING")
    from services.consent.adapters.store import metadata
    from services.consent.settings import ConsentSettings
    from shared.contracts import ConsentRequested
    from shared.messaging import declare_service_topology
    from shared.runtime import ServiceRuntime
    from shared.topology import contract_exchange, subscription, work_queue

    runtime = ServiceRuntime("consent", ConsentSettings(), metadata)
    sub = subscription("consent", ConsentRequested)
    done = asyncio.Event()
    count = 0

    @runtime.broker.subscriber(work_queue(sub), contract_exchange(ConsentRequested))
    async def on_message(msg: ConsentRequested) -> None:
        nonlocal count
        async with runtime.unit_of_work() as uow:
            await uow.first_time(sub.queue_name, str(msg.message_id))
        count += 1
        if count >= n:
            done.set()

    await runtime.prepare_database()
    await runtime.broker.connect()
    await declare_service_topology(runtime.broker, "consent")
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        ex = await ch.get_exchange("consent.commands")
        sem = asyncio.Semaphore(200)

        async def publish() -> None:
            body = ConsentRequested(case_id=uuid.uuid4(), patient_identifier=ADULT).model_dump_json().encode()
            async with sem:
                await ex.publish(
                    aio_pika.Message(body, message_id=str(uuid.uuid4()), content_type="application/json",
                                     delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=ConsentRequested.routing_key,
                )  # fmt: skip

        await asyncio.gather(*(publish() for _ in range(n)))
    cpu, wall = time.process_time(), time.perf_counter()
    await runtime.broker.start()
    await asyncio.wait_for(done.wait(), timeout=600)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await runtime.broker.stop()
    await runtime.engine.dispose()
    return cpu / n, n / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=4000)
    args = ap.parse_args()
    with rabbit_vhost() as amqp_url, tempfile.TemporaryDirectory() as tmp:
        per, rate = asyncio.run(run(amqp_url, tmp, args.messages))
    print(f"one consumed message (inbox claim, nothing else), {args.messages} messages: "
          f"{per * 1e6:.0f} µs CPU each, {rate:.0f} messages/s on one core")  # fmt: skip


if __name__ == "__main__":
    main()
