"""End to end (three processes, the real RabbitMQ, a real SMTP server): the person withdraws consent
while invitations and notices wait to be sent — after the withdrawal is committed nothing more about
the person reaches any organisation; every stopped notification is recorded with the reason; each
participant is told, without health data; the SIP ends."""

from __future__ import annotations

import email
import email.policy
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import aio_pika
import httpx
import pytest

from shared.contracts import DischargeNotified
from tests.support.infra import MailSink
from tests.support.personnummer import ADULTS
from tests.support.suite import Suite, running_suite

pytestmark = [pytest.mark.e2e, pytest.mark.broker]

SOC, VC, SJH = "SE2120001-SOC0180", "SE2321000016-VC001", "SE2321000016-SJH01"
ACTOR = {"X-Sip-Organisation": VC}


@pytest.fixture
def suite(amqp_url: str, tmp_path: Path, smtp: MailSink) -> Iterator[Suite]:
    with running_suite(amqp_url, tmp_path, smtp) as s:
        yield s


def wait_for(fn, timeout: float = 40.0, what: str = "condition", seen=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}" + (f"; last seen: {seen()}" if seen else ""))


def mails(smtp: MailSink) -> list[tuple[float, email.message.EmailMessage]]:
    out = []
    for p in sorted(smtp.directory.glob("*.eml")):
        out.append((p.stat().st_mtime, email.message_from_bytes(p.read_bytes(), policy=email.policy.default)))
    return out


async def publish(amqp_url: str, ev: DischargeNotified) -> None:
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        ex = await ch.get_exchange(ev.exchange)
        await ex.publish(aio_pika.Message(ev.model_dump_json().encode(), message_id=str(ev.message_id),
                                          content_type="application/json"), routing_key=ev.routing_key)  # fmt: skip


async def test_withdrawal_stops_every_queued_disclosure_and_tells_the_participants(suite: Suite) -> None:
    pnr = ADULTS[24]
    ev = DischargeNotified(
        episode_id=f"W-{uuid4().hex[:6]}", hospital_hsa_id=SJH,
        patient={"identifier": pnr, "kommun_code": "0180", "primary_care_unit_hsa_id": VC},
        ready_for_discharge_at=datetime.now(UTC), needs_kommun_support=True, needs_region_support=True,
    )  # fmt: skip
    await publish(suite.amqp_url, ev)
    planning = httpx.Client(base_url=suite.url("planning"), timeout=10, headers=ACTOR)
    consent = httpx.Client(base_url=suite.url("consent"), timeout=10, headers=ACTOR)
    notify = httpx.Client(base_url=suite.url("notify"), timeout=10, headers=ACTOR)
    case = wait_for(lambda: next((c for c in planning.get("/cases").json() if c["episode_id"] == ev.episode_id),
                                 None), what="the case")  # fmt: skip
    cid = case["id"]
    r = consent.post("/consents", json={"case_id": cid, "patient_identifier": pnr, "decision": "granted",
                                        "recipients": [SOC, VC, SJH], "recorded_by_hsa_id": VC})  # fmt: skip
    assert r.status_code in (200, 201), r.text
    consent_id = r.json()["id"]
    wait_for(lambda: planning.get(f"/cases/{cid}").json()["state"] == "invited", what="invited")
    first_wave = len(mails(suite.smtp))
    assert first_wave == 3

    # the mail server goes away: what is sent next waits in notify
    suite.smtp.proc.stop()
    start = datetime.now(UTC) + timedelta(days=5)
    for hours in range(5):  # the meeting is moved five times: five calendar invitations to each participant
        meeting = {"start": (start + timedelta(hours=hours)).isoformat(),
                   "end": (start + timedelta(hours=hours + 1)).isoformat(), "location": "Rum 3"}  # fmt: skip
        assert planning.put(f"/cases/{cid}/meeting", json=meeting).status_code == 200

    # the plan is drafted and approved: a "plan established" notice with the link waits for each participant
    plan = {
        "needs": ["Stöd i hemmet"], "goals": [{"id": "g1", "description": "Bo kvar hemma"}],
        "interventions": [{"id": "i1", "description": "Hemtjänst", "goal_ids": ["g1"],
                           "responsible": {"kind": "organisation", "hsa_id": SOC}}],
        "overall_responsibility_hsa_id": VC, "coordination": "Vårdcentralen samordnar",
        "follow_up_date": (datetime.now(UTC) + timedelta(days=60)).date().isoformat(),
    }  # fmt: skip
    r = planning.put(f"/cases/{cid}/plan", json=plan)
    assert r.status_code == 200, r.text
    version = int(planning.get(f"/fhir/CarePlan/{cid}").json()["meta"]["versionId"])
    r = planning.post(
        f"/cases/{cid}/plan/approve", json={"version": version, "approved_by": "person", "method": "oral"}
    )
    assert r.json()["state"] == "established", r.text

    def pending() -> list[dict]:
        """Notifications about the case still to be sent — all but the withdrawal notices themselves."""
        return [n for n in notify.get("/notifications", params={"case_id": cid}).json()
                if n["status"] in ("pending", "sending") and n["kind"] != "consent-withdrawn"]  # fmt: skip

    def queued() -> bool:
        kinds = [n["kind"] for n in pending()]
        return kinds.count("invitation") >= 15 and kinds.count("plan-established") >= 3

    def statuses() -> list[tuple[str, str, str | None]]:
        found = notify.get("/notifications", params={"case_id": cid}).json()
        return sorted((n["kind"], n["status"], n.get("status_reason")) for n in found)

    wait_for(queued, what="15 queued invitations and the plan notices", seen=statuses)

    # the person withdraws the consent
    r = consent.post(f"/consents/{consent_id}/withdraw", json={"recorded_by_hsa_id": VC})
    assert r.status_code in (200, 201), r.text
    withdrawn_at = time.time()
    wait_for(lambda: not pending(), what="every pending notification stopped")
    stopped = [
        n for n in notify.get("/notifications", params={"case_id": cid}).json() if n["status"] == "cancelled"
    ]
    assert len(stopped) >= 15
    # every invitation and reminder still unsent was stopped by the withdrawal (a reminder for a meeting
    # time that was moved again had been superseded before that)
    assert all(
        n["status_reason"]
        and (
            "consent" in n["status_reason"]
            or (n["kind"] == "reminder" and n["status_reason"].startswith("superseded"))
        )
        for n in stopped
    )
    assert sum(1 for n in stopped if n["kind"] == "invitation" and "consent" in n["status_reason"]) >= 15
    assert sum(1 for n in stopped if n["kind"] == "plan-established") == 3  # the plan copies too
    fhir = notify.get(f"/fhir/Communication/{stopped[0]['id']}").json()
    assert fhir["status"] == "not-done" and fhir["statusReason"]

    # the mail server returns: no invitation goes out any more; each participant hears, once, that it stopped
    suite.smtp.proc.start()
    wait_for(lambda: len(mails(suite.smtp)) >= first_wave + 3, what="the withdrawal notices")
    time.sleep(3)  # anything late would arrive now
    after = [(t, m) for t, m in mails(suite.smtp)[first_wave:]]
    assert len(after) == 3
    recipients = sorted(str(m["To"]) for _, m in after)
    assert len(set(recipients)) == 3
    for _, m in after:
        body = m.get_body(preferencelist=("plain",)).get_content()
        assert "text/calendar" not in str(m)  # not an invitation
        assert pnr not in body and pnr[2:8] not in body
    assert all(t >= withdrawn_at - 1 for t, _ in after)
    wait_for(lambda: planning.get(f"/cases/{cid}", params={}).json()["state"] == "consent_withdrawn",
             what="the SIP ended")  # fmt: skip
    audit = consent.get("/audit", params={"patient": pnr, "limit": 1000}).json()  # reads are audited too
    assert [a for a in audit if a["action"] == "withdrawal"], audit  # the withdrawal itself is audited
