"""GET /metrics on every runtime: Prometheus text, per-runtime registry, scrape-time database gauges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from shared.contracts import RecordConsent
from shared.metrics import CONTENT_TYPE, case_gauges, status_gauge
from shared.persistence import UTCDateTime
from shared.runtime import ServiceRuntime
from shared.settings import ServiceSettings
from tests.support.personnummer import ADULTS


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def runtime(tmp_path: Path, service: str = "consent", metadata: sa.MetaData | None = None) -> ServiceRuntime:
    return ServiceRuntime(service, ServiceSettings(data_dir=str(tmp_path)), metadata or sa.MetaData())


async def scrape(app: FastAPI) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        return await c.get("/metrics")


async def test_metrics_route_is_added_with_the_health_routes_and_serves_every_family(tmp_path: Path):
    rt = runtime(tmp_path)
    app = FastAPI()
    rt.add_health_routes(app)
    await rt.prepare_database()  # as the service does at start (Alembic on PostgreSQL)
    async with rt.unit_of_work() as uow:
        for i in range(3):
            await uow.send(
                RecordConsent(patient_identifier=ADULTS[i], decision="declined", recorded_by_hsa_id="SE-R")
            )
    rt.metrics.observe_consumed("consent.consent.record.v1", "ok", 0.01)
    rt.metrics.published.labels(routing_key="consent.declined.v1").inc(2)
    rt.metrics.publish_failures.labels(routing_key="consent.declined.v1").inc()
    r = await scrape(app)
    await rt.engine.dispose()
    assert r.status_code == 200 and r.headers["content-type"] == CONTENT_TYPE
    got = samples(r.text)
    assert got[("sip_outbox_backlog", ())] == 3
    assert (
        got[("sip_messages_consumed_total", (("outcome", "ok"), ("queue", "consent.consent.record.v1")))] == 1
    )
    assert got[("sip_message_handler_duration_seconds_count", (("queue", "consent.consent.record.v1"),))] == 1
    assert got[("sip_messages_published_total", (("routing_key", "consent.declined.v1"),))] == 2
    assert got[("sip_publish_failures_total", (("routing_key", "consent.declined.v1"),))] == 1
    assert got[("sip_service_info", (("service", "consent"),))] == 1
    for name in ("sip_dead_letters", "sip_metrics_collect_errors"):
        assert f"# TYPE {name}_total counter" in r.text or f"# TYPE {name} counter" in r.text
    assert ADULTS[0] not in r.text
    assert "/metrics" in app.openapi()["paths"]


async def test_two_runtimes_in_one_process_keep_their_own_counts(tmp_path: Path):
    a, b = runtime(tmp_path / "a"), runtime(tmp_path / "b")
    a.metrics.observe_consumed("q", "ok", 0.1)
    assert "sip_messages_consumed_total" in a.metrics.render().decode()
    assert 'sip_messages_consumed_total{outcome="ok",queue="q"}' not in b.metrics.render().decode()
    await a.engine.dispose()
    await b.engine.dispose()


async def test_service_gauges_are_read_at_scrape_time_with_one_group_by(tmp_path: Path):
    md = sa.MetaData()
    cases = sa.Table(
        "cases", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("state", sa.String(32)),
        sa.Column("invitation_due_at", UTCDateTime),
    )  # fmt: skip
    notifications = sa.Table(
        "notifications", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("status", sa.String(16)),
        sa.Column("channel", sa.String(16)),
    )  # fmt: skip
    rt = runtime(tmp_path, "planning", md)
    now = datetime.now(UTC)
    rt.metrics.add_db_collector(
        case_gauges(
            cases,
            open_states={"consent_pending", "invitation_requested", "invited", "suspended"},
            clock_states={"consent_pending", "invitation_requested"},
        )
    )
    rt.metrics.add_db_collector(
        status_gauge("sip_notify_notifications", "By status", notifications, "status", "channel")
    )
    app = FastAPI()
    rt.add_health_routes(app)
    async with rt.engine.begin() as conn:
        await conn.run_sync(md.create_all)
        past, future = now - timedelta(hours=1), now + timedelta(days=2)
        await conn.execute(
            cases.insert(),
            [
                {"state": "consent_pending", "invitation_due_at": past},
                {"state": "consent_pending", "invitation_due_at": future},
                {"state": "invitation_requested", "invitation_due_at": past},
                {"state": "invited", "invitation_due_at": past},  # invited: the clock stopped
                {"state": "suspended", "invitation_due_at": past},  # suspended: the clock is paused
                {"state": "closed", "invitation_due_at": past},  # not open
            ],
        )
        await conn.execute(
            notifications.insert(),
            [{"status": "sent", "channel": "email"}] * 3 + [{"status": "pending", "channel": "email"}],
        )
    got = samples((await scrape(app)).text)
    assert got[("sip_planning_open_cases", (("state", "consent_pending"),))] == 2
    assert got[("sip_planning_open_cases", (("state", "invited"),))] == 1
    assert ("sip_planning_open_cases", (("state", "closed"),)) not in got
    assert got[("sip_planning_deadline_breached_cases", (("state", "consent_pending"),))] == 1
    assert got[("sip_planning_deadline_breached_cases", (("state", "invitation_requested"),))] == 1
    assert ("sip_planning_deadline_breached_cases", (("state", "suspended"),)) not in got
    assert got[("sip_notify_notifications", (("channel", "email"), ("status", "sent")))] == 3

    # a state that empties disappears at the next scrape instead of keeping its old value
    async with rt.engine.begin() as conn:
        await conn.execute(cases.update().where(cases.c.state == "invited").values(state="closed"))
    got = samples((await scrape(app)).text)
    assert ("sip_planning_open_cases", (("state", "invited"),)) not in got
    await rt.engine.dispose()


async def test_a_failing_collector_is_counted_and_the_rest_still_served(tmp_path: Path):
    rt = runtime(tmp_path)

    async def broken(conn):
        raise RuntimeError("boom")

    rt.metrics.add_db_gauge("sip_broken", "Broken", (), broken)
    app = FastAPI()
    rt.add_health_routes(app)
    await rt.prepare_database()  # as the service does at start (Alembic on PostgreSQL)
    r = await scrape(app)
    await rt.engine.dispose()
    got = samples(r.text)
    assert r.status_code == 200
    assert got[("sip_metrics_collect_errors_total", (("collector", "sip_broken"),))] == 1
    assert got[("sip_outbox_backlog", ())] == 0
