"""The web service: pages for people, read through the services' APIs with the signed-in user's token.

A backend-for-frontend: it signs people in with OpenID Connect (authorization code + PKCE, authlib's
Starlette client), keeps a server-side session (``sessions.py``) and calls planning's, consent's and
notify's HTTP APIs with the user's own access token. So a page never shows more than the API's
authorization model allows, and every read of personal data is audited by the API exactly as an API
read. It imports no other service's code — only ``shared``.

This module is the composition root: :func:`create_app` reads the settings, registers the OpenID
Connect clients, builds the session store, the middleware, the templates and the error pages, and
includes the page routers. The pages are module-level routes by use case, each taking the shared
:class:`~services.web.deps.WebContext` (on ``app.state.web``) as a FastAPI dependency:

- :mod:`services.web.pages_misc` — the start page, the accessibility statement, the health probes,
  ``/metrics`` (:mod:`services.web.metrics`)
- :mod:`services.web.pages_auth` — sign-in, the OIDC callback, logout, the development sign-in
- :mod:`services.web.pages_plans` — the plan page and its meeting as .ics
- :mod:`services.web.pages_me` — the person's own page and withdrawing a consent
- :mod:`services.web.pages_staff` — the coordinator's overview and a case's page
- :mod:`services.web.deps` — what the pages share: rendering, API calls, session, CSRF, access rules
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from authlib.integrations.starlette_client import OAuth
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.web import pages_auth, pages_me, pages_misc, pages_plans, pages_staff
from services.web.deps import CSRF_FIELD, KINDS, PageError, WebContext, safe_next, web_context
from services.web.sessions import ServerSessionMiddleware, SessionStore
from services.web.settings import WebSettings
from shared.directory import Directory, load_directory
from shared.metrics import HttpMetricsMiddleware

__all__ = ["CSRF_FIELD", "SERVICE", "create_app", "main"]

SERVICE = pages_misc.SERVICE
HERE = Path(__file__).parent
log = logging.getLogger("sip.web")


def routers(settings: WebSettings) -> list[APIRouter]:
    """The page routers, in the order their routes are matched; the development sign-in only where on."""
    dev = [pages_auth.dev_router] if settings.dev_signin else []
    return [
        pages_misc.router,
        pages_auth.router,
        *dev,
        pages_plans.router,
        pages_me.router,
        pages_staff.router,
    ]


def create_app(settings: WebSettings) -> FastAPI:
    app = FastAPI(title="sip-suite web", version="1.0.0", openapi_url=None, docs_url=None, redoc_url=None)
    directory: Directory | None
    try:
        directory = load_directory(settings.directory_path)
    except (OSError, ValueError):
        directory = None
    oauth = OAuth()
    for kind in KINDS:
        issuer = getattr(settings, f"{kind}_issuer")
        if not issuer:
            continue
        secret = getattr(settings, f"{kind}_client_secret")
        oauth.register(
            kind,
            client_id=getattr(settings, f"{kind}_client_id"),
            client_secret=secret.get_secret_value() if secret else None,
            server_metadata_url=issuer.rstrip("/") + "/.well-known/openid-configuration",
            client_kwargs={"scope": settings.oidc_scope, "code_challenge_method": "S256"},
        )
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    # no script at all; forms post only here (logout may redirect to the identity provider)
    csp = " ".join(
        [
            "default-src 'self'; script-src 'none'; object-src 'none'; frame-ancestors 'none';",
            "base-uri 'none'; form-action 'self'",
            *_issuer_origins(settings),
        ]
    )
    http = httpx.AsyncClient(timeout=settings.api_timeout_seconds)
    app.state.web = WebContext(settings, oauth, http, directory, templates, csp)
    store = SessionStore(settings.session_idle_minutes * 60.0, settings.session_max_hours * 3600.0)
    app.state.sessions = store
    app.add_middleware(ServerSessionMiddleware, store=store, secure=settings.session_cookie_secure)
    # outermost: every request counted by its route template (never the raw path), refusals too
    metrics = app.state.web.metrics.service
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics, routes=lambda: app.router.routes)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.add_exception_handler(PageError, page_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, crash)
    if settings.dev_signin:
        log.warning("development sign-in is ON: never in production")
    for router in routers(settings):
        app.include_router(router)
    return app


async def page_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageError)
    if exc.status == 401:
        return RedirectResponse("/signin?" + urlencode({"next": safe_next(_here(request))}), 303)
    template = {403: "403.html", 404: "404.html"}.get(exc.status, "error.html")
    if exc.reason == "plan":  # a plan not there and a plan refused look the same (as the API's 404 means)
        template = "403.html"
    return web_context(request).render(request, template, exc.status, reason=exc.reason)


async def http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    if status == 404:
        return web_context(request).render(request, "404.html", 404, reason="")
    return web_context(request).render(request, "error.html", status, reason="")


async def crash(request: Request, exc: Exception) -> Response:
    log.exception("page failed", extra={"path_template": request.scope.get("route") and request.url.path})
    return web_context(request).render(request, "error.html", 500, reason="")


def _here(request: Request) -> str:
    return request.url.path if request.method == "GET" else "/"


def _issuer_origins(settings: WebSettings) -> list[str]:
    out = []
    for issuer in (settings.staff_issuer, settings.citizen_issuer):
        if issuer:
            parts = urlsplit(issuer)
            out.append(f"{parts.scheme}://{parts.netloc}")
    return out


def main() -> None:
    import uvicorn

    from shared.logs import configure_logging

    settings = WebSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    tls: dict[str, Any] = {}
    if settings.tls_certfile:
        tls = {"ssl_certfile": settings.tls_certfile, "ssl_keyfile": settings.tls_keyfile or None}
    uvicorn.run(
        create_app(settings), host=settings.http_host, port=settings.http_port, log_config=None, **tls
    )
