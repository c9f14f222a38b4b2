"""End to end: the three services as processes on the real RabbitMQ, one discharge over MLLP to its
invitation; then every service's /metrics is scraped, and every metric the alert rules and the
dashboard use is in the scrape (with the figures the flow must have produced)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_discharge_to_invitation import give_consent, pending_case, wait_until
from tests.e2e.test_observability import _hl7_a03, _send_mllp
from tests.support.infra import MailSink
from tests.support.metric_names import PROMETHEUS_OWN, metric_names_in, names_in_exposition
from tests.support.personnummer import ADULTS
from tests.support.suite import Suite, running_suite

pytestmark = [pytest.mark.e2e, pytest.mark.broker]

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("planning", "consent", "notify")


@pytest.fixture
def suite(amqp_url: str, tmp_path: Path, smtp: MailSink) -> Iterator[Suite]:
    with running_suite(amqp_url, tmp_path, smtp, extra_ports=("mllp",)) as s:
        yield s


def scrape(suite: Suite, service: str) -> str:
    r = httpx.get(f"{suite.url(service)}/metrics", timeout=10)
    assert r.status_code == 200
    return r.text


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def test_every_metric_the_alerts_and_the_dashboard_use_is_served_after_a_discharge(suite: Suite) -> None:
    pnr = ADULTS[9]
    started = time.time()
    ack = asyncio.run(_send_mllp(suite.ports["mllp"], _hl7_a03(pnr, "V-MON-1", "Berg^Eva")))
    assert b"MSA|AA" in ack
    case_id = wait_until(lambda: pending_case(suite), what="consent request for the case")
    give_consent(suite, case_id, pnr)
    assert suite.smtp.wait_for(1, timeout=40), "no invitation arrived"
    wait_until(
        lambda: httpx.get(f"{suite.url('planning')}/cases/{case_id}", timeout=5).json().get("state") == "invited",
        what="case invited",
    )  # fmt: skip
    httpx.get(f"{suite.url('planning')}/no-such-path/{case_id}", timeout=5)

    texts = {s: scrape(suite, s) for s in SERVICES}
    served = set().union(*(names_in_exposition(t) for t in texts.values()))
    used: set[str] = set()
    for group in yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())["groups"]:
        used |= {n for r in group["rules"] for n in metric_names_in(r["expr"])}
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/sip-suite.json").read_text())
    used |= {n for p in dashboard["panels"] for t in p.get("targets", ()) for n in metric_names_in(t["expr"])}
    assert used - PROMETHEUS_OWN - served == set()

    planning = samples(texts["planning"])
    accepted = [s for s in planning if s[0] == "sip_intake_messages_total" and s[1]["outcome"] == "AA"]
    assert sum(v for *_, v in accepted) >= 1
    [last] = [v for n, labels, v in planning
              if n == "sip_intake_last_accepted_timestamp_seconds" and labels["source"] == "hl7v2"]  # fmt: skip
    assert started - 5 <= last <= time.time() + 5
    assert any(n == "sip_intake_expected_gap_seconds" for n, _, _ in planning)
    routes = {labels["route"] for n, labels, _ in planning if n == "sip_http_requests_total"}
    assert "/cases/{case_id}" in routes and "unmatched" in routes
    waits = [
        v for n, _, v in planning + samples(texts["notify"]) if n == "sip_message_queue_wait_seconds_count"
    ]
    assert sum(waits) >= 2
    sent = [v for n, labels, v in samples(texts["notify"])
            if n == "sip_notify_delivery_attempts_total" and labels == {"channel": "email", "outcome": "sent"}]  # fmt: skip
    assert sent and sent[0] >= 1
    for service, text in texts.items():
        got = {n: v for n, labels, v in samples(text) if not labels}
        assert got["process_open_fds"] > 0 and got["process_resident_memory_bytes"] > 0, service
        assert got["sip_outbox_oldest_unpublished_age_seconds"] < 600, service
        assert case_id not in text and pnr not in text, service
