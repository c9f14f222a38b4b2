"""Coordinators' commands over a SIP's lifecycle: propose, accept or refuse, record the person's meeting
preferences, invite, schedule the meeting, draft the plan, record the person's approval, follow up,
close. Each is one transaction: the case changes, a new plan version (with its Provenance) is kept,
and any message goes out through the outbox. A step the lifecycle does not allow is refused with
:class:`~services.planning.domain.InvalidTransition` (HTTP 409). No transport here.
"""

from __future__ import annotations

import dataclasses
from datetime import date, datetime, time
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from services.planning.deadlines import DeadlinePolicy, due_at
from services.planning.domain import (
    Participant,
    SipCase,
    new_case_id,
    new_reference,
)
from services.planning.handlers import _new_plan_version, invitation, notice, resolve_participants
from services.planning.plan import (
    Approval,
    ApprovalMethod,
    Approver,
    FollowUp,
    Meeting,
    MeetingPreferences,
    PlanContent,
)
from services.planning.ports import CaseRepository, Deadlines, Outbox
from services.planning.rules import is_child
from shared.clock import STOCKHOLM
from shared.contracts import ConsentRequested, PersonId
from shared.directory import Directory
from shared.errors import PermanentError


class CaseNotFound(PermanentError):
    pass


class Proposal(BaseModel):
    """Someone allowed to propose a SIP does so (SoL 2:7, HSL 16:4)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    patient_identifier: PersonId
    kommun_code: str = Field(pattern=r"^\d{4}$", description="The person's home kommun")
    primary_care_unit_hsa_id: str | None = Field(default=None, max_length=64)
    proposed_by: Literal["person", "relative", "guardian", "professional", "school", "other"]
    proposer_hsa_id: str | None = Field(default=None, max_length=64, description="The proposing organisation")
    external_id: str | None = Field(
        default=None, max_length=300, description="The proposer's own id (system|value)"
    )


async def _load(repo: CaseRepository, case_id: UUID) -> SipCase:
    case = await repo.get_case(case_id, for_update=True)
    if case is None:
        raise CaseNotFound(f"no SIP case {case_id}")
    return case


async def _save(
    repo: CaseRepository, case: SipCase, at: datetime, agent_hsa_id: str | None, reason: str
) -> SipCase:
    await repo.update_case(case)
    await _new_plan_version(repo, case, at, agent_hsa_id=agent_hsa_id, reason=reason)
    return case


async def propose(
    p: Proposal,
    *,
    repo: CaseRepository,
    directory: Directory,
    now: datetime,
    correlation_id: str | None = None,
) -> SipCase:
    participants, owner = resolve_participants(p.kommun_code, p.primary_care_unit_hsa_id, None, directory)
    if p.proposer_hsa_id and p.proposer_hsa_id not in {x.hsa_id for x in participants}:
        org = directory.get(p.proposer_hsa_id)
        if org is not None:
            participants = (*participants, Participant(org.hsa_id, org.name, org.kind))
    case_id = new_case_id()
    case = SipCase(
        id=case_id,
        reference=new_reference(case_id, now),
        hospital_hsa_id="",
        episode_id="",
        patient_identifier=p.patient_identifier,
        is_child=is_child(p.patient_identifier, now.date()),
        kommun_code=p.kommun_code,
        owner_hsa_id=owner,
        participants=participants,
        state="need_identified",
        opened_at=now,
        ready_for_discharge_at=None,
        invitation_due_at=None,
        correlation_id=correlation_id,
        origin="proposal",
        proposed_by=p.proposed_by,
        external_id=p.external_id,
    )
    await repo.add_case(case)
    await _new_plan_version(
        repo, case, now, agent_hsa_id=p.proposer_hsa_id, reason=f"proposed by {p.proposed_by}"
    )
    return case


async def accept(
    case_id: UUID, *, repo: CaseRepository, outbox: Outbox, now: datetime, agent_hsa_id: str,
    policy: DeadlinePolicy | None = None, deadlines: Deadlines | None = None,
) -> SipCase:  # fmt: skip
    """The proposal is taken up: work starts without delay — the invitation gets the same deadline."""
    policy = policy or DeadlinePolicy()
    case = (await _load(repo, case_id)).accept()
    case = dataclasses.replace(case, invitation_due_at=due_at("invitation", now, policy))
    if deadlines is not None:
        await deadlines.start(case, "invitation", now, policy, at=now)
    await outbox.send(
        ConsentRequested(
            case_id=case.id,
            patient_identifier=case.patient_identifier,
            is_child=case.is_child,
            proposed_recipients=case.participant_ids,
            requested_by_hsa_id=case.owner_hsa_id,
            correlation_id=case.correlation_id,
        )
    )
    return await _save(repo, case, now, agent_hsa_id, "proposal accepted")


async def refuse(
    case_id: UUID, reason: str, *, repo: CaseRepository, now: datetime, agent_hsa_id: str,
    deadlines: Deadlines | None = None,
) -> SipCase:  # fmt: skip
    case = (await _load(repo, case_id)).refuse(reason)
    if deadlines is not None:
        await deadlines.case_ended(case.id, at=now, reason="refused")
    return await _save(repo, case, now, agent_hsa_id, f"refused: {reason}")


async def record_preferences(
    case_id: UUID, prefs: MeetingPreferences, *, repo: CaseRepository, now: datetime, agent_hsa_id: str
) -> SipCase:
    case = (await _load(repo, case_id)).with_preferences(prefs)
    return await _save(repo, case, now, agent_hsa_id, "meeting preferences recorded")


async def invite(
    case_id: UUID, *, repo: CaseRepository, outbox: Outbox, now: datetime, agent_hsa_id: str,
    web_base_url: str,
) -> SipCase:  # fmt: skip
    """A prepared (proposed) case: the invitation goes to the participants the consent covers."""
    case = (await _load(repo, case_id)).invitation_requested()
    await outbox.send(invitation(case, case.invitees, web_base_url))
    return await _save(repo, case, now, agent_hsa_id, "invitation requested")


async def schedule_meeting(
    case_id: UUID, meeting: Meeting, *, repo: CaseRepository, outbox: Outbox, now: datetime,
    agent_hsa_id: str, web_base_url: str,
) -> SipCase:  # fmt: skip
    """The meeting time: the participants get a calendar invitation (notify attaches the ICS)."""
    case = (await _load(repo, case_id)).schedule_meeting(meeting)
    # the organisations the invitation went to (not only those whose delivery is already confirmed);
    # a case stored before invitees were kept: those invited so far, else the participants
    invited = case.invitees or tuple(await repo.invited_recipients(case.id)) or case.participant_ids
    await outbox.send(invitation(case, invited, web_base_url))
    return await _save(repo, case, now, agent_hsa_id, "meeting scheduled")


async def draft_plan(
    case_id: UUID, content: PlanContent, *, repo: CaseRepository, now: datetime, agent_hsa_id: str,
    deadlines: Deadlines | None = None,
) -> SipCase:  # fmt: skip
    case = await _load(repo, case_id)
    parties = set(case.participant_ids)
    if content.overall_responsibility_hsa_id not in parties:
        raise PlanRuleViolation(
            "overall_responsibility_hsa_id: the organisation with overall responsibility must take part"
        )
    for i in content.interventions:
        if i.responsible.kind == "organisation" and i.responsible.hsa_id not in parties:
            raise PlanRuleViolation(
                f"interventions[{i.id}].responsible: {i.responsible.hsa_id} is not a participant"
            )
    first_draft = case.state == "meeting_scheduled"
    case = case.draft_plan(content)
    if deadlines is not None and first_draft:
        await deadlines.met(case.id, "meeting", at=now)  # the plan is drafted at the meeting
    return await _save(repo, case, now, agent_hsa_id, "plan drafted")


class PlanRuleViolation(PermanentError):
    pass


def follow_up_start(day: date) -> datetime:
    """A follow-up date falls due at the start of that day, Stockholm time."""
    return datetime.combine(day, time.min, tzinfo=STOCKHOLM)


async def approve(
    case_id: UUID, *, version: int, approved_by: Approver, method: ApprovalMethod, repo: CaseRepository,
    now: datetime,
    agent_hsa_id: str, deadlines: Deadlines | None = None, policy: DeadlinePolicy | None = None,
    outbox: Outbox | None = None, web_base_url: str = "",
) -> SipCase:  # fmt: skip
    """The person's recorded approval of the drafted version: only then does it take effect."""
    case = await _load(repo, case_id)
    latest = await repo.next_plan_version(case.id) - 1
    if version != latest:
        raise PlanRuleViolation(
            f"version: approval must name the latest drafted version ({latest}); the plan changed since"
        )
    approval = Approval(
        version=version,
        approved_by=approved_by,
        method=method,
        recorded_by_hsa_id=agent_hsa_id,
        approved_at=now,
    )
    case = case.approve(approval)
    if outbox is not None:
        await outbox.send(notice(case, "plan-established", web_base_url, plan_version=version,
                                 follow_up_date=case.follow_up_date))  # fmt: skip
    if deadlines is not None and case.follow_up_date is not None:
        start = follow_up_start(case.follow_up_date)
        await deadlines.start(case, "follow-up", start, policy or DeadlinePolicy(), at=now)
    return await _save(repo, case, now, agent_hsa_id, f"approved by the {approved_by} ({method})")


async def follow_up_due(case_id: UUID, *, repo: CaseRepository, now: datetime) -> SipCase:
    case = (await _load(repo, case_id)).follow_up_is_due()
    return await _save(repo, case, now, None, "follow-up due")


async def follow_up(
    case_id: UUID, outcome: FollowUp, *, repo: CaseRepository, now: datetime, agent_hsa_id: str,
    deadlines: Deadlines | None = None, policy: DeadlinePolicy | None = None,
    outbox: Outbox | None = None, web_base_url: str = "",
) -> SipCase:  # fmt: skip
    case = (await _load(repo, case_id)).followed_up(outcome, now)
    if outbox is not None and case.state == "closed":
        await outbox.send(notice(case, "case-closed", web_base_url, reason_code="followed-up"))
    if deadlines is not None:
        await deadlines.met(case.id, "follow-up", at=now)
        if case.state == "closed":
            await deadlines.case_ended(case.id, at=now, reason="closed")
        elif case.state == "established" and case.follow_up_date is not None:
            await deadlines.start(case, "follow-up", follow_up_start(case.follow_up_date),
                                  policy or DeadlinePolicy(), at=now)  # fmt: skip
    return await _save(repo, case, now, agent_hsa_id, f"followed up: {outcome.outcome}")


async def close(
    case_id: UUID, reason: str, *, repo: CaseRepository, now: datetime, agent_hsa_id: str,
    deadlines: Deadlines | None = None, outbox: Outbox | None = None, web_base_url: str = "",
) -> SipCase:  # fmt: skip
    case = (await _load(repo, case_id)).close(reason)
    if outbox is not None:
        # the free-text reason stays in the case; participants only hear that it closed
        await outbox.send(notice(case, "case-closed", web_base_url, reason_code="other"))
    if deadlines is not None:
        await deadlines.case_ended(case.id, at=now, reason="closed")
    return await _save(repo, case, now, agent_hsa_id, f"closed: {reason}")
