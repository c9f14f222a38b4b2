"""Notifications: the pure rules. No I/O here.

A notification is one message to one recipient organisation over one channel, caused by one command.
Its identity is the dedupe key ``(cause message_id, recipient HSA-id, channel)``: the same command
seen twice can never produce a second notification, and the notification id is derived from the key
(UUIDv5) so even the e-mail ``Message-ID`` is the same for every attempt.

States::

    pending ──claim──▶ sending ──ok──▶ sent
       ▲                  │
       └──transient error─┤
                          └──permanent error / attempts exhausted──▶ failed
    pending ──(no channel / not sendable)──▶ failed

``sent`` and ``failed`` are final.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal
from uuid import UUID, uuid5

Status = Literal["pending", "sending", "sent", "failed"]
ChannelKind = Literal["email", "webhook", "sms"]

FINAL: frozenset[str] = frozenset({"sent", "failed"})
TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"sending", "failed"}),
    "sending": frozenset({"sent", "pending", "failed"}),
    "sent": frozenset(),
    "failed": frozenset(),
}

CHANNEL_NOT_SUPPORTED = "channel not yet supported"

_NAMESPACE = UUID("2f1d7c1e-8a57-4a0b-9a55-5c3b1f0e2d61")


class InvalidTransition(Exception):
    pass


@dataclass(frozen=True)
class DedupeKey:
    cause_message_id: str
    recipient_hsa_id: str
    channel: ChannelKind

    def notification_id(self) -> UUID:
        """Deterministic: the same cause, recipient and channel always give the same id."""
        return uuid5(_NAMESPACE, f"{self.cause_message_id}|{self.recipient_hsa_id}|{self.channel}")


@dataclass(frozen=True)
class Notification:
    id: UUID
    cause_message_id: str
    case_id: UUID
    case_reference: str
    correlation_id: str | None
    recipient_hsa_id: str
    channel: ChannelKind
    address: str | None
    language: str
    subject: str
    body: str
    status: Status
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None = None
    last_error: str | None = None
    # since issue #6 (stored beside the row, see adapters/store.py): what kind of notification,
    # where the plan is read, the owning unit that sends it, the calendar invitation (e-mail only)
    kind: str = "invitation"
    plan_url: str | None = None
    sender_hsa_id: str | None = None
    ics: str | None = None

    @property
    def key(self) -> DedupeKey:
        return DedupeKey(self.cause_message_id, self.recipient_hsa_id, self.channel)

    @property
    def email_message_id(self) -> str:
        return email_message_id(self.id)


def email_message_id(notification_id: UUID) -> str:
    return f"<{notification_id}@sip-suite>"


def check_transition(current: str, new: str) -> None:
    if new not in TRANSITIONS.get(current, frozenset()):
        raise InvalidTransition(f"notification cannot go from {current} to {new}")


def transition(n: Notification, new: Status, at: datetime, **changes: object) -> Notification:
    check_transition(n.status, new)
    return replace(n, status=new, updated_at=at, **changes)  # type: ignore[arg-type]


def backoff(attempt: int, *, base_seconds: float, max_seconds: float) -> timedelta:
    """Delay before the next try after ``attempt`` failed sends (attempt ≥ 1): base·2^(n-1), capped."""
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    exponent = min(attempt - 1, 60)  # 2**60 is already far past any cap; avoid huge floats
    return timedelta(seconds=min(base_seconds * (2**exponent), max_seconds))


def after_failure(*, attempts: int, max_attempts: int, permanent: bool) -> Status:
    """Where a notification goes after a failed send: retry (pending) or give up (failed)."""
    if permanent or attempts >= max_attempts:
        return "failed"
    return "pending"
