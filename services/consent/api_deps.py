"""What every route module of consent's HTTP API shares, handed to the routes as a FastAPI dependency
(``ctx: Ctx``) rather than captured in a closure: the :class:`ConsentApi` context (store, clock, audit
writer, FHIR base URL) that the composition root puts on ``app.state.consent_api``, the caller (from
the verified token), and the audited consent reads the JSON and the FHIR routes both answer from.

The routes never build an adapter: the repository on a connection (``repository``, typed by the port
:class:`~services.consent.ports.ConsentStore`), the person's consents for a decision (``records_of``)
and the audit writer (:class:`~services.consent.ports.AuditLog`) are what ``app.py`` built.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated
from uuid import UUID

from fastapi import Depends, HTTPException, Request
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.consent import access
from services.consent.access import Denied
from services.consent.api_schemas import PersonIdModel
from services.consent.domain import AuditEntry, ConsentRecord, ConsentRequest
from services.consent.ports import AuditLog, ConsentRepository, ConsentStore
from shared.auth import Caller, current_caller
from shared.clock import Clock
from shared.messaging import describe_error
from shared.runtime import ServiceRuntime

PATIENT_DOC = "personnummer; required for organisations, a person's own by default"


@dataclass
class ConsentApi:
    """The routes' shared dependencies (one per app, on ``app.state.consent_api``)."""

    runtime: ServiceRuntime
    clock: Clock
    audit_writer: AuditLog
    repository: Callable[[AsyncConnection], ConsentStore]
    """The consent store on a connection (or a unit of work's): the SQL one, chosen in ``app.py``."""
    records_of: Callable[[str], Awaitable[list[ConsentRecord]]]
    """The person's consents on a connection of its own, closed before returning (decisions)."""
    base_url: str = "http://127.0.0.1:8081"
    security: str = ""

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")

    @contextlib.asynccontextmanager
    async def store(self) -> AsyncIterator[ConsentStore]:
        """The store on a connection of its own (no transaction), closed on leaving the block."""
        async with self.runtime.engine.connect() as conn:
            yield self.repository(conn)

    async def audited(self, *entries: AuditEntry) -> None:
        """Committed before the answer leaves (group commit; never only in memory)."""
        await self.audit_writer.write_all(list(entries))

    async def consents_seen_by(self, caller: Caller, pid: str, now: datetime) -> list[ConsentRecord]:
        """The person's consents the caller may see (filtered before any page), the search audited:
        the one search behind ``GET /consents`` and ``GET /fhir/Consent``."""
        async with self.store() as repo:
            records = await repo.for_patient(pid)
            requests = {r.case_id: r for r in await repo.requests_for_patient(pid)}
        guardians = access.guardians_of(records, now) if caller.is_person else frozenset()
        seen, verdict = access.search_consents(caller, pid, records, requests, guardians, now)
        await self.audited(
            access.read_entry(
                caller, patient=pid, action="search", verdict=verdict, what="Consent?patient", now=now
            )
        )
        return seen

    async def readable(self, request: Request, cid: UUID, what: str) -> ConsentRecord | None:
        """The consent if the caller may read it (audited either way); None: no such consent."""
        caller = caller_of(request)
        now = self.clock.now()
        async with self.store() as repo:  # closed before the audit write (SQLite)
            record = await repo.get(cid)
            if record is None:
                return None
            case_request = await case_request_of(repo, record.case_id)
            guardians = (
                access.guardians_of(await repo.for_patient(record.patient_identifier), now)
                if caller.is_person
                else frozenset()
            )
        verdict = access.read_consent(caller, record, case_request, guardians, now)
        await self.audited(
            access.read_entry(
                caller, patient=record.patient_identifier, action="read", verdict=verdict, what=what,
                now=now, consent_id=record.id, case_id=record.case_id,
            )
        )  # fmt: skip
        if not verdict.permit:
            raise Denied(403, verdict.detail)
        return record


def consent_api(request: Request) -> ConsentApi:
    """The app's :class:`ConsentApi` (a FastAPI dependency: it adds nothing to the OpenAPI)."""
    context: ConsentApi = request.app.state.consent_api
    return context


Ctx = Annotated[ConsentApi, Depends(consent_api)]


def caller_of(request: Request) -> Caller:
    """The verified caller; 401 (:class:`~services.consent.access.Denied`) without one. Called in the
    route's body, where the route always asked it, not as a dependency (that would answer 401 before
    a body's 422)."""
    return access.authenticated(current_caller(request))


async def case_request_of(repo: ConsentRepository, case_id: UUID | None) -> ConsentRequest | None:
    return await repo.get_request(case_id) if case_id is not None else None


def patient_param(raw: str) -> str:
    """``patient=<personnummer>`` or a FHIR token ``<system>|<value>``; validated, 12 digits."""
    value = raw.rsplit("|", 1)[-1]
    return PersonIdModel(v=value).v


def asked_patient(caller: Caller, patient: str | None, *, token: bool = False) -> str:
    """The person asked about: ``patient`` (validated; a FHIR token ``system|value`` where ``token``),
    or the calling person's own. An organisation must name the patient."""
    if patient is None:
        if caller.person_id is not None:
            return caller.person_id
        raise HTTPException(422, detail="patient: required (the personnummer the search is about)")
    if token:
        return patient_param(patient)
    try:
        return PersonIdModel(v=patient).v
    except ValidationError as exc:
        raise HTTPException(422, detail=describe_error(exc)) from None
