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
  unavailable and work waits for it (:mod:`shared.dependencies`), else 1.

Service gauges are read from the database at scrape time, one query per collector
(:meth:`ServiceMetrics.add_db_collector`); :func:`case_gauges` and :func:`status_gauge` build the
planning and notify ones.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger("sip.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST
OUTCOMES = ("ok", "retried", "dead_lettered", "acked", "rejected")
HANDLER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

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
        info = Gauge("sip_service_info", "This service", ["service"], registry=r)
        info.labels(service=service).set(1)
        self._collectors: list[tuple[DbCollector, dict[str, Gauge]]] = []

    def dependency_changed(self, dependency: str, up: bool) -> None:
        self.dependency_up.labels(dependency=dependency).set(1 if up else 0)

    # ---- messaging ----------------------------------------------------------------------------
    def observe_consumed(self, queue: str, outcome: str, seconds: float) -> None:
        self.consumed.labels(queue=queue, outcome=outcome).inc()
        self.handler_seconds.labels(queue=queue).observe(seconds)

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


def _backlog_query(outbox: sa.Table) -> DbQuery:
    async def query(conn: AsyncConnection) -> Mapping[str, Rows]:
        pending = await conn.scalar(
            sa.select(sa.func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
        )
        return {"sip_outbox_backlog": [((), float(pending or 0))]}

    return query


def status_gauge(name: str, documentation: str, table: sa.Table, *columns: str) -> DbCollector:
    """Rows of ``table`` counted by ``columns`` (one GROUP BY), e.g. notifications by status."""
    cols = [table.c[c] for c in columns]

    async def query(conn: AsyncConnection) -> Mapping[str, Rows]:
        rows = (await conn.execute(sa.select(*cols, sa.func.count()).group_by(*cols))).all()
        return {name: [(tuple(str(v) for v in row[:-1]), float(row[-1])) for row in rows]}

    return DbCollector(name, (GaugeSpec(name, documentation, tuple(columns)),), query)


def case_gauges(
    cases: sa.Table,
    *,
    open_states: Collection[str],
    clock_states: Collection[str],
    state_column: str = "state",
    due_column: str = "invitation_due_at",
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> DbCollector:
    """Planning: open cases by state, and those whose invitation deadline has passed (one GROUP BY).

    A case is past its deadline when its invitation clock runs (``clock_states``: consent pending,
    invitation requested) and ``due_column`` is in the past — the LUS 3-day limit already broken.
    """
    state, due = cases.c[state_column], cases.c[due_column]
    open_name, breached_name = "sip_planning_open_cases", "sip_planning_deadline_breached_cases"

    async def query(conn: AsyncConnection) -> Mapping[str, Rows]:
        breached = sa.func.sum(sa.case((sa.and_(state.in_(list(clock_states)), due < now()), 1), else_=0))
        rows = (
            await conn.execute(
                sa.select(state, sa.func.count(), breached)
                .where(state.in_(list(open_states)))
                .group_by(state)
            )
        ).all()
        return {
            open_name: [((str(s),), float(n)) for s, n, _ in rows],
            breached_name: [((str(s),), float(b or 0)) for s, _, b in rows if s in clock_states],
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
        ),
        query,
    )
