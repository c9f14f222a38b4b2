"""Benchmark: HL7 v2 ADT^A03 over MLLP into the planning service, beside raw RabbitMQ in the same run.

    .venv/bin/python -m benchmarks.intake_mllp [--single 1000] [--messages 3000] [--connections 4]

Starts the planning service as its own process (SQLite; with ``SIP_TEST_DATABASE=postgres`` a fresh
database of this machine's PostgreSQL; this machine's RabbitMQ, a fresh vhost) and sends distinct
ADT^A03 messages (Skatteverket test personnummer) over MLLP, each connection waiting for its ACK
before the next message, as MLLP senders do — first ``--single`` messages over ONE connection (how a
hospital's sender works: its latency is the whole story), then ``--messages`` over ``--connections``
connections. For each phase it prints sustained messages/s and the time from the last byte sent to
the ACK received (p50/p99). Every ACK is an AA sent after the message, its ACK and its outgoing event
were committed (durably: PostgreSQL's commit, SQLite's WAL).

In the same run it measures the ceiling: raw aio-pika publishes of the same number of persistent
messages of the same size, with publisher confirms, from one and from ``--connections`` concurrent
publishers, each waiting for its confirm (as the intake waits for its commit). It prints both and the
ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aio_pika
import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.planning.intake.mllp import FrameDecoder, frame
from shared.messaging import declare_topology_at
from tests.support import dbmode
from tests.support.infra import Proc, free_port, python_module, rabbit_vhost
from tests.support.personnummer import ADULTS

VC = "SE2321000016-VC001"


def a03(i: int) -> bytes:
    pnr = ADULTS[i % len(ADULTS)]
    segments = [
        f"MSH|^~\\&|PAS|SU^1.2.752.129.2.1.4.1^ISO|SIP|KOMMUN|20261120140600+0100||ADT^A03^ADT_A03|BENCH-{i}|P|2.5"
        "||||||8859/1",
        "EVN|A03|20261120140500+0100",
        f"PID|1||{pnr}^^^SKV&1.2.752.129.2.1.3.1&ISO^PN||Åström^Örjan||20000101|F|||"
        "Storgatan 1^^Stockholm^^11122^SWE^H^^0180",
        f"PD1|||Vårdcentralen Södermalm^^^^^^^^^{VC}",
        f"PV1|1|I|||||||||||||||||BENCH-V{i}|||||||||||||||||01||||||||20261118090000+0100|20261120140000+0100",
    ]
    return ("\r".join(segments) + "\r").encode("iso8859-1")


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def mllp_run(
    port: int, total: int, connections: int, offset: int = 0
) -> tuple[float, list[float], dict[str, int]]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(offset, offset + total):
        queue.put_nowait(i)
    latencies: list[float] = []
    codes: dict[str, int] = {}

    async def sender() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        decoder = FrameDecoder()
        try:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                writer.write(frame(a03(i)))
                await writer.drain()
                t0 = time.perf_counter()
                acks: list[bytes] = []
                while not acks:
                    chunk = await asyncio.wait_for(reader.read(65536), timeout=30)
                    if not chunk:
                        raise ConnectionError("the service closed the connection")
                    acks = decoder.feed(chunk)
                latencies.append(time.perf_counter() - t0)
                msa = next(s for s in acks[0].split(b"\r") if s.startswith(b"MSA|")).split(b"|")[1].decode()
                codes[msa] = codes.get(msa, 0) + 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(connections)))
    return time.perf_counter() - start, latencies, codes


async def raw_run(amqp_url: str, total: int, publishers: int, size: int) -> tuple[float, list[float]]:
    conn = await aio_pika.connect_robust(amqp_url)
    latencies: list[float] = []
    async with conn:
        setup = await conn.channel()
        q = await setup.declare_queue("bench.raw", durable=True, arguments={"x-queue-type": "quorum"})
        body = b"x" * size
        counter = iter(range(total))

        async def publisher() -> None:
            ch = await conn.channel(publisher_confirms=True)
            for _ in counter:
                t0 = time.perf_counter()
                await ch.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=q.name
                )
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(publisher() for _ in range(publishers)))
        elapsed = time.perf_counter() - start
        await q.delete(if_unused=False, if_empty=False)
    return elapsed, latencies


def outbox_backlog(metrics_url: str) -> float:
    """planning's unpublished outbox rows: the gauge ``sip_outbox_backlog`` of its ``GET /metrics``."""
    text = httpx.get(metrics_url, timeout=10).text
    for line in text.splitlines():
        if line.startswith("sip_outbox_backlog"):
            return float(line.rsplit(" ", 1)[1])
    raise RuntimeError("no sip_outbox_backlog in planning's /metrics")


async def wait_drained(amqp_url: str, queue: str, metrics_url: str, timeout: float = 300) -> float:
    """Seconds until planning has done every message's follow-up work: its outbox backlog is 0 (the
    relay has published — or handed to planning's own handler — every row) AND ``queue`` is empty.
    Both, because the stay events may go through RabbitMQ (the queue) or straight from the relay to
    the handler in-process (the outbox), and a row handed on may raise new rows (consent request)."""
    conn = await aio_pika.connect(amqp_url)
    start = time.perf_counter()
    done_at: float | None = None
    async with conn:
        ch = await conn.channel()
        while time.perf_counter() - start < timeout:
            q = await ch.declare_queue(queue, passive=True)
            idle = q.declaration_result.message_count == 0
            idle = idle and await asyncio.to_thread(outbox_backlog, metrics_url) == 0
            if not idle:
                done_at = None
            elif done_at is None:
                done_at = time.perf_counter() - start
            else:  # twice in a row, 0.2 s apart: a delivery in the handler's hands counts in neither
                return done_at
            await asyncio.sleep(0.2)
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--single", type=int, default=1000, help="messages over one connection first (0: none)")
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--connections", type=int, default=4)
    args = ap.parse_args()
    store = "PostgreSQL" if dbmode.ON_POSTGRES else "SQLite"

    phases: list[tuple[int, float, list[float], dict[str, int]]] = []
    with rabbit_vhost() as amqp_url, tempfile.TemporaryDirectory() as tmp:
        # only planning runs, and it declares only its own queues: the others first, as in production
        asyncio.run(declare_topology_at(amqp_url))
        http_port, mllp_port = free_port(), free_port()
        env = dict(os.environ)
        env.update(
            SIP_AMQP_URL=amqp_url,
            SIP_DATA_DIR=tmp,
            SIP_DIRECTORY_PATH=str(REPO / "config" / "directory.yaml"),
            SIP_LOG_LEVEL="WARNING",
            PLANNING_HTTP_PORT=str(http_port),
            PLANNING_MLLP_PORT=str(mllp_port),
            SIP_JWT_HS256_SECRET="benchmark-only-secret-of-at-least-32-bytes",
        )
        env.update(dbmode.service_env(tmp))
        proc = Proc("planning", python_module("services.planning"), env, Path(tmp) / "planning.log",
                    health_url=f"http://127.0.0.1:{http_port}/healthz").start()  # fmt: skip
        try:
            asyncio.run(mllp_run(mllp_port, min(100, args.messages), args.connections))  # warm-up
            offset = 100
            for n, connections in ((args.single, 1), (args.messages, args.connections)):
                if n:
                    elapsed, lat, codes = asyncio.run(mllp_run(mllp_port, n, connections, offset))
                    offset += n
                    phases.append((connections, elapsed, lat, codes))
            drain = asyncio.run(
                wait_drained(
                    amqp_url, "planning.hospital.stay-event.v1", f"http://127.0.0.1:{http_port}/metrics"
                )
            )
        finally:
            proc.stop()
            dbmode.drop_databases()
        size = len(a03(0))
        raws = [
            (c, *asyncio.run(raw_run(amqp_url, n, c, size)))
            for n, c in ((args.single, 1), (args.messages, args.connections))
            if n
        ]

    print(
        f"HL7 v2 ADT^A03 over MLLP → planning ({store}, RabbitMQ outbox); each connection waits for its ACK"
    )
    for (connections, elapsed, lat, codes), (_, raw_elapsed, raw_lat) in zip(phases, raws, strict=True):
        rate, raw_rate = len(lat) / elapsed, len(raw_lat) / raw_elapsed
        print(f"{connections} connection{'s' if connections > 1 else ''}:")
        print(f"  messages            {len(lat)}  ACK codes {codes}")
        print(f"  sustained           {rate:8.1f} messages/s")
        print(f"  time to ACK         p50 {pct(lat, 50) * 1000:6.2f} ms   p99 {pct(lat, 99) * 1000:6.2f} ms"
              f"   (mean {statistics.mean(lat) * 1000:.2f} ms)")  # fmt: skip
        print(f"  raw aio-pika persistent publish + confirm, {connections} publisher(s), {size}-byte body:")
        print(f"  sustained           {raw_rate:8.1f} messages/s")
        print(
            f"  time to confirm     p50 {pct(raw_lat, 50) * 1000:6.2f} ms   p99 {pct(raw_lat, 99) * 1000:6.2f} ms"
        )
        print(f"  intake / raw publish  {rate / raw_rate:6.2f}")
    print(
        f"follow-up work done (planning's outbox empty, stay events consumed) {drain:.1f} s after the last ACK"
    )


if __name__ == "__main__":
    main()
