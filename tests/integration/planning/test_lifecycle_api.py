"""A proposed SIP through its whole lifecycle over the HTTP API, against the real RabbitMQ, with the FHIR
API checked at each step: versions, Provenance, R4 and R5, search, $validate, conditional create."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import aio_pika
import httpx
import pytest

from services.planning.app import create_app
from services.planning.settings import PlanningSettings
from shared.contracts import ConsentGranted, InvitationSent
from shared.messaging import declare_topology_at
from tests.support.personnummer import ADULTS

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.broker


@pytest.fixture
async def amqp_url(amqp_url: str) -> str:
    """The whole topology first, as the deployment's definitions pre-create it: one service runs here
    and declares only its own part, but the tests read consent's and notify's queues."""
    await declare_topology_at(amqp_url)
    return amqp_url


SOC, VC = "SE2120001-SOC0180", "SE2321000016-VC001"
ACTOR = {"X-Sip-Organisation": VC}
R5 = {"Accept": "application/fhir+json; fhirVersion=5.0"}


def plan(n: int = 5, follow_up: date = date(2027, 3, 1), **kw) -> dict:
    return {
        "needs": ["Stöd i hemmet efter utskrivning", "Hjälp med läkemedel"],
        "goals": [
            {"id": "g1", "description": "Bo kvar hemma", "due_date": "2027-06-01"},
            {"id": "g2", "description": "Klara morgonrutinerna själv"},
        ],
        "interventions": [
            {
                "id": f"i{k}",
                "description": f"Insats {k}",
                "goal_ids": ["g1"] if k % 2 else ["g1", "g2"],
                "responsible": {"kind": "organisation", "hsa_id": SOC if k % 2 else VC},
                "end_date": "2027-02-01",
            }
            for k in range(n)
        ]
        + [
            {
                "id": "self",
                "description": "Promenad varje dag",
                "goal_ids": ["g2"],
                "responsible": {"kind": "person"},
            }
        ],
        "others": ["Hemtjänsten samordnar med dottern"],
        "overall_responsibility_hsa_id": VC,
        "coordination": "Vårdcentralen samordnar; avstämning varannan vecka per telefon.",
        "follow_up_date": follow_up.isoformat(),
        **kw,
    }


async def publish(amqp_url: str, msg) -> None:
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        ex = await ch.get_exchange(msg.exchange)
        await ex.publish(aio_pika.Message(msg.model_dump_json().encode(), message_id=str(msg.message_id),
                                          content_type="application/json"), routing_key=msg.routing_key)  # fmt: skip


async def take(amqp_url: str, queue: str, timeout: float = 20.0) -> dict:
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue(queue, passive=True)
        for _ in range(int(timeout / 0.1)):
            m = await q.get(fail=False)
            if m is not None:
                await m.ack()
                return json.loads(m.body)
            await asyncio.sleep(0.1)
    raise AssertionError(f"nothing arrived on {queue}")


@pytest.fixture
async def api(amqp_url, tmp_path):
    settings = PlanningSettings(
        amqp_url=amqp_url, data_dir=str(tmp_path), directory_path=str(REPO / "config/directory.yaml")
    )
    app = create_app(settings)
    rt = app.state.runtime
    await rt.start()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://planning"
        ) as client:
            yield client
    finally:
        await rt.stop()


async def wait_state(api, case_id: str, state: str) -> dict:
    for _ in range(200):
        body = (await api.get(f"/cases/{case_id}")).json()
        if body["state"] == state:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"case stayed {body['state']}, expected {state}")


async def test_a_proposed_sip_from_need_to_closing(api, amqp_url):
    pnr = ADULTS[20]
    r = await api.post("/cases", json={"patient_identifier": pnr, "kommun_code": "0180",
                                       "primary_care_unit_hsa_id": VC, "proposed_by": "relative"})  # fmt: skip
    assert r.status_code == 201, r.text
    case = r.json()
    cid = case["id"]
    assert case["state"] == "need_identified" and case["origin"] == "proposal"

    # refused steps answer 409 with the reason, and change nothing
    r = await api.put(f"/cases/{cid}/plan", json=plan(), headers=ACTOR)
    assert r.status_code == 409 and "need_identified" in r.json()["detail"]
    assert (await api.post(f"/cases/{cid}/accept")).status_code == 401  # no acting organisation

    r = await api.post(f"/cases/{cid}/accept", headers=ACTOR)
    assert r.json()["state"] == "consent_pending" and r.json()["invitation_due_at"]
    [row] = [o for o in (await api.get("/overview")).json() if o["case_id"] == cid]
    assert row["next_deadline"] == "invitation" and row["owner_hsa_id"] == VC
    req = await take(amqp_url, "consent.consent.request.v1")
    assert req["case_id"] == cid

    await publish(amqp_url, ConsentGranted(consent_id=uuid4(), case_id=cid, patient_identifier=pnr,
                                           purposes=("draw-up-plan", "share-information", "send-invitation"),
                                           recipients=(SOC, VC)))  # fmt: skip
    await wait_state(api, cid, "preparing")
    prefs = {"place": "Hemma", "time_of_day": "förmiddag", "longest_duration_minutes": 60,
             "interpreter_language": "ar", "picture_support": True, "someone_stays_after": True}  # fmt: skip
    r = await api.put(f"/cases/{cid}/preferences", json=prefs, headers=ACTOR)
    assert r.json()["preferences"]["interpreter_language"] == "ar"

    r = await api.post(f"/cases/{cid}/invite", headers=ACTOR)
    assert r.json()["state"] == "invitation_requested"
    inv = await take(amqp_url, "notify.notify.send-invitation.v1")
    assert inv["case_id"] == cid and inv["interpreter_language"] == "ar" and inv["meeting_start"] is None
    needs = inv["meeting_needs"]  # what the participants prepare for (issue #22)
    assert (needs["interpreter_language"], needs["picture_support"], needs["someone_stays_after"]) == (
        "ar",
        True,
        True,
    )
    assert (needs["place"], needs["time_of_day"], needs["longest_duration_minutes"]) == (
        "Hemma",
        "förmiddag",
        60,
    )
    invited = inv["recipients"]
    assert pnr not in json.dumps(inv)
    await publish(amqp_url, InvitationSent(case_id=cid, notification_id=uuid4(), recipient_hsa_id=SOC,
                                           channel="email", sent_at=datetime.now(UTC)))  # fmt: skip
    await wait_state(api, cid, "invited")

    start = datetime(2027, 1, 12, 9, 0, tzinfo=UTC)
    meeting = {"start": start.isoformat(), "end": (start + timedelta(hours=1)).isoformat(),
               "video_url": "https://video.example/sip-1"}  # fmt: skip
    r = await api.put(f"/cases/{cid}/meeting", json=meeting, headers=ACTOR)
    assert r.json()["state"] == "meeting_scheduled"
    inv = await take(amqp_url, "notify.notify.send-invitation.v1")
    # the meeting goes to everyone invited, not only to SOC whose delivery has come back so far
    assert inv["meeting_start"].startswith("2027-01-12T09:00") and inv["recipients"] == invited
    assert sorted(invited) == sorted([SOC, VC])

    # a plan that names a non-participant as responsible is refused naming the field
    bad = plan(overall_responsibility_hsa_id="SE-NOT-IN-CASE")
    r = await api.put(f"/cases/{cid}/plan", json=bad, headers=ACTOR)
    assert r.status_code == 422 and "overall_responsibility_hsa_id" in r.json()["detail"]

    r = await api.put(f"/cases/{cid}/plan", json=plan(), headers=ACTOR)
    assert r.json()["state"] == "plan_drafted"
    fhir = (await api.get(f"/fhir/CarePlan/{cid}")).json()
    draft_version = int(fhir["meta"]["versionId"])
    assert (
        fhir["status"] == "draft" and len(fhir["activity"]) == 6 + 3
    )  # 6 insatser; invitation, meeting, follow-up
    r = await api.post(f"/cases/{cid}/plan/approve", json={"version": draft_version - 1, "approved_by": "person",
                                                            "method": "oral"}, headers=ACTOR)  # fmt: skip
    assert r.status_code == 422 and "latest" in r.json()["detail"]
    r = await api.post(f"/cases/{cid}/plan/approve", json={"version": draft_version, "approved_by": "person",
                                                            "method": "oral"}, headers=ACTOR)  # fmt: skip
    assert r.json()["state"] == "established" and r.json()["approval"]["version"] == draft_version
    established = await take(amqp_url, "notify.planning.case-notice.v1")
    assert established["kind"] == "plan-established" and established["plan_version"] == draft_version
    assert established["meeting_needs"] == needs
    assert set(established["recipients"]) == {SOC, VC} and pnr not in json.dumps(established)
    fhir = (await api.get(f"/fhir/CarePlan/{cid}")).json()
    assert fhir["status"] == "active" and fhir["author"]["identifier"]["value"] == VC

    # a change takes effect only with the person's approval: the plan in force is still the approved one
    r = await api.put(f"/cases/{cid}/plan", json=plan(n=1, coordination="Ny samordning"), headers=ACTOR)
    assert r.json()["state"] == "plan_drafted"
    fhir = (await api.get(f"/fhir/CarePlan/{cid}")).json()
    assert fhir["status"] == "active" and fhir["description"].startswith("Vårdcentralen samordnar")

    r = await api.post(f"/cases/{cid}/follow-up", json={"outcome": "close", "reason": "klart"}, headers=ACTOR)
    assert r.status_code == 409  # a draft waits for approval: no follow-up before it is decided
    latest = int((await api.get(f"/fhir/CarePlan/{cid}")).json()["meta"]["versionId"])
    await api.post(f"/cases/{cid}/plan/approve", json={"version": latest, "approved_by": "person",
                                                        "method": "written"}, headers=ACTOR)  # fmt: skip
    r = await api.post(f"/cases/{cid}/follow-up", json={"outcome": "continue", "next_follow_up_date": "2027-09-01"},
                       headers=ACTOR)  # fmt: skip
    assert r.json()["state"] == "established" and r.json()["follow_up_date"] == "2027-09-01"
    r = await api.post(f"/cases/{cid}/follow-up", json={"outcome": "close"}, headers=ACTOR)
    assert r.status_code == 422  # closing needs a reason
    r = await api.post(
        f"/cases/{cid}/follow-up", json={"outcome": "close", "reason": "målen nådda"}, headers=ACTOR
    )
    assert r.json()["state"] == "closed"
    await take(amqp_url, "notify.planning.case-notice.v1")  # the second approval's plan-established
    closed = await take(amqp_url, "notify.planning.case-notice.v1")
    assert closed["kind"] == "case-closed" and closed["reason_code"] == "followed-up"
    final = (await api.get(f"/fhir/CarePlan/{cid}")).json()
    assert final["status"] == "completed"
    deadlines = {(d["kind"], d["status"]) for d in (await api.get(f"/cases/{cid}/deadlines")).json()}
    assert {("invitation", "met"), ("meeting", "met"), ("follow-up", "met")} <= deadlines
    assert not any(status == "pending" for _, status in deadlines)  # a closed case has no clock running

    # versions, vread, history and Provenance
    history = (await api.get(f"/fhir/CarePlan/{cid}/_history")).json()
    versions = [int(e["resource"]["meta"]["versionId"]) for e in history["entry"]]
    assert versions == sorted(versions, reverse=True) and versions[-1] == 1 and len(versions) >= 12
    v1 = (await api.get(f"/fhir/CarePlan/{cid}/_history/1")).json()
    assert v1["status"] == "draft" and "activity" not in v1
    prov = (await api.get("/fhir/Provenance", params={"target": f"CarePlan/{cid}"})).json()
    assert prov["total"] == len(versions)
    reasons = [e["resource"].get("reason", [{}])[0].get("text") for e in prov["entry"]]
    assert "approved by the person (oral)" in reasons and "proposed by relative" in reasons

    # R5 on request, validated as R5 by the server; and the R5 body parses as R5 here too
    r = await api.get(f"/fhir/CarePlan/{cid}/_history/{draft_version}", headers=R5)
    assert "fhirVersion=5.0" in r.headers["content-type"]
    from fhir.resources.careplan import CarePlan as CarePlanR5

    r5 = CarePlanR5.model_validate(r.json())
    assert r5.custodian.identifier.value == VC and r5.activity[0].plannedActivityReference is not None

    # search
    found = (await api.get("/fhir/CarePlan", params={"patient": pnr})).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [cid]
    assert (await api.get("/fhir/CarePlan", params={"patient": pnr, "status": "active"})).json()["total"] == 0
    assert (await api.get("/fhir/CarePlan", params={"patient": pnr, "status": "completed"})).json()[
        "total"
    ] == 1
    assert (await api.get("/fhir/CarePlan", params={"date": "ge2000-01-01", "category": "SIP"})).json()[
        "total"
    ] == 1
    # an unknown parameter is ignored (lenient, FHIR's default) and left out of the self link; strict: 400
    r = await api.get("/fhir/CarePlan", params={"bogus": "1"})
    assert r.status_code == 200 and "bogus" not in r.json()["link"][0]["url"]
    r = await api.get("/fhir/CarePlan", params={"bogus": "1"}, headers={"Prefer": "handling=strict"})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"


async def test_refusing_a_proposal_needs_a_reason(api):
    r = await api.post("/cases", json={"patient_identifier": ADULTS[21], "kommun_code": "0180",
                                       "proposed_by": "school"})  # fmt: skip
    cid = r.json()["id"]
    assert (await api.post(f"/cases/{cid}/refuse", json={}, headers=ACTOR)).status_code == 422
    r = await api.post(f"/cases/{cid}/refuse", json={"reason": "behovet täcks redan"}, headers=ACTOR)
    assert r.json()["state"] == "refused" and r.json()["closed_reason"] == "behovet täcks redan"
    assert (await api.post(f"/cases/{cid}/accept", headers=ACTOR)).status_code == 409
    fhir = (await api.get(f"/fhir/CarePlan/{cid}")).json()
    assert fhir["status"] == "revoked"


async def test_a_step_before_the_consent_is_a_409_naming_it_and_a_blank_reason_a_422(api):
    """Issue #22: invite before the consent answers 409 with the state and the missing consent (it was a
    500 from an assertion); a reason of blanks says nothing and is refused naming the field."""
    r = await api.post("/cases", json={"patient_identifier": ADULTS[23], "kommun_code": "0180",
                                       "primary_care_unit_hsa_id": VC, "proposed_by": "professional"})  # fmt: skip
    cid = r.json()["id"]
    for state in ("need_identified", "consent_pending"):
        if state == "consent_pending":
            assert (await api.post(f"/cases/{cid}/accept", headers=ACTOR)).json()["state"] == state
        r = await api.post(f"/cases/{cid}/invite", headers=ACTOR)
        assert r.status_code == 409, r.text
        assert state in r.json()["detail"] and "consent is missing" in r.json()["detail"]
        assert (await api.get(f"/cases/{cid}")).json()["state"] == state
    for path, body in ((f"/cases/{cid}/close", {"reason": "   "}), (f"/cases/{cid}/close", {"reason": " \t "}),
                       (f"/cases/{cid}/follow-up", {"outcome": "close", "reason": "  "})):  # fmt: skip
        r = await api.post(path, json=body, headers=ACTOR)
        assert r.status_code == 422, r.text
        assert any(e["loc"][-1] == "reason" for e in r.json()["detail"])
    r = await api.put(f"/cases/{cid}/preferences", json={"place": "  "}, headers=ACTOR)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "place"
    r = await api.put(f"/cases/{cid}/preferences", json={"disturbances": "Undvik F32.1"}, headers=ACTOR)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "disturbances"
    r = await api.post(f"/cases/{cid}/close", json={"reason": "  flyttat  "}, headers=ACTOR)
    assert r.json()["state"] == "closed" and r.json()["closed_reason"] == "flyttat"

    other = (await api.post("/cases", json={"patient_identifier": ADULTS[24], "kommun_code": "0180",
                                            "proposed_by": "school"})).json()["id"]  # fmt: skip
    r = await api.post(f"/cases/{other}/refuse", json={"reason": "    "}, headers=ACTOR)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "reason"]
    assert (await api.get(f"/cases/{other}")).json()["state"] == "need_identified"


async def test_validate_and_conditional_create(api):
    good = {"resourceType": "CarePlan", "status": "draft", "intent": "proposal",
            "subject": {"identifier": {"system": "http://electronichealth.se/identifier/personnummer",
                                       "value": ADULTS[22]}},
            "author": {"identifier": {"system": "urn:oid:1.2.752.29.4.19", "value": VC}},
            "identifier": [{"system": "urn:example:journal", "value": "P-77"}]}  # fmt: skip
    r = await api.post("/fhir/CarePlan/$validate", json=good)
    assert r.status_code == 200 and r.json()["issue"][0]["severity"] == "information"
    r = await api.post("/fhir/CarePlan/$validate", json={**good, "status": "bogus"})
    assert r.status_code == 422
    assert (
        r.json()["issue"][0]["expression"] == ["CarePlan.status"]
        and "bogus" in r.json()["issue"][0]["diagnostics"]
    )
    r = await api.post("/fhir/CarePlan/$validate", json={**good, "wrongElement": 1})
    assert r.status_code == 422 and "wrongElement" in r.json()["issue"][0]["expression"][0]

    cond = {"If-None-Exist": "identifier=urn:example:journal|P-77"}
    first = await api.post("/fhir/CarePlan", json=good, headers=cond)
    again = await api.post("/fhir/CarePlan", json=good, headers=cond)
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    case = (await api.get(f"/cases/{first.json()['id']}")).json()
    assert case["state"] == "need_identified" and case["kommun_code"] == "0180"
    bad = {**good, "subject": {"identifier": {"system": "http://electronichealth.se/identifier/personnummer",
                                              "value": "191212121213"}}}  # fmt: skip
    r = await api.post("/fhir/CarePlan", json=bad)
    assert r.status_code == 422 and r.json()["resourceType"] == "OperationOutcome"
