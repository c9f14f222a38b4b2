"""Prometheus metrics every service has, served at ``GET /metrics`` (text exposition format).

Each :class:`ServiceRuntime` owns one :class:`ServiceMetrics` with its own ``CollectorRegistry``
(several runtimes can live in one process, as in the tests). Labels are queue names, routing keys,
outcomes, error class names, states and channels — bounded sets, never identifiers or personal data.

Messaging (filled in by the consume middleware and the outbox relay):

- ``sip_messages_consumed_total{queue, outcome}`` — outcome ``ok`` | ``retried`` |
  ``dead_lettered`` (| ``acked`` / ``rejected`` when a handler settles the message itself);
- ``sip_message_handler_duration_seconds{queue}`` — histogram of handling time per delivery;
- ``sip_dead_letters_total{queue, error_type}``;
- ``sip_messages_published_total{routing_key}`` / ``sip_publish_failures_total{routing_key}``;
- ``sip_outbox_backlog`` — unpublished outbox rows, counted at scrape time;
- ``sip_dependency_up{dependency}`` — 0 while the database, broker or SMTP server is found
  unavailable and work waits for it (:mod:`shared.dependencies`), else 1;
- ``sip_outbox_oldest_unpublished_age_seconds`` — age of the oldest unpublished outbox row (0 when
  none), at scrape time: an outbox that cannot publish grows it;
- ``sip_message_queue_wait_seconds{queue}`` — histogram of the time a message waited between its
  publish (the AMQP timestamp) and its first delivery to the handler, and
  ``sip_message_queue_last_wait_seconds{queue}`` — that wait for the last message consumed: the age
  the head of the queue had when it was taken (the AMQP timestamp has whole seconds: ±1 s; a message
  published without one is not observed).

HTTP (:class:`HttpMetricsMiddleware`): ``sip_http_requests_total{method, route, status}`` and
``sip_http_request_duration_seconds{method, route}`` — ``route`` is the route TEMPLATE
(``/cases/{case_id}``), never the raw path; a request no route matched is ``route="unmatched"``.

Process (prometheus-client's process collector): ``process_cpu_seconds_total``,
``process_resident_memory_bytes``, ``process_open_fds``, ``process_max_fds``, ``process_start_time_seconds``.

Service gauges are read from the database at scrape time, one query per collector
(:meth:`ServiceMetrics.add_db_collector`); :func:`case_gauges` and :func:`status_gauge` build the
planning and notify ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.routing import Match

log = logging.getLogger("sip.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST
OUTCOMES = ("ok", "retried", "dead_lettered", "acked", "rejected")
HANDLER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)
#: the ``route`` label of a request no route matched (a scanner's random paths stay one series)
UNMATCHED_ROUTE = "unmatched"

Rows = Iterable[tuple[Sequence[str], float]]
DbQuery = Callable[[AsyncConnection], Awaitable[Mapping[str, Rows]]]


@dataclass(frozen=True)
class GaugeSpec:
    name: str
    documentation: str
    labelnames: tuple[str, ...] = ()


@dataclass(frozen=True)
class DbCollector:
    """Gauges filled by one database query at scrape time: ``query`` maps gauge name → rows."""

    name: str
    gauges: tuple[GaugeSpec, ...]
    query: DbQuery


class ServiceMetrics:
    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.consumed = Counter(
            "sip_messages_consumed", "Deliveries handled, by queue and outcome", ["queue", "outcome"],
            registry=r,
        )  # fmt: skip
        self.handler_seconds = Histogram(
            "sip_message_handler_duration_seconds",
            "Time to handle one delivery (including its retry or dead-letter publish)",
            ["queue"],
            buckets=HANDLER_BUCKETS,
            registry=r,
        )
        self.dead_letters = Counter(
            "sip_dead_letters", "Messages sent to a dead-letter queue", ["queue", "error_type"], registry=r
        )
        self.published = Counter(
            "sip_messages_published", "Outbox messages published and confirmed", ["routing_key"], registry=r
        )
        self.publish_failures = Counter(
            "sip_publish_failures", "Outbox publishes that failed (the row is kept and retried)",
            ["routing_key"], registry=r,
        )  # fmt: skip
        self.outbox_backlog = Gauge("sip_outbox_backlog", "Outbox rows not yet published", registry=r)
        self.retention_pruned = Counter(
            "sip_retention_pruned", "Rows pruned (deleted, or a payload blanked) by retention, by kind",
            ["kind"], registry=r,
        )  # fmt: skip
        self.collect_errors = Counter(
            "sip_metrics_collect_errors", "Scrape-time database collectors that failed", ["collector"],
            registry=r,
        )  # fmt: skip
        self.dependency_up = Gauge(
            "sip_dependency_up",
            "1 while the dependency (database, broker, smtp) works, 0 while it is found unavailable "
            "and work waits for it",
            ["dependency"],
            registry=r,
        )
        self.outbox_oldest_age = Gauge(
            "sip_outbox_oldest_unpublished_age_seconds",
            "Age of the oldest outbox row not yet published (0 when none)",
            registry=r,
        )
        self.queue_wait = Histogram(
            "sip_message_queue_wait_seconds",
            "Time a message waited in its queue: from its publish to its first delivery to the handler",
            ["queue"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.queue_last_wait = Gauge(
            "sip_message_queue_last_wait_seconds",
            "Queue wait of the last message consumed from the queue (the age its head had when taken)",
            ["queue"],
            registry=r,
        )
        self.http_requests = Counter(
            "sip_http_requests", "HTTP requests by method, route template and status code",
            ["method", "route", "status"], registry=r,
        )  # fmt: skip
        self.http_seconds = Histogram(
            "sip_http_request_duration_seconds",
            "HTTP request latency by method and route template",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        ProcessCollector(registry=r)  # CPU, resident memory, open file descriptors of this process
        info = Gauge("sip_service_info", "This service", ["service"], registry=r)
        info.labels(service=service).set(1)
        self._collectors: list[tuple[DbCollector, dict[str, Gauge]]] = []

    def dependency_changed(self, dependency: str, up: bool) -> None:
        self.dependency_up.labels(dependency=dependency).set(1 if up else 0)

    # ---- messaging ----------------------------------------------------------------------------
    def observe_consumed(self, queue: str, outcome: str, seconds: float) -> None:
        self.consumed.labels(queue=queue, outcome=outcome).inc()
        self.handler_seconds.labels(queue=queue).observe(seconds)

    def observe_queue_wait(self, queue: str, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.queue_wait.labels(queue=queue).observe(seconds)
        self.queue_last_wait.labels(queue=queue).set(seconds)

    def counter(self, name: str, documentation: str, labelnames: Sequence[str]) -> Counter:
        """A service's own counter in this runtime's registry (e.g. notify's delivery attempts)."""
        return Counter(name, documentation, list(labelnames), registry=self.registry)

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Gauge:
        """A service's own gauge in this runtime's registry."""
        return Gauge(name, documentation, list(labelnames), registry=self.registry)

    # ---- scrape-time gauges -------------------------------------------------------------------
    def add_db_collector(self, collector: DbCollector) -> None:
        gauges = {
            g.name: Gauge(g.name, g.documentation, list(g.labelnames), registry=self.registry)
            for g in collector.gauges
        }
        self._collectors.append((collector, gauges))

    def add_db_gauge(self, name: str, documentation: str, labelnames: Sequence[str], query: DbQuery) -> None:
        """One gauge from one query (``query`` returns ``{name: rows}``)."""
        self.add_db_collector(DbCollector(name, (GaugeSpec(name, documentation, tuple(labelnames)),), query))

    async def refresh(self, engine: AsyncEngine, outbox: sa.Table) -> None:
        """Read the database-backed gauges (outbox backlog and the services' collectors)."""
        collectors: list[tuple[DbCollector, dict[str, Gauge]]] = [
            (DbCollector("outbox", (), _backlog_query(outbox)), {}),
            *self._collectors,
        ]
        try:
            async with engine.connect() as conn:
                for collector, gauges in collectors:
                    try:
                        result = await collector.query(conn)
                    except Exception as exc:
                        self.collect_errors.labels(collector=collector.name).inc()
                        log.warning(
                            "metrics collector failed",
                            extra={"collector": collector.name, "error_type": type(exc).__name__},
                        )
                        await conn.rollback()
                        continue
                    if collector.name == "outbox":
                        self.outbox_backlog.set(next(iter(result["sip_outbox_backlog"]))[1])
                        self.outbox_oldest_age.set(next(iter(result[OUTBOX_AGE]))[1])
                        continue
                    for name, gauge in gauges.items():
                        gauge.clear()
                        for labels, value in result.get(name, ()):
                            if labels:
                                gauge.labels(*labels).set(value)
                            else:
                                gauge.set(value)
        except Exception as exc:  # no database: the counters are still worth serving
            self.collect_errors.labels(collector="database").inc()
            log.warning("metrics: database unavailable", extra={"error_type": type(exc).__name__})

    def render(self) -> bytes:
        return generate_latest(self.registry)


OUTBOX_AGE = "sip_outbox_oldest_unpublished_age_seconds"


def _backlog_query(outbox: sa.Table, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> DbQuery:
    async def query(conn: AsyncConnection) -> Mapping[str, Rows]:
        pending, oldest = (
            await conn.execute(
                sa.select(sa.func.count(), sa.func.min(outbox.c.created_at)).where(
                    outbox.c.published_at.is_(None)
                )
            )
        ).one()
        age = 0.0
        if oldest is not None:
            if oldest.tzinfo is None:
                oldest = oldest.replace(tzinfo=UTC)
            age = max(0.0, (now() - oldest).total_seconds())
        return {"sip_outbox_backlog": [((), float(pending or 0))], OUTBOX_AGE: [((), age)]}

    return query


class HttpMetricsMiddleware:
    """Counts and times every HTTP request by method, route template and status (pure ASGI)."""

    def __init__(
        self, app: Any, metrics: ServiceMetrics, routes: Callable[[], Sequence[Any]] = tuple
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def sending(message: Any) -> None:
            if message.get("type") == "http.response.start":
                status["code"] = int(message.get("status", 500))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            method = str(scope.get("method", "GET"))
            method = method if method in _METHODS else "OTHER"
            route = route_template(scope, self.routes())
            self.metrics.http_requests.labels(method=method, route=route, status=str(status["code"])).inc()
            self.metrics.http_seconds.labels(method=method, route=route).observe(
                time.perf_counter() - started
            )


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_template(scope: Mapping[str, Any], routes: Sequence[Any] = ()) -> str:
    """The template of the route that matched (``/cases/{case_id}``), else :data:`UNMATCHED_ROUTE`.

    A request answered before routing (the bearer-token check's 401) is matched against ``routes``
    here, so it is counted under its route as well."""
    route = scope.get("route")
    if route is None:
        for candidate in routes:
            matches = getattr(candidate, "matches", None)
            if matches is not None and matches(dict(scope))[0] != Match.NONE:
                route = candidate
                break
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(template) if template else UNMATCHED_ROUTE


def status_gauge(name: str, documentation: str, table: sa.Table, *columns: str) -> DbCollector:
    """Rows of ``table`` counted by ``columns`` (one GROUP BY), e.g. notifications by status."""
    cols = [table.c[c] for c in columns]

    async def query(conn: AsyncConnection) -> Mapping[str, Rows]:
        rows = (await conn.execute(sa.select(*cols, sa.func.count()).group_by(*cols))).all()
        return {name: [(tuple(str(v) for v in row[:-1]), float(row[-1])) for row in rows]}

    return DbCollector(name, (GaugeSpec(name, documentation, tuple(columns)),), query)


DUE_WITHIN_HOURS = (4, 24)


def case_gauges(
    cases: sa.Table,
    *,
    open_states: Collection[str],
    clock_states: Collection[str],
    state_column: str = "state",
    due_column: str = "invitation_due_at",
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    due_within_hours: Sequence[int] = DUE_WITHIN_HOURS,
) -> DbCollector:
    """Planning: open cases by state, those whose invitation deadline has passed, and those whose
    deadline comes within N hours (one GROUP BY).

    A case is past its deadline when its invitation clock runs (``clock_states``: consent pending,
    invitation requested) and ``due_column`` is in the past — the LUS 3-day limit already broken.
    ``sip_planning_invitation_due_cases{within_hours="4"}`` counts the cases whose clock runs and whose
    deadline is in the next 4 hours (cumulative: the 24-hour count includes them) — still not met.
    """
    state, due = cases.c[state_column], cases.c[due_column]
    open_name, breached_name = "sip_planning_open_cases", "sip_planning_deadline_breached_cases"
    due_name = "sip_planning_invitation_due_cases"

    async def query(conn: AsyncConnection) -> Mapping[str, Rows]:
        at = now()
        running = state.in_(list(clock_states))
        breached = sa.func.sum(sa.case((sa.and_(running, due < at), 1), else_=0))
        soon = [
            sa.func.sum(sa.case((sa.and_(running, due >= at, due < at + timedelta(hours=h)), 1), else_=0))
            for h in due_within_hours
        ]
        rows = (
            await conn.execute(
                sa.select(state, sa.func.count(), breached, *soon)
                .where(state.in_(list(open_states)))
                .group_by(state)
            )
        ).all()
        return {
            open_name: [((str(r[0]),), float(r[1])) for r in rows],
            breached_name: [((str(r[0]),), float(r[2] or 0)) for r in rows if r[0] in clock_states],
            due_name: [
                ((str(h),), float(sum(int(r[3 + i] or 0) for r in rows)))
                for i, h in enumerate(due_within_hours)
            ],
        }

    return DbCollector(
        "planning_cases",
        (
            GaugeSpec(open_name, "Open SIP cases by state", ("state",)),
            GaugeSpec(
                breached_name,
                "Open cases whose invitation deadline has passed without an invitation, by state",
                ("state",),
            ),
            GaugeSpec(
                due_name,
                "Open cases whose invitation deadline comes within the next N hours and is not met yet "
                "(cumulative by within_hours)",
                ("within_hours",),
            ),
        ),
        query,
    )
