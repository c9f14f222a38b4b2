"""Notify use cases: turn a SendInvitation into notifications. No transport here."""

from __future__ import annotations

from services.notify.domain import (
    CHANNEL_NOT_SUPPORTED,
    ChannelKind,
    DedupeKey,
    Notification,
    Status,
)
from services.notify.ports import NotificationRepository
from services.notify.templates import PersonalDataInText, RenderedEmail, render_invitation
from shared.clock import Clock
from shared.contracts import SendInvitation
from shared.directory import Directory, EmailChannel, Organisation, UnknownRecipient
from shared.errors import PermanentError

NO_CHANNEL = "organisation has no contact channel in the directory"


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
        body=text.body,
        status=status,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
        updated_at=now,
        last_error=last_error,
    )


async def accept_invitation(
    cmd: SendInvitation, *, directory: Directory, repo: NotificationRepository, clock: Clock
) -> list[Notification]:
    """Record one notification per recipient organisation and channel kind; return the new ones.

    E-mail: one ``pending`` notification per organisation, addressed to all of its e-mail channels
    (the dedupe key is per channel *kind*). Webhook/SMS are recorded as ``failed`` ("channel not yet
    supported") so nothing is dropped silently. An unknown recipient refuses the whole command
    (PermanentError → DLQ with the reason), before anything is stored.
    """
    try:
        text = render_invitation(
            case_reference=cmd.case_reference,
            invitation_due_at=cmd.invitation_due_at,
            plan_url=cmd.plan_url,
            language=cmd.language,
        )
    except PersonalDataInText as exc:
        raise InvitationRefused(str(exc)) from None

    planned: list[Notification] = []
    for org in _recipients(cmd, directory):
        emails = [c.address for c in org.channels if isinstance(c, EmailChannel)]
        if emails:
            planned.append(
                _notification(
                    cmd, text, recipient=org.hsa_id, channel="email", address=", ".join(emails),
                    status="pending", last_error=None, clock=clock,
                )
            )  # fmt: skip
        other_kinds = dict.fromkeys(c.type for c in org.channels if c.type != "email")
        for kind in other_kinds:
            planned.append(
                _notification(
                    cmd, text, recipient=org.hsa_id, channel=kind, address=None,
                    status="failed", last_error=CHANNEL_NOT_SUPPORTED, clock=clock,
                )
            )  # fmt: skip
        if not org.channels:
            planned.append(
                _notification(
                    cmd, text, recipient=org.hsa_id, channel="email", address=None,
                    status="failed", last_error=NO_CHANNEL, clock=clock,
                )
            )  # fmt: skip
    return [n for n in planned if await repo.add(n)]
