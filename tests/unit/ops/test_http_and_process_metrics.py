"""Process and HTTP metrics on every runtime's /metrics; the outbox's oldest unpublished age; queue wait."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa
from fastapi import FastAPI

from shared.contracts import RecordConsent
from shared.metrics import UNMATCHED_ROUTE
from shared.runtime import ServiceRuntime
from shared.settings import ServiceSettings
from tests.support.personnummer import ADULTS
from tests.unit.ops.test_metrics import runtime, samples


def app_with_routes(tmp_path: Path) -> tuple[FastAPI, ServiceRuntime]:
    rt = ServiceRuntime(
        "consent", ServiceSettings(data_dir=str(tmp_path), auth_required=False), sa.MetaData()
    )
    app = FastAPI()
    rt.add_health_routes(app)

    @app.get("/cases/{case_id}")
    async def case(case_id: str) -> dict[str, str]:
        return {"id": case_id}

    return app, rt


async def test_requests_are_counted_and_timed_by_route_template_never_the_raw_path(tmp_path: Path):
    app, rt = app_with_routes(tmp_path)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        for case_id in ("a1", "b2", ADULTS[0]):
            assert (await c.get(f"/cases/{case_id}")).status_code == 200
        assert (await c.get("/no/such/path/123")).status_code == 404
        assert (await c.get("/wp-admin/x.php")).status_code == 404
        text = (await c.get("/metrics")).text
    await rt.engine.dispose()
    got = samples(text)
    key = ("sip_http_requests_total", (("method", "GET"), ("route", "/cases/{case_id}"), ("status", "200")))
    assert got[key] == 3
    unmatched = (("method", "GET"), ("route", UNMATCHED_ROUTE), ("status", "404"))
    assert got[("sip_http_requests_total", unmatched)] == 2
    hist = ("sip_http_request_duration_seconds_count", (("method", "GET"), ("route", "/cases/{case_id}")))
    assert got[hist] == 3
    assert "a1" not in text and "b2" not in text and ADULTS[0] not in text and "wp-admin" not in text


async def test_the_process_collector_reports_cpu_memory_and_open_files(tmp_path: Path):
    rt = runtime(tmp_path)
    text = rt.metrics.render().decode()
    await rt.engine.dispose()
    got = samples(text)
    assert got[("process_resident_memory_bytes", ())] > 1_000_000
    assert got[("process_open_fds", ())] >= 3
    assert ("process_cpu_seconds_total", ()) in got


async def test_outbox_oldest_unpublished_age_is_read_at_scrape_time(tmp_path: Path):
    rt = runtime(tmp_path)
    app = FastAPI()
    rt.add_health_routes(app)
    await rt.prepare_database()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert samples((await c.get("/metrics")).text)[("sip_outbox_oldest_unpublished_age_seconds", ())] == 0
        async with rt.unit_of_work() as uow:
            await uow.send(
                RecordConsent(patient_identifier=ADULTS[1], decision="declined", recorded_by_hsa_id="SE-R")
            )
        async with rt.engine.begin() as conn:  # the row has waited ten minutes
            await conn.execute(
                rt.outbox.update().values(created_at=datetime.now(UTC) - timedelta(minutes=10))
            )
        age = samples((await c.get("/metrics")).text)[("sip_outbox_oldest_unpublished_age_seconds", ())]
        assert 599 <= age <= 660
        async with rt.engine.begin() as conn:
            await conn.execute(rt.outbox.update().values(published_at=datetime.now(UTC)))
        assert samples((await c.get("/metrics")).text)[("sip_outbox_oldest_unpublished_age_seconds", ())] == 0
    await rt.engine.dispose()


async def test_queue_wait_is_a_histogram_and_the_last_wait_a_gauge(tmp_path: Path):
    rt = runtime(tmp_path, metadata=sa.MetaData())
    rt.metrics.observe_queue_wait("planning.q", 2.0)
    rt.metrics.observe_queue_wait("planning.q", 700.0)
    rt.metrics.observe_queue_wait("planning.q", -1.0)  # clock skew: never negative
    got = samples(rt.metrics.render().decode())
    await rt.engine.dispose()
    assert got[("sip_message_queue_wait_seconds_count", (("queue", "planning.q"),))] == 3
    assert got[("sip_message_queue_last_wait_seconds", (("queue", "planning.q"),))] == 0


async def test_requests_refused_by_the_token_check_are_counted_under_their_route(tmp_path: Path):
    rt = ServiceRuntime(
        "consent",
        ServiceSettings(data_dir=str(tmp_path), jwt_hs256_secret="k" * 40, auth_required=True),
        sa.MetaData(),
    )
    app = FastAPI()

    @app.get("/cases/{case_id}")
    async def case(case_id: str) -> dict[str, str]:
        return {"id": case_id}

    rt.add_health_routes(app)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.get(f"/cases/{ADULTS[2]}")).status_code == 401
        text = (await c.get("/metrics")).text
    await rt.engine.dispose()
    got = samples(text)
    key = ("sip_http_requests_total", (("method", "GET"), ("route", "/cases/{case_id}"), ("status", "401")))
    assert got[key] == 1
    assert ADULTS[2] not in text
