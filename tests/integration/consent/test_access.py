"""Who may do what in consent (services/consent/access.py), in-process with authentication on: every
route by every caller kind — the case's owner, a participant, an organisation the consent covers, one
it excludes, an operator, the person, a guardian, a stranger, another person, an organisation not in
the directory (403) and no token (401) — with the status and, for reads, exactly the records seen;
the acting organisation always from the token; searches filtered before paging; every read audited.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import httpx
import pytest
import sqlalchemy as sa
import yaml

from services.consent import handlers
from services.consent.adapters.store import SqlConsentRepository, audit_events
from services.consent.app import create_app, prepare_database
from services.consent.settings import ConsentSettings
from shared.auth import mint_person_token, mint_token
from shared.clock import FixedClock
from shared.contracts import ConsentRequested
from tests.conftest import TEST_JWT_SECRET
from tests.support.personnummer import ADULTS, CHILD

REPO = Path(__file__).resolve().parents[3]
NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
OWNER, PARTICIPANT, HOSPITAL = "SE2321000016-VC001", "SE2120001-SOC0180", "SE2321000016-SJH01"
COVERED, EXCLUDED = "SE2321000016-VC002", "SE2120001-SOC0184"
OPERATOR, STRANGER, UNKNOWN = "SE2321000016-OPS01", "SE2321000016-XYZ01", "SE9999999999-NOPE1"
PERSON, OTHER_PERSON, GUARDIAN, GUARDIAN_2 = ADULTS[20], ADULTS[21], ADULTS[22], ADULTS[23]


def org(hsa_id: str, **kw) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(TEST_JWT_SECRET, hsa_id, subject='tester', **kw)}"}


def person(pnr: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_person_token(TEST_JWT_SECRET, pnr)}"}


CALLERS: dict[str, dict[str, str]] = {
    "owner": org(OWNER),
    "participant": org(PARTICIPANT),
    "covered": org(COVERED),
    "excluded": org(EXCLUDED),
    "operator": org(OPERATOR, operator=True),
    "person": person(PERSON),
    "guardian": person(GUARDIAN),
    "stranger": org(STRANGER),
    "other person": person(OTHER_PERSON),
}
READERS = {"owner", "participant", "covered", "operator", "person"}  # of the adult's consent


@dataclass
class World:
    http: httpx.AsyncClient
    rt: object
    case: UUID
    child_case: UUID
    consent: str
    child_consent: str

    async def audit_rows(self) -> list[sa.Row]:
        async with self.rt.engine.connect() as conn:  # type: ignore[attr-defined]
            return list(
                (await conn.execute(audit_events.select().order_by(audit_events.c.recorded_at))).all()
            )


def directory(tmp: Path) -> Path:
    data = yaml.safe_load((REPO / "config/directory.yaml").read_text())
    for hsa_id in (OPERATOR, STRANGER):
        data["organisations"].append({"hsa_id": hsa_id, "name": hsa_id, "kind": "other", "channels": []})
    path = tmp / "directory.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


async def request_consent(rt, case_id: UUID, pnr: str, owner: str, participants: tuple[str, ...]) -> None:
    async with rt.unit_of_work() as uow:
        await handlers.request_consent(
            ConsentRequested(
                case_id=case_id, patient_identifier=pnr, proposed_recipients=participants,
                requested_by_hsa_id=owner, is_child=pnr == CHILD,
            ),
            repo=SqlConsentRepository(uow.conn),
            clock=FixedClock(NOW),
        )  # fmt: skip


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def world(request, tmp_path) -> AsyncIterator[World]:
    common = dict(
        directory_path=str(directory(tmp_path)), auth_required=True, jwt_hs256_secret=TEST_JWT_SECRET
    )
    if request.param == "postgres":
        settings = ConsentSettings(database_url=request.getfixturevalue("pg_url"), **common)
    else:
        settings = ConsentSettings(data_dir=str(tmp_path), **common)
    app = create_app(settings, clock=FixedClock(NOW))
    rt = app.state.runtime
    await prepare_database(rt)
    case, child_case = uuid4(), uuid4()
    await request_consent(rt, case, PERSON, OWNER, (OWNER, PARTICIPANT, HOSPITAL))
    await request_consent(rt, child_case, CHILD, OWNER, (OWNER, PARTICIPANT))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as http:
        r = await http.post("/consents", headers=CALLERS["owner"], json={
            "case_id": str(case), "patient_identifier": PERSON, "decision": "granted",
            "recipients": [OWNER, PARTICIPANT, COVERED], "excluded_organisations": [EXCLUDED],
        })  # fmt: skip
        assert r.status_code == 201, r.text
        c = await http.post("/consents", headers=CALLERS["participant"], json={
            "case_id": str(child_case), "patient_identifier": CHILD, "decision": "granted",
            "given_by": "guardians", "custody": "joint", "child_view": "agrees", "recipients": [OWNER],
            "guardians": [{"stance": "consents", "identifier": GUARDIAN},
                          {"stance": "consents", "identifier": GUARDIAN_2}],
        })  # fmt: skip
        assert c.status_code == 201, c.text
        yield World(http, rt, case, child_case, r.json()["id"], c.json()["id"])
    await rt.engine.dispose()


async def test_reading_a_consent_by_each_caller_kind(world: World) -> None:
    w = world
    paths = [
        f"/consents/{w.consent}",
        f"/fhir/Consent/{w.consent}",
        f"/fhir/Consent/{w.consent}/_history",
        f"/fhir/Consent/{w.consent}/_history/1",
    ]
    for name, headers in CALLERS.items():
        for path in paths:
            r = await w.http.get(path, headers=headers)
            want = 200 if name in READERS else 403
            assert r.status_code == want, (name, path, r.status_code, r.text[:200])
            if path.startswith("/fhir"):
                assert r.json()["resourceType"] == (
                    "OperationOutcome" if want == 403 else r.json()["resourceType"]
                )
                if want == 403:
                    assert r.json()["issue"][0]["code"] == "forbidden"
                    assert PERSON not in r.text
            elif want == 200:
                assert r.json()["id"] == w.consent
    # the child's consent: its guardians (either), the recorder, the owner; not the adult person
    for headers, want in (
        (person(GUARDIAN), 200), (person(GUARDIAN_2), 200), (CALLERS["participant"], 200),
        (CALLERS["owner"], 200), (CALLERS["person"], 403), (CALLERS["covered"], 403), (person(CHILD), 200),
    ):  # fmt: skip
        r = await w.http.get(f"/consents/{w.child_consent}", headers=headers)
        assert r.status_code == want, (headers, r.text)


async def test_no_token_is_401_and_an_organisation_not_in_the_directory_403_on_every_route(world: World):
    w = world
    routes = [
        ("GET", f"/consents/{w.consent}", None), ("GET", "/consents", None),
        ("GET", f"/fhir/Consent/{w.consent}", None), ("GET", f"/fhir/Consent/{w.consent}/_history", None),
        ("GET", f"/fhir/Consent/{w.consent}/_history/1", None), ("GET", "/consent-requests", None),
        ("GET", "/audit", None), ("GET", "/fhir/AuditEvent", None), ("GET", f"/fhir/AuditEvent/{uuid4()}", None),
        ("POST", "/consents", {"patient_identifier": PERSON, "decision": "declined"}),
        ("POST", f"/consents/{w.consent}/withdraw", {}),
        ("POST", f"/consents/{w.consent}/cancel", {"reason": "duplicate"}),
        ("POST", "/decisions", {"patient_identifier": PERSON, "recipient_hsa_id": COVERED,
                                "category": "sip-plan", "purpose": "share-information"}),
    ]  # fmt: skip
    for method, path, body in routes:
        r = await w.http.request(method, path, json=body, params={"patient": PERSON})
        assert r.status_code == 401, (method, path, r.status_code)
        r = await w.http.request(method, path, json=body, params={"patient": PERSON}, headers=org(UNKNOWN))
        assert r.status_code == 403, (method, path, r.status_code)
    # and nothing changed
    r = await w.http.get(f"/consents/{w.consent}", headers=CALLERS["owner"])
    assert r.json()["status"] == "active"


async def test_searching_consents_returns_exactly_what_each_caller_may_read(world: World) -> None:
    w = world
    for name, headers in CALLERS.items():
        r = await w.http.get("/consents", params={"patient": PERSON}, headers=headers)
        assert r.status_code == 200, (name, r.text)
        want = {w.consent} if name in READERS else set()
        assert {c["id"] for c in r.json()} == want, name
    # a person without patient=: their own; a guardian asking for the child: the child's
    own = await w.http.get("/consents", headers=CALLERS["person"])
    assert [c["id"] for c in own.json()] == [w.consent]
    child = await w.http.get("/consents", params={"patient": CHILD}, headers=CALLERS["guardian"])
    assert [c["id"] for c in child.json()] == [w.child_consent]
    assert (await w.http.get("/consents", params={"patient": CHILD}, headers=CALLERS["person"])).json() == []
    # an organisation names the patient
    assert (await w.http.get("/consents", headers=CALLERS["owner"])).status_code == 422


async def test_recording_takes_the_acting_organisation_from_the_token(world: World) -> None:
    w = world
    new_case = uuid4()
    await request_consent(w.rt, new_case, OTHER_PERSON, OWNER, (PARTICIPANT,))
    body = {"case_id": str(new_case), "patient_identifier": OTHER_PERSON, "decision": "granted"}
    # a stranger (or an organisation the person's other consent covers) records for another unit's case
    for name in ("stranger", "covered", "excluded", "operator", "person", "guardian"):
        r = await w.http.post("/consents", json=body, headers=CALLERS[name])
        assert r.status_code == 403, (name, r.text)
    # a case consent does not know
    r = await w.http.post("/consents", json={**body, "case_id": str(uuid4())}, headers=CALLERS["owner"])
    assert r.status_code == 403
    # recorded_by_hsa_id naming someone else than the token
    r = await w.http.post(
        "/consents", json={**body, "recorded_by_hsa_id": OWNER}, headers=CALLERS["participant"]
    )
    assert r.status_code == 403 and "token" in r.json()["detail"]
    # the participant records it; it is recorded as the participant's
    r = await w.http.post(
        "/consents", json={**body, "recorded_by_hsa_id": PARTICIPANT}, headers=CALLERS["participant"]
    )
    assert r.status_code == 201 and r.json()["recorded_by_hsa_id"] == PARTICIPANT
    # without a case: any organisation, which becomes the recorder
    r = await w.http.post(
        "/consents",
        json={"patient_identifier": OTHER_PERSON, "decision": "declined"},
        headers=CALLERS["stranger"],
    )
    assert r.status_code == 201 and r.json()["recorded_by_hsa_id"] == STRANGER
    # an idempotency key is the recorder's own: another organisation's same key makes its own record
    key = {"Idempotency-Key": "same-key"}
    b = {"patient_identifier": OTHER_PERSON, "decision": "declined"}
    a1 = await w.http.post("/consents", json=b, headers={**CALLERS["stranger"], **key})
    a2 = await w.http.post("/consents", json=b, headers={**CALLERS["covered"], **key})
    assert a1.status_code == a2.status_code == 201 and a1.json()["id"] != a2.json()["id"]


async def test_withdrawal_by_the_person_a_guardian_and_the_units_that_take_part(world: World) -> None:
    w = world
    for name in ("covered", "excluded", "operator", "stranger", "other person", "guardian"):
        r = await w.http.post(f"/consents/{w.consent}/withdraw", json={}, headers=CALLERS[name])
        assert r.status_code == 403, (name, r.text)
    r = await w.http.post(
        f"/consents/{w.consent}/withdraw", json={"recorded_by_hsa_id": OWNER}, headers=CALLERS["participant"]
    )
    assert r.status_code == 403
    # the person withdraws with their own e-ID
    r = await w.http.post(f"/consents/{w.consent}/withdraw", json={}, headers=CALLERS["person"])
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "withdrawn" and r.json()["status_changed_by_hsa_id"] == "person"
    fhir = (await w.http.get(f"/fhir/Consent/{w.consent}", headers=CALLERS["person"])).json()
    change = next(e for e in fhir["extension"] if e["url"].endswith("status-change"))
    assert {"url": "by", "valueCode": "person"} in change["extension"]
    # no longer in force: the covered organisation reads it no more; the owner does
    assert (await w.http.get(f"/consents/{w.consent}", headers=CALLERS["covered"])).status_code == 403
    assert (await w.http.get(f"/consents/{w.consent}", headers=CALLERS["owner"])).status_code == 200
    # a guardian withdraws the child's consent
    g = await w.http.post(f"/consents/{w.child_consent}/withdraw", json={}, headers=CALLERS["guardian"])
    assert g.status_code == 200 and g.json()["status_changed_by_hsa_id"] == "guardian"
    withdrawals = [r for r in await w.audit_rows() if r.action == "withdrawal"]
    assert {(r.patient_identifier, r.recipient_hsa_id) for r in withdrawals} == {
        (PERSON, None),
        (CHILD, None),
    }


async def test_cancellation_by_the_recorder_or_the_owner_only(world: World) -> None:
    w = world
    for name in ("participant", "covered", "operator", "person", "stranger"):
        r = await w.http.post(
            f"/consents/{w.consent}/cancel", json={"reason": "duplicate"}, headers=CALLERS[name]
        )
        assert r.status_code == 403, name
    r = await w.http.post(
        f"/consents/{w.consent}/cancel", json={"reason": "duplicate", "cancelled_by_hsa_id": PARTICIPANT},
        headers=CALLERS["owner"],
    )  # fmt: skip
    assert r.status_code == 403
    # the owner cancels the child's consent, which the participant recorded; the recorder cancels its own
    r = await w.http.post(
        f"/consents/{w.child_consent}/cancel", json={"reason": "duplicate"}, headers=CALLERS["owner"]
    )
    assert r.status_code == 200 and r.json()["status_changed_by_hsa_id"] == OWNER
    r = await w.http.post(
        f"/consents/{w.consent}/cancel", json={"reason": "duplicate"}, headers=CALLERS["owner"]
    )
    assert r.status_code == 200 and r.json()["status"] == "cancelled"


async def test_consent_requests_and_decisions(world: World) -> None:
    w = world
    pending = uuid4()
    await request_consent(w.rt, pending, OTHER_PERSON, OWNER, (PARTICIPANT, HOSPITAL))
    for name, headers in CALLERS.items():
        r = await w.http.get("/consent-requests", headers=headers)
        assert r.status_code == 200
        want = {str(pending)} if name in ("owner", "participant", "operator") else set()
        assert {p["case_id"] for p in r.json()} == want, name
    ask = {"patient_identifier": PERSON, "recipient_hsa_id": COVERED, "category": "sip-plan",
           "purpose": "share-information", "case_id": str(w.case)}  # fmt: skip
    for name, headers in CALLERS.items():
        r = await w.http.post("/decisions", json=ask, headers=headers)
        want = 200 if name in ("owner", "participant", "operator") else 403
        assert r.status_code == want, (name, r.text)
    no_case = {k: v for k, v in ask.items() if k != "case_id"}
    assert (await w.http.post("/decisions", json=no_case, headers=CALLERS["operator"])).status_code == 200
    assert (await w.http.post("/decisions", json=no_case, headers=CALLERS["owner"])).status_code == 403
    # the hospital takes part in the case (participant)
    assert (await w.http.post("/decisions", json=ask, headers=org(HOSPITAL))).status_code == 200


async def decide(w: World, recipient: str, n: int = 1, case: UUID | None = None) -> None:
    body = {"patient_identifier": PERSON, "recipient_hsa_id": recipient, "category": "sip-plan",
            "purpose": "share-information"}  # fmt: skip
    if case is not None:
        body["case_id"] = str(case)
    for _ in range(n):
        r = await w.http.post("/decisions", json=body, headers=CALLERS["operator"])
        assert r.status_code == 200


async def test_the_audit_trail_is_filtered_per_caller_before_the_limit(world: World) -> None:
    w = world
    await decide(w, COVERED, 3)  # the oldest: for the covered organisation
    await decide(w, STRANGER, 2)
    await decide(w, EXCLUDED, 1)
    await decide(w, PARTICIPANT, 10, case=w.case)  # newer, and many: of the owner's case
    everything = (await w.http.get("/audit", params={"patient": PERSON}, headers=CALLERS["operator"])).json()
    assert len([e for e in everything if e["action"] == "decision"]) == 16

    async def seen(headers: dict[str, str], **params) -> list[dict]:
        r = await w.http.get("/audit", params={"patient": PERSON, **params}, headers=headers)
        assert r.status_code == 200, r.text
        return r.json()

    # an organisation: what it received (or read), plus the entries of the cases it owns
    covered = await seen(CALLERS["covered"], limit=2)
    assert len(covered) == 2 and {e["recipient_hsa_id"] for e in covered} == {COVERED}
    assert {e["recipient_hsa_id"] for e in await seen(CALLERS["excluded"])} == {EXCLUDED}
    assert {e["recipient_hsa_id"] for e in await seen(CALLERS["stranger"])} == {STRANGER}
    owner = await seen(CALLERS["owner"], limit=1000)
    assert {e["recipient_hsa_id"] for e in owner if e["action"] == "decision"} == {PARTICIPANT}
    assert all(e["case_id"] == str(w.case) or e["recipient_hsa_id"] == OWNER for e in owner)
    # the person, an operator: the whole trail; another person, the adult's guardian-less trail: nothing
    assert len(await seen(CALLERS["person"], limit=1000)) >= 16
    assert await seen(CALLERS["other person"]) == []
    assert await seen(CALLERS["guardian"]) == []
    mine = await w.http.get("/audit", headers=CALLERS["person"])
    assert mine.status_code == 200 and all(e["action"] for e in mine.json())
    # the FHIR search: the same filter, before _count; total counts every match (that /audit search
    # itself is one more entry the organisation read)
    everything = len(await seen(CALLERS["covered"], limit=1000)) + 1
    b = await w.http.get(
        "/fhir/AuditEvent", params={"patient": PERSON, "_count": 2}, headers=CALLERS["covered"]
    )
    assert b.status_code == 200 and b.json()["total"] == everything and len(b.json()["entry"]) == 2
    assert all(
        any(a.get("who", {}).get("identifier", {}).get("value") == COVERED for a in e["resource"]["agent"])
        for e in b.json()["entry"]
    )
    # a guardian reads the child's trail
    await w.http.get(f"/consents/{w.child_consent}", headers=CALLERS["guardian"])
    child = await w.http.get("/audit", params={"patient": CHILD}, headers=CALLERS["guardian"])
    assert child.status_code == 200 and child.json()


async def test_one_audit_event_by_the_same_rule(world: World) -> None:
    w = world
    await decide(w, COVERED)
    await decide(w, STRANGER, case=w.case)
    entries = (await w.http.get("/audit", params={"patient": PERSON}, headers=CALLERS["operator"])).json()
    for_covered = next(e["id"] for e in entries if e["recipient_hsa_id"] == COVERED)
    of_case = next(e["id"] for e in entries if e["recipient_hsa_id"] == STRANGER)
    expect = {
        for_covered: {"covered", "operator", "person"},
        of_case: {"owner", "stranger", "operator", "person"},
    }
    for audit_id, allowed in expect.items():
        for name, headers in CALLERS.items():
            r = await w.http.get(f"/fhir/AuditEvent/{audit_id}", headers=headers)
            assert r.status_code == (200 if name in allowed else 403), (name, r.text[:200])
            if r.status_code == 403:
                assert r.json()["issue"][0]["code"] == "forbidden"


async def test_every_read_is_audited_with_the_reader_and_the_basis(world: World) -> None:
    w = world
    before = len(await w.audit_rows())
    await w.http.get(f"/consents/{w.consent}", headers=CALLERS["covered"])
    await w.http.get(f"/fhir/Consent/{w.consent}", headers=CALLERS["excluded"])  # refused: audited too
    await w.http.get(f"/consents/{w.child_consent}", headers=CALLERS["guardian"])
    await w.http.get("/consents", params={"patient": PERSON}, headers=CALLERS["owner"])
    await w.http.get("/consents", params={"patient": PERSON}, headers=CALLERS["stranger"])
    await w.http.get("/audit", headers=CALLERS["person"])
    await w.http.get("/fhir/AuditEvent", params={"patient": PERSON}, headers=CALLERS["operator"])
    await w.http.get("/consent-requests", headers=CALLERS["owner"])  # nothing pending: no person listed
    rows = (await w.audit_rows())[before:]
    got = [(r.action, r.outcome, r.basis, r.recipient_hsa_id, r.patient_identifier, r.reason) for r in rows]
    assert got == [
        ("read", "permit", "covered", COVERED, PERSON, f"Consent/{w.consent}"),
        ("read", "deny", "none", EXCLUDED, PERSON, f"Consent/{w.consent}"),
        ("read", "permit", "guardian", None, CHILD, f"Consent/{w.child_consent}"),
        ("search", "permit", "owner", OWNER, PERSON, "Consent?patient"),
        ("search", "deny", "none", STRANGER, PERSON, "Consent?patient"),
        ("search", "permit", "own-data", None, PERSON, "AuditEvent?patient"),
        ("search", "permit", "operator", OPERATOR, PERSON, "AuditEvent?patient"),
    ]
    assert all(r.channel == "http" and r.requested_by for r in rows)
    assert all(PERSON not in r.reason and CHILD not in r.reason for r in rows)
    # a person's read carries the token's subject, never a personnummer
    assert rows[2].requested_by == f"person-{GUARDIAN[-4:]}"
    # the read entries render as valid FHIR AuditEvents (rest / read, search-type)
    trail = (
        await w.http.get("/fhir/AuditEvent", params={"patient": PERSON}, headers=CALLERS["person"])
    ).json()
    kinds = {(e["resource"]["type"]["code"], e["resource"]["subtype"][0]["code"], e["resource"]["action"])
             for e in trail["entry"]}  # fmt: skip
    assert {("rest", "read", "R"), ("rest", "search-type", "E")} <= kinds
    when = datetime.fromisoformat(trail["entry"][0]["resource"]["recorded"])
    assert when - NOW < timedelta(seconds=1)
