"""The person's own page (citizens only): their cases, consents and who read their data, and
withdrawing a consent (a confirmation page, then a POST with the session's CSRF token).

A guardian gets the child's too, as the APIs allow (the APIs decide, with the guardian's own token):
planning lists the child's case among the guardian's (``GET /cases``: the guardians named on the
child's consent), the case names its consent, and consent lets a guardian named on it read it
(``GET /consents/{id}``) and then the child's consents and audit trail (``?patient=``). The child's
personnummer is used only in those calls to the API: it is never on the page, in a URL of the site
or in a log.
"""

from __future__ import annotations

from typing import Any

import jwt
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.web import i18n
from services.web.deps import Ctx, PageError, check_csrf, require, uuid_or_404
from services.web.views import parse_time

router = APIRouter()


@router.get("/me", response_class=HTMLResponse)
async def me(request: Request, ctx: Ctx) -> Response:
    require(request, "citizen")
    # closed and refused ones too: the person's page is their history
    cases = await ctx.api(request, "planning", "/cases", params={"all": "true"})
    consents = await ctx.api(request, "consent", "/consents")
    trail = await ctx.api(request, "consent", "/audit")
    trail = newest_first(trail)
    children = await children_of(request, ctx, cases, consents)
    child_cases = {case_id for child in children for case_id in child["case_ids"]}
    done = request.query_params.get("withdrawn") == "1"
    return ctx.render(
        request, "me.html", cases=cases, consents=consents, trail=trail, parse_time=parse_time,
        what=what, withdrawn=done, children=children, child_cases=child_cases,
    )  # fmt: skip


def newest_first(trail: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(trail, key=lambda e: e.get("recorded_at") or "", reverse=True)


async def children_of(
    request: Request, ctx: Ctx, cases: list[dict[str, Any]], own: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """For each child whose case the signed-in guardian sees (a listed case whose consent is not
    among the user's own): the child's cases, consents and audit trail, each as the API allows — a
    consent or a child the API refuses is left out. Without the personnummer: it stays here."""
    own_ids = {str(c.get("id")) for c in own}
    me = own_person(request, ctx)
    by_child: dict[str, dict[str, Any]] = {}
    asked: set[str] = set()
    for case in cases:
        consent_id = case.get("consent_id")
        if not consent_id or str(consent_id) in own_ids or str(consent_id) in asked:
            continue
        asked.add(str(consent_id))
        consent = await _readable(request, ctx, f"/consents/{consent_id}")
        pnr = consent.get("patient_identifier") if isinstance(consent, dict) else None
        if not pnr or pnr == me:  # the user's own (a consent their own list left out): not a child
            continue
        child = by_child.setdefault(str(pnr), {"case_ids": [], "references": []})
        child["case_ids"].append(str(case.get("id")))
        child["references"].append(str(case.get("reference") or ""))
    children = []
    for pnr, child in by_child.items():
        consents = await _readable(request, ctx, "/consents", {"patient": pnr})
        trail = await _readable(request, ctx, "/audit", {"patient": pnr})
        if consents is None and trail is None:
            continue
        children.append({
            **child,
            # what the page shows of a consent: nothing that names the child or the guardians by number
            "consents": [{k: v for k, v in c.items() if k not in ("patient_identifier", "guardians")}
                         for c in consents or []],
            "trail": newest_first(trail or []),
        })  # fmt: skip
    return children


def own_person(request: Request, ctx: Ctx) -> str | None:
    """The signed-in person's own personnummer, from their access token (the APIs verify it)."""
    token = str(require(request, "citizen").get("access_token", ""))
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    value = claims.get(ctx.settings.citizen_person_claim)
    return str(value) if value else None


async def _readable(request: Request, ctx: Ctx, path: str, params: dict[str, str] | None = None) -> Any:
    """The consent API's answer, or None where it refuses (403, 404): the guardian sees no more."""
    try:
        return await ctx.api(request, "consent", path, params=params)
    except PageError as exc:
        if exc.status in (403, 404):
            return None
        raise


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
