"""Benchmark: consent decisions ("may X receive Y about P for Z?") over RabbitMQ request/reply and HTTP.

    .venv/bin/python -m benchmarks.consent_decisions [--decisions 2000] [--concurrency 32] \
        [--database-url URL]

Starts the consent service as its own process (SQLite by default, this machine's RabbitMQ, a fresh
vhost), records a consent for each of Skatteverket's test personnummer (with an excluded
organisation, so both permits and denies happen), then runs ``--decisions`` decisions with
``--concurrency`` in flight, over:

- RabbitMQ, pipelined direct reply-to (``ConsentGateClient(amqp_url=...)``, many in flight);
- RabbitMQ, faststream ``broker.request`` (``ConsentGateClient(broker=...)``; faststream serialises
  requests per broker, so concurrency queues inside the client);
- HTTP ``POST /decisions`` (httpx, one keep-alive pool).

Every decision reads the person's consents (one indexed query) and writes its AuditEvent row in
the same transaction before the answer leaves. Prints p50/p99 latency per decision and throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shared.auth import mint_token
from shared.consent_gate import ConsentGateClient
from shared.messaging import declare_topology_at, make_broker
from tests.support.infra import Proc, free_port, python_module, rabbit_vhost
from tests.support.personnummer import ADULTS

ORGS = ("SE2120001-SOC0180", "SE2321000016-VC001", "SE2120001-SKOLA1")
CATEGORIES = ("sip-plan", "care-needs", "psychiatric", "lus-ready-for-discharge")


def ask(i: int) -> dict[str, str]:
    return {
        "patient_identifier": ADULTS[i % len(ADULTS)],
        "recipient_hsa_id": ORGS[i % len(ORGS)],
        "category": CATEGORIES[(i // 3) % len(CATEGORIES)],
        "purpose": "share-information",
        "requested_by": "benchmark",
    }


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def run(
    name: str, n: int, concurrency: int, one: Callable[[int], Awaitable[str]]
) -> tuple[str, list[float], float, dict[str, int]]:
    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < n:
            i = next_i
            next_i += 1
            t0 = time.perf_counter()
            outcome = await one(i)
            latencies.append((time.perf_counter() - t0) * 1000)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return name, latencies, time.perf_counter() - t0, outcomes


def report(name: str, latencies: list[float], elapsed: float, outcomes: dict[str, int]) -> None:
    p50, p99 = pct(latencies, 50), pct(latencies, 99)
    print(
        f"{name:48s} n={len(latencies):5d}  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  "
        f"mean {statistics.fmean(latencies):7.2f} ms  {len(latencies) / elapsed:7.0f} decisions/s  {outcomes}"
    )


SECRET = "benchmark-only-secret-of-at-least-32-bytes"


async def main_async(args: argparse.Namespace) -> None:
    with rabbit_vhost() as amqp_url, tempfile.TemporaryDirectory() as tmp:
        # only consent runs, and it declares only its own queues: the others first, as in production
        await declare_topology_at(amqp_url)
        port = free_port()
        env = dict(os.environ)
        env.update(
            CONSENT_AMQP_URL=amqp_url,
            CONSENT_DATA_DIR=tmp,
            CONSENT_HTTP_PORT=str(port),
            CONSENT_LOG_LEVEL="WARNING",
            SIP_AUTH_REQUIRED="true",
            SIP_JWT_HS256_SECRET=SECRET,
        )
        if args.database_url:
            env["CONSENT_DATABASE_URL"] = args.database_url
        proc = Proc(
            "consent",
            python_module("services.consent"),
            env=env,
            log_path=Path(tmp) / "consent.log",
            health_url=f"http://127.0.0.1:{port}/healthz",
        ).start(timeout=60)
        try:
            base = f"http://127.0.0.1:{port}"
            limits = httpx.Limits(
                max_connections=args.concurrency, max_keepalive_connections=args.concurrency
            )
            auth = {"Authorization": "Bearer " + mint_token(SECRET, "SE2321000016-VC001", ttl=7200)}
            async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits, headers=auth) as http:
                for pnr in ADULTS:
                    r = await http.post(
                        "/consents",
                        json={
                            "patient_identifier": pnr,
                            "decision": "granted",
                            "purposes": ["draw-up-plan", "share-information"],
                            "recipients": list(ORGS[:2]),
                            "excluded_organisations": [ORGS[2]],
                            "excluded_categories": ["psychiatric"],
                            "recorded_by_hsa_id": "SE2321000016-REC1",
                        },
                    )
                    r.raise_for_status()

                async def over_http(i: int) -> str:
                    r = await http.post("/decisions", json=ask(i))
                    r.raise_for_status()
                    return str(r.json()["decision"])

                pipelined = ConsentGateClient(amqp_url=amqp_url, timeout=30)
                broker = make_broker(service="benchmark", amqp_url=amqp_url)
                await broker.connect()
                serial = ConsentGateClient(broker=broker, timeout=30)

                def via(client: ConsentGateClient) -> Callable[[int], Awaitable[str]]:
                    async def one(i: int) -> str:
                        return (await client.decide(**ask(i))).decision  # type: ignore[arg-type]

                    return one

                # warm up every path (first validation, connections, JIT of SQL statements)
                for fn in (over_http, via(pipelined), via(serial)):
                    for i in range(20):
                        await fn(i)
                database = "PostgreSQL" if args.database_url else "SQLite"
                print(
                    f"consent decisions: {args.decisions} per run, concurrency {args.concurrency}, "
                    f"database {database}, RabbitMQ at {amqp_url.rsplit('@', 1)[-1]}"
                )
                results = [
                    await run(
                        "RabbitMQ request/reply (pipelined)", args.decisions, args.concurrency, via(pipelined)
                    ),
                    await run(
                        "RabbitMQ request/reply (broker.request)",
                        args.decisions,
                        args.concurrency,
                        via(serial),
                    ),
                    await run("HTTP POST /decisions", args.decisions, args.concurrency, over_http),
                    await run(
                        "RabbitMQ request/reply (pipelined), 1 at a time",
                        min(500, args.decisions),
                        1,
                        via(pipelined),
                    ),
                    await run("HTTP POST /decisions, 1 at a time", min(500, args.decisions), 1, over_http),
                ]
                for res in results:
                    report(*res)
                await pipelined.aclose()
                await broker.stop()
                audit = await http.get("/audit", params={"patient": ADULTS[0], "limit": 1000})
                print(f"audit rows for one person after the runs: {len(audit.json())}")
        finally:
            proc.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decisions", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--database-url", default="", help="e.g. postgresql://postgres@127.0.0.1:5432/<db>")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
