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
    pending / sending ──consent withdrawn──▶ cancelled   (issue #4)

``sent``, ``failed`` and ``cancelled`` are final. A cancelled notification keeps its reason
(``status_reason``, e.g. "consent withdrawn") and is never sent afterwards.

The cancel-vs-dispatch rule (issue #4): **the cancel wins every race it can still win.**

- the claim (``pending → sending``) is a conditional update: a notification cancelled before it is
  claimed cannot be claimed;
- the cancel also takes notifications that are already claimed (``sending``): a claimed
  notification is sent only if, checked again right before the channel is called, it is still
  ``sending`` under its own claim — the check, the send and the recording of the outcome run inside
  the case's *send gate* (shared), and the withdrawal takes the same gate exclusively for its
  transaction (see :mod:`services.notify.gate`). So a send is either completely over (delivered and
  recorded ``sent``) before the withdrawal commits, or it sees ``cancelled`` and sends nothing;
  nothing is handed to a channel after the withdrawal is committed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID, uuid5

from shared.contracts import MeetingNeeds

Status = Literal["pending", "sending", "sent", "failed", "cancelled"]
ChannelKind = Literal["email", "webhook", "sms"]

FINAL: frozenset[str] = frozenset({"sent", "failed", "cancelled"})
TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"sending", "failed", "cancelled"}),
    "sending": frozenset({"sent", "pending", "failed", "cancelled"}),
    "sent": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}
UNSENT: frozenset[str] = frozenset({"pending", "sending"})
"""Not sent yet (waiting, waiting for a retry, or claimed): what a consent withdrawal cancels."""

CHANNEL_NOT_SUPPORTED = "channel not yet supported"

# why a notification was cancelled (stored with it; FHIR Communication.statusReason)
CANCEL_REASONS: dict[str, str] = {
    "consent-withdrawn": "consent withdrawn",
    "consent-cancelled": "consent cancelled as wrongly registered",
    # reminders only (issue #6)
    "superseded": "superseded by a later invitation with another meeting time",
    "meeting-started": "the meeting had already started",
    "case-closed": "the case was closed",
}
NOTICE_KINDS: frozenset[str] = frozenset({"consent-withdrawn", "case-closed"})
"""Kinds a withdrawal never cancels: the notices that tell participants about it, and that the SIP
ended (no content, no link to more than the consent-gated plan). Neither makes an organisation a
participant of the case."""
CONSENT_BOUND_KINDS: frozenset[str] = frozenset(
    {"invitation", "reminder", "plan-established", "follow-up-due"}
)
"""Kinds sent under a consent: recorded ``cancelled`` when the consent no longer holds (issue #6)."""

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
    # since issue #4: the consent an invitation is sent under; why and when it was cancelled
    consent_id: UUID | None = None
    status_reason: str | None = None
    cancelled_at: datetime | None = None
    # since issue #6: the meeting a reminder is about (stored beside the row; None for other kinds)
    meeting_start: datetime | None = None
    #: the unit that owns (organises) the case: it may read every notification of the case
    owner_hsa_id: str | None = None
    # since issue #22: what the person needs at the meeting (stored beside the row; the webhook's
    # Communication carries it as data); None when nothing was recorded or the kind does not state it
    meeting_needs: MeetingNeeds | None = None

    @property
    def key(self) -> DedupeKey:
        return DedupeKey(self.cause_message_id, self.recipient_hsa_id, self.channel)

    @property
    def email_message_id(self) -> str:
        return email_message_id(self.id)


@dataclass(frozen=True)
class Withdrawal:
    """A consent that no longer holds (withdrawn or cancelled), as notify recorded it. No personal data."""

    consent_id: UUID
    case_id: UUID | None
    cause: str  # withdrawal | cancellation
    effective_at: datetime
    message_id: str
    recorded_at: datetime


def email_message_id(notification_id: UUID) -> str:
    return f"<{notification_id}@sip-suite>"


def check_transition(current: str, new: str) -> None:
    if new not in TRANSITIONS.get(current, frozenset()):
        raise InvalidTransition(f"notification cannot go from {current} to {new}")


def transition(n: Notification, new: Status, at: datetime, **changes: Any) -> Notification:
    check_transition(n.status, new)
    return replace(n, status=new, updated_at=at, **changes)


def cancel_reason_code(cause: str) -> str:
    """The reason code for a ConsentWithdrawn ``cause`` (withdrawal / cancellation)."""
    return "consent-cancelled" if cause == "cancellation" else "consent-withdrawn"


def withdrawal_cause_key(consent_id: UUID, case_id: UUID) -> str:
    """The cause of the notices about one consent's withdrawal in one case (the dedupe key's first part).

    A consent is withdrawn once and cannot be un-withdrawn, so every message about it (a redelivery,
    a re-publish, a later makulering of the same consent) maps to the same key: a participant is told
    once per (withdrawal, recipient, channel).
    """
    return str(uuid5(_NAMESPACE, f"consent-withdrawn|{consent_id}|{case_id}"))


def replaces_earlier_invitation(
    found: Iterable[Notification], *, cause_message_id: str, recipient_hsa_id: str
) -> bool:
    """Whether an invitation (the command ``cause_message_id``) to ``recipient_hsa_id`` replaces an
    earlier one: the case holds an invitation to that organisation from another command which it got
    or will get (not ``cancelled``, not ``failed``). The one rule for an *updated* invitation: its
    subject and text say so ("Ändrad kallelse", :func:`services.notify.templates.render_invitation`);
    its calendar keeps the case's ``UID`` with a higher ``SEQUENCE`` (:mod:`services.notify.ics`).
    An organisation new to the case gets an ordinary invitation, whatever others got before."""
    return any(
        n.kind == "invitation"
        and n.recipient_hsa_id == recipient_hsa_id
        and n.cause_message_id != cause_message_id
        and n.status not in ("cancelled", "failed")
        for n in found
    )


def reminder_cause_key(invitation_message_id: str) -> str:
    """The cause of the reminders an invitation schedules (the dedupe key's first part): one reminder per
    (invitation, recipient, channel), however often the invitation is delivered."""
    return str(uuid5(_NAMESPACE, f"reminder|{invitation_message_id}"))


def reminder_due_at(meeting_start: datetime, now: datetime, *, lead: timedelta) -> datetime | None:
    """When to remind of a meeting: ``lead`` before it — or ``None`` (no reminder) when that moment has
    already passed. A meeting less than ``lead`` ahead is announced by the invitation itself, which goes
    out now with the time; a second mail about the same meeting at once would only be noise."""
    due = meeting_start - lead
    return due if due > now else None


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
