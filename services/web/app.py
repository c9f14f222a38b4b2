"""The web service: pages for people, read through the services' APIs with the signed-in user's token.

A backend-for-frontend: it signs people in with OpenID Connect (authorization code + PKCE, authlib's
Starlette client), keeps a server-side session (``sessions.py``) and calls planning's, consent's and
notify's HTTP APIs with the user's own access token. So a page never shows more than the API's
authorization model allows, and every read of personal data is audited by the API exactly as an API
read. It imports no other service's code — only ``shared``.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
from authlib.integrations.starlette_client import OAuth, OAuthError
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.web import i18n
from services.web.sessions import ROTATE, ServerSessionMiddleware, SessionStore
from services.web.settings import WebSettings
from services.web.views import calendar, care_plan, local, parse_time
from shared.auth import mint_person_token, mint_token
from shared.directory import Directory, load_directory
from shared.identifiers import InvalidPersonIdentifier, parse_person_identifier

SERVICE = "web"
HERE = Path(__file__).parent
log = logging.getLogger("sip.web")

KINDS = ("staff", "citizen")
CSRF_FIELD = "csrf_token"
CLOSED_STATES = frozenset({"closed", "refused"})  # not shown on the overview


class PageError(Exception):
    """Ends a page with an HTML error page (403, 404, 503) or a redirect to sign-in (401)."""

    def __init__(self, status: int, reason: str = "") -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


@dataclass
class Web:
    settings: WebSettings
    oauth: OAuth
    http: httpx.AsyncClient
    directory: Directory | None
    templates: Jinja2Templates

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
    web = Web(settings, oauth, httpx.AsyncClient(timeout=settings.api_timeout_seconds), directory, templates)
    app.state.web = web
    store = SessionStore(settings.session_idle_minutes * 60.0, settings.session_max_hours * 3600.0)
    app.state.sessions = store
    app.add_middleware(ServerSessionMiddleware, store=store, secure=settings.session_cookie_secure)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    # no script at all; forms post only here (logout may redirect to the identity provider)
    csp = " ".join(
        [
            "default-src 'self'; script-src 'none'; object-src 'none'; frame-ancestors 'none';",
            "base-uri 'none'; form-action 'self'",
            *_issuer_origins(settings),
        ]
    )

    def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        lang = lang_of(request)
        user = user_of(request)
        response = templates.TemplateResponse(
            request,
            template,
            {
                "lang": lang,
                "t": lambda key: i18n.text(key, lang),
                "label": lambda code: i18n.label(code, lang),
                "user": user,
                "org_name": web.org_name,
                "csrf": csrf_token(request) if user is not None or template == "dev_signin.html" else "",
                "csrf_field": CSRF_FIELD,
                "local": local,
                "path": request.url.path,
                "dev_signin": settings.dev_signin,
                "support_contact": settings.support_contact,
                **context,
            },
            status_code=status,
        )
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = csp
        return response

    async def api(
        request: Request, service: str, path: str, *, method: str = "GET",
        params: dict[str, str] | None = None, json: Any = None,
    ) -> Any:  # fmt: skip
        user = require(request)
        try:
            r = await web.http.request(
                method, web.api_base(service) + path, params=params, json=json,
                headers={"Authorization": f"Bearer {user['access_token']}", "Accept": "application/json"},
            )  # fmt: skip
        except httpx.HTTPError as exc:
            log.warning("API call failed", extra={"service": service, "error": type(exc).__name__})
            raise PageError(503, service) from None
        if r.status_code == 401:  # the token is no longer accepted: sign in again
            request.session.clear()
            raise PageError(401)
        if r.status_code in (403, 404):
            raise PageError(r.status_code, service)
        if r.status_code >= 400:
            log.warning("API answered an error", extra={"service": service, "status": r.status_code})
            raise PageError(503, service)
        return r.json()

    @app.exception_handler(PageError)
    async def page_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PageError)
        if exc.status == 401:
            return RedirectResponse("/signin?" + urlencode({"next": safe_next(_here(request))}), 303)
        template = {403: "403.html", 404: "404.html"}.get(exc.status, "error.html")
        if exc.reason == "plan":  # a plan not there and a plan refused look the same (as the API's 404 means)
            template = "403.html"
        return render(request, template, exc.status, reason=exc.reason)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        if status == 404:
            return render(request, "404.html", 404, reason="")
        return render(request, "error.html", status, reason="")

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> Response:
        log.exception("page failed", extra={"path_template": request.scope.get("route") and request.url.path})
        return render(request, "error.html", 500, reason="")

    # ---- health ----
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": SERVICE}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        down = []
        for service in ("planning", "consent", "notify"):
            try:
                r = await web.http.get(web.api_base(service) + "/healthz", timeout=3)
                if r.status_code != 200:
                    down.append(service)
            except httpx.HTTPError:
                down.append(service)
        from fastapi.responses import JSONResponse

        body = {"status": "ready" if not down else "unavailable", "unavailable": down}
        return JSONResponse(body, status_code=200 if not down else 503)

    # ---- open pages ----
    @app.get("/", response_class=HTMLResponse)
    async def start(request: Request) -> Response:
        return render(request, "start.html")

    @app.get("/tillganglighet", response_class=HTMLResponse)
    async def accessibility(request: Request) -> Response:
        return render(request, "accessibility.html")

    # ---- sign-in and out ----
    @app.get("/signin", response_class=HTMLResponse)
    async def signin(request: Request) -> Response:
        nxt = safe_next(request.query_params.get("next"))
        request.session["next"] = nxt
        available = {kind: kind in oauth._registry for kind in KINDS}
        return render(request, "signin.html", available=available, next=nxt)

    @app.get("/signin/{kind}")
    async def signin_with(request: Request, kind: str) -> Response:
        if kind not in KINDS or kind not in oauth._registry:
            raise PageError(404)
        client = oauth.create_client(kind)
        request.session["signin_kind"] = kind
        extra = {"resource": settings.oidc_resource} if settings.oidc_resource else {}
        redirect_uri = settings.public_base_url.rstrip("/") + "/callback"
        try:
            return await client.authorize_redirect(request, redirect_uri, **extra)
        except (httpx.HTTPError, OAuthError, ValueError) as exc:
            log.warning("identity provider unavailable", extra={"kind": kind, "error": type(exc).__name__})
            raise PageError(503, "idp") from None

    @app.get("/callback")
    async def callback(request: Request) -> Response:
        kind = request.session.get("signin_kind")
        if kind not in KINDS or kind not in oauth._registry:
            raise PageError(403, "signin")
        client = oauth.create_client(kind)
        extra = {"resource": settings.oidc_resource} if settings.oidc_resource else {}
        try:
            token = await client.authorize_access_token(request, **extra)
        except (OAuthError, httpx.HTTPError, ValueError) as exc:
            log.warning("sign-in refused", extra={"kind": kind, "error": type(exc).__name__})
            raise PageError(403, "signin") from None
        claims = dict(token.get("userinfo") or {})
        access = str(token.get("access_token", ""))
        try:  # the access token's own claims, for display only: the APIs verify it on every call
            claims = {**jwt.decode(access, options={"verify_signature": False}), **claims}
        except jwt.PyJWTError:
            pass
        user: dict[str, Any] = {
            "kind": kind,
            "access_token": access,
            "oidc": True,  # signed in at the provider (its session ends at logout); the ID token is not kept
            "expires_at": float(token.get("expires_at") or time.time() + 300),
            "name": claims.get("name"),
        }
        if kind == "staff":
            user["hsa_id"] = claims.get(settings.staff_hsa_claim)
        nxt = safe_next(request.session.get("next"))
        _sign_in(request, user)
        return RedirectResponse(nxt, 303)

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        await check_csrf(request)
        user = request.session.get("user") or {}
        request.session.clear()  # the server-side session ends: the old cookie opens nothing
        kind = user.get("kind") if isinstance(user, dict) else None
        if kind in oauth._registry and user.get("oidc"):
            try:
                meta = await oauth.create_client(kind).load_server_metadata()
            except (httpx.HTTPError, ValueError):
                meta = {}
            end = meta.get("end_session_endpoint")
            if end:
                # client_id, not id_token_hint: a citizen's ID token carries the personnummer, and
                # no personal data goes into a URL (RP-Initiated Logout 1.0 allows either)
                client_id = settings.citizen_client_id if kind == "citizen" else settings.staff_client_id
                query = urlencode({
                    "client_id": client_id,
                    "post_logout_redirect_uri": settings.public_base_url.rstrip("/") + "/",
                })  # fmt: skip
                return RedirectResponse(f"{end}?{query}", 303)
        return RedirectResponse("/", 303)

    # ---- development sign-in (make run only) ----
    if settings.dev_signin:
        log.warning("development sign-in is ON: never in production")

        @app.get("/dev/signin", response_class=HTMLResponse)
        async def dev_signin(request: Request) -> Response:
            orgs = list(directory.organisations) if directory is not None else []
            return render(request, "dev_signin.html", organisations=orgs, error=None)

        @app.post("/dev/signin")
        async def dev_signin_post(request: Request) -> Response:
            form = await check_csrf(request)
            secret = settings.jwt_hs256_secret.get_secret_value() if settings.jwt_hs256_secret else ""
            if not secret:
                raise PageError(503, "dev-secret")
            expires = time.time() + 3600
            if form.get("organisation"):
                hsa = form["organisation"]
                if directory is None or directory.get(hsa) is None:
                    raise PageError(403, "signin")
                token = mint_token(secret, hsa, subject="dev-signin")
                user = {"kind": "staff", "hsa_id": hsa, "expires_at": expires, "name": None,
                        "access_token": token, "oidc": False}  # fmt: skip
            else:
                try:
                    pnr = parse_person_identifier(form.get("person", "")).value
                except InvalidPersonIdentifier:
                    orgs = list(directory.organisations) if directory is not None else []
                    return render(request, "dev_signin.html", 422, organisations=orgs, error="person")
                user = {"kind": "citizen", "expires_at": expires, "name": None,
                        "access_token": mint_person_token(secret, pnr), "oidc": False}  # fmt: skip
            nxt = safe_next(request.session.get("next"))
            _sign_in(request, user)
            return RedirectResponse(nxt, 303)

    # ---- the participant's (and the person's) plan page ----
    @app.get("/plans/{plan_id}", response_class=HTMLResponse)
    async def plan_page(request: Request, plan_id: str) -> Response:
        _uuid_or_404(plan_id)
        try:
            resource = await api(request, "planning", f"/fhir/CarePlan/{plan_id}")
        except PageError as exc:
            # the API answers a reader without a relation 404 (the plan's existence is not disclosed)
            # and one whose consent does not cover them 403: both get the page "no access" with 403,
            # so neither the page nor its status tells a stranger whether the plan exists
            if exc.status in (403, 404):
                raise PageError(403, "plan") from None
            raise
        lang = lang_of(request)
        plan = care_plan(resource, self_text="Personen själv" if lang == "sv" else "The person")
        return render(request, "plan.html", plan=plan)

    @app.get("/plans/{plan_id}/calendar.ics")
    async def plan_calendar(request: Request, plan_id: str) -> Response:
        _uuid_or_404(plan_id)
        plan = care_plan(await api(request, "planning", f"/fhir/CarePlan/{plan_id}"))
        url = settings.public_base_url.rstrip("/") + f"/plans/{plan_id}"
        ics = calendar(plan, plan_url=url, now=datetime.now(UTC))
        if ics is None:
            raise PageError(404)
        return Response(
            ics, media_type="text/calendar; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="sip-{plan.reference or "mote"}.ics"',
                     "Cache-Control": "no-store"},
        )  # fmt: skip

    # ---- the person's own page ----
    @app.get("/me", response_class=HTMLResponse)
    async def me(request: Request) -> Response:
        require(request, "citizen")
        # closed and refused ones too: the person's page is their history
        cases = await api(request, "planning", "/cases", params={"all": "true"})
        consents = await api(request, "consent", "/consents")
        trail = await api(request, "consent", "/audit")
        trail = sorted(trail, key=lambda e: e.get("recorded_at") or "", reverse=True)
        done = request.query_params.get("withdrawn") == "1"
        return render(
            request, "me.html", cases=cases, consents=consents, trail=trail, parse_time=parse_time,
            what=_what, withdrawn=done,
        )  # fmt: skip

    @app.get("/me/consents/{consent_id}/withdraw", response_class=HTMLResponse)
    async def withdraw_confirm(request: Request, consent_id: str) -> Response:
        require(request, "citizen")
        _uuid_or_404(consent_id)
        consent = await api(request, "consent", f"/consents/{consent_id}")
        return render(request, "withdraw.html", consent=consent)

    @app.post("/me/consents/{consent_id}/withdraw")
    async def withdraw(request: Request, consent_id: str) -> Response:
        await check_csrf(request)
        require(request, "citizen")
        _uuid_or_404(consent_id)
        await api(request, "consent", f"/consents/{consent_id}/withdraw", method="POST", json={})
        return RedirectResponse("/me?withdrawn=1", 303)

    # ---- the coordinator's overview and case page ----
    @app.get("/overview", response_class=HTMLResponse)
    async def overview(request: Request) -> Response:
        require(request, "staff")
        rows = await api(request, "planning", "/overview")
        now = datetime.now(UTC)
        items = []
        for row in rows:
            if row.get("state") in CLOSED_STATES:
                continue
            due = parse_time(row.get("due_at"))
            breached = bool(row.get("breached_unmet")) or (due is not None and due <= now)
            items.append({**row, "due": due, "breached": breached, "remaining": _remaining(due, now)})
        items.sort(key=lambda r: (r["due"] is None, r["due"] or now))
        return render(request, "overview.html", rows=items)

    @app.get("/cases/{case_id}", response_class=HTMLResponse)
    async def case_page(request: Request, case_id: str) -> Response:
        require(request, "staff")
        _uuid_or_404(case_id)
        case = await api(request, "planning", f"/cases/{case_id}")
        deadlines = await api(request, "planning", f"/cases/{case_id}/deadlines")
        notifications = await api(request, "notify", "/notifications", params={"case_id": case_id})
        try:
            history = await api(request, "planning", f"/fhir/CarePlan/{case_id}/_history")
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
        timeline = _timeline(case, deadlines, notifications, versions)
        now = datetime.now(UTC)
        deadline_rows = [
            {**d, "due": parse_time(d.get("due_at")),
             "breached": d.get("status") == "breached" or (
                 d.get("status") == "open" and (parse_time(d.get("due_at")) or now) < now)}
            for d in deadlines
        ]  # fmt: skip
        return render(
            request, "case.html", case=case, deadlines=deadline_rows, notifications=notifications,
            versions=versions, timeline=timeline, parse_time=parse_time,
        )  # fmt: skip

    return app


def _sign_in(request: Request, user: dict[str, Any]) -> None:
    lang = request.session.get("lang")
    request.session.clear()
    request.session.update({"user": user, "csrf": secrets.token_urlsafe(32), ROTATE: True})
    if lang:
        request.session["lang"] = lang


def _here(request: Request) -> str:
    return request.url.path if request.method == "GET" else "/"


def _uuid_or_404(value: str) -> None:
    from uuid import UUID

    try:
        UUID(value)
    except ValueError:
        raise PageError(404) from None


def _issuer_origins(settings: WebSettings) -> list[str]:
    from urllib.parse import urlsplit

    out = []
    for issuer in (settings.staff_issuer, settings.citizen_issuer):
        if issuer:
            parts = urlsplit(issuer)
            out.append(f"{parts.scheme}://{parts.netloc}")
    return out


def _remaining(due: datetime | None, now: datetime) -> dict[str, Any] | None:
    if due is None:
        return None
    seconds = int((due - now).total_seconds())
    late = seconds < 0
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    return {"late": late, "days": days, "hours": hours, "minutes": minutes}


def _what(entry: dict[str, Any], lang: str) -> str:
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


def _timeline(
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
