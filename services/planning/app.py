"""Composition root of the planning service: the only place that reads settings and builds adapters."""

from __future__ import annotations

import contextlib
import functools
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncConnection

from services.planning import api, api_cases, api_fhir, handlers, messages, subscribers
from services.planning.adapters.deadline_store import SqlDeadlines
from services.planning.adapters.retention import planning_kinds
from services.planning.adapters.store import (
    SqlCaseRepository,
    case_from_snapshot,
    cases,
    metadata,
    upgrade_schema,
)
from services.planning.adapters.unit_of_work import SqlPlanningUnitOfWork
from services.planning.api_deps import PlanningApi
from services.planning.deadlines import DeadlinePolicy
from services.planning.domain import INVITATION_CLOCK_STATES, OPEN_STATES
from services.planning.handlers import PlanningDeps
from services.planning.intake import IntakeService, MLLPServer, intake_tables, parse_adt, parse_message_bundle
from services.planning.intake.service import ACCEPTED as INTAKE_ACCEPTED
from services.planning.intake.store import message_views_table
from services.planning.monitoring import intake_counter, intake_gauges
from services.planning.scheduler import scheduler_job
from services.planning.settings import PlanningSettings
from shared import fhir_rest, retention
from shared.clock import Clock, SystemClock
from shared.consent_gate import ConsentGateClient
from shared.contracts import Contract, HospitalStayEvent
from shared.dependencies import DATABASE, DependencyUnavailable, describe_unavailable
from shared.directory import Directory, load_directory
from shared.handler_table import handle_once
from shared.hospital import HospitalEvent
from shared.local_delivery import LocalDelivery
from shared.metrics import case_gauges
from shared.persistence import enqueue, utcnow
from shared.retired_queues import drain_retired
from shared.runtime import ServiceRuntime, serve
from shared.topology import retired_of

SERVICE = "planning"
log = logging.getLogger("sip.planning")


def create_app(
    settings: PlanningSettings | None = None,
    *,
    clock: Clock | None = None,
    directory: Directory | None = None,
    consent_gate: ConsentGateClient | None = None,
) -> FastAPI:
    """``consent_gate`` replaces the gate over RabbitMQ (tests)."""
    settings = settings or PlanningSettings()
    clock = clock or SystemClock()
    directory = directory or load_directory(settings.directory_path)
    runtime = ServiceRuntime(SERVICE, settings, metadata, migrations=Path(__file__).parent / "migrations")
    prepare_models = runtime.prepare_database

    async def prepare_database() -> None:
        """PostgreSQL: the migrations; SQLite: the models, then the columns newer than its tables."""
        await prepare_models()
        if runtime.engine.dialect.name != "postgresql":
            async with runtime.engine.begin() as conn:
                await conn.run_sync(upgrade_schema)

    runtime.prepare_database = prepare_database  # type: ignore[method-assign]
    runtime.metrics.add_db_collector(
        case_gauges(cases, open_states=OPEN_STATES, clock_states=INVITATION_CLOCK_STATES, now=clock.now)
    )
    runtime.metrics.add_db_collector(
        intake_gauges(intake_tables(metadata), directory, accepted=INTAKE_ACCEPTED, now=clock.now)
    )
    deps = PlanningDeps(clock, DeadlinePolicy.from_settings(settings), settings.web_base_url)
    message_handlers = subscribers.register(
        runtime, settings, directory, clock,
        uow=lambda: SqlPlanningUnitOfWork(runtime, deps), store=intake_tables(metadata),
    )  # fmt: skip
    runtime.background.append(
        scheduler_job(
            runtime,
            clock,
            settings.deadline_check_interval,
            deadlines=SqlDeadlines,
            react=own_reaction(runtime, deps),
        )
    )
    # the intake's stay events go from the outbox to their handler in-process (hospital.events is the
    # hospitals' exchange); a hospital's own stay events still come through the broker to the same one
    LocalDelivery(
        runtime, {HospitalStayEvent: message_handlers.stay_event}, max_attempts=settings.max_attempts
    ).install()
    runtime.background.append(retired_queues_job(runtime, settings, deps))
    pruner = retention.install(
        runtime,
        planning_kinds(intake_tables(metadata), runtime.inbox, runtime.outbox, settings),
        now=clock.now,
    )
    intake = build_intake(runtime, settings, observe=intake_counter(runtime.metrics, directory))
    mllp = (
        MLLPServer(
            intake.handle_hl7,
            settings.mllp_host,
            settings.mllp_port,
            max_frame=settings.mllp_max_frame_bytes,
            idle_timeout=settings.mllp_idle_timeout,
            ssl=server_tls(settings),
        )
        if settings.mllp_enabled
        else None
    )

    gates: list[ConsentGateClient] = [consent_gate] if consent_gate is not None else []

    def gate() -> ConsentGateClient:
        """The consent gate over RabbitMQ request/reply (made on first use, closed at shutdown)."""
        if not gates:
            gates.append(ConsentGateClient(amqp_url=settings.amqp_url, timeout=settings.consent_gate_timeout))
        return gates[0]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with runtime.lifespan(app):
            if mllp is not None:
                await mllp.start()  # a taken port fails the start-up, visibly
                log.info("MLLP listener started", extra={"port": mllp.port})
            try:
                yield
            finally:
                if mllp is not None:
                    await mllp.stop()  # stop taking messages before the broker and database go
                for g in gates:
                    await g.aclose()

    app = FastAPI(
        title="sip-suite planning",
        version="0.1.0",
        description="Opens SIP cases from hospital discharges, keeps their deadlines and serves each "
        "plan as FHIR R4 CarePlan.",
        lifespan=lifespan,
    )
    runtime.add_health_routes(app)
    app.state.planning_api = PlanningApi(
        runtime, settings, clock, intake, directory, gate,
        cases=SqlCaseRepository, deadlines=SqlDeadlines, case_from_snapshot=case_from_snapshot,
    )  # fmt: skip
    # in this order (the order the routes are matched and listed in the CapabilityStatement)
    for router in (api.router, api_cases.router, api_fhir.router):
        app.include_router(router)
    fhir_rest.install(app, versions=api_fhir.VERSIONS)
    app.include_router(
        messages.build_router(
            runtime,
            clock,
            intake_tables(metadata),
            message_views_table(metadata),
            reparser(settings),
            handlers.discharge_event,
        )
    )
    app.state.runtime = runtime
    app.state.pruner = pruner
    app.state.handle_stay_message = message_handlers.stay_event
    app.state.handle_discharge_message = message_handlers.discharge
    app.state.mllp = mllp
    app.state.intake = intake
    return app


def server_tls(settings: PlanningSettings) -> ssl.SSLContext | None:
    """MLLP over TLS with the service's certificate (``SIP_TLS_CERTFILE``/``SIP_TLS_KEYFILE``)."""
    if not settings.tls_certfile:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(settings.tls_certfile, settings.tls_keyfile or None)
    return ctx


def own_reaction(
    runtime: ServiceRuntime, deps: PlanningDeps
) -> Callable[[AsyncConnection, Contract], Awaitable[None]]:
    """planning's reaction to an event it raised itself (:data:`handlers.OWN_EVENT_HANDLERS`), on the
    connection and inside the transaction that raised it."""

    async def react(conn: AsyncConnection, event: Contract) -> None:
        await handlers.OWN_EVENT_HANDLERS[type(event)](SqlPlanningUnitOfWork(runtime, deps).join(conn), event)

    return react


def retired_queues_job(
    runtime: ServiceRuntime, settings: PlanningSettings, deps: PlanningDeps
) -> Callable[[], Coroutine[Any, Any, None]]:
    """Drain and delete the queues of planning's retired subscriptions (shared.retired_queues): what
    an earlier version left there is handled once, through the inbox under the old queue's name."""
    consumers = {s.contract: s.queue_name for s in retired_of("planning")}

    async def handle(message: Contract) -> None:
        contract = type(message)
        await handle_once(
            consumers[contract],
            handlers.OWN_EVENT_HANDLERS[contract],
            lambda: SqlPlanningUnitOfWork(runtime, deps),
            message,
        )

    return functools.partial(drain_retired, settings.amqp_url, "planning", handle)


def build_intake(
    runtime: ServiceRuntime,
    settings: PlanningSettings,
    observe: Callable[[str, str | None, str], None] | None = None,
) -> IntakeService:
    """HL7 v2 / FHIR intake: each accepted message is stored with its acknowledgement and, in the same
    transaction, one ``hospital.stay-event.v1`` per event in the outbox, marked local: after the
    commit the relay hands it to the stay-event handler in-process (:mod:`shared.local_delivery`),
    not to RabbitMQ. The ACK goes out after the commit."""

    async def on_event(conn: AsyncConnection, event: HospitalEvent, correlation_id: str) -> None:
        # the message's correlation id: its effect is written back to its row in the message store
        await enqueue(
            conn, runtime.outbox, HospitalStayEvent(event=event, correlation_id=correlation_id), local=True
        )

    service = IntakeService(
        runtime.engine,
        intake_tables(metadata),
        on_event=on_event,
        default_tz=ZoneInfo(settings.intake_timezone),
        fhir_base=f"{settings.public_base_url.rstrip('/')}/fhir",
        pass_correlation=True,
        observe=observe,
    )
    handle_hl7 = service.handle_hl7

    async def handle_and_wake(raw: bytes) -> bytes:
        """Store, then wake the relay. A message that could not be stored gets no ACK at all — the
        MLLP server closes the connection and the sender resends (never an AA for what is not
        stored); a database outage is reported to the dependency monitor (/readyz 503, one log
        line per outage) and raised as :class:`DependencyUnavailable` (no traceback per message)."""
        try:
            ack = await handle_hl7(raw)
        except Exception as exc:
            found = describe_unavailable(exc)
            if found is None:
                raise
            runtime.dependencies.down(*found)
            raise DependencyUnavailable(*found) from None
        runtime.dependencies.up(DATABASE)
        runtime.relay.wake()
        return ack

    service.handle_hl7 = handle_and_wake  # type: ignore[method-assign]
    return service


def reparser(settings: PlanningSettings) -> messages.Reparse:
    """Parse a refused message again for a replay (the parser or the sender's data may be fixed)."""
    tz = ZoneInfo(settings.intake_timezone)
    base = f"{settings.public_base_url.rstrip('/')}/fhir"

    def reparse(source: str, raw: bytes) -> tuple[bool, Sequence[HospitalEvent], str | None]:
        if source == "hl7v2":
            hl7 = parse_adt(raw, default_tz=tz)
            return hl7.ack_code == "AA", hl7.events, hl7.error.text if hl7.error else None
        fhir = parse_message_bundle(raw, default_tz=tz, now=utcnow(), fhir_base=base)
        reason = (
            None if fhir.accepted else "; ".join(i.get("diagnostics", "") for i in fhir.body.get("issue", []))
        )
        return fhir.accepted, fhir.events, reason

    return reparse


def main() -> None:
    serve(SERVICE, PlanningSettings(), create_app)
