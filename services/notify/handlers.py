"""Notify use cases: turn a SendInvitation into notifications. No transport here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from services.notify.domain import ChannelKind, DedupeKey, Notification, Status
from services.notify.ics import CalendarParty, invitation_ics
from services.notify.ports import NotificationRepository
from services.notify.templates import Meeting, RenderedEmail, UnsafeText, render_invitation
from shared.clock import Clock
from shared.contracts import SendInvitation
from shared.directory import (
    Directory,
    EmailChannel,
    Organisation,
    SmsChannel,
    UnknownRecipient,
    WebhookChannel,
)
from shared.errors import PermanentError

NO_CHANNEL = "organisation has no contact channel in the directory"


class InvitationRefused(PermanentError):
    """The invitation cannot be sent as it stands (the reason goes to the DLQ)."""


@dataclass(frozen=True)
class InvitationOptions:
    """Settings the invitation use case needs (taken from NotifySettings by the composition root)."""

    mail_from: str = "sip-suite@localhost"
    meeting_default_minutes: int = 60

    @classmethod
    def of(cls, settings: Any | None) -> InvitationOptions:
        if settings is None:
            return cls()
        return cls(mail_from=settings.mail_from, meeting_default_minutes=settings.meeting_default_minutes)


def _recipients(cmd: SendInvitation, directory: Directory) -> list[Organisation]:
    orgs: list[Organisation] = []
    for hsa_id in dict.fromkeys(cmd.recipients):  # a recipient named twice is invited once
        org = directory.get(hsa_id)
        if org is None:
            raise UnknownRecipient(f"recipient {hsa_id} is not in the organisation directory")
        orgs.append(org)
    return orgs


def _notification(
    cmd: SendInvitation,
    text: RenderedEmail,
    *,
    recipient: str,
    channel: ChannelKind,
    address: str | None,
    status: Status,
    last_error: str | None,
    clock: Clock,
    body: str | None = None,
    sender_hsa_id: str | None = None,
    ics: str | None = None,
) -> Notification:
    now = clock.now()
    key = DedupeKey(str(cmd.message_id), recipient, channel)
    return Notification(
        id=key.notification_id(),
        cause_message_id=key.cause_message_id,
        case_id=cmd.case_id,
        case_reference=cmd.case_reference,
        correlation_id=cmd.correlation_id,
        recipient_hsa_id=recipient,
        channel=channel,
        address=address,
        language=cmd.language,
        subject=text.subject,
        body=text.body if body is None else body,
        status=status,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
        updated_at=now,
        last_error=last_error,
        kind="invitation",
        plan_url=cmd.plan_url,
        sender_hsa_id=sender_hsa_id,
        ics=ics,
    )


def _meeting(cmd: SendInvitation) -> Meeting | None:
    if cmd.meeting_start is None:
        # no time, no calendar event: a place or link without a time is not rendered either
        if cmd.meeting_end is not None:
            raise InvitationRefused("meeting_end: needs meeting_start")
        return None
    if cmd.meeting_end is not None and cmd.meeting_end <= cmd.meeting_start:
        raise InvitationRefused("meeting_end: must be after meeting_start")
    return Meeting(
        start=cmd.meeting_start,
        end=cmd.meeting_end,
        location=cmd.meeting_location,
        video_url=cmd.meeting_video_url,
    )


def _organizer(cmd: SendInvitation, orgs: list[Organisation], directory: Directory) -> Organisation:
    """The owning unit: named in the command, else the invited primary-care unit (LUS), else the first."""
    if cmd.organizer_hsa_id:
        org = directory.get(cmd.organizer_hsa_id)
        if org is None:
            raise UnknownRecipient(f"organizer {cmd.organizer_hsa_id} is not in the organisation directory")
        return org
    return next((o for o in orgs if o.kind == "primary_care_unit"), orgs[0])


def _emails(org: Organisation) -> list[str]:
    return [c.address for c in org.channels if isinstance(c, EmailChannel)]


def _calendar(
    cmd: SendInvitation,
    meeting: Meeting,
    organizer: Organisation,
    orgs: list[Organisation],
    options: InvitationOptions,
) -> str:
    own = _emails(organizer)
    attendees = tuple(CalendarParty(o.name, o.hsa_id, _emails(o)[0]) for o in orgs if _emails(o))
    return invitation_ics(
        case_id=cmd.case_id,
        case_reference=cmd.case_reference,
        meeting=meeting,
        organizer=CalendarParty(organizer.name, organizer.hsa_id, own[0] if own else options.mail_from),
        attendees=attendees,
        plan_url=cmd.plan_url,
        issued_at=cmd.occurred_at,
        language=cmd.language,
        interpreter_language=cmd.interpreter_language,
        default_duration=timedelta(minutes=options.meeting_default_minutes),
    )


async def accept_invitation(
    cmd: SendInvitation,
    *,
    directory: Directory,
    repo: NotificationRepository,
    clock: Clock,
    options: InvitationOptions | None = None,
) -> list[Notification]:
    """Record one notification per recipient organisation and channel kind; return the new ones.

    - e-mail: one ``pending`` notification per organisation, addressed to all of its e-mail
      channels (the dedupe key is per channel *kind*), with the calendar invitation attached when
      the command gives a meeting time (none is invented when it does not);
    - webhook: one ``pending`` notification to the organisation's (first) webhook URL, posted as a
      signed FHIR Communication;
    - SMS: one ``pending`` notification with the short text, to all of its numbers;
    - an organisation without any channel is recorded ``failed`` so nothing is dropped silently.

    An unknown recipient or organizer, or a text that would carry personal or health data, refuses
    the whole command (PermanentError → DLQ with the reason), before anything is stored.
    """
    options = options or InvitationOptions()
    meeting = _meeting(cmd)
    orgs = _recipients(cmd, directory)
    organizer = _organizer(cmd, orgs, directory)
    try:
        text = render_invitation(
            case_reference=cmd.case_reference,
            invitation_due_at=cmd.invitation_due_at,
            plan_url=cmd.plan_url,
            language=cmd.language,
            meeting=meeting,
            interpreter_language=cmd.interpreter_language,
        )
        ics = _calendar(cmd, meeting, organizer, orgs, options) if meeting is not None else None
    except UnsafeText as exc:
        raise InvitationRefused(str(exc)) from None

    planned: list[Notification] = []

    def plan(org: Organisation, channel: ChannelKind, address: str | None, **kw: Any) -> None:
        planned.append(
            _notification(
                cmd, text, recipient=org.hsa_id, channel=channel, address=address,
                clock=clock, sender_hsa_id=organizer.hsa_id, **kw,
            )
        )  # fmt: skip

    for org in orgs:
        emails = _emails(org)
        if emails:
            plan(org, "email", ", ".join(emails), status="pending", last_error=None, ics=ics)
        hooks = [c.url for c in org.channels if isinstance(c, WebhookChannel)]
        if hooks:
            plan(org, "webhook", hooks[0], status="pending", last_error=None)
        numbers = [c.number for c in org.channels if isinstance(c, SmsChannel)]
        if numbers:
            plan(org, "sms", ", ".join(numbers), status="pending", last_error=None, body=text.sms)
        if not org.channels:
            plan(org, "email", None, status="failed", last_error=NO_CHANNEL)
    return [n for n in planned if await repo.add(n)]
