"""Signing in and out: OpenID Connect (authorization code + PKCE) for staff and citizens, the callback,
logout (which ends the server-side session and, for a provider sign-in, the provider's), and the
development sign-in (:data:`dev_router`, included only where ``dev_signin`` is on: ``make run``).
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
from authlib.integrations.starlette_client import OAuthError
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.web.deps import KINDS, Ctx, PageError, check_csrf, safe_next
from services.web.sessions import ROTATE
from shared.auth import mint_person_token, mint_token
from shared.identifiers import InvalidPersonIdentifier, parse_person_identifier

log = logging.getLogger("sip.web")

router = APIRouter()
dev_router = APIRouter()


@router.get("/signin", response_class=HTMLResponse)
async def signin(request: Request, ctx: Ctx) -> Response:
    nxt = safe_next(request.query_params.get("next"))
    request.session["next"] = nxt
    available = {kind: ctx.client(kind) is not None for kind in KINDS}
    return ctx.render(request, "signin.html", available=available, next=nxt)


@router.get("/signin/{kind}")
async def signin_with(request: Request, kind: str, ctx: Ctx) -> Response:
    client = ctx.client(kind)
    if client is None:
        raise PageError(404)
    settings = ctx.settings
    request.session["signin_kind"] = kind
    extra = {"resource": settings.oidc_resource} if settings.oidc_resource else {}
    redirect_uri = settings.public_base_url.rstrip("/") + "/callback"
    try:
        return await client.authorize_redirect(request, redirect_uri, **extra)
    except (httpx.HTTPError, OAuthError, ValueError) as exc:
        log.warning("identity provider unavailable", extra={"kind": kind, "error": type(exc).__name__})
        ctx.metrics.signin(kind, "unavailable")
        raise PageError(503, "idp") from None


@router.get("/callback")
async def callback(request: Request, ctx: Ctx) -> Response:
    kind = request.session.get("signin_kind")
    client = ctx.client(kind)
    if client is None:
        ctx.metrics.signin(kind, "refused")
        raise PageError(403, "signin")
    settings = ctx.settings
    extra = {"resource": settings.oidc_resource} if settings.oidc_resource else {}
    try:
        token = await client.authorize_access_token(request, **extra)
    except (OAuthError, httpx.HTTPError, ValueError) as exc:
        log.warning("sign-in refused", extra={"kind": kind, "error": type(exc).__name__})
        ctx.metrics.signin(kind, "refused")
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
    sign_in(request, user)
    ctx.metrics.signin(kind, "ok")
    return RedirectResponse(nxt, 303)


@router.post("/logout")
async def logout(request: Request, ctx: Ctx) -> Response:
    await check_csrf(request)
    user = request.session.get("user") or {}
    request.session.clear()  # the server-side session ends: the old cookie opens nothing
    kind = user.get("kind") if isinstance(user, dict) else None
    client = ctx.client(kind)
    if client is not None and user.get("oidc"):
        try:
            meta = await client.load_server_metadata()
        except (httpx.HTTPError, ValueError):
            meta = {}
        end = meta.get("end_session_endpoint")
        if end:
            # client_id, not id_token_hint: a citizen's ID token carries the personnummer, and
            # no personal data goes into a URL (RP-Initiated Logout 1.0 allows either)
            settings = ctx.settings
            client_id = settings.citizen_client_id if kind == "citizen" else settings.staff_client_id
            query = urlencode({
                "client_id": client_id,
                "post_logout_redirect_uri": settings.public_base_url.rstrip("/") + "/",
            })  # fmt: skip
            return RedirectResponse(f"{end}?{query}", 303)
    return RedirectResponse("/", 303)


# ---- development sign-in (make run only) ----


@dev_router.get("/dev/signin", response_class=HTMLResponse)
async def dev_signin(request: Request, ctx: Ctx) -> Response:
    orgs = list(ctx.directory.organisations) if ctx.directory is not None else []
    return ctx.render(request, "dev_signin.html", organisations=orgs, error=None)


@dev_router.post("/dev/signin")
async def dev_signin_post(request: Request, ctx: Ctx) -> Response:
    form = await check_csrf(request)
    settings, directory = ctx.settings, ctx.directory
    secret = settings.jwt_hs256_secret.get_secret_value() if settings.jwt_hs256_secret else ""
    if not secret:
        raise PageError(503, "dev-secret")
    expires = time.time() + 3600
    if form.get("organisation"):
        hsa = form["organisation"]
        if directory is None or directory.get(hsa) is None:
            ctx.metrics.signin("staff", "refused")
            raise PageError(403, "signin")
        token = mint_token(secret, hsa, subject="dev-signin")
        user = {"kind": "staff", "hsa_id": hsa, "expires_at": expires, "name": None,
                "access_token": token, "oidc": False}  # fmt: skip
    else:
        try:
            pnr = parse_person_identifier(form.get("person", "")).value
        except InvalidPersonIdentifier:
            ctx.metrics.signin("citizen", "refused")
            orgs = list(directory.organisations) if directory is not None else []
            return ctx.render(request, "dev_signin.html", 422, organisations=orgs, error="person")
        user = {"kind": "citizen", "expires_at": expires, "name": None,
                "access_token": mint_person_token(secret, pnr), "oidc": False}  # fmt: skip
    nxt = safe_next(request.session.get("next"))
    sign_in(request, user)
    ctx.metrics.signin(user["kind"], "ok")
    return RedirectResponse(nxt, 303)


def sign_in(request: Request, user: dict[str, Any]) -> None:
    """A new session for the user (a new session id: ``ROTATE``), keeping only the chosen language."""
    lang = request.session.get("lang")
    request.session.clear()
    request.session.update({"user": user, "csrf": secrets.token_urlsafe(32), ROTATE: True})
    if lang:
        request.session["lang"] = lang
