"""SQL storage of discharge episodes, SIP cases, plan versions and sent invitations."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from services.planning.domain import OPEN_STATES, Participant, SipCase
from shared.persistence import UTCDateTime

metadata = sa.MetaData()

episodes = sa.Table(
    "discharge_episodes",
    metadata,
    sa.Column("hospital_hsa_id", sa.String(64), primary_key=True),
    sa.Column("episode_id", sa.String(128), primary_key=True),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("ready_for_discharge_at", UTCDateTime, nullable=False),
    sa.Column("sip_needed", sa.Boolean, nullable=False),
)

cases = sa.Table(
    "sip_cases",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("reference", sa.String(32), nullable=False, unique=True),
    sa.Column("hospital_hsa_id", sa.String(64), nullable=False),
    sa.Column("episode_id", sa.String(128), nullable=False),
    sa.Column("patient_identifier", sa.String(12), nullable=False, index=True),
    sa.Column("is_child", sa.Boolean, nullable=False),
    sa.Column("kommun_code", sa.String(4), nullable=False),
    sa.Column("owner_hsa_id", sa.String(64), nullable=False),
    sa.Column("participants", sa.Text, nullable=False),
    sa.Column("state", sa.String(32), nullable=False, index=True),
    sa.Column("opened_at", UTCDateTime, nullable=False),
    sa.Column("ready_for_discharge_at", UTCDateTime, nullable=False),
    sa.Column("invitation_due_at", UTCDateTime, nullable=False),
    sa.Column("correlation_id", sa.String(128)),
    sa.Column("consent_id", sa.String(36)),
    sa.Column("invited_at", UTCDateTime),
    sa.UniqueConstraint("hospital_hsa_id", "episode_id", name="uq_case_episode"),
)

care_plans = sa.Table(
    "care_plan_versions",
    metadata,
    sa.Column("case_id", sa.String(36), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("resource", sa.Text, nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
)

invitations = sa.Table(
    "case_invitations",
    metadata,
    sa.Column("case_id", sa.String(36), primary_key=True),
    sa.Column("recipient_hsa_id", sa.String(64), primary_key=True),
    sa.Column("channel", sa.String(16), primary_key=True),
    sa.Column("sent_at", UTCDateTime, nullable=False),
)


def _case(row: Any) -> SipCase:
    return SipCase(
        id=UUID(row.id),
        reference=row.reference,
        hospital_hsa_id=row.hospital_hsa_id,
        episode_id=row.episode_id,
        patient_identifier=row.patient_identifier,
        is_child=row.is_child,
        kommun_code=row.kommun_code,
        owner_hsa_id=row.owner_hsa_id,
        participants=tuple(Participant(**p) for p in json.loads(row.participants)),
        state=row.state,
        opened_at=row.opened_at,
        ready_for_discharge_at=row.ready_for_discharge_at,
        invitation_due_at=row.invitation_due_at,
        correlation_id=row.correlation_id,
        consent_id=UUID(row.consent_id) if row.consent_id else None,
        invited_at=row.invited_at,
    )


def _values(case: SipCase) -> dict[str, Any]:
    return {
        "id": str(case.id),
        "reference": case.reference,
        "hospital_hsa_id": case.hospital_hsa_id,
        "episode_id": case.episode_id,
        "patient_identifier": case.patient_identifier,
        "is_child": case.is_child,
        "kommun_code": case.kommun_code,
        "owner_hsa_id": case.owner_hsa_id,
        "participants": json.dumps([p.__dict__ for p in case.participants], ensure_ascii=False),
        "state": case.state,
        "opened_at": case.opened_at,
        "ready_for_discharge_at": case.ready_for_discharge_at,
        "invitation_due_at": case.invitation_due_at,
        "correlation_id": case.correlation_id,
        "consent_id": str(case.consent_id) if case.consent_id else None,
        "invited_at": case.invited_at,
    }


class SqlCaseRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def add_episode(
        self, hospital_hsa_id: str, episode_id: str, received_at: datetime,
        ready_for_discharge_at: datetime, sip_needed: bool,
    ) -> bool:  # fmt: skip
        """False when this hospital's episode is already known (a resent notice)."""
        exists = await self.conn.scalar(
            sa.select(sa.func.count())
            .select_from(episodes)
            .where(episodes.c.hospital_hsa_id == hospital_hsa_id, episodes.c.episode_id == episode_id)
        )
        if exists:
            return False
        await self.conn.execute(
            episodes.insert().values(
                hospital_hsa_id=hospital_hsa_id,
                episode_id=episode_id,
                received_at=received_at,
                ready_for_discharge_at=ready_for_discharge_at,
                sip_needed=sip_needed,
            )
        )
        return True

    async def add_case(self, case: SipCase) -> None:
        await self.conn.execute(cases.insert().values(**_values(case)))

    async def get_case(self, case_id: UUID) -> SipCase | None:
        row = (await self.conn.execute(cases.select().where(cases.c.id == str(case_id)))).first()
        return _case(row) if row else None

    async def update_case(self, case: SipCase) -> None:
        await self.conn.execute(cases.update().where(cases.c.id == str(case.id)).values(**_values(case)))

    async def open_cases(self, include_closed: bool = False) -> list[SipCase]:
        q = cases.select().order_by(cases.c.invitation_due_at)
        if not include_closed:
            q = q.where(cases.c.state.in_(sorted(OPEN_STATES)))
        return [_case(r) for r in await self.conn.execute(q)]

    async def next_plan_version(self, case_id: UUID) -> int:
        current = await self.conn.scalar(
            sa.select(sa.func.max(care_plans.c.version)).where(care_plans.c.case_id == str(case_id))
        )
        return int(current or 0) + 1

    async def add_plan_version(
        self, case_id: UUID, version: int, resource: dict[str, Any], at: datetime
    ) -> None:
        await self.conn.execute(
            care_plans.insert().values(
                case_id=str(case_id), version=version, resource=json.dumps(resource), recorded_at=at
            )
        )

    async def latest_plan(self, case_id: UUID) -> dict[str, Any] | None:
        row = (
            await self.conn.execute(
                care_plans.select()
                .where(care_plans.c.case_id == str(case_id))
                .order_by(care_plans.c.version.desc())
                .limit(1)
            )
        ).first()
        return json.loads(row.resource) if row else None

    async def record_invitation(self, case_id: UUID, recipient: str, channel: str, sent_at: datetime) -> bool:
        exists = await self.conn.scalar(
            sa.select(sa.func.count())
            .select_from(invitations)
            .where(
                invitations.c.case_id == str(case_id),
                invitations.c.recipient_hsa_id == recipient,
                invitations.c.channel == channel,
            )
        )
        if exists:
            return False
        await self.conn.execute(
            invitations.insert().values(
                case_id=str(case_id), recipient_hsa_id=recipient, channel=channel, sent_at=sent_at
            )
        )
        return True
