"""notify's repositories in memory, for handler tests: the same port as the SQL store
(:class:`services.notify.ports.NotificationRepository`), no database.

:class:`InMemoryNotifyUnitOfWork` is the unit of work a handler test builds in place of the SQL one
(:class:`services.notify.adapters.unit_of_work.SqlNotifyUnitOfWork`); ``async with`` it commits, or
restores the state from before the block when an exception leaves it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from services.notify.domain import CANCEL_REASONS, NOTICE_KINDS, UNSENT, Notification, Withdrawal
from services.notify.handlers.table import NotifyDeps
from shared.unit_of_work import InMemoryUnitOfWork

DEFAULT_LEASE = timedelta(seconds=300)


@dataclass
class _Meeting:
    case_id: UUID
    meeting_start: datetime
    occurred_at: datetime


@dataclass
class InMemoryNotificationRepository:
    """Notifications in a dict, in the order they were added; the SQL store's rules (dedupe key,
    claim lease, what a cancel touches) on plain objects."""

    rows: dict[UUID, Notification] = field(default_factory=dict)
    leases: dict[UUID, tuple[datetime | None, str | None]] = field(default_factory=dict)
    cancellations: dict[UUID, dict[str, Any]] = field(default_factory=dict)
    withdrawals: dict[UUID, Withdrawal] = field(default_factory=dict)
    meetings: dict[str, _Meeting] = field(default_factory=dict)

    async def add(self, n: Notification) -> bool:
        if n.id in self.rows or any(o.key == n.key for o in self.rows.values()):
            return False
        if n.status == "cancelled":
            n = replace(
                n,
                status_reason=n.status_reason or CANCEL_REASONS["consent-withdrawn"],
                cancelled_at=n.cancelled_at or n.created_at,
            )
        self.rows[n.id] = n
        return True

    async def add_all(self, ns: Sequence[Notification]) -> list[Notification]:
        return [n for n in ns if await self.add(n)]

    async def get(self, notification_id: UUID) -> Notification | None:
        return self.rows.get(notification_id)

    async def for_case(self, case_id: UUID) -> list[Notification]:
        found = [n for n in self.rows.values() if n.case_id == case_id]
        return sorted(found, key=lambda n: (n.created_at, n.recipient_hsa_id, n.channel))

    async def deliveries(
        self, *, since: datetime | None = None, until: datetime | None = None, recipient: str | None = None,
        channel: str | None = None, status: str | None = None, case_id: UUID | None = None,
        seen_by: str | None = None, limit: int = 100,
    ) -> list[Notification]:  # fmt: skip
        wanted = {"recipient_hsa_id": recipient, "channel": channel, "status": status, "case_id": case_id}
        found = [
            n
            for n in self.rows.values()
            if all(value is None or getattr(n, name) == value for name, value in wanted.items())
            and (since is None or n.created_at >= since)
            and (until is None or n.created_at < until)
            and (seen_by is None or seen_by in (n.owner_hsa_id, n.recipient_hsa_id))
        ]
        return sorted(found, key=lambda n: (n.created_at, str(n.id)), reverse=True)[:limit]

    def _expired(self, n: Notification, now: datetime) -> bool:
        until, _ = self.leases.get(n.id, (None, None))
        return n.status == "sending" and (until is None or until < now)

    async def due(self, now: datetime, limit: int) -> list[Notification]:
        found = [
            n
            for n in self.rows.values()
            if (n.status == "pending" and n.next_attempt_at <= now) or self._expired(n, now)
        ]
        return sorted(found, key=lambda n: (n.next_attempt_at, n.created_at))[:limit]

    async def claim(
        self, notification_id: UUID, now: datetime, lease: timedelta = DEFAULT_LEASE, by: str | None = None
    ) -> Notification | None:
        n = self.rows.get(notification_id)
        if n is None or not ((n.status == "pending" and n.next_attempt_at <= now) or self._expired(n, now)):
            return None
        n = self.rows[n.id] = replace(n, status="sending", attempts=n.attempts + 1, updated_at=now)
        self.leases[n.id] = (now + lease, by)
        return n

    def _from_sending(self, notification_id: UUID, attempts: int | None, **values: Any) -> bool:
        n = self.rows.get(notification_id)
        if n is None or n.status != "sending" or (attempts is not None and n.attempts != attempts):
            return False
        self.rows[n.id] = replace(n, **values)
        self.leases.pop(n.id, None)
        return True

    async def mark_sent(
        self, notification_id: UUID, sent_at: datetime, *, attempts: int | None = None
    ) -> bool:
        return self._from_sending(
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
        n = self.rows.get(notification_id)
        count = {"attempts": n.attempts - 1} if refund and n is not None else {}
        return self._from_sending(
            notification_id, attempts, status="pending", next_attempt_at=next_attempt_at, updated_at=at,
            last_error=error, **count,
        )  # fmt: skip

    async def mark_failed(
        self, notification_id: UUID, at: datetime, error: str, *, attempts: int | None = None
    ) -> bool:
        return self._from_sending(notification_id, attempts, status="failed", updated_at=at, last_error=error)

    async def release_in_flight(self, now: datetime, owner: str | None = None) -> int:
        released = 0
        for n in list(self.rows.values()):
            until, by = self.leases.get(n.id, (None, None))
            if n.status == "sending" and (until is None or (owner is not None and by == owner)):
                self.rows[n.id] = replace(n, status="pending", next_attempt_at=now)
                self.leases.pop(n.id, None)
                released += 1
        return released

    async def next_due_at(self) -> datetime | None:
        return min((n.next_attempt_at for n in self.rows.values() if n.status == "pending"), default=None)

    async def serialize(self, *keys: UUID) -> None:
        """Nothing to do: one unit of work at a time in a test."""

    async def status(self, notification_id: UUID) -> tuple[str, int] | None:
        n = self.rows.get(notification_id)
        return (n.status, n.attempts) if n else None

    def _cancel(
        self, ids: list[UUID], *, reason_code: str, at: datetime, consent_id: UUID | None, cause: str | None
    ) -> list[UUID]:
        for i in ids:
            n = self.rows[i]
            self.cancellations[i] = {"from": n.status, "consent_id": consent_id, "cause": cause}
            reason = CANCEL_REASONS[reason_code]
            self.rows[i] = replace(
                n, status="cancelled", updated_at=at, status_reason=reason, cancelled_at=at
            )
        return ids

    async def cancel_unsent(
        self, *, case_id: UUID | None, consent_id: UUID, reason_code: str, at: datetime, cause_message_id: str
    ) -> list[UUID]:
        ids = [
            n.id
            for n in self.rows.values()
            if (n.consent_id == consent_id or (case_id is not None and n.case_id == case_id))
            and n.status in UNSENT
            and n.kind not in NOTICE_KINDS
        ]
        cause = cause_message_id
        return self._cancel(ids, reason_code=reason_code, at=at, consent_id=consent_id, cause=cause)

    async def cancel_pending(
        self, ids: list[UUID], *, reason_code: str, at: datetime, cause_message_id: str | None = None
    ) -> list[UUID]:
        pending = [i for i in ids if i in self.rows and self.rows[i].status == "pending"]
        done: list[UUID] = []
        for i in pending:
            consent_id = self.rows[i].consent_id
            cause = cause_message_id
            done += self._cancel([i], reason_code=reason_code, at=at, consent_id=consent_id, cause=cause)
        return done

    async def record_meeting(
        self, *, case_id: UUID, invitation_message_id: str, meeting_start: datetime, occurred_at: datetime,
        at: datetime,
    ) -> bool:  # fmt: skip
        if invitation_message_id in self.meetings:
            return False
        self.meetings[invitation_message_id] = _Meeting(case_id, meeting_start, occurred_at)
        return True

    async def newer_meeting(
        self, case_id: UUID, *, than: datetime, invitation_message_id: str
    ) -> datetime | None:
        later = [
            m
            for k, m in self.meetings.items()
            if m.case_id == case_id and m.occurred_at > than and k != invitation_message_id
        ]
        return max(later, key=lambda m: m.occurred_at).meeting_start if later else None

    async def record_withdrawal(self, w: Withdrawal) -> bool:
        if w.consent_id in self.withdrawals:
            return False
        self.withdrawals[w.consent_id] = w
        return True

    async def withdrawal(self, consent_id: UUID) -> Withdrawal | None:
        return self.withdrawals.get(consent_id)

    async def cases_of_consent(self, consent_id: UUID) -> list[UUID]:
        return sorted({n.case_id for n in self.rows.values() if n.consent_id == consent_id})


class InMemoryNotifyUnitOfWork(InMemoryUnitOfWork):
    """notify's unit of work in memory: ``notifications`` and the dependencies the handlers use."""

    def __init__(self, deps: NotifyDeps, notifications: InMemoryNotificationRepository | None = None) -> None:
        super().__init__()
        self.deps = deps
        self.notifications = notifications or InMemoryNotificationRepository()

    def snapshot(self) -> Any:
        return (super().snapshot(), copy.deepcopy(self.notifications))

    def restore(self, state: Any) -> None:
        base, saved = state
        vars(self.notifications).update(vars(saved))  # in place: a test's reference stays good
        super().restore(base)
