"""The runtime every service has: broker, database, outbox relay, health, metrics, tracing — one lifespan.

A service's ``app.py`` builds one :class:`ServiceRuntime` (its composition root), registers its
subscribers on ``runtime.broker`` and its HTTP routes on the FastAPI app, and hands the app to
uvicorn. Nothing connects at import time; ``lifespan`` connects, declares the service's own part of
the topology (``shared.messaging.declare_service_topology``), creates the tables, starts consuming
and starts the relay, and on shutdown stops consuming first (in-flight messages finish or are
returned to the queue), then drains the relay.

Observability comes with it, so no service wires it: :meth:`ServiceRuntime.add_health_routes` (which
every ``app.py`` calls) also serves ``GET /metrics`` (Prometheus) and puts an HTTP span around
every request; the consume middleware counts, times and traces every delivery; the outbox relay
counts publishes and failures and sends each row's ``traceparent``. A service adds its own gauges
with ``runtime.metrics.add_db_collector(...)`` (see ``shared.metrics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from faststream.rabbit import RabbitBroker
from faststream.rabbit.message import RabbitMessage
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.auth import install_auth
from shared.dependencies import BROKER, DATABASE, DependencyMonitor
from shared.directory import load_directory
from shared.messaging import (
    ConsumeObservation,
    declare_service_topology,
    make_broker,
    original_routing_key,
    publish_raw,
    total_attempts,
)
from shared.metrics import CONTENT_TYPE, HttpMetricsMiddleware, ServiceMetrics
from shared.migrations import has_migrations, upgrade_to_head
from shared.persistence import (
    OutboxRelay,
    check_disk_room,
    inbox_table,
    make_engine,
    outbox_table,
    sqlite_directory,
    upgrade_inbox,
    upgrade_outbox,
)
from shared.settings import ServiceSettings
from shared.sql_unit_of_work import SqlUnitOfWork
from shared.topology import PUBLICATIONS, contract_exchange
from shared.tracing import Tracing, TracingMiddleware, set_error

log = logging.getLogger("sip.runtime")


@dataclass
class ServiceRuntime:
    service: str
    settings: ServiceSettings
    metadata: sa.MetaData
    #: the service's Alembic migrations (services/<service>/migrations); None: models only
    migrations: Path | None = None
    broker: RabbitBroker = field(init=False)
    engine: AsyncEngine = field(init=False)
    outbox: sa.Table = field(init=False)
    inbox: sa.Table = field(init=False)
    relay: OutboxRelay = field(init=False)
    metrics: ServiceMetrics = field(init=False)
    tracing: Tracing = field(init=False)
    #: database / broker / SMTP availability: readiness, ``sip_dependency_up``, the consumers' hold
    dependencies: DependencyMonitor = field(init=False)
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    broker_started: bool = False

    def __post_init__(self) -> None:
        self.outbox = outbox_table(self.metadata)
        self.inbox = inbox_table(self.metadata)
        self.metrics = ServiceMetrics(self.service)
        self.dependencies = DependencyMonitor(
            self.service,
            backoff_initial=self.settings.dependency_backoff_initial_seconds,
            backoff_max=self.settings.dependency_backoff_max_seconds,
            on_change=self.metrics.dependency_changed,
        )
        self.tracing = Tracing(
            self.service,
            exporter=self.settings.otel_exporter,
            file=self.settings.span_file(self.service),
        )
        self.broker = make_broker(
            service=self.service,
            amqp_url=self.settings.amqp_url,
            prefetch=self.settings.prefetch,
            max_attempts=self.settings.max_attempts,
            observer=_ConsumeObserver(self.metrics, self.tracing),
            dependencies=self.dependencies,
            hold_max_seconds=self.settings.dependency_hold_max_seconds,
        )
        self.engine = make_engine(
            self.settings.sqlalchemy_url(self.service),
            sqlite_driver=self.settings.sqlite_driver,
            pg_pool_size=self.settings.database_pool_size,
        )
        self.relay = OutboxRelay(self.engine, self.outbox, self._publish, dependencies=self.dependencies)
        self.dependencies.add_probe(DATABASE, self._probe_database)
        self.dependencies.add_probe(BROKER, self._probe_broker)
        self._document_publications()

    async def _probe_database(self) -> None:
        """A transaction (on SQLite it takes the write lock: BEGIN IMMEDIATE) with one statement, and on
        SQLite a write of a few pages beside the database file (a full disk fails it)."""
        async with self.engine.begin() as conn:
            await conn.execute(sa.text("SELECT 1"))
        directory = sqlite_directory(self.engine)
        if directory is not None:  # a full disk lets that transaction through: try a real write
            await asyncio.to_thread(check_disk_room, directory)

    async def _probe_broker(self) -> None:
        if not await self.broker.ping(timeout=2.0):
            raise ConnectionError("broker did not answer")

    def _document_publications(self) -> None:
        """Describe what this service publishes (via its outbox) in its AsyncAPI document."""
        for contract in PUBLICATIONS.get(self.service, ()):
            self.broker.publisher(
                exchange=contract_exchange(contract),
                routing_key=contract.routing_key,
                persist=True,
                schema=contract,
                title=f"{self.service}:{contract.routing_key}",
                description=(contract.__doc__ or "").strip() or None,
            )

    async def _publish(self, **kwargs: Any) -> None:
        routing_key = str(kwargs.get("routing_key", ""))
        try:
            await publish_raw(self.broker, **kwargs)
        except Exception:
            self.metrics.publish_failures.labels(routing_key=routing_key).inc()
            raise
        self.metrics.published.labels(routing_key=routing_key).inc()
        if self.settings.fault_duplicate_publish:  # fault injection: every message delivered twice
            await publish_raw(self.broker, **kwargs)

    # ---- unit of work -------------------------------------------------------------------------
    def unit_of_work(self) -> SqlUnitOfWork:
        """One transaction: the effect, its inbox mark and its outgoing messages commit together
        (``async with runtime.unit_of_work() as uow``); the relay is woken after a commit that sent."""
        return SqlUnitOfWork(self.engine, inbox=self.inbox, outbox=self.outbox, after_send=self.relay.wake)

    # ---- lifecycle ----------------------------------------------------------------------------
    async def prepare_database(self) -> None:
        """PostgreSQL: upgrade to the newest migration (``services/<service>/migrations``, advisory lock).
        SQLite (the embedded default): create what is missing from the models."""
        async with self.engine.begin() as conn:
            if (
                conn.dialect.name == "postgresql"
                and self.migrations is not None
                and has_migrations(self.migrations)
            ):
                await conn.run_sync(upgrade_to_head, self.migrations)
            else:
                await conn.run_sync(self.metadata.create_all)
                await conn.run_sync(upgrade_outbox, self.outbox)
                await conn.run_sync(upgrade_inbox, self.inbox)

    async def start(self, *, consume: bool = True) -> None:
        async with _slow_start_warnings(self.service) as step:
            step("database")
            await self.prepare_database()
            step("broker connection")
            await self.broker.connect()
            step("broker topology")
            await declare_service_topology(self.broker, self.service, self.settings.retry_delay_seconds)
            if consume:
                step("broker consumers")
                await self.broker.start()
        self.broker_started = True
        self.relay.start()
        for job in self.background:
            self._tasks.append(asyncio.create_task(job(), name=f"{self.service}-bg"))
        log.info("service started", extra={"service": self.service})

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        await self.broker.stop()  # stops consumers first; graceful_timeout for in-flight work
        await self.relay.stop()
        self.broker_started = False
        await self.dependencies.close()
        await self.engine.dispose()
        self.tracing.flush()  # export the spans still pending

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    # ---- health -------------------------------------------------------------------------------
    async def readiness(self) -> dict[str, Any]:
        checks: dict[str, Any] = {}
        try:
            checks["broker"] = bool(await self.broker.ping(timeout=2.0))
        except Exception:
            checks["broker"] = False
        try:
            async with self.engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
            checks["database"] = True
        except Exception:
            checks["database"] = False
        try:
            async with self.engine.connect() as conn:
                pending = await conn.scalar(
                    sa.select(sa.func.count())
                    .select_from(self.outbox)
                    .where(self.outbox.c.published_at.is_(None))
                )
            checks["outbox_pending"] = int(pending or 0)
        except Exception:
            checks["outbox_pending"] = None
        return checks

    def add_health_routes(self, app: FastAPI) -> None:
        """``/healthz``, ``/readyz`` and ``/metrics``, an HTTP span around every other request, and the
        bearer-token check in front of everything but the open paths (:mod:`shared.auth`)."""
        self.add_observability(app)
        known: Callable[[str], bool] | None = None
        if getattr(self.settings, "auth_required", True):
            directory = load_directory(self.settings.directory_path)
            known = lambda hsa_id: directory.get(hsa_id) is not None  # noqa: E731
        install_auth(app, self.settings, known_organisation=known)
        install_value_error_handlers(app)
        install_dependency_handlers(app, self.dependencies)
        # outermost: requests the bearer-token check refuses are counted too, under their route
        app.add_middleware(HttpMetricsMiddleware, metrics=self.metrics, routes=lambda: app.router.routes)

        @app.get("/healthz", tags=["operations"], summary="Liveness (the dependencies are /readyz)")
        async def healthz() -> JSONResponse:
            """200 while the process serves: a database or broker outage is ridden out (see /readyz),
            and restarting the process would not bring the dependency back."""
            checks = await self.readiness()
            ok = bool(checks.get("broker")) and bool(checks.get("database")) and self.dependencies.ready
            body = {"service": self.service, "status": "ok" if ok else "degraded", **checks}
            if not self.dependencies.ready:
                body["unavailable"] = self.dependencies.unavailable()
            return JSONResponse(body, status_code=200)

        @app.get(
            "/readyz",
            tags=["operations"],
            summary="Ready to take traffic",
            responses={503: {"description": "A dependency is unavailable (named, with the reason)"}},
        )
        async def readyz() -> JSONResponse:
            """503 while the database or broker does not answer, or while work is held because a
            dependency (database, broker, SMTP) was found unavailable; ``unavailable`` says which,
            why and for how long."""
            checks = await self.readiness()
            ok = bool(checks.get("broker")) and bool(checks.get("database")) and self.dependencies.ready
            body = {"service": self.service, "ready": ok, **checks}
            if not self.dependencies.ready:
                body["unavailable"] = self.dependencies.unavailable()
            return JSONResponse(body, status_code=200 if ok else 503)

    def add_observability(self, app: FastAPI) -> None:
        """``GET /metrics`` and the HTTP tracing middleware (called by :meth:`add_health_routes`)."""
        if getattr(app.state, "sip_observability", False):
            return
        app.state.sip_observability = True
        app.add_middleware(TracingMiddleware, tracing=self.tracing)

        @app.get(
            "/metrics",
            tags=["operations"],
            summary="Prometheus metrics",
            response_class=Response,
            responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Text exposition format"}},
        )
        async def metrics() -> Response:
            await self.metrics.refresh(self.engine, self.outbox)
            return Response(self.metrics.render(), media_type=CONTENT_TYPE)


START_WARNING_SECONDS = 10.0


@contextlib.asynccontextmanager
async def _slow_start_warnings(
    service: str, every: float = START_WARNING_SECONDS
) -> AsyncIterator[Callable[[str], None]]:
    """While a start-up step takes long, a WARNING every ``every`` seconds: which step (database,
    broker connection, topology, consumers), how long so far, and where it waits (the await chain,
    code locations only) — a service that does not come up says why instead of staying silent."""
    task = asyncio.current_task()
    step: dict[str, Any] = {"name": "", "since": time.monotonic()}
    started = time.monotonic()

    def now(name: str) -> None:
        step.update(name=name, since=time.monotonic())

    async def watch() -> None:
        while True:
            await asyncio.sleep(every)
            log.warning(
                "start-up still waiting",
                extra={
                    "service": service,
                    "step": step["name"],
                    "step_seconds": round(time.monotonic() - float(step["since"]), 1),
                    "startup_seconds": round(time.monotonic() - started, 1),
                    "awaiting": " > ".join(_await_chain(task)) if task is not None else "",
                },
            )

    watcher = asyncio.create_task(watch(), name=f"{service}-start-watch")
    try:
        yield now
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


def _await_chain(task: asyncio.Task[Any], innermost: int = 12) -> list[str]:
    """``file:line function`` of the ``innermost`` coroutines ``task`` is suspended in, outermost
    first (the server and middleware frames above them say nothing about the wait)."""
    chain: list[str] = []
    coro: Any = task.get_coro()
    while coro is not None and len(chain) < 500:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            chain.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return chain[-innermost:]


class _ConsumeObserver:
    """Counts, times and traces each delivery for the consume middleware."""

    def __init__(self, metrics: ServiceMetrics, tracing: Tracing) -> None:
        self.metrics = metrics
        self.tracing = tracing

    @contextlib.contextmanager
    def consuming(self, queue: str, msg: RabbitMessage) -> Iterator[ConsumeObservation]:
        seen = ConsumeObservation()
        started = time.perf_counter()
        headers = msg.raw_message.headers or {}
        if total_attempts(msg) <= 1:  # a retry's wait includes its deliberate delay: not a queue wait
            published = _published_at(msg)
            if published is not None:
                self.metrics.observe_queue_wait(queue, (datetime.now(UTC) - published).total_seconds())
        with self.tracing.consume_span(
            queue=queue,
            routing_key=original_routing_key(msg),
            message_id=msg.message_id,
            correlation_id=_correlation_id(msg),
            headers=headers,
            attempt=total_attempts(msg),
        ) as span:
            escaped: BaseException | None = None
            try:
                yield seen
            except BaseException as exc:
                escaped = exc
                raise
            finally:
                self.metrics.observe_consumed(queue, seen.outcome, time.perf_counter() - started)
                span.set_attribute("sip.outcome", seen.outcome)
                error = seen.error or (escaped if seen.outcome == "error" else None)
                if seen.outcome == "dead_lettered":
                    self.metrics.dead_letters.labels(queue=queue, error_type=type(seen.error).__name__).inc()
                if error is not None:
                    set_error(span, error)


def _published_at(msg: RabbitMessage) -> datetime | None:
    """The AMQP ``timestamp`` property (set by every publish of the suite), as an aware UTC time."""
    stamp = getattr(msg.raw_message, "timestamp", None)
    if not isinstance(stamp, datetime):
        return None
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


def _correlation_id(msg: RabbitMessage) -> str | None:
    """The sender's correlation id: the AMQP property, else the contract's field in the body.

    (faststream invents a random one when the property is missing; a hospital integration may
    publish without it but with ``correlation_id`` in the JSON.)
    """
    if msg.raw_message.correlation_id:
        return str(msg.raw_message.correlation_id)
    body = msg.body
    if isinstance(body, bytes | bytearray) and len(body) <= 65536 and body.lstrip()[:1] == b"{":
        try:
            value = json.loads(body).get("correlation_id")
        except (ValueError, AttributeError):
            return None
        return str(value) if isinstance(value, str | int) and value != "" else None
    return None


def serve(service: str, settings: ServiceSettings, create_app: Callable[[Any], FastAPI]) -> None:
    """Run a service: JSON logs without personal data, then uvicorn on the configured address."""
    import uvicorn

    from shared.logs import configure_logging

    configure_logging(service, settings.log_level, settings.log_format)
    tls: dict[str, Any] = {}
    if settings.tls_certfile:  # HTTPS: the certificate chain and its key (PEM)
        tls = {"ssl_certfile": settings.tls_certfile, "ssl_keyfile": settings.tls_keyfile or None}
    uvicorn.run(
        create_app(settings), host=settings.http_host, port=settings.http_port, log_config=None, **tls
    )


def install_dependency_handlers(app: FastAPI, dependencies: DependencyMonitor) -> None:
    """A request that met an unavailable database (or broker) is answered 503 with ``Retry-After``
    (an OperationOutcome under /fhir) instead of a 500: nothing is wrong with the request, the caller
    may send it again. The outage is reported to the monitor (one log line, /readyz). Any other
    database error stays what it was."""
    import sqlalchemy.exc as sa_exc

    from shared.fhir import outcome_response

    async def unavailable(request: Any, exc: Exception) -> Response:
        dependency = dependencies.report(exc)
        if dependency is None:
            raise exc
        reason = f"the service's {dependency} is unavailable; try again later"
        retry = str(max(1, round(dependencies.backoff(dependency))))
        if request.url.path.startswith("/fhir"):
            answer = outcome_response(503, reason, "transient")
        else:
            answer = JSONResponse({"detail": reason}, status_code=503)
        answer.headers["Retry-After"] = retry
        return answer

    for exc_type in (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, ConnectionError):
        app.add_exception_handler(exc_type, unavailable)


def install_value_error_handlers(app: FastAPI) -> None:
    """A value the code or the database cannot hold (a number or time out of range, nesting too deep)
    is the sender's error: 400 saying so (an OperationOutcome under /fhir), never a 500. Each input
    path refuses such values itself with the field's name; this is the net behind them."""
    from sqlalchemy.exc import DataError

    from shared.fhir import outcome_response

    async def out_of_range(request: Any, exc: Exception) -> Response:
        log.info("request refused: a value out of range", extra={"error": type(exc).__name__})
        reason = "a value in the request is out of the range this service can hold"
        if request.url.path.startswith("/fhir"):
            return outcome_response(400, reason, "invalid")
        return JSONResponse({"detail": reason}, status_code=400)

    for exc_type in (OverflowError, RecursionError, DataError):
        app.add_exception_handler(exc_type, out_of_range)
