"""consent's FHIR API (base ``/fhir``): Consent read, search, history and vread (R4 by default, R5 on
request), the AuditEvent search and read (R4 only), and the CapabilityStatement generated from these
routes. FHIR paths answer refusals and bad input as an OperationOutcome."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from uuid import UUID

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import ValidationError
from starlette.responses import JSONResponse

from services.consent import access
from services.consent.access import RULES, Denied
from services.consent.api_deps import ConsentApi, Ctx, asked_patient, caller_of
from services.consent.domain import AuditEntry, ConsentRecord
from services.consent.fhir import (
    FhirVersion,
    audit_event_resource,
    audit_events,
    consent_history,
    consent_resource,
    validated_bundle,
)
from shared.fhir import FHIR_JSON, fhir_json, outcome_response
from shared.fhir_rest import (
    FhirError,
    SearchParam,
    fhir_route,
    frozen,
    parse_search,
    searchset,
)
from shared.fhir_rest import capability_statement as generated_statement

_VERSION_ALIASES: dict[str, FhirVersion] = {
    "4.0": "4.0",
    "4.0.1": "4.0",
    "r4": "4.0",
    "5.0": "5.0",
    "5.0.0": "5.0",
    "r5": "5.0",
}


class UnsupportedFhirVersion(ValueError):
    pass


def fhir_version(request: Request) -> FhirVersion:
    """R4 unless asked for R5: ``?_fhirVersion=5.0`` or ``Accept: application/fhir+json; fhirVersion=5.0``."""
    asked = request.query_params.get("_fhirVersion")
    if asked is None:
        m = re.search(r"fhirVersion\s*=\s*\"?([0-9.]+|[rR][45])", request.headers.get("accept", ""))
        asked = m.group(1) if m else None
    if asked is None:
        return "4.0"
    version = _VERSION_ALIASES.get(asked.strip().lower())
    if version is None:
        raise UnsupportedFhirVersion(asked)
    return version


def fhir_response(
    resource: dict[str, Any], version: FhirVersion, headers: dict[str, str] | None = None
) -> Response:
    return JSONResponse(resource, media_type=f"{FHIR_JSON}; fhirVersion={version}", headers=headers)


VERSIONS = ("4.0", "5.0")
CONSENT_SEARCH = (
    SearchParam(
        "patient", "reference", "The person: personnummer, or <system>|<value>; a person's own by default"
    ),
    SearchParam("status", "token", "active, inactive, rejected, entered-in-error (comma = or)"),
)
AUDIT_SEARCH = (
    SearchParam(
        "patient", "reference", "The person: personnummer, or <system>|<value>; a person's own by default"
    ),
)


router = APIRouter()


def _unsupported(asked: str) -> Response:
    return outcome_response(
        406, f"FHIR version '{asked[:20]}' not supported: 4.0 (default) or 5.0", "not-supported"
    )


@router.get(
    "/fhir/Consent/{consent_id}",
    tags=["fhir"],
    summary="Read a consent as FHIR Consent (R4; R5 with ?_fhirVersion=5.0 or Accept fhirVersion=5.0)",
    openapi_extra=RULES["read"],
)
async def fhir_consent(consent_id: str, request: Request, ctx: Ctx) -> Response:
    try:
        version = fhir_version(request)
    except UnsupportedFhirVersion as exc:
        return _unsupported(str(exc))
    try:
        cid = UUID(consent_id)
    except ValueError:
        return outcome_response(404, "no Consent with that id", "not-found")
    record = await ctx.readable(request, cid, f"Consent/{cid}")
    if record is None:
        return outcome_response(404, "no Consent with that id", "not-found")
    return fhir_response(
        consent_resource(record, version, ctx.clock.now()), version, {"ETag": f'W/"{record.version}"'}
    )


async def _versions(ctx: ConsentApi, cid: UUID) -> list[tuple[int, str, datetime, ConsentRecord]] | None:
    async with ctx.store() as repo:
        versions = await repo.history(cid)
        if not versions:  # recorded before history was kept: its current state is version 1
            record = await repo.get(cid)
            if record is None:
                return None
            versions = [(record.version, "created", record.recorded_at, record)]
    return versions


@router.get("/fhir/metadata", tags=["fhir"], summary="CapabilityStatement (generated from the routes)")
async def fhir_metadata(request: Request, ctx: Ctx) -> Response:
    return fhir_json(generated_statement(
        request.app, name="consent", base_url=ctx.base_url, at=ctx.clock.now(), versions=VERSIONS,
        security=ctx.security,
    ))  # fmt: skip


@router.get(
    "/fhir/Consent",
    tags=["fhir"],
    summary="Search a person's consents (each filtered by the read rule before paging): patient, status",
    openapi_extra={**RULES["search"], **fhir_route(search=CONSENT_SEARCH)},
)
async def fhir_consent_search(request: Request, ctx: Ctx) -> Response:
    s = parse_search(request, CONSENT_SEARCH)
    version = fhir_version(request)
    caller = caller_of(request)
    try:
        pid = asked_patient(caller, s.get("patient"), token=True)
    except ValidationError:
        return outcome_response(400, "patient: not a valid personnummer or samordningsnummer", "invalid")
    except HTTPException as exc:
        return outcome_response(400, str(exc.detail), "required")
    now = ctx.clock.now()
    seen = await ctx.consents_seen_by(caller, pid, now)
    statuses = set((s.get("status") or "").split(",")) - {""}
    resources = [(r, consent_resource(r, version, now)) for r in seen]
    matches = [
        (r, res) for r, res in resources
        if (not statuses or res["status"] in statuses)
        and (s.snapshot is None or r.recorded_at <= s.snapshot)
    ]  # fmt: skip
    matches.sort(key=lambda m: (m[0].recorded_at, str(m[0].id)), reverse=True)
    snapshot = frozen(s, (r.recorded_at for r, _ in matches))
    page = [res for _, res in matches[s.offset : s.offset + s.count]]
    bundle = searchset(ctx.base_url, "Consent", s, page, len(matches), snapshot)
    return fhir_response(validated_bundle(bundle, version), version)


@router.get(
    "/fhir/Consent/{consent_id}/_history",
    tags=["fhir"],
    summary="Every version of a Consent",
    openapi_extra=RULES["read"],
)
async def fhir_consent_history(consent_id: str, request: Request, ctx: Ctx) -> Response:
    try:
        version = fhir_version(request)
        cid = UUID(consent_id)
    except UnsupportedFhirVersion as exc:
        return _unsupported(str(exc))
    except ValueError:
        return outcome_response(404, "no Consent with that id", "not-found")
    if await ctx.readable(request, cid, f"Consent/{cid}/_history") is None:
        return outcome_response(404, "no Consent with that id", "not-found")
    versions = await _versions(ctx, cid)
    if versions is None:
        return outcome_response(404, "no Consent with that id", "not-found")
    return fhir_response(consent_history(versions, version, ctx.base_url), version)


@router.get(
    "/fhir/Consent/{consent_id}/_history/{vid}",
    tags=["fhir"],
    summary="One version of a Consent",
    openapi_extra=RULES["read"],
)
async def fhir_consent_vread(consent_id: str, vid: str, request: Request, ctx: Ctx) -> Response:
    try:
        version = fhir_version(request)
        cid = UUID(consent_id)
    except UnsupportedFhirVersion as exc:
        return _unsupported(str(exc))
    except ValueError:
        return outcome_response(404, "no Consent with that id", "not-found")
    if await ctx.readable(request, cid, f"Consent/{cid}/_history/{vid[:12]}") is None:
        return outcome_response(404, "no Consent with that id", "not-found")
    versions = await _versions(ctx, cid) or []
    match = [v for v in versions if str(v[0]) == vid]
    if not match:
        return outcome_response(404, "no such version of that Consent", "not-found")
    resource = consent_resource(match[0][3], version)
    resource["meta"]["versionId"] = vid
    return fhir_response(resource, version, {"ETag": f'W/"{vid}"'})


@router.get(
    "/fhir/AuditEvent",
    tags=["fhir"],
    summary="Search the audit log of a person, newest first, paged (_count, next)",
    openapi_extra={**RULES["audit"], **fhir_route(search=AUDIT_SEARCH)},
)
async def fhir_audit_search(request: Request, ctx: Ctx) -> Response:
    r4_only(request)
    s = parse_search(request, AUDIT_SEARCH, default_count=100, max_count=1000)
    caller = caller_of(request)
    try:
        pid = asked_patient(caller, s.get("patient"), token=True)
    except ValidationError:
        return outcome_response(400, "patient: not a valid personnummer or samordningsnummer", "invalid")
    except HTTPException as exc:
        return outcome_response(400, str(exc.detail), "required")
    now = ctx.clock.now()
    entries: list[AuditEntry] = []
    total, newest = 0, None
    async with ctx.store() as repo:
        records = await repo.for_patient(pid)
        requests = await repo.requests_for_patient(pid)
        scope = access.audit_scope(caller, pid, records, requests, now)
        if scope.verdict.permit:  # filtered in the query, before counting and paging
            total, newest = await repo.count_audit_for_patient(
                pid, visible_to=scope.visible_to, until=s.snapshot
            )
            until = s.snapshot or newest
            after = _audit_cursor(s.cursor)
            if s.count:
                entries = await repo.audit_for_patient(
                    pid, limit=s.count, offset=0 if after else s.offset, visible_to=scope.visible_to,
                    until=until, after=after,
                )  # fmt: skip
    verdict = scope.verdict
    if scope.visible_to is not None and not total:
        verdict = access.Verdict(False)
    await ctx.audited(
        access.read_entry(
            caller, patient=pid, action="search", verdict=verdict, what="AuditEvent?patient", now=now
        )
    )
    snapshot = s.snapshot or newest
    cursor = f"{entries[-1].recorded_at.isoformat()}~{entries[-1].id}" if entries else None
    bundle = searchset(ctx.base_url, "AuditEvent", s, audit_events(entries), total, snapshot, cursor)
    return fhir_response(validated_bundle(bundle), "4.0")


@router.get(
    "/fhir/AuditEvent/{audit_id}",
    tags=["fhir"],
    summary="Read one AuditEvent (R4)",
    openapi_extra=RULES["audit-read"],
)
async def fhir_audit_read(audit_id: str, request: Request, ctx: Ctx) -> Response:
    r4_only(request)
    caller = caller_of(request)
    try:
        aid = UUID(audit_id)
    except ValueError:
        return outcome_response(404, "no AuditEvent with that id", "not-found")
    now = ctx.clock.now()
    async with ctx.store() as repo:
        entry = await repo.get_audit(aid)
        if entry is None:
            return outcome_response(404, "no AuditEvent with that id", "not-found")
        records = await repo.for_patient(entry.patient_identifier)
        requests = await repo.requests_for_patient(entry.patient_identifier)
        owned = caller.hsa_id is not None and await repo.audit_entry_visible_to(aid, caller.hsa_id)
    verdict = access.read_audit_entry(caller, entry, owned, records, requests, now)
    await ctx.audited(
        access.read_entry(
            caller, patient=entry.patient_identifier, action="read", verdict=verdict,
            what=f"AuditEvent/{aid}", now=now, case_id=entry.case_id,
        )
    )  # fmt: skip
    if not verdict.permit:
        raise Denied(403, verdict.detail)
    return fhir_response(audit_event_resource(entry), "4.0")


def _audit_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    """``<recorded_at>~<id>`` of the last entry of the page before (the next link's ``_cursor``)."""
    if not cursor:
        return None
    at, _, last = cursor.partition("~")
    try:
        when, ident = datetime.fromisoformat(at), str(UUID(last))
    except ValueError:
        raise FhirError(400, "_cursor: use the next link as given") from None
    if when.tzinfo is None:
        raise FhirError(400, "_cursor: use the next link as given")
    return when, ident


def r4_only(request: Request) -> None:
    """AuditEvent is served as R4 only: asked for R5, 406 rather than R4 under another name."""
    if fhir_version(request) != "4.0":
        raise FhirError(406, "AuditEvent is served in FHIR 4.0 only", "not-supported")
