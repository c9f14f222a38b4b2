"""Planning use cases: discharge → SIP case → consent → plan drafted → invitation. No transport here."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from services.planning import stays
from services.planning.deadlines import DeadlinePolicy, due_at
from services.planning.domain import (
    FINAL_STATES,
    INVITATION_CLOCK_STATES,
    REQUIRED_PURPOSES,
    ConsentMissing,
    InvalidTransition,
    Participant,
    SipCase,
    invitees,
    new_case_id,
    new_reference,
)
from services.planning.plan import meeting_needs
from services.planning.ports import CaseRepository, Deadlines, Outbox
from services.planning.rules import (
    ASSUME_SIP_NEEDED,
    READMISSION,
    SUSPEND_ON_READMISSION,
    is_child,
    readmission_looks_for_case,
    readmission_resumes,
    sip_needed,
)
from services.planning.stays import Stay
from shared.clock import Clock
from shared.contracts import (
    CaseNotice,
    ConsentDeclined,
    ConsentGranted,
    ConsentRequested,
    ConsentWithdrawn,
    Contract,
    DeadlineBreached,
    DischargeNotified,
    InvitationSent,
    SendInvitation,
)
from shared.directory import Directory, Organisation, UnknownRecipient
from shared.errors import PermanentError
from shared.hospital import HospitalEvent, PatientIdentifier
from shared.identifiers import parse_person_identifier
from shared.unit_of_work import Handler, UnitOfWork

log = logging.getLogger("sip.planning")

NO_SIP_NEEDED = "no SIP case: help from both kommun and region is not needed"
CASE_CANCELLED = "the SIP case was cancelled: the hospital cancelled the notice that opened it"
NO_SWEDISH_ID = "no SIP case: the person has no Swedish personal identity number"


def resolve_participants(
    kommun_code: str | None, primary_care_unit: str | None, hospital_id: str | None, directory: Directory
) -> tuple[tuple[Participant, ...], str]:
    """Kommun social services of the home kommun, the listed primary-care unit, the sending hospital.

    Returns the participants and the owner (the primary-care unit). Raises ``UnknownRecipient``.
    """
    if not kommun_code:
        raise UnknownRecipient("the message names no home kommun (kommun code): no recipient can be chosen")
    social = directory.social_services_for(kommun_code)
    primary = directory.primary_care_for(primary_care_unit, kommun_code)
    orgs: list[Organisation] = [social, primary]
    hospital = directory.get(hospital_id) if hospital_id else None
    if hospital is not None:
        orgs.append(hospital)
    return tuple(Participant(o.hsa_id, o.name, o.kind) for o in orgs), primary.hsa_id


def discharge_event(ev: DischargeNotified) -> HospitalEvent:
    """The JSON ``hospital.discharge.v1`` notice in the one event model: a ready-for-discharge."""
    pid = parse_person_identifier(ev.patient.identifier)
    return HospitalEvent(
        source="json",
        source_message_id=str(ev.message_id),
        source_event_code=DischargeNotified.routing_key,
        kind="ready-for-discharge",
        occurred_at=ev.ready_for_discharge_at,
        stay_id=ev.episode_id,
        hospital_id=ev.hospital_hsa_id,
        patient=PatientIdentifier(system=pid.system, value=pid.value),
        kommun_code=ev.patient.kommun_code,
        primary_care_unit=ev.patient.primary_care_unit_hsa_id,
        expected_discharge_at=ev.expected_discharge_at,
        needs_kommun_support=ev.needs_kommun_support,
        needs_region_support=ev.needs_region_support,
    )


async def handle_discharge(
    ev: DischargeNotified,
    *,
    repo: CaseRepository,
    outbox: Outbox,
    directory: Directory,
    clock: Clock,
    deadline_days: int = 3,
    deadlines: Deadlines | None = None,
    policy: DeadlinePolicy | None = None,
) -> SipCase | None:
    """The RabbitMQ JSON discharge notice: mapped into the one event model and handled as such."""
    return await handle_stay_event(
        discharge_event(ev), repo=repo, outbox=outbox, directory=directory, clock=clock,
        deadline_days=deadline_days, correlation_id=ev.correlation_id, deadlines=deadlines, policy=policy,
    )  # fmt: skip


async def handle_stay_event(
    ev: HospitalEvent,
    *,
    repo: CaseRepository,
    outbox: Outbox,
    directory: Directory,
    clock: Clock,
    deadline_days: int = 3,
    assume_sip_needed: bool = ASSUME_SIP_NEEDED,
    correlation_id: str | None = None,
    deadlines: Deadlines | None = None,
    policy: DeadlinePolicy | None = None,
) -> SipCase | None:
    """One hospital-stay event (any source) → the stay updated → the stay's SIP case opened/changed.

    Returns the case when it was opened or changed, else None. Raises ``UnknownRecipient`` (permanent:
    dead-lettered with the reason, nothing recorded) when a case must be opened but the kommun or the
    primary-care unit is not in the directory.
    """
    now = clock.now()
    policy = policy or DeadlinePolicy(invitation_days=deadline_days)
    hospital_id = ev.hospital_id or ""
    stay = await repo.get_stay(hospital_id, ev.stay_id, for_update=True)
    is_new = stay is None
    if stay is None:
        stay = Stay.first(ev)
    elif (stay.patient_system, stay.patient_value) != (ev.patient.system, ev.patient.value):
        raise PermanentError(
            "the event names another person than the stay it refers to; the hospital must cancel the "
            "stay (A11 / cancel) and send it again for the right person"
        )
    stay, effect = stays.apply(stay, ev)
    case: SipCase | None = None
    if readmission_looks_for_case(stay, ev.kind, effect):
        stay, case = await _suspend_on_readmission(stay, repo=repo, now=now, deadlines=deadlines)
    if readmission_resumes(stay, ev.kind, effect):
        effect = "resume"  # out of hospital again: the SIP goes on where it was
    if effect == "open-case":
        stay, case = await _open_case(
            stay, ev, repo=repo, outbox=outbox, directory=directory, now=now, policy=policy,
            assume_sip_needed=assume_sip_needed, correlation_id=correlation_id, deadlines=deadlines,
        )  # fmt: skip
    elif effect not in ("none", "ignored") and stay.case_id is not None:
        case = await _change_case(stay, ev, effect, repo=repo, now=now, policy=policy, deadlines=deadlines)
        if case is not None and case.state == "cancelled":
            # the notice that opened it was wrong: a later, valid notice for the stay opens a new case
            stay = dataclasses.replace(stay, case_id=None, case_opened_by=None, note=CASE_CANCELLED)
    await repo.save_stay(stay, now, new=is_new)
    if ev.kind == "admitted" and effect != "ignored" and deadlines is not None:
        live = await repo.get_case(UUID(stay.case_id)) if stay.case_id else None
        await deadlines.admission_noticed(
            hospital_id=hospital_id,
            stay_id=ev.stay_id,
            admitted_at=ev.occurred_at,
            received_at=now,
            case=live,
        )
    log.info(
        "hospital event handled",
        extra={"kind": ev.kind, "source": ev.source, "effect": effect, "case_id": stay.case_id},
    )
    return case


async def _suspend_on_readmission(
    stay: Stay, *, repo: CaseRepository, now: datetime, deadlines: Deadlines | None
) -> tuple[Stay, SipCase | None]:
    """The person is admitted again while their SIP is under way: the SIP is suspended (its clocks
    stand still) and this stay carries it, so the discharge from this stay resumes it (the rules:
    :mod:`services.planning.rules`)."""
    found = await repo.find_cases(patient=stay.patient_value, states=set(SUSPEND_ON_READMISSION), limit=1)
    if not found:
        return stay, None
    case = found[0].suspend()
    await repo.update_case(case)
    if deadlines is not None:
        await deadlines.case_suspended(case.id, at=now)
    await _new_plan_version(repo, case, now, reason="hospital: re-admitted")
    log.info("SIP case suspended: the person was admitted again", extra={"case_id": str(case.id)})
    return dataclasses.replace(stay, case_id=str(case.id), case_opened_by=READMISSION), case


async def _open_case(
    stay: Stay,
    ev: HospitalEvent,
    *,
    repo: CaseRepository,
    outbox: Outbox,
    directory: Directory,
    now: datetime,
    policy: DeadlinePolicy,
    assume_sip_needed: bool,
    correlation_id: str | None,
    deadlines: Deadlines | None = None,
) -> tuple[Stay, SipCase | None]:
    if not sip_needed(ev.needs_kommun_support, ev.needs_region_support, assume=assume_sip_needed):
        return dataclasses.replace(stay, note=NO_SIP_NEEDED), None
    if not stay.swedish:
        return dataclasses.replace(stay, note=NO_SWEDISH_ID), None
    # route first: an unknown recipient refuses the event before anything is recorded
    participants, owner = resolve_participants(stay.kommun_code, stay.primary_care_unit, stay.hospital_id,
                                               directory)  # fmt: skip
    ready = stay.ready_at or ev.occurred_at
    case_id = new_case_id()
    case = SipCase(
        id=case_id,
        reference=new_reference(case_id, now),
        hospital_hsa_id=stay.hospital_id,
        episode_id=stay.stay_id,
        patient_identifier=stay.patient_value,
        is_child=is_child(stay.patient_value, now.date()),
        kommun_code=stay.kommun_code or "",
        owner_hsa_id=owner,
        participants=participants,
        state="consent_pending",
        opened_at=now,
        ready_for_discharge_at=ready,
        invitation_due_at=due_at("invitation", ready, policy),
        correlation_id=correlation_id,
    )
    await repo.add_case(case)
    if deadlines is not None:
        await deadlines.case_opened(case, at=now)
    await outbox.send(
        ConsentRequested(
            case_id=case.id,
            patient_identifier=case.patient_identifier,
            is_child=case.is_child,
            proposed_recipients=case.participant_ids,
            requested_by_hsa_id=owner,
            correlation_id=case.correlation_id,
        )
    )
    log.info("SIP case opened", extra={"case_id": str(case.id), "reference": case.reference})
    return dataclasses.replace(stay, case_id=str(case.id), case_opened_by=ev.kind, note=None), case


async def _change_case(
    stay: Stay, ev: HospitalEvent, effect: stays.Effect, *, repo: CaseRepository, now: datetime,
    policy: DeadlinePolicy, deadlines: Deadlines | None = None,
) -> SipCase | None:  # fmt: skip
    case = await repo.get_case(UUID(stay.case_id), for_update=True) if stay.case_id else None
    if case is None or case.state in FINAL_STATES:
        return None
    changed: SipCase | None = None
    if effect == "suspend" and case.state != "suspended":
        changed = case.suspend()
    elif effect == "resume" and case.state == "suspended":
        ready = stay.ready_at or ev.occurred_at
        changed = case.resume(ready, due_at("invitation", ready, policy))
    elif effect == "earlier-ready" and case.state in INVITATION_CLOCK_STATES and stay.ready_at is not None:
        if case.ready_for_discharge_at is not None and stay.ready_at < case.ready_for_discharge_at:
            changed = dataclasses.replace(
                case,
                ready_for_discharge_at=stay.ready_at,
                invitation_due_at=due_at("invitation", stay.ready_at, policy),
            )
    elif effect == "cancel-case":
        changed = case.move_to("cancelled", closed_reason=f"the hospital cancelled the {ev.cancels} notice")
    elif effect == "close-case":
        changed = case.move_to("closed", closed_reason="deceased")
    if changed is None:
        return None
    await repo.update_case(changed)
    if deadlines is not None:
        if changed.state == "suspended":
            await deadlines.case_suspended(changed.id, at=now)
        elif changed.state in FINAL_STATES:
            await deadlines.case_ended(changed.id, at=now, reason=changed.closed_reason or changed.state)
        else:
            await deadlines.case_resumed(changed, at=now)
    version = await repo.next_plan_version(changed.id)
    if version > 1:  # a plan exists: its status follows the case
        await _new_plan_version(repo, changed, now, reason=f"hospital: {ev.kind}", version=version)
    log.info("SIP case changed by a hospital event",
             extra={"case_id": str(changed.id), "state": changed.state})  # fmt: skip
    return changed


async def _case_for(repo: CaseRepository, case_id: UUID, patient_identifier: str) -> SipCase:
    case = await repo.get_case(case_id, for_update=True)
    if case is None:
        raise PermanentError(f"no SIP case {case_id}")
    if case.patient_identifier != patient_identifier:
        raise PermanentError(f"consent names another person than SIP case {case_id}")
    return case


async def handle_consent_granted(
    ev: ConsentGranted, *, repo: CaseRepository, outbox: Outbox, clock: Clock, web_base_url: str,
    deadlines: Deadlines | None = None, policy: DeadlinePolicy | None = None,
) -> SipCase | None:  # fmt: skip
    if ev.case_id is None:
        return None  # a consent not tied to a case opened here
    case = await _case_for(repo, ev.case_id, ev.patient_identifier)
    guardians = tuple(ev.guardian_identifiers)
    if case.state != "consent_pending":
        if guardians and guardians != case.guardian_identifiers:  # a later consent names the guardians
            await repo.update_case(dataclasses.replace(case, guardian_identifiers=guardians))
        return None  # already handled (a second consent, or a resent decision)
    # a child's guardians named on the consent may read the child's plan (services/planning/access.py)
    case = dataclasses.replace(case, guardian_identifiers=guardians)
    missing = REQUIRED_PURPOSES - set(ev.purposes)
    if missing:
        log.warning("consent lacks purposes needed to plan and invite", extra={"case_id": str(case.id),
                    "missing": ",".join(sorted(missing))})  # fmt: skip
        return None
    recipients = invitees(case.participant_ids, tuple(ev.recipients))
    if not recipients:
        raise PermanentError(f"the consent covers none of the participants of SIP case {case.id}")
    now = clock.now()
    case = case.consent_given(ev.consent_id, recipients)
    if case.state == "invitation_requested":  # a discharge: the LUS clock runs, invite at once
        await outbox.send(invitation(case, recipients, web_base_url, ev.correlation_id))
    # a system transition, stored without the fhir.resources round trip: the CarePlan holds the case's
    # fields as validated where they entered (the discharge notice's contract, the directory, the
    # coordinators' validated commands) and what the code derives from the new state; nothing from
    # the consent message enters it
    await _new_plan_version(repo, case, now, reason="consent given", validate=False)
    await repo.update_case(case)
    if deadlines is not None and ev.valid_until is not None:
        await deadlines.start(case, "consent-expiry", ev.valid_until, policy or DeadlinePolicy(), at=now)
    return case


def invitation(
    case: SipCase, recipients: tuple[str, ...], web_base_url: str, correlation_id: str | None = None
) -> SendInvitation:
    """The invitation command for notify: no identifier, no health data; the meeting when one is
    scheduled and what the person needs at it. A case without the person's consent (or without an
    invitation deadline) cannot be invited: :class:`~services.planning.domain.ConsentMissing` (409)."""
    if case.consent_id is None:
        raise ConsentMissing(case.state, "invitation_requested")
    if case.invitation_due_at is None:
        raise InvalidTransition(case.state, "invitation_requested (the case has no invitation deadline)")
    m = case.meeting
    return SendInvitation(
        case_id=case.id,
        case_reference=case.reference,
        consent_id=case.consent_id,
        recipients=recipients,
        invitation_due_at=case.invitation_due_at,
        plan_url=plan_page(web_base_url, case.id),
        organizer_hsa_id=case.owner_hsa_id,
        meeting_start=m.start if m else None,
        meeting_end=m.end if m else None,
        meeting_location=m.location if m else None,
        meeting_video_url=m.video_url if m else None,
        interpreter_language=case.preferences.interpreter_language if case.preferences else None,
        meeting_needs=meeting_needs(case.preferences),
        correlation_id=case.correlation_id or correlation_id,
    )


def plan_page(web_base_url: str, case_id: Any) -> str:
    """The link people follow from a mail: the plan's page in the web service (never a personnummer)."""
    return f"{web_base_url.rstrip('/')}/plans/{case_id}"


def notice(case: SipCase, kind: str, web_base_url: str, **extra: Any) -> CaseNotice:
    """What the participants are told (no personal data; the plan behind the link is consent-gated)."""
    return CaseNotice(
        case_id=case.id, case_reference=case.reference, kind=kind, recipients=case.participant_ids,
        owner_hsa_id=case.owner_hsa_id, consent_id=case.consent_id,
        plan_url=plan_page(web_base_url, case.id),
        interpreter_language=case.preferences.interpreter_language if case.preferences else None,
        # the notices a participant acts on state the person's needs; a closed case's does not
        meeting_needs=meeting_needs(case.preferences) if kind != "case-closed" else None,
        correlation_id=case.correlation_id, **extra,
    )  # fmt: skip


async def handle_consent_declined(
    ev: ConsentDeclined, *, repo: CaseRepository, deadlines: Deadlines | None = None
) -> SipCase | None:
    if ev.case_id is None:
        return None
    case = await _case_for(repo, ev.case_id, ev.patient_identifier)
    if case.state != "consent_pending":
        return None
    case = case.move_to("declined")
    await repo.update_case(case)
    if deadlines is not None:
        await deadlines.case_ended(case.id, at=ev.occurred_at, reason="declined")
    version = await repo.next_plan_version(case.id)
    if version > 1:
        await _new_plan_version(repo, case, ev.occurred_at, reason="consent declined", version=version)
    return case


async def handle_consent_withdrawn(
    ev: ConsentWithdrawn, *, repo: CaseRepository, clock: Clock, deadlines: Deadlines | None = None
) -> SipCase | None:
    """The consent the case rests on was withdrawn (or cancelled as wrongly registered): the SIP ends
    at once, its deadlines stop, and the plan records why. Notify stops what is pending itself."""
    if ev.case_id is None:
        return None
    case = await _case_for(repo, ev.case_id, ev.patient_identifier)
    if case.consent_id != ev.consent_id or case.state in FINAL_STATES:
        return None  # not the consent this case rests on, or already ended
    now = clock.now()
    case = case.consent_withdrawn() if case.state != "consent_pending" else case.move_to("declined")
    await repo.update_case(case)
    if deadlines is not None:
        await deadlines.case_ended(case.id, at=now, reason="consent withdrawn")
    await _new_plan_version(repo, case, now, reason=f"consent {ev.cause}")
    return case


async def handle_deadline_breached(
    ev: DeadlineBreached, *, repo: CaseRepository, clock: Clock, outbox: Outbox | None = None,
    web_base_url: str = "",
) -> SipCase | None:  # fmt: skip
    """Planning's own reaction to a breach: the follow-up date has come — the case is due for follow-up.
    (Escalating to the owning unit is notify's.)"""
    if ev.kind != "follow-up":
        return None
    case = await repo.get_case(ev.case_id, for_update=True)
    if case is None or case.state != "established":
        return None
    case = case.follow_up_is_due()
    await repo.update_case(case)
    await _new_plan_version(repo, case, clock.now(), reason="follow-up due")
    if outbox is not None:
        await outbox.send(notice(case, "follow-up-due", web_base_url, follow_up_date=case.follow_up_date))
    return case


async def handle_invitation_sent(
    ev: InvitationSent, *, repo: CaseRepository, clock: Clock, deadlines: Deadlines | None = None,
    policy: DeadlinePolicy | None = None,
) -> SipCase | None:  # fmt: skip
    case = await repo.get_case(ev.case_id, for_update=True)
    if case is None:
        raise PermanentError(f"no SIP case {ev.case_id}")
    await repo.record_invitation(case.id, ev.recipient_hsa_id, ev.channel, ev.sent_at)
    if case.state != "invitation_requested":
        return None
    case = case.move_to("invited", invited_at=ev.sent_at)
    await repo.update_case(case)
    if deadlines is not None:
        await deadlines.invitation_sent(case.id, at=ev.sent_at)
        # the meeting must be held by the regional deadline, counted from the invitation
        await deadlines.start(case, "meeting", ev.sent_at, policy or DeadlinePolicy(), at=clock.now())
    # a system transition (the invitation task completed), stored without the fhir.resources round
    # trip: nothing from the message enters the CarePlan but that the invitation went out
    await _new_plan_version(repo, case, clock.now(), reason="invitation sent", validate=False)
    return case


async def _new_plan_version(
    repo: CaseRepository, case: SipCase, at: datetime, *, agent_hsa_id: str | None = None,
    reason: str | None = None, validate: bool = True, version: int | None = None,
) -> int:  # fmt: skip
    """Every change to the plan is a new version (with its Provenance); earlier versions are kept.

    ``validate=False`` stores the CarePlan without the fhir.resources round trip (the same resource; the
    repository renders it, see :meth:`~services.planning.ports.CaseRepository.add_plan_version`): only
    for system transitions whose content is derived from case fields validated where they entered.
    Every path where a user's or another system's content first enters the plan (the coordinators'
    commands, a FHIR create) validates.
    ``version``: the next version when the caller has just read it (the case row is locked).
    """
    if version is None:
        version = await repo.next_plan_version(case.id)
    await repo.add_plan_version(
        case, version, at, validate=validate, activity="CREATE" if version == 1 else "UPDATE",
        agent_hsa_id=agent_hsa_id, reason=reason,
    )  # fmt: skip
    return version


# ---- the handler table: each called as handler(uow, msg) by the shared generic subscriber ----------
@dataclass(frozen=True)
class PlanningDeps:
    """What the table's handlers need besides the repositories, bound once in ``app.py``."""

    clock: Clock
    policy: DeadlinePolicy
    web_base_url: str = ""  # the human link (the web service's plan page)


class PlanningUnitOfWork(UnitOfWork, Protocol):
    """planning's unit of work: the inbox and outbox (``send``), its cases and deadlines, its
    dependencies (SQL: ``adapters/unit_of_work.py``; in memory, for handler tests: ``adapters/memory.py``)."""

    @property
    def cases(self) -> CaseRepository: ...

    @property
    def deadlines(self) -> Deadlines: ...

    @property
    def deps(self) -> PlanningDeps: ...


# The subscribers these replace had no docstring (their AsyncAPI channels no description), so these
# handlers have comments instead (shared.handler_table takes the description from the docstring).
async def consent_granted(uow: PlanningUnitOfWork, ev: ConsentGranted) -> None:
    # the first plan version and the invitation (handle_consent_granted)
    deps = uow.deps
    await handle_consent_granted(
        ev, repo=uow.cases, outbox=uow, clock=deps.clock, web_base_url=deps.web_base_url,
        deadlines=uow.deadlines, policy=deps.policy,
    )  # fmt: skip


async def consent_declined(uow: PlanningUnitOfWork, ev: ConsentDeclined) -> None:
    # the case ends declined (handle_consent_declined)
    await handle_consent_declined(ev, repo=uow.cases, deadlines=uow.deadlines)


async def invitation_sent(uow: PlanningUnitOfWork, ev: InvitationSent) -> None:
    # the case is invited, and whether the deadline held (handle_invitation_sent)
    deps = uow.deps
    await handle_invitation_sent(
        ev, repo=uow.cases, clock=deps.clock, deadlines=uow.deadlines, policy=deps.policy
    )


async def consent_withdrawn(uow: PlanningUnitOfWork, ev: ConsentWithdrawn) -> None:
    # the case rests on a consent that no longer holds (handle_consent_withdrawn)
    await handle_consent_withdrawn(ev, repo=uow.cases, clock=uow.deps.clock, deadlines=uow.deadlines)


async def deadline_breached(uow: PlanningUnitOfWork, ev: DeadlineBreached) -> None:
    # a follow-up that came due (handle_deadline_breached)
    deps = uow.deps
    await handle_deadline_breached(
        ev, repo=uow.cases, clock=deps.clock, outbox=uow, web_base_url=deps.web_base_url
    )


EVENT_HANDLERS: dict[type[Contract], Handler[PlanningUnitOfWork]] = {
    ConsentGranted: consent_granted,
    ConsentDeclined: consent_declined,
    InvitationSent: invitation_sent,
    ConsentWithdrawn: consent_withdrawn,
}
#: events planning raises itself and reacts to in-process, in the transaction that raised them (not
#: through RabbitMQ): the scheduler's breached deadlines (services/planning/scheduler.py); also the
#: handlers for what an earlier version left in the queue it used for them (shared.retired_queues)
OWN_EVENT_HANDLERS: dict[type[Contract], Handler[PlanningUnitOfWork]] = {
    DeadlineBreached: deadline_breached,
}
#: what the generic subscriber serves; the hospital's discharge notices and stay events keep their own
#: subscribers (they write their effect, or their dead letter, back to the message store)
HANDLERS: dict[type[Contract], Handler[PlanningUnitOfWork]] = {**EVENT_HANDLERS}
