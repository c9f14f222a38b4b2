"""End to end: the three services as separate processes, the real RabbitMQ, a real SMTP server.

A discharge is published on RabbitMQ, consent is given over the consent API, and the invitation
email arrives at the SMTP server addressed to the directory's contacts, with no health data.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import aio_pika
import httpx
import pytest

from shared.contracts import DischargeNotified, PatientRef
from shared.directory import load_directory
from tests.support.infra import REPO, MailSink, free_port
from tests.support.personnummer import ADULTS, personnummer_shaped
from tests.support.suite import Suite, running_suite

pytestmark = [pytest.mark.e2e, pytest.mark.broker]

DIRECTORY = REPO / "config" / "directory.yaml"
PARTICIPANTS = ("SE2120001-SOC0180", "SE2321000016-VC001", "SE2321000016-SJH01")


@pytest.fixture
def suite(amqp_url: str, tmp_path: Path, smtp: MailSink) -> Iterator[Suite]:
    with running_suite(amqp_url, tmp_path, smtp) as s:
        yield s


def discharge(personnummer: str, **kw) -> DischargeNotified:
    return DischargeNotified(
        episode_id=kw.pop("episode_id", f"VISIT-{uuid4().hex[:8]}"),
        hospital_hsa_id="SE2321000016-SJH01",
        patient=PatientRef(
            identifier=personnummer, kommun_code="0180", primary_care_unit_hsa_id="SE2321000016-VC001"
        ),
        ready_for_discharge_at=datetime.now(UTC),
        needs_kommun_support=True,
        needs_region_support=True,
        correlation_id=f"e2e-{uuid4().hex[:8]}",
        **kw,
    )


async def publish(amqp_url: str, body: bytes, *, message_id: str | None = None) -> None:
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
        ex = await ch.get_exchange("hospital.events")
        await ex.publish(
            aio_pika.Message(
                body,
                content_type="application/json",
                message_id=message_id or str(uuid4()),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key="hospital.discharge.v1",
            mandatory=True,
        )


def wait_until(fn, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last={last!r}")


OWNER = {"X-Sip-Organisation": "SE2321000016-VC001"}  # the unit that owns the case (sandbox: no token)


def pending_case(suite: Suite) -> str:
    items = httpx.get(f"{suite.url('consent')}/consent-requests", timeout=5, headers=OWNER).json()
    return items[0]["case_id"] if items else ""


def give_consent(suite: Suite, case_id: str, personnummer: str) -> None:
    r = httpx.post(
        f"{suite.url('consent')}/consents",
        json={
            "case_id": case_id,
            "patient_identifier": personnummer,
            "decision": "granted",
            "method": "oral",
            "recorded_by_hsa_id": "SE2321000016-VC001",
        },
        timeout=10,
        headers=OWNER,
    )
    assert r.status_code == 201, r.text


def assert_invitations(suite: Suite, personnummer: str) -> list:
    expected = {
        ch.address
        for hsa in PARTICIPANTS
        for ch in load_directory(DIRECTORY).get(hsa).channels  # type: ignore[union-attr]
        if ch.type == "email"
    }
    mails = suite.smtp.wait_for(len(expected), timeout=40)
    assert sorted(x.addr_spec for m in mails for x in m["To"].addresses) == sorted(expected)
    for m in mails:
        body = m.get_body(preferencelist=("plain",)).get_content()
        text = f"{m['Subject']}\n{body}"
        assert personnummer not in text and personnummer[2:] not in text
        assert not personnummer_shaped(text), "something shaped like a personnummer in the mail"
        assert "SIP-" in text  # the case reference
    return mails


def test_discharge_consent_invitation_end_to_end(suite: Suite):
    pnr = ADULTS[3]
    # a discharge that fails validation goes to the DLQ with its reason; the service keeps running
    bad = json.loads(discharge(pnr).model_dump_json())
    bad["patient"]["identifier"] = pnr[:-1] + str((int(pnr[-1]) + 1) % 10)  # wrong check digit
    asyncio.run(publish(suite.amqp_url, json.dumps(bad).encode(), message_id="bad-1"))
    event = discharge(pnr)
    asyncio.run(publish(suite.amqp_url, event.model_dump_json().encode(), message_id=str(event.message_id)))

    case_id = wait_until(lambda: pending_case(suite), what="consent request for the case")
    dlq = asyncio.run(_drain(suite.amqp_url, "planning.hospital.discharge.v1.dlq"))
    assert [m.message_id for m in dlq] == ["bad-1"]
    assert "patient.identifier" in dlq[0].headers["x-sip-error"]
    assert "check digit" in dlq[0].headers["x-sip-error"]

    give_consent(suite, case_id, pnr)
    assert_invitations(suite, pnr)

    case = wait_until(
        lambda: (
            (c := httpx.get(f"{suite.url('planning')}/cases/{case_id}", timeout=5).json())
            and c.get("state") == "invited"
            and c
        ),
        what="case state invited",
    )
    assert case["invitation_deadline_met"] is True
    plan = httpx.get(f"{suite.url('planning')}/fhir/CarePlan/{case_id}", timeout=5)
    assert plan.status_code == 200 and plan.json()["resourceType"] == "CarePlan"
    # no personnummer in any service's log
    logs = suite.logs()
    assert pnr not in logs and pnr[2:] not in logs


def test_restarting_planning_between_discharge_and_consent_loses_nothing(suite: Suite):
    pnr = ADULTS[4]
    event = discharge(pnr)
    asyncio.run(publish(suite.amqp_url, event.model_dump_json().encode(), message_id=str(event.message_id)))
    case_id = wait_until(lambda: pending_case(suite), what="consent request")
    suite.procs["planning"].kill9()  # the hardest stop: no shutdown hooks
    give_consent(suite, case_id, pnr)  # consent.granted waits in planning's durable queue
    time.sleep(1.0)
    assert suite.smtp.messages() == []
    suite.start("planning")
    assert_invitations(suite, pnr)
    time.sleep(2.0)
    assert len(suite.smtp.messages()) == len(PARTICIPANTS), "an invitation was sent twice"


async def _drain(amqp_url: str, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    conn = await aio_pika.connect(amqp_url)
    out = []
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue(queue, passive=True)
        for _ in range(50):
            m = await q.get(fail=False)
            if m is None:
                if out:
                    break
                await asyncio.sleep(0.2)
                continue
            await m.ack()
            out.append(m)
    return out


def test_operator_cli_sends_a_sample_discharge_and_shows_what_happened(suite: Suite):
    import subprocess
    import sys

    # this suite runs no web service (the pages): its port is a free one, where nothing answers
    env = {**suite.env(), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "WEB_HTTP_PORT": str(free_port())}

    def sipctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sipctl", *args], env=env, capture_output=True, text=True,
                              timeout=60, cwd=REPO)  # fmt: skip

    pnr = ADULTS[11]
    sent = sipctl("send-discharge", "--personnummer", pnr, "--follow", "--timeout", "20")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "published hospital.discharge.v1" in sent.stdout
    m = re.search(r"case (SIP-\d{4}-[0-9A-F]{6}) \(([0-9a-f-]{36})\): consent_pending", sent.stdout)
    assert m, sent.stdout
    given = sipctl("consent", m.group(2), "--personnummer", pnr)
    assert given.returncode == 0 and '"decision": "granted"' in given.stdout, given.stdout + given.stderr
    assert_invitations(suite, pnr)
    status = wait_until(lambda: (r := sipctl("status")) and m.group(1) in r.stdout and "invited" in r.stdout and r,
                        what="status shows the invited case")  # fmt: skip
    assert all(f"{name:9s} 200" in status.stdout for name in ("planning", "consent", "notify"))
    # a service that does not answer is named, and the status is not 0 (for scripts and probes)
    assert f"{'web':9s} DOWN" in status.stdout and status.returncode == 1, status.stdout
