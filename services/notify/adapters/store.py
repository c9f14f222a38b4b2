"""SQLAlchemy Core storage of notifications (SQLite or PostgreSQL)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.notify.domain import Notification
from shared.persistence import UTCDateTime

metadata = sa.MetaData()

notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("cause_message_id", sa.String(64), nullable=False),
    sa.Column("case_id", sa.String(36), nullable=False),
    sa.Column("case_reference", sa.String(128), nullable=False),
    sa.Column("correlation_id", sa.String(128)),
    sa.Column("recipient_hsa_id", sa.String(64), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("address", sa.Text, comment="Organisation contact (comma-separated e-mail addresses)"),
    sa.Column("language", sa.String(8), nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("sent_at", UTCDateTime),
    sa.Column("last_error", sa.Text),
    sa.UniqueConstraint("cause_message_id", "recipient_hsa_id", "channel", name="uq_notification_dedupe"),
    sa.Index("ix_notifications_due", "status", "next_attempt_at"),
    sa.Index("ix_notifications_case", "case_id"),
)

# Added by issue #6 as a table of its own (not new columns): ``create_all`` adds a missing table to
# an existing database but never a missing column, and there are no migrations yet. A notification
# without a row here is an invitation from before (kind "invitation", no calendar attachment).
notification_details = sa.Table(
    "notification_details",
    metadata,
    sa.Column("id", sa.String(36), sa.ForeignKey("notifications.id"), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("plan_url", sa.Text, comment="Where an authorised participant reads the plan"),
    sa.Column("sender_hsa_id", sa.String(64), comment="The owning unit that sends it"),
    sa.Column("ics", sa.Text, comment="Calendar invitation (text/calendar) attached to the e-mail"),
)

_t = notifications
_d = notification_details
_joined = _t.outerjoin(_d, _d.c.id == _t.c.id)
_columns = (*_t.c, _d.c.kind, _d.c.plan_url, _d.c.sender_hsa_id, _d.c.ics)


def _row(n: Notification) -> dict[str, Any]:
    return {
        "id": str(n.id),
        "cause_message_id": n.cause_message_id,
        "case_id": str(n.case_id),
        "case_reference": n.case_reference,
        "correlation_id": n.correlation_id,
        "recipient_hsa_id": n.recipient_hsa_id,
        "channel": n.channel,
        "address": n.address,
        "language": n.language,
        "subject": n.subject,
        "body": n.body,
        "status": n.status,
        "attempts": n.attempts,
        "next_attempt_at": n.next_attempt_at,
        "created_at": n.created_at,
        "updated_at": n.updated_at,
        "sent_at": n.sent_at,
        "last_error": n.last_error,
    }


def _details(n: Notification) -> dict[str, Any]:
    return {
        "id": str(n.id),
        "kind": n.kind,
        "plan_url": n.plan_url,
        "sender_hsa_id": n.sender_hsa_id,
        "ics": n.ics,
    }


def _from_row(r: Any) -> Notification:
    return Notification(
        id=UUID(r.id),
        cause_message_id=r.cause_message_id,
        case_id=UUID(r.case_id),
        case_reference=r.case_reference,
        correlation_id=r.correlation_id,
        recipient_hsa_id=r.recipient_hsa_id,
        channel=r.channel,
        address=r.address,
        language=r.language,
        subject=r.subject,
        body=r.body,
        status=r.status,
        attempts=r.attempts,
        next_attempt_at=r.next_attempt_at,
        created_at=r.created_at,
        updated_at=r.updated_at,
        sent_at=r.sent_at,
        last_error=r.last_error,
        kind=r.kind or "invitation",
        plan_url=r.plan_url,
        sender_hsa_id=r.sender_hsa_id,
        ics=r.ics,
    )


def _select() -> sa.Select[Any]:
    return sa.select(*_columns).select_from(_joined)


class SqlNotificationRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def add(self, n: Notification) -> bool:
        try:
            async with self.conn.begin_nested():
                await self.conn.execute(_t.insert().values(**_row(n)))
                await self.conn.execute(_d.insert().values(**_details(n)))
        except IntegrityError:
            return False
        return True

    async def get(self, notification_id: UUID) -> Notification | None:
        r = (await self.conn.execute(_select().where(_t.c.id == str(notification_id)))).first()
        return _from_row(r) if r else None

    async def for_case(self, case_id: UUID) -> list[Notification]:
        rows = await self.conn.execute(
            _select()
            .where(_t.c.case_id == str(case_id))
            .order_by(_t.c.created_at, _t.c.recipient_hsa_id, _t.c.channel)
        )
        return [_from_row(r) for r in rows]

    async def due(self, now: datetime, limit: int) -> list[Notification]:
        rows = await self.conn.execute(
            _select()
            .where(_t.c.status == "pending", _t.c.next_attempt_at <= now)
            .order_by(_t.c.next_attempt_at, _t.c.created_at)
            .limit(limit)
        )
        return [_from_row(r) for r in rows]

    async def claim(self, notification_id: UUID, now: datetime) -> Notification | None:
        res = await self.conn.execute(
            _t.update()
            .where(_t.c.id == str(notification_id), _t.c.status == "pending")
            .values(status="sending", attempts=_t.c.attempts + 1, updated_at=now)
        )
        if res.rowcount != 1:
            return None
        return await self.get(notification_id)

    async def _from_sending(self, notification_id: UUID, **values: Any) -> bool:
        res = await self.conn.execute(
            _t.update().where(_t.c.id == str(notification_id), _t.c.status == "sending").values(**values)
        )
        return res.rowcount == 1

    async def mark_sent(self, notification_id: UUID, sent_at: datetime) -> bool:
        return await self._from_sending(
            notification_id, status="sent", sent_at=sent_at, updated_at=sent_at, last_error=None
        )

    async def reschedule(
        self, notification_id: UUID, next_attempt_at: datetime, at: datetime, error: str
    ) -> bool:
        return await self._from_sending(
            notification_id,
            status="pending",
            next_attempt_at=next_attempt_at,
            updated_at=at,
            last_error=error,
        )

    async def mark_failed(self, notification_id: UUID, at: datetime, error: str) -> bool:
        return await self._from_sending(notification_id, status="failed", updated_at=at, last_error=error)

    async def release_in_flight(self, now: datetime) -> int:
        res = await self.conn.execute(
            _t.update().where(_t.c.status == "sending").values(status="pending", next_attempt_at=now)
        )
        return int(res.rowcount or 0)

    async def next_due_at(self) -> datetime | None:
        return await self.conn.scalar(
            sa.select(sa.func.min(_t.c.next_attempt_at)).where(_t.c.status == "pending")
        )
