"""The hot queries read through their indexes on PostgreSQL (EXPLAIN): a query that stops using its
index — a filter rewritten, an index dropped, a migration forgotten — fails here before it costs a
region's year of data a full scan.

Each service's database is migrated by the service (Alembic, as in production) and filled in bulk
(``INSERT … SELECT generate_series``: tens of thousands of rows, most of them old or closed, as a
store is after a year), then ``ANALYZE``. Each query is the SQL the code runs: the repository function
itself is called and the statements it sends are captured on the engine, then explained with the
same parameters (``EXPLAIN (FORMAT JSON)``). The plan must reach the expected index (Index Scan,
Index Only Scan or Bitmap Index Scan) and read no big table sequentially; a query whose order an index
gives (a person's audit trail, newest first) must not sort either.

SQLite, the embedded default, has the same indexes (the models'; ``upgrade_schema`` adds them to an
older file): its plan for a person's audit trail is checked too (``EXPLAIN QUERY PLAN``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from services.consent.adapters.store import SqlConsentRepository
from services.consent.app import create_app as consent_app
from services.consent.app import prepare_database as prepare_consent_database
from services.consent.settings import ConsentSettings
from services.notify.adapters.store import SqlNotificationRepository
from services.notify.app import create_app as notify_app
from services.notify.settings import NotifySettings
from services.planning.adapters import deadline_store
from services.planning.adapters.store import SqlCaseRepository, related_to
from services.planning.app import create_app as planning_app
from services.planning.intake.store import intake_tables
from services.planning.messages import search_query
from services.planning.settings import PlanningSettings
from shared.persistence import utcnow
from tests.support.infra import pg_database

REPO = Path(__file__).resolve().parents[3]
DIRECTORY = str(REPO / "config/directory.yaml")
N = 20_000  # rows per big table (audit_events: 5 × N)
INDEX_SCANS = {"Index Scan", "Index Only Scan", "Bitmap Index Scan"}

# ---- the data: a year of a region, in bulk ----------------------------------------------------------
# ids are md5-derived uuids; every 20th case is open, the rest closed; 50 organisations, 20 hospitals
PLANNING_DATA = f"""
INSERT INTO sip_cases (id, reference, hospital_hsa_id, episode_id, patient_identifier, is_child, kommun_code,
    owner_hsa_id, participants, state, opened_at, invitation_due_at, origin, details)
SELECT md5('case' || i)::uuid::text, 'SIP-' || i, 'HOSP' || (i % 20), 'E' || i, lpad((i % 8000)::text, 12, '9'),
    false, '0180', 'ORG' || (i % 50),
    '[{{"hsa_id": "ORG' || ((i + 1) % 50) || '", "name": "Enhet", "kind": "kommun_social_services"}}]',
    CASE WHEN i % 20 = 0 THEN 'preparing' ELSE 'closed' END, now() - (i || ' minutes')::interval,
    now() - (i || ' minutes')::interval + interval '3 days', 'discharge', '{{}}'
FROM generate_series(1, {N}) i;
INSERT INTO care_plan_versions (case_id, version, resource, snapshot, recorded_at, activity)
SELECT md5('case' || i)::uuid::text, 1, '{{}}', '{{}}', now(), 'CREATE' FROM generate_series(1, {N}) i;
INSERT INTO case_deadlines (case_id, case_reference, kind, cycle, status, started_at, due_at, owner_hsa_id,
    met_at, updated_at)
SELECT md5('case' || i)::uuid::text, 'SIP-' || i, k, 1, CASE WHEN i % 20 = 0 THEN 'pending' ELSE 'met' END,
    now() - (i || ' minutes')::interval, now() + (i || ' minutes')::interval, 'ORG' || (i % 50),
    CASE WHEN i % 20 = 0 THEN NULL ELSE now() END, now()
FROM generate_series(1, {N}) i, (VALUES ('invitation'), ('meeting')) AS kinds(k);
INSERT INTO hospital_stays (hospital_id, stay_id, patient_system, patient_value, patient_kind, on_leave, applied,
    cancelled, updated_at)
SELECT 'HOSP' || (i % 20), 'E' || i, 'pnr', lpad((i % 8000)::text, 12, '9'), 'personnummer', false, '{{}}', '{{}}',
    now() - (i || ' minutes')::interval
FROM generate_series(1, {N}) i;
INSERT INTO intake_messages (source, sender, control_id, message_type, received_at, content_sha256, raw, outcome,
    response_body, events, status, correlation_id, patient_identifier, effect)
SELECT 'hl7v2', 'PAS|HOSP' || (i % 20), 'C' || i, 'ADT^A03', now() - (i || ' minutes')::interval, md5(i::text),
    'MSH', 'AA', 'ACK', '[]',
    CASE WHEN i % 50 = 0 THEN 'dead-lettered' WHEN i % 33 = 0 THEN 'refused' ELSE 'effected' END,
    md5('c' || i), lpad((i % 8000)::text, 12, '9'), '{{}}'
FROM generate_series(1, {N}) i;
"""
RUNTIME_DATA = f"""
INSERT INTO inbox (consumer, message_id, processed_at)
SELECT 'q' || (i % 5), md5('m' || i), now() - (i || ' minutes')::interval FROM generate_series(1, {N}) i;
INSERT INTO outbox (message_id, exchange, routing_key, body, created_at, published_at, attempts)
SELECT md5('o' || i), 'x', 'k', '{{}}', now() - (i || ' minutes')::interval,
    now() - (i || ' minutes')::interval, 0
FROM generate_series(1, {N}) i;
"""
CONSENT_DATA = f"""
INSERT INTO consents (id, patient_identifier, case_id, decision, purposes, recipients, given_by, method,
    recorded_by_hsa_id, recorded_at, status)
SELECT md5('consent' || i)::uuid::text, lpad((i % 8000)::text, 12, '9'), md5('case' || i)::uuid::text, 'granted',
    '[]', '[]', 'patient', 'verbal', 'ORG' || (i % 50), now() - (i || ' minutes')::interval, 'active'
FROM generate_series(1, {N}) i;
INSERT INTO consent_requests (case_id, patient_identifier, is_child, purposes, proposed_recipients, requested_at,
    status, requested_by_hsa_id)
SELECT md5('case' || i)::uuid::text, lpad((i % 8000)::text, 12, '9'), false, '[]', '[]',
    now() - (i || ' minutes')::interval, 'answered', 'ORG' || (i % 50)
FROM generate_series(1, {N}) i;
INSERT INTO audit_events (id, recorded_at, patient_identifier, action, outcome, reason, basis, recipient_hsa_id,
    case_id, consent_id, channel)
SELECT md5('audit' || i)::uuid::text, now() - (i || ' minutes')::interval, lpad((i % 8000)::text, 12, '9'),
    'read', 'permit', 'consent', 'consent', 'ORG' || (i % 50), md5('case' || (i % {N}))::uuid::text,
    md5('consent' || (i % {N}))::uuid::text, 'http'
FROM generate_series(1, {5 * N}) i;
"""
NOTIFY_DATA = f"""
INSERT INTO notifications (id, cause_message_id, case_id, case_reference, recipient_hsa_id, channel, address,
    language, subject, body, status, attempts, next_attempt_at, created_at, updated_at, sent_at,
    payload_pruned_at)
SELECT md5('n' || i)::uuid::text, md5('cause' || i), md5('case' || i)::uuid::text, 'SIP-' || i, 'ORG' || (i % 50),
    'email', 'a@example.org', 'sv', 'SIP', 'text', 'sent', 1, now(), now() - (i || ' minutes')::interval,
    now(), now(), CASE WHEN i > {N // 10} THEN now() END
FROM generate_series(1, {N}) i;
"""
PATIENT = "999999000042"  # a generated identifier (not a personnummer) with cases, consents and audit
TRAIL = 5_000  # audit entries of PATIENT: a person with a long trail, sorted in full without its index
TRAIL_DATA = f"""
INSERT INTO audit_events (id, recorded_at, patient_identifier, action, outcome, reason, basis, recipient_hsa_id,
    case_id, consent_id, channel)
SELECT md5('trail' || i)::uuid::text, now() - ((i / 3) || ' minutes')::interval, '{PATIENT}', 'read', 'permit',
    'consent', 'consent', 'ORG' || (i % 50), md5('case' || i)::uuid::text, md5('consent' || i)::uuid::text, 'http'
FROM generate_series(1, {TRAIL}) i;
"""
SORTS = {"Sort", "Incremental Sort"}


# ---- capturing what the code sends, and explaining it ---------------------------------------------------
@contextmanager
def captured(engine: Any) -> Iterator[list[tuple[str, Any]]]:
    sent: list[tuple[str, Any]] = []

    def before(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        sent.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", before)
    try:
        yield sent
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", before)


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from nodes(child)


async def explain(
    engine: Any, run: Callable[[Any], Awaitable[Any]]
) -> list[tuple[str, list[dict[str, Any]]]]:
    """Run ``run(conn)`` (the code's own query), then EXPLAIN every statement it sent."""
    async with engine.connect() as conn:
        with captured(engine) as sent:
            await run(conn)
        plans = []
        for statement, parameters in sent:
            result = await conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters)
            doc = result.scalar_one()
            doc = json.loads(doc) if isinstance(doc, str) else doc
            plans.append((statement, list(nodes(doc[0]["Plan"]))))
        await conn.rollback()
    assert plans, "the code sent no statement"
    return plans


def check(
    plans: list[tuple[str, list[dict[str, Any]]]],
    expected: dict[str, Any],
    big: set[str],
    name: str = "",
    *,
    ordered: bool = False,
) -> None:
    """Every table in ``expected`` is read through that index (or one of those indexes, a tuple)
    somewhere in the plans; no table of ``big`` is read by a sequential scan in any of them;
    ``ordered``: the index gives the order asked for, no plan sorts."""
    used = {n["Index Name"] for _, ns in plans for n in ns if n["Node Type"] in INDEX_SCANS}
    text = "\n\n".join(f"{s}\n{json.dumps(ns, indent=1, default=str)[:3000]}" for s, ns in plans)
    for table, index in expected.items():
        either = {index} if isinstance(index, str) else set(index)
        assert either & used, f"{name}: {table}: {index} not used\n{text}"
    seq = {n.get("Relation Name") for _, ns in plans for n in ns if n["Node Type"] == "Seq Scan"}
    assert not seq & big, f"{name}: sequential scan of {seq & big}\n{text}"
    if ordered:
        sorts = {n["Node Type"] for _, ns in plans for n in ns if n["Node Type"] in SORTS}
        assert not sorts, f"{name}: {', '.join(sorted(sorts))} instead of the index's order\n{text}"


async def _load(app: Any, *sql: str) -> Any:
    rt = app.state.runtime
    await rt.prepare_database()
    async with rt.engine.begin() as conn:
        for block in sql:
            for statement in filter(str.strip, block.split(";")):
                await conn.exec_driver_sql(statement)
    async with rt.engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.exec_driver_sql("ANALYZE")
    return rt


@pytest.fixture
def databases() -> Iterator[dict[str, str]]:
    with pg_database() as planning, pg_database() as consent, pg_database() as notify:
        yield {"planning": planning, "consent": consent, "notify": notify}


@pytest.mark.postgres
async def test_planning_hot_queries_read_through_their_indexes(databases):
    app = planning_app(
        PlanningSettings(database_url=databases["planning"], directory_path=DIRECTORY, mllp_enabled=False)
    )
    rt = await _load(app, PLANNING_DATA, RUNTIME_DATA)
    big = {"sip_cases", "care_plan_versions", "case_deadlines", "hospital_stays", "intake_messages", "inbox",
           "outbox"}  # fmt: skip
    async with rt.engine.connect() as conn:
        case_id = UUID(
            await conn.scalar(sa.text("SELECT id FROM sip_cases WHERE state = 'preparing' LIMIT 1"))
        )
    org = "ORG7"
    t = intake_tables(rt.metadata)
    queries: dict[str, tuple[Callable[[Any], Awaitable[Any]], dict[str, Any]]] = {
        "overview (open cases, their next deadlines)": (
            deadline_store.next_deadlines,
            {"sip_cases": "ix_sip_cases_state", "case_deadlines": "ix_case_deadlines_due"},
        ),
        "case list of an organisation": (
            lambda c: SqlCaseRepository(c).open_cases(where=related_to(hsa_id=org)),
            {"sip_cases": "ix_sip_cases_state"},
        ),
        "a case by id": (lambda c: SqlCaseRepository(c).get_case(case_id), {"sip_cases": "sip_cases_pkey"}),
        "a case's latest CarePlan": (
            lambda c: SqlCaseRepository(c).plan_version(case_id),
            {"care_plan_versions": "care_plan_versions_pkey"},
        ),
        "CarePlan search by patient": (
            lambda c: SqlCaseRepository(c).find_cases(
                patient=PATIENT, limit=None, where=related_to(hsa_id=org), with_plan=True
            ),
            {"sip_cases": "ix_sip_cases_patient_identifier", "care_plan_versions": "care_plan_versions_pkey"},
        ),
        "stays listing": (
            lambda c: SqlCaseRepository(c).list_stays(200),
            {"hospital_stays": "ix_hospital_stays_updated"},
        ),
        "stays listing of a hospital": (
            lambda c: SqlCaseRepository(c).list_stays(200, hospital_id="HOSP3"),
            # the planner may walk the newest stays and filter (a big hospital), or take the hospital's
            {"hospital_stays": ("ix_hospital_stays_hospital_updated", "ix_hospital_stays_updated")},
        ),
        "dead-letter listing": (
            lambda c: c.execute(search_query(t, status="dead-lettered")),
            {"intake_messages": "ix_intake_messages_status"},
        ),
    }
    for name, (run, expected) in queries.items():
        check(await explain(rt.engine, run), expected, big, name)
    await _check_retention(app, {"intake_messages": ("ix_intake_messages_received", "ix_intake_messages_original_received"),
                                 "inbox": "ix_inbox_processed", "outbox": "ix_outbox_pending"}, big)  # fmt: skip
    (kind,) = [k for k in app.state.pruner.kinds if k.name == "intake_messages"]
    for now in (utcnow(), utcnow() + timedelta(days=5000)):  # a pass as it runs, and a catch-up
        stmt = kind.statement("postgresql", kind.cutoff(now, kind.days), app.state.pruner.batch)
        check_lineage(
            await explain(rt.engine, lambda c, s=stmt: c.execute(s)), "retention of intake_messages"
        )
    await rt.engine.dispose()


def check_lineage(plans: list[tuple[str, list[dict[str, Any]]]], name: str = "") -> None:
    """Planning's retention batch reads the replays (the table again, as ``replay``) only through
    ``replay_of`` — each candidate's, or (PostgreSQL's choice when they are few) all the replays once —
    never the completed or the recent messages through the status or received index, nor the table."""
    text = "\n\n".join(f"{s}\n{json.dumps(ns, indent=1, default=str)[:3000]}" for s, ns in plans)
    lineage = [n for _, ns in plans for n in ns if str(n.get("Alias", "")).startswith("replay")]
    assert lineage, f"{name}: no lineage check\n{text}"
    for n in lineage:
        cond = n.get("Index Cond") or n.get("Recheck Cond") or ""
        ok = n["Node Type"] != "Seq Scan" and "replay_of" in cond and "status" not in cond
        assert ok, f"{name}: {n['Node Type']} {cond}\n{text}"


async def _check_retention(app: Any, expected: dict[str, Any], big: set[str]) -> None:
    """Each kind's batch query (as the pruner runs it) reads through its index."""
    rt, pruner = app.state.runtime, app.state.pruner
    now = utcnow() + timedelta(days=5000)  # everything is past its retention: the widest range
    for kind in pruner.kinds:
        stmt = kind.statement("postgresql", kind.cutoff(now, kind.days), pruner.batch)
        plans = await explain(rt.engine, lambda c, s=stmt: c.execute(s))
        check(plans, {kind.name: expected[kind.name]}, big, f"retention of {kind.name}")


@pytest.mark.postgres
async def test_consent_hot_queries_read_through_their_indexes(databases):
    app = consent_app(ConsentSettings(database_url=databases["consent"], directory_path=DIRECTORY))
    rt = await _load(app, CONSENT_DATA, TRAIL_DATA, RUNTIME_DATA)
    big = {"consents", "consent_requests", "audit_events", "inbox", "outbox"}
    async with rt.engine.connect() as conn:
        middle = (await conn.execute(sa.text(
            "SELECT recorded_at, id FROM audit_events WHERE patient_identifier = :p ORDER BY recorded_at DESC,"
            " id DESC OFFSET :n LIMIT 1"), {"p": PATIENT, "n": TRAIL // 2})).one()  # fmt: skip
    trail = {"audit_events": "ix_audit_events_patient_time_id"}
    # the person's trail, newest first: the first rows of the index backwards, never the whole trail sorted
    ordered: dict[str, Callable[[Any], Awaitable[Any]]] = {
        "a person's audit (the person, or the operator)": (
            lambda c: SqlConsentRepository(c).audit_for_patient(PATIENT, limit=100)
        ),
        "a person's audit as an organisation sees it": (
            lambda c: SqlConsentRepository(c).audit_for_patient(PATIENT, limit=100, visible_to="ORG7")
        ),
        "a person's audit, a later page (keyset)": (
            lambda c: SqlConsentRepository(c).audit_for_patient(
                PATIENT, limit=100, after=(middle[0], middle[1])
            )
        ),
    }
    for name, run in ordered.items():
        check(await explain(rt.engine, run), trail, big, name, ordered=True)
    queries: dict[str, tuple[Callable[[Any], Awaitable[Any]], dict[str, Any]]] = {
        "consent decision lookup": (
            lambda c: SqlConsentRepository(c).for_patient(PATIENT),
            {"consents": "ix_consents_patient_identifier"},
        ),
        "the person's consent requests": (
            lambda c: SqlConsentRepository(c).requests_for_patient(PATIENT),
            {"consent_requests": "ix_consent_requests_patient_identifier"},
        ),
    }
    for name, (run, expected) in queries.items():
        check(await explain(rt.engine, run), expected, big, name)
    await _check_retention(
        app, {"audit_events": "ix_audit_events_recorded", "inbox": "ix_inbox_processed", "outbox": "ix_outbox_pending"},
        big,
    )  # fmt: skip
    await rt.engine.dispose()


@pytest.mark.postgres
async def test_notify_hot_queries_read_through_their_indexes(databases):
    app = notify_app(NotifySettings(database_url=databases["notify"], directory_path=DIRECTORY))
    rt = await _load(app, NOTIFY_DATA, RUNTIME_DATA)
    queries: dict[str, tuple[Callable[[Any], Awaitable[Any]], dict[str, Any]]] = {
        "the dispatcher's due notifications": (
            lambda c: SqlNotificationRepository(c).due(utcnow(), 50),
            {"notifications": "ix_notifications_due"},
        ),
        "deliveries listing (operator)": (
            lambda c: SqlNotificationRepository(c).deliveries(limit=100),
            {"notifications": "ix_notifications_created"},
        ),
        "deliveries of a recipient": (
            lambda c: SqlNotificationRepository(c).deliveries(recipient="ORG7", limit=100),
            {"notifications": ("ix_notifications_recipient", "ix_notifications_created")},
        ),
    }
    for name, (run, expected) in queries.items():
        check(await explain(rt.engine, run), expected, {"notifications"}, name)
    await _check_retention(
        app,
        {"notification_payload": "ix_notifications_payload_kept", "inbox": "ix_inbox_processed",
         "outbox": "ix_outbox_pending"},
        {"notifications", "inbox", "outbox"},
    )  # fmt: skip
    await rt.engine.dispose()


def test_the_plan_check_fails_on_a_sequential_scan_a_missing_index_or_a_sort():
    seq = [("q", [{"Node Type": "Limit"}, {"Node Type": "Seq Scan", "Relation Name": "sip_cases"}])]
    with pytest.raises(AssertionError, match="sequential scan"):
        check(seq, {}, {"sip_cases"})
    with pytest.raises(AssertionError, match="not used"):
        check(seq, {"sip_cases": "ix_sip_cases_state"}, set())
    ok = [("q", [{"Node Type": "Bitmap Index Scan", "Index Name": "ix_sip_cases_state"}])]
    check(ok, {"sip_cases": "ix_sip_cases_state"}, {"sip_cases"})
    for sort in SORTS:
        sorted_ = [("q", [{"Node Type": "Limit"}, {"Node Type": sort}, *ok[0][1]])]
        check(sorted_, {"sip_cases": "ix_sip_cases_state"}, {"sip_cases"})  # order not asked for
        with pytest.raises(AssertionError, match="instead of the index's order"):
            check(sorted_, {"sip_cases": "ix_sip_cases_state"}, {"sip_cases"}, ordered=True)


def test_the_lineage_check_fails_on_a_replay_read_other_than_through_replay_of():
    scan = {"Node Type": "Index Scan", "Relation Name": "intake_messages", "Alias": "intake_messages"}
    per_candidate = {
        "Node Type": "Index Scan",
        "Alias": "replay",
        "Index Cond": "(replay_of = intake_messages.id)",
    }
    all_replays = {"Node Type": "Index Scan", "Alias": "replay_1", "Index Cond": "(replay_of IS NOT NULL)"}
    check_lineage([("q", [scan, per_candidate, all_replays])])
    for wrong in (
        {"Node Type": "Seq Scan", "Alias": "replay", "Filter": "(replay_of IS NOT NULL)"},
        {"Node Type": "Index Scan", "Alias": "replay", "Index Cond": "((status)::text = 'effected'::text)"},
        {"Node Type": "Bitmap Heap Scan", "Alias": "replay_1",
         "Recheck Cond": "((received_at >= '2040-01-01') OR ((status)::text = 'accepted'::text))"},
    ):  # fmt: skip
        with pytest.raises(AssertionError):
            check_lineage([("q", [scan, per_candidate, wrong])])
    with pytest.raises(AssertionError, match="no lineage check"):
        check_lineage([("q", [scan])])


async def sqlite_plans(engine: Any, run: Callable[[Any], Awaitable[Any]]) -> list[tuple[str, list[str]]]:
    """Run ``run(conn)``, then ``EXPLAIN QUERY PLAN`` every statement it sent (SQLite)."""
    async with engine.connect() as conn:
        with captured(engine) as sent:
            await run(conn)
        plans = []
        for statement, parameters in sent:
            rows = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
            plans.append((statement, [str(r[-1]) for r in rows]))
        await conn.rollback()
    assert plans, "the code sent no statement"
    return plans


async def test_sqlite_reads_a_persons_audit_through_its_index_without_sorting(tmp_path):
    """On SQLite too a page of a person's trail is the first rows of the index, not the whole trail
    put into a temporary B-tree to be sorted — also in a file made before the index, which
    ``upgrade_schema`` brings up to date."""
    app = consent_app(
        ConsentSettings(database_url=f"sqlite+aiosqlite:///{tmp_path}/consent.db", directory_path=DIRECTORY)
    )
    rt = app.state.runtime
    async with rt.engine.begin() as conn:  # a file from before 0005_audit_trail_order
        await conn.run_sync(rt.metadata.create_all)
        await conn.exec_driver_sql("DROP INDEX ix_audit_events_patient_time_id")
        await conn.exec_driver_sql(
            "CREATE INDEX ix_audit_events_patient_time ON audit_events (patient_identifier, recorded_at)"
        )
    await prepare_consent_database(rt)
    try:
        async with rt.engine.connect() as conn:
            indexes = {r[0] for r in await conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit_events'")}  # fmt: skip
        assert "ix_audit_events_patient_time_id" in indexes and "ix_audit_events_patient_time" not in indexes
        at = utcnow()
        for run in (
            lambda c: SqlConsentRepository(c).audit_for_patient(PATIENT, limit=100),
            lambda c: SqlConsentRepository(c).audit_for_patient(PATIENT, limit=100, after=(at, "m")),
            lambda c: SqlConsentRepository(c).audit_for_patient(PATIENT, limit=100, visible_to="ORG7"),
        ):
            plans = await sqlite_plans(rt.engine, run)
            details = [d for _, ds in plans for d in ds]
            text = "\n".join(details)
            assert any("ix_audit_events_patient_time_id" in d for d in details), text
            # "USE TEMP B-TREE FOR ORDER BY" (or "FOR RIGHT PART OF" / "LAST TERM OF ORDER BY"): a sort
            assert not any("TEMP B-TREE" in d and "ORDER BY" in d for d in details), text
    finally:
        await rt.engine.dispose()


async def test_sqlite_prunes_each_planning_batch_through_an_index_without_sorting(tmp_path):
    """A retention batch of planning on SQLite takes the oldest originals through an index, not every
    original sorted in a temporary B-tree (0.29 s a batch at 284,000 messages, holding the service's
    one connection and its live path: README "Data volume") — also in a file made before the index,
    which planning's ``prepare_database`` brings up to date."""
    app = planning_app(
        PlanningSettings(
            database_url=f"sqlite+aiosqlite:///{tmp_path}/planning.db", directory_path=DIRECTORY,
            mllp_enabled=False,
        )
    )  # fmt: skip
    rt, pruner = app.state.runtime, app.state.pruner
    async with rt.engine.begin() as conn:  # a file from before 0006_retention_walk
        await conn.run_sync(rt.metadata.create_all)
        await conn.exec_driver_sql("DROP INDEX ix_intake_messages_original_received")
    await rt.prepare_database()
    try:
        now = utcnow() + timedelta(days=5000)
        for kind in pruner.kinds:
            stmt = kind.statement("sqlite", kind.cutoff(now, kind.days), pruner.batch)
            plans = await sqlite_plans(rt.engine, lambda c, s=stmt: c.execute(s))
            details = [d for _, ds in plans for d in ds]
            text = f"{kind.name}:\n" + "\n".join(details)
            assert not any("TEMP B-TREE" in d and "ORDER BY" in d for d in details), text
            assert not any(d.startswith("SCAN") and "INDEX" not in d for d in details), text
    finally:
        await rt.engine.dispose()


async def test_sqlite_checks_each_candidates_lineage_through_its_own_replays(tmp_path):
    """A retention batch of planning on SQLite checks the lineage of each candidate through its own
    replays (``replay_of = ?``, an index), not by reading every completed message (the status index)
    or every message younger than the cutoff (the received index) once per batch: on a year-old store
    that was 137 ms a batch (p50; 606 ms at most), whatever the batch's ``LIMIT``."""
    app = planning_app(
        PlanningSettings(
            database_url=f"sqlite+aiosqlite:///{tmp_path}/planning.db", directory_path=DIRECTORY,
            mllp_enabled=False,
        )
    )  # fmt: skip
    rt, pruner = app.state.runtime, app.state.pruner
    await rt.prepare_database()
    try:
        (kind,) = [k for k in pruner.kinds if k.name == "intake_messages"]
        for now in (utcnow(), utcnow() + timedelta(days=5000)):  # a pass as it runs, and a catch-up
            stmt = kind.statement("sqlite", kind.cutoff(now, kind.days), pruner.batch)
            plans = await sqlite_plans(rt.engine, lambda c, s=stmt: c.execute(s))
            details = [d for _, ds in plans for d in ds]
            text = "\n".join(details)
            # the lineage reads the table again as "replay": every such read is by the candidate's id
            lineage = [d for d in details if " replay " in f"{d} "]
            assert lineage, text
            replay_of = ("ix_intake_messages_replay_of", "ix_intake_messages_original_received")
            for d in lineage:
                assert d.startswith("SEARCH replay USING") and "(replay_of=?" in d, text
                assert any(f"INDEX {index} " in d for index in replay_of), text
            # a subquery run once per batch over the whole table is a "LIST SUBQUERY"; per candidate:
            assert not any("LIST SUBQUERY" in d for d in details), text
            assert any(d.startswith("CORRELATED") for d in details), text
    finally:
        await rt.engine.dispose()
