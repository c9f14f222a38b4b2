"""Benchmark: the reads people use, on an empty store and on a store holding a year of a large region.

    .venv/bin/python -m benchmarks.volume [--db sqlite|postgres|both] [--scale 1.0] [--samples 200]

Each service's store (planning, consent, notify) is created fresh with the services' own migrations
(``prepare_database``, as at start): SQLite files in a temporary directory, or fresh PostgreSQL
databases on 127.0.0.1:5432 (dropped afterwards). A year at ``--scale`` 1.0 is 150,000 discharges:
per discharge a stay, a SIP case, 2 deadlines, 3 plan versions, 10 intake messages (1 in 1,000
dead-lettered), 3 notifications, a consent and a consent request, 33 AuditEvents (≈ 5 M), and inbox
and outbox rows — generated in bulk (COPY on PostgreSQL, executemany in big transactions on SQLite),
never through the broker. People are Skatteverket's test personnummer only (many stays each); the
measured person (191212121212) has 4 stays, all in the working set below, so their reads return the
same rows in both states.

"Empty" is the live working set alone: the last 14 days of discharges (the open cases, the pending
deadlines, the recent messages). "One year" adds the other 351 days of closed history. Each read is
the code the API runs (the repository and query functions, on a connection of the service's engine),
sampled ``--samples`` times in each state (PostgreSQL analysed after each load, as autovacuum does;
SQLite not, as the services never run ANALYZE there): p50/p99 ms and the ratio one-year/empty, flagged when the
p99 ratio is over 1.25 (issue 21's goal).

Then storage per discharge per service (SQLite: page_count × page_size, the database with its WAL; PostgreSQL:
pg_database_size), one retention pass of each service (shared/retention.py, the service's own kinds,
batch sizing and pauses) with the clock a year later, the rows pruned per kind and the storage per
discharge after the prune (SQLite: pages in use; PostgreSQL: after VACUUM FULL of the benchmark's
database).

The live path during that prune: a hospital's message through planning's intake (parse, store with its
ACK and outgoing event, commit: what the MLLP ACK waits for), a case by id and a consent decision, in
turn every 10 ms — p50/p99 ms during the prune beside the same probes on the same year-old store just
before it. The three stores live in this one process, while in a deployment each service is a process
of its own with its own pruner; so the services' passes run one after another, and each probe counts
during its own service's pass (the intake and the case during planning's, the consent decision during
consent's), in the same process and on the same event loop as that pruner, as in a service. (Run at
once in one process, the three pruners held each other's loop: a notify batch delayed planning's ACK,
which no deployment does.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid5

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("SIP_AUTH_REQUIRED", "false")  # the reads are called in-process, no HTTP

import sqlalchemy as sa

from benchmarks.intake_mllp import a03
from services.consent.adapters.store import SqlConsentRepository
from services.consent.app import create_app as consent_app
from services.consent.settings import ConsentSettings
from services.notify.app import create_app as notify_app
from services.notify.settings import NotifySettings
from services.planning.adapters import deadline_store
from services.planning.adapters.store import SqlCaseRepository, related_to
from services.planning.app import create_app as planning_app
from services.planning.intake.store import intake_tables
from services.planning.messages import search_query
from services.planning.settings import PlanningSettings
from shared.retention import Pruner
from tests.support.infra import pg_database
from tests.support.personnummer import ADULTS

REPO = Path(__file__).resolve().parents[1]
DIRECTORY = str(REPO / "config/directory.yaml")
YEAR = 150_000  # discharges a year in a large region at --scale 1.0
RECENT_DAYS = 14  # the live working set ("empty" store)
PERSON = "191212121212"  # the measured person
PEOPLE = [p for p in ADULTS if p != PERSON]
HOSPITALS = [f"SE2321000016-H{h:03d}" for h in range(20)]
ORGS = [f"SE2321000016-K{o:03d}" for o in range(50)]
GOAL = 1.25
NS = UUID("6f1c2b9e-5d07-4c1e-9a51-0b3f0c2d7e11")
RAW = ("MSH|^~\\&|PAS|{h}|SIP|REGION|20260101120000||ADT^A03|{c}|P|2.5\rEVN|A03|20260101120000\r"
       "PID|||{p}^^^SE^PN||Testperson^Test||19121212|U\rPV1||I|AVD1^^^{h}||||||||||||||||{e}\r" + "Z" * 600)  # fmt: skip
RESOURCE = '{"resourceType":"CarePlan","status":"active","intent":"plan","note":"' + "x" * 2500 + '"}'
BODY = "Kallelse till SIP-möte. " + "Text " * 120


def case_id(i: int) -> str:
    return str(uuid5(NS, f"case{i}"))


@dataclass
class Store:
    service: str
    app: Any
    url: str
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def engine(self) -> Any:
        return self.app.state.runtime.engine

    def table(self, name: str) -> sa.Table:
        return self.app.state.runtime.metadata.tables[name]


# ---- the data ---------------------------------------------------------------------------------------
def recent_count(n: int) -> int:
    """How many of a year's ``n`` discharges fall in the last :data:`RECENT_DAYS` (the working set)."""
    return max(1, round(n * RECENT_DAYS / 365))


def person(i: int, n: int) -> str:
    """The measured person has 4 stays, all in the working set: the reads of the person answer the same
    in both states, so what differs is only the year of other people's history around them."""
    recent = recent_count(n)
    return PERSON if i < recent and i % max(1, recent // 4) == 0 else PEOPLE[i % len(PEOPLE)]


def planning_rows(i: int, n: int, now: datetime) -> Iterator[tuple[str, dict[str, Any]]]:
    """Discharge ``i`` of ``n`` (0 = the newest): its stay, case, deadlines, plan versions, messages."""
    at = now - timedelta(days=365 * i / n)
    recent = at > now - timedelta(days=RECENT_DAYS)
    open_ = recent and i % 3 != 0
    h, org, pnr, cid = HOSPITALS[i % 20], ORGS[i % 50], person(i, n), case_id(i)
    yield "hospital_stays", dict(
        hospital_id=h, stay_id=f"E{i}", patient_system="1.2.752.129.2.1.3.1", patient_value=pnr,
        patient_kind="personnummer", kommun_code="0180", admitted_at=at - timedelta(days=6), discharged_at=at,
        on_leave=False, applied="{}", cancelled="{}", case_id=cid, updated_at=at,
    )  # fmt: skip
    yield "sip_cases", dict(
        id=cid, reference=f"SIP-{i}", hospital_hsa_id=h, episode_id=f"E{i}", patient_identifier=pnr,
        is_child=False, kommun_code="0180", owner_hsa_id=org,
        participants=f'[{{"hsa_id": "{ORGS[(i + 1) % 50]}", "name": "Enhet", "kind": "kommun_social_services"}}]',
        state="preparing" if open_ else "closed", opened_at=at, invitation_due_at=at + timedelta(days=3),
        origin="discharge", details="{}", updated_at=at,
    )  # fmt: skip
    for k, kind in enumerate(("invitation", "meeting")):
        yield "case_deadlines", dict(
            case_id=cid, case_reference=f"SIP-{i}", kind=kind, cycle=1, status="pending" if open_ else "met",
            started_at=at, due_at=at + timedelta(days=3 + 4 * k), owner_hsa_id=org,
            met_at=None if open_ else at + timedelta(days=2 + k), updated_at=at,
        )  # fmt: skip
    for v in range(1, 4):
        yield "care_plan_versions", dict(
            case_id=cid, version=v, resource=RESOURCE, snapshot="{}", recorded_at=at + timedelta(hours=v),
            activity="CREATE" if v == 1 else "UPDATE",
        )  # fmt: skip
    for m in range(10):
        control = f"C{i}-{m}"
        yield "intake_messages", dict(
            source="hl7v2", sender=f"PAS|{h}", control_id=control, message_type="ADT^A03",
            received_at=at - timedelta(hours=m), content_sha256=f"{i:032x}{m:032x}",
            raw=RAW.format(h=h, c=control, p=pnr, e=i).encode(), outcome="AA",
            response_body=f"MSH|^~\\&|SIP|REGION|PAS|{h}|||ACK|{control}|P|2.5\rMSA|AA|{control}".encode(),
            events="[]", hospital_id=h, stay_id=f"E{i}",
            status="dead-lettered" if (i * 10 + m) % 1000 == 7 else "effected", correlation_id=f"{i:x}-{m}",
            patient_identifier=pnr, effect="{}",
        )  # fmt: skip
    for m in range(3):
        yield "inbox", dict(consumer=f"planning.q{m}", message_id=f"p{i}-{m}", processed_at=at)
    for m in range(5):
        yield "outbox", dict(
            message_id=f"po{i}-{m}", exchange="sip.events", routing_key="case.changed", body="{}" + " " * 400,
            created_at=at, published_at=at, attempts=0,
        )  # fmt: skip


def consent_rows(i: int, n: int, now: datetime) -> Iterator[tuple[str, dict[str, Any]]]:
    at = now - timedelta(days=365 * i / n)
    pnr, cid, org = person(i, n), case_id(i), ORGS[i % 50]
    consent = str(uuid5(NS, f"consent{i}"))
    yield "consents", dict(
        id=consent, patient_identifier=pnr, case_id=cid, decision="granted", purposes='["sip"]',
        recipients=f'["{ORGS[(i + 1) % 50]}"]', given_by="patient", method="verbal", recorded_by_hsa_id=org,
        recorded_at=at, status="active",
    )  # fmt: skip
    yield "consent_requests", dict(
        case_id=cid, patient_identifier=pnr, is_child=False, purposes='["sip"]', proposed_recipients="[]",
        requested_at=at, status="answered", requested_by_hsa_id=org,
    )  # fmt: skip
    for a in range(33):
        yield "audit_events", dict(
            id=str(uuid5(NS, f"audit{i}-{a}")), recorded_at=at + timedelta(minutes=a), patient_identifier=pnr,
            action="read", outcome="permit", reason="consent", basis="consent", recipient_hsa_id=ORGS[(i + a) % 50],
            case_id=cid, consent_id=consent, channel="http",
        )  # fmt: skip
    for m in range(2):
        yield "inbox", dict(consumer=f"consent.q{m}", message_id=f"c{i}-{m}", processed_at=at)
        yield "outbox", dict(
            message_id=f"co{i}-{m}", exchange="sip.events", routing_key="consent.changed", body="{}" + " " * 300,
            created_at=at, published_at=at, attempts=0,
        )  # fmt: skip


def notify_rows(i: int, n: int, now: datetime) -> Iterator[tuple[str, dict[str, Any]]]:
    at = now - timedelta(days=365 * i / n)
    for m in range(3):
        yield "notifications", dict(
            id=str(uuid5(NS, f"n{i}-{m}")), cause_message_id=f"cause{i}-{m}", case_id=case_id(i),
            case_reference=f"SIP-{i}", recipient_hsa_id=ORGS[(i + m) % 50], channel="email",
            address="enhet@example.org", language="sv", subject="SIP", body=BODY, status="sent", attempts=1,
            next_attempt_at=at, created_at=at, updated_at=at, sent_at=at,
        )  # fmt: skip
    for m in range(3):
        yield "inbox", dict(consumer=f"notify.q{m}", message_id=f"n{i}-{m}", processed_at=at)
        yield "outbox", dict(
            message_id=f"no{i}-{m}", exchange="sip.events", routing_key="notification.sent", body="{}" + " " * 200,
            created_at=at, published_at=at, attempts=0,
        )  # fmt: skip


GENERATORS = {"planning": planning_rows, "consent": consent_rows, "notify": notify_rows}


async def load(store: Store, indexes: range, n: int, now: datetime, chunk: int = 20_000) -> None:
    """Discharges ``indexes`` of ``n`` into ``store``, in bulk (COPY / executemany), by table."""
    gen = GENERATORS[store.service]
    buffers: dict[str, list[dict[str, Any]]] = {}
    pg = store.engine.dialect.name == "postgresql"

    async def flush(conn: Any, name: str) -> None:
        rows = buffers.pop(name, [])
        if not rows:
            return
        store.rows[name] = store.rows.get(name, 0) + len(rows)
        if pg:
            columns = list(rows[0])
            raw = (await conn.get_raw_connection()).driver_connection
            await raw.copy_records_to_table(name, records=[tuple(r[c] for c in columns) for r in rows],
                                            columns=columns)  # fmt: skip
        else:
            await conn.execute(store.table(name).insert(), rows)

    async with store.engine.begin() as conn:
        for i in indexes:
            for name, row in gen(i, n, now):
                buffer = buffers.setdefault(name, [])
                buffer.append(row)
                if len(buffer) >= chunk:
                    await flush(conn, name)
        for name in list(buffers):
            await flush(conn, name)
    if pg:  # as autovacuum's analyse does in production; the services never ANALYZE a SQLite file
        async with store.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("ANALYZE")


# ---- the reads ----------------------------------------------------------------------------------------
Read = Callable[[Any], Awaitable[Any]]


def reads(planning: Store, consent: Store) -> dict[str, tuple[Store, Read]]:
    org = ORGS[0]  # the owner of the measured person's newest case (discharge 0)
    case = UUID(case_id(0))
    t = intake_tables(planning.app.state.runtime.metadata)

    async def overview(c: Any) -> Any:  # what /overview runs for a coordinator of an organisation
        related = related_to(hsa_id=org)
        mine = {x.id for x in await SqlCaseRepository(c).open_cases(where=related)}
        return await deadline_store.next_deadlines(c, where=related, keep=mine)

    async def get_case(c: Any) -> Any:
        found = await SqlCaseRepository(c).get_case(case)
        assert found is not None
        return found

    async def care_plans(c: Any) -> Any:
        found = await SqlCaseRepository(c).find_cases(
            patient=PERSON, limit=None, where=related_to(hsa_id=org), with_plan=True
        )
        assert found
        return found

    async def audit(c: Any) -> Any:
        return await SqlConsentRepository(c).audit_for_patient(PERSON, limit=100)

    async def decision(c: Any) -> Any:
        return await SqlConsentRepository(c).for_patient(PERSON)

    async def stays(c: Any) -> Any:
        return await SqlCaseRepository(c).list_stays(200)

    async def dead_letters(c: Any) -> Any:
        return (await c.execute(search_query(t, status="dead-lettered"))).all()

    return {
        "overview of an organisation": (planning, overview),
        "a case by id": (planning, get_case),
        "CarePlan search by patient": (planning, care_plans),
        "a person's audit": (consent, audit),
        "consent decision": (consent, decision),
        "stays listing": (planning, stays),
        "dead-letter listing": (planning, dead_letters),
    }


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def sample(store: Store, read: Read, samples: int) -> tuple[float, float]:
    for _ in range(5):  # warm-up
        async with store.engine.connect() as conn:
            await read(conn)
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        async with store.engine.connect() as conn:
            await read(conn)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), pct(times, 0.99)


# ---- storage and the prune ------------------------------------------------------------------------------
async def storage(store: Store, *, live: bool = False) -> int:
    """Bytes of the store; ``live``: pages in use (SQLite) / after VACUUM FULL (PostgreSQL)."""
    async with store.engine.connect() as conn:
        if store.engine.dialect.name == "postgresql":
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            if live:
                await conn.exec_driver_sql("VACUUM FULL")
            return int(await conn.scalar(sa.text("SELECT pg_database_size(current_database())")) or 0)
        size = int(await conn.scalar(sa.text("PRAGMA page_size")) or 0)
        pages = int(await conn.scalar(sa.text("PRAGMA page_count")) or 0)
        free = int(await conn.scalar(sa.text("PRAGMA freelist_count")) or 0) if live else 0
        return size * (pages - free)


async def prune(store: Store, now: datetime) -> dict[str, int]:
    """One retention pass with the clock a year later, in the service's own batches and pauses."""
    kinds = store.app.state.pruner.kinds
    later = now + timedelta(days=365)
    settings = store.app.state.runtime.settings
    pruner = Pruner(
        store.service, store.engine, kinds, batch=settings.retention_batch,
        pause=settings.retention_pause_seconds, now=lambda: later,
    )  # fmt: skip
    return await pruner.prune_once()


PROBES = ("intake message to ACK", "a case by id", "consent decision")
#: the service each probe's read is served by (its pass is the one it counts during)
PROBE_SERVICE = {PROBES[0]: "planning", PROBES[1]: "planning", PROBES[2]: "consent"}


async def probe(
    planning: Store, consent: Store, stop: asyncio.Event, rounds: int, first: int
) -> dict[str, list[float]]:
    """The live path in turn, every 10 ms, for ``rounds`` rounds or (``rounds`` 0) until ``stop``
    (at least one round)."""
    intake = planning.app.state.intake
    case = UUID(case_id(0))
    got: dict[str, list[float]] = {name: [] for name in PROBES}
    i = first
    while True:  # at least one round, also when the prune is over at once
        t0 = time.perf_counter()
        ack = await intake.handle_hl7(a03(i))
        got[PROBES[0]].append((time.perf_counter() - t0) * 1000)
        assert b"MSA|AA" in ack, ack[:200]
        t0 = time.perf_counter()
        async with planning.engine.connect() as conn:
            assert await SqlCaseRepository(conn).get_case(case) is not None
        got[PROBES[1]].append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        async with consent.engine.connect() as conn:
            await SqlConsentRepository(conn).for_patient(PERSON)
        got[PROBES[2]].append((time.perf_counter() - t0) * 1000)
        i += 1
        if (rounds and i - first >= rounds) or (not rounds and stop.is_set()):
            return got
        await asyncio.sleep(0.01)


async def prune_with_probes(
    stores: dict[str, Store], now: datetime, rounds: int
) -> tuple[dict[str, dict[str, int]], dict[str, tuple[float, float, float, float]], float]:
    """The probes alone (``rounds``), then each service's prune in turn with the probes beside it,
    each probe counted during its own service's pass: rows pruned per service, (p50, p99 before; p50,
    p99 during) per probe, the three passes' seconds."""
    planning, consent = stores["planning"], stores["consent"]
    before = await probe(planning, consent, asyncio.Event(), rounds, first=1_000_000)
    during: dict[str, list[float]] = {name: [] for name in PROBES}
    pruned: list[dict[str, int]] = []
    t0 = time.perf_counter()
    for n, (service, store) in enumerate(stores.items()):
        stop = asyncio.Event()
        probes = asyncio.create_task(probe(planning, consent, stop, 0, first=2_000_000 + n * 1_000_000))
        pruned.append(await prune(store, now))
        stop.set()
        got = await probes
        for name in PROBES:
            if PROBE_SERVICE[name] == service:
                during[name].extend(got[name])
    seconds = time.perf_counter() - t0
    figures = {
        name: (statistics.median(before[name]), pct(before[name], 0.99),
               statistics.median(during[name]) if during[name] else float("nan"),
               pct(during[name], 0.99) if during[name] else float("nan"))
        for name in PROBES
    }  # fmt: skip
    return dict(zip(stores, pruned, strict=True)), figures, seconds


# ---- one database ------------------------------------------------------------------------------------------
@dataclass
class Result:
    db: str
    discharges: int
    reads: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    before: dict[str, float] = field(default_factory=dict)  # bytes per discharge
    after: dict[str, float] = field(default_factory=dict)
    pruned: dict[str, dict[str, int]] = field(default_factory=dict)
    rows: dict[str, dict[str, int]] = field(default_factory=dict)
    load_seconds: float = 0.0
    prune_seconds: float = 0.0
    live: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    live_rounds: int = 0


def make_app(service: str, url: str) -> Any:
    if service == "planning":
        return planning_app(PlanningSettings(database_url=url, directory_path=DIRECTORY, mllp_enabled=False))
    if service == "consent":
        return consent_app(ConsentSettings(database_url=url, directory_path=DIRECTORY))
    return notify_app(NotifySettings(database_url=url, directory_path=DIRECTORY))


async def run_db(db: str, urls: dict[str, str], scale: float, samples: int) -> Result:
    n = max(8, round(YEAR * scale))
    now = datetime.now(UTC)
    recent = recent_count(n)
    result = Result(db, n)
    stores = {s: Store(s, make_app(s, urls[s]), urls[s]) for s in GENERATORS}
    try:
        for store in stores.values():
            await store.app.state.runtime.prepare_database()
            await load(store, range(0, recent), n, now)
        the_reads = reads(stores["planning"], stores["consent"])
        empty = {name: await sample(s, r, samples) for name, (s, r) in the_reads.items()}
        t0 = time.perf_counter()
        for store in stores.values():
            await load(store, range(recent, n), n, now)
        result.load_seconds = time.perf_counter() - t0
        for name, (s, r) in the_reads.items():
            p50, p99 = await sample(s, r, samples)
            result.reads[name] = (empty[name][0], empty[name][1], p50, p99)
        for name, store in stores.items():
            result.rows[name] = dict(store.rows)
            result.before[name] = await storage(store) / n
        result.pruned, result.live, result.prune_seconds = await prune_with_probes(stores, now, samples)
        result.live_rounds = samples
        for name, store in stores.items():
            result.after[name] = await storage(store, live=True) / n
    finally:
        for store in stores.values():
            await store.engine.dispose()
    return result


def run(db: str, scale: float, samples: int) -> Result:
    with ExitStack() as stack:
        if db == "postgres":
            urls = {s: stack.enter_context(pg_database()) for s in GENERATORS}
        else:
            d = stack.enter_context(tempfile.TemporaryDirectory(prefix="sip-volume-"))
            urls = {s: f"sqlite+aiosqlite:///{d}/{s}.db" for s in GENERATORS}
        return asyncio.run(run_db(db, urls, scale, samples))


def report(r: Result) -> str:
    lines = [
        f"== {r.db}: {r.discharges:,} discharges (one year), loaded in {r.load_seconds:.0f} s; "
        f"empty = the last {RECENT_DAYS} days only",
        f"{'read (ms)':<30} {'empty p50':>9} {'p99':>7} {'1-year p50':>10} {'p99':>7} {'p50 ratio':>9} "
        f"{'p99 ratio':>9}",
    ]
    for name, (e50, e99, y50, y99) in r.reads.items():
        ratio = y99 / e99 if e99 else float("inf")
        flag = f"  > {GOAL}x" if ratio > GOAL else ""
        lines.append(
            f"{name:<30} {e50:9.2f} {e99:7.2f} {y50:10.2f} {y99:7.2f} {y50 / e50:9.2f} {ratio:9.2f}{flag}"
        )
    lines.append(f"{'storage per discharge':<30} {'before prune':>13} {'after prune':>12}   rows pruned")
    for s in r.before:
        pruned = ", ".join(f"{k} {v:,}" for k, v in r.pruned[s].items())
        lines.append(f"{s:<30} {r.before[s]:11,.0f} B {r.after[s]:10,.0f} B   {pruned}")
    lines.append(
        f"retention passes (clock one year later, the services' batches and pauses, one service after "
        f"the other): "
        f"{r.prune_seconds:.0f} s"
    )
    lines.append(
        f"{'live path (ms), own pass':<30} {'before p50':>10} {'p99':>7} {'during p50':>10} {'p99':>7} "
        f"{'p99 ratio':>9}"
    )
    for name, (b50, b99, d50, d99) in r.live.items():
        lines.append(
            f"{name:<30} {b50:10.2f} {b99:7.2f} {d50:10.2f} {d99:7.2f} {d99 / b99 if b99 else 0:9.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Result]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 = 150,000 discharges a year")
    ap.add_argument("--samples", type=int, default=200, help="samples per read and state")
    args = ap.parse_args(argv)
    results = []
    for db in ("sqlite", "postgres") if args.db == "both" else (args.db,):
        result = run(db, args.scale, args.samples)
        print(report(result), flush=True)
        results.append(result)
    return results


if __name__ == "__main__":
    main()
