"""The runtime every service has: broker, database, outbox relay, health — started in one lifespan.

A service's ``app.py`` builds one :class:`ServiceRuntime` (its composition root), registers its
subscribers on ``runtime.broker`` and its HTTP routes on the FastAPI app, and hands the app to
uvicorn. Nothing connects at import time; ``lifespan`` connects, declares the topology, creates the
tables, starts consuming and starts the relay, and on shutdown stops consuming first (in-flight
messages finish or are returned to the queue), then drains the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from faststream.rabbit import RabbitBroker
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.contracts import Contract
from shared.messaging import declare_topology, make_broker, publish_raw
from shared.persistence import (
    OutboxRelay,
    claim_inbox,
    enqueue,
    inbox_table,
    make_engine,
    outbox_table,
)
from shared.settings import ServiceSettings
from shared.topology import PUBLICATIONS, contract_exchange

log = logging.getLogger("sip.runtime")


@dataclass
class ServiceRuntime:
    service: str
    settings: ServiceSettings
    metadata: sa.MetaData
    broker: RabbitBroker = field(init=False)
    engine: AsyncEngine = field(init=False)
    outbox: sa.Table = field(init=False)
    inbox: sa.Table = field(init=False)
    relay: OutboxRelay = field(init=False)
    background: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    broker_started: bool = False

    def __post_init__(self) -> None:
        self.outbox = outbox_table(self.metadata)
        self.inbox = inbox_table(self.metadata)
        self.broker = make_broker(
            service=self.service,
            amqp_url=self.settings.amqp_url,
            prefetch=self.settings.prefetch,
            max_attempts=self.settings.max_attempts,
        )
        self.engine = make_engine(self.settings.sqlalchemy_url(self.service))
        self.relay = OutboxRelay(self.engine, self.outbox, self._publish)
        self._document_publications()

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
        await publish_raw(self.broker, **kwargs)
        if self.settings.fault_duplicate_publish:  # fault injection: every message delivered twice
            await publish_raw(self.broker, **kwargs)

    # ---- unit of work -------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[UnitOfWork]:
        """One transaction: the effect, its inbox mark and its outgoing messages commit together."""
        async with self.engine.begin() as conn:
            uow = UnitOfWork(conn, self)
            yield uow
        if uow.enqueued:
            self.relay.wake()

    # ---- lifecycle ----------------------------------------------------------------------------
    async def start(self, *, consume: bool = True) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(self.metadata.create_all)
        await self.broker.connect()
        await declare_topology(self.broker, self.settings.retry_delay_seconds)
        if consume:
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
        await self.engine.dispose()

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
        @app.get("/healthz", tags=["operations"], summary="Liveness and dependencies")
        async def healthz() -> JSONResponse:
            checks = await self.readiness()
            ok = bool(checks.get("broker")) and bool(checks.get("database"))
            body = {"service": self.service, "status": "ok" if ok else "degraded", **checks}
            return JSONResponse(body, status_code=200 if ok else 503)

        @app.get("/readyz", tags=["operations"], summary="Ready to take traffic")
        async def readyz() -> JSONResponse:
            checks = await self.readiness()
            ok = bool(checks.get("broker")) and bool(checks.get("database"))
            return JSONResponse(
                {"service": self.service, "ready": ok, **checks}, status_code=200 if ok else 503
            )


def serve(service: str, settings: ServiceSettings, create_app: Callable[[Any], FastAPI]) -> None:
    """Run a service: JSON logs without personal data, then uvicorn on the configured address."""
    import uvicorn

    from shared.logs import configure_logging

    configure_logging(service, settings.log_level, settings.log_format)
    uvicorn.run(create_app(settings), host=settings.http_host, port=settings.http_port, log_config=None)


class UnitOfWork:
    def __init__(self, conn: AsyncConnection, runtime: ServiceRuntime) -> None:
        self.conn = conn
        self._rt = runtime
        self.enqueued = 0

    async def first_time(self, consumer: str, message_id: str) -> bool:
        """Claim ``message_id`` for ``consumer``; False means it was already processed."""
        return await claim_inbox(self.conn, self._rt.inbox, consumer, message_id)

    async def send(self, message: Contract) -> None:
        await enqueue(self.conn, self._rt.outbox, message)
        self.enqueued += 1
