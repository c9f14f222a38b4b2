"""consent's repository in memory, for handler tests: the same port as the SQL store
(:class:`services.consent.ports.ConsentRepository`), no database; and the unit of work around it."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID

from services.consent.domain import AuditEntry, ConsentRecord, ConsentRequest
from services.consent.handlers import ConsentDeps
from shared.unit_of_work import InMemoryUnitOfWork


@dataclass
class InMemoryConsentRepository:
    """Consents (with their versions), requests by case and the audit trail, in dicts."""

    records: dict[UUID, ConsentRecord] = field(default_factory=dict)
    versions: list[tuple[UUID, int, str]] = field(default_factory=list)
    requests: dict[UUID, ConsentRequest] = field(default_factory=dict)
    audit: dict[UUID, AuditEntry] = field(default_factory=dict)

    async def add(self, record: ConsentRecord) -> None:
        if record.id in self.records:
            raise ValueError("a consent with this id exists")
        self.records[record.id] = record
        self.versions.append((record.id, record.version, "created"))

    async def get(self, consent_id: UUID, *, for_update: bool = False) -> ConsentRecord | None:
        return self.records.get(consent_id)

    async def update_status(self, before: ConsentRecord, after: ConsentRecord, change: str) -> bool:
        """Optimistic, as the SQL store: only if the record is still at ``before.version``."""
        now = self.records.get(before.id)
        if now is None or now.version != before.version:
            return False
        self.records[before.id] = after
        self.versions.append((after.id, after.version, change))
        return True

    async def for_patient(self, patient_identifier: str) -> list[ConsentRecord]:
        found = [r for r in self.records.values() if r.patient_identifier == patient_identifier]
        return sorted(found, key=lambda r: r.recorded_at)

    async def add_request(self, request: ConsentRequest) -> bool:
        if request.case_id in self.requests:
            return False
        self.requests[request.case_id] = request
        return True

    async def get_request(self, case_id: UUID) -> ConsentRequest | None:
        return self.requests.get(case_id)

    async def mark_answered(self, case_id: UUID, consent_id: UUID) -> None:
        if case_id in self.requests:
            self.requests[case_id] = replace(
                self.requests[case_id], status="answered", answered_by=consent_id
            )

    async def reopen_request(self, case_id: UUID, consent_id: UUID) -> None:
        request = self.requests.get(case_id)
        if request is not None and request.answered_by == consent_id:
            self.requests[case_id] = replace(request, status="pending", answered_by=None)

    async def pending_requests(self) -> list[ConsentRequest]:
        found = [r for r in self.requests.values() if r.status == "pending"]
        return sorted(found, key=lambda r: r.requested_at)

    async def patient_of_case(self, case_id: UUID) -> str | None:
        request = self.requests.get(case_id)
        if request is not None:
            return request.patient_identifier
        return next((r.patient_identifier for r in self.records.values() if r.case_id == case_id), None)

    async def add_audit(self, entry: AuditEntry) -> None:
        if entry.id in self.audit:
            raise ValueError("an audit entry with this id exists")
        self.audit[entry.id] = entry


class InMemoryConsentUnitOfWork(InMemoryUnitOfWork):
    """consent's unit of work in memory: ``consents`` and the dependencies the handlers use."""

    def __init__(self, deps: ConsentDeps, consents: InMemoryConsentRepository | None = None) -> None:
        super().__init__()
        self.deps = deps
        self.consents = consents or InMemoryConsentRepository()

    def snapshot(self) -> Any:
        return (super().snapshot(), copy.deepcopy(self.consents))

    def restore(self, state: Any) -> None:
        base, saved = state
        vars(self.consents).update(vars(saved))  # in place: a test's reference stays good
        super().restore(base)
