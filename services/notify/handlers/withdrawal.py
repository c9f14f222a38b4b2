"""Consent withdrawn (issue #4): stop what is unsent under a consent that no longer holds, tell the
participants, and cancel the meeting in their calendars. No transport here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from services.notify.domain import (
    Notification,
    Withdrawal,
    cancel_reason_code,
    withdrawal_cause_key,
)
from services.notify.handlers.routing import NO_CHANNEL, Route, notification_record, participants, routes
from services.notify.ics import calendar_event, calendar_method, cancellation_ics, sequence_for
from services.notify.ports import NotificationRepository
from services.notify.templates import Meeting, RenderedEmail, UnsafeText, render_consent_withdrawn
from shared.clock import Clock
from shared.contracts import ConsentWithdrawn
from shared.directory import Directory

NOTICE_UNSAFE = "withdrawal notice not rendered: {}"


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
    prior = participants(found)
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
            n = notification_record(
                r, text, cause=cause, recipient_hsa_id=hsa_id, kind="consent-withdrawn", case_id=case_id,
                case_reference=reference, correlation_id=correlation_id, language=language, now=now,
                status="failed" if error else None, last_error=error, ics=cancel_ics, owner_hsa_id=owner,
            )  # fmt: skip
            if await repo.add(n):
                created.append(n)
    return created
