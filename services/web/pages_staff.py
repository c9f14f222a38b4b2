"""The coordinator's pages (staff only): the overview of open cases by deadline, and a case's page
(deadlines, notifications, the plan's versions and a timeline of it all)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from services.web.deps import Ctx, PageError, require, uuid_or_404
from services.web.views import parse_time

CLOSED_STATES = frozenset({"closed", "refused"})  # not shown on the overview

router = APIRouter()


@router.get("/overview", response_class=HTMLResponse)
async def overview(request: Request, ctx: Ctx) -> Response:
    require(request, "staff")
    rows = await ctx.api(request, "planning", "/overview")
    now = datetime.now(UTC)
    items = []
    for row in rows:
        if row.get("state") in CLOSED_STATES:
            continue
        due = parse_time(row.get("due_at"))
        breached = bool(row.get("breached_unmet")) or (due is not None and due <= now)
        items.append({**row, "due": due, "breached": breached, "remaining": remaining(due, now)})
    items.sort(key=lambda r: (r["due"] is None, r["due"] or now))
    return ctx.render(request, "overview.html", rows=items)


@router.get("/cases/{case_id}", response_class=HTMLResponse)
async def case_page(request: Request, case_id: str, ctx: Ctx) -> Response:
    require(request, "staff")
    uuid_or_404(case_id)
    case = await ctx.api(request, "planning", f"/cases/{case_id}")
    deadlines = await ctx.api(request, "planning", f"/cases/{case_id}/deadlines")
    notifications = await ctx.api(request, "notify", "/notifications", params={"case_id": case_id})
    try:
        history = await ctx.api(request, "planning", f"/fhir/CarePlan/{case_id}/_history")
    except PageError as exc:
        if exc.status == 401:
            raise
        history = {"entry": []}
    versions = [
        {
            "version": (e.get("resource", {}).get("meta") or {}).get("versionId"),
            "at": parse_time((e.get("resource", {}).get("meta") or {}).get("lastUpdated")),
            "status": e.get("resource", {}).get("status"),
        }
        for e in history.get("entry", [])
    ]
    events = timeline(case, deadlines, notifications, versions)
    now = datetime.now(UTC)
    deadline_rows = [
        {**d, "due": parse_time(d.get("due_at")),
         "breached": d.get("status") == "breached" or (
             d.get("status") == "open" and (parse_time(d.get("due_at")) or now) < now)}
        for d in deadlines
    ]  # fmt: skip
    return ctx.render(
        request, "case.html", case=case, deadlines=deadline_rows, notifications=notifications,
        versions=versions, timeline=events, parse_time=parse_time,
    )  # fmt: skip


def remaining(due: datetime | None, now: datetime) -> dict[str, Any] | None:
    if due is None:
        return None
    seconds = int((due - now).total_seconds())
    late = seconds < 0
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    return {"late": late, "days": days, "hours": hours, "minutes": minutes}


def timeline(
    case: dict[str, Any], deadlines: list[dict[str, Any]], notifications: list[dict[str, Any]],
    versions: list[dict[str, Any]],
) -> list[dict[str, Any]]:  # fmt: skip
    events: list[dict[str, Any]] = []

    def add(at: Any, key: str, detail: str = "") -> None:
        t = parse_time(at) if not isinstance(at, datetime) else at
        if t is not None:
            events.append({"at": t, "key": key, "detail": detail})

    add(case.get("ready_for_discharge_at"), "tl_ready")
    add(case.get("opened_at"), "tl_opened")
    add(case.get("invited_at"), "tl_invited")
    for d in deadlines:
        if d.get("met_at"):
            add(d["met_at"], "tl_deadline_met", d.get("kind", ""))
        if d.get("breached_at"):
            add(d["breached_at"], "tl_deadline_breached", d.get("kind", ""))
    for n in notifications:
        add(n.get("created_at"), "tl_notice_created", f"{n.get('kind')}|{n.get('recipient_hsa_id')}")
        if n.get("sent_at"):
            add(n["sent_at"], "tl_notice_sent", f"{n.get('kind')}|{n.get('recipient_hsa_id')}")
        if n.get("cancelled_at"):
            add(n["cancelled_at"], "tl_notice_cancelled", f"{n.get('kind')}|{n.get('recipient_hsa_id')}")
    for v in versions:
        add(v.get("at"), "tl_plan_version", str(v.get("version") or ""))
    events.sort(key=lambda e: e["at"])
    return events
