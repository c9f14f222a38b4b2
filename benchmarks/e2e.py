"""Benchmark: discharge accepted → invitation delivered, end to end, beside raw RabbitMQ in the same run.

    .venv/bin/python -m benchmarks.e2e [--rates 10,50] [--per-rate 300] [--saturation 1000] [--mllp 200]

Starts the three services as processes (SQLite; with ``SIP_TEST_DATABASE=postgres`` each on a fresh
database of this machine's PostgreSQL, whose CPU is then a column of its own; this machine's RabbitMQ
in a fresh vhost) and a real
SMTP sink, and a *consent desk* that grants consent the moment a case asks (it listens on its own queue
bound to ``consent.request.v1``). Then, for each offered rate, it publishes ``hospital.discharge.v1``
messages (persistent, confirmed: "accepted" = confirmed by the broker) and waits until every
participant's invitation has arrived at the SMTP server. A last phase offers discharges as fast as the
broker confirms them (saturation), and another sends ADT^A16 (ready for discharge) over MLLP
("accepted" = the AA ACK).

It prints, per phase: sustained discharges/s end to end, latency p50/p95/p99 from accepted to the last
participant's invitation delivered, and where the time goes (accepted → case opened → invitation sent
→ delivered, medians). Then the raw ceiling measured in the same run — aio-pika confirmed publish +
consume of the same number of messages — and the suite's throughput as a ratio of it, and CPU seconds
and peak RSS of each service process.

``--preload SCALE``: before the services start, each store is filled with a year of a large region's
closed history (benchmarks.volume's data at that scale — 1.0 is 150,000 discharges, their intake
messages, stays, cases, plan versions, notifications and AuditEvents — without the last 14 days' open
working set, which the stream itself makes), in bulk by the services' own migrations and tables, so
the same phases run on a year-old store; then one retention pass of each service, as a year of its
hourly passes leaves the store (``--unpruned``: none, so the services' first pass, a minute after the
start, prunes the year's backlog during the run). Compare with a run without it in the same hour.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import email.policy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypedDict
from uuid import NAMESPACE_URL, uuid4, uuid5

import aio_pika
import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.intake_mllp import pct
from services.planning.intake.mllp import FrameDecoder, frame
from shared.auth import mint_token
from shared.contracts import ConsentRequested, DischargeNotified, PatientRef, RecordConsent
from shared.persistence import SQL_STATS_ENV
from tests.support import dbmode
from tests.support.infra import free_port, mail_sink, rabbit_vhost
from tests.support.personnummer import ADULTS
from tests.support.suite import Suite

VC = "SE2321000016-VC001"
SECRET = "benchmark-only-secret-of-at-least-32-bytes"
# the services run as in production: authentication on; the benchmark reads as the owning unit
AUTH = {"Authorization": "Bearer " + mint_token(SECRET, VC, subject="benchmark", ttl=7200)}
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Phase:
    label: str
    accepted_at: dict[str, float] = field(default_factory=dict)  # episode id → when accepted
    started: float = 0.0
    emails_before: int = 0
    #: CPU seconds per process and message counts, at the phase's start and once it is delivered
    usage_before: dict[str, float] = field(default_factory=dict)
    usage_after: dict[str, float] = field(default_factory=dict)
    #: with --sql-stats: each service's statement counts (shared.persistence.count_statements)
    sql_before: dict[str, dict[str, object]] = field(default_factory=dict)
    sql_after: dict[str, dict[str, object]] = field(default_factory=dict)


class Figures(TypedDict):
    """A phase's figures (:func:`wait_delivered`): discharges accepted and delivered, the delivery
    rate, each delivered case's latency and its hops (→case opened, →invitation sent, →delivered)."""

    accepted: int
    delivered: int
    rate: float
    lat: list[float]
    hops: tuple[list[float], list[float], list[float]]


#: messages the benchmark itself moves through the broker: the consent desk's deliveries and
#: publishes, and the discharges it injects over RabbitMQ
OWN = {"consumed": 0, "published": 0}
BROKER: int | None = None
IDLE: dict[str, float] = {}


async def consent_desk(amqp_url: str, stop: asyncio.Event) -> None:
    conn = await aio_pika.connect_robust(amqp_url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        await ch.set_qos(prefetch_count=200)
        q = await ch.declare_queue("bench.consent-desk", durable=True)
        await q.bind("consent.commands", routing_key=ConsentRequested.routing_key)
        out = await ch.get_exchange("consent.commands")

        async def on(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
            req = ConsentRequested.model_validate_json(msg.body)
            cmd = RecordConsent(
                message_id=uuid5(NAMESPACE_URL, f"bench-consent:{req.case_id}"), case_id=req.case_id,
                patient_identifier=req.patient_identifier, decision="granted", recorded_by_hsa_id=VC,
                correlation_id=req.correlation_id,
            )  # fmt: skip
            await out.publish(
                aio_pika.Message(cmd.model_dump_json().encode(), message_id=str(cmd.message_id),
                                 content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=cmd.routing_key,
            )  # fmt: skip
            await msg.ack()
            OWN["consumed"] += 1
            OWN["published"] += 1

        tag = await q.consume(on)
        await stop.wait()
        await q.cancel(tag)


def discharge(episode: str, i: int) -> DischargeNotified:
    return DischargeNotified(
        episode_id=episode, hospital_hsa_id="SE2321000016-SJH01",
        patient=PatientRef(identifier=ADULTS[i % len(ADULTS)], kommun_code="0180", primary_care_unit_hsa_id=VC),
        ready_for_discharge_at=datetime.now(UTC), needs_kommun_support=True, needs_region_support=True,
        correlation_id=episode,
    )  # fmt: skip


async def offer_json(amqp_url: str, phase: Phase, n: int, rate: float | None) -> None:
    """Publish n discharges at ``rate`` per second (None: as fast as confirms come back)."""
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        ex = await ch.get_exchange("hospital.events")
        phase.started = time.time()
        sem = asyncio.Semaphore(200)

        async def one(i: int) -> None:
            ev = discharge(f"{phase.label}-{i:05d}", i)
            async with sem:
                await ex.publish(
                    aio_pika.Message(ev.model_dump_json().encode(), message_id=str(ev.message_id),
                                     content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=ev.routing_key, mandatory=True,
                )  # fmt: skip
            phase.accepted_at[ev.episode_id] = time.time()
            OWN["published"] += 1

        tasks = []
        for i in range(n):
            if rate:
                delay = phase.started + i / rate - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)


def a16(i: int, visit: str) -> bytes:
    pnr = ADULTS[i % len(ADULTS)]
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
    segs = [
        f"MSH|^~\\&|PAS|SU^1.2.752.129.2.1.4.1^ISO|SIP|KOMMUN|{now}||ADT^A16^ADT_A16|{visit}|P|2.5",
        f"EVN|A16|{now}|||||{now}",
        f"PID|1||{pnr}^^^SKV&1.2.752.129.2.1.3.1&ISO^PN||Andersson^Anna||20000101|F|||"
        "Storgatan 1^^Stockholm^^11122^SWE^H^^0180",
        f"PD1|||Vårdcentralen Södermalm^^^^^^^^^{VC}",
        f"PV1|1|I|||||||||||||||||{visit}",
    ]
    return ("\r".join(segs) + "\r").encode()


async def offer_mllp(port: int, phase: Phase, n: int, connections: int = 4) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    phase.started = time.time()

    async def sender() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        decoder = FrameDecoder()
        while not queue.empty():
            i = queue.get_nowait()
            visit = f"{phase.label}-{i:05d}"
            writer.write(frame(a16(i, visit)))
            await writer.drain()
            acks: list[bytes] = []
            while not acks:
                acks = decoder.feed(await reader.read(65536))
            if b"MSA|AA" in acks[0]:
                phase.accepted_at[visit] = time.time()
        writer.close()

    await asyncio.gather(*(sender() for _ in range(connections)))


def arrivals(mail_dir: Path) -> dict[str, list[float]]:
    """case reference → arrival times of its invitation emails (file mtime at the SMTP sink)."""
    out: dict[str, list[float]] = {}
    for p in mail_dir.glob("*.eml"):
        msg = email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
        ref = str(msg["Subject"]).rsplit(" ", 1)[-1]
        out.setdefault(ref, []).append(p.stat().st_mtime)
    return out


async def wait_delivered(suite: Suite, phase: Phase, timeout: float, per_case: int) -> Figures:
    """Wait until every accepted discharge of the phase has all its invitations; return the figures.

    Only the SMTP sink's directory is watched while waiting (listing every case over HTTP while the
    suite works would load planning and skew the figures); planning is asked once at the end."""
    deadline = time.time() + timeout
    before = phase.emails_before
    expected = before + per_case * len(phase.accepted_at)
    while len(list(suite.smtp.directory.glob("*.eml"))) < expected and time.time() < deadline:
        await asyncio.sleep(0.5)
    phase.usage_after = await usage_snapshot(suite, BROKER)
    phase.sql_after = sql_snapshot()
    async with httpx.AsyncClient(timeout=120) as http:
        cases = [c for c in (await http.get(f"{suite.url('planning')}/cases", params={"all": "true"},
                                            headers=AUTH)).json()
                 if c["episode_id"] in phase.accepted_at]  # fmt: skip
    got = arrivals(suite.smtp.directory)
    done = [c for c in cases if len(got.get(c["reference"], ())) >= len(c["participants"])]
    lat: list[float] = []
    hop_open: list[float] = []
    hop_sent: list[float] = []
    hop_deliver: list[float] = []
    last = phase.started
    for c in done:
        t0 = phase.accepted_at[c["episode_id"]]
        delivered = max(got[c["reference"]])
        last = max(last, delivered)
        lat.append(delivered - t0)
        opened = datetime.fromisoformat(c["opened_at"]).timestamp()
        hop_open.append(opened - t0)
        if c["invited_at"]:
            sent = datetime.fromisoformat(c["invited_at"]).timestamp()
            hop_sent.append(sent - opened)
            hop_deliver.append(delivered - sent)
    return {
        "accepted": len(phase.accepted_at), "delivered": len(done),
        "rate": len(done) / max(last - phase.started, 1e-9), "lat": lat,
        "hops": (hop_open, hop_sent, hop_deliver),
    }  # fmt: skip


async def raw_ceiling(amqp_url: str, n: int, size: int) -> tuple[float, float]:
    """Confirmed persistent publish + consume of n messages: messages/s from first publish to last ack,
    and the broker's CPU seconds per message (publish + confirm + delivery + ack)."""
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        q = await ch.declare_queue("bench.raw", durable=True, arguments={"x-queue-type": "quorum"})
        cch = await conn.channel()
        await cch.set_qos(prefetch_count=32)
        cq = await cch.get_queue("bench.raw")
        got = 0
        done = asyncio.Event()

        async def on(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal got
            await msg.ack()
            got += 1
            if got >= n:
                done.set()

        await cq.consume(on)
        body = b"x" * size
        sem = asyncio.Semaphore(200)
        broker_cpu = cpu_seconds(BROKER) if BROKER else float("nan")
        start = time.perf_counter()

        async def pub() -> None:
            async with sem:
                await ch.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=q.name
                )

        await asyncio.gather(*(pub() for _ in range(n)))
        await asyncio.wait_for(done.wait(), timeout=300)
        elapsed = time.perf_counter() - start
        broker_cpu = (cpu_seconds(BROKER) if BROKER else float("nan")) - broker_cpu
        await q.delete(if_unused=False, if_empty=False)
    return n / elapsed, broker_cpu / n


def start_profile(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes] | None:
    """Sample a service with py-spy (a dev dependency) while it works; None when py-spy is missing."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return None
    return subprocess.Popen(
        [spy, "record", "-p", str(pid), "-d", str(seconds), "-f", "raw", "-o", str(out), "--nonblocking",
         "--gil", "--full-filenames"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def profile_summary(path: Path, top: int = 12) -> list[tuple[float, str]]:
    """Share of CPU samples (holding the GIL) per function, attributed to the innermost frame of this
    project's code (shared/, services/) — so library time counts for the project code that called it."""
    counts: dict[str, int] = {}
    busy = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        busy += int(n)
        own = next((f for f in reversed(frames) if "/shared/" in f or "/services/" in f), None)
        if own is None:
            name = "(library and event loop only)"
        else:
            func, _, where = own.partition(" (")
            parts = where.rstrip(")").rsplit(":", 1)[0].split("/")
            name = f"{func} ({'/'.join(parts[-2:])})"
        counts[name] = counts.get(name, 0) + int(n)
    return [(v / busy, k) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:top]] if busy else []


def proc_usage(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS MB) of a running process."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / CLK_TCK
    hwm = next(
        line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM")
    )
    return cpu, int(hwm.split()[1]) / 1024


def broker_pid() -> int | None:
    """The local RabbitMQ's Erlang VM (beam.smp): its CPU is part of every message's cost."""
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if (d / "comm").read_text().strip().startswith("beam"):
                    return int(d.name)
    return None


def cpu_seconds(pid: int) -> float:
    return proc_usage(pid)[0]


def postgres_cpu(databases: tuple[str, ...] = ()) -> float:
    """CPU seconds so far of the local PostgreSQL: every live ``postgres`` process (the backends
    serving the services' connections among them) plus what the postmaster's ended children used.
    With ``databases``: only the backends serving those databases (their process title names the
    database) — this suite's share of a PostgreSQL that other work uses too."""
    total = 0.0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            if (d / "comm").read_text().strip() != "postgres":
                continue
            if databases:
                title = (d / "cmdline").read_bytes().decode(errors="replace")
                if not any(f" {name} " in title for name in databases):
                    continue
            stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
            fields = stat[11:13] if databases else stat[11:15]  # utime, stime (, cutime, cstime)
            total += sum(int(x) for x in fields) / CLK_TCK
    return total


def suite_databases() -> tuple[str, ...]:
    """The suite's own PostgreSQL databases (tests/support/dbmode made them for this run)."""
    return tuple(dbmode._databases.values())


async def message_counts(suite: Suite) -> dict[str, float]:
    """Deliveries handled and messages published: the services' (their /metrics) and the benchmark's
    own (the consent desk, the injected discharges)."""
    consumed = published = 0.0
    async with httpx.AsyncClient(timeout=30) as http:
        for name in ("planning", "consent", "notify"):
            text = (await http.get(f"{suite.url(name)}/metrics")).text
            for line in text.splitlines():
                if line.startswith("sip_messages_consumed_total{"):
                    consumed += float(line.rsplit(" ", 1)[1])
                elif line.startswith("sip_messages_published_total{"):
                    published += float(line.rsplit(" ", 1)[1])
    return {"consumed": consumed + OWN["consumed"], "published": published + OWN["published"]}


async def usage_snapshot(suite: Suite, broker: int | None) -> dict[str, float]:
    """CPU seconds so far of each service, the SMTP sink, the broker and this load generator, and
    the message counts — a phase's cost is the difference of two snapshots."""
    out = {name: cpu_seconds(p.popen.pid) for name, p in suite.procs.items() if p.popen}
    if suite.smtp.proc.popen is not None:
        out["smtp sink"] = cpu_seconds(suite.smtp.proc.popen.pid)
    if broker is not None:
        out["RabbitMQ"] = cpu_seconds(broker)
    if dbmode.ON_POSTGRES:
        out["PostgreSQL"] = postgres_cpu()
        out["PG suite"] = postgres_cpu(suite_databases())
    t = os.times()
    out["load generator"] = t.user + t.system
    out.update(await message_counts(suite))
    return out


COST_COLUMNS = ("planning", "consent", "notify", "smtp sink", "RabbitMQ", "load generator") + (
    ("PostgreSQL", "PG suite") if dbmode.ON_POSTGRES else ()
)
STORE = "PostgreSQL" if dbmode.ON_POSTGRES else "SQLite"


def cost_report(label: str, phase: Phase, delivered: int) -> None:
    """CPU milliseconds per delivered discharge, per process, and messages per discharge."""
    if not delivered or not phase.usage_after:
        return
    d = {k: (phase.usage_after[k] - phase.usage_before.get(k, 0.0)) / delivered for k in phase.usage_after}
    cols = " ".join(f"{d.get(c, float('nan')) * 1000:9.1f}" for c in COST_COLUMNS)
    total = sum(d.get(c, 0.0) for c in COST_COLUMNS if c != "PG suite") * 1000  # within PostgreSQL
    print(f"{label:>12} {cols} {total:9.1f}   {d['consumed']:6.1f} {d['published']:6.1f}")


def report(label: str, offered: str, fig: Figures) -> None:
    lat = sorted(fig["lat"])
    if not lat:
        print(f"{label:>12} {offered:>9}  nothing delivered")
        return
    o, s, d = (sorted(h) for h in fig["hops"])
    med = lambda v: pct(v, 50) * 1000 if v else float("nan")  # noqa: E731
    print(
        f"{label:>12} {offered:>9} {fig['delivered']:>5}/{fig['accepted']:<5} {fig['rate']:8.1f}/s "
        f"p50 {pct(lat, 50) * 1000:7.0f} p95 {pct(lat, 95) * 1000:7.0f} p99 {pct(lat, 99) * 1000:7.0f} ms  "
        f"hops: →case {med(o):5.0f} →sent {med(s):6.0f} →delivered {med(d):5.0f} ms"
    )


profiles: dict[str, subprocess.Popen[bytes]] = {}
SQL_STATS: Path | None = None
SQL_COUNTS = ("statements", "begin", "commit", "rollback", "checkout", "connect")


def sql_snapshot() -> dict[str, dict[str, object]]:
    """Each service's statement counts so far (summed over its engines), when --sql-stats is on."""
    out: dict[str, dict[str, object]] = {}
    if SQL_STATS is None:
        return out
    time.sleep(0.6)  # the counters are rewritten every 0.5 s
    for f in SQL_STATS.glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(f.read_text())
            service = next((s for s in ("planning", "consent", "notify") if s in f.name), f.stem)
            agg = out.setdefault(service, {k: 0 for k in SQL_COUNTS} | {"by_text": {}})
            for k in SQL_COUNTS:
                agg[k] = int(agg[k]) + int(data.get(k, 0))  # type: ignore[call-overload]
            texts: dict[str, int] = agg["by_text"]  # type: ignore[assignment]
            for text, n in data["by_text"].items():
                texts[text] = texts.get(text, 0) + n
    return out


def sql_report(label: str, phase: Phase, delivered: int, top: int = 0) -> None:
    """Statements (round trips), transactions and pool checkouts per delivered discharge, per service."""
    if not delivered or not phase.sql_after:
        return
    for service, after in sorted(phase.sql_after.items()):
        before = phase.sql_before.get(service, {})
        per = {k: (int(after[k]) - int(before.get(k, 0))) / delivered for k in SQL_COUNTS}  # type: ignore[call-overload]
        print(f"{label:>12} {service:>9} " + " ".join(f"{per[k]:9.1f}" for k in SQL_COUNTS))
        if top:
            b_texts: dict[str, int] = before.get("by_text", {})  # type: ignore[assignment]
            a_texts: dict[str, int] = after["by_text"]  # type: ignore[assignment]
            diff = sorted(((n - b_texts.get(t, 0), t) for t, n in a_texts.items()), reverse=True)
            for n, text in diff[:top]:
                if n > 0:
                    print(f"{'':>22} {n / delivered:6.2f}  {text[:110]}")


Result = tuple[str, str, Figures, Phase]


async def run(args: argparse.Namespace, suite: Suite) -> list[Result]:
    stop = asyncio.Event()
    desk = asyncio.create_task(consent_desk(suite.amqp_url, stop))
    await asyncio.sleep(1.0)
    # what the suite costs doing nothing (pollers, schedulers, the broker's queues), per second
    before = await usage_snapshot(suite, BROKER)
    await asyncio.sleep(5.0)
    after = await usage_snapshot(suite, BROKER)
    IDLE.update({k: (after[k] - before[k]) / 5.0 for k in after})
    results = []
    try:

        async def new_phase(label: str) -> Phase:
            phase = Phase(
                f"{label}-{uuid4().hex[:4]}", emails_before=len(list(suite.smtp.directory.glob("*.eml")))
            )
            phase.usage_before = await usage_snapshot(suite, BROKER)
            phase.sql_before = sql_snapshot()
            return phase

        # JSON discharges name the hospital (in the directory): 3 participants; the MLLP sender's
        # hospital id is an OID not in the directory: 2 participants (kommun and primary care)
        for rate in args.rates:
            phase = await new_phase(f"r{rate:g}")
            await offer_json(suite.amqp_url, phase, args.per_rate, rate)
            results.append(
                (f"{rate:g}/s", f"{rate:g}/s", await wait_delivered(suite, phase, args.timeout, 3), phase)
            )
        if args.saturation:
            phase = await new_phase("sat")
            # where the time goes: sample the services while they work at saturation
            for name in ("planning", "notify", "consent"):
                proc = suite.procs[name].popen
                if proc is not None:
                    spy = start_profile(proc.pid, 20, suite.tmp / f"profile-{name}.txt")
                    if spy is not None:
                        profiles[name] = spy
            await offer_json(suite.amqp_url, phase, args.saturation, None)
            results.append(("saturation", "max", await wait_delivered(suite, phase, args.timeout, 3), phase))
        if args.mllp:
            phase = await new_phase("mllp")
            await offer_mllp(suite.ports["mllp"], phase, args.mllp)
            results.append(("MLLP A16", "max", await wait_delivered(suite, phase, args.timeout, 2), phase))
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await desk
    return results


async def preload_history(data_dir: Path, scale: float, *, prune: bool = True) -> tuple[int, float]:
    """A year of closed history in each service's store (see the module's docstring): (discharges,
    seconds). The stores are made by the services' own migrations, as at start. ``prune``: then one
    retention pass of each service (its own kinds and defaults), as a year of the services' hourly
    passes leaves the store; without it the services' first pass (a minute after start) prunes the
    whole year's backlog during the run (the first start on a store that was never pruned)."""
    from benchmarks import volume

    n = max(8, round(volume.YEAR * scale))
    now = datetime.now(UTC)
    started = time.perf_counter()
    for service in volume.GENERATORS:
        url = (
            dbmode.database_url(data_dir, service)
            if dbmode.ON_POSTGRES
            else f"sqlite+aiosqlite:///{data_dir}/{service}.db"
        )
        store = volume.Store(service, volume.make_app(service, url), url)
        try:
            await store.app.state.runtime.prepare_database()
            await volume.load(store, range(volume.recent_count(n), n), n, now)
            if prune:  # what a year of the services' hourly passes leaves: the catch-up done first
                await store.app.state.pruner.prune_once()
        finally:
            await store.engine.dispose()
    return n - volume.recent_count(n), time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",") if x], default=[10.0, 50.0])
    ap.add_argument("--per-rate", type=int, default=300)
    ap.add_argument("--saturation", type=int, default=1000)
    ap.add_argument("--mllp", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument(
        "--profile-dir",
        type=Path,
        default=None,
        help="keep the raw py-spy profiles (flamegraph-ready, collapsed stacks) here",
    )
    ap.add_argument(
        "--sql-stats",
        action="store_true",
        help="count each service's SQL statements, transactions and pool checkouts per discharge",
    )
    ap.add_argument(
        "--preload",
        type=float,
        default=0.0,
        help="fill each store with a year of closed history first (1.0 = 150,000 discharges a year)",
    )
    ap.add_argument(
        "--unpruned",
        action="store_true",
        help="with --preload: no retention pass before the start (the services' first pass then "
        "prunes the year's backlog during the run)",
    )
    args = ap.parse_args()
    global SQL_STATS
    with rabbit_vhost() as amqp_url, tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        with mail_sink(tmp) as smtp:
            ports = {n: free_port() for n in ("planning", "consent", "notify", "mllp")}
            hot: dict[str, list[tuple[float, str]]] = {}
            suite = Suite(
                amqp_url,
                tmp,
                ports,
                {},
                smtp,
                extra_env={
                    "SIP_LOG_LEVEL": "WARNING",
                    "SIP_JWT_HS256_SECRET": SECRET,
                    "SIP_AUTH_REQUIRED": "true",
                }
                | ({SQL_STATS_ENV: str(tmp / "sql-stats")} if args.sql_stats else {}),
            )
            if args.sql_stats:
                SQL_STATS = tmp / "sql-stats"
            try:
                if args.preload:
                    (tmp / "data").mkdir(parents=True, exist_ok=True)
                    history = asyncio.run(
                        preload_history(tmp / "data", args.preload, prune=not args.unpruned)
                    )
                for name in ("consent", "planning", "notify"):
                    suite.start(name)
                global BROKER
                BROKER = broker_pid()
                results = asyncio.run(run(args, suite))
                usage = {name: proc_usage(p.popen.pid) for name, p in suite.procs.items() if p.popen}
                for name, spy in profiles.items():
                    spy.wait(timeout=60)
                    out = suite.tmp / f"profile-{name}.txt"
                    if out.exists():
                        hot[name] = profile_summary(out)
                        if args.profile_dir is not None:
                            args.profile_dir.mkdir(parents=True, exist_ok=True)
                            shutil.copy(out, args.profile_dir / out.name)
            finally:
                for p in suite.procs.values():
                    p.stop()
                dbmode.drop_databases()
        n_raw = max(args.saturation, 1000)
        ceiling, raw_broker_cpu = asyncio.run(
            raw_ceiling(amqp_url, n_raw, len(discharge("x", 0).model_dump_json()))
        )

    print(f"discharge accepted → every participant's invitation at the SMTP server (3 processes, {STORE})")
    if args.preload:
        print(f"each store preloaded with a year's closed history: {history[0]:,} discharges "
              f"(benchmarks.volume at scale {args.preload:g}), in {history[1]:.0f} s, "
              + ("never pruned" if args.unpruned else "then one retention pass"))  # fmt: skip
    else:
        print("empty stores")
    print(f"{'phase':>12} {'offered':>9} {'done':>11} {'sustained':>10}  latency                         "
          "where the time goes (medians)")  # fmt: skip
    for label, offered, fig, _ in results:
        report(label, offered, fig)
    print("CPU milliseconds per delivered discharge, by process; messages per discharge through the broker")
    print(f"{'phase':>12} " + " ".join(f"{c[:9]:>9}" for c in COST_COLUMNS) + f" {'total':>9}   "
          f"{'deliv.':>6} {'publ.':>6}")  # fmt: skip
    for label, _, fig, phase in results:
        cost_report(label, phase, int(fig["delivered"]))
    if any(phase.sql_after for *_, phase in results):
        print(
            "SQL per delivered discharge, by service (round trips: statements; transactions; pool checkouts)"
        )
        print(f"{'phase':>12} {'service':>9} " + " ".join(f"{c:>9}" for c in SQL_COUNTS))
        for label, _, fig, phase in results:
            sql_report(label, phase, int(fig["delivered"]), top=12 if label == "saturation" else 0)
    best = max((fig["rate"] for _, _, fig, _ in results), default=0.0)
    print(f"raw aio-pika confirmed publish + consume, {n_raw} messages: {ceiling:8.1f} messages/s, "
          f"broker CPU {raw_broker_cpu * 1e6:.0f} µs per message")  # fmt: skip
    print(f"suite end to end / raw ceiling: {best / ceiling:.3f}   (best sustained {best:.1f} discharges/s "
          f"against {ceiling:.0f} raw messages/s)")  # fmt: skip
    sat = next((r for r in results if r[0] == "saturation"), None)
    if sat is not None and sat[2]["delivered"] and sat[3].usage_after:
        _, _, fig, phase = sat
        n = int(fig["delivered"])
        per = {k: (phase.usage_after[k] - phase.usage_before.get(k, 0.0)) / n for k in phase.usage_after}
        cores = os.cpu_count() or 1
        broker_ms = per.get("RabbitMQ", float("nan")) * 1000
        print(f"at saturation each discharge moved {per['published']:.1f} publishes + {per['consumed']:.1f} "
              f"deliveries through the broker; in raw messages (one = a publish and its delivery) the raw "
              f"ceiling is {ceiling / max(per['consumed'], 1e-9):.0f} discharges/s, and the suite moved "
              f"{fig['rate'] * per['consumed'] / ceiling:.3f} of the raw message rate")  # fmt: skip
        raw_ms = raw_broker_cpu * per["consumed"] * 1000
        print(f"the broker's own CPU: {broker_ms:.1f} ms per discharge in the suite at saturation, "
              f"{raw_ms:.1f} ms at the raw test's cost per message; with the services costing nothing, "
              f"RabbitMQ alone would cap these {cores} cores at {cores * 1000 / broker_ms:.0f} "
              f"({cores * 1000 / raw_ms:.0f}) discharges/s")  # fmt: skip
    if IDLE:
        print("idle (nothing offered), CPU milliseconds per second: "
              + ", ".join(f"{k} {v * 1000:.0f}" for k, v in IDLE.items() if k in COST_COLUMNS))  # fmt: skip
    print("per service: CPU seconds, peak RSS")
    for name, (cpu, rss) in usage.items():
        print(f"  {name:>9} {cpu:8.1f} s {rss:8.1f} MB")
    for name, rows in hot.items():
        print(f"profile at saturation, {name} (share of CPU samples, by the innermost project function):")
        for share, where in rows:
            print(f"  {share * 100:5.1f}%  {where}")


if __name__ == "__main__":
    main()
