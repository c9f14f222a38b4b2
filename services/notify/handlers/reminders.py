"""The reminder before the meeting and the deadline escalation (issue #6): notifications that fall
due later, or go to the owning unit when a deadline of its case passed. No transport here."""

from __future__ import annotations

from dataclasses import replace

from services.notify.domain import Notification, Withdrawal, reminder_cause_key, reminder_due_at
from services.notify.handlers.routing import (
    InvitationOptions,
    needs_of,
    notification_record,
    participants,
    routes,
    stopped,
)
from services.notify.ports import NotificationRepository
from services.notify.templates import (
    Meeting,
    RenderedEmail,
    UnsafeText,
    deadline_of,
    render_deadline_escalation,
)
from shared.clock import Clock
from shared.contracts import DeadlineBreached, SendInvitation
from shared.directory import Directory, Organisation, UnknownRecipient
from shared.errors import PermanentError


class EscalationRefused(PermanentError):
    """The escalation cannot be sent as it stands (the reason goes to the DLQ)."""


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
            n = notification_record(
                r, text, cause=cause, recipient_hsa_id=org.hsa_id, kind="reminder", case_id=cmd.case_id,
                case_reference=cmd.case_reference, correlation_id=cmd.correlation_id, language=cmd.language,
                now=clock.now(), plan_url=cmd.plan_url, sender_hsa_id=organizer.hsa_id,
                consent_id=cmd.consent_id, owner_hsa_id=cmd.organizer_hsa_id or organizer.hsa_id,
                meeting_needs=needs_of(cmd.meeting_needs, cmd.interpreter_language),
            )  # fmt: skip
            n = replace(n, next_attempt_at=due, meeting_start=meeting.start)
            planned.append(n)
    if withdrawn is not None:
        planned = [stopped(n, withdrawn) for n in planned]
    return await repo.add_all(planned)


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
    prior = participants(await repo.for_case(ev.case_id))
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
        planned.append(
            notification_record(
                r, text, cause=str(ev.message_id), recipient_hsa_id=org.hsa_id, kind="deadline-escalation",
                case_id=ev.case_id, case_reference=ev.case_reference, correlation_id=ev.correlation_id,
                language=language, now=now, owner_hsa_id=ev.owner_hsa_id,
            )
        )  # fmt: skip
    return await repo.add_all(planned)
