"""Who is calling: every HTTP caller identifies with a signed JWT (bearer token) — an organisation
(staff systems, hospitals, operators) or a person (a citizen e-ID).

A token is accepted when it is signed by a trusted issuer, is meant for this suite (``aud``), has not
expired, and names who calls. Trust comes from configuration, never from the token:

- ``SIP_JWT_ISSUERS_FILE`` — a YAML/JSON file, one entry per identity provider::

      https://idp.region.example/:            # an organisation issuer (the default kind)
        public_key_pem: "-----BEGIN PUBLIC KEY-----..."
        algorithms: [RS256]
      https://eid-broker.example/:            # a citizen e-ID issuer
        kind: citizen
        public_key_pem: "..."
        person_claim: personal_identity_number   # or sub; the claim that carries the personnummer
      https://login.region.example/:          # keys from the issuer's JWKS instead of a PEM ...
        jwks_uri: https://login.region.example/keys
      https://eid.kommun.example/:            # ... or from its OpenID Connect discovery document
        kind: citizen
        discovery_url: https://eid.kommun.example/   # .well-known/openid-configuration is added

  An entry gives exactly one of ``public_key_pem``, ``jwks_uri`` or ``discovery_url`` (https, or http
  on the loopback only; ``insecure_http: true`` allows http anywhere — development only, e.g. the
  compose dev profile's issuer container). A JWKS is fetched on first use and cached
  (``jwks_cache_seconds``, default 300); a token whose ``kid`` is not in the cached set refetches it
  — key rotation — at most once per ``jwks_refresh_cooldown_seconds`` (default 10), so unknown kids
  cannot make the suite hammer the issuer. A discovery document must name the entry's issuer
  (``issuer``); its ``jwks_uri`` is used.
  Tokens of a JWKS issuer carry ``kid``. A key that is not in the issuer's set is refused (401).

- ``SIP_JWT_HS256_SECRET`` — one shared HMAC secret (development and tests only); its tokens may be
  either kind (``sipctl token``).

An **organisation token** names the calling organisation's HSA-id in the claim ``hsa_id``; the scope
``sip:operator`` (claim ``scope``, space-separated, or a ``roles`` list holding ``operator``) makes it
an operator's. A **citizen token** comes only from an issuer of kind ``citizen`` (or the development
secret) and carries the person's personnummer or samordningsnummer in the issuer's ``person_claim``;
an organisation issuer can never make a person caller, nor a citizen issuer an organisation.

``alg: none`` and algorithms other than the issuer's are refused. A missing, forged, expired or
wrong-audience token answers **401** (``WWW-Authenticate: Bearer``; an OperationOutcome on FHIR paths).
An organisation that is not in the organisation directory answers **403** on every path. What a
caller may then see is decided by each service from the verified token (``shared/access.py``: one
rule per endpoint, in the README's authorization table): that is **403** or a filtered answer. Health
and metrics endpoints, the FHIR CapabilityStatement and the OpenAPI document are open: they carry no
personal data.

``SIP_AUTH_REQUIRED=false`` turns the check off for local development (``make run``); the acting
organisation is then read from ``X-Sip-Organisation``. Never in production.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import jwt
import yaml
from fastapi import Depends, FastAPI, HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import JSONResponse, Response

from shared.fhir import operation_outcome
from shared.identifiers import InvalidPersonIdentifier, parse_person_identifier

log = logging.getLogger("sip.auth")

OPEN_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/metrics",
        "/fhir/metadata",
        "/openapi.json",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
    }
)
AUDIENCE = "sip-suite"
HSA = r"^[A-Za-z0-9\-]{3,64}$"


OPERATOR_SCOPE = "sip:operator"
PERSON_CLAIM = "personal_identity_number"


@dataclass(frozen=True)
class Caller:
    """Who calls, from the verified token: an organisation (``hsa_id``) or a person (``person_id``)."""

    hsa_id: str | None  # the calling organisation; None for a person
    issuer: str
    subject: str  # the system or user within the organisation, or the person's subject at the issuer
    person_id: str | None = None  # a citizen token: the person's 12-digit personnummer/samordningsnummer
    operator: bool = False  # an organisation token with the scope sip:operator

    @property
    def is_person(self) -> bool:
        return self.person_id is not None

    @property
    def organisation(self) -> str | None:
        return self.hsa_id if self.person_id is None else None


class TokenRejected(Exception):
    pass


KEY_SOURCES = ("public_key_pem", "jwks_uri", "discovery_url")
DISCOVERY_PATH = "/.well-known/openid-configuration"


def _check_key_url(issuer: str, name: str, url: str, *, insecure_http: bool = False) -> None:
    """https, or http on the loopback; http anywhere only with the entry's ``insecure_http: true``
    (development only: the compose dev profile's issuer container, devtools/dev_issuer.py)."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    loopback = parsed.hostname in ("127.0.0.1", "localhost", "::1")
    if parsed.scheme != "https" and not (parsed.scheme == "http" and (loopback or insecure_http)):
        raise ValueError(
            f"issuer {issuer}: {name} must be an https:// URL (http only on the loopback, or with"
            " insecure_http: true for development)"
        )


def check_issuers(issuers: dict[str, dict[str, Any]]) -> None:
    """Refuse, at start, an issuers file whose entries do not say where the issuer's keys are."""
    for issuer, entry in issuers.items():
        if not isinstance(entry, dict):
            raise ValueError(
                f"issuer {issuer}: an entry is a mapping (public_key_pem, jwks_uri or discovery_url)"
            )
        given = [k for k in KEY_SOURCES if entry.get(k)]
        if len(given) != 1:
            raise ValueError(
                f"issuer {issuer}: give exactly one of {', '.join(KEY_SOURCES)} (given: {given})"
            )
        if entry.get("insecure_http") not in (None, True, False):
            raise ValueError(f"issuer {issuer}: insecure_http is true or false")
        if given[0] != "public_key_pem":
            _check_key_url(
                issuer, given[0], str(entry[given[0]]), insecure_http=bool(entry.get("insecure_http"))
            )


class _IssuerKeys:
    """An issuer's JWKS (PyJWT's PyJWKClient and its cache), found directly or by OIDC discovery."""

    def __init__(self, issuer: str, entry: dict[str, Any]) -> None:
        self.issuer = issuer
        self.entry = entry
        self._client: jwt.PyJWKClient | None = None
        self._lock = threading.Lock()

    def _discover(self) -> str:
        url = str(self.entry["discovery_url"])
        if not url.rstrip("/").endswith(DISCOVERY_PATH):
            url = url.rstrip("/") + DISCOVERY_PATH
        try:
            with urllib.request.urlopen(url, timeout=float(self.entry.get("http_timeout_seconds", 10))) as r:
                doc = json.loads(r.read())
        except (OSError, ValueError) as exc:
            log.warning("OIDC discovery failed", extra={"issuer": self.issuer, "error": repr(exc)})
            raise TokenRejected("the token's issuer could not be reached for its keys") from None
        if not isinstance(doc, dict) or doc.get("issuer") != self.issuer or not doc.get("jwks_uri"):
            log.warning("OIDC discovery document does not match its issuer", extra={"issuer": self.issuer})
            raise TokenRejected("the token's issuer publishes no usable keys")
        jwks_uri = str(doc["jwks_uri"])
        try:
            _check_key_url(
                self.issuer, "jwks_uri", jwks_uri, insecure_http=bool(self.entry.get("insecure_http"))
            )
        except ValueError:
            raise TokenRejected("the token's issuer publishes no usable keys") from None
        return jwks_uri

    def client(self) -> jwt.PyJWKClient:
        with self._lock:
            if self._client is None:
                uri = str(self.entry.get("jwks_uri") or self._discover())
                self._client = jwt.PyJWKClient(
                    uri,
                    cache_jwk_set=True,
                    lifespan=float(self.entry.get("jwks_cache_seconds", 300)),
                    cooldown_duration=float(self.entry.get("jwks_refresh_cooldown_seconds", 10)),
                    timeout=float(self.entry.get("http_timeout_seconds", 10)),
                )
            return self._client

    def key_for(self, token: str) -> Any:
        client = self.client()
        try:
            return client.get_signing_key_from_jwt(token).key
        except jwt.PyJWKClientConnectionError as exc:
            log.warning("JWKS fetch failed", extra={"issuer": self.issuer, "error": repr(exc)})
            raise TokenRejected("the token's issuer could not be reached for its keys") from None
        except jwt.PyJWTError:
            raise TokenRejected("the token's signing key is not among its issuer's keys") from None


@dataclass
class TokenVerifier:
    hs256_secret: str | None = None
    issuers: dict[str, dict[str, Any]] | None = None
    audience: str = AUDIENCE
    leeway: int = 30
    _keys: dict[str, _IssuerKeys] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        check_issuers(self.issuers or {})
        for issuer, entry in (self.issuers or {}).items():
            if not entry.get("public_key_pem"):
                self._keys[issuer] = _IssuerKeys(issuer, entry)

    @property
    def fetches_keys(self) -> bool:
        """Some issuer's keys come over the network (verify may block: call it off the event loop)."""
        return bool(self._keys)

    @classmethod
    def from_settings(cls, settings: Any) -> TokenVerifier:
        secret = settings.jwt_hs256_secret.get_secret_value() if settings.jwt_hs256_secret else None
        issuers: dict[str, dict[str, Any]] = {}
        if settings.jwt_issuers_file:
            raw = Path(settings.jwt_issuers_file).read_text()
            issuers = (
                yaml.safe_load(raw)
                if settings.jwt_issuers_file.endswith((".yaml", ".yml"))
                else json.loads(raw)
            ) or {}
        return cls(hs256_secret=secret, issuers=issuers, audience=settings.jwt_audience)

    def verify(self, token: str) -> Caller:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise TokenRejected("the bearer token is not a JWT") from None
        alg = header.get("alg")
        issuer = str(unverified.get("iss") or "")
        entry: dict[str, Any] | None = None  # None: the development secret
        if alg == "HS256" and self.hs256_secret:
            key: Any = self.hs256_secret
            algorithms = ["HS256"]
        elif self.issuers and issuer in self.issuers:
            entry = self.issuers[issuer]
            algorithms = list(entry.get("algorithms") or ["RS256", "ES256"])
            if alg not in algorithms:
                raise TokenRejected("the token's algorithm is not allowed for its issuer")
            key = entry["public_key_pem"] if issuer not in self._keys else self._keys[issuer].key_for(token)
        else:
            raise TokenRejected("the token's issuer or algorithm is not trusted")
        if alg not in algorithms:
            raise TokenRejected("the token's algorithm is not allowed for its issuer")
        try:
            claims = jwt.decode(
                token, key, algorithms=algorithms, audience=self.audience, leeway=self.leeway,
                options={"require": ["exp", "iat", "iss", "sub", "aud"]},
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise TokenRejected("the token has expired") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected("the token is not meant for this suite (aud)") from None
        except jwt.PyJWTError:
            raise TokenRejected("the token's signature or claims are invalid") from None
        if entry is None:
            kind = "citizen" if claims.get(PERSON_CLAIM) is not None else "organisation"
            person_claim = PERSON_CLAIM
        else:
            kind = str(entry.get("kind") or "organisation")
            person_claim = str(entry.get("person_claim") or PERSON_CLAIM)
        if kind == "citizen":
            if entry is None and claims.get("hsa_id") is not None:
                raise TokenRejected("a token names an organisation (hsa_id) or a person, not both")
            try:
                person = parse_person_identifier(str(claims.get(person_claim) or ""))
            except InvalidPersonIdentifier:
                raise TokenRejected(
                    f"the citizen token carries no valid personnummer (claim {person_claim})"
                ) from None
            return Caller(hsa_id=None, issuer=issuer, subject=str(claims["sub"]), person_id=person.value)
        if kind != "organisation":
            raise TokenRejected("the token's issuer is configured with an unknown kind")
        hsa_id = str(claims.get("hsa_id") or "")
        if not re.match(HSA, hsa_id):
            raise TokenRejected("the token names no organisation (claim hsa_id)")
        return Caller(hsa_id=hsa_id, issuer=issuer, subject=str(claims["sub"]), operator=_is_operator(claims))


def _is_operator(claims: dict[str, Any]) -> bool:
    scope = claims.get("scope")
    scopes = scope.split() if isinstance(scope, str) else list(scope or [])
    roles = claims.get("roles")
    return OPERATOR_SCOPE in scopes or (isinstance(roles, list) and "operator" in roles)


def mint_token(
    secret: str, hsa_id: str, *, subject: str = "system", issuer: str = "sip-suite-dev", ttl: int = 3600,
    audience: str = AUDIENCE, now: float | None = None, operator: bool = False,
) -> str:  # fmt: skip
    """An HS256 organisation token for development and tests (sipctl, the test suite)."""
    t = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        "iss": issuer, "sub": subject, "aud": audience, "iat": t, "exp": t + ttl, "hsa_id": hsa_id,
    }  # fmt: skip
    if operator:
        claims["scope"] = OPERATOR_SCOPE
    return jwt.encode(claims, secret, algorithm="HS256")


def mint_person_token(
    secret: str, person_id: str, *, subject: str | None = None, issuer: str = "sip-suite-dev-eid",
    ttl: int = 3600, audience: str = AUDIENCE, now: float | None = None,
) -> str:  # fmt: skip
    """An HS256 citizen token for development and tests: the person ``person_id`` signed in."""
    t = int(now if now is not None else time.time())
    claims = {
        "iss": issuer, "sub": subject or f"person-{person_id[-4:]}", "aud": audience, "iat": t,
        "exp": t + ttl, PERSON_CLAIM: person_id,
    }  # fmt: skip
    return jwt.encode(claims, secret, algorithm="HS256")


def _unauthorised(request: Request, reason: str) -> Response:
    headers = {
        "WWW-Authenticate": f'Bearer realm="sip-suite", error="invalid_token", error_description="{reason}"'
    }
    if request.url.path.startswith("/fhir"):
        body = operation_outcome(reason, code="login")
        return JSONResponse(body, status_code=401, headers=headers, media_type="application/fhir+json")
    return JSONResponse({"detail": reason}, status_code=401, headers=headers)


def _forbidden(request: Request, reason: str) -> Response:
    if request.url.path.startswith("/fhir"):
        body = operation_outcome(reason, code="forbidden")
        return JSONResponse(body, status_code=403, media_type="application/fhir+json")
    return JSONResponse({"detail": reason}, status_code=403)


def install_auth(
    app: FastAPI, settings: Any, known_organisation: Callable[[str], bool] | None = None
) -> None:
    """Require a valid bearer token on every path but the open ones; put the Caller on request.state.

    ``known_organisation`` (the organisation directory) refuses, with 403 on every path, an
    organisation token whose HSA-id the directory does not know."""
    required = bool(getattr(settings, "auth_required", True))
    verifier = TokenVerifier.from_settings(settings) if required else None
    if required and not (verifier and (verifier.hs256_secret or verifier.issuers)):
        raise RuntimeError(
            "authentication is required but no issuer is trusted: set SIP_JWT_ISSUERS_FILE (or, for "
            "development, SIP_JWT_HS256_SECRET), or SIP_AUTH_REQUIRED=false for a local sandbox"
        )
    app.state.auth_required = required

    class AuthMiddleware(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            request.state.caller = None
            if verifier is not None and request.url.path not in OPEN_PATHS:
                header = request.headers.get("authorization", "")
                scheme, _, token = header.partition(" ")
                if scheme.lower() != "bearer" or not token.strip():
                    return _unauthorised(request, "a bearer token is required")
                try:
                    if verifier.fetches_keys:  # a JWKS fetch must not stall the event loop
                        caller = await run_in_threadpool(verifier.verify, token.strip())
                    else:
                        caller = verifier.verify(token.strip())
                except TokenRejected as exc:
                    log.info("request refused: invalid token", extra={"reason": str(exc)})
                    return _unauthorised(request, str(exc))
                if caller.hsa_id is not None and known_organisation and not known_organisation(caller.hsa_id):
                    log.info("request refused: organisation not in the directory")
                    return _forbidden(
                        request, "the calling organisation is not in the organisation directory"
                    )
                request.state.caller = caller
            return await call_next(request)

    app.add_middleware(AuthMiddleware)
    if required:
        _document_bearer(app)


def _document_bearer(app: FastAPI) -> None:
    """The OpenAPI document says what the middleware does: a bearer JWT on every path but the open ones."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = plain()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "A JWT for audience 'sip-suite' from a trusted issuer: an organisation's "
            "(its HSA-id in the claim hsa_id; the scope sip:operator for operators) or a citizen "
            "e-ID's (the personnummer in the issuer's person claim). Missing, forged or expired: "
            "401; an organisation not in the directory: 403.",
        }
        for path, operations in schema.get("paths", {}).items():
            if path in OPEN_PATHS:
                continue
            for op in operations.values():
                op["security"] = [{"bearer": []}]
                op.setdefault("responses", {}).setdefault("401", {"description": "No valid bearer token"})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def current_caller(request: Request) -> Caller | None:
    """The authenticated organisation; with authentication off, ``X-Sip-Organisation`` if given."""
    caller: Caller | None = getattr(request.state, "caller", None)
    if caller is not None:
        return caller
    if not getattr(request.app.state, "auth_required", True):
        hsa = request.headers.get("x-sip-organisation")
        if hsa and re.match(HSA, hsa):
            return Caller(hsa_id=hsa, issuer="unauthenticated", subject="local")
    return None


def acting_organisation(request: Request) -> str:
    """The organisation that acts (recorded as the agent of a change); 401 when there is none, 403
    for a person (staff record changes; the person's own actions have their own endpoints)."""
    caller = current_caller(request)
    if caller is None:
        raise HTTPException(
            401, detail="no acting organisation: send a bearer token (or X-Sip-Organisation in a sandbox)"
        )
    if caller.hsa_id is None:
        raise HTTPException(403, detail="an organisation's token is required for this step, not a person's")
    return caller.hsa_id


CallerDep = Annotated[Caller | None, Depends(current_caller)]
ActingOrganisation = Annotated[str, Depends(acting_organisation)]
