"""What notify needs from the outside world, as Protocols (adapters implement them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, Protocol
from uuid import UUID

from services.notify.domain import Notification, Withdrawal


class SendError(Exception):
    """Sending failed. The text must not contain personal data (it is stored as last_error)."""


class TransientSendError(SendError):
    """Try again later: connection refused/reset, timeout, 4xx reply."""


class ChannelUnavailable(TransientSendError):
    """The channel itself is away (the SMTP server refuses connections, does not answer in time, or
    hangs up): nothing is wrong with this notification. The attempt is not counted against it — a mail
    server down for hours makes no invitation ``failed`` — and the service shows the outage
    (``dependency`` in /readyz and ``sip_dependency_up``) until a send goes through again."""

    def __init__(self, message: str, dependency: str = "smtp") -> None:
        super().__init__(message)
        self.dependency = dependency


class PermanentSendError(SendError):
    """Retrying will not help as things stand: 5xx reply, unsupported server feature."""


@dataclass(frozen=True)
class CalendarAttachment:
    """An iCalendar object sent as ``text/calendar; method=REQUEST`` (and as ``invite.ics``)."""

    ics: str
    method: str = "REQUEST"
    filename: str = "invite.ics"


@dataclass(frozen=True)
class OutgoingEmail:
    message_id: str  # "<...@sip-suite>", the same for every attempt of one notification
    to: tuple[str, ...]
    subject: str
    body: str
    language: str = "sv"
    calendar: CalendarAttachment | None = None


class EmailSender(Protocol):
    async def send(self, email: OutgoingEmail) -> None:
        """Hand the message to the mail server; raise TransientSendError / PermanentSendError."""
        ...


@dataclass(frozen=True)
class Delivery:
    """One attempt at one notification, as every channel sees it.

    ``communication`` is the FHIR R4 Communication (JSON) describing this attempt (``status:
    completed``, ``sent`` = the attempt's time). Building and validating it costs more than sending an
    e-mail, and only the webhook channel posts it, so it is built on first access (from
    ``build_communication``, at most once per attempt); a channel that never reads it never pays for it.
    """

    notification: Notification
    build_communication: Callable[[], dict[str, Any]] = field(repr=False, compare=False)

    @cached_property
    def communication(self) -> dict[str, Any]:
        return self.build_communication()


class ChannelSender(Protocol):
    """The one port every channel (e-mail, webhook, SMS) implements.

    Raise :class:`TransientSendError` for what a later attempt can fix and
    :class:`PermanentSendError` for what it cannot; return normally when the receiver accepted it.
    """

    async def deliver(self, delivery: Delivery) -> None: ...


class NotificationRepository(Protocol):
    async def add(self, n: Notification) -> bool:
        """Insert; False if a notification with the same dedupe key exists (nothing changes)."""
        ...

    async def add_all(self, ns: Sequence[Notification]) -> list[Notification]:
        """Insert each as :meth:`add` (together where the store can); the ones inserted, in order."""
        ...

    async def get(self, notification_id: UUID) -> Notification | None: ...
    async def for_case(self, case_id: UUID) -> list[Notification]: ...
    async def deliveries(
        self, *, since: datetime | None = None, until: datetime | None = None, recipient: str | None = None,
        channel: str | None = None, status: str | None = None, case_id: UUID | None = None,
        seen_by: str | None = None, limit: int = 100,
    ) -> list[Notification]:  # fmt: skip
        """Every channel's deliveries (created in [since, until)), newest first; ``seen_by``: only
        those an organisation owns or received (filtered before the limit)."""
        ...

    async def due(self, now: datetime, limit: int) -> list[Notification]: ...
    async def claim(
        self, notification_id: UUID, now: datetime, lease: timedelta = ..., by: str | None = None
    ) -> Notification | None:
        """pending → sending with attempts+1, only if still pending and due, or sending under an
        expired lease (taken over); the claim holds until ``now + lease`` (None otherwise)."""
        ...

    async def mark_sent(
        self, notification_id: UUID, sent_at: datetime, *, attempts: int | None = None
    ) -> bool: ...

    async def reschedule(
        self,
        notification_id: UUID,
        next_attempt_at: datetime,
        at: datetime,
        error: str,
        *,
        attempts: int | None = None,
        refund: bool = False,
    ) -> bool: ...
    async def mark_failed(
        self, notification_id: UUID, at: datetime, error: str, *, attempts: int | None = None
    ) -> bool: ...
    async def release_in_flight(self, now: datetime, owner: str | None = None) -> int:
        """sending claimed by ``owner`` or without a lease → pending (due now); the crash rule."""
        ...

    async def next_due_at(self) -> datetime | None: ...

    # ---- consent withdrawal (issue #4) ----
    async def serialize(self, *keys: UUID) -> None:
        """Serialise with other transactions about the same consent or case (see the adapter)."""
        ...

    async def status(self, notification_id: UUID) -> tuple[str, int] | None:
        """(status, attempts): the dispatcher's check right before a send."""
        ...

    async def cancel_unsent(
        self, *, case_id: UUID | None, consent_id: UUID, reason_code: str, at: datetime, cause_message_id: str
    ) -> list[UUID]:
        """pending/sending → cancelled for the case (or the consent), notices excepted; the ids."""
        ...

    async def cancel_pending(
        self, ids: list[UUID], *, reason_code: str, at: datetime, cause_message_id: str | None = None
    ) -> list[UUID]:
        """pending → cancelled (only rows still pending) with the reason; the ids (issue #6)."""
        ...

    async def record_meeting(
        self, *, case_id: UUID, invitation_message_id: str, meeting_start: datetime, occurred_at: datetime,
        at: datetime,
    ) -> bool: ...  # fmt: skip
    async def newer_meeting(
        self, case_id: UUID, *, than: datetime, invitation_message_id: str
    ) -> datetime | None: ...
    async def record_withdrawal(self, w: Withdrawal) -> bool: ...
    async def withdrawal(self, consent_id: UUID) -> Withdrawal | None: ...
    async def cases_of_consent(self, consent_id: UUID) -> list[UUID]: ...
