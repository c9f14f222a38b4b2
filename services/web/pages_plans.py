"""The plan page, for a participant and for the person, and the plan's meeting as an .ics file: any
signed-in reader, then as planning's API allows (its 403 and 404 look the same here)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from services.web.deps import Ctx, PageError, lang_of, uuid_or_404
from services.web.views import calendar, care_plan

router = APIRouter()


@router.get("/plans/{plan_id}", response_class=HTMLResponse)
async def plan_page(request: Request, plan_id: str, ctx: Ctx) -> Response:
    uuid_or_404(plan_id)
    try:
        resource = await ctx.api(request, "planning", f"/fhir/CarePlan/{plan_id}")
    except PageError as exc:
        # the API answers a reader without a relation 404 (the plan's existence is not disclosed)
        # and one whose consent does not cover them 403: both get the page "no access" with 403,
        # so neither the page nor its status tells a stranger whether the plan exists
        if exc.status in (403, 404):
            raise PageError(403, "plan") from None
        raise
    lang = lang_of(request)
    plan = care_plan(resource, self_text="Personen själv" if lang == "sv" else "The person", lang=lang)
    return ctx.render(request, "plan.html", plan=plan)


@router.get("/plans/{plan_id}/calendar.ics")
async def plan_calendar(request: Request, plan_id: str, ctx: Ctx) -> Response:
    uuid_or_404(plan_id)
    plan = care_plan(await ctx.api(request, "planning", f"/fhir/CarePlan/{plan_id}"))
    url = ctx.settings.public_base_url.rstrip("/") + f"/plans/{plan_id}"
    ics = calendar(plan, plan_url=url, now=datetime.now(UTC))
    if ics is None:
        raise PageError(404)
    return Response(
        ics, media_type="text/calendar; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="sip-{plan.reference or "mote"}.ics"',
                 "Cache-Control": "no-store"},
    )  # fmt: skip
