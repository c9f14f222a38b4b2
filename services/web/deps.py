"""What the web's page modules share, handed to the routes as a FastAPI dependency (``ctx: Ctx``)
rather than captured in a closure: the :class:`WebContext` the composition root
(:func:`services.web.app.create_app`) puts on ``app.state.web`` — settings, OAuth clients, the HTTP
client for the APIs, the directory, the templates and the Content-Security-Policy — with the page
rendering (security headers on every page) and the calls to the APIs with the user's own token; and
the session helpers every page uses: the language, the CSRF token and its check, the signed-in user
and the page's access rule (:func:`require`).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Annotated, Any
from uuid import UUID

import httpx
from authlib.integrations.starlette_client import OAuth
from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from services.web import i18n
from services.web.metrics import WebMetrics
from services.web.settings import WebSettings
from services.web.views import local
from shared.directory import Directory

log = logging.getLogger("sip.web")

KINDS = ("staff", "citizen")
CSRF_FIELD = "csrf_token"


class PageError(Exception):
    """Ends a page with an HTML error page (403, 404, 503) or a redirect to sign-in (401)."""

    def __init__(self, status: int, reason: str = "") -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


@dataclass
class WebContext:
    """The pages' shared dependencies (one per app, on ``app.state.web``)."""

    settings: WebSettings
    oauth: OAuth
    http: httpx.AsyncClient
    directory: Directory | None
    templates: Jinja2Templates
    csp: str = "default-src 'self'"
    metrics: WebMetrics = field(default_factory=WebMetrics)

    def api_base(self, service: str) -> str:
        return {
            "planning": self.settings.planning_url,
            "consent": self.settings.consent_url,
            "notify": self.settings.notify_url,
        }[service].rstrip("/")

    def org_name(self, hsa_id: str | None) -> str:
        if not hsa_id:
            return ""
        org = self.directory.get(hsa_id) if self.directory is not None else None
        return f"{org.name} ({hsa_id})" if org is not None else hsa_id

    def client(self, kind: str | None) -> Any:
        """The registered OpenID Connect client of that kind (staff, citizen); None if it has none."""
        return self.oauth.create_client(kind) if kind in KINDS else None

    def render(self, request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        lang = lang_of(request)
        user = user_of(request)
        response = self.templates.TemplateResponse(
            request,
            template,
            {
                "lang": lang,
                "t": lambda key: i18n.text(key, lang),
                "label": lambda code: i18n.label(code, lang),
                "user": user,
                "org_name": self.org_name,
                "csrf": csrf_token(request) if user is not None or template == "dev_signin.html" else "",
                "csrf_field": CSRF_FIELD,
                "local": local,
                "path": request.url.path,
                "dev_signin": self.settings.dev_signin,
                "support_contact": self.settings.support_contact,
                **context,
            },
            status_code=status,
        )
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = self.csp
        return response

    async def api(
        self, request: Request, service: str, path: str, *, method: str = "GET",
        params: dict[str, str] | None = None, json: Any = None,
    ) -> Any:  # fmt: skip
        """The API's answer, asked with the signed-in user's own access token."""
        user = require(request)
        try:
            r = await self.http.request(
                method, self.api_base(service) + path, params=params, json=json,
                headers={"Authorization": f"Bearer {user['access_token']}", "Accept": "application/json"},
            )  # fmt: skip
        except httpx.HTTPError as exc:
            log.warning("API call failed", extra={"service": service, "error": type(exc).__name__})
            self.metrics.api_error(service, "unavailable")
            raise PageError(503, service) from None
        if r.status_code == 401:  # the token is no longer accepted: sign in again
            self.metrics.api_error(service, "token")
            request.session.clear()
            raise PageError(401)
        if r.status_code in (403, 404):
            self.metrics.api_error(service, "refused")
            raise PageError(r.status_code, service)
        if r.status_code >= 400:
            log.warning("API answered an error", extra={"service": service, "status": r.status_code})
            self.metrics.api_error(service, "server")
            raise PageError(503, service)
        return r.json()


def web_context(request: Request) -> WebContext:
    """The app's :class:`WebContext` (a FastAPI dependency)."""
    context: WebContext = request.app.state.web
    return context


Ctx = Annotated[WebContext, Depends(web_context)]


def lang_of(request: Request) -> str:
    session = request.session
    asked = request.query_params.get("lang")
    if asked in i18n.LANGUAGES:
        session["lang"] = asked
        return asked
    lang = session.get("lang", "sv")
    return lang if lang in i18n.LANGUAGES else "sv"


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return str(token)


async def check_csrf(request: Request) -> dict[str, Any]:
    """Every POST carries the session's CSRF token in its form; without it, or with another: 403."""
    form = await request.form()
    sent = form.get(CSRF_FIELD)
    expected = request.session.get("csrf")
    if not isinstance(sent, str) or not expected or not hmac.compare_digest(sent, str(expected)):
        raise PageError(403, "csrf")
    return {k: v for k, v in form.items() if isinstance(v, str)}


def safe_next(value: str | None) -> str:
    """Only a path of this site (no scheme, no host, no //): no open redirect after sign-in."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def user_of(request: Request) -> dict[str, Any] | None:
    user = request.session.get("user")
    if not isinstance(user, dict):
        return None
    if float(user.get("expires_at", 0)) <= time.time():  # the access token has run out: sign in again
        request.session.clear()
        return None
    return user


def require(request: Request, kind: str | None = None) -> dict[str, Any]:
    user = user_of(request)
    if user is None:
        raise PageError(401)
    if kind is not None and user["kind"] != kind:
        raise PageError(403, f"need-{kind}")
    return user


def uuid_or_404(value: str) -> None:
    try:
        UUID(value)
    except ValueError:
        raise PageError(404) from None
