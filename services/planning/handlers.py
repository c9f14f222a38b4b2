"""Planning use cases: discharge → SIP case → consent → plan drafted → invitation. No transport here."""

from __future__ import annotations

import logging
from datetime import datetime

from services.planning.adapters.fhir import care_plan
from services.planning.domain import (
    REQUIRED_PURPOSES,
    Participant,
    SipCase,
    invitation_deadline,
    invitees,
    new_case_id,
    new_reference,
    sip_needed,
)
from services.planning.ports import CaseRepository, Outbox
from shared.clock import Clock
from shared.contracts import (
    ConsentDeclined,
    ConsentGranted,
    ConsentRequested,
    DischargeNotified,
    InvitationSent,
    SendInvitation,
)
from shared.directory import Directory, Organisation
from shared.errors import PermanentError
from shared.identifiers import parse_person_identifier

log = logging.getLogger("sip.planning")


def resolve_participants(ev: DischargeNotified, directory: Directory) -> tuple[tuple[Participant, ...], str]:
    """Kommun social services of the home kommun, the listed primary-care unit, the sending hospital.

    Returns the participants and the owner (the primary-care unit). Raises ``UnknownRecipient``.
    """
    social = directory.social_services_for(ev.patient.kommun_code)
    primary = directory.primary_care_for(ev.patient.primary_care_unit_hsa_id, ev.patient.kommun_code)
    orgs: list[Organisation] = [social, primary]
    hospital = directory.get(ev.hospital_hsa_id)
    if hospital is not None:
        orgs.append(hospital)
    return tuple(Participant(o.hsa_id, o.name, o.kind) for o in orgs), primary.hsa_id


async def handle_discharge(
    ev: DischargeNotified,
    *,
    repo: CaseRepository,
    outbox: Outbox,
    directory: Directory,
    clock: Clock,
    deadline_days: int = 3,
) -> SipCase | None:
    now = clock.now()
    needed = sip_needed(ev.needs_kommun_support, ev.needs_region_support)
    # route first: an unknown recipient refuses the discharge before anything is recorded
    participants, owner = resolve_participants(ev, directory) if needed else ((), "")
    if not await repo.add_episode(ev.hospital_hsa_id, ev.episode_id, now, ev.ready_for_discharge_at, needed):
        log.info("discharge episode already known; no second effect", extra={"episode": ev.episode_id})
        return None
    if not needed:
        return None
    case_id = new_case_id()
    case = SipCase(
        id=case_id,
        reference=new_reference(case_id, now),
        hospital_hsa_id=ev.hospital_hsa_id,
        episode_id=ev.episode_id,
        patient_identifier=ev.patient.identifier,
        is_child=parse_person_identifier(ev.patient.identifier).age_on(now.date()) < 18,
        kommun_code=ev.patient.kommun_code,
        owner_hsa_id=owner,
        participants=participants,
        state="consent_pending",
        opened_at=now,
        ready_for_discharge_at=ev.ready_for_discharge_at,
        invitation_due_at=invitation_deadline(ev.ready_for_discharge_at, deadline_days),
        correlation_id=ev.correlation_id,
    )
    await repo.add_case(case)
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
    return case


async def _case_for(repo: CaseRepository, case_id: object, patient_identifier: str) -> SipCase:
    case = await repo.get_case(case_id)  # type: ignore[arg-type]
    if case is None:
        raise PermanentError(f"no SIP case {case_id}")
    if case.patient_identifier != patient_identifier:
        raise PermanentError(f"consent names another person than SIP case {case_id}")
    return case


async def handle_consent_granted(
    ev: ConsentGranted, *, repo: CaseRepository, outbox: Outbox, clock: Clock, public_base_url: str
) -> SipCase | None:
    if ev.case_id is None:
        return None  # a consent not tied to a case opened here
    case = await _case_for(repo, ev.case_id, ev.patient_identifier)
    if case.state != "consent_pending":
        return None  # already handled (a second consent, or a resent decision)
    missing = REQUIRED_PURPOSES - set(ev.purposes)
    if missing:
        log.warning("consent lacks purposes needed to plan and invite", extra={"case_id": str(case.id),
                    "missing": ",".join(sorted(missing))})  # fmt: skip
        return None
    recipients = invitees(case.participant_ids, tuple(ev.recipients))
    if not recipients:
        raise PermanentError(f"the consent covers none of the participants of SIP case {case.id}")
    now = clock.now()
    case = case.move_to("invitation_requested", consent_id=ev.consent_id)
    await _new_plan_version(repo, case, now, invitation_sent=False)
    await repo.update_case(case)
    await outbox.send(
        SendInvitation(
            case_id=case.id,
            case_reference=case.reference,
            consent_id=ev.consent_id,
            recipients=recipients,
            invitation_due_at=case.invitation_due_at,
            plan_url=f"{public_base_url.rstrip('/')}/fhir/CarePlan/{case.id}",
            correlation_id=case.correlation_id or ev.correlation_id,
        )
    )
    return case


async def handle_consent_declined(ev: ConsentDeclined, *, repo: CaseRepository) -> SipCase | None:
    if ev.case_id is None:
        return None
    case = await _case_for(repo, ev.case_id, ev.patient_identifier)
    if case.state != "consent_pending":
        return None
    case = case.move_to("declined")
    await repo.update_case(case)
    return case


async def handle_invitation_sent(ev: InvitationSent, *, repo: CaseRepository, clock: Clock) -> SipCase | None:
    case = await repo.get_case(ev.case_id)
    if case is None:
        raise PermanentError(f"no SIP case {ev.case_id}")
    await repo.record_invitation(case.id, ev.recipient_hsa_id, ev.channel, ev.sent_at)
    if case.state != "invitation_requested":
        return None
    case = case.move_to("invited", invited_at=ev.sent_at)
    await repo.update_case(case)
    await _new_plan_version(repo, case, clock.now(), invitation_sent=True)
    return case


async def _new_plan_version(
    repo: CaseRepository, case: SipCase, at: datetime, *, invitation_sent: bool
) -> None:
    """Every change to the plan is a new version; earlier versions are kept."""
    version = await repo.next_plan_version(case.id)
    await repo.add_plan_version(case.id, version, care_plan(case, version=version, at=at,
                                invitation_sent=invitation_sent), at)  # fmt: skip
