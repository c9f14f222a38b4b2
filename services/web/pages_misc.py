"""The open pages (start, accessibility statement), the health probes and ``/metrics`` (Prometheus, open
like every service's: no personal data in it, :mod:`services.web.metrics`): no sign-in needed."""

from __future__ import annotations

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from services.web.deps import Ctx
from services.web.metrics import CONTENT_TYPE

SERVICE = "web"

router = APIRouter()


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok", "service": SERVICE}


@router.get("/readyz", include_in_schema=False)
async def readyz(ctx: Ctx) -> Response:
    down = []
    for service in ("planning", "consent", "notify"):
        try:
            r = await ctx.http.get(ctx.api_base(service) + "/healthz", timeout=3)
            if r.status_code != 200:
                down.append(service)
        except httpx.HTTPError:
            down.append(service)
    body = {"status": "ready" if not down else "unavailable", "unavailable": down}
    return JSONResponse(body, status_code=200 if not down else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(ctx: Ctx) -> Response:
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/", response_class=HTMLResponse)
async def start(request: Request, ctx: Ctx) -> Response:
    return ctx.render(request, "start.html")


@router.get("/tillganglighet", response_class=HTMLResponse)
async def accessibility(request: Request, ctx: Ctx) -> Response:
    return ctx.render(request, "accessibility.html")
