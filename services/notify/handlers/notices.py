"""Case notices (issue #6): plan established, follow-up due, case closed — what happened to a SIP,
told to its participants. No transport here."""

from __future__ import annotations

import logging
from datetime import datetime, time
from typing import Any

from services.notify.domain import CONSENT_BOUND_KINDS, Notification
from services.notify.handlers.routing import (
    InvitationOptions,
    needs_of,
    notification_record,
    participants,
    routes,
    stopped,
)
from services.notify.handlers.withdrawal import calendar_cancellation
from services.notify.ports import NotificationRepository
from services.notify.templates import (
    STOCKHOLM,
    ClosedReason,
    Meeting,
    RenderedEmail,
    UnsafeText,
    render_case_closed,
    render_follow_up_due,
    render_plan_established,
)
from shared.clock import Clock
from shared.contracts import CaseNotice
from shared.directory import Directory, Organisation, UnknownRecipient
from shared.errors import PermanentError

log = logging.getLogger("sip.notify.handlers")


class NoticeRefused(PermanentError):
    """The case notice cannot be sent as it stands (the reason goes to the DLQ)."""


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
    prior = participants(found)
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
            planned.append(
                notification_record(
                    r, text, cause=str(notice.message_id), recipient_hsa_id=org.hsa_id, kind=notice.kind,
                    case_id=notice.case_id, case_reference=notice.case_reference,
                    correlation_id=notice.correlation_id, language=language, now=now, ics=cancel_ics,
                    plan_url=notice.plan_url, sender_hsa_id=notice.owner_hsa_id, consent_id=notice.consent_id,
                    owner_hsa_id=notice.owner_hsa_id,
                    meeting_needs=(
                        needs_of(notice.meeting_needs, notice.interpreter_language)
                        if notice.kind in NEEDS_KINDS else None
                    ),
                )
            )  # fmt: skip
    if withdrawn is not None:
        planned = [stopped(n, withdrawn) for n in planned]
    created = await repo.add_all(planned)
    if notice.kind == "case-closed":
        pending = [n.id for n in found if n.kind == "reminder" and n.status == "pending"]
        await repo.cancel_pending(
            pending, reason_code="case-closed", at=now, cause_message_id=str(notice.message_id)
        )
    return created
