"""Recording, withdrawing and cancelling consents, and reading them as plain JSON: ``/consents``
and the cases waiting for a consent (``/consent-requests``).

``recorded_by_hsa_id`` / ``cancelled_by_hsa_id`` in a body are optional and must then be the token's
HSA-id; the stored actor is always the token's. Every read and search is audited before the answer
leaves (:class:`~services.consent.api_deps.ConsentApi`).
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID, uuid5

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from pydantic import ValidationError

from services.consent import access, handlers
from services.consent.access import RULES
from services.consent.api_deps import (
    PATIENT_DOC,
    ConsentApi,
    Ctx,
    asked_patient,
    caller_of,
    case_request_of,
)
from services.consent.api_schemas import (
    CancelIn,
    ConsentIn,
    ConsentOut,
    ConsentRequestOut,
    WithdrawIn,
)
from services.consent.domain import (
    ConsentDetails,
    ConsentRecord,
    ConsentRuleViolation,
    ConsentStateConflict,
    GuardianStatement,
)
from services.consent.ports import ConsentRepository
from shared.contracts import RecordConsent
from shared.fhir_rest import check_if_match
from shared.identifiers import mask
from shared.messaging import describe_error

_IDEMPOTENCY_NS = UUID("6f6b0b7e-3c1e-4d7e-9a53-6a1f1c0e5a11")

router = APIRouter()


@router.post(
    "/consents",
    status_code=201,
    response_model=ConsentOut,
    tags=["consents"],
    summary="Record a consent decision (granted or declined)",
    responses={
        403: {"description": "Not the case's owner or a participant, or recorded_by_hsa_id is not yours"},
        422: {"description": "The consent breaks a rule; `detail` says which"},
    },
    openapi_extra=RULES["record"],
)
async def post_consent(
    body: ConsentIn,
    request: Request,
    response: Response,
    ctx: Ctx,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> ConsentOut:
    """The recorder is always the calling organisation (the token's HSA-id)."""
    caller = caller_of(request)
    async with ctx.runtime.unit_of_work() as uow:
        repo = ctx.repository(uow.conn)
        case_request = await case_request_of(repo, body.case_id)
        recorder = access.may_record(caller, body.case_id, case_request, body.recorded_by_hsa_id)
        # an idempotency key is the recorder's own: another organisation's key never finds it
        consent_id = uuid5(_IDEMPOTENCY_NS, f"{recorder}\n{idempotency_key}") if idempotency_key else None
        if consent_id is not None and (existing := await repo.get(consent_id)):
            response.status_code = 200
            return ConsentOut.of(existing, ctx.clock.now())
        fields = body.model_dump(
            exclude={
                "valid_from",
                "excluded_organisations",
                "excluded_categories",
                "custody",
                "guardians",
                "child_view",
            }
        )
        fields["recorded_by_hsa_id"] = recorder
        details = ConsentDetails(
            valid_from=body.valid_from,
            excluded_organisations=body.excluded_organisations,
            excluded_categories=body.excluded_categories,
            custody=body.custody,
            guardians=tuple(GuardianStatement(g.stance, g.identifier) for g in body.guardians),
            child_view=body.child_view,
        )
        try:
            cmd = RecordConsent(**fields)
            record = await handlers.record_consent(
                cmd, repo=repo, outbox=uow, clock=ctx.clock, consent_id=consent_id, details=details
            )
        except ConsentRuleViolation as exc:
            raise HTTPException(422, detail=str(exc)) from None
        except ValidationError as exc:
            raise HTTPException(422, detail=describe_error(exc)) from None
    response.headers["Location"] = f"/consents/{record.id}"
    return ConsentOut.of(record, ctx.clock.now())


@router.get(
    "/consents/{consent_id}",
    response_model=ConsentOut,
    tags=["consents"],
    summary="Read one consent",
    responses={403: {"description": "No relation to the consent, or excluded by it"}},
    openapi_extra=RULES["read"],
)
async def get_consent(consent_id: UUID, request: Request, ctx: Ctx) -> ConsentOut:
    record = await ctx.readable(request, consent_id, f"Consent/{consent_id}")
    if record is None:
        raise HTTPException(404, detail="no such consent")
    return ConsentOut.of(record, ctx.clock.now())


async def _change(ctx: ConsentApi, consent_id: UUID, change: Any, request: Request) -> ConsentOut:
    async with ctx.runtime.unit_of_work() as uow:
        repo = ctx.repository(uow.conn)
        record = await repo.get(consent_id)
        if record is None:
            raise HTTPException(404, detail="no such consent")
        check_if_match(request, record.version)  # If-Match: W/"<version>" → 412 when it moved on
        try:
            record, _changed = await change(repo, uow, record)
        except handlers.ConsentNotFound:
            raise HTTPException(404, detail="no such consent") from None
        except ConsentStateConflict as exc:
            raise HTTPException(409, detail=str(exc)) from None
        except ConsentRuleViolation as exc:
            raise HTTPException(422, detail=str(exc)) from None
    return ConsentOut.of(record, ctx.clock.now())


@router.post(
    "/consents/{consent_id}/withdraw",
    response_model=ConsentOut,
    tags=["consents"],
    summary="Withdraw a consent (återkallelse): immediate, irreversible, kept as history",
    responses={
        403: {"description": "Not the person, a guardian, the recorder, the owner or a participant"},
        404: {"description": "No such consent"},
        409: {"description": "Cancelled or declined: nothing to withdraw"},
    },
    openapi_extra=RULES["withdraw"],
)
async def withdraw(consent_id: UUID, body: WithdrawIn, request: Request, ctx: Ctx) -> ConsentOut:
    """A second withdrawal answers 200 with the unchanged record. A new consent is a new record.
    The person (or a guardian) may withdraw with their own e-ID: recorded as by ``person`` /
    ``guardian``."""
    caller = caller_of(request)
    now = ctx.clock.now()

    async def change(repo: ConsentRepository, uow: Any, record: ConsentRecord) -> Any:
        case_request = await case_request_of(repo, record.case_id)
        guardians = (
            access.guardians_of(await repo.for_patient(record.patient_identifier), now)
            if caller.is_person
            else frozenset()
        )
        by, requested_by = access.may_withdraw(
            caller, record, case_request, guardians, body.recorded_by_hsa_id, now
        )
        return await handlers.withdraw_consent(
            consent_id, by_hsa_id=by, requested_by=requested_by, at=body.withdrawn_at, repo=repo,
            outbox=uow, clock=ctx.clock,
        )  # fmt: skip

    return await _change(ctx, consent_id, change, request)


@router.post(
    "/consents/{consent_id}/cancel",
    response_model=ConsentOut,
    tags=["consents"],
    summary="Cancel a wrongly registered consent (makulering); audited",
    responses={
        403: {"description": "Not the recorder or the case's owner"},
        404: {"description": "No such consent"},
    },
    openapi_extra=RULES["cancel"],
)
async def cancel(consent_id: UUID, body: CancelIn, request: Request, ctx: Ctx) -> ConsentOut:
    caller = caller_of(request)

    async def change(repo: ConsentRepository, uow: Any, record: ConsentRecord) -> Any:
        case_request = await case_request_of(repo, record.case_id)
        by = access.may_cancel(caller, record, case_request, body.cancelled_by_hsa_id)
        return await handlers.cancel_consent(
            consent_id, by_hsa_id=by, reason=body.reason, repo=repo, outbox=uow, clock=ctx.clock
        )

    return await _change(ctx, consent_id, change, request)


@router.get(
    "/consents",
    response_model=list[ConsentOut],
    tags=["consents"],
    summary="A person's consents, filtered to those the caller may read",
    openapi_extra=RULES["search"],
)
async def list_consents(
    request: Request,
    ctx: Ctx,
    patient: Annotated[str | None, Query(description=PATIENT_DOC)] = None,
) -> list[ConsentOut]:
    caller = caller_of(request)
    pid = asked_patient(caller, patient)
    now = ctx.clock.now()
    seen = await ctx.consents_seen_by(caller, pid, now)
    return [ConsentOut.of(r, now) for r in seen]


@router.get(
    "/consent-requests",
    response_model=list[ConsentRequestOut],
    tags=["consents"],
    summary="Cases waiting for the person's consent (the owner's and participants' own)",
    openapi_extra=RULES["requests"],
)
async def pending_requests(request: Request, ctx: Ctx) -> list[ConsentRequestOut]:
    """Cases waiting for the person's consent (for the staff who collect it): the caller's own
    cases (owner or participant); an operator sees all. Each person listed is audited."""
    caller = caller_of(request)
    now = ctx.clock.now()
    async with ctx.store() as repo:
        items = await repo.pending_requests()
    seen = access.visible_requests(caller, items)
    by_person: dict[str, str] = {}
    for r, basis in seen:
        by_person.setdefault(r.patient_identifier, basis)
    await ctx.audited(
        *(
            access.read_entry(
                caller,
                patient=pnr,
                action="search",
                verdict=access.Verdict(True, basis),
                what="consent-requests?status=pending",
                now=now,
            )
            for pnr, basis in by_person.items()
        )
    )
    return [
        ConsentRequestOut(
            case_id=r.case_id,
            patient=mask(r.patient_identifier),
            is_child=r.is_child,
            purposes=list(r.purposes),
            proposed_recipients=list(r.proposed_recipients),
            requested_at=r.requested_at,
            status=r.status,
        )
        for r, _basis in seen
    ]
