"""Composition root of the consent service: the only place that reads settings and builds adapters.

A refusal of :mod:`services.consent.access` (:class:`~services.consent.access.Denied`) is answered
here: 401 or 403 with ``detail``, an OperationOutcome on FHIR paths."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from services.consent import api, subscribers
from services.consent.access import Denied
from services.consent.adapters.retention import consent_kinds
from services.consent.adapters.store import (
    AuditWriter,
    SqlConsentRepository,
    metadata,
    records_reader,
    upgrade_schema,
)
from services.consent.adapters.unit_of_work import SqlConsentUnitOfWork
from services.consent.handlers import ConsentDeps
from services.consent.settings import ConsentSettings
from shared import fhir_rest, retention
from shared.clock import Clock, SystemClock
from shared.fhir import operation_outcome
from shared.fhir_rest import security_text
from shared.runtime import ServiceRuntime, serve

SERVICE = "consent"


def create_app(settings: ConsentSettings | None = None, *, clock: Clock | None = None) -> FastAPI:
    settings = settings or ConsentSettings()
    clock = clock or SystemClock()
    runtime = ServiceRuntime(SERVICE, settings, metadata, migrations=Path(__file__).parent / "migrations")
    audit_writer = AuditWriter(runtime.engine)
    records_of = records_reader(runtime.engine)
    deps = ConsentDeps(clock)
    subscribers.register(
        runtime,
        lambda: SqlConsentUnitOfWork(runtime, deps),
        clock=clock,
        records_of=records_of,
        audit=audit_writer.write,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await prepare_database(runtime)
        try:
            async with runtime.lifespan(app):
                yield
        finally:
            await audit_writer.stop()

    app = FastAPI(
        title="sip-suite consent",
        version="0.1.0",
        description=(
            "Records the person's (or guardians') consent to a SIP, its withdrawal and cancellation, "
            "publishes the decision, answers 'may this organisation receive this information' "
            "(HTTP and RabbitMQ request/reply) and keeps the audit log of every answer and of every "
            "read of the person's data. Who may call what is decided from the verified token "
            "(x-sip-access on each operation)."
        ),
        lifespan=lifespan,
    )
    runtime.add_health_routes(app)
    app.state.consent_api = api.ConsentApi(
        runtime,
        clock,
        audit_writer,
        repository=SqlConsentRepository,
        records_of=records_of,
        base_url=settings.fhir_base_url,
        security=security_text(settings),
    )
    for router in api.ROUTERS:
        app.include_router(router)
    fhir_rest.install(app, versions=api.VERSIONS)
    app.add_exception_handler(Denied, _denied)  # type: ignore[arg-type]
    app.state.runtime = runtime
    app.state.pruner = retention.install(
        runtime, consent_kinds(runtime.inbox, runtime.outbox, settings), now=clock.now
    )
    app.state.clock = clock
    app.state.audit_writer = audit_writer
    return app


async def _denied(request: Request, exc: Denied) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="sip-suite"'} if exc.status == 401 else None
    if request.url.path.startswith("/fhir"):
        code = "login" if exc.status == 401 else "forbidden"
        return JSONResponse(
            operation_outcome(exc.detail, code=code), status_code=exc.status, headers=headers,
            media_type="application/fhir+json",
        )  # fmt: skip
    return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)


async def prepare_database(runtime: ServiceRuntime) -> None:
    """SQLite: bring a database created before the current schema up to date (additive). PostgreSQL is
    migrated by the runtime (``services/consent/migrations``)."""
    if runtime.engine.dialect.name == "postgresql":
        await runtime.prepare_database()
        return
    async with runtime.engine.begin() as conn:
        await conn.run_sync(upgrade_schema)
        await conn.run_sync(metadata.create_all)


def main() -> None:
    serve(SERVICE, ConsentSettings(), create_app)
