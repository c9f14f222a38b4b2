"""Consent over HTTP on a real database (SQLite file; PostgreSQL where marked): children and
guardians, withdrawal, cancellation, the decision endpoint and its audit log, FHIR R4/R5 and history.

No broker is needed: the service's state changes and outgoing events are read from its database
(events wait in the outbox until the relay publishes them). Authentication is on: the recording unit
(REC) records, reads, withdraws and cancels its consents; an operator asks the decisions and reads
the audit trail (who may do what is tested in test_access.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Generator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
import sqlalchemy as sa
import yaml

from services.consent.app import create_app, prepare_database
from services.consent.settings import ConsentSettings
from shared.auth import mint_token
from shared.clock import FixedClock
from tests.conftest import TEST_JWT_SECRET
from tests.support.personnummer import ADULTS, CHILD

NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
SOC, VC, SCHOOL = "SE2120001-SOC0180", "SE2321000016-VC001", "SE2120001-SKOLA1"
REC = "SE2321000016-REC1"
OPS = "SE2321000016-OPS01"
REPO = Path(__file__).resolve().parents[3]


class Tokens(httpx.Auth):
    """The recording unit's token, an operator's for decisions and the audit trail."""

    recorder = f"Bearer {mint_token(TEST_JWT_SECRET, REC)}"
    operator = f"Bearer {mint_token(TEST_JWT_SECRET, OPS, operator=True)}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        path = request.url.path
        as_operator = path.startswith(("/decisions", "/audit", "/fhir/AuditEvent"))
        request.headers["Authorization"] = self.operator if as_operator else self.recorder
        yield request


def directory(tmp: Path) -> str:
    data = yaml.safe_load((REPO / "config/directory.yaml").read_text())
    for hsa_id in (REC, OPS):
        data["organisations"].append({"hsa_id": hsa_id, "name": hsa_id, "kind": "other", "channels": []})
    path = tmp / "directory.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return str(path)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def service(request, tmp_path) -> AsyncIterator[tuple[httpx.AsyncClient, object, FixedClock]]:
    auth = dict(directory_path=directory(tmp_path), auth_required=True, jwt_hs256_secret=TEST_JWT_SECRET)
    if request.param == "postgres":
        settings = ConsentSettings(database_url=request.getfixturevalue("pg_url"), **auth)
    else:
        settings = ConsentSettings(data_dir=str(tmp_path), **auth)
    clock = FixedClock(NOW)
    app = create_app(settings, clock=clock)
    rt = app.state.runtime
    await prepare_database(rt)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", auth=Tokens()) as http:
        yield http, rt, clock
    await rt.engine.dispose()


async def outbox(rt) -> list[tuple[str, dict]]:
    async with rt.engine.connect() as conn:
        rows = (
            await conn.execute(sa.select(rt.outbox.c.routing_key, rt.outbox.c.body).order_by(rt.outbox.c.id))
        ).all()
    return [(r.routing_key, json.loads(r.body)) for r in rows]


async def open_case(rt, case_id, patient: str = ADULTS[0]) -> None:
    """Planning asked consent for a case the recording unit owns (the owner records its consent)."""
    from services.consent import handlers
    from services.consent.adapters.store import SqlConsentRepository
    from shared.contracts import ConsentRequested

    async with rt.unit_of_work() as uow:
        await handlers.request_consent(
            ConsentRequested(
                case_id=case_id,
                patient_identifier=patient,
                proposed_recipients=(SOC, VC),
                requested_by_hsa_id=REC,
            ),
            repo=SqlConsentRepository(uow.conn),
            clock=FixedClock(NOW),
        )


def consent_body(**kw) -> dict:
    body = {
        "patient_identifier": ADULTS[0],
        "decision": "granted",
        "purposes": ["draw-up-plan", "share-information"],
        "recipients": [SOC, VC],
        "recorded_by_hsa_id": REC,
        "method": "written",
        "valid_until": (NOW + timedelta(days=90)).isoformat(),
    }
    body.update(kw)
    return body


def ask(patient=ADULTS[0], recipient=SOC, category="sip-plan", purpose="share-information", **kw) -> dict:
    return {
        "patient_identifier": patient,
        "recipient_hsa_id": recipient,
        "category": category,
        "purpose": purpose,
        "requested_by": "planning",
        **kw,
    }


async def test_decision_permits_and_denies_with_reasons_and_every_answer_is_audited(service):
    http, _rt, _clock = service
    r = await http.post(
        "/consents",
        json=consent_body(excluded_organisations=[SCHOOL], excluded_categories=["psychiatric"]),
    )
    assert r.status_code == 201, r.text
    consent = r.json()
    assert consent["excluded_organisations"] == [SCHOOL] and consent["excluded_categories"] == ["psychiatric"]
    assert consent["effective_status"] == "active" and consent["version"] == 1

    cases = [
        (ask(), "permit", "consent-permits", "consent", consent["id"]),
        (ask(category="psychiatric"), "deny", "category-excluded", "none", consent["id"]),
        (ask(recipient=SCHOOL), "deny", "organisation-excluded", "none", consent["id"]),
        (ask(purpose="send-invitation"), "deny", "purpose-not-consented", "none", consent["id"]),
        (ask(category="lus-ready-for-discharge"), "permit", "lus-statutory-notice", "lus-logistics", None),
        (ask(patient=ADULTS[1]), "deny", "no-consent", "none", None),
        (
            ask(at=(NOW + timedelta(days=90)).isoformat()),  # the end date itself: expired
            "deny",
            "consent-expired",
            "none",
            consent["id"],
        ),
    ]
    audit_ids = []
    for body, decision, reason, basis, consent_id in cases:
        d = await http.post("/decisions", json=body)
        assert d.status_code == 200, d.text
        got = d.json()
        assert (got["decision"], got["reason"], got["basis"], got["consent_id"]) == (
            decision,
            reason,
            basis,
            consent_id,
        ), body
        audit_ids.append(got["audit_event_id"])

    # the person sees who received — or was refused — what: plain JSON …
    log = (await http.get("/audit", params={"patient": ADULTS[0]})).json()
    assert len(log) == 6 and {e["id"] for e in log} == set(audit_ids) - {audit_ids[5]}
    assert {(e["recipient_hsa_id"], e["category"], e["outcome"]) for e in log} >= {
        (SOC, "sip-plan", "permit"),
        (SCHOOL, "sip-plan", "deny"),
    }
    denied = (await http.get("/audit", params={"patient": ADULTS[0], "outcome": "deny"})).json()
    assert {e["reason"] for e in denied} == {
        "category-excluded",
        "organisation-excluded",
        "purpose-not-consented",
        "consent-expired",
    }
    # … and as a FHIR searchset of R4 AuditEvents
    from fhir.resources.R4B.bundle import Bundle

    fhir = await http.get(
        "/fhir/AuditEvent",
        params={"patient": f"http://electronichealth.se/identifier/personnummer|{ADULTS[0]}"},
    )
    assert fhir.status_code == 200 and fhir.headers["content-type"].startswith("application/fhir+json")
    bundle = Bundle.model_validate(fhir.json())
    # the six decisions, and the two searches of the trail above (every read of it is audited)
    assert bundle.type == "searchset" and bundle.total == 8
    events = [e.resource for e in bundle.entry if e.resource.type.code != "rest"]
    assert len(events) == 6
    assert all(e.get_resource_type() == "AuditEvent" for e in events)
    permit = next(e for e in events if e.outcomeDesc == "permit: consent-permits")
    assert permit.agent[0].who.identifier.value == SOC and permit.agent[0].requestor is False
    assert any(ent.what.reference == f"Consent/{consent['id']}" for ent in permit.entity)
    assert {e.outcome for e in events} == {"0", "4"}
    other = (await http.get("/fhir/AuditEvent", params={"patient": ADULTS[1]})).json()
    assert other["total"] == 1 and other["entry"][0]["resource"]["outcomeDesc"] == "deny: no-consent"
    one = await http.get(f"/fhir/AuditEvent/{audit_ids[0]}")
    assert one.status_code == 200 and one.json()["id"] == audit_ids[0]
    bad = await http.get("/fhir/AuditEvent", params={"patient": "191212121213"})
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"


async def test_withdrawal_is_immediate_irreversible_kept_and_announced(service):
    http, rt, clock = service
    case_id = uuid4()
    await open_case(rt, case_id)
    consent = (await http.post("/consents", json=consent_body(case_id=str(case_id)))).json()
    assert (await http.post("/decisions", json=ask())).json()["decision"] == "permit"

    clock.advance(timedelta(hours=2))
    w = await http.post(f"/consents/{consent['id']}/withdraw", json={"recorded_by_hsa_id": REC})
    assert w.status_code == 200, w.text
    assert w.json()["status"] == "withdrawn" and w.json()["effective_status"] == "withdrawn"
    assert w.json()["status_changed_at"] == (NOW + timedelta(hours=2)).isoformat().replace("+00:00", "Z")
    # immediately: the very next decision is a deny that names the withdrawn consent
    after = (await http.post("/decisions", json=ask())).json()
    assert (after["decision"], after["reason"], after["consent_id"]) == (
        "deny",
        "consent-withdrawn",
        consent["id"],
    )
    # history kept: the record is still readable, and withdrawing again changes nothing
    again = await http.post(f"/consents/{consent['id']}/withdraw", json={"recorded_by_hsa_id": REC})
    assert again.status_code == 200 and again.json()["version"] == 2
    assert (await http.get(f"/consents/{consent['id']}")).json()["status"] == "withdrawn"
    # irreversible: there is no way back; a new consent is a new record
    fresh = (await http.post("/consents", json=consent_body())).json()
    assert fresh["id"] != consent["id"]
    assert (await http.post("/decisions", json=ask())).json()["consent_id"] == fresh["id"]
    assert [c["status"] for c in (await http.get("/consents", params={"patient": ADULTS[0]})).json()] == [
        "withdrawn",
        "active",
    ]
    # announced once, with the case and no second event for the repeated withdrawal
    events = [b for k, b in await outbox(rt) if k == "consent.withdrawn.v1"]
    assert len(events) == 1
    assert events[0]["consent_id"] == consent["id"] and events[0]["cause"] == "withdrawal"
    assert events[0]["case_id"] == consent["case_id"]
    # rules: not in the future, a declined consent has nothing to withdraw, unknown id
    declined = (await http.post("/consents", json=consent_body(decision="declined"))).json()
    assert (
        await http.post(f"/consents/{declined['id']}/withdraw", json={"recorded_by_hsa_id": REC})
    ).status_code == 409
    future = await http.post(
        f"/consents/{fresh['id']}/withdraw",
        json={"recorded_by_hsa_id": REC, "withdrawn_at": (clock.now() + timedelta(hours=1)).isoformat()},
    )
    assert future.status_code == 422
    assert (
        await http.post(f"/consents/{uuid4()}/withdraw", json={"recorded_by_hsa_id": REC})
    ).status_code == 404
    audit = (await http.get("/audit", params={"patient": ADULTS[0]})).json()
    assert [e["action"] for e in audit].count("withdrawal") == 1


async def test_cancellation_is_separate_audited_and_reopens_the_request(service):
    http, rt, _clock = service
    case_id = uuid4()
    from services.consent import handlers
    from services.consent.adapters.store import SqlConsentRepository
    from shared.contracts import ConsentRequested

    async with rt.unit_of_work() as uow:
        await handlers.request_consent(
            ConsentRequested(
                case_id=case_id,
                patient_identifier=ADULTS[0],
                proposed_recipients=(SOC,),
                requested_by_hsa_id=REC,
            ),
            repo=SqlConsentRepository(uow.conn),
            clock=FixedClock(NOW),
        )
    consent = (await http.post("/consents", json=consent_body(case_id=str(case_id), recipients=[]))).json()
    assert consent["recipients"] == [SOC]
    assert (await http.get("/consent-requests")).json() == []

    c = await http.post(
        f"/consents/{consent['id']}/cancel", json={"cancelled_by_hsa_id": REC, "reason": "wrong-person"}
    )
    assert c.status_code == 200, c.text
    assert c.json()["status"] == "cancelled" and c.json()["status_reason"] == "wrong-person"
    # a cancelled consent never existed for decisions …
    d = (await http.post("/decisions", json=ask())).json()
    assert (d["decision"], d["reason"], d["consent_id"]) == ("deny", "no-consent", None)
    # … the case waits for the right consent again, downstream is told, and it is in the audit log
    assert [p["case_id"] for p in (await http.get("/consent-requests")).json()] == [str(case_id)]
    withdrawn = [b for k, b in await outbox(rt) if k == "consent.withdrawn.v1"]
    assert [(b["consent_id"], b["cause"]) for b in withdrawn] == [(consent["id"], "cancellation")]
    log = (await http.get("/audit", params={"patient": ADULTS[0]})).json()
    [entry] = [e for e in log if e["action"] == "cancellation"]
    assert entry["reason"] == "wrong-person" and entry["requested_by"] == REC
    assert entry["consent_id"] == consent["id"]
    fhir = (await http.get(f"/fhir/Consent/{consent['id']}")).json()
    assert fhir["status"] == "entered-in-error"
    # cancelling a withdrawn consent is allowed (it was wrongly registered) and is not withdrawal
    other = (await http.post("/consents", json=consent_body())).json()
    await http.post(f"/consents/{other['id']}/withdraw", json={"recorded_by_hsa_id": REC})
    c2 = await http.post(
        f"/consents/{other['id']}/cancel", json={"cancelled_by_hsa_id": REC, "reason": "duplicate"}
    )
    assert c2.json()["status"] == "cancelled" and c2.json()["version"] == 3
    bad = await http.post(
        f"/consents/{other['id']}/cancel", json={"cancelled_by_hsa_id": REC, "reason": "oops"}
    )
    assert bad.status_code == 422


async def test_a_child_needs_both_guardians_under_joint_custody_and_one_objection_blocks(service):
    http, _rt, clock = service
    g1, g2 = ADULTS[3], ADULTS[4]
    child = {
        "patient_identifier": CHILD,
        "given_by": "guardians",
        "custody": "joint",
        "child_view": "agrees",
    }
    only_one = await http.post(
        "/consents", json=consent_body(**child, guardians=[{"stance": "consents", "identifier": g1}])
    )
    assert only_one.status_code == 422 and "needs 2 guardian" in only_one.text
    objection = await http.post(
        "/consents",
        json=consent_body(
            **child,
            guardians=[{"stance": "consents", "identifier": g1}, {"stance": "objects", "identifier": g2}],
        ),
    )
    assert objection.status_code == 422 and "one guardian objects" in objection.text
    no_view = await http.post(
        "/consents",
        json=consent_body(
            **{**child, "child_view": None},
            guardians=[{"stance": "consents", "identifier": g1}, {"stance": "consents", "identifier": g2}],
        ),
    )
    assert no_view.status_code == 422 and "child_view" in no_view.text
    # the objection is recorded as a declined consent: it blocks
    declined = await http.post(
        "/consents",
        json=consent_body(
            **child,
            decision="declined",
            guardians=[{"stance": "consents", "identifier": g1}, {"stance": "objects", "identifier": g2}],
        ),
    )
    assert declined.status_code == 201, declined.text
    d = (await http.post("/decisions", json=ask(patient=CHILD))).json()
    assert (d["decision"], d["reason"]) == ("deny", "consent-declined")
    # both guardians consent later: a new record, and it permits
    clock.advance(timedelta(minutes=5))
    both = await http.post(
        "/consents",
        json=consent_body(
            **child,
            guardians=[{"stance": "consents", "identifier": g1}, {"stance": "consents", "identifier": g2}],
        ),
    )
    assert both.status_code == 201, both.text
    d = (await http.post("/decisions", json=ask(patient=CHILD))).json()
    assert (d["decision"], d["consent_id"]) == ("permit", both.json()["id"])
    # when the child turns 18 the guardians' consent lapses
    clock.advance(timedelta(minutes=5))
    at_18 = datetime(2035, 1, 2, tzinfo=UTC).isoformat()
    long = await http.post(
        "/consents",
        json=consent_body(
            **child,
            valid_until=datetime(2036, 1, 1, tzinfo=UTC).isoformat(),
            guardians=[{"stance": "consents", "identifier": g1}, {"stance": "consents", "identifier": g2}],
        ),
    )
    d = (await http.post("/decisions", json=ask(patient=CHILD, at=at_18))).json()
    assert (d["decision"], d["reason"], d["consent_id"]) == (
        "deny",
        "guardian-consent-lapsed",
        long.json()["id"],
    )
    # sole custody: one guardian suffices
    clock.advance(timedelta(minutes=5))
    sole = await http.post(
        "/consents",
        json=consent_body(
            **{**child, "custody": "sole"}, guardians=[{"stance": "consents", "identifier": g1}]
        ),
    )
    assert sole.status_code == 201
    fhir = (await http.get(f"/fhir/Consent/{both.json()['id']}")).json()
    assert [p["identifier"]["value"] for p in fhir["performer"]] == [g1, g2]
    assert {"url": "urn:sip-suite:extension:child-view", "valueCode": "agrees"} in fhir["extension"]


async def test_fhir_r4_by_default_r5_when_asked_and_history(service):
    from fhir.resources.bundle import Bundle as BundleR5
    from fhir.resources.consent import Consent as ConsentR5
    from fhir.resources.R4B.bundle import Bundle as BundleR4
    from fhir.resources.R4B.consent import Consent as ConsentR4
    from pydantic import ValidationError

    http, _rt, clock = service
    consent = (
        await http.post(
            "/consents",
            json=consent_body(excluded_organisations=[SCHOOL], excluded_categories=["health-data"]),
        )
    ).json()
    cid = consent["id"]

    r4 = await http.get(f"/fhir/Consent/{cid}")
    assert r4.headers["content-type"] == "application/fhir+json; fhirVersion=4.0"
    m4 = ConsentR4.model_validate(r4.json())
    assert m4.provision.type == "permit" and m4.scope.coding[0].code == "patient-privacy"
    assert [p.type for p in m4.provision.provision] == ["deny", "deny"]
    assert m4.provision.provision[0].actor[0].reference.identifier.value == SCHOOL
    assert m4.provision.provision[1].code[0].coding[0].code == "health-data"
    with pytest.raises(ValidationError):
        ConsentR5.model_validate(r4.json())  # R4 is not R5 (scope, patient, provision.type)

    for r5 in (
        await http.get(f"/fhir/Consent/{cid}", params={"_fhirVersion": "5.0"}),
        await http.get(f"/fhir/Consent/{cid}", headers={"Accept": "application/fhir+json; fhirVersion=5.0"}),
    ):
        assert (
            r5.status_code == 200 and r5.headers["content-type"] == "application/fhir+json; fhirVersion=5.0"
        )
        m5 = ConsentR5.model_validate(r5.json())
        assert m5.decision == "permit" and m5.subject.identifier.value == ADULTS[0]
        assert {g.identifier.value for g in m5.grantee} == {SOC, VC}
        assert m5.provision[0].provision[0].actor[0].reference.identifier.value == SCHOOL
        with pytest.raises(ValidationError):
            ConsentR4.model_validate(r5.json())
    unsupported = await http.get(f"/fhir/Consent/{cid}", params={"_fhirVersion": "3.0"})
    assert unsupported.status_code == 406 and unsupported.json()["resourceType"] == "OperationOutcome"

    clock.advance(timedelta(days=1))
    await http.post(f"/consents/{cid}/withdraw", json={"recorded_by_hsa_id": REC})
    now4 = ConsentR4.model_validate((await http.get(f"/fhir/Consent/{cid}")).json())
    assert now4.status == "inactive" and now4.meta.versionId == "2"
    assert now4.provision.period.end.isoformat() == clock.now().isoformat()

    h4 = await http.get(f"/fhir/Consent/{cid}/_history")
    b4 = BundleR4.model_validate(h4.json())
    assert b4.type == "history" and b4.total == 2
    assert [(e.resource.meta.versionId, e.resource.status) for e in b4.entry] == [
        ("2", "inactive"),
        ("1", "active"),
    ]
    h5 = await http.get(f"/fhir/Consent/{cid}/_history", params={"_fhirVersion": "5.0"})
    b5 = BundleR5.model_validate(h5.json())
    assert [e.resource.status for e in b5.entry] == ["inactive", "active"]
    assert b5.entry[1].resource.decision == "permit"
    v1 = ConsentR4.model_validate((await http.get(f"/fhir/Consent/{cid}/_history/1")).json())
    assert v1.status == "active" and v1.meta.versionId == "1"
    assert (await http.get(f"/fhir/Consent/{cid}/_history/9")).status_code == 404
    assert (await http.get(f"/fhir/Consent/{uuid4()}/_history")).status_code == 404


async def test_expiry_at_the_end_date(service):
    http, _rt, clock = service
    end = NOW + timedelta(days=10)
    consent = (await http.post("/consents", json=consent_body(valid_until=end.isoformat()))).json()
    clock.advance(timedelta(days=10) - timedelta(seconds=1))
    assert (await http.post("/decisions", json=ask())).json()["decision"] == "permit"
    clock.advance(timedelta(seconds=1))
    d = (await http.post("/decisions", json=ask())).json()
    assert (d["decision"], d["reason"]) == ("deny", "consent-expired")
    assert (await http.get(f"/consents/{consent['id']}")).json()["effective_status"] == "expired"
    assert (await http.get(f"/fhir/Consent/{consent['id']}")).json()["status"] == "inactive"
