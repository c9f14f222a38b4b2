"""Planning domain: SIP cases, their states and the rules that need no I/O.

A SIP case is opened when a discharged person needs help from both kommun and region (SoL 2:7,
HSL 16:4). The discharge law (LUS) then gives the invitation (kallelse) a deadline counted from the
exact ready-for-discharge timestamp.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from uuid import UUID, uuid4

from shared.errors import PermanentError

State = Literal[
    "consent_pending", "declined", "invitation_requested", "invited", "suspended", "cancelled", "closed"
]
OPEN_STATES: frozenset[str] = frozenset({"consent_pending", "invitation_requested", "invited", "suspended"})
FINAL_STATES: frozenset[str] = frozenset({"declined", "cancelled", "closed"})
#: states in which the LUS invitation clock runs (a suspended case's clock stands still)
INVITATION_CLOCK_STATES: frozenset[str] = frozenset({"consent_pending", "invitation_requested"})

TRANSITIONS: dict[str, frozenset[str]] = {
    # suspended: the hospital revoked ready-for-discharge; the case resumes where it was
    # cancelled: the hospital cancelled the notice that opened the case (wrong person or stay)
    # closed: ended for a recorded reason (the person died, ...)
    "consent_pending": frozenset({"invitation_requested", "declined", "suspended", "cancelled", "closed"}),
    "invitation_requested": frozenset({"invited", "suspended", "cancelled", "closed"}),
    "invited": frozenset({"suspended", "cancelled", "closed"}),
    "suspended": frozenset({"consent_pending", "invitation_requested", "invited", "cancelled", "closed"}),
    "declined": frozenset(),
    "cancelled": frozenset(),
    "closed": frozenset(),
}
"""Allowed moves. Later lifecycle steps (meeting, plan established, follow-up) extend this table."""

REQUIRED_PURPOSES = frozenset({"draw-up-plan", "send-invitation"})


class InvalidTransition(PermanentError):
    def __init__(self, current: str, target: str) -> None:
        super().__init__(f"a SIP case cannot go from {current} to {target}")
        self.current, self.target = current, target


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
    ready_for_discharge_at: datetime
    invitation_due_at: datetime
    correlation_id: str | None = None
    consent_id: UUID | None = None
    invited_at: datetime | None = None
    #: the state a suspended case resumes to
    suspended_from: str | None = None
    #: why a case was cancelled or closed (no health data: "deceased", "hospital cancelled discharged")
    closed_reason: str | None = None

    def move_to(self, target: State, **changes: object) -> SipCase:
        if target not in TRANSITIONS[self.state]:
            raise InvalidTransition(self.state, target)
        if target in ("cancelled", "closed") and not changes.get("closed_reason", self.closed_reason):
            raise PermanentError(f"a SIP case is {target} only with a recorded reason")
        if self.state == "suspended" and target in OPEN_STATES and target != self.suspended_from:
            raise InvalidTransition(self.state, target)
        return dataclasses.replace(self, state=target, **changes)  # type: ignore[arg-type]

    def suspend(self) -> SipCase:
        return self.move_to("suspended", suspended_from=self.state)

    def resume(self, ready_for_discharge_at: datetime, days: int) -> SipCase:
        """Ready for discharge again: back where it was, the deadline counted from the new time."""
        target = self.suspended_from or "consent_pending"
        return self.move_to(
            target,  # type: ignore[arg-type]
            suspended_from=None,
            ready_for_discharge_at=ready_for_discharge_at,
            invitation_due_at=invitation_deadline(ready_for_discharge_at, days),
        )

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES

    @property
    def invitation_deadline_met(self) -> bool | None:
        if self.invited_at is None:
            return None
        return self.invited_at <= self.invitation_due_at

    @property
    def participant_ids(self) -> tuple[str, ...]:
        return tuple(p.hsa_id for p in self.participants)


def sip_needed(needs_kommun_support: bool, needs_region_support: bool) -> bool:
    """The duty arises when the person needs help from both the municipality and the region."""
    return needs_kommun_support and needs_region_support


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
