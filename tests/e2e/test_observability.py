"""End to end: one discharge is one trace across planning, consent and notify; no personal data in
any service's log lines or spans; /metrics on every service.

The three services run as processes against the real RabbitMQ and a real SMTP server, with the
JSON-lines span exporter on (``SIP_OTEL_EXPORTER=file``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.planning.intake.mllp import FrameDecoder, frame
from shared.tracing import trace_id_for
from tests.e2e.test_discharge_to_invitation import (
    assert_invitations,
    discharge,
    give_consent,
    pending_case,
    publish,
    wait_until,
)
from tests.support.infra import MailSink
from tests.support.personnummer import ADULTS
from tests.support.suite import Suite, running_suite
from tests.unit.intake.messages import adt_bytes

pytestmark = [pytest.mark.e2e, pytest.mark.broker]

SERVICES = ("planning", "consent", "notify")


@pytest.fixture
def suite(amqp_url: str, tmp_path: Path, smtp: MailSink) -> Iterator[Suite]:
    env = {"SIP_OTEL_EXPORTER": "file", "SIP_OTEL_FILE": str(tmp_path / "spans" / "{service}.jsonl")}
    with running_suite(amqp_url, tmp_path, smtp, extra_ports=("mllp",), extra_env=env) as s:
        yield s


def span_text(suite: Suite) -> str:
    return "".join(p.read_text() for p in sorted((suite.tmp / "spans").glob("*.jsonl")))


def read_spans(suite: Suite) -> list[dict]:
    return [json.loads(line) for line in span_text(suite).splitlines() if line.strip()]


def in_trace(suite: Suite, trace_id: str) -> list[dict]:
    return [s for s in read_spans(suite) if s["trace_id"] == trace_id]


def test_one_discharge_is_one_trace_across_the_three_services(suite: Suite) -> None:
    pnr = ADULTS[7]
    event = discharge(pnr)
    trace_id = f"{trace_id_for(event.correlation_id):032x}"
    asyncio.run(publish(suite.amqp_url, event.model_dump_json().encode(), message_id=str(event.message_id)))
    case_id = wait_until(lambda: pending_case(suite), what="consent request for the case")
    give_consent(suite, case_id, pnr)
    assert_invitations(suite, pnr)

    last = "process planning.notify.invitation-sent.v1"
    expected = [
        ("planning", "process planning.hospital.discharge.v1"),
        ("planning", "create consent.request.v1"),
        ("consent", "process consent.consent.request.v1"),
        ("consent", "create consent.granted.v1"),
        ("planning", "process planning.consent.granted.v1"),
        ("planning", "create notify.send-invitation.v1"),
        ("notify", "process notify.notify.send-invitation.v1"),
        ("notify", "create notify.invitation-sent.v1"),
        ("planning", last),
    ]
    hops = [
        (expected[1], expected[2]),
        (expected[3], expected[4]),
        (expected[5], expected[6]),
        (expected[7], expected[8]),
    ]

    def whole_trace() -> bool:
        """Every expected span there, and as many consumer spans as writes for each hop: each service
        exports its spans within a second of their end, so the three InvitationSent consumers (one per
        participant) may land in planning's span file after the first one has."""
        seen = Counter((s["service"], s["name"]) for s in in_trace(suite, trace_id))
        return set(expected) <= set(seen) and all(seen[c] >= seen[p] for p, c in hops)

    wait_until(whole_trace, what="the whole trace in the span files")
    spans = in_trace(suite, trace_id)
    assert {s["service"] for s in spans} == set(SERVICES)
    by_name: dict[tuple[str, str], list[dict]] = {}
    for s in spans:
        by_name.setdefault((s["service"], s["name"]), []).append(s)

    def one(service: str, name: str) -> dict:
        return by_name[(service, name)][0]

    # each consumer span is the child of the outbox write that caused it, across processes (one
    # InvitationSent per participant: the three are consumed in any order, each under its own write)
    for producer_key, consumer_key in hops:
        producers, consumers = by_name[producer_key], by_name[consumer_key]
        assert sorted(c["parent_span_id"] for c in consumers) == sorted(p["span_id"] for p in producers)
        assert {c["kind"] for c in consumers} == {"CONSUMER"}
        assert {p["kind"] for p in producers} == {"PRODUCER"}
    # consent was given over HTTP: the request's span (its own trace) is linked from the discharge's
    http = [s for s in read_spans(suite) if s["service"] == "consent" and s["name"] == "POST /consents"]
    assert len(http) == 1 and http[0]["kind"] == "SERVER"
    assert http[0]["attributes"]["http.response.status_code"] == 201
    granted = one("consent", "create consent.granted.v1")
    assert {link["span_id"] for link in granted["links"]} == {http[0]["span_id"]}
    # nothing personal in any span of any service
    text = span_text(suite)
    assert pnr not in text and pnr[2:] not in text

    # and the metrics of every service saw it
    for name in SERVICES:
        r = httpx.get(f"{suite.url(name)}/metrics", timeout=5)
        assert r.status_code == 200
        consumed = sum(
            s.value
            for f in text_string_to_metric_families(r.text)
            for s in f.samples
            if s.name == "sip_messages_consumed_total" and s.labels["outcome"] == "ok"
        )
        assert consumed >= 1, name
        assert pnr not in r.text


def _hl7_a03(pnr: str, visit: str, name: str) -> bytes:
    pid3 = f"{pnr}^^^SKV&1.2.752.129.2.1.3.1&ISO^PN"
    raw = adt_bytes("A03", control_id=f"OBS-{visit}", pid3=pid3, visit=visit, charset="8859/1", name=name,
                    encoding="latin-1", kommun="0180", discharge="20261120093000+0100")  # fmt: skip
    return raw.replace(b"SE2321000131-E000000000111", b"SE2321000016-VC001")


async def _send_mllp(port: int, message: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(frame(message))
    await writer.drain()
    decoder = FrameDecoder()
    acks: list[bytes] = []
    while not acks:
        chunk = await asyncio.wait_for(reader.read(65536), timeout=15)
        assert chunk, "connection closed before the ACK"
        acks += decoder.feed(chunk)
    writer.close()
    return acks[0]


def test_no_log_line_of_any_service_holds_the_personnummer_or_the_name(suite: Suite) -> None:
    """HL7 v2 carries the name (PID-5) as well as the personnummer; neither may reach a log or span."""
    pnr, family, given = ADULTS[8], "Åström", "Örjan"
    ack = asyncio.run(_send_mllp(suite.ports["mllp"], _hl7_a03(pnr, "V-OBS-1", f"{family}^{given}")))
    assert b"MSA|AA" in ack
    case_id = wait_until(lambda: pending_case(suite), what="consent request for the case")
    give_consent(suite, case_id, pnr)
    assert suite.smtp.wait_for(1, timeout=40), "no invitation arrived"
    wait_until(
        lambda: httpx.get(f"{suite.url('planning')}/cases/{case_id}", timeout=5).json().get("state") == "invited",
        what="case invited",
    )  # fmt: skip
    time.sleep(1.0)  # the last lines and spans are written

    forbidden = [pnr, pnr[2:], f"{pnr[2:8]}-{pnr[8:]}", family, given]
    forbidden += [json.dumps(w)[1:-1] for w in (family, given)]  # as JSON escapes (\u00c5str\u00f6m)
    forbidden += [w.encode("latin-1").decode("utf-8", "replace") for w in (family, given)]
    lines = 0
    for name in SERVICES:
        log = suite.procs[name].log_path.read_text(errors="replace")
        for line in log.splitlines():
            lines += 1
            leaked = [w for w in forbidden if w in line]
            assert not leaked, f"{name} logged personal data: {line[:300]}"
            if line.startswith("{"):
                json.loads(line)  # JSON lines only, not fragments
    assert lines > 0
    text = span_text(suite)
    assert text and not [w for w in forbidden if w in text]
    # lines written while handling a message carry its trace id and correlation id
    records = [
        json.loads(line)
        for name in SERVICES
        for line in suite.procs[name].log_path.read_text(errors="replace").splitlines()
        if line.startswith("{")
    ]
    assert any("trace_id" in r and "correlation_id" in r for r in records), "no line carries a trace id"
