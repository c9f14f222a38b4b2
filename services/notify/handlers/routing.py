"""The rules every notify use case shares: how an organisation is reached (its routes), what a
notification may carry about the person (the meeting needs, nothing else), when a consent that no
longer holds stops a notification, who counts as a participant, and the one function that builds
the notification record (:func:`notification_record`). No transport here."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from services.notify.domain import (
    CANCEL_REASONS,
    NOTICE_KINDS,
    ChannelKind,
    DedupeKey,
    Notification,
    Status,
    Withdrawal,
    cancel_reason_code,
)
from services.notify.templates import RenderedEmail, Sender
from shared.contracts import MeetingNeeds
from shared.directory import EmailChannel, Organisation, SmsChannel, WebhookChannel

NO_CHANNEL = "organisation has no contact channel in the directory"


@dataclass(frozen=True)
class Route:
    """One way to reach an organisation: a channel kind and its address (or why there is none)."""

    channel: ChannelKind
    address: str | None
    short_text: bool = False  # SMS: the short text
    status: Status = "pending"
    last_error: str | None = None


def routes(org: Organisation) -> list[Route]:
    """Every channel kind of an organisation, once: all its e-mail addresses in one mail, its first
    webhook, all its SMS numbers; none at all → one ``failed`` e-mail so nothing is dropped silently."""
    out: list[Route] = []
    emails = emails_of(org)
    if emails:
        out.append(Route("email", ", ".join(emails)))
    hooks = [c.url for c in org.channels if isinstance(c, WebhookChannel)]
    if hooks:
        out.append(Route("webhook", hooks[0]))
    numbers = [c.number for c in org.channels if isinstance(c, SmsChannel)]
    if numbers:
        out.append(Route("sms", ", ".join(numbers), short_text=True))
    if not org.channels:
        out.append(Route("email", None, status="failed", last_error=NO_CHANNEL))
    return out


@dataclass(frozen=True)
class InvitationOptions:
    """Settings the invitation use case needs (taken from NotifySettings by the composition root)."""

    mail_from: str = "sip-suite@localhost"
    meeting_default_minutes: int = 60
    case_url_template: str = "http://127.0.0.1:8080/cases/{case_id}"
    reminder_hours: float = 24.0

    @classmethod
    def of(cls, settings: Any | None) -> InvitationOptions:
        if settings is None:
            return cls()
        return cls(
            mail_from=settings.mail_from,
            meeting_default_minutes=settings.meeting_default_minutes,
            case_url_template=settings.case_url_template,
            reminder_hours=settings.reminder_hours,
        )

    @property
    def reminder_lead(self) -> timedelta:
        """How long before the meeting the reminder goes out."""
        return timedelta(hours=self.reminder_hours)

    def case_url(self, case_id: UUID) -> str:
        """Where the owning unit reads the case (planning's case view; sign-in is planning's)."""
        return self.case_url_template.replace("{case_id}", str(case_id))


def needs_of(needs: MeetingNeeds | None, interpreter_language: str | None) -> MeetingNeeds | None:
    """What the person needs, as kept with each notification (the webhook's Communication carries it):
    the command's needs, or only the interpreter language of a command from before issue #22."""
    if needs is None and interpreter_language:
        return MeetingNeeds(interpreter_language=interpreter_language)
    if needs is not None and interpreter_language and not needs.interpreter_language:
        return needs.model_copy(update={"interpreter_language": interpreter_language})
    return None if needs is None or needs.empty else needs


def stopped(n: Notification, withdrawn: Withdrawal) -> Notification:
    """Stored from the start as cancelled: the consent it would be sent under no longer holds."""
    if n.status != "pending":
        return n
    return replace(
        n,
        status="cancelled",
        status_reason=CANCEL_REASONS[cancel_reason_code(withdrawn.cause)],
        cancelled_at=n.created_at,
    )


def sender_of(org: Organisation) -> Sender:
    """Who asks, as an invitation names it: the owning unit and its functional contact (if any)."""
    c = org.contact
    if c is None:
        return Sender(unit=org.name)
    return Sender(unit=org.name, contact=c.name, phone=c.phone, email=c.email)


def emails_of(org: Organisation) -> list[str]:
    return [c.address for c in org.channels if isinstance(c, EmailChannel)]


def participants(found: list[Notification]) -> list[Notification]:
    """The notifications that make an organisation a participant of the case (not the notices)."""
    return [n for n in found if n.kind not in NOTICE_KINDS]


def notification_record(
    route: Route,
    text: RenderedEmail,
    *,
    cause: str,
    recipient_hsa_id: str,
    kind: str,
    case_id: UUID,
    case_reference: str,
    correlation_id: str | None,
    language: str,
    now: datetime,
    status: Status | None = None,
    last_error: str | None = None,
    ics: str | None = None,
    plan_url: str | None = None,
    sender_hsa_id: str | None = None,
    consent_id: UUID | None = None,
    owner_hsa_id: str | None = None,
    meeting_needs: MeetingNeeds | None = None,
) -> Notification:
    """The notification of one (cause, recipient, channel kind), due ``now``: its id derives from that
    key, so a redelivered cause adds nothing. The route gives the channel, the address, the status and
    the error unless ``status``/``last_error`` override them; an SMS carries the short text; a
    calendar (``ics``) rides only on a pending e-mail."""
    key = DedupeKey(cause, recipient_hsa_id, route.channel)
    return Notification(
        id=key.notification_id(),
        cause_message_id=key.cause_message_id,
        case_id=case_id,
        case_reference=case_reference,
        correlation_id=correlation_id,
        recipient_hsa_id=recipient_hsa_id,
        channel=route.channel,
        address=route.address,
        language=language,
        subject=text.subject,
        body=text.sms if route.short_text else text.body,
        status=route.status if status is None else status,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
        updated_at=now,
        last_error=last_error or route.last_error,
        kind=kind,
        plan_url=plan_url,
        sender_hsa_id=sender_hsa_id,
        ics=ics if route.channel == "email" and route.status == "pending" else None,
        consent_id=consent_id,
        owner_hsa_id=owner_hsa_id,
        meeting_needs=meeting_needs,
    )
