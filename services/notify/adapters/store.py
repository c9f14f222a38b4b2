"""SQLAlchemy Core storage of notifications (SQLite or PostgreSQL)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.notify.domain import CANCEL_REASONS, NOTICE_KINDS, UNSENT, Notification, Withdrawal
from shared.contracts import MeetingNeeds
from shared.persistence import UTCDateTime, insert_once

metadata = sa.MetaData()

#: how long a claim holds when the dispatcher does not say (NOTIFY_CLAIM_LEASE_SECONDS)
DEFAULT_LEASE = timedelta(seconds=300)

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
    # the unit that owns the case (may read all its notifications); added by migration 0002, on SQLite
    # by :func:`upgrade_schema`
    sa.Column("owner_hsa_id", sa.String(64)),
    # while ``sending``: until when this claim holds; a claim past it was a replica that died mid-send
    # and another one takes the row over (migration 0004_i17_claim_lease, on SQLite upgrade_schema)
    sa.Column("claimed_until", UTCDateTime),
    # which dispatcher holds the claim (NOTIFY_REPLICA_ID): restarted, it takes its own claims back at once
    sa.Column("claimed_by", sa.String(128)),
    # when retention blanked the payload (text, address, calendar file, needs): migration 0006, on SQLite
    # upgrade_schema; None while it is kept (services/notify/adapters/retention.py)
    sa.Column("payload_pruned_at", UTCDateTime),
    sa.UniqueConstraint("cause_message_id", "recipient_hsa_id", "channel", name="uq_notification_dedupe"),
    sa.Index("ix_notifications_due", "status", "next_attempt_at"),
    sa.Index("ix_notifications_case", "case_id"),
    # GET /deliveries: newest first, by recipient (migration 0005_deliveries)
    sa.Index("ix_notifications_created", "created_at", "id"),
    sa.Index("ix_notifications_recipient", "recipient_hsa_id", "created_at"),
    # retention: the payloads still kept, oldest first — only those rows, so a pass never walks the
    # years of rows blanked before. PostgreSQL reads the first (migration 0006_retention); SQLite passed
    # it over for ix_notifications_due and sorted every sent notification per batch, and reads the
    # second, whose leading column it sees as an equality (migration 0007_payload_walk)
    sa.Index(
        "ix_notifications_payload_kept",
        "created_at",
        sqlite_where=sa.literal_column("payload_pruned_at").is_(None),
        postgresql_where=sa.literal_column("payload_pruned_at").is_(None),
    ),
    sa.Index(
        "ix_notifications_payload_walk",
        "payload_pruned_at",
        "created_at",
        sqlite_where=sa.literal_column("payload_pruned_at").is_(None),
        postgresql_where=sa.literal_column("payload_pruned_at").is_(None),
    ),
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

# Added by issue #4, again as tables of their own (see above).
notification_consents = sa.Table(
    "notification_consents",
    metadata,
    sa.Column("id", sa.String(36), sa.ForeignKey("notifications.id"), primary_key=True),
    sa.Column("consent_id", sa.String(36), nullable=False, comment="The consent an invitation is sent under"),
    sa.Index("ix_notification_consents_consent", "consent_id"),
)

notification_cancellations = sa.Table(
    "notification_cancellations",
    metadata,
    sa.Column("id", sa.String(36), sa.ForeignKey("notifications.id"), primary_key=True),
    sa.Column("reason_code", sa.String(32), nullable=False, comment="consent-withdrawn | consent-cancelled"),
    sa.Column("reason", sa.Text, nullable=False, comment="Why it was stopped, e.g. 'consent withdrawn'"),
    sa.Column("cancelled_at", UTCDateTime, nullable=False),
    sa.Column("from_status", sa.String(16), nullable=False, comment="pending or sending when stopped"),
    sa.Column("consent_id", sa.String(36), comment="The consent that no longer holds"),
    sa.Column("cause_message_id", sa.String(64), comment="The ConsentWithdrawn message that stopped it"),
)

consent_withdrawals = sa.Table(
    "consent_withdrawals",
    metadata,
    sa.Column("consent_id", sa.String(36), primary_key=True),
    sa.Column("case_id", sa.String(36), comment="The case named in the first message about it"),
    sa.Column("cause", sa.String(16), nullable=False, comment="withdrawal | cancellation"),
    sa.Column("effective_at", UTCDateTime, nullable=False),
    sa.Column("message_id", sa.String(64), nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False, comment="When notify stopped the sends"),
    sa.Index("ix_consent_withdrawals_case", "case_id"),
)

# Added by issue #6 (tables of their own, see above). A reminder's meeting: the dispatcher cancels a
# reminder that comes due after its meeting began; a later invitation with another time supersedes it.
notification_reminders = sa.Table(
    "notification_reminders",
    metadata,
    sa.Column("id", sa.String(36), sa.ForeignKey("notifications.id"), primary_key=True),
    sa.Column("meeting_start", UTCDateTime, nullable=False, comment="The meeting the reminder is about"),
)

# Every invitation with a meeting time notify accepted, per case: the newest (by the invitation's
# occurred_at) is the case's meeting; an older invitation delivered late schedules no reminders.
case_meetings = sa.Table(
    "case_meetings",
    metadata,
    sa.Column("invitation_message_id", sa.String(64), primary_key=True),
    sa.Column("case_id", sa.String(36), nullable=False),
    sa.Column("meeting_start", UTCDateTime, nullable=False),
    sa.Column("invitation_occurred_at", UTCDateTime, nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
    sa.Index("ix_case_meetings_case", "case_id"),
)

# Added by issue #22 (a table of its own, like the others): what the person needs at the meeting, as
# the command carried it (MeetingNeeds JSON); only for notifications that state it.
notification_needs = sa.Table(
    "notification_needs",
    metadata,
    sa.Column("id", sa.String(36), sa.ForeignKey("notifications.id"), primary_key=True),
    sa.Column("needs", sa.Text, nullable=False, comment="MeetingNeeds (JSON): no identifier, no health data"),
)

_t = notifications
_d = notification_details
_k = notification_consents
_x = notification_cancellations
_w = consent_withdrawals
_r = notification_reminders
_m = case_meetings
_n = notification_needs
_joined = (
    _t.outerjoin(_d, _d.c.id == _t.c.id)
    .outerjoin(_k, _k.c.id == _t.c.id)
    .outerjoin(_x, _x.c.id == _t.c.id)
    .outerjoin(_r, _r.c.id == _t.c.id)
    .outerjoin(_n, _n.c.id == _t.c.id)
)
_columns = (
    *_t.c,
    _d.c.kind,
    _d.c.plan_url,
    _d.c.sender_hsa_id,
    _d.c.ics,
    _k.c.consent_id,
    _x.c.reason.label("status_reason"),
    _x.c.cancelled_at,
    _r.c.meeting_start,
    _n.c.needs.label("meeting_needs"),
)


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
        "owner_hsa_id": n.owner_hsa_id,
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
        consent_id=UUID(r.consent_id) if r.consent_id else None,
        status_reason=r.status_reason,
        cancelled_at=r.cancelled_at,
        meeting_start=r.meeting_start,
        owner_hsa_id=r.owner_hsa_id,
        meeting_needs=MeetingNeeds.model_validate_json(r.meeting_needs) if r.meeting_needs else None,
    )


def upgrade_schema(sync_conn: sa.Connection) -> None:
    """SQLite: add the columns newer than an existing ``notifications`` table (additive, idempotent; run
    after ``create_all``). PostgreSQL is migrated by Alembic (``services/notify/migrations``)."""
    inspector = sa.inspect(sync_conn)
    if "notifications" not in inspector.get_table_names():
        return
    have = {c["name"] for c in inspector.get_columns("notifications")}
    for name in ("owner_hsa_id", "claimed_until", "claimed_by", "payload_pruned_at"):
        if name not in have:
            ddl = notifications.c[name].type.compile(dialect=sync_conn.dialect)
            sync_conn.execute(sa.text(f'ALTER TABLE notifications ADD COLUMN "{name}" {ddl}'))
    for index in notifications.indexes:
        index.create(sync_conn, checkfirst=True)


def _code_of(reason: str | None) -> str:
    return next((code for code, text in CANCEL_REASONS.items() if text == reason), "consent-withdrawn")


def _select() -> sa.Select[Any]:
    return sa.select(*_columns).select_from(_joined)


# The per-notification statements, built once with their values bound at execution (building a
# statement per call costs several times what SQLite needs to run it).
_GET = _select().where(_t.c.id == sa.bindparam("k_id"))
_INSERT_NOTIFICATION = _t.insert()
_INSERT_DETAILS = _d.insert()
_INSERT_CONSENT = _k.insert()
_INSERT_REMINDER = _r.insert()
_INSERT_NEEDS = _n.insert()
_INSERT_CANCELLATION = _x.insert()
#: several notifications in one statement, answering the ids it inserted (SQLite ≥ 3.35, PostgreSQL)
_INSERT_IGNORE_RETURNING = {
    "sqlite": sqlite_insert(_t).on_conflict_do_nothing().returning(_t.c.id),
    "postgresql": pg_insert(_t).on_conflict_do_nothing().returning(_t.c.id),
}
# Claimable: pending and due, or sending under a lease that has run out (its replica died mid-send, or
# a row from before leases). One conditional UPDATE: on SQLite under the write lock, on PostgreSQL the
# second of two concurrent claims waits for the first and then finds the row no longer claimable.
_CLAIMABLE = sa.or_(
    sa.and_(_t.c.status == "pending", _t.c.next_attempt_at <= sa.bindparam("k_now")),
    sa.and_(
        _t.c.status == "sending",
        sa.or_(_t.c.claimed_until.is_(None), _t.c.claimed_until < sa.bindparam("k_now")),
    ),
)
_CLAIM = (
    _t.update()
    .where(_t.c.id == sa.bindparam("k_id"), _CLAIMABLE)
    .values(
        status="sending",
        attempts=_t.c.attempts + 1,
        claimed_until=sa.bindparam("k_until", type_=UTCDateTime),
        claimed_by=sa.bindparam("k_by", type_=sa.String(128)),
    )
)
# a claim is ``sending`` with its attempt count: a replica whose lease was taken over records nothing
_FROM_SENDING = _t.update().where(
    _t.c.id == sa.bindparam("k_id"), _t.c.status == "sending", _t.c.attempts == sa.bindparam("k_attempts")
)
_FROM_ANY_SENDING = _t.update().where(_t.c.id == sa.bindparam("k_id"), _t.c.status == "sending")
_STATUS = sa.select(_t.c.status, _t.c.attempts).where(_t.c.id == sa.bindparam("k_id"))


class SqlNotificationRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def add(self, n: Notification) -> bool:
        """Store a new notification; False if its dedupe key (or id) is there already.

        One ``INSERT … ON CONFLICT DO NOTHING`` decides (no savepoint round trips); the detail
        rows follow only when it inserted — their key is the new row's id."""
        inserted = await insert_once(self.conn, _t, _row(n))
        if inserted is None:  # a database without ON CONFLICT: a savepoint keeps a conflict local
            try:
                async with self.conn.begin_nested():
                    await self.conn.execute(_INSERT_NOTIFICATION, _row(n))
                    await self._add_details([n])
            except IntegrityError:
                return False
            return True
        if inserted:
            await self._add_details([n])
        return inserted

    async def add_all(self, ns: Sequence[Notification]) -> list[Notification]:
        """Store new notifications — a command's, one per recipient and channel — and return those
        stored, in order; one whose dedupe key (or id) is there already is left out, as :meth:`add`.

        One ``INSERT … ON CONFLICT DO NOTHING RETURNING id`` for all of them (a row whose key another
        of them took first is skipped too) and one statement per detail table for the inserted ones:
        three statements for a discharge's three invitations where one by one took nine."""
        build = _INSERT_IGNORE_RETURNING.get(self.conn.dialect.name)
        if len(ns) < 2 or build is None:
            return [n for n in ns if await self.add(n)]
        inserted = set((await self.conn.execute(build, [_row(n) for n in ns])).scalars())
        created = [n for n in ns if str(n.id) in inserted]
        await self._add_details(created)
        return created

    async def _add_details(self, ns: Sequence[Notification]) -> None:
        """The detail rows of new notifications: one statement per table that has rows for them."""
        if not ns:
            return
        consents, reminders, needs, cancellations = [], [], [], []
        for n in ns:
            key = str(n.id)
            if n.consent_id is not None:
                consents.append({"id": key, "consent_id": str(n.consent_id)})
            if n.meeting_start is not None:
                reminders.append({"id": key, "meeting_start": n.meeting_start})
            if n.meeting_needs is not None:
                needs.append({"id": key, "needs": n.meeting_needs.model_dump_json()})
            if n.status == "cancelled":
                cancellations.append(
                    {
                        "id": key,
                        "reason_code": _code_of(n.status_reason),
                        "reason": n.status_reason or CANCEL_REASONS["consent-withdrawn"],
                        "cancelled_at": n.cancelled_at or n.created_at,
                        "from_status": "pending",
                        "consent_id": str(n.consent_id) if n.consent_id else None,
                    }
                )
        await self.conn.execute(_INSERT_DETAILS, [_details(n) for n in ns])
        for statement, rows in (
            (_INSERT_CONSENT, consents),
            (_INSERT_REMINDER, reminders),
            (_INSERT_NEEDS, needs),
            (_INSERT_CANCELLATION, cancellations),
        ):
            if rows:
                await self.conn.execute(statement, rows)

    async def get(self, notification_id: UUID) -> Notification | None:
        r = (await self.conn.execute(_GET, {"k_id": str(notification_id)})).first()
        return _from_row(r) if r else None

    async def for_case(self, case_id: UUID) -> list[Notification]:
        rows = await self.conn.execute(
            _select()
            .where(_t.c.case_id == str(case_id))
            .order_by(_t.c.created_at, _t.c.recipient_hsa_id, _t.c.channel)
        )
        return [_from_row(r) for r in rows]

    async def deliveries(
        self, *, since: datetime | None = None, until: datetime | None = None, recipient: str | None = None,
        channel: str | None = None, status: str | None = None, case_id: UUID | None = None,
        seen_by: str | None = None, limit: int = 100,
    ) -> list[Notification]:  # fmt: skip
        """Every channel's deliveries, newest first; ``seen_by``: only those an organisation owns or
        received (filtered before the limit)."""
        q = _select()
        for col, value in (
            (_t.c.recipient_hsa_id, recipient), (_t.c.channel, channel), (_t.c.status, status),
            (_t.c.case_id, str(case_id) if case_id else None),
        ):  # fmt: skip
            if value is not None:
                q = q.where(col == value)
        if since is not None:
            q = q.where(_t.c.created_at >= since)
        if until is not None:
            q = q.where(_t.c.created_at < until)
        if seen_by is not None:
            q = q.where(sa.or_(_t.c.owner_hsa_id == seen_by, _t.c.recipient_hsa_id == seen_by))
        rows = await self.conn.execute(q.order_by(_t.c.created_at.desc(), _t.c.id.desc()).limit(limit))
        return [_from_row(r) for r in rows]

    async def due(self, now: datetime, limit: int) -> list[Notification]:
        """Pending and due, or ``sending`` under a lease that ran out (taken over, see :meth:`claim`)."""
        expired = sa.and_(
            _t.c.status == "sending", sa.or_(_t.c.claimed_until.is_(None), _t.c.claimed_until < now)
        )
        rows = await self.conn.execute(
            _select()
            .where(sa.or_(sa.and_(_t.c.status == "pending", _t.c.next_attempt_at <= now), expired))
            .order_by(_t.c.next_attempt_at, _t.c.created_at)
            .limit(limit)
        )
        return [_from_row(r) for r in rows]

    async def claim(
        self, notification_id: UUID, now: datetime, lease: timedelta = DEFAULT_LEASE, by: str | None = None
    ) -> Notification | None:
        """pending → sending, only if still pending and due (a reminder is never claimed early); or a
        ``sending`` row whose lease ran out (its dispatcher died mid-send: it is sent again, with the
        same Message-ID — the at-least-once rule). The claim holds until ``now + lease``."""
        res = await self.conn.execute(
            _CLAIM,
            {
                "k_id": str(notification_id),
                "k_now": now,
                "k_until": now + lease,
                "k_by": by,
                "updated_at": now,
            },
        )
        if res.rowcount != 1:
            return None
        return await self.get(notification_id)

    async def _from_sending(self, notification_id: UUID, attempts: int | None, **values: Any) -> bool:
        stmt = _FROM_SENDING if attempts is not None else _FROM_ANY_SENDING
        res = await self.conn.execute(
            stmt,
            {
                **values,
                "claimed_until": None,
                "claimed_by": None,
                "k_id": str(notification_id),
                "k_attempts": attempts,
            },
        )
        return res.rowcount == 1

    async def mark_sent(
        self, notification_id: UUID, sent_at: datetime, *, attempts: int | None = None
    ) -> bool:
        """sending → sent; with ``attempts``, only under that claim (not one taken over since)."""
        return await self._from_sending(
            notification_id, attempts, status="sent", sent_at=sent_at, updated_at=sent_at, last_error=None
        )

    async def reschedule(
        self,
        notification_id: UUID,
        next_attempt_at: datetime,
        at: datetime,
        error: str,
        *,
        attempts: int | None = None,
        refund: bool = False,
    ) -> bool:
        """sending → pending at ``next_attempt_at``. ``refund``: the attempt does not count (the channel
        itself was unavailable — nothing is wrong with this notification)."""
        if refund:
            stmt = _FROM_SENDING if attempts is not None else _FROM_ANY_SENDING
            res = await self.conn.execute(
                stmt.values(attempts=_t.c.attempts - 1),
                {
                    "status": "pending", "next_attempt_at": next_attempt_at, "updated_at": at,
                    "last_error": error, "claimed_until": None, "claimed_by": None,
                    "k_id": str(notification_id),
                    "k_attempts": attempts,
                },
            )  # fmt: skip
            return res.rowcount == 1
        return await self._from_sending(
            notification_id,
            attempts,
            status="pending",
            next_attempt_at=next_attempt_at,
            updated_at=at,
            last_error=error,
        )

    async def mark_failed(
        self, notification_id: UUID, at: datetime, error: str, *, attempts: int | None = None
    ) -> bool:
        return await self._from_sending(
            notification_id, attempts, status="failed", updated_at=at, last_error=error
        )

    async def release_in_flight(self, now: datetime, owner: str | None = None) -> int:
        """``sending`` rows this dispatcher (``owner``) claimed before it was restarted, and rows
        without a lease (claimed by a version from before leases) → pending. Rows another replica
        claimed are left to it: it may be sending them right now; if it died, :meth:`claim` takes
        them over when their lease runs out."""
        mine = (
            sa.or_(_t.c.claimed_until.is_(None), _t.c.claimed_by == owner)
            if owner
            else _t.c.claimed_until.is_(None)
        )
        res = await self.conn.execute(
            _t.update()
            .where(_t.c.status == "sending", mine)
            .values(status="pending", next_attempt_at=now, claimed_until=None, claimed_by=None)
        )
        return int(res.rowcount or 0)

    async def next_due_at(self) -> datetime | None:
        return await self.conn.scalar(
            sa.select(sa.func.min(_t.c.next_attempt_at)).where(_t.c.status == "pending")
        )

    # ---- consent withdrawal (issue #4) ----------------------------------------------------------
    async def serialize(self, *keys: UUID) -> None:
        """Serialise this transaction with the others about the same consent or case.

        A withdrawal, an invitation under the consent and an escalation of the case must not
        interleave (an invitation committed beside the withdrawal would escape its cancel).
        PostgreSQL: transaction-scoped advisory locks, taken in a fixed order. SQLite: nothing to
        do, every transaction already holds the one write lock from its start (BEGIN IMMEDIATE).
        """
        if self.conn.dialect.name != "postgresql":
            return
        for lock in sorted({int.from_bytes(k.bytes[:8], "big", signed=True) for k in keys}):
            await self.conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock)))

    async def cancel_unsent(
        self,
        *,
        case_id: UUID | None,
        consent_id: UUID,
        reason_code: str,
        at: datetime,
        cause_message_id: str,
    ) -> list[UUID]:
        """``pending``/``sending`` → ``cancelled`` for every notification of the case (or sent under
        the consent), except the withdrawal notices themselves; record why. Returns the ids."""
        scope: sa.ColumnElement[bool] = _t.c.id.in_(
            sa.select(_k.c.id).where(_k.c.consent_id == str(consent_id))
        )
        if case_id is not None:
            scope = sa.or_(_t.c.case_id == str(case_id), scope)
        notices = sa.select(_d.c.id).where(_d.c.kind.in_(NOTICE_KINDS))
        pick = sa.select(_t.c.id, _t.c.status).where(scope, _t.c.status.in_(UNSENT), _t.c.id.not_in(notices))
        if self.conn.dialect.name == "postgresql":
            pick = pick.with_for_update()
        rows = (await self.conn.execute(pick)).all()
        if not rows:
            return []
        ids = [r.id for r in rows]
        await self.conn.execute(
            _t.update()
            .where(_t.c.id.in_(ids), _t.c.status.in_(UNSENT))
            .values(status="cancelled", updated_at=at)
        )
        await self.conn.execute(
            _x.insert(),
            [
                {
                    "id": r.id,
                    "reason_code": reason_code,
                    "reason": CANCEL_REASONS[reason_code],
                    "cancelled_at": at,
                    "from_status": r.status,
                    "consent_id": str(consent_id),
                    "cause_message_id": cause_message_id,
                }
                for r in rows
            ],
        )
        return [UUID(i) for i in ids]

    async def cancel_pending(
        self, ids: list[UUID], *, reason_code: str, at: datetime, cause_message_id: str | None = None
    ) -> list[UUID]:
        """``pending`` → ``cancelled`` for those of these notifications still pending, with the reason
        (a reminder superseded by a new meeting time, of a closed case, or whose meeting began).

        Only ``pending`` rows: one already claimed is being handed to its channel this instant and is
        let go — out-of-date, not a disclosure. What a consent stops goes through
        :meth:`cancel_unsent` under the send gate instead, which takes claimed rows too."""
        if not ids:
            return []
        wanted = [str(i) for i in ids]
        pick = sa.select(_t.c.id, _k.c.consent_id).select_from(_t.outerjoin(_k, _k.c.id == _t.c.id))
        pick = pick.where(_t.c.id.in_(wanted), _t.c.status == "pending")
        if self.conn.dialect.name == "postgresql":
            pick = pick.with_for_update(of=_t)
        rows = (await self.conn.execute(pick)).all()
        if not rows:
            return []
        done = [r.id for r in rows]
        await self.conn.execute(
            _t.update()
            .where(_t.c.id.in_(done), _t.c.status == "pending")
            .values(status="cancelled", updated_at=at)
        )
        await self.conn.execute(
            _x.insert(),
            [
                {
                    "id": r.id,
                    "reason_code": reason_code,
                    "reason": CANCEL_REASONS[reason_code],
                    "cancelled_at": at,
                    "from_status": "pending",
                    "consent_id": r.consent_id,
                    "cause_message_id": cause_message_id,
                }
                for r in rows
            ],
        )
        return [UUID(i) for i in done]

    async def record_meeting(
        self,
        *,
        case_id: UUID,
        invitation_message_id: str,
        meeting_start: datetime,
        occurred_at: datetime,
        at: datetime,
    ) -> bool:
        """Remember an invitation's meeting time; False if this invitation was recorded before."""
        try:
            async with self.conn.begin_nested():
                await self.conn.execute(
                    _m.insert().values(
                        invitation_message_id=invitation_message_id, case_id=str(case_id),
                        meeting_start=meeting_start, invitation_occurred_at=occurred_at, recorded_at=at,
                    )
                )  # fmt: skip
        except IntegrityError:
            return False
        return True

    async def newer_meeting(
        self, case_id: UUID, *, than: datetime, invitation_message_id: str
    ) -> datetime | None:
        """The meeting time of the newest invitation of the case issued after ``than`` (another one)."""
        r = (
            await self.conn.execute(
                sa.select(_m.c.meeting_start)
                .where(
                    _m.c.case_id == str(case_id),
                    _m.c.invitation_occurred_at > than,
                    _m.c.invitation_message_id != invitation_message_id,
                )
                .order_by(_m.c.invitation_occurred_at.desc())
                .limit(1)
            )
        ).first()
        return r.meeting_start if r else None

    async def record_withdrawal(self, w: Withdrawal) -> bool:
        """Remember that a consent no longer holds; False if it was already recorded (kept as is)."""
        try:
            async with self.conn.begin_nested():
                await self.conn.execute(
                    _w.insert().values(
                        consent_id=str(w.consent_id),
                        case_id=str(w.case_id) if w.case_id else None,
                        cause=w.cause,
                        effective_at=w.effective_at,
                        message_id=w.message_id,
                        recorded_at=w.recorded_at,
                    )
                )
        except IntegrityError:
            return False
        return True

    async def withdrawal(self, consent_id: UUID) -> Withdrawal | None:
        r = (await self.conn.execute(sa.select(_w).where(_w.c.consent_id == str(consent_id)))).first()
        if r is None:
            return None
        return Withdrawal(
            consent_id=UUID(r.consent_id),
            case_id=UUID(r.case_id) if r.case_id else None,
            cause=r.cause,
            effective_at=r.effective_at,
            message_id=r.message_id,
            recorded_at=r.recorded_at,
        )

    async def cases_of_consent(self, consent_id: UUID) -> list[UUID]:
        """The cases with notifications sent (or to be sent) under the consent."""
        rows = await self.conn.execute(
            sa.select(_t.c.case_id)
            .distinct()
            .select_from(_t.join(_k, _k.c.id == _t.c.id))
            .where(_k.c.consent_id == str(consent_id))
        )
        return sorted(UUID(r.case_id) for r in rows)

    async def status(self, notification_id: UUID) -> tuple[str, int] | None:
        """(status, attempts) of one notification: the dispatcher's check right before a send."""
        r = (await self.conn.execute(_STATUS, {"k_id": str(notification_id)})).first()
        return (r.status, r.attempts) if r else None
