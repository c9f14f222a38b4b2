"""The authorization model: who may call which endpoint, written beside each route.

Every route of every service declares its rule with :func:`rule` (FastAPI ``openapi_extra``), so the
rule is in the service's OpenAPI document (``x-sip-access``), the README's authorization table is
generated from it (``devtools/gendocs.py``), and ``tests/unit/test_access_rules.py`` fails for a route
without one. Each service decides from the verified token (``shared.auth.Caller``) only — a body field
never says who acts — and enforces its rule in one module (``services/<service>/access.py``).

The caller kinds are :data:`CALLER_KINDS`. A caller may be several at once (the owner is usually
covered by the consent too): the most permissive relation counts, except that an exclusion in the
person's consent always wins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.routing import APIRoute

from shared.auth import Caller
from shared.contracts import AccessRecorded

ReaderKind = Literal["organisation", "operator", "person", "guardian"]

CALLER_KINDS: dict[str, str] = {
    "owner": "the unit that owns the case (organisation token)",
    "participant": "an organisation taking part in the case (invited)",
    "hospital": "the hospital that sent the notice or stay",
    "covered": "an organisation the person's consent covers",
    "excluded": "an organisation the person's consent excludes (wins over every other relation)",
    "operator": "an organisation token with the scope sip:operator (service-wide operations)",
    "person": "the person themself (citizen e-ID token)",
    "guardian": "a guardian acting for a child, as named on the child's consent record",
    "stranger": "an organisation in the directory that takes no part",
}
"""Besides these: no, a forged, an expired, an ``alg: none`` or a wrong-audience token is **401** on
every endpoint; an organisation that is not in the directory is **403** on every endpoint."""

Verdict = Literal["allowed", "filtered", "denied"]
VERDICTS: dict[str, str] = {
    "allowed": "may call it",
    "filtered": "sees only the records it has that relation to (filtered before paging and counting)",
    "denied": "403 (or a filtered-out empty answer where the endpoint is a search)",
}

EXTENSION = "x-sip-access"


def rule(summary: str, *, allowed: Iterable[str] = (), filtered: Iterable[str] = ()) -> dict[str, Any]:
    """``openapi_extra`` of a route: the kinds that may call it, those that get a filtered answer;
    every other kind is denied."""
    allowed, filtered = tuple(allowed), tuple(filtered)
    unknown = (set(allowed) | set(filtered)) - set(CALLER_KINDS)
    if unknown:
        raise ValueError(f"unknown caller kinds {sorted(unknown)}")
    both = set(allowed) & set(filtered)
    if both:
        raise ValueError(f"caller kinds both allowed and filtered: {sorted(both)}")
    callers: dict[str, Verdict] = {
        kind: "allowed" if kind in allowed else "filtered" if kind in filtered else "denied"
        for kind in CALLER_KINDS
    }
    return {EXTENSION: {"summary": summary, "callers": callers}}


def routes(app: FastAPI) -> Iterator[tuple[str, str, Any]]:
    """Every (method, path, route) the app serves, HEAD left out — routers included with
    ``include_router`` too (FastAPI keeps those as included-router branches with their own
    effective routes, full path and ``openapi_extra`` included)."""
    for route in app.routes:
        if isinstance(route, APIRoute):
            found: list[Any] = [route]
        elif hasattr(route, "effective_route_contexts"):
            found = list(route.effective_route_contexts())
        else:
            continue
        for r in found:
            for method in sorted(set(r.methods or ()) - {"HEAD"}):
                yield method, r.path, r


def rule_of(route: Any) -> dict[str, Any] | None:
    return (getattr(route, "openapi_extra", None) or {}).get(EXTENSION)


def table(apps: dict[str, FastAPI], open_paths: Iterable[str]) -> str:
    """The README's authorization table (Markdown), one row per endpoint of every service."""
    kinds = list(CALLER_KINDS)
    head = "| service | endpoint | rule | " + " | ".join(kinds) + " |"
    sep = "| --- | --- | --- | " + " | ".join("---" for _ in kinds) + " |"
    mark = {"allowed": "yes", "filtered": "filtered", "denied": "—"}
    lines = [head, sep]
    opened = set(open_paths)
    for service, app in apps.items():
        for method, path, route in routes(app):
            if path in opened:
                continue
            r = rule_of(route)
            if r is None:
                raise LookupError(f"{service}: {method} {path} has no authorization rule")
            cells = " | ".join(mark[r["callers"][k]] for k in kinds)
            lines.append(f"| {service} | `{method} {path}` | {r['summary']} | {cells} |")
    return "\n".join(lines)


def reader(caller: Caller, *, guardian: bool = False) -> dict[str, Any]:
    """The reader fields of an :class:`~shared.contracts.AccessRecorded`, from the verified token."""
    kind: ReaderKind
    if caller.person_id is not None:
        kind = "guardian" if guardian else "person"
    else:
        kind = "operator" if caller.operator else "organisation"
    return {
        "reader_hsa_id": caller.hsa_id,
        "reader_kind": kind,
        "reader_subject": caller.subject[:128] or None,
    }


async def record_reads(
    unit_of_work: Callable[[], AbstractAsyncContextManager[Any]], records: Iterable[AccessRecorded]
) -> None:
    """Put audited reads in the outbox in a short transaction of their own, before the answer goes out
    (consent files them in the person's trail)."""
    items = list(records)
    if not items:
        return
    async with unit_of_work() as uow:
        for r in items:
            await uow.send(r)
