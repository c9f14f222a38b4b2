"""The ports of planning: what its handlers, routes and scheduler need from storage and transport,
as ``typing.Protocol``s. The composition root (``app.py``) hands them the SQL adapters
(``adapters/store.py``, ``adapters/deadline_store.py``); the handler tests the in-memory ones."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from services.planning.deadlines import Deadline, NextDeadline
from services.planning.domain import SipCase
from services.planning.stays import Stay
from shared.contracts import Contract


class CaseRepository(Protocol):
    async def get_stay(self, hospital_id: str, stay_id: str, *, for_update: bool = False) -> Stay | None: ...
    async def save_stay(self, stay: Stay, at: datetime, *, new: bool) -> None: ...
    async def add_case(self, case: SipCase) -> None: ...
    async def get_case(self, case_id: UUID, *, for_update: bool = False) -> SipCase | None: ...
    async def update_case(self, case: SipCase) -> None: ...
    async def open_cases(self, include_closed: bool = False) -> list[SipCase]: ...
    async def find_cases(
        self, *, patient: str | None = None, reference: str | None = None, states: set[str] | None = None,
        external_id: str | None = None, created_from: datetime | None = None,
        created_to: datetime | None = None, limit: int = 100,
    ) -> list[SipCase]: ...  # fmt: skip
    async def next_plan_version(self, case_id: UUID) -> int: ...
    async def add_plan_version(
        self, case: SipCase, version: int, at: datetime, *, validate: bool = True, activity: str = "UPDATE",
        agent_hsa_id: str | None = None, reason: str | None = None,
    ) -> None:  # fmt: skip
        """Keep ``case`` as plan ``version``: its CarePlan (rendered by the adapter; ``validate=False``
        skips the fhir.resources round trip), the case snapshot and the Provenance."""

    async def latest_plan(self, case_id: UUID) -> dict[str, Any] | None: ...
    async def record_invitation(
        self, case_id: UUID, recipient: str, channel: str, sent_at: datetime
    ) -> bool: ...
    async def invited_recipients(self, case_id: UUID) -> list[str]: ...


@dataclass(frozen=True)
class RelatedTo:
    """A pre-filter of the case lists: the cases an organisation (``hsa_id``) owns, takes part in or is
    the hospital of, or the cases of a person (``person_id``) and of the children a guardian is named
    for; neither given: no case. The store makes it a query (over-inclusive: the caller checks each
    case again, ``services.planning.access``)."""

    hsa_id: str | None = None
    person_id: str | None = None


class CaseStore(CaseRepository, Protocol):
    """The case repository as the HTTP API reads it: the handlers' port and the stays, the filtered
    lists and the stored plan versions (services/planning/adapters/store.SqlCaseRepository)."""

    async def list_stays(self, limit: int = 200, *, hospital_id: str | None = None) -> list[Stay]: ...
    async def open_cases(
        self, include_closed: bool = False, *, related: RelatedTo | None = None
    ) -> list[SipCase]: ...
    async def find_cases(
        self, *, patient: str | None = None, reference: str | None = None, states: set[str] | None = None,
        external_id: str | None = None, created_from: datetime | None = None,
        created_to: datetime | None = None, limit: int | None = 100, related: RelatedTo | None = None,
        with_plan: bool = False,
    ) -> list[SipCase]: ...  # fmt: skip
    async def plan_version(self, case_id: UUID, version: int | None = None) -> Any | None:
        """One stored version (the latest when ``version`` is None): ``version``, ``resource`` (the R4
        CarePlan as JSON text), ``snapshot``, ``recorded_at`` and the Provenance's ``activity``,
        ``agent_hsa_id``, ``reason``."""

    async def plan_versions(self, case_id: UUID) -> list[Any]:
        """Every stored version, newest first (as :meth:`plan_version`)."""


class Outbox(Protocol):
    async def send(self, message: Contract) -> None: ...


class Deadlines(Protocol):
    """Durable deadlines (services/planning/adapters/deadline_store.SqlDeadlines)."""

    async def case_opened(self, case: SipCase, *, at: datetime) -> Any: ...
    async def admission_noticed(
        self, *, hospital_id: str, stay_id: str, admitted_at: datetime, received_at: datetime,
        case: SipCase | None = None,
    ) -> Any: ...  # fmt: skip
    async def invitation_sent(self, case_id: UUID, *, at: datetime) -> Any: ...
    async def case_suspended(self, case_id: UUID, *, at: datetime) -> Any: ...
    async def case_resumed(self, case: SipCase, *, at: datetime) -> Any: ...
    async def case_ended(self, case_id: UUID, *, at: datetime, reason: str) -> Any: ...
    async def start(self, case: SipCase, kind: str, start: datetime, policy: Any, *, at: datetime) -> Any: ...
    async def met(self, case_id: UUID, kind: str, *, at: datetime) -> Any: ...


class DeadlineStore(Deadlines, Protocol):
    """The deadlines as the HTTP API reads and changes them (the lifecycle's commands)."""

    async def history(self, case_id: UUID) -> list[Deadline]:
        """Every cycle of every deadline of the case, oldest first."""

    async def next_deadlines(
        self, *, limit: int = 500, related: RelatedTo | None = None, keep: Collection[UUID] | None = None
    ) -> list[NextDeadline]:
        """Open cases with their next pending deadline and owner, the soonest first (none: last);
        ``related``: only the cases it pre-filters to, ``keep``: of those only these — both before
        the ``limit``."""


class DueDeadlines(Protocol):
    """The scheduler's port: claim the deadlines that passed unmet, inside the caller's transaction."""

    async def claim_due(self, now: datetime, *, limit: int = 100) -> list[Deadline]:
        """Mark the pending deadlines due by ``now`` breached (at most ``limit``); those this call claimed."""
