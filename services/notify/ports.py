"""What notify needs from the outside world, as Protocols (adapters implement them)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

from services.notify.domain import Notification


class SendError(Exception):
    """Sending failed. The text must not contain personal data (it is stored as last_error)."""


class TransientSendError(SendError):
    """Try again later: connection refused/reset, timeout, 4xx reply."""


class PermanentSendError(SendError):
    """Retrying will not help as things stand: 5xx reply, unsupported server feature."""


@dataclass(frozen=True)
class OutgoingEmail:
    message_id: str  # "<...@sip-suite>", the same for every attempt of one notification
    to: tuple[str, ...]
    subject: str
    body: str
    language: str = "sv"


class EmailSender(Protocol):
    async def send(self, email: OutgoingEmail) -> None:
        """Hand the message to the mail server; raise TransientSendError / PermanentSendError."""
        ...


class NotificationRepository(Protocol):
    async def add(self, n: Notification) -> bool:
        """Insert; False if a notification with the same dedupe key exists (nothing changes)."""
        ...

    async def get(self, notification_id: UUID) -> Notification | None: ...
    async def for_case(self, case_id: UUID) -> list[Notification]: ...
    async def due(self, now: datetime, limit: int) -> list[Notification]: ...
    async def claim(self, notification_id: UUID, now: datetime) -> Notification | None:
        """pending → sending with attempts+1, only if still pending (None otherwise)."""
        ...

    async def mark_sent(self, notification_id: UUID, sent_at: datetime) -> bool: ...
    async def reschedule(
        self, notification_id: UUID, next_attempt_at: datetime, at: datetime, error: str
    ) -> bool: ...
    async def mark_failed(self, notification_id: UUID, at: datetime, error: str) -> bool: ...
    async def release_in_flight(self, now: datetime) -> int:
        """sending → pending (due now); the crash rule. Returns how many."""
        ...

    async def next_due_at(self) -> datetime | None: ...
