"""One FHIR REST layer for the three services: what the FHIR R4 http and search pages ask of a server
around the resources themselves.

- :func:`install` (each service's ``create_app``): content negotiation (``Accept``/``_format``/
  ``fhirVersion``: JSON only; 406 for XML or a version the service does not serve), ``ETag``/
  ``Last-Modified`` from ``meta`` of every single resource served, ``If-None-Match`` → 304, ``_summary``
  and ``_elements`` on reads and searches, ``HEAD`` like ``GET``, and an OperationOutcome for every
  error under ``/fhir`` (404 unknown id or type, 405 method, 400 bad parameter, …).
- :func:`parse_search` + :func:`searchset`: search parameters checked per ``Prefer: handling``
  (lenient by default: unknown ones ignored and left out of the ``self`` link; strict: 400), paging by
  ``_count``/``_offset`` over a result filtered *before* paging, frozen by ``_snapshot`` so that
  writes between pages neither repeat nor skip a match; ``self``/``first``/``next``/``previous`` as
  absolute URLs from the public base URL; ``total`` the number of matches.
- :func:`history_bundle`: bdl-8 (the ``fullUrl`` is never version specific; the version is in
  ``response.etag`` and ``meta``).
- :func:`capability_statement`: generated from the routes the app has registered under ``/fhir``
  (interactions from the path shapes, search parameters from :func:`fhir_route`), so it cannot drift.
- :func:`check_if_match`: ``If-Match`` on a command that changes a versioned resource → 412 when stale.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Literal, cast
from urllib.parse import urlencode
from uuid import uuid4

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import JSONResponse, Response

from shared.access import routes
from shared.fhir import FHIR_JSON, check_required_bindings, operation_outcome

log = logging.getLogger("sip.fhir")

FHIR_PREFIX = "/fhir"
EXTENSION = "x-fhir"
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}

#: parameters every search accepts besides its own (the FHIR "result" parameters this layer handles)
RESULT_PARAMETERS = frozenset(
    {
        "_count",
        "_offset",
        "_total",
        "_summary",
        "_elements",
        "_format",
        "_pretty",
        "_fhirVersion",
        "_snapshot",
        "_cursor",
    }
)
SUMMARY_MODES = ("true", "text", "data", "count", "false")
OPERATION_DEFINITIONS = {
    "validate": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
    "process-message": "http://hl7.org/fhir/OperationDefinition/MessageHeader-process-message",
}
_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    409: "conflict",
    412: "conflict",
    415: "not-supported",
    422: "processing",
    503: "transient",
}
_JSON_TYPES = {"application/fhir+json", "application/json", "json", "application/json+fhir", "text/json"}
_ANY = {"*/*", "application/*", "", "text/html", "text/*"}


def is_fhir(path: str) -> bool:
    return path == FHIR_PREFIX or path.startswith(FHIR_PREFIX + "/")


class FhirError(Exception):
    """Answered as an OperationOutcome with ``status`` (under /fhir; ``{"detail"}`` elsewhere)."""

    def __init__(self, status: int, diagnostics: str, code: str | None = None) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.diagnostics = diagnostics
        self.code = code or _CODES.get(status, "processing")


def outcome(
    status: int, diagnostics: str, code: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    return JSONResponse(
        operation_outcome(diagnostics, code=code or _CODES.get(status, "processing")),
        status_code=status,
        media_type=FHIR_JSON,
        headers=headers,
    )


# ---- route declarations -------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchParam:
    name: str
    type: Literal["token", "reference", "date", "string", "uri", "number", "quantity", "composite", "special"]
    documentation: str


def fhir_route(*, search: Sequence[SearchParam] = (), conditional_create: bool = False) -> dict[str, Any]:
    """``openapi_extra`` of a FHIR route (merge with the route's access rule): its search parameters
    and whether a create honours ``If-None-Exist``. The CapabilityStatement is built from these."""
    info: dict[str, Any] = {}
    if search:
        info["search"] = [{"name": p.name, "type": p.type, "documentation": p.documentation} for p in search]
    if conditional_create:
        info["conditionalCreate"] = True
    return {EXTENSION: info}


# ---- search -------------------------------------------------------------------------------------
@dataclass
class Search:
    """A search request: its known criteria, how to page, and what was ignored."""

    criteria: list[tuple[str, str]]
    ignored: list[str]
    count: int
    offset: int
    total: str
    snapshot: datetime | None
    summary: str | None
    extra: list[tuple[str, str]] = field(default_factory=list)
    cursor: str | None = None  # keyset paging: where the previous page ended (the service's own format)

    def get(self, name: str) -> str | None:
        return next((v for k, v in self.criteria if k == name), None)

    def getlist(self, name: str) -> list[str]:
        return [v for k, v in self.criteria if k == name]


def handling(request: Request) -> str:
    prefer = request.headers.get("prefer", "")
    m = re.search(r"handling\s*=\s*\"?(strict|lenient)", prefer, re.IGNORECASE)
    return m.group(1).lower() if m else "lenient"


def parse_search(
    request: Request, known: Iterable[SearchParam | str], *, default_count: int = 50, max_count: int = 200
) -> Search:
    """The query of a search, per ``Prefer: handling`` (lenient unless strict is asked for)."""
    names = {p.name if isinstance(p, SearchParam) else p for p in known}
    criteria: list[tuple[str, str]] = []
    extra: list[tuple[str, str]] = []
    ignored: list[str] = []
    for key, value in request.query_params.multi_items():
        if key in names:
            criteria.append((key, value))
        elif key in RESULT_PARAMETERS:
            if key not in ("_offset", "_snapshot", "_cursor"):
                extra.append((key, value))
        else:
            ignored.append(key)
    if ignored and handling(request) == "strict":
        raise FhirError(
            400, f"unsupported search parameter(s): {', '.join(sorted(set(ignored)))[:300]}", "not-supported"
        )
    q = request.query_params
    try:
        count = min(int(q.get("_count", str(default_count))), max_count)
        offset = int(q.get("_offset", "0"))
    except ValueError:
        raise FhirError(400, "_count and _offset must be whole numbers") from None
    if count < 0 or offset < 0 or offset > 10**9:
        raise FhirError(400, "_count and _offset must not be negative")
    total = q.get("_total", "accurate")
    if total not in ("none", "estimate", "accurate"):
        raise FhirError(400, "_total: none, estimate or accurate")
    snapshot = None
    if q.get("_snapshot"):
        try:
            snapshot = datetime.fromisoformat(q["_snapshot"])
        except ValueError:
            raise FhirError(400, "_snapshot: not a point in time (use the next link as given)") from None
        if snapshot.tzinfo is None:
            raise FhirError(400, "_snapshot: a point in time with its zone")
    cursor = q.get("_cursor") or None
    if cursor is not None and len(cursor) > 200:
        raise FhirError(400, "_cursor: use the next link as given")
    return Search(criteria, ignored, count, offset, total, snapshot, q.get("_summary"), extra, cursor)


def frozen(search: Search, stamps: Iterable[datetime]) -> datetime | None:
    """The newest match's time on the first page: later pages leave out what was written after it."""
    if search.snapshot is not None:
        return search.snapshot
    return max(stamps, default=None)


def full_url(base_url: str, resource: dict[str, Any]) -> str:
    return f"{base_url.rstrip('/')}{FHIR_PREFIX}/{resource['resourceType']}/{resource['id']}"


def _bundle(kind: str, at: datetime | None = None) -> dict[str, Any]:
    at = at or datetime.now(UTC)
    return {
        "resourceType": "Bundle",
        "id": str(uuid4()),
        "meta": {"lastUpdated": at.isoformat()},
        "type": kind,
    }


def searchset(
    base_url: str,
    path: str,
    search: Search,
    page: list[dict[str, Any]],
    total: int,
    snapshot: datetime | None = None,
    next_cursor: str | None = None,
) -> dict[str, Any]:
    """A ``searchset`` Bundle of one page of the (already filtered) matches, with its links.
    ``next_cursor``: keyset paging — the next page starts after it (``_cursor``) rather than at an
    offset, so a match written between pages with an older sort key moves nothing along."""
    base = base_url.rstrip("/")
    url = f"{base}{FHIR_PREFIX}/{path}"
    fixed = [*search.criteria, *search.extra]
    if snapshot is not None:
        fixed.append(("_snapshot", snapshot.isoformat()))

    def link(relation: str, offset: int, cursor: str | None = None) -> dict[str, str]:
        params = [*fixed, ("_offset", str(offset))] if offset else list(fixed)
        if cursor:
            params.append(("_cursor", cursor))
        return {"relation": relation, "url": f"{url}?{urlencode(params)}" if params else url}

    bundle = _bundle("searchset")
    bundle["total"] = total  # always: the matches are filtered before paging, so counting is free
    links = [link("self", search.offset, search.cursor)]
    if search.count:
        links.append(link("first", 0))
        if search.offset > 0:
            links.append(link("previous", max(search.offset - search.count, 0)))
        if search.offset + search.count < total:
            links.append(link("next", search.offset + search.count, next_cursor))
    bundle["link"] = links
    if page:
        bundle["entry"] = [
            {"fullUrl": full_url(base, r), "resource": r, "search": {"mode": "match"}} for r in page
        ]
    return bundle


def history_bundle(base_url: str, items: Sequence[tuple[dict[str, Any], str, str]]) -> dict[str, Any]:
    """A ``history`` Bundle, newest first: ``items`` are (resource version, request method, status).
    bdl-8: each ``fullUrl`` is the resource's plain URL; the version is in the etag and ``meta``."""
    bundle = _bundle("history")
    bundle["total"] = len(items)
    entries = []
    for resource, method, status in items:
        meta = resource.get("meta") or {}
        response: dict[str, Any] = {"status": status}
        if meta.get("versionId"):
            response["etag"] = f'W/"{meta["versionId"]}"'
        if meta.get("lastUpdated"):
            response["lastModified"] = meta["lastUpdated"]
        rtype = resource["resourceType"]
        entries.append(
            {
                "fullUrl": full_url(base_url, resource),
                "resource": resource,
                "request": {
                    "method": method,
                    "url": rtype if method == "POST" else f"{rtype}/{resource['id']}",
                },
                "response": response,
            }
        )
    if entries:
        bundle["entry"] = entries
    return bundle


# ---- versions -----------------------------------------------------------------------------------
def check_if_match(request: Request, current_version: int | str) -> None:
    """``If-Match: W/"<versionId>"`` on a command that changes a versioned resource: 412 when the
    resource has moved on since the client read it. No header: the command goes ahead."""
    asked = request.headers.get("if-match")
    if not asked:
        return
    wanted = {_etag_value(t) for t in asked.split(",")}
    if "*" in wanted or str(current_version) in wanted:
        return
    raise FhirError(
        412,
        f"the resource is at version {current_version}, not {asked.strip()[:40]} (read it again)",
        "conflict",
    )


def _etag_value(tag: str) -> str:
    tag = tag.strip()
    if tag.startswith("W/"):
        tag = tag[2:]
    return tag.strip('"')


def etag(version: int | str) -> str:
    return f'W/"{version}"'


def http_date(value: str) -> str | None:
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return format_datetime(when.astimezone(UTC), usegmt=True)


# ---- content negotiation ------------------------------------------------------------------------
def negotiate(request: Request, versions: Sequence[str]) -> str:
    """The FHIR version to answer in (``versions[0]`` unless asked); :class:`FhirError` 406 for a format
    or version not served."""
    q = request.query_params
    fmt = q.get("_format")
    version: str | None = None
    if fmt is not None:
        media, params = _media(fmt)
        if media not in _JSON_TYPES:
            raise FhirError(406, f"_format '{fmt[:40]}' not served: JSON only (application/fhir+json)")
        version = params.get("fhirversion")
    else:
        accept = request.headers.get("accept", "")
        ranges = [_media(part) for part in accept.split(",")] if accept.strip() else [("", {})]
        served = [
            (m, p) for m, p in ranges if (m in _JSON_TYPES or m in _ANY) and p.get("q") not in ("0", "0.0")
        ]
        if not served:
            raise FhirError(406, f"Accept '{accept[:60]}' not served: JSON only (application/fhir+json)")
        asked = [p["fhirversion"] for _, p in served if "fhirversion" in p]
        if asked:
            ok = [a for a in asked if _version(a) in versions]
            version = ok[0] if ok else asked[0]
    if "_fhirVersion" in q:
        version = q["_fhirVersion"]
    if version is None:
        return versions[0]
    v = _version(version)
    if v not in versions:
        raise FhirError(406, f"FHIR version '{version[:20]}' not served: {' or '.join(versions)}")
    return v


def _version(value: str) -> str:
    v = value.strip().strip('"').lower()
    return {"r4": "4.0", "4.0.1": "4.0", "r5": "5.0", "5.0.0": "5.0"}.get(
        v, v[:3] if re.fullmatch(r"\d\.\d(\.\d+)?", v) else v
    )


def _media(value: str) -> tuple[str, dict[str, str]]:
    head, *rest = value.split(";")
    params = {}
    for p in rest:
        k, _, v = p.partition("=")
        params[k.strip().lower()] = v.strip().strip('"')
    return head.strip().lower(), params


# ---- _summary and _elements ---------------------------------------------------------------------
def _model_fields(resource_type: str, version: str) -> dict[str, Any]:
    from fhir.resources import get_fhir_model_class
    from fhir.resources.R4B import get_fhir_model_class as get_r4b

    try:
        cls = (get_fhir_model_class if version == "5.0" else get_r4b)(resource_type)
    except (KeyError, ValueError, AttributeError, ImportError):
        return {}
    out: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("element_property"):
            # a complex required element (CarePlan.subject) says so through pydantic, not the extra
            out[info.alias or name] = {
                **extra,
                "element_required": extra.get("element_required") or info.is_required(),
            }
    return out


def subset(
    resource: dict[str, Any], summary: str | None, elements: list[str] | None, version: str
) -> dict[str, Any]:
    """``_summary`` (true/text/data) or ``_elements`` applied to one resource; marked SUBSETTED."""
    if summary in (None, "false") and not elements:
        return resource
    fields = _model_fields(str(resource.get("resourceType")), version)
    required = {k for k, e in fields.items() if e.get("element_required")}
    keep: set[str]
    if summary == "data":
        keep = set(resource) - {"text"}
    elif summary == "text":
        keep = {"id", "meta", "text", *required}
    elif summary == "true":
        keep = {"id", "meta", *required, *(k for k, e in fields.items() if e.get("summary_element_property"))}
    else:
        keep = {"id", "meta", *required, *(elements or [])}
    out = {k: v for k, v in resource.items() if k == "resourceType" or k in keep or k.lstrip("_") in keep}
    meta = dict(out.get("meta") or {})
    meta["tag"] = [*(meta.get("tag") or []), SUBSETTED]
    out["meta"] = meta
    return out


def _apply_subset(
    doc: dict[str, Any], summary: str | None, elements: list[str] | None, version: str
) -> dict[str, Any]:
    if doc.get("resourceType") != "Bundle":
        return subset(doc, summary, elements, version)
    if summary == "count":
        return {k: v for k, v in doc.items() if k != "entry"}
    for entry in doc.get("entry") or []:
        if isinstance(entry.get("resource"), dict) and entry.get("search", {}).get("mode") != "outcome":
            entry["resource"] = subset(entry["resource"], summary, elements, version)
    return doc


# ---- the middleware and the error handlers ------------------------------------------------------
class FhirRestMiddleware(BaseHTTPMiddleware):
    def __init__(self, app: Any, versions: Sequence[str]) -> None:
        super().__init__(app)
        self.versions = tuple(versions)

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if not is_fhir(request.url.path):
            return await call_next(request)
        head = request.method == "HEAD"
        try:
            version = negotiate(request, self.versions)
            summary = request.query_params.get("_summary")
            if summary is not None and summary not in SUMMARY_MODES:
                raise FhirError(400, f"_summary: one of {', '.join(SUMMARY_MODES)}")
            ctype = request.headers.get("content-type", "")
            if request.method in ("POST", "PUT") and "xml" in ctype.lower():
                raise FhirError(415, "only JSON bodies are read (application/fhir+json)")
        except FhirError as exc:
            return outcome(exc.status, exc.diagnostics, exc.code)
        if head:
            request.scope["method"] = "GET"
        response = await call_next(request)
        if head:
            request.scope["method"] = "HEAD"
        if response.status_code not in (200, 201) or "json" not in response.headers.get("content-type", ""):
            return _headless(response) if head else response
        chunks = [c async for c in response.body_iterator]  # type: ignore[attr-defined]
        body = b"".join(c if isinstance(c, bytes) else str(c).encode() for c in chunks)
        headers = {k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")}
        media = response.headers.get("content-type", FHIR_JSON)
        q = request.query_params
        subsetting = "_elements" in q or q.get("_summary", "false") != "false"
        if body.startswith(b'{"resourceType":"Bundle"') and not subsetting:  # nothing to add: no parse
            return Response(b"" if head else body, response.status_code, headers, media_type=media)
        try:
            doc = json.loads(body)
        except ValueError:
            return Response(b"" if head else body, response.status_code, headers, media_type=media)
        if isinstance(doc, dict) and doc.get("resourceType") not in (
            None,
            "Bundle",
            "OperationOutcome",
            "Parameters",
        ):
            meta = doc.get("meta") or {}
            if meta.get("versionId"):
                headers.setdefault("etag", etag(meta["versionId"]))
            if meta.get("lastUpdated") and (stamp := http_date(str(meta["lastUpdated"]))):
                headers.setdefault("last-modified", stamp)
        tag = headers.get("etag")
        inm = request.headers.get("if-none-match")
        if request.method == "GET" and response.status_code == 200 and tag and inm:
            if _etag_value(tag) in {_etag_value(t) for t in inm.split(",")} or inm.strip() == "*":
                kept = {k: v for k, v in headers.items() if k in ("etag", "last-modified")}
                return Response(status_code=304, headers=kept)
        elements = [e.strip() for e in q.get("_elements", "").split(",") if e.strip()] or None
        summary = q.get("_summary")
        if request.method == "GET" and isinstance(doc, dict) and (elements or summary not in (None, "false")):
            doc = _apply_subset(doc, summary, elements, version)
            body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
        return Response(b"" if head else body, response.status_code, headers, media_type=media)


def _headless(response: Response) -> Response:
    headers = {k: v for k, v in response.headers.items() if k != "content-length"}
    return Response(b"", response.status_code, headers)


def install(app: FastAPI, *, versions: Sequence[str] = ("4.0",)) -> None:
    """The FHIR REST layer on a service's app (call after its routers are included)."""
    app.add_middleware(FhirRestMiddleware, versions=versions)

    async def on_fhir_error(request: Request, exc: Exception) -> Response:
        e = cast(FhirError, exc)
        if is_fhir(request.url.path):
            return outcome(e.status, e.diagnostics, e.code)
        return JSONResponse({"detail": e.diagnostics}, status_code=e.status)

    async def on_http(request: Request, exc: Exception) -> Response:
        e = cast(StarletteHTTPException, exc)
        if not is_fhir(request.url.path):
            return await http_exception_handler(request, e)
        reason = e.detail if isinstance(e.detail, str) else json.dumps(e.detail)[:300]
        if e.status_code == 404 and reason == "Not Found":
            reason = f"no such resource type or interaction: {request.url.path[:120]}"
        if e.status_code == 405:
            reason = f"{request.method} is not supported on {request.url.path[:120]}"
        return outcome(e.status_code, reason, headers=dict(e.headers) if e.headers else None)

    async def on_validation(request: Request, exc: Exception) -> Response:
        e = cast(RequestValidationError, exc)
        if not is_fhir(request.url.path):
            return await request_validation_exception_handler(request, e)
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if not isinstance(p, int))
        return outcome(400, f"{where}: {first.get('msg', 'invalid')}"[:300], "invalid")

    app.add_exception_handler(FhirError, on_fhir_error)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)


# ---- the CapabilityStatement --------------------------------------------------------------------
Kind = Literal[
    "capabilities", "system-operation", "search-type", "create", "type-operation", "read", "update",
    "delete", "history-instance", "vread", "history-type", "instance-operation",
]  # fmt: skip


def classify(method: str, path: str) -> tuple[Kind, str | None, str | None]:
    """(interaction, resource type, operation name) of a route under /fhir, from its path's shape.
    :class:`LookupError` for a shape FHIR has no interaction for."""
    parts = path.removeprefix(FHIR_PREFIX).strip("/").split("/")
    param = [p.startswith("{") for p in parts]
    if parts == ["metadata"] and method == "GET":
        return "capabilities", None, None
    if len(parts) == 1 and parts[0].startswith("$") and method in ("POST", "GET"):
        return "system-operation", None, parts[0][1:]
    rtype = parts[0]
    if param[0] or not rtype[:1].isupper():
        raise LookupError(f"{method} {path}: not a FHIR REST path")
    if len(parts) == 1:
        if method == "GET":
            return "search-type", rtype, None
        if method == "POST":
            return "create", rtype, None
    elif len(parts) == 2 and parts[1].startswith("$"):
        return "type-operation", rtype, parts[1][1:]
    elif len(parts) == 2 and parts[1] == "_history" and method == "GET":
        return "history-type", rtype, None
    elif len(parts) == 2 and param[1]:
        if method == "GET":
            return "read", rtype, None
        if method == "PUT":
            return "update", rtype, None
        if method == "DELETE":
            return "delete", rtype, None
    elif len(parts) == 3 and param[1] and parts[2] == "_history" and method == "GET":
        return "history-instance", rtype, None
    elif len(parts) == 3 and param[1] and parts[2].startswith("$"):
        return "instance-operation", rtype, parts[2][1:]
    elif len(parts) == 4 and param[1] and parts[2] == "_history" and param[3] and method == "GET":
        return "vread", rtype, None
    raise LookupError(f"{method} {path}: not a FHIR REST interaction")


def fhir_routes(app: FastAPI) -> list[tuple[str, str, Any]]:
    return [(m, p, r) for m, p, r in routes(app) if is_fhir(p)]


def capability_statement(
    app: FastAPI,
    *,
    name: str,
    base_url: str,
    at: datetime,
    versions: Sequence[str] = ("4.0",),
    security: str = "",
    messaging: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The service's CapabilityStatement, built from the routes it has registered under /fhir."""
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement

    resources: dict[str, dict[str, Any]] = {}
    system_ops: list[dict[str, Any]] = []
    for method, path, route in fhir_routes(app):
        kind, rtype, op = classify(method, path)
        if kind == "capabilities":
            continue
        info = (getattr(route, "openapi_extra", None) or {}).get(EXTENSION) or {}
        doc = getattr(route, "summary", None) or ""
        if kind == "system-operation":
            system_ops.append(_operation(op or "", doc))
            continue
        assert rtype is not None
        res = resources.setdefault(
            rtype, {"type": rtype, "interaction": [], "searchParam": [], "operation": []}
        )
        if op is not None:
            res["operation"].append(_operation(op, doc))
            continue
        res["interaction"].append({"code": kind, "documentation": doc} if doc else {"code": kind})
        if kind == "vread":
            res["versioning"] = "versioned"
            res["readHistory"] = True
        if kind == "create":
            res["conditionalCreate"] = bool(info.get("conditionalCreate"))
        for p in info.get("search", ()):
            res["searchParam"].append(dict(p))
    for res in resources.values():
        for key in ("searchParam", "operation"):
            if not res[key]:
                del res[key]
        res.setdefault("versioning", "no-version")
    fhir_versions = " and R5 (Accept: application/fhir+json; fhirVersion=5.0)" if "5.0" in versions else ""
    rest: dict[str, Any] = {
        "mode": "server",
        "documentation": f"FHIR R4{fhir_versions}, JSON only. Searches are filtered by what the caller "
        "may see before they are counted and paged (_count, next/previous links, total); "
        "Prefer: handling=strict refuses unknown search parameters.",
        "security": {
            "cors": False,
            "service": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                            "code": "OAuth",
                        }
                    ]
                }
            ],
            "description": security or "Bearer JWT (Authorization header) for audience 'sip-suite'.",
        },
        "resource": [resources[k] for k in sorted(resources)],
    }
    if system_ops:
        rest["operation"] = system_ops
    data: dict[str, Any] = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": at.isoformat(),
        "publisher": "sip-suite",
        "kind": "instance",
        "software": {"name": f"sip-suite {name}", "version": "0.1.0"},
        "implementation": {
            "description": f"sip-suite {name} FHIR API",
            "url": f"{base_url.rstrip('/')}{FHIR_PREFIX}",
        },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [rest],
    }
    if messaging:
        data["messaging"] = messaging
    model = CapabilityStatement.model_validate(data)
    check_required_bindings(model)
    return model.model_dump(mode="json", exclude_none=True)


def _operation(name: str, doc: str) -> dict[str, Any]:
    definition = OPERATION_DEFINITIONS.get(name)
    if definition is None:
        raise LookupError(f"${name}: no OperationDefinition known for it")
    out: dict[str, Any] = {"name": name, "definition": definition}
    if doc:
        out["documentation"] = doc
    return out


def security_text(settings: Any) -> str:
    """What the statement says about tokens: the audience and the trusted issuers (names only)."""
    audience = getattr(settings, "jwt_audience", "sip-suite")
    issuers: list[str] = []
    path = getattr(settings, "jwt_issuers_file", "")
    if path:
        try:
            import yaml

            with open(path, encoding="utf-8") as fh:
                loaded = yaml.safe_load(fh) or {}
            issuers = sorted(
                str(k) for k in (loaded.get("issuers", loaded) if isinstance(loaded, dict) else {})
            )
        except (OSError, ValueError, AttributeError):
            issuers = []
    text = (
        "Every request but GET /fhir/metadata carries Authorization: Bearer <JWT> for audience "
        f"'{audience}', "
        "signed by a trusted issuer: an organisation's (claim hsa_id; scope sip:operator for operators) "
        "or a citizen e-ID's (the person's identity number). Missing, forged or expired: 401; an "
        "organisation not in the directory: 403."
    )
    if issuers:
        text += " Trusted issuers: " + ", ".join(issuers)[:500] + "."
    return text
