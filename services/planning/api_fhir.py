"""The planning FHIR API (base ``/fhir``): CarePlan read, vread, ``_history``, search, ``$validate``,
conditional create (a SIP proposal), Provenance, CapabilityStatement. R4 by default; R5 when the
client asks with ``Accept: application/fhir+json; fhirVersion=5.0``. Every error is an
OperationOutcome.

The routes are module-level on ``router``; runtime, settings, clock, directory and consent gate come
as the FastAPI dependency ``ctx: Ctx`` (:class:`~services.planning.api_deps.PlanningApi`).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import unquote
from uuid import UUID

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from services.planning import access, lifecycle
from services.planning.access import may_read_plan
from services.planning.api_deps import Ctx, PlanningApi
from services.planning.domain import SipCase
from services.planning.fhir import (
    CASE_SYSTEM,
    MESSAGING,
    FhirVersion,
    care_plan,
    plan_status,
    provenance,
)
from shared.auth import current_caller
from shared.directory import UnknownRecipient
from shared.fhir import (
    FHIR_JSON,
    FhirValidationError,
    JsonBodyError,
    check_required_bindings,
    fhir_json,
    load_json_bounded,
    outcome_response,
)
from shared.fhir_rest import (
    SearchParam,
    fhir_route,
    frozen,
    history_bundle,
    negotiate,
    parse_search,
    searchset,
    security_text,
)
from shared.fhir_rest import capability_statement as generated_statement
from shared.identifiers import PERSONNUMMER_SYSTEM, SAMORDNINGSNUMMER_SYSTEM, InvalidPersonIdentifier

VERSIONS = ("4.0", "5.0")
CAREPLAN_SEARCH = (
    SearchParam("patient", "reference", "The person: personnummer or samordningsnummer, or <system>|<value>"),
    SearchParam("subject:identifier", "token", "The same as patient"),
    SearchParam("status", "token", "draft, active, on-hold, revoked, completed (comma = or)"),
    SearchParam("category", "token", "SIP"),
    SearchParam("date", "date", "When the case was opened: ge/gt/le/lt/eq<date>, repeatable"),
    SearchParam(
        "identifier", "token", "The case reference (<system>|<value>) or the client's own identifier"
    ),
)
PROVENANCE_SEARCH = (SearchParam("target", "reference", "CarePlan/<id>: who changed the plan, per version"),)


def wanted_version(request: Request) -> FhirVersion:
    """R4 unless the client asks for R5 (Accept ...; fhirVersion=5.0, _format, _fhirVersion)."""
    return "5.0" if negotiate(request, VERSIONS) == "5.0" else "4.0"


def _respond(
    resource: dict[str, Any], version: FhirVersion, status: int = 200, **headers: str
) -> JSONResponse:
    media = f"{FHIR_JSON}; fhirVersion={version}"
    return JSONResponse(resource, status_code=status, media_type=media, headers=headers or None)


def _element(resource_type: str, exc: ValidationError) -> str:
    err = exc.errors()[0]
    path = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
    return f"{resource_type}.{path}" if path else resource_type


def validate_resource(body: bytes, version: FhirVersion) -> tuple[dict[str, Any] | None, JSONResponse | None]:
    """Parse + validate a CarePlan incl. required bindings; else an OperationOutcome naming the element."""
    from fhir.resources import get_fhir_model_class
    from fhir.resources.R4B import get_fhir_model_class as get_r4b

    try:
        raw = load_json_bounded(body)
    except JsonBodyError as exc:
        return None, outcome_response(400, str(exc), "invalid")
    if isinstance(raw, dict) and raw.get("resourceType") == "Parameters":  # $validate's own form
        given = [p for p in raw.get("parameter") or [] if isinstance(p, dict) and p.get("name") == "resource"]
        raw = given[0].get("resource") if given else None
    if not isinstance(raw, dict) or raw.get("resourceType") != "CarePlan":
        return None, outcome_response(
            422,
            "the body must be a CarePlan, or Parameters with a parameter 'resource' holding one",
            "invalid",
        )
    model_class = (get_fhir_model_class if version == "5.0" else get_r4b)("CarePlan")
    try:
        model = model_class.model_validate(raw)
        check_required_bindings(model)
    except ValidationError as exc:
        element = _element("CarePlan", exc)
        return None, fhir_json(
            {
                "resourceType": "OperationOutcome",
                "issue": [
                    {
                        "severity": "error",
                        "code": "invalid",
                        "diagnostics": f"{element}: {exc.errors()[0]['msg']}",
                        "expression": [element],
                    }
                ],
            },
            422,
        )
    except FhirValidationError as exc:
        return None, fhir_json(
            {
                "resourceType": "OperationOutcome",
                "issue": [
                    {
                        "severity": "error",
                        "code": "code-invalid",
                        "diagnostics": str(exc),
                        "expression": [exc.element],
                    }
                ],
            },
            422,
        )
    return model.model_dump(mode="json", exclude_none=True), None


def _date_range(values: list[str]) -> tuple[datetime | None, datetime | None, str | None]:
    lo = hi = None
    for v in values:
        prefix, day = (v[:2], v[2:]) if v[:2] in ("ge", "le", "gt", "lt", "eq") else ("eq", v)
        try:
            d = date.fromisoformat(day[:10])
        except ValueError:
            return None, None, f"date: '{v}' is not a date (use e.g. ge2026-01-01)"
        start = datetime.combine(d, time.min, tzinfo=UTC)
        if prefix in ("ge", "eq"):
            lo = start
        if prefix == "gt":
            lo = start + timedelta(days=1)
        if prefix in ("le", "eq"):
            hi = start + timedelta(days=1)
        if prefix == "lt":
            hi = start
    return lo, hi, None


router = APIRouter(prefix="/fhir", tags=["fhir"])


async def _access(ctx: PlanningApi, request: Request, case_id: UUID, what: str) -> JSONResponse | None:
    """None when the caller may read the plan; else the OperationOutcome to answer (403/404/503).
    Either way the read is recorded in the person's audit trail first (services/planning/access.py)."""
    async with ctx.runtime.engine.connect() as conn:
        case = await ctx.cases(conn).get_case(case_id)
    if case is None:
        return outcome_response(404, f"no CarePlan with id {case_id}", "not-found")
    caller = current_caller(request)
    decision = await may_read_plan(caller, case, ctx.gate())
    if caller is not None:
        await access.record(ctx.runtime, [access.access_recorded(
            caller, what=what, basis=decision.basis, allowed=decision.allowed, at=ctx.clock.now(), case=case,
        )])  # fmt: skip
    if decision.allowed:
        return None
    if decision.status == 404:
        return outcome_response(404, f"no CarePlan with id {case_id}", "not-found")
    return outcome_response(
        decision.status, decision.reason, "forbidden" if decision.status == 403 else "transient"
    )


def render(case: SipCase, version: int, at: datetime, fv: FhirVersion) -> dict[str, Any]:
    return care_plan(case, version=version, at=at, fhir_version=fv)


@router.get("/metadata", summary="CapabilityStatement (generated from the routes registered)")
async def metadata(request: Request, ctx: Ctx) -> JSONResponse:
    return fhir_json(generated_statement(
        request.app, name="planning", base_url=ctx.base_url, at=ctx.clock.now(), versions=VERSIONS,
        security=security_text(ctx.settings), messaging=MESSAGING,
    ))  # fmt: skip


async def _version_row(ctx: PlanningApi, plan_id: str, vid: int | None) -> tuple[Any, JSONResponse | None]:
    try:
        case_id = UUID(plan_id)
    except ValueError:
        return None, outcome_response(404, f"no CarePlan with id {plan_id[:64]}", "not-found")
    async with ctx.runtime.engine.connect() as conn:
        row = await ctx.cases(conn).plan_version(case_id, vid)
    if row is None:
        what = f"version {vid} of CarePlan {case_id}" if vid else f"CarePlan with id {case_id}"
        return None, outcome_response(404, f"no {what}", "not-found")
    return row, None


def _from_row(ctx: PlanningApi, row: Any, fv: FhirVersion) -> dict[str, Any]:
    if fv == "4.0":
        return json.loads(row.resource)
    return render(ctx.case_from_snapshot(row.snapshot), row.version, row.recorded_at, fv)


@router.get(
    "/CarePlan/{plan_id}", summary="Read the latest version of a plan", openapi_extra=access.READ_CASE
)
async def read(plan_id: str, request: Request, ctx: Ctx) -> JSONResponse:
    row, error = await _version_row(ctx, plan_id, None)
    if error:
        return error
    if denied := await _access(ctx, request, UUID(plan_id), f"CarePlan/{UUID(plan_id)}"):
        return denied
    fv = wanted_version(request)
    return _respond(_from_row(ctx, row, fv), fv, ETag=f'W/"{row.version}"')


@router.get(
    "/CarePlan/{plan_id}/_history/{vid}",
    summary="Read one version of a plan (vread)",
    openapi_extra=access.READ_CASE,
)
async def vread(plan_id: str, vid: str, request: Request, ctx: Ctx) -> JSONResponse:
    if not (vid.isdigit() and 0 < int(vid[:10]) < 2**31 and len(vid) <= 10):  # a version id, as stored
        return outcome_response(404, f"no version {vid[:32]} of CarePlan {plan_id[:64]}", "not-found")
    row, error = await _version_row(ctx, plan_id, int(vid))
    if error:
        return error
    if denied := await _access(ctx, request, UUID(plan_id), f"CarePlan/{UUID(plan_id)}/_history/{vid}"):
        return denied
    fv = wanted_version(request)
    return _respond(_from_row(ctx, row, fv), fv, ETag=f'W/"{row.version}"')


@router.get(
    "/CarePlan/{plan_id}/_history",
    summary="Every version of a plan, newest first",
    openapi_extra=access.READ_CASE,
)
async def history(plan_id: str, request: Request, ctx: Ctx) -> JSONResponse:
    try:
        case_id = UUID(plan_id)
    except ValueError:
        return outcome_response(404, f"no CarePlan with id {plan_id[:64]}", "not-found")
    async with ctx.runtime.engine.connect() as conn:
        rows = await ctx.cases(conn).plan_versions(case_id)
    if not rows:
        return outcome_response(404, f"no CarePlan with id {case_id}", "not-found")
    if denied := await _access(ctx, request, case_id, f"CarePlan/{case_id}/_history"):
        return denied
    fv = wanted_version(request)
    items = [(_from_row(ctx, r, fv), "POST" if r.version == 1 else "PUT", "201" if r.version == 1 else "200")
             for r in rows]  # fmt: skip
    return _respond(history_bundle(ctx.base_url, items), fv)


@router.get(
    "/CarePlan",
    summary="Search plans: patient, status, category, date, identifier; paged (_count, next)",
    openapi_extra={**access.SEARCH_PLANS, **fhir_route(search=CAREPLAN_SEARCH)},
)
async def search(request: Request, ctx: Ctx) -> JSONResponse:
    s = parse_search(request, CAREPLAN_SEARCH)
    fv = wanted_version(request)

    def empty() -> JSONResponse:
        return _respond(searchset(ctx.base_url, "CarePlan", s, [], 0), fv)

    patient = s.get("patient") or s.get("subject:identifier")
    if patient and "|" in patient:
        system, _, patient = patient.partition("|")
        if system not in ("", PERSONNUMMER_SYSTEM, SAMORDNINGSNUMMER_SYSTEM):
            return empty()
    reference = external = None
    if s.get("identifier"):
        ident = s.get("identifier") or ""
        system, _, value = ident.rpartition("|")
        if system in ("", CASE_SYSTEM):
            reference = value
        else:  # the client's own identifier, stored by a (conditional) create
            external = ident
    category = s.get("category")
    if category and category.rpartition("|")[2] != "SIP":
        return empty()
    lo, hi, error = _date_range(s.getlist("date"))
    if error:
        return outcome_response(400, error, "invalid")
    if s.snapshot is not None:  # a later page: what was opened after the first page stays out
        cut = s.snapshot + timedelta(microseconds=1)
        hi = min(hi, cut) if hi else cut
    statuses = set((s.get("status") or "").split(",")) - {""}
    caller = current_caller(request)
    # the audit names the search's parameters, never their values
    what = "CarePlan?" + ",".join(sorted({k for k, _ in s.criteria}))
    # filtered before counting and paging: only what a read by id would show (the owner's, the
    # covered participants', the person's own, a guardian's child's), so no page is short
    async with ctx.runtime.engine.connect() as conn:
        found = await ctx.cases(conn).find_cases(
            patient=patient, reference=reference, external_id=external, created_from=lo, created_to=hi,
            limit=None, related=access.search_filter(caller), with_plan=True,
        )  # fmt: skip
    visible: list[tuple[SipCase, access.AccessBasis]] = []
    records = []
    now = ctx.clock.now()
    for c in found:
        if statuses and plan_status(c) not in statuses:
            continue
        decision = await may_read_plan(caller, c, ctx.gate())
        if decision.status == 503:
            return outcome_response(503, decision.reason, "transient")
        if decision.allowed:
            visible.append((c, decision.basis))
        elif caller is not None and decision.basis != "none":  # refused despite a relation
            records.append(access.access_recorded(
                caller, what=what, basis=decision.basis, allowed=False, at=now, case=c, action="search",
            ))  # fmt: skip
    snapshot = frozen(s, (c.opened_at for c, _ in visible))
    entries = []
    async with ctx.runtime.engine.connect() as conn:
        repo = ctx.cases(conn)
        for c, basis in visible[s.offset : s.offset + s.count]:
            row = await repo.plan_version(c.id)
            if row is not None:
                entries.append(_from_row(ctx, row, fv))
            if caller is not None:
                records.append(access.access_recorded(
                    caller, what=what, basis=basis, allowed=True, at=now, case=c, action="search",
                ))  # fmt: skip
    named = access.person_of(patient)
    if caller is not None and named is not None and not visible and not records:
        # a search for a person that showed nothing is still in the person's trail
        records.append(access.access_recorded(
            caller, what=what, basis="none", allowed=False, at=now, patient_identifier=named,
            action="search",
        ))  # fmt: skip
    await access.record(ctx.runtime, records)
    return _respond(searchset(ctx.base_url, "CarePlan", s, entries, len(visible), snapshot), fv)


@router.post(
    "/CarePlan/$validate",
    summary="Validate a CarePlan (R4, or R5 when asked), incl. required codes",
    openapi_extra=access.VALIDATE,
)
async def validate(request: Request) -> JSONResponse:
    fv = wanted_version(request)
    _, error = validate_resource(await request.body(), fv)
    if error:
        return error
    return _respond(
        {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "information",
                    "code": "informational",
                    "diagnostics": f"valid FHIR {fv} CarePlan",
                }
            ],
        },
        fv,
    )


@router.post(
    "/CarePlan",
    summary="Propose a SIP as a CarePlan (status draft); conditional create with If-None-Exist",
    description="The subject must be identified by personnummer or samordningsnummer and the author "
    "be the proposing organisation (HSA-id). The home kommun is taken from the author's area in "
    "the organisation directory. `If-None-Exist: identifier=<system>|<value>` makes the create "
    "idempotent: an existing plan with that identifier is answered with 200 and not created again.",
    openapi_extra={**access.CREATE_PLAN, **fhir_route(conditional_create=True)},
)
async def create(request: Request, ctx: Ctx) -> JSONResponse:
    caller = current_caller(request)
    if caller is not None and caller.hsa_id is None:
        return outcome_response(403, "a SIP is proposed by an organisation, not a person", "forbidden")
    resource, error = validate_resource(await request.body(), "4.0")
    if error:
        return error
    assert resource is not None
    author_id = ((resource.get("author") or {}).get("identifier") or {}).get("value")
    if (status := access.check_proposer(caller, author_id or None)[0]) != 200:
        return outcome_response(status, "CarePlan.author must be the calling organisation", "forbidden")
    ident = (resource.get("identifier") or [{}])[0]
    external = f"{ident.get('system', '')}|{ident['value']}" if ident.get("value") else None
    condition = request.headers.get("if-none-exist")
    if condition:
        key, _, value = condition.partition("=")
        value = unquote(value.strip())
        if key.strip() != "identifier" or not value:
            return outcome_response(
                400, "If-None-Exist supports identifier=<system>|<value> only", "not-supported"
            )
        async with ctx.runtime.engine.connect() as conn:
            existing = await ctx.cases(conn).find_cases(external_id=value.strip(), limit=1)
        if existing:
            if denied := await _access(ctx, request, existing[0].id, f"CarePlan/{existing[0].id}"):
                return denied
            async with ctx.runtime.engine.connect() as conn:
                row = await ctx.cases(conn).plan_version(existing[0].id)
            assert row is not None  # a case has a plan version from the start
            return _respond(
                json.loads(row.resource),
                "4.0",
                200,
                Location=f"{ctx.base_url}/fhir/CarePlan/{existing[0].id}",
            )
        external = value.strip()
    subject = (resource.get("subject") or {}).get("identifier") or {}
    if subject.get("system") not in (PERSONNUMMER_SYSTEM, SAMORDNINGSNUMMER_SYSTEM):
        return outcome_response(
            422, "CarePlan.subject.identifier must be a personnummer or samordningsnummer", "required"
        )
    author = ((resource.get("author") or {}).get("identifier") or {}).get("value")
    org = ctx.directory.get(author) if author else None
    if org is None or not org.serves.kommun_codes:
        return outcome_response(
            422,
            "CarePlan.author: the proposing organisation (HSA-id) must be in the directory with its area",
            "required",
        )
    try:
        proposal = lifecycle.Proposal(
            patient_identifier=subject.get("value", ""), kommun_code=org.serves.kommun_codes[0],
            proposed_by="professional", proposer_hsa_id=org.hsa_id, external_id=external,
            primary_care_unit_hsa_id=org.hsa_id if org.kind == "primary_care_unit" else None,
        )  # fmt: skip
    except (ValidationError, InvalidPersonIdentifier):
        return outcome_response(
            422, "CarePlan.subject.identifier: not a valid personal identity number", "invalid"
        )
    try:
        async with ctx.runtime.unit_of_work() as uow:
            repo = ctx.cases(uow.conn)
            case = await lifecycle.propose(proposal, repo=repo, directory=ctx.directory, now=ctx.clock.now())
            row = await repo.plan_version(case.id)
    except UnknownRecipient as exc:
        return outcome_response(422, str(exc), "not-found")
    assert row is not None  # propose stored version 1
    return _respond(
        json.loads(row.resource), "4.0", 201, Location=f"{ctx.base_url}/fhir/CarePlan/{case.id}/_history/1"
    )


@router.get(
    "/Provenance",
    summary="Who changed a plan: Provenance?target=CarePlan/{id}, one per version, paged",
    openapi_extra={**access.READ_CASE, **fhir_route(search=PROVENANCE_SEARCH)},
)
async def provenance_search(request: Request, ctx: Ctx) -> JSONResponse:
    s = parse_search(request, PROVENANCE_SEARCH)
    target = s.get("target")
    if not target:
        return outcome_response(400, "target is required: Provenance?target=CarePlan/<id>", "required")
    plan_id = target.rsplit("/fhir/", 1)[-1].removeprefix("CarePlan/").split("/")[0]
    try:
        case_id = UUID(plan_id)
    except ValueError:
        return outcome_response(400, "target must be CarePlan/<id>", "invalid")
    fv = wanted_version(request)
    if denied := await _access(ctx, request, case_id, "Provenance?target"):
        return denied
    async with ctx.runtime.engine.connect() as conn:
        rows = await ctx.cases(conn).plan_versions(case_id)
    if s.snapshot is not None:
        rows = [r for r in rows if r.recorded_at <= s.snapshot]
    snapshot = frozen(s, (r.recorded_at for r in rows))
    page = [
        provenance(str(case_id), r.version, r.recorded_at, r.activity, r.agent_hsa_id, r.reason, fv)
        for r in rows[s.offset : s.offset + s.count]
    ]
    return _respond(searchset(ctx.base_url, "Provenance", s, page, len(rows), snapshot), fv)


@router.get(
    "/Provenance/{provenance_id}",
    summary="One Provenance: who made one version of a plan ({plan id}-{version})",
    openapi_extra=access.READ_CASE,
)
async def provenance_read(provenance_id: str, request: Request, ctx: Ctx) -> JSONResponse:
    plan_id, _, vid = provenance_id[:80].rpartition("-")
    if not (re.fullmatch(r"[0-9]{1,9}", vid) and int(vid) > 0):
        return outcome_response(404, f"no Provenance with id {provenance_id[:64]}", "not-found")
    row, error = await _version_row(ctx, plan_id, int(vid))
    if error:
        return outcome_response(404, f"no Provenance with id {provenance_id[:64]}", "not-found")
    if denied := await _access(ctx, request, UUID(plan_id), f"Provenance/{provenance_id[:80]}"):
        return denied
    fv = wanted_version(request)
    resource = provenance(
        str(UUID(plan_id)), row.version, row.recorded_at, row.activity, row.agent_hsa_id, row.reason, fv
    )
    return _respond(resource, fv)
