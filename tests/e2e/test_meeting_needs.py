"""End to end (three processes, the real RabbitMQ, the real SMTP sink), issue #22: the person's meeting
needs recorded with the case reach every mail a participant acts on — the invitation, the updated
invitation with its calendar file, the reminder and "SIP-planen är fastställd" — as the "Inför mötet"
block, with no personnummer and no health data. The reminder lead is a few seconds (a setting)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from icalendar import Calendar

from services.notify.templates import contains_health_data, contains_personal_number
from shared.contracts import DischargeNotified
from tests.e2e.test_consent_withdrawal import publish
from tests.integration.planning.test_lifecycle_api import plan
from tests.support.infra import MailSink
from tests.support.personnummer import ADULTS
from tests.support.suite import Suite, running_suite

pytestmark = [pytest.mark.e2e, pytest.mark.broker]

SOC, VC, SJH = "SE2120001-SOC0180", "SE2321000016-VC001", "SE2321000016-SJH01"
ACTOR = {"X-Sip-Organisation": VC}
REMINDER_SECONDS = 8.0  # the reminder goes out this long before the meeting

PREFERENCES = {
    "interpreter_language": "ar", "picture_support": True, "longest_duration_minutes": 60,
    "someone_stays_after": True, "disturbances": "starkt ljus och hög musik", "place": "Hemma",
    "time_of_day": "förmiddag", "room": "Ett lugnt rum", "attend_all": False,
}  # fmt: skip
STATED = (
    "Inför mötet:",
    "- Tolk: arabiska behövs",
    "- Bildstöd behövs under mötet",
    "- Mötet får vara högst 60 minuter",
    "- Personen deltar bara i en del av mötet",
    "- Någon stannar kvar efter mötet och går igenom det som beslutats",
    "- Undvik: starkt ljus och hög musik",
    "- Önskad plats: Hemma",
    "- Önskad tid på dagen: förmiddag",
    "- Rummet: Ett lugnt rum",
)


@pytest.fixture
def suite(amqp_url: str, tmp_path: Path, smtp: MailSink) -> Iterator[Suite]:
    env = {"NOTIFY_REMINDER_HOURS": str(REMINDER_SECONDS / 3600)}
    with running_suite(amqp_url, tmp_path, smtp, extra_env=env) as s:
        yield s


def wait_for(fn, timeout: float = 40.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; last={last!r}")


def sink(smtp: MailSink) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
        for p in sorted(smtp.directory.glob("*.eml"))
    ]


def with_subject(
    smtp: MailSink, start: str, count: int, *, calendar: bool | None = None, timeout: float = 40
):
    def found():
        ms = [m for m in sink(smtp) if str(m["Subject"]).startswith(start)]
        if calendar is not None:
            ms = [m for m in ms if any(p.get_content_type() == "text/calendar" for p in m.walk()) is calendar]
        return ms if len(ms) >= count else None

    return wait_for(found, timeout=timeout, what=f"{count} mails {start!r}")


def assert_states_the_needs(text: str, pnr: str) -> None:
    for line in STATED:
        assert line in text, f"{line!r} missing from:\n{text}"
    assert pnr not in text and pnr[2:] not in text
    assert not contains_personal_number(text) and not contains_health_data(text)


def test_the_needs_reach_every_mail_at_the_sink(suite: Suite) -> None:
    pnr = ADULTS[25]
    ev = DischargeNotified(
        episode_id=f"N-{uuid4().hex[:6]}", hospital_hsa_id=SJH,
        patient={"identifier": pnr, "kommun_code": "0180", "primary_care_unit_hsa_id": VC},
        ready_for_discharge_at=datetime.now(UTC), needs_kommun_support=True, needs_region_support=True,
    )  # fmt: skip
    asyncio.run(publish(suite.amqp_url, ev))
    planning = httpx.Client(base_url=suite.url("planning"), timeout=10, headers=ACTOR)
    consent = httpx.Client(base_url=suite.url("consent"), timeout=10, headers=ACTOR)
    case = wait_for(lambda: next((c for c in planning.get("/cases").json() if c["episode_id"] == ev.episode_id),
                                 None), what="the case")  # fmt: skip
    cid = case["id"]

    r = planning.put(f"/cases/{cid}/preferences", json=PREFERENCES)
    assert r.status_code == 200, r.text
    r = consent.post("/consents", json={"case_id": cid, "patient_identifier": pnr, "decision": "granted",
                                        "recipients": [SOC, VC, SJH], "recorded_by_hsa_id": VC})  # fmt: skip
    assert r.status_code in (200, 201), r.text
    invitations = with_subject(suite.smtp, "Kallelse till SIP-planering", 3, calendar=False)
    wait_for(lambda: planning.get(f"/cases/{cid}").json()["state"] == "invited", what="invited")

    start = datetime.now(UTC) + timedelta(seconds=REMINDER_SECONDS + 12)
    r = planning.put(f"/cases/{cid}/meeting", json={"start": start.isoformat(), "end": (start + timedelta(hours=1)).isoformat(),
                                                    "location": "Vårdcentralen Södermalm, rum 3"})  # fmt: skip
    assert r.status_code == 200, r.text
    # the meeting time set afterwards: the same recipients get the updated invitation with the calendar
    updated = with_subject(suite.smtp, "Ändrad kallelse till SIP-planering", 3, calendar=True)

    r = planning.put(f"/cases/{cid}/plan", json=plan(n=2))
    assert r.status_code == 200, r.text
    version = int(planning.get(f"/fhir/CarePlan/{cid}").json()["meta"]["versionId"])
    r = planning.post(f"/cases/{cid}/plan/approve", json={"version": version, "approved_by": "person",
                                                          "method": "oral"})  # fmt: skip
    assert r.status_code == 200 and r.json()["state"] == "established", r.text
    established = with_subject(suite.smtp, "SIP-planen är fastställd", 3)
    reminders = with_subject(suite.smtp, "Påminnelse: SIP-möte", 3, timeout=REMINDER_SECONDS + 40)

    for m in [*invitations, *updated, *reminders, *established]:
        assert_states_the_needs(m.get_body(preferencelist=("plain",)).get_content(), pnr)
    for m in updated:
        [part] = [p for p in m.walk() if p.get_content_type() == "text/calendar"]
        [event] = Calendar.from_ical(part.get_content()).walk("VEVENT")
        assert_states_the_needs(str(event["DESCRIPTION"]), pnr)
    logs = suite.logs()
    assert pnr not in logs and pnr[2:] not in logs
