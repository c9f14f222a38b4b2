"""Tracing rules: one trace per correlation id, traceparent through the outbox, no personal data."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from shared.contracts import RecordConsent
from shared.logs import ContextFilter, JsonFormatter, MaskingFilter, bind_correlation_id
from shared.persistence import enqueue, make_engine, outbox_table, sqlite_url
from shared.settings import ServiceSettings
from shared.tracing import (
    Tracing,
    TracingMiddleware,
    extract_span_context,
    format_traceparent,
    trace_id_for,
)
from tests.support.personnummer import ADULTS


def spans(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def tracing(tmp_path: Path) -> Tracing:
    return Tracing("planning", exporter="file", file=str(tmp_path / "spans-{service}.jsonl"))


def test_trace_id_is_the_correlation_id_when_it_is_a_uuid_and_a_hash_otherwise():
    cid = uuid.uuid4()
    assert trace_id_for(str(cid)) == cid.int
    assert trace_id_for("e2e-1234") == trace_id_for("e2e-1234") != trace_id_for("e2e-1235")
    assert trace_id_for(None) is None and trace_id_for("") is None
    # a personnummer used as correlation id is masked before hashing: not recoverable by brute force
    assert trace_id_for(ADULTS[0]) == trace_id_for(ADULTS[1])


def test_traceparent_is_read_from_str_or_bytes_headers():
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    for value in (tp, tp.encode()):
        ctx = extract_span_context({"traceparent": value})
        assert ctx is not None and format_traceparent(ctx) == tp
    assert extract_span_context({}) is None
    assert extract_span_context({"traceparent": "garbage"}) is None


def test_consume_then_outbox_write_chain_parent_and_child(tracing: Tracing, tmp_path: Path):
    cid = "e2e-chain"
    with tracing.consume_span(
        queue="planning.hospital.discharge.v1", routing_key="hospital.discharge.v1",
        message_id="m-1", correlation_id=cid, headers={}, attempt=1,
    ) as consume:  # fmt: skip
        consume_ctx = consume.get_span_context()
        tp = tracing.create_span_traceparent(
            exchange="consent.commands",
            routing_key="consent.request.v1",
            message_id="m-2",
            correlation_id=cid,
        )
    assert consume_ctx.trace_id == trace_id_for(cid)  # no traceparent: the correlation id's trace
    parent = extract_span_context({"traceparent": tp})
    assert parent is not None and parent.trace_id == consume_ctx.trace_id
    # the next service continues it from the header
    with tracing.consume_span(
        queue="consent.consent.request.v1", routing_key="consent.request.v1", message_id="m-2",
        correlation_id=cid, headers={"traceparent": tp}, attempt=1,
    ) as next_consume:  # fmt: skip
        assert next_consume.get_span_context().trace_id == consume_ctx.trace_id
    tracing.flush()
    out = {s["name"]: s for s in spans(tmp_path / "spans-planning.jsonl")}
    create = out["create consent.request.v1"]
    assert create["kind"] == "PRODUCER" and create["parent_span_id"] == f"{consume_ctx.span_id:016x}"
    assert out["process consent.consent.request.v1"]["parent_span_id"] == create["span_id"]
    assert out["process planning.hospital.discharge.v1"]["parent_span_id"] is None


def test_an_http_request_writes_its_message_into_the_correlation_trace_with_a_link(
    tracing: Tracing, tmp_path
):
    request = tracing.start_span("POST /consents", kind=SpanKind.SERVER, parent=None)
    with trace.use_span(request, end_on_exit=True):
        tp = tracing.create_span_traceparent(
            exchange="consent.events", routing_key="consent.granted.v1", message_id="m", correlation_id="c-1"
        )
    ctx = extract_span_context({"traceparent": tp})
    assert ctx is not None and ctx.trace_id == trace_id_for("c-1") != request.get_span_context().trace_id
    tracing.flush()
    create = next(s for s in spans(tmp_path / "spans-planning.jsonl") if s["name"].startswith("create"))
    assert create["links"] == [
        {"trace_id": f"{request.get_span_context().trace_id:032x}", "span_id": create["links"][0]["span_id"]}
    ]


def test_a_foreign_traceparent_becomes_a_link_not_the_parent(tracing: Tracing):
    foreign = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with tracing.consume_span(
        queue="q", routing_key="rk", message_id="m", correlation_id="c-2", headers={"traceparent": foreign},
        attempt=1,
    ) as span:  # fmt: skip
        assert span.get_span_context().trace_id == trace_id_for("c-2")
        assert [f"{link.context.trace_id:032x}" for link in span.links] == [
            "0af7651916cd43dd8448eb211c80319c"
        ]
    # without a correlation id plain W3C propagation applies
    with tracing.consume_span(
        queue="q", routing_key="rk", message_id="m", correlation_id=None, headers={"traceparent": foreign},
        attempt=1,
    ) as span:  # fmt: skip
        assert f"{span.get_span_context().trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"


def test_no_personal_data_in_span_attributes(tracing: Tracing, tmp_path: Path):
    pnr = ADULTS[2]
    with tracing.consume_span(
        queue="q", routing_key="rk", message_id=pnr, correlation_id=f"x-{pnr}", headers={}, attempt=1
    ):
        tracing.create_span_traceparent(exchange="e", routing_key="rk", message_id=pnr, correlation_id=pnr)
    tracing.flush()
    text = (tmp_path / "spans-planning.jsonl").read_text()
    assert text.count("\n") == 2
    assert pnr not in text and pnr[2:] not in text


async def test_enqueue_stores_the_traceparent_of_the_writing_transaction(tracing: Tracing, tmp_path: Path):
    engine = make_engine(sqlite_url(tmp_path / "t.db"))
    outbox = outbox_table(sa.MetaData())
    async with engine.begin() as conn:
        await conn.run_sync(outbox.metadata.create_all)
    msg = RecordConsent(
        patient_identifier=ADULTS[0], decision="granted", recorded_by_hsa_id="SE-R", correlation_id="c-3"
    )
    with tracing.consume_span(
        queue="q", routing_key="rk", message_id="m", correlation_id="c-3", headers={}, attempt=1
    ) as span:
        async with engine.begin() as conn:
            await enqueue(conn, outbox, msg)
    async with engine.connect() as conn:
        tp = await conn.scalar(sa.select(outbox.c.traceparent))
    await engine.dispose()
    ctx = extract_span_context({"traceparent": tp})
    assert ctx is not None and ctx.trace_id == span.get_span_context().trace_id == trace_id_for("c-3")


async def test_outbox_table_of_an_older_database_gets_the_traceparent_column(tmp_path: Path):
    from shared.persistence import upgrade_outbox

    engine = make_engine(sqlite_url(tmp_path / "old.db"))
    async with engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE outbox (id INTEGER PRIMARY KEY, message_id VARCHAR(36))"))
        outbox = outbox_table(sa.MetaData())
        await conn.run_sync(upgrade_outbox, outbox)
        await conn.run_sync(upgrade_outbox, outbox)  # idempotent
        cols = await conn.run_sync(lambda c: [x["name"] for x in sa.inspect(c).get_columns("outbox")])
    await engine.dispose()
    assert "traceparent" in cols


async def test_http_span_uses_the_route_template_never_the_path(tracing: Tracing, tmp_path: Path):
    app = FastAPI()
    app.add_middleware(TracingMiddleware, tracing=tracing)

    @app.get("/persons/{pid}")
    async def person(pid: str) -> dict:
        return {"ok": True}

    pnr = ADULTS[4]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (
            await c.get(f"/persons/{pnr}?q={pnr}", headers={"x-correlation-id": "c-9"})
        ).status_code == 200
        assert (await c.get("/healthz")).status_code == 404  # probes are not traced
    tracing.flush()
    (span,) = spans(tmp_path / "spans-planning.jsonl")
    assert span["name"] == "GET /persons/{pid}" and span["kind"] == "SERVER"
    assert span["attributes"]["http.response.status_code"] == 200
    assert pnr not in json.dumps(span) and pnr[2:] not in json.dumps(span)


def test_log_lines_carry_correlation_id_and_trace_id(tracing: Tracing):
    records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Capture()
    handler.addFilter(MaskingFilter())
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter("planning"))
    logger = logging.getLogger("sip.test.context")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with tracing.consume_span(
            queue="q", routing_key="rk", message_id="m", correlation_id="c-log", headers={}, attempt=1
        ) as span:
            logger.info("handled %s", ADULTS[5])
        with bind_correlation_id("c-http"):
            logger.info("no span here")
        logger.info("outside")
    finally:
        logger.removeHandler(handler)
    inside, http, outside = (json.loads(r) for r in records)
    assert inside["correlation_id"] == "c-log"
    assert inside["trace_id"] == f"{span.get_span_context().trace_id:032x}" == f"{trace_id_for('c-log'):032x}"
    assert ADULTS[5] not in records[0]
    assert http["correlation_id"] == "c-http" and "trace_id" not in http
    assert "correlation_id" not in outside and "trace_id" not in outside


def test_exporter_setting_is_validated():
    assert ServiceSettings(otel_exporter="FILE").otel_exporter == "file"
    with pytest.raises(ValueError):
        ServiceSettings(otel_exporter="jaeger")
    s = ServiceSettings(data_dir="/d")
    assert s.span_file("notify") == "/d/spans-notify.jsonl"
    assert ServiceSettings(otel_file="/x/{service}.jsonl").span_file("consent") == "/x/consent.jsonl"


@pytest.mark.parametrize("exporter", ["file", "none"])
def test_without_an_exporter_spans_carry_the_same_trace_ids_and_are_not_recorded(exporter, tmp_path: Path):
    """``SIP_OTEL_EXPORTER=none`` (the default): spans are only ids — the same traceparents and log
    trace ids as with an exporter, nothing recorded (and far cheaper per span)."""
    t = Tracing("planning", exporter=exporter, file=str(tmp_path / "spans-{service}.jsonl"))
    cid = str(uuid.uuid4())
    other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"  # an external system's trace
    with t.consume_span(
        queue="planning.hospital.discharge.v1", routing_key="hospital.discharge.v1",
        message_id="m-1", correlation_id=cid, headers={"traceparent": other}, attempt=1,
    ) as first:  # fmt: skip
        assert trace.get_current_span() is first
        tp = t.create_span_traceparent(
            exchange="consent.commands",
            routing_key="consent.request.v1",
            message_id="m-2",
            correlation_id=cid,
        )
    with t.consume_span(
        queue="consent.consent.request.v1", routing_key="consent.request.v1", message_id="m-2",
        correlation_id=cid, headers={"traceparent": tp}, attempt=1,
    ) as second:  # fmt: skip
        pass
    a, b = first.get_span_context(), second.get_span_context()
    produced = extract_span_context({"traceparent": tp})
    assert produced is not None
    # the correlation id's trace wins over an external parent; the producer and consumer join it
    assert a.trace_id == b.trace_id == produced.trace_id == uuid.UUID(cid).int
    assert len({a.span_id, b.span_id, produced.span_id}) == 3
    assert tp is not None and tp.endswith("-01")  # sampled: a downstream service with an exporter records
    t.flush()
    written = tmp_path / "spans-planning.jsonl"
    if exporter == "none":
        assert not first.is_recording() and not written.exists()
    else:
        assert first.is_recording() is False  # ended
        assert {s["name"] for s in spans(written)} >= {"process planning.hospital.discharge.v1"}
