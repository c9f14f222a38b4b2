"""The person's own page (citizens only): their cases, consents and who read their data, and
withdrawing a consent (a confirmation page, then a POST with the session's CSRF token)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.web import i18n
from services.web.deps import Ctx, check_csrf, require, uuid_or_404
from services.web.views import parse_time

router = APIRouter()


@router.get("/me", response_class=HTMLResponse)
async def me(request: Request, ctx: Ctx) -> Response:
    require(request, "citizen")
    # closed and refused ones too: the person's page is their history
    cases = await ctx.api(request, "planning", "/cases", params={"all": "true"})
    consents = await ctx.api(request, "consent", "/consents")
    trail = await ctx.api(request, "consent", "/audit")
    trail = sorted(trail, key=lambda e: e.get("recorded_at") or "", reverse=True)
    done = request.query_params.get("withdrawn") == "1"
    return ctx.render(
        request, "me.html", cases=cases, consents=consents, trail=trail, parse_time=parse_time,
        what=what, withdrawn=done,
    )  # fmt: skip


@router.get("/me/consents/{consent_id}/withdraw", response_class=HTMLResponse)
async def withdraw_confirm(request: Request, consent_id: str, ctx: Ctx) -> Response:
    require(request, "citizen")
    uuid_or_404(consent_id)
    consent = await ctx.api(request, "consent", f"/consents/{consent_id}")
    return ctx.render(request, "withdraw.html", consent=consent)


@router.post("/me/consents/{consent_id}/withdraw")
async def withdraw(request: Request, consent_id: str, ctx: Ctx) -> Response:
    await check_csrf(request)
    require(request, "citizen")
    uuid_or_404(consent_id)
    await ctx.api(request, "consent", f"/consents/{consent_id}/withdraw", method="POST", json={})
    return RedirectResponse("/me?withdrawn=1", 303)


def what(entry: dict[str, Any], lang: str) -> str:
    """What an audit entry is about, in words (from the resource type read, or the category)."""
    reason = str(entry.get("reason") or "")
    resource = reason.split("/", 1)[0].split("?", 1)[0]
    words = {
        "CarePlan": ("planen", "the plan"), "SipCase": ("ärendet", "the case"),
        "Consent": ("samtycket", "the consent"), "Notification": ("kallelser och meddelanden", "notices"),
        "Communication": ("kallelser och meddelanden", "notices"), "AuditEvent": ("loggen", "the log"),
        "Provenance": ("planens historik", "the plan's history"),
    }  # fmt: skip
    if resource in words:
        sv, en = words[resource]
        return en if lang == "en" else sv
    category = entry.get("category") or entry.get("purpose")
    if category:
        return str(category)
    return i18n.label(entry.get("action"), lang)
