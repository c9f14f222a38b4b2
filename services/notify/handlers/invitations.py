"""Invitation use case (issue #1, #6, #22): a SendInvitation becomes one notification per recipient
organisation and channel kind, with the calendar invitation when it gives a meeting time, and its
reminders (:mod:`.reminders`). No transport here."""

from __future__ import annotations

from datetime import timedelta

from services.notify.domain import Notification, replaces_earlier_invitation
from services.notify.handlers.reminders import schedule_reminders
from services.notify.handlers.routing import (
    InvitationOptions,
    emails_of,
    needs_of,
    notification_record,
    routes,
    sender_of,
    stopped,
)
from services.notify.handlers.withdrawal import tell_participants
from services.notify.ics import CalendarParty, invitation_ics, next_sequence
from services.notify.ports import NotificationRepository
from services.notify.templates import Meeting, UnsafeText, render_invitation, render_reminder
from shared.clock import Clock
from shared.contracts import SendInvitation
from shared.directory import Directory, Organisation, UnknownRecipient
from shared.errors import PermanentError


class InvitationRefused(PermanentError):
    """The invitation cannot be sent as it stands (the reason goes to the DLQ)."""


def _recipients(cmd: SendInvitation, directory: Directory) -> list[Organisation]:
    orgs: list[Organisation] = []
    for hsa_id in dict.fromkeys(cmd.recipients):  # a recipient named twice is invited once
        org = directory.get(hsa_id)
        if org is None:
            raise UnknownRecipient(f"recipient {hsa_id} is not in the organisation directory")
        orgs.append(org)
    return orgs


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


def _calendar(
    cmd: SendInvitation,
    meeting: Meeting,
    organizer: Organisation,
    orgs: list[Organisation],
    options: InvitationOptions,
    sequence: int,
) -> str:
    own = emails_of(organizer)
    attendees = tuple(CalendarParty(o.name, o.hsa_id, emails_of(o)[0]) for o in orgs if emails_of(o))
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
            notification_record(
                r, text, cause=cause, recipient_hsa_id=org.hsa_id, kind="invitation", case_id=cmd.case_id,
                case_reference=cmd.case_reference, correlation_id=cmd.correlation_id, language=cmd.language,
                now=clock.now(), ics=ics, plan_url=cmd.plan_url, sender_hsa_id=organizer.hsa_id,
                consent_id=cmd.consent_id, owner_hsa_id=cmd.organizer_hsa_id or organizer.hsa_id,
                meeting_needs=needs_of(cmd.meeting_needs, cmd.interpreter_language),
            )
            for r in routes(org)
        ]  # fmt: skip
    # an invitation under a consent that no longer holds (it came after the withdrawal, e.g. from
    # another queue) is recorded cancelled, never sent; its recipients are told like the others
    withdrawn = await repo.withdrawal(cmd.consent_id)
    if withdrawn is not None:
        planned = [stopped(n, withdrawn) for n in planned]
    created = await repo.add_all(planned)
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
