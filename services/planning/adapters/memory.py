"""planning's repositories in memory, for handler tests: the same ports as the SQL stores
(:class:`services.planning.ports.CaseRepository`, :class:`~services.planning.ports.Deadlines`), no
database; and the unit of work around them."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from services.planning.domain import OPEN_STATES, SipCase
from services.planning.fhir import care_plan
from services.planning.handlers import PlanningDeps
from services.planning.stays import Stay
from shared.unit_of_work import InMemoryUnitOfWork


@dataclass
class InMemoryCaseRepository:
    """Stays, cases, plan versions (the CarePlan as the SQL store renders it) and invitations sent."""

    stays: dict[tuple[str, str], Stay] = field(default_factory=dict)
    cases: dict[UUID, SipCase] = field(default_factory=dict)
    plans: dict[UUID, list[dict[str, Any]]] = field(default_factory=dict)
    invitations: list[tuple[UUID, str, str, datetime]] = field(default_factory=list)

    async def get_stay(self, hospital_id: str, stay_id: str, *, for_update: bool = False) -> Stay | None:
        return self.stays.get((hospital_id, stay_id))

    async def save_stay(self, stay: Stay, at: datetime, *, new: bool) -> None:
        key = (stay.hospital_id, stay.stay_id)
        if new and key in self.stays:
            raise ValueError("the stay exists")
        self.stays[key] = stay

    async def add_case(self, case: SipCase) -> None:
        if case.id in self.cases:
            raise ValueError("the case exists")
        self.cases[case.id] = case

    async def get_case(self, case_id: UUID, *, for_update: bool = False) -> SipCase | None:
        return self.cases.get(case_id)

    async def update_case(self, case: SipCase) -> None:
        self.cases[case.id] = case

    async def open_cases(self, include_closed: bool = False) -> list[SipCase]:
        found = [c for c in self.cases.values() if include_closed or c.state in OPEN_STATES]
        return sorted(found, key=lambda c: (c.invitation_due_at is None, c.invitation_due_at, c.opened_at))

    async def find_cases(
        self, *, patient: str | None = None, reference: str | None = None, states: set[str] | None = None,
        external_id: str | None = None, created_from: datetime | None = None,
        created_to: datetime | None = None, limit: int = 100,
    ) -> list[SipCase]:  # fmt: skip
        found = [
            c
            for c in self.cases.values()
            if (patient is None or c.patient_identifier == patient)
            and (reference is None or c.reference == reference)
            and (states is None or c.state in states)
            and (external_id is None or c.external_id == external_id)
            and (created_from is None or c.opened_at >= created_from)
            and (created_to is None or c.opened_at < created_to)
        ]
        return sorted(found, key=lambda c: c.opened_at)[:limit]

    async def next_plan_version(self, case_id: UUID) -> int:
        return len(self.plans.get(case_id, [])) + 1

    async def add_plan_version(
        self, case: SipCase, version: int, at: datetime, *, validate: bool = True, activity: str = "UPDATE",
        agent_hsa_id: str | None = None, reason: str | None = None,
    ) -> None:  # fmt: skip
        kept = self.plans.setdefault(case.id, [])
        if version != len(kept) + 1:
            raise ValueError(f"plan version {version} of the case exists or skips one")
        kept.append(care_plan(case, version=version, at=at, validate=validate))

    async def latest_plan(self, case_id: UUID) -> dict[str, Any] | None:
        kept = self.plans.get(case_id)
        return kept[-1] if kept else None

    async def record_invitation(self, case_id: UUID, recipient: str, channel: str, sent_at: datetime) -> bool:
        if any((c, r, ch) == (case_id, recipient, channel) for c, r, ch, _ in self.invitations):
            return False
        self.invitations.append((case_id, recipient, channel, sent_at))
        return True

    async def invited_recipients(self, case_id: UUID) -> list[str]:
        return sorted({r for c, r, _, _ in self.invitations if c == case_id})


@dataclass
class RecordingDeadlines:
    """The deadline port in memory: what the handlers told it, in order (``(operation, case id)``);
    the deadline arithmetic and its store are tested on their own (tests/unit/planning/test_deadlines.py)."""

    told: list[tuple[str, Any]] = field(default_factory=list)

    def _tell(self, operation: str, case: SipCase | UUID | None) -> None:
        self.told.append((operation, case.id if isinstance(case, SipCase) else case))

    async def case_opened(self, case: SipCase, *, at: datetime) -> None:
        self._tell("case_opened", case)

    async def admission_noticed(
        self, *, hospital_id: str, stay_id: str, admitted_at: datetime, received_at: datetime,
        case: SipCase | None = None,
    ) -> None:  # fmt: skip
        self._tell("admission_noticed", case)

    async def invitation_sent(self, case_id: UUID, *, at: datetime) -> None:
        self._tell("invitation_sent", case_id)

    async def case_suspended(self, case_id: UUID, *, at: datetime) -> None:
        self._tell("case_suspended", case_id)

    async def case_resumed(self, case: SipCase, *, at: datetime) -> None:
        self._tell("case_resumed", case)

    async def case_ended(self, case_id: UUID, *, at: datetime, reason: str) -> None:
        self._tell(f"case_ended:{reason}", case_id)

    async def start(self, case: SipCase, kind: str, start: datetime, policy: Any, *, at: datetime) -> None:
        self._tell(f"start:{kind}", case)

    async def met(self, case_id: UUID, kind: str, *, at: datetime) -> None:
        self._tell(f"met:{kind}", case_id)


class InMemoryPlanningUnitOfWork(InMemoryUnitOfWork):
    """planning's unit of work in memory: ``cases``, ``deadlines`` and the handlers' dependencies."""

    def __init__(self, deps: PlanningDeps) -> None:
        super().__init__()
        self.deps = deps
        self.cases = InMemoryCaseRepository()
        self.deadlines = RecordingDeadlines()

    def snapshot(self) -> Any:
        return (super().snapshot(), copy.deepcopy(self.cases), copy.deepcopy(self.deadlines))

    def restore(self, state: Any) -> None:
        base, cases, deadlines = state
        vars(self.cases).update(vars(cases))  # in place: a test's reference stays good
        vars(self.deadlines).update(vars(deadlines))
        super().restore(base)
