"""Planning domain: SIP cases, their states and the rules that need no I/O.

A SIP case is opened when a discharged person needs help from both kommun and region (SoL 2:7,
HSL 16:4), or when someone allowed to propose one does (the person, a relative, a professional, a
school). The discharge law (LUS) gives the invitation (kallelse) of a discharge case a deadline counted
from the exact ready-for-discharge timestamp. The lifecycle, need to closing, is :data:`TRANSITIONS`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal, get_args
from uuid import UUID, uuid4

from services.planning.plan import Approval, FollowUp, Meeting, MeetingPreferences, PlanContent
from shared.errors import PermanentError

State = Literal[
    "need_identified",  # proposed by the person, a relative, a professional, a school, ...
    "refused",  # a proposal not taken up — only with a recorded reason
    "consent_pending",
    "declined",  # the person (or a guardian) said no
    "preparing",  # consent given; participants and the person's meeting preferences being gathered
    "invitation_requested",  # the invitation (kallelse) is being sent
    "invited",
    "meeting_scheduled",
    "plan_drafted",  # a plan version waits for the person's approval
    "established",  # the person approved the plan: it is in force
    "follow_up_due",
    "suspended",  # ready-for-discharge revoked, or the person re-admitted: the clock stands still
    "consent_withdrawn",
    "cancelled",  # the hospital cancelled the notice that opened the case (wrong person or stay)
    "closed",  # ended with a recorded reason (followed up and done, deceased, moved, ...)
]
FINAL_STATES: frozenset[str] = frozenset({"refused", "declined", "consent_withdrawn", "cancelled", "closed"})
OPEN_STATES: frozenset[str] = frozenset(get_args(State)) - FINAL_STATES
#: states in which the LUS invitation clock runs (a suspended case's clock stands still)
INVITATION_CLOCK_STATES: frozenset[str] = frozenset({"consent_pending", "preparing", "invitation_requested"})
#: an ending every open case can take (besides its own next steps)
_ENDINGS = frozenset({"suspended", "cancelled", "closed", "consent_withdrawn"})
#: endings that need a recorded reason
REASON_REQUIRED: frozenset[str] = frozenset({"refused", "cancelled", "closed"})

TRANSITIONS: dict[str, frozenset[str]] = {
    "need_identified": frozenset({"consent_pending", "refused", "cancelled"}),
    "consent_pending": frozenset(
        {"preparing", "invitation_requested", "declined", "suspended", "cancelled", "closed"}
    ),
    "preparing": frozenset({"invitation_requested"}) | _ENDINGS,
    "invitation_requested": frozenset({"invited"}) | _ENDINGS,
    "invited": frozenset({"meeting_scheduled"}) | _ENDINGS,
    "meeting_scheduled": frozenset({"plan_drafted"}) | _ENDINGS,
    "plan_drafted": frozenset({"established"}) | _ENDINGS,
    # a change to an established plan is a new draft; it takes effect when the person approves it
    "established": frozenset({"plan_drafted", "follow_up_due"}) | _ENDINGS,
    # followed up: continue as a new plan version, or close
    "follow_up_due": frozenset({"plan_drafted", "established"}) | _ENDINGS,
    "suspended": (frozenset(get_args(State)) - FINAL_STATES - {"suspended", "need_identified"})
    | frozenset({"cancelled", "closed", "consent_withdrawn"}),
    "refused": frozenset(),
    "declined": frozenset(),
    "consent_withdrawn": frozenset(),
    "cancelled": frozenset(),
    "closed": frozenset(),
}
"""Every allowed move; anything else is refused with :class:`InvalidTransition`."""

REQUIRED_PURPOSES = frozenset({"draw-up-plan", "send-invitation"})


class MissingReason(PermanentError):
    def __init__(self, target: str) -> None:
        super().__init__(f"a SIP case becomes {target} only with a recorded reason")
        self.target = target


class InvalidTransition(PermanentError):
    """A step the lifecycle does not allow from the current state (HTTP 409 with the state; ``missing``
    names what the step still needs, when something is missing rather than the step wrong)."""

    def __init__(self, current: str, target: str, *, missing: str | None = None, why: str = "") -> None:
        super().__init__(why or f"a SIP case cannot go from {current} to {target}")
        self.current, self.target, self.missing = current, target, missing


class ConsentMissing(InvalidTransition):
    """The step needs the person's consent and the case has none yet."""

    def __init__(self, current: str, target: str) -> None:
        super().__init__(
            current,
            target,
            missing="consent",
            why=f"a SIP case in state {current} cannot go to {target}: the person's consent is missing "
            "(the consent must be recorded first; accepting a proposal asks for it)",
        )


@dataclass(frozen=True)
class Participant:
    hsa_id: str
    name: str
    kind: str


@dataclass(frozen=True)
class SipCase:
    id: UUID
    reference: str
    hospital_hsa_id: str
    episode_id: str
    patient_identifier: str
    is_child: bool
    kommun_code: str
    owner_hsa_id: str  # the primary-care unit: its fast vårdkontakt sends the invitation (LUS)
    participants: tuple[Participant, ...]
    state: State
    opened_at: datetime
    #: the LUS clock: only a case opened from a discharge has one
    ready_for_discharge_at: datetime | None
    invitation_due_at: datetime | None
    correlation_id: str | None = None
    consent_id: UUID | None = None
    invited_at: datetime | None = None
    #: the state a suspended case resumes to
    suspended_from: State | None = None
    #: why a case was refused, cancelled or closed (no health data: "deceased", "moved", ...)
    closed_reason: str | None = None
    origin: Literal["discharge", "proposal"] = "discharge"
    #: the sender's own identifier of a plan created over FHIR ("system|value"; conditional create)
    external_id: str | None = None
    #: who proposed a SIP that did not come from a discharge (person, relative, professional, school, ...)
    proposed_by: str | None = None
    preferences: MeetingPreferences | None = None
    meeting: Meeting | None = None
    #: the latest plan content (a draft until approved)
    plan: PlanContent | None = None
    #: the plan in force: its content and the person's approval of it
    plan_in_force: PlanContent | None = None
    approval: Approval | None = None
    follow_up_date: date | None = None
    followed_up_at: datetime | None = None
    #: who the invitation went to (the participants the consent covers); a meeting time, set or moved
    #: later, goes to the same organisations — also to those whose InvitationSent has not come back yet
    invitees: tuple[str, ...] = ()
    #: the guardians named on a child's consent (consent.granted.v1): they may read the child's plan
    guardian_identifiers: tuple[str, ...] = ()

    def move_to(self, target: State, **changes: Any) -> SipCase:
        if target not in TRANSITIONS[self.state]:
            raise InvalidTransition(self.state, target)
        if target in REASON_REQUIRED:
            reason = changes.get("closed_reason")
            reason = reason.strip() if isinstance(reason, str) else reason
            if not reason:  # blanks say nothing
                raise MissingReason(target)
            changes["closed_reason"] = reason
        if self.state == "suspended" and target in OPEN_STATES and target != self.suspended_from:
            raise InvalidTransition(self.state, target)
        return dataclasses.replace(self, state=target, **changes)

    def suspend(self) -> SipCase:
        return self.move_to("suspended", suspended_from=self.state)

    def resume(self, ready_for_discharge_at: datetime, days_or_due: int | datetime) -> SipCase:
        """Ready for discharge again: back where it was, the deadline counted from the new time
        (``days_or_due``: calendar days, or the due time the deadline policy computed)."""
        target = self.suspended_from or "consent_pending"
        due = (
            days_or_due
            if isinstance(days_or_due, datetime)
            else invitation_deadline(ready_for_discharge_at, days_or_due)
        )
        return self.move_to(
            target,
            suspended_from=None,
            ready_for_discharge_at=ready_for_discharge_at,
            invitation_due_at=due,
        )

    # ---- lifecycle steps (each refuses what the table does not allow) -------------------------
    def accept(self) -> SipCase:
        """A proposed SIP is taken up: the person's consent is asked."""
        return self.move_to("consent_pending")

    def refuse(self, reason: str) -> SipCase:
        return self.move_to("refused", closed_reason=reason)

    def consent_given(self, consent_id: UUID, invitees: tuple[str, ...] = ()) -> SipCase:
        """A discharge case invites at once (the LUS clock runs): ``invitees``, the participants the
        consent covers; a proposed one is prepared first."""
        if self.origin == "discharge":
            return self.move_to("invitation_requested", consent_id=consent_id, invitees=invitees)
        return self.move_to("preparing", consent_id=consent_id)

    def invitation_requested(self) -> SipCase:
        """A prepared case is invited; one still waiting for the person's consent cannot be."""
        if self.consent_id is None and self.state in ("need_identified", "consent_pending", "suspended"):
            raise ConsentMissing(self.state, "invitation_requested")
        return self.move_to("invitation_requested", invitees=self.participant_ids)

    def with_preferences(self, preferences: MeetingPreferences) -> SipCase:
        if not self.is_open:
            raise InvalidTransition(self.state, "preferences recorded")
        return dataclasses.replace(self, preferences=preferences)

    def schedule_meeting(self, meeting: Meeting) -> SipCase:
        if self.state == "meeting_scheduled":  # moved to another time
            return dataclasses.replace(self, meeting=meeting)
        return self.move_to("meeting_scheduled", meeting=meeting)

    def draft_plan(self, content: PlanContent) -> SipCase:
        if self.state == "plan_drafted":  # the draft changed again before approval
            return dataclasses.replace(self, plan=content)
        return self.move_to("plan_drafted", plan=content)

    def approve(self, approval: Approval) -> SipCase:
        """The person's recorded approval: the drafted plan takes effect."""
        if self.plan is None:
            raise PermanentError("there is no drafted plan to approve")
        return self.move_to(
            "established",
            plan_in_force=self.plan,
            approval=approval,
            follow_up_date=self.plan.follow_up_date,
        )

    def follow_up_is_due(self) -> SipCase:
        return self.move_to("follow_up_due")

    def followed_up(self, outcome: FollowUp, at: datetime) -> SipCase:
        # a follow-up held before its date is a follow-up all the same
        due = self.follow_up_is_due() if self.state == "established" else self
        if due.state != "follow_up_due":
            raise InvalidTransition(self.state, f"followed up ({outcome.outcome})")
        if outcome.outcome == "close":
            return due.move_to("closed", closed_reason=outcome.reason, followed_up_at=at)
        if outcome.outcome == "revise":
            return due.move_to("plan_drafted", followed_up_at=at)
        return due.move_to("established", follow_up_date=outcome.next_follow_up_date, followed_up_at=at)

    def close(self, reason: str) -> SipCase:
        return self.move_to("closed", closed_reason=reason)

    def consent_withdrawn(self) -> SipCase:
        return self.move_to("consent_withdrawn", closed_reason="consent withdrawn")

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES

    @property
    def invitation_deadline_met(self) -> bool | None:
        if self.invited_at is None or self.invitation_due_at is None:
            return None
        return self.invited_at <= self.invitation_due_at

    @property
    def participant_ids(self) -> tuple[str, ...]:
        return tuple(p.hsa_id for p in self.participants)


def invitation_deadline(ready_for_discharge_at: datetime, days: int = 3) -> datetime:
    """LUS: the SIP invitation within ``days`` (calendar) days of the ready-for-discharge notice."""
    if ready_for_discharge_at.tzinfo is None:
        raise ValueError("ready_for_discharge_at must be timezone-aware")
    return ready_for_discharge_at + timedelta(days=days)


def new_reference(case_id: UUID, opened_at: datetime) -> str:
    return f"SIP-{opened_at.year}-{case_id.hex[:6].upper()}"


def new_case_id() -> UUID:
    return uuid4()


def invitees(participants: tuple[str, ...], consented: tuple[str, ...]) -> tuple[str, ...]:
    """Only organisations the consent covers are invited; a consent naming none covers the case's."""
    if not consented:
        return participants
    allowed = set(consented)
    return tuple(p for p in participants if p in allowed)
