"""SQL storage of consents, their history, consent requests and the audit log (SQLAlchemy Core;
SQLite or PostgreSQL).

A consent row holds the current version; every version (created, withdrawn, cancelled) is also kept
in ``consent_versions`` as a snapshot, so ``_history`` and ``vread`` need no reconstruction. A consent
request keeps the unit that owns its case (``requested_by_hsa_id``) and the proposed participants:
the relations :mod:`services.consent.access` decides on. Every decision (permit and deny), withdrawal,
cancellation and every read or search of a person's data (here, or in planning and notify through
``consent.access-recorded.v1``) is a row in ``audit_events``, indexed by person, time and id — the
order a trail is read in — so "who received or read what about me" is one range scan that stops at
the page's limit, with no sort of the whole trail; an organisation's view of it is filtered in the
query itself, before the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from services.consent.domain import AuditEntry, ConsentRecord, ConsentRequest, GuardianStatement
from shared.persistence import UTCDateTime

metadata = sa.MetaData()

consents = sa.Table(
    "consents",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("patient_identifier", sa.String(12), nullable=False, index=True),
    sa.Column("case_id", sa.String(36), index=True),
    sa.Column("decision", sa.String(16), nullable=False),
    sa.Column("purposes", sa.Text, nullable=False),
    sa.Column("recipients", sa.Text, nullable=False),
    sa.Column("given_by", sa.String(32), nullable=False),
    sa.Column("method", sa.String(16), nullable=False),
    sa.Column("recorded_by_hsa_id", sa.String(64), nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
    sa.Column("valid_until", UTCDateTime),
    sa.Column("status", sa.String(16), nullable=False),
    # added with issue #4 (nullable: rows written before it read as the defaults)
    sa.Column("valid_from", UTCDateTime),
    sa.Column("excluded_organisations", sa.Text),
    sa.Column("excluded_categories", sa.Text),
    sa.Column("custody", sa.String(8)),
    sa.Column("guardians", sa.Text),
    sa.Column("child_view", sa.String(16)),
    sa.Column("status_changed_at", UTCDateTime),
    sa.Column("status_changed_by_hsa_id", sa.String(64)),
    sa.Column("status_reason", sa.String(64)),
    sa.Column("version", sa.Integer),
)

consent_versions = sa.Table(
    "consent_versions",
    metadata,
    sa.Column("consent_id", sa.String(36), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("change", sa.String(16), nullable=False),  # created | withdrawn | cancelled
    sa.Column("changed_at", UTCDateTime, nullable=False),
    sa.Column("snapshot", sa.Text, nullable=False),
)

consent_requests = sa.Table(
    "consent_requests",
    metadata,
    sa.Column("case_id", sa.String(36), primary_key=True),
    sa.Column("patient_identifier", sa.String(12), nullable=False, index=True),
    sa.Column("is_child", sa.Boolean, nullable=False),
    sa.Column("purposes", sa.Text, nullable=False),
    sa.Column("proposed_recipients", sa.Text, nullable=False),
    sa.Column("requested_at", UTCDateTime, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("answered_by", sa.String(36)),
    sa.Column("correlation_id", sa.String(128)),
    # added with "Only those who belong" (nullable: requests kept before it have no known owner)
    sa.Column("requested_by_hsa_id", sa.String(64)),
    # an organisation's view of a person's audit: the cases it owns (migration 0004_hot_query_indexes)
    sa.Index("ix_consent_requests_requested_by", "requested_by_hsa_id"),
)

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
    sa.Column("patient_identifier", sa.String(12), nullable=False),
    # decision | withdrawal | cancellation | read | search
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("outcome", sa.String(8), nullable=False),  # permit | deny | done
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("basis", sa.String(16), nullable=False),
    sa.Column("recipient_hsa_id", sa.String(64)),
    sa.Column("category", sa.String(64)),
    sa.Column("purpose", sa.String(32)),
    sa.Column("consent_id", sa.String(36)),
    sa.Column("case_id", sa.String(36)),
    sa.Column("decision_at", UTCDateTime),
    sa.Column("requested_by", sa.String(128)),
    sa.Column("channel", sa.String(8), nullable=False),  # http | amqp
    sa.Column("correlation_id", sa.String(128)),
    # the service where the audited event happened: None for consent, planning | notify for a read
    # there (consent.access-recorded.v1); added with "Only those who belong"
    sa.Column("source", sa.String(16)),
    # a person's trail in the order it is read, newest first: (recorded_at, id), keyset paging on both
    # (audit_for_patient); replaced (patient_identifier, recorded_at) — migration 0005_audit_trail_order
    sa.Index("ix_audit_events_patient_time_id", "patient_identifier", "recorded_at", "id"),
    # retention deletes the oldest entries, after the audit retention (migration 0003_retention)
    sa.Index("ix_audit_events_recorded", "recorded_at"),
)

_ADDED_COLUMNS: dict[str, tuple[str, ...]] = {
    "consent_requests": ("requested_by_hsa_id",),
    "audit_events": ("source",),
}
_ADDED_CONSENT_COLUMNS = (
    "valid_from",
    "excluded_organisations",
    "excluded_categories",
    "custody",
    "guardians",
    "child_view",
    "status_changed_at",
    "status_changed_by_hsa_id",
    "status_reason",
    "version",
)


def upgrade_schema(sync_conn: sa.Connection) -> None:
    """Add the columns added since a table was created (issue #4 on ``consents``; the case owner on
    ``consent_requests``, the source on ``audit_events``) and the indexes added since — additive but
    for an index a newer one replaces, idempotent (SQLite; PostgreSQL has the Alembic migrations)."""
    inspector = sa.inspect(sync_conn)
    tables = set(inspector.get_table_names())
    for table, names in (("consents", _ADDED_CONSENT_COLUMNS), *_ADDED_COLUMNS.items()):
        if table not in tables:
            continue
        have = {c["name"] for c in inspector.get_columns(table)}
        for name in names:
            if name not in have:
                col = metadata.tables[table].c[name]
                ddl = col.type.compile(dialect=sync_conn.dialect)
                sync_conn.execute(sa.text(f'ALTER TABLE {table} ADD COLUMN "{name}" {ddl}'))
    # the indexes of migrations 0003_retention, 0004_hot_query_indexes and 0005_audit_trail_order
    # (where their columns are); 0005's replaces the person's (patient_identifier, recorded_at)
    inspector = sa.inspect(sync_conn)
    for indexed, name in (
        (audit_events, "ix_audit_events_recorded"),
        (consent_requests, "ix_consent_requests_requested_by"),
        (audit_events, "ix_audit_events_patient_time_id"),
    ):
        if indexed.name in tables:
            index = next(i for i in indexed.indexes if i.name == name)
            if set(index.columns.keys()) <= {c["name"] for c in inspector.get_columns(indexed.name)}:
                index.create(sync_conn, checkfirst=True)
    if audit_events.name in tables:
        sync_conn.execute(sa.text("DROP INDEX IF EXISTS ix_audit_events_patient_time"))


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def record_to_json(r: ConsentRecord) -> dict[str, Any]:
    return {
        "id": str(r.id),
        "patient_identifier": r.patient_identifier,
        "case_id": str(r.case_id) if r.case_id else None,
        "decision": r.decision,
        "purposes": list(r.purposes),
        "recipients": list(r.recipients),
        "given_by": r.given_by,
        "method": r.method,
        "recorded_by_hsa_id": r.recorded_by_hsa_id,
        "recorded_at": r.recorded_at.isoformat(),
        "valid_until": r.valid_until.isoformat() if r.valid_until else None,
        "status": r.status,
        "valid_from": r.valid_from.isoformat() if r.valid_from else None,
        "excluded_organisations": list(r.excluded_organisations),
        "excluded_categories": list(r.excluded_categories),
        "custody": r.custody,
        "guardians": [{"stance": g.stance, "identifier": g.identifier} for g in r.guardians],
        "child_view": r.child_view,
        "status_changed_at": r.status_changed_at.isoformat() if r.status_changed_at else None,
        "status_changed_by_hsa_id": r.status_changed_by_hsa_id,
        "status_reason": r.status_reason,
        "version": r.version,
    }


def record_from_json(d: dict[str, Any]) -> ConsentRecord:
    return ConsentRecord(
        id=UUID(d["id"]),
        patient_identifier=d["patient_identifier"],
        case_id=UUID(d["case_id"]) if d.get("case_id") else None,
        decision=d["decision"],
        purposes=tuple(d["purposes"]),
        recipients=tuple(d["recipients"]),
        given_by=d["given_by"],
        method=d["method"],
        recorded_by_hsa_id=d["recorded_by_hsa_id"],
        recorded_at=datetime.fromisoformat(d["recorded_at"]),
        valid_until=_dt(d.get("valid_until")),
        status=d["status"],
        valid_from=_dt(d.get("valid_from")),
        excluded_organisations=tuple(d.get("excluded_organisations") or ()),
        excluded_categories=tuple(d.get("excluded_categories") or ()),
        custody=d.get("custody"),
        guardians=tuple(GuardianStatement(**g) for g in d.get("guardians") or ()),
        child_view=d.get("child_view"),
        status_changed_at=_dt(d.get("status_changed_at")),
        status_changed_by_hsa_id=d.get("status_changed_by_hsa_id"),
        status_reason=d.get("status_reason"),
        version=int(d.get("version") or 1),
    )


def _json_list(value: str | None) -> tuple[Any, ...]:
    return tuple(json.loads(value)) if value else ()


def _record(row: Any) -> ConsentRecord:
    return ConsentRecord(
        id=UUID(row.id),
        patient_identifier=row.patient_identifier,
        case_id=UUID(row.case_id) if row.case_id else None,
        decision=row.decision,
        purposes=tuple(json.loads(row.purposes)),
        recipients=tuple(json.loads(row.recipients)),
        given_by=row.given_by,
        method=row.method,
        recorded_by_hsa_id=row.recorded_by_hsa_id,
        recorded_at=row.recorded_at,
        valid_until=row.valid_until,
        status=row.status,
        valid_from=row.valid_from,
        excluded_organisations=_json_list(row.excluded_organisations),
        excluded_categories=_json_list(row.excluded_categories),
        custody=row.custody,
        guardians=tuple(GuardianStatement(**g) for g in _json_list(row.guardians)),
        child_view=row.child_view,
        status_changed_at=row.status_changed_at,
        status_changed_by_hsa_id=row.status_changed_by_hsa_id,
        status_reason=row.status_reason,
        version=row.version or 1,
    )


def _request(row: Any) -> ConsentRequest:
    return ConsentRequest(
        case_id=UUID(row.case_id),
        patient_identifier=row.patient_identifier,
        is_child=row.is_child,
        purposes=tuple(json.loads(row.purposes)),
        proposed_recipients=tuple(json.loads(row.proposed_recipients)),
        requested_at=row.requested_at,
        status=row.status,
        answered_by=UUID(row.answered_by) if row.answered_by else None,
        correlation_id=row.correlation_id,
        requested_by_hsa_id=row.requested_by_hsa_id,
    )


def _columns(record: ConsentRecord) -> dict[str, Any]:
    return {
        "patient_identifier": record.patient_identifier,
        "case_id": str(record.case_id) if record.case_id else None,
        "decision": record.decision,
        "purposes": json.dumps(list(record.purposes)),
        "recipients": json.dumps(list(record.recipients)),
        "given_by": record.given_by,
        "method": record.method,
        "recorded_by_hsa_id": record.recorded_by_hsa_id,
        "recorded_at": record.recorded_at,
        "valid_until": record.valid_until,
        "status": record.status,
        "valid_from": record.valid_from,
        "excluded_organisations": json.dumps(list(record.excluded_organisations)),
        "excluded_categories": json.dumps(list(record.excluded_categories)),
        "custody": record.custody,
        "guardians": json.dumps([{"stance": g.stance, "identifier": g.identifier} for g in record.guardians]),
        "child_view": record.child_view,
        "status_changed_at": record.status_changed_at,
        "status_changed_by_hsa_id": record.status_changed_by_hsa_id,
        "status_reason": record.status_reason,
        "version": record.version,
    }


def _audit(row: Any) -> AuditEntry:
    return AuditEntry(
        id=UUID(row.id),
        recorded_at=row.recorded_at,
        patient_identifier=row.patient_identifier,
        action=row.action,
        outcome=row.outcome,
        reason=row.reason,
        basis=row.basis,
        channel=row.channel,
        recipient_hsa_id=row.recipient_hsa_id,
        category=row.category,
        purpose=row.purpose,
        consent_id=UUID(row.consent_id) if row.consent_id else None,
        case_id=UUID(row.case_id) if row.case_id else None,
        decision_at=row.decision_at,
        requested_by=row.requested_by,
        correlation_id=row.correlation_id,
        source=row.source,
    )


def _audit_row(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": str(entry.id),
        "recorded_at": entry.recorded_at,
        "patient_identifier": entry.patient_identifier,
        "action": entry.action,
        "outcome": entry.outcome,
        "reason": entry.reason,
        "basis": entry.basis,
        "channel": entry.channel,
        "recipient_hsa_id": entry.recipient_hsa_id,
        "category": entry.category,
        "purpose": entry.purpose,
        "consent_id": str(entry.consent_id) if entry.consent_id else None,
        "case_id": str(entry.case_id) if entry.case_id else None,
        "decision_at": entry.decision_at,
        "requested_by": entry.requested_by,
        "correlation_id": entry.correlation_id,
        "source": entry.source,
    }


# inserts built once, values bound at execution (cheaper than ``insert().values(...)`` per call)
_INSERT_CONSENT = consents.insert()
_INSERT_VERSION = consent_versions.insert()
_INSERT_REQUEST = consent_requests.insert()
_GET_REQUEST = consent_requests.select().where(consent_requests.c.case_id == sa.bindparam("k_case_id"))
# the per-message statements are built once, their values bound at execution
_REQUEST_EXISTS = (
    sa.select(sa.literal(1))
    .select_from(consent_requests)
    .where(consent_requests.c.case_id == sa.bindparam("k_case_id"))
    .limit(1)
)
_MARK_ANSWERED = (
    consent_requests.update()
    .where(consent_requests.c.case_id == sa.bindparam("k_case_id"))
    .values(status="answered", answered_by=sa.bindparam("k_answered_by"))
)


class SqlConsentRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def add(self, record: ConsentRecord) -> None:
        await self.conn.execute(_INSERT_CONSENT, {"id": str(record.id), **_columns(record)})
        await self._version(record, "created", record.recorded_at)

    async def _version(self, record: ConsentRecord, change: str, at: datetime) -> None:
        await self.conn.execute(
            _INSERT_VERSION,
            {
                "consent_id": str(record.id),
                "version": record.version,
                "change": change,
                "changed_at": at,
                "snapshot": json.dumps(record_to_json(record)),
            },
        )

    async def update_status(self, before: ConsentRecord, after: ConsentRecord, change: str) -> bool:
        """Store a status change (optimistic: only if the row is still at ``before.version``)."""
        result = await self.conn.execute(
            consents.update()
            .where(consents.c.id == str(before.id))
            .where(sa.func.coalesce(consents.c.version, 1) == before.version)
            .values(**_columns(after))
        )
        if result.rowcount != 1:
            return False
        await self._version(after, change, after.status_changed_at or after.recorded_at)
        return True

    async def get(self, consent_id: UUID, *, for_update: bool = False) -> ConsentRecord | None:
        query = consents.select().where(consents.c.id == str(consent_id))
        if for_update and self.conn.dialect.name == "postgresql":
            query = query.with_for_update()
        row = (await self.conn.execute(query)).first()
        return _record(row) if row else None

    async def history(self, consent_id: UUID) -> list[tuple[int, str, datetime, ConsentRecord]]:
        rows = await self.conn.execute(
            consent_versions.select()
            .where(consent_versions.c.consent_id == str(consent_id))
            .order_by(consent_versions.c.version)
        )
        return [(r.version, r.change, r.changed_at, record_from_json(json.loads(r.snapshot))) for r in rows]

    async def for_patient(self, patient_identifier: str) -> list[ConsentRecord]:
        rows = await self.conn.execute(
            consents.select()
            .where(consents.c.patient_identifier == patient_identifier)
            .order_by(consents.c.recorded_at)
        )
        return [_record(r) for r in rows]

    async def add_request(self, request: ConsentRequest) -> bool:
        if await self.conn.scalar(_REQUEST_EXISTS, {"k_case_id": str(request.case_id)}):
            return False
        await self.conn.execute(
            _INSERT_REQUEST,
            {
                "case_id": str(request.case_id),
                "patient_identifier": request.patient_identifier,
                "is_child": request.is_child,
                "purposes": json.dumps(list(request.purposes)),
                "proposed_recipients": json.dumps(list(request.proposed_recipients)),
                "requested_at": request.requested_at,
                "status": request.status,
                "correlation_id": request.correlation_id,
                "requested_by_hsa_id": request.requested_by_hsa_id,
            },
        )
        return True

    async def get_request(self, case_id: UUID) -> ConsentRequest | None:
        row = (await self.conn.execute(_GET_REQUEST, {"k_case_id": str(case_id)})).first()
        return _request(row) if row else None

    async def mark_answered(self, case_id: UUID, consent_id: UUID) -> None:
        await self.conn.execute(_MARK_ANSWERED, {"k_case_id": str(case_id), "k_answered_by": str(consent_id)})

    async def reopen_request(self, case_id: UUID, consent_id: UUID) -> None:
        """The consent that answered the case's request was cancelled: the request waits again."""
        await self.conn.execute(
            consent_requests.update()
            .where(consent_requests.c.case_id == str(case_id))
            .where(consent_requests.c.answered_by == str(consent_id))
            .values(status="pending", answered_by=None)
        )

    async def pending_requests(self) -> list[ConsentRequest]:
        rows = await self.conn.execute(
            consent_requests.select()
            .where(consent_requests.c.status == "pending")
            .order_by(consent_requests.c.requested_at)
        )
        return [_request(r) for r in rows]

    async def requests_for_patient(self, patient_identifier: str) -> list[ConsentRequest]:
        rows = await self.conn.execute(
            consent_requests.select()
            .where(consent_requests.c.patient_identifier == patient_identifier)
            .order_by(consent_requests.c.requested_at)
        )
        return [_request(r) for r in rows]

    async def patient_of_case(self, case_id: UUID) -> str | None:
        """The person of a case: from its consent request, else from a consent recorded for it."""
        for table in (consent_requests, consents):
            found = await self.conn.scalar(
                sa.select(table.c.patient_identifier).where(table.c.case_id == str(case_id)).limit(1)
            )
            if found:
                return str(found)
        return None

    # ---- audit --------------------------------------------------------------------------------
    async def add_audit(self, entry: AuditEntry) -> None:
        await self.add_audits([entry])

    async def add_audits(self, entries: list[AuditEntry]) -> None:
        await self.conn.execute(audit_events.insert(), [_audit_row(e) for e in entries])

    def _audit_query(
        self, patient_identifier: str, outcome: str | None, visible_to: str | None, until: datetime | None
    ) -> Any:
        query = audit_events.select().where(audit_events.c.patient_identifier == patient_identifier)
        if outcome is not None:
            query = query.where(audit_events.c.outcome == outcome)
        if visible_to is not None:
            query = query.where(audit_visible_to(visible_to))
        if until is not None:
            query = query.where(audit_events.c.recorded_at <= until)
        return query

    async def audit_for_patient(
        self,
        patient_identifier: str,
        *,
        limit: int = 100,
        outcome: str | None = None,
        visible_to: str | None = None,
        offset: int = 0,
        until: datetime | None = None,
        after: tuple[datetime, str] | None = None,
    ) -> list[AuditEntry]:
        """The person's audit trail, newest first. ``visible_to`` (an organisation's HSA-id) keeps
        only what that organisation may see — filtered in the query, before the limit; ``until``
        leaves out what was recorded later (a search's pages see the trail as it was on page one);
        ``after`` (recorded_at, id) of the last entry of the previous page: the entries after it in this
        order (keyset paging: an entry filed late with an older time moves nothing along)."""
        query = self._audit_query(patient_identifier, outcome, visible_to, until)
        if after is not None:
            at, last = after
            query = query.where(
                sa.or_(
                    audit_events.c.recorded_at < at,
                    sa.and_(audit_events.c.recorded_at == at, audit_events.c.id < last),
                )
            )
        rows = await self.conn.execute(
            query.order_by(audit_events.c.recorded_at.desc(), audit_events.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        return [_audit(r) for r in rows]

    async def count_audit_for_patient(
        self,
        patient_identifier: str,
        *,
        outcome: str | None = None,
        visible_to: str | None = None,
        until: datetime | None = None,
    ) -> tuple[int, datetime | None]:
        """How many entries :meth:`audit_for_patient` pages through, and the newest one's time."""
        inner = self._audit_query(patient_identifier, outcome, visible_to, until).subquery()
        row = (await self.conn.execute(sa.select(sa.func.count(), sa.func.max(inner.c.recorded_at)))).one()
        newest = row[1]
        if isinstance(newest, str):  # SQLite hands an aggregate back as text
            newest = datetime.fromisoformat(newest)
        if newest is not None and newest.tzinfo is None:
            newest = newest.replace(tzinfo=UTC)
        return int(row[0]), newest

    async def audit_entry_visible_to(self, audit_id: UUID, hsa_id: str) -> bool:
        """Whether the organisation may see this audit entry (:func:`audit_visible_to`)."""
        found = await self.conn.scalar(
            sa.select(sa.literal(1))
            .select_from(audit_events)
            .where(audit_events.c.id == str(audit_id), audit_visible_to(hsa_id))
            .limit(1)
        )
        return bool(found)

    async def get_audit(self, audit_id: UUID) -> AuditEntry | None:
        row = (
            await self.conn.execute(audit_events.select().where(audit_events.c.id == str(audit_id)))
        ).first()
        return _audit(row) if row else None


class AuditWriter:
    """Group commit for the audit log: concurrent decisions share one transaction.

    ``await write(entry)`` returns once the row is committed (an answer never leaves before its
    audit record is durable), but up to ``batch`` waiting rows commit together — on SQLite one
    writer at a time is the limit, so this is what lets decisions scale with concurrency.
    """

    def __init__(self, engine: Any, *, batch: int = 256) -> None:
        self._engine = engine
        self._batch = batch
        self._queue: asyncio.Queue[tuple[AuditEntry, asyncio.Future[None]]] | None = None
        self._task: asyncio.Task[None] | None = None

    async def write(self, entry: AuditEntry) -> None:
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._run(), name="consent-audit-writer")
        assert self._queue is not None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put((entry, done))
        await done

    async def _run(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            items = [await queue.get()]
            while len(items) < self._batch and not queue.empty():
                items.append(queue.get_nowait())
            try:
                async with self._engine.begin() as conn:
                    repo = SqlConsentRepository(conn)
                    await repo.add_audits([entry for entry, _ in items])
            except Exception as exc:
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for _, fut in items:
                if not fut.done():
                    fut.set_result(None)

    async def write_all(self, entries: list[AuditEntry]) -> None:
        """Several entries (a search's, one per person), committed before this returns."""
        await asyncio.gather(*(self.write(e) for e in entries))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None


def records_reader(engine: Any) -> Any:
    """``records_of(patient)``: the person's consents, on a connection closed before returning
    (on SQLite every transaction takes the write lock, so a decision must not hold one while its
    audit record waits for the writer)."""

    async def records_of(patient_identifier: str) -> list[ConsentRecord]:
        async with engine.connect() as conn:
            return await SqlConsentRepository(conn).for_patient(patient_identifier)

    return records_of


def audit_visible_to(hsa_id: str) -> sa.ColumnElement[bool]:
    """The audit entries an organisation may see (:mod:`services.consent.access`): those where it is
    the recipient or the reader, those of the cases it owns (the case's consent request names it),
    and those of the consents it recorded without a case (it owns those records)."""
    owned_cases = sa.select(consent_requests.c.case_id).where(
        consent_requests.c.requested_by_hsa_id == hsa_id
    )
    own_records = sa.select(consents.c.id).where(
        consents.c.recorded_by_hsa_id == hsa_id, consents.c.case_id.is_(None)
    )
    return sa.or_(
        audit_events.c.recipient_hsa_id == hsa_id,
        audit_events.c.case_id.in_(owned_cases),
        audit_events.c.consent_id.in_(own_records),
    )
