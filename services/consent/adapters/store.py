"""SQL storage of consents and consent requests (SQLAlchemy Core; SQLite or PostgreSQL)."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from services.consent.domain import ConsentRecord, ConsentRequest
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
)


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
    )


class SqlConsentRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def add(self, record: ConsentRecord) -> None:
        await self.conn.execute(
            consents.insert().values(
                id=str(record.id),
                patient_identifier=record.patient_identifier,
                case_id=str(record.case_id) if record.case_id else None,
                decision=record.decision,
                purposes=json.dumps(list(record.purposes)),
                recipients=json.dumps(list(record.recipients)),
                given_by=record.given_by,
                method=record.method,
                recorded_by_hsa_id=record.recorded_by_hsa_id,
                recorded_at=record.recorded_at,
                valid_until=record.valid_until,
                status=record.status,
            )
        )

    async def get(self, consent_id: UUID) -> ConsentRecord | None:
        row = (await self.conn.execute(consents.select().where(consents.c.id == str(consent_id)))).first()
        return _record(row) if row else None

    async def for_patient(self, patient_identifier: str) -> list[ConsentRecord]:
        rows = await self.conn.execute(
            consents.select()
            .where(consents.c.patient_identifier == patient_identifier)
            .order_by(consents.c.recorded_at)
        )
        return [_record(r) for r in rows]

    async def add_request(self, request: ConsentRequest) -> bool:
        exists = await self.conn.scalar(
            sa.select(sa.func.count())
            .select_from(consent_requests)
            .where(consent_requests.c.case_id == str(request.case_id))
        )
        if exists:
            return False
        await self.conn.execute(
            consent_requests.insert().values(
                case_id=str(request.case_id),
                patient_identifier=request.patient_identifier,
                is_child=request.is_child,
                purposes=json.dumps(list(request.purposes)),
                proposed_recipients=json.dumps(list(request.proposed_recipients)),
                requested_at=request.requested_at,
                status=request.status,
                correlation_id=request.correlation_id,
            )
        )
        return True

    async def get_request(self, case_id: UUID) -> ConsentRequest | None:
        row = (
            await self.conn.execute(
                consent_requests.select().where(consent_requests.c.case_id == str(case_id))
            )
        ).first()
        return _request(row) if row else None

    async def mark_answered(self, case_id: UUID, consent_id: UUID) -> None:
        await self.conn.execute(
            consent_requests.update()
            .where(consent_requests.c.case_id == str(case_id))
            .values(status="answered", answered_by=str(consent_id))
        )

    async def pending_requests(self) -> list[ConsentRequest]:
        rows = await self.conn.execute(
            consent_requests.select()
            .where(consent_requests.c.status == "pending")
            .order_by(consent_requests.c.requested_at)
        )
        return [_request(r) for r in rows]
