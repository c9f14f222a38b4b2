"""Notify use cases: turn a SendInvitation (with its reminders), a CaseNotice, a DeadlineBreached or a
ConsentWithdrawn into notifications (and cancellations). No transport here."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta
from typing import Any
from uuid import UUID

from services.notify.domain import (
    CANCEL_REASONS,
    CONSENT_BOUND_KINDS,
    NOTICE_KINDS,
    ChannelKind,
    DedupeKey,
    Notification,
    Status,
    Withdrawal,
    cancel_reason_code,
    reminder_cause_key,
    reminder_due_at,
    replaces_earlier_invitation,
    withdrawal_cause_key,
)
from services.notify.ics import (
    CalendarParty,
    calendar_event,
    calendar_method,
    cancellation_ics,
    invitation_ics,
    next_sequence,
    sequence_for,
)
from services.notify.ports import NotificationRepository
from services.notify.templates import (
    STOCKHOLM,
    ClosedReason,
    Meeting,
    RenderedEmail,
    Sender,
    UnsafeText,
    deadline_of,
    render_case_closed,
    render_consent_withdrawn,
    render_deadline_escalation,
    render_follow_up_due,
    render_invitation,
    render_plan_established,
    render_reminder,
)
from shared.clock import Clock
from shared.contracts import CaseNotice, ConsentWithdrawn, DeadlineBreached, MeetingNeeds, SendInvitation
from shared.directory import (
    Directory,
    EmailChannel,
    Organisation,
    SmsChannel,
    UnknownRecipient,
    WebhookChannel,
)
from shared.errors import PermanentError

log = logging.getLogger("sip.notify.handlers")

NO_CHANNEL = "organisation has no contact channel in the directory"
NOTICE_UNSAFE = "withdrawal notice not rendered: {}"


class InvitationRefused(PermanentError):
    """The invitation cannot be sent as it stands (the reason goes to the DLQ)."""


class EscalationRefused(PermanentError):
    """The escalation cannot be sent as it stands (the reason goes to the DLQ)."""


class NoticeRefused(PermanentError):
    """The case notice cannot be sent as it stands (the reason goes to the DLQ)."""


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
    emails = _emails(org)
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
        consent_id=cmd.consent_id,
        owner_hsa_id=cmd.organizer_hsa_id or sender_hsa_id,
        meeting_needs=_needs(cmd.meeting_needs, cmd.interpreter_language),
    )


def _needs(needs: MeetingNeeds | None, interpreter_language: str | None) -> MeetingNeeds | None:
    """What the person needs, as kept with each notification (the webhook's Communication carries it):
    the command's needs, or only the interpreter language of a command from before issue #22."""
    if needs is None and interpreter_language:
        return MeetingNeeds(interpreter_language=interpreter_language)
    if needs is not None and interpreter_language and not needs.interpreter_language:
        return needs.model_copy(update={"interpreter_language": interpreter_language})
    return None if needs is None or needs.empty else needs


def _stopped(n: Notification, withdrawn: Withdrawal) -> Notification:
    """Stored from the start as cancelled: the consent it would be sent under no longer holds."""
    if n.status != "pending":
        return n
    return replace(
        n,
        status="cancelled",
        status_reason=CANCEL_REASONS[cancel_reason_code(withdrawn.cause)],
        cancelled_at=n.created_at,
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


def sender_of(org: Organisation) -> Sender:
    """Who asks, as an invitation names it: the owning unit and its functional contact (if any)."""
    c = org.contact
    if c is None:
        return Sender(unit=org.name)
    return Sender(unit=org.name, contact=c.name, phone=c.phone, email=c.email)


def _emails(org: Organisation) -> list[str]:
    return [c.address for c in org.channels if isinstance(c, EmailChannel)]


def _calendar(
    cmd: SendInvitation,
    meeting: Meeting,
    organizer: Organisation,
    orgs: list[Organisation],
    options: InvitationOptions,
    sequence: int,
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
        sequence=sequence,
        language=cmd.language,
        interpreter_language=cmd.interpreter_language,
        meeting_needs=cmd.meeting_needs,
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

    With a meeting time it also schedules the reminders (:func:`schedule_reminders`).

    The text names the owning unit and its functional contact (:func:`sender_of`). An organisation
    invited before in this case by another command gets the *updated* invitation ("Ändrad kallelse",
    :func:`~services.notify.domain.replaces_earlier_invitation`); the calendar keeps the case's ``UID``
    with a ``SEQUENCE`` above every calendar of the case issued before
    (:func:`~services.notify.ics.next_sequence`).

    An unknown recipient or organizer, or a text that would carry personal or health data, refuses
    the whole command (PermanentError → DLQ with the reason), before anything is stored. Returns the
    new invitations, then the new reminders.
    """
    options = options or InvitationOptions()
    meeting = _meeting(cmd)
    orgs = _recipients(cmd, directory)
    organizer = _organizer(cmd, orgs, directory)
    cause = str(cmd.message_id)
    await repo.serialize(cmd.consent_id, cmd.case_id)
    found = await repo.for_case(cmd.case_id)
    try:
        texts = {
            replaces: render_invitation(
                case_reference=cmd.case_reference,
                plan_url=cmd.plan_url,
                language=cmd.language,
                meeting=meeting,
                interpreter_language=cmd.interpreter_language,
                meeting_needs=cmd.meeting_needs,
                sender=sender_of(organizer),
                replaces_earlier=replaces,
            )
            for replaces in (False, True)
        }
        sequence = next_sequence(
            cmd.occurred_at, (n.ics for n in found if n.ics and n.cause_message_id != cause)
        )
        ics = _calendar(cmd, meeting, organizer, orgs, options, sequence) if meeting is not None else None
        reminder = (
            render_reminder(
                case_reference=cmd.case_reference,
                meeting=meeting,
                plan_url=cmd.plan_url,
                language=cmd.language,
                interpreter_language=cmd.interpreter_language,
                meeting_needs=cmd.meeting_needs,
                sender=sender_of(organizer),
            )
            if meeting is not None
            else None
        )
    except UnsafeText as exc:
        raise InvitationRefused(str(exc)) from None

    planned: list[Notification] = []
    for org in orgs:
        text = texts[replaces_earlier_invitation(found, cause_message_id=cause, recipient_hsa_id=org.hsa_id)]
        planned += [
            _notification(
                cmd, text, recipient=org.hsa_id, channel=r.channel, address=r.address, status=r.status,
                last_error=r.last_error, clock=clock, sender_hsa_id=organizer.hsa_id,
                body=text.sms if r.short_text else None,
                ics=ics if r.channel == "email" and r.status == "pending" else None,
            )
            for r in routes(org)
        ]  # fmt: skip
    # an invitation under a consent that no longer holds (it came after the withdrawal, e.g. from
    # another queue) is recorded cancelled, never sent; its recipients are told like the others
    withdrawn = await repo.withdrawal(cmd.consent_id)
    if withdrawn is not None:
        planned = [_stopped(n, withdrawn) for n in planned]
    created = [n for n in planned if await repo.add(n)]
    if meeting is not None and reminder is not None:
        created += await schedule_reminders(
            cmd, meeting, reminder, orgs, organizer=organizer, repo=repo, clock=clock, options=options,
            withdrawn=withdrawn,
        )  # fmt: skip
    if withdrawn is not None:
        await tell_participants(
            cmd.case_id,
            withdrawn,
            directory=directory,
            repo=repo,
            clock=clock,
            correlation_id=cmd.correlation_id,
        )
    return created


# ---- the reminder before the meeting (issue #6) ---------------------------------------------------
async def schedule_reminders(
    cmd: SendInvitation,
    meeting: Meeting,
    text: RenderedEmail,
    orgs: list[Organisation],
    *,
    organizer: Organisation,
    repo: NotificationRepository,
    clock: Clock,
    options: InvitationOptions,
    withdrawn: Withdrawal | None = None,
) -> list[Notification]:
    """One reminder per invited organisation and channel kind, due ``reminder_hours`` before the meeting.

    Rules (the dispatcher never sends a row before its ``next_attempt_at``, which is the due time):

    - **once** per (invitation, recipient, channel): the cause is derived from the invitation's message
      id (:func:`~services.notify.domain.reminder_cause_key`);
    - **too late, none**: when the meeting is less than ``reminder_hours`` ahead, the invitation that
      goes out now carries the time and no reminder is scheduled (no second mail at once);
    - **a new time supersedes**: the newest invitation of the case (by its ``occurred_at``) with a
      meeting time cancels the case's pending reminders of any other time (reason ``superseded``); an
      older invitation delivered late schedules nothing when a newer one moved the meeting. An
      organisation already reminded of this very time (by an earlier invitation) is not reminded twice;
    - a reminder under a consent that no longer holds is recorded ``cancelled``, like the invitation;
      a later withdrawal cancels pending reminders with everything else unsent; a case-closed notice
      cancels them too, and the dispatcher cancels one that comes due after its meeting began.

    An invitation without a meeting time leaves the reminders alone.
    """
    now = clock.now()
    inv = str(cmd.message_id)
    await repo.record_meeting(
        case_id=cmd.case_id, invitation_message_id=inv, meeting_start=meeting.start,
        occurred_at=cmd.occurred_at, at=now,
    )  # fmt: skip
    newer = await repo.newer_meeting(cmd.case_id, than=cmd.occurred_at, invitation_message_id=inv)
    if newer is not None and newer != meeting.start:
        return []  # an invitation issued after this one moved the meeting: this time is out of date
    reminders = [n for n in await repo.for_case(cmd.case_id) if n.kind == "reminder"]
    if newer is None:
        stale = [n.id for n in reminders if n.status == "pending" and n.meeting_start != meeting.start]
        await repo.cancel_pending(stale, reason_code="superseded", at=now, cause_message_id=inv)
    due = reminder_due_at(meeting.start, now, lead=options.reminder_lead)
    if due is None:
        return []
    reminded = {
        (n.recipient_hsa_id, n.channel)
        for n in reminders
        if n.meeting_start == meeting.start and n.status != "cancelled"
    }
    cause = reminder_cause_key(inv)
    planned: list[Notification] = []
    for org in orgs:
        for r in routes(org):
            if r.status != "pending" or (org.hsa_id, r.channel) in reminded:
                continue
            base = _notification(
                cmd, text, recipient=org.hsa_id, channel=r.channel, address=r.address, status="pending",
                last_error=None, clock=clock, sender_hsa_id=organizer.hsa_id,
                body=text.sms if r.short_text else None,
            )  # fmt: skip
            key = DedupeKey(cause, org.hsa_id, r.channel)
            n = replace(
                base, id=key.notification_id(), cause_message_id=cause, kind="reminder",
                next_attempt_at=due, meeting_start=meeting.start,
            )  # fmt: skip
            planned.append(n)
    if withdrawn is not None:
        planned = [_stopped(n, withdrawn) for n in planned]
    return [n for n in planned if await repo.add(n)]


def _prior(found: list[Notification]) -> list[Notification]:
    """The notifications that make an organisation a participant of the case (not the notices)."""
    return [n for n in found if n.kind not in NOTICE_KINDS]


# ---- deadline escalation (issue #6) -------------------------------------------------------------
async def escalate_deadline(
    ev: DeadlineBreached,
    *,
    directory: Directory,
    repo: NotificationRepository,
    clock: Clock,
    options: InvitationOptions | None = None,
) -> list[Notification]:
    """Tell the owning unit that a deadline of its case passed: one notification per channel kind.

    No personal data: the case reference, which deadline, when it was due and where to read the
    case. The cause is the breach message (planning derives its id from the case, the kind and the
    cycle), so a redelivered or re-published breach adds nothing. The text is Swedish unless the
    owner was earlier written to in English for this case. An owner not in the directory refuses
    the message (PermanentError → DLQ with the reason).
    """
    options = options or InvitationOptions()
    org = directory.get(ev.owner_hsa_id)
    if org is None:
        raise UnknownRecipient(f"owner_hsa_id: {ev.owner_hsa_id} is not in the organisation directory")
    await repo.serialize(ev.case_id)
    prior = _prior(await repo.for_case(ev.case_id))
    language = next((n.language for n in reversed(prior) if n.recipient_hsa_id == org.hsa_id), "sv")
    url = options.case_url(ev.case_id)
    try:
        text = render_deadline_escalation(
            case_reference=ev.case_reference,
            deadline=deadline_of(ev.kind),
            due_at=ev.due_at,
            plan_url=url,
            language=language,
        )
    except UnsafeText as exc:
        raise EscalationRefused(str(exc)) from None
    now = clock.now()
    planned = []
    for r in routes(org):
        key = DedupeKey(str(ev.message_id), org.hsa_id, r.channel)
        planned.append(
            Notification(
                id=key.notification_id(), cause_message_id=key.cause_message_id, case_id=ev.case_id,
                case_reference=ev.case_reference, correlation_id=ev.correlation_id,
                recipient_hsa_id=org.hsa_id, channel=r.channel, address=r.address, language=language,
                subject=text.subject, body=text.sms if r.short_text else text.body, status=r.status,
                attempts=0, next_attempt_at=now, created_at=now, updated_at=now, last_error=r.last_error,
                kind="deadline-escalation", owner_hsa_id=ev.owner_hsa_id,
            )
        )  # fmt: skip
    return [n for n in planned if await repo.add(n)]


# ---- case notices: plan established, follow-up due, case closed (issue #6) ------------------------
NOTICE_KINDS_HANDLED: frozenset[str] = frozenset({"plan-established", "follow-up-due", "case-closed"})
#: the notices a participant acts on: they state the person's meeting needs (issue #22)
NEEDS_KINDS: frozenset[str] = frozenset({"invitation", "reminder", "plan-established", "follow-up-due"})

_CLOSED_REASONS: dict[str | None, ClosedReason] = {
    "followed-up": "plan-completed",
    "refused": "person-ended",
    "consent-withdrawn": "consent-withdrawn",
    # the person's death is personal data about them: participants only hear that the case closed
    "deceased": "other",
    "cancelled": "other",
    "other": "other",
    None: "other",
}


def closed_reason(reason_code: str | None) -> ClosedReason:
    """A CaseNotice ``reason_code`` → the reason the case-closed text states (a fixed set)."""
    return _CLOSED_REASONS.get(reason_code, "other")


def follow_up_due_at(day: Any) -> datetime:
    """A follow-up date falls due at the start of that day, Stockholm time (as planning counts it)."""
    return datetime.combine(day, time.min, tzinfo=STOCKHOLM)


def _notice_text(
    notice: CaseNotice, language: str, options: InvitationOptions, *, cancelled_meeting: Meeting | None = None
) -> RenderedEmail:
    if notice.kind == "plan-established":
        if not notice.plan_url:
            raise NoticeRefused("plan_url: required for plan-established")
        return render_plan_established(
            case_reference=notice.case_reference,
            plan_url=notice.plan_url,
            language=language,
            interpreter_language=notice.interpreter_language,
            meeting_needs=notice.meeting_needs,
        )
    if notice.kind == "follow-up-due":
        if notice.follow_up_date is None:
            raise NoticeRefused("follow_up_date: required for follow-up-due")
        return render_follow_up_due(
            case_reference=notice.case_reference,
            follow_up_due_at=follow_up_due_at(notice.follow_up_date),
            plan_url=notice.plan_url or options.case_url(notice.case_id),
            language=language,
            interpreter_language=notice.interpreter_language,
            meeting_needs=notice.meeting_needs,
        )
    return render_case_closed(
        case_reference=notice.case_reference,
        closed_at=notice.occurred_at,
        reason=closed_reason(notice.reason_code),
        language=language,
        plan_url=notice.plan_url,
        cancelled_meeting=cancelled_meeting,
    )


async def handle_case_notice(
    notice: CaseNotice,
    *,
    directory: Directory,
    repo: NotificationRepository,
    clock: Clock,
    options: InvitationOptions | None = None,
) -> list[Notification]:
    """Tell a SIP's participants what happened to it: one notification per (notice, recipient, channel
    kind), with the template of the kind; returns the new ones. Unknown kinds are ignored (readers
    tolerate new kinds); an unknown recipient or an unsafe text refuses the message (→ DLQ).

    **Why ``plan-established`` is consent-safe without asking the consent gate here.** The gate decides
    per *person* (``ConsentDecisionRequested`` and ``POST /decisions`` need the patient identifier) and
    has no route by consent id; the notice carries no patient identifier, by design, and notify holds
    no personal data at all. So notify cannot ask — and does not need to, because the notice discloses
    nothing the consent guards: it carries the case reference and a link, never plan content (the
    template takes no content, and every text passes the personnummer and health-data guards). The
    plan itself is disclosed only when a participant follows the link: planning asks the gate on every
    read by an organisation other than the owning unit (``/cases/{id}``, ``/fhir/CarePlan/{id}``, its
    versions and history) and answers 403 when the consent does not cover it, *at read time* — which
    also covers a consent withdrawn or narrowed after the notice was sent. The recipients are the
    case's participants, who were invited under the same consent. Besides, a notice under a consent
    notify knows is withdrawn is recorded ``cancelled`` and never sent (below).

    - ``plan-established`` and ``follow-up-due`` are sent under the case's consent
      (:data:`~services.notify.domain.CONSENT_BOUND_KINDS`): when notify has recorded that consent
      withdrawn or cancelled they are recorded ``cancelled`` with the reason, and a later withdrawal
      cancels them while unsent, like invitations;
    - ``case-closed`` is an ending notice (:data:`~services.notify.domain.NOTICE_KINDS`): sent even
      after a withdrawal, never cancelled by one; it also cancels the case's pending meeting reminders,
      and to an organisation sent a calendar invitation for a meeting that has not begun it says the
      meeting is cancelled and carries the ``METHOD:CANCEL`` calendar (:func:`calendar_cancellation`).

    The text is Swedish unless the recipient was earlier written to in English for this case.
    """
    if notice.kind not in NOTICE_KINDS_HANDLED:
        log.warning(
            "case notice of an unknown kind ignored",
            extra={
                "kind": notice.kind,
                "case_id": str(notice.case_id),
                "correlation_id": notice.correlation_id,
            },
        )
        return []
    options = options or InvitationOptions()
    orgs: list[Organisation] = []
    for hsa_id in dict.fromkeys(notice.recipients):
        org = directory.get(hsa_id)
        if org is None:
            raise UnknownRecipient(f"recipients: {hsa_id} is not in the organisation directory")
        orgs.append(org)
    await repo.serialize(*(k for k in (notice.consent_id, notice.case_id) if k is not None))
    found = await repo.for_case(notice.case_id)
    prior = _prior(found)
    texts: dict[str, RenderedEmail] = {}
    try:
        for org in orgs:
            language = next((n.language for n in reversed(prior) if n.recipient_hsa_id == org.hsa_id), "sv")
            language = language if language in ("sv", "en") else "sv"
            if language not in texts:
                texts[language] = _notice_text(notice, language, options)
    except UnsafeText as exc:
        raise NoticeRefused(str(exc)) from None
    withdrawn = None
    if notice.consent_id is not None and notice.kind in CONSENT_BOUND_KINDS:
        withdrawn = await repo.withdrawal(notice.consent_id)
    now = clock.now()
    planned: list[Notification] = []
    for org in orgs:
        language = next((n.language for n in reversed(prior) if n.recipient_hsa_id == org.hsa_id), "sv")
        language = language if language in texts else "sv"
        text = texts[language]
        cancellation = (
            calendar_cancellation(found, org.hsa_id, now=now, language=language)
            if notice.kind == "case-closed"
            else None
        )  # the meeting of a closed case is not held: its calendar event is cancelled
        if cancellation is not None:
            try:
                text = _notice_text(notice, language, options, cancelled_meeting=cancellation.meeting)
            except UnsafeText as exc:
                raise NoticeRefused(str(exc)) from None
        cancel_ics = cancellation.ics if cancellation is not None else None
        for r in routes(org):
            key = DedupeKey(str(notice.message_id), org.hsa_id, r.channel)
            planned.append(
                Notification(
                    id=key.notification_id(), cause_message_id=key.cause_message_id, case_id=notice.case_id,
                    case_reference=notice.case_reference, correlation_id=notice.correlation_id,
                    recipient_hsa_id=org.hsa_id, channel=r.channel, address=r.address, language=language,
                    subject=text.subject, body=text.sms if r.short_text else text.body, status=r.status,
                    attempts=0, next_attempt_at=now, created_at=now, updated_at=now, last_error=r.last_error,
                    kind=notice.kind, plan_url=notice.plan_url, sender_hsa_id=notice.owner_hsa_id,
                    consent_id=notice.consent_id, owner_hsa_id=notice.owner_hsa_id,
                    ics=cancel_ics if r.channel == "email" and r.status == "pending" else None,
                    meeting_needs=(
                        _needs(notice.meeting_needs, notice.interpreter_language)
                        if notice.kind in NEEDS_KINDS else None
                    ),
                )
            )  # fmt: skip
    if withdrawn is not None:
        planned = [_stopped(n, withdrawn) for n in planned]
    created = [n for n in planned if await repo.add(n)]
    if notice.kind == "case-closed":
        pending = [n.id for n in found if n.kind == "reminder" and n.status == "pending"]
        await repo.cancel_pending(
            pending, reason_code="case-closed", at=now, cause_message_id=str(notice.message_id)
        )
    return created


# ---- consent withdrawn (issue #4) ---------------------------------------------------------------
class MoreCases(Exception):
    """More cases have notifications under the consent than the caller gated: gate them, run again."""

    def __init__(self, cases: list[UUID]) -> None:
        super().__init__("more cases under the consent than gated")
        self.cases = cases


@dataclass(frozen=True)
class WithdrawalOutcome:
    cases: list[UUID]
    cancelled: list[UUID]
    notices: list[Notification]


async def cases_of_withdrawal(ev: ConsentWithdrawn, repo: NotificationRepository) -> list[UUID]:
    """The cases a withdrawal touches: the one it names and any with notifications under the consent."""
    found = set(await repo.cases_of_consent(ev.consent_id))
    if ev.case_id is not None:
        found.add(ev.case_id)
    return sorted(found, key=str)


async def stop_for_withdrawal(
    ev: ConsentWithdrawn,
    *,
    cases: list[UUID],
    directory: Directory,
    repo: NotificationRepository,
    clock: Clock,
) -> WithdrawalOutcome:
    """A consent no longer holds: stop what is unsent, tell the participants, remember the consent.

    In one transaction (the caller holds the send gate of ``cases``, see :mod:`services.notify.gate`;
    :class:`MoreCases` when the consent turns out to cover a case it does not hold):

    1. the withdrawal is recorded (by consent id), so an invitation under that consent that arrives
       later is recorded cancelled and never sent;
    2. every notification of the cases (and under the consent) that is not sent yet — ``pending``,
       waiting for a retry, or claimed (``sending``) — becomes ``cancelled`` with the reason
       ("consent withdrawn" / "consent cancelled as wrongly registered"); what was sent stays sent,
       what failed stays failed;
    3. every participant organisation — each recipient of a notification of the case — gets one
       notice per channel kind that the SIP is paused (template ``consent-withdrawn``): the case
       reference and the time only, no health data, no personnummer, no link; an organisation sent a
       calendar invitation for a meeting that has not begun is told it is cancelled, and its e-mail
       carries the ``METHOD:CANCEL`` calendar (:func:`calendar_cancellation`). The dedupe key's
       cause is derived from (consent, case), so it is once per (withdrawal, recipient, channel)
       however often the withdrawal is delivered.

    The person's identifier in the message is neither stored nor logged.
    """
    await repo.serialize(ev.consent_id, *cases)
    found = await cases_of_withdrawal(ev, repo)
    if set(found) - set(cases):
        raise MoreCases(sorted({*cases, *found}, key=str))
    now = clock.now()
    # recorded before (the same consent, another message about it): the first record stands
    await repo.record_withdrawal(
        Withdrawal(
            consent_id=ev.consent_id, case_id=ev.case_id, cause=ev.cause, effective_at=ev.effective_at,
            message_id=str(ev.message_id), recorded_at=now,
        )
    )  # fmt: skip
    withdrawn = await repo.withdrawal(ev.consent_id)
    assert withdrawn is not None
    reason = cancel_reason_code(ev.cause)
    cancelled: list[UUID] = []
    targets: list[UUID | None] = [*cases] if cases else [None]
    for case_id in targets:
        cancelled += await repo.cancel_unsent(
            case_id=case_id, consent_id=ev.consent_id, reason_code=reason, at=now,
            cause_message_id=str(ev.message_id),
        )  # fmt: skip
    notices: list[Notification] = []
    for case_id in cases:
        notices += await tell_participants(
            case_id, withdrawn, directory=directory, repo=repo, clock=clock, correlation_id=ev.correlation_id
        )
    return WithdrawalOutcome(cases=cases, cancelled=cancelled, notices=notices)


def _previous_routes(ns: list[Notification]) -> list[Route]:
    """An organisation no longer in the directory is told where it was reached before."""
    seen: dict[str, Route] = {}
    for n in reversed(ns):
        if n.address and n.channel not in seen:
            seen[n.channel] = Route(n.channel, n.address, short_text=n.channel == "sms")
    return list(seen.values()) or [Route("email", None, status="failed", last_error=NO_CHANNEL)]


@dataclass(frozen=True)
class CalendarCancellation:
    """The meeting an organisation has in its calendar and that is not held, and the ``METHOD:CANCEL``
    calendar that removes it."""

    meeting: Meeting
    ics: str


def calendar_cancellation(
    found: list[Notification], recipient_hsa_id: str, *, now: datetime, language: str
) -> CalendarCancellation | None:
    """The cancellation of the meeting ``recipient_hsa_id`` was sent a calendar invitation for in this
    case (``found``: all its notifications), or None: nothing was sent to it with a calendar, the
    meeting has already begun, or a cancellation of it was already sent or is on its way. The
    cancellation keeps the event's ``UID`` with a ``SEQUENCE`` above every calendar of the case, and
    ``STATUS:CANCELLED``, so calendars remove the event."""
    events = [
        (calendar_event(n.ics), n.ics)
        for n in found
        if n.ics and n.recipient_hsa_id == recipient_hsa_id and n.status not in ("cancelled", "failed")
        and (n.status == "sent" or calendar_method(n.ics) == "CANCEL")
    ]  # fmt: skip
    sent = [(ev, ics) for ev, ics in events if ev is not None]
    if not sent:
        return None
    last, ics = max(sent, key=lambda p: p[0].sequence)
    if last.method != "REQUEST" or last.start is None or last.start <= now:
        return None
    case = [ev for n in found if n.ics and (ev := calendar_event(n.ics)) is not None]
    sequence = max([sequence_for(now), *(ev.sequence + 1 for ev in case)])
    return CalendarCancellation(
        meeting=Meeting(start=last.start, end=last.end),
        ics=cancellation_ics(ics, issued_at=now, sequence=sequence, language=language),
    )


async def tell_participants(
    case_id: UUID,
    withdrawn: Withdrawal,
    *,
    directory: Directory,
    repo: NotificationRepository,
    clock: Clock,
    correlation_id: str | None = None,
) -> list[Notification]:
    """One ``consent-withdrawn`` notice per participant organisation of the case and channel kind
    (only those not planned before); returns the new ones."""
    found = await repo.for_case(case_id)
    prior = _prior(found)
    if not prior:
        return []
    reference = prior[-1].case_reference
    owner = next((n.owner_hsa_id for n in reversed(prior) if n.owner_hsa_id), None)  # the case's owning unit
    by_org: dict[str, list[Notification]] = {}
    for n in prior:
        by_org.setdefault(n.recipient_hsa_id, []).append(n)
    cause = withdrawal_cause_key(withdrawn.consent_id, case_id)
    now = clock.now()
    created: list[Notification] = []
    for hsa_id, ns in by_org.items():
        language = ns[-1].language if ns[-1].language in ("sv", "en") else "sv"
        org = directory.get(hsa_id)
        error: str | None = None
        cancellation: CalendarCancellation | None = None
        try:
            cancellation = calendar_cancellation(found, hsa_id, now=now, language=language)
            text = render_consent_withdrawn(
                case_reference=reference,
                withdrawn_at=withdrawn.effective_at,
                language=language,
                cause="cancellation" if withdrawn.cause == "cancellation" else "withdrawal",
                cancelled_meeting=cancellation.meeting if cancellation else None,
            )
        except UnsafeText as exc:  # never keeps the cancellation from committing
            text, error = RenderedEmail(subject=f"SIP {case_id}", body=""), NOTICE_UNSAFE.format(exc)
            cancellation = None
        cancel_ics = cancellation.ics if cancellation is not None else None
        for r in routes(org) if org is not None else _previous_routes(ns):
            key = DedupeKey(cause, hsa_id, r.channel)
            n = Notification(
                id=key.notification_id(), cause_message_id=cause, case_id=case_id, case_reference=reference,
                correlation_id=correlation_id, recipient_hsa_id=hsa_id, channel=r.channel,
                address=r.address, language=language, subject=text.subject,
                body=text.sms if r.short_text else text.body,
                status="failed" if error else r.status, attempts=0, next_attempt_at=now, created_at=now,
                updated_at=now, last_error=error or r.last_error, kind="consent-withdrawn",
                owner_hsa_id=owner,
                ics=cancel_ics if r.channel == "email" and r.status == "pending" else None,
            )  # fmt: skip
            if await repo.add(n):
                created.append(n)
    return created
