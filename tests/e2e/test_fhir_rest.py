"""The FHIR REST layer from outside, with an off-the-shelf FHIR client library (fhirpy) against the three
services as processes, authentication on: paging with ``_count=2`` through ``next`` yields exactly the
records each caller may see, once each, and ``total`` is right — CarePlan, Consent and AuditEvent; every
/fhir route of each service is in its CapabilityStatement and every error under /fhir is an
OperationOutcome; every Bundle's fullUrls are absolute from the configured public base URL.

One test, one suite: starting the services is most of the time this takes (and on PostgreSQL a
test's databases are dropped when it ends)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhirpy import SyncFHIRClient

from shared.identifiers import PERSONNUMMER_SYSTEM
from tests.conftest import TEST_JWT_SECRET
from tests.e2e.authz_scenario import (
    CHILD,
    COVERED,
    OPERATOR,
    OWNER,
    PARTICIPANT,
    PERSON,
    STRANGER,
    Scenario,
    authenticated_suite,
    build,
    mint_token,
    org_headers,
    person_headers,
)
from tests.support.fhir_checks import check_bundle, every_route_advertised, walk_errors
from tests.support.infra import MailSink
from tests.support.personnummer import ADULTS

pytestmark = [pytest.mark.e2e, pytest.mark.broker]


def client(sc: Scenario, service: str, headers: dict[str, str]) -> SyncFHIRClient:
    return SyncFHIRClient(f"{sc.suite.url(service)}/fhir", authorization=headers["Authorization"])


def token(hsa_id: str, **kw: Any) -> str:
    return mint_token(TEST_JWT_SECRET, hsa_id, subject="fhirpy", **kw)


def paged(c: SyncFHIRClient, resource_type: str, **params: Any) -> list[str]:
    """Every page through the server's next links, as fhirpy follows them."""
    return [r.id for r in c.resources(resource_type).search(**params).limit(2).fetch_all()]


def raw_pages(sc: Scenario, service: str, headers: dict[str, str], path: str, **params: Any) -> list[dict]:
    base = sc.suite.url(service)
    http = httpx.Client(timeout=15, headers=headers)
    bundles = [http.get(f"{base}{path}", params=params).json()]
    while nxt := [link["url"] for link in bundles[-1]["link"] if link["relation"] == "next"]:
        assert nxt[0].startswith(f"{base}/fhir/"), nxt[0]
        bundles.append(http.get(nxt[0]).json())
    for b in bundles:
        check_bundle(b, base)
    return bundles


def quiet_trail(sc: Scenario, headers: dict[str, str]) -> int:
    """Wait until the person's audit trail stops growing (reads in planning reach consent by broker)."""
    http = sc.client("consent", headers)
    last, deadline = -1, time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(1.0)
        n = http.get("/fhir/AuditEvent", params={"patient": PERSON, "_summary": "count"}).json()["total"]
        if n == last + 1:  # only that count's own search was added
            return n
        last = n
    raise AssertionError("the audit trail kept growing")


def test_fhir_clients_page_through_exactly_what_each_caller_may_see(
    amqp_url: str, tmp_path: Path, smtp: MailSink
) -> None:
    with authenticated_suite(amqp_url, tmp_path, smtp) as suite:
        sc = asyncio.run(build(suite))
        owner = client(sc, "planning", org_headers(OWNER))

        # ---- CarePlan: three more plans of the owner's, proposed over FHIR (one conditionally) ----
        proposed = []
        for i, pnr in enumerate((ADULTS[24], ADULTS[25], ADULTS[26])):
            plan = owner.resource(
                "CarePlan", status="draft", intent="proposal",
                subject={"identifier": {"system": PERSONNUMMER_SYSTEM, "value": pnr}},
                author={"identifier": {"system": "urn:oid:1.2.752.29.4.19", "value": OWNER}},
                identifier=[{"system": "urn:example:journal", "value": f"E2E-{i}"}],
            )  # fmt: skip
            plan.save()
            proposed.append(plan.id)
        again = httpx.post(
            f"{suite.url('planning')}/fhir/CarePlan",
            json=owner.resources("CarePlan")
            .search(_id=proposed[0])
            .limit(1)
            .fetch_raw()["entry"][0]["resource"],
            headers={**org_headers(OWNER), "If-None-Exist": "identifier=urn:example:journal|E2E-0"},
        )
        assert again.status_code == 200 and again.json()["id"] == proposed[0], again.text[:300]
        found = owner.resources("CarePlan").search(identifier="urn:example:journal|E2E-1").fetch_all()
        assert [p.id for p in found] == [proposed[1]]

        with_plan = {
            c for c in (sc.adult_case, sc.child_case, sc.pending_case)
            if httpx.get(f"{suite.url('planning')}/fhir/CarePlan/{c}", headers=org_headers(OWNER)).status_code == 200
        }  # fmt: skip
        expected = {
            OWNER: with_plan | set(proposed),
            COVERED: {sc.adult_case},
            STRANGER: set(),
        }
        assert len(expected[OWNER]) >= 5
        for hsa_id, want in expected.items():
            c = SyncFHIRClient(f"{suite.url('planning')}/fhir", authorization=f"Bearer {token(hsa_id)}")
            ids = paged(c, "CarePlan")
            assert sorted(ids) == sorted(want), hsa_id  # once each, none missing
            assert c.resources("CarePlan").count() == len(want), hsa_id
            bundles = raw_pages(
                sc, "planning", org_headers(hsa_id), "/fhir/CarePlan", _count=2, _total="accurate"
            )
            assert all(b["total"] == len(want) for b in bundles)
        person = SyncFHIRClient(
            f"{suite.url('planning')}/fhir", authorization=person_headers(PERSON)["Authorization"]
        )
        assert paged(person, "CarePlan") == [sc.adult_case]

        # ---- Consent: more of the person's consents, recorded by the owner and by a participant ----
        def record(recorder: str) -> str:  # a consent without a case: the recorder's own, for itself
            r = httpx.post(f"{suite.url('consent')}/consents", headers=org_headers(recorder), json={
                "patient_identifier": PERSON, "decision": "granted", "recipients": [recorder],
            })  # fmt: skip
            assert r.status_code == 201, r.text
            return str(r.json()["id"])

        mine = [record(OWNER) for _ in range(3)]
        theirs = [record(PARTICIPANT) for _ in range(2)]
        for headers, want in (
            (org_headers(OWNER), {sc.adult_consent, *mine}),
            (org_headers(PARTICIPANT), {sc.adult_consent, *theirs}),
            (org_headers(COVERED), {sc.adult_consent}),
            (org_headers(OPERATOR, operator=True), {sc.adult_consent, *mine, *theirs}),
            (org_headers(STRANGER), set()),
        ):
            c = client(sc, "consent", headers)
            ids = paged(c, "Consent", patient=PERSON)
            assert sorted(ids) == sorted(want)
            bundles = raw_pages(
                sc, "consent", headers, "/fhir/Consent", patient=PERSON, _count=2, _total="accurate"
            )
            assert all(b["total"] == len(want) for b in bundles)
        assert paged(client(sc, "consent", person_headers(PERSON)), "Consent") != []
        assert CHILD

        # ---- AuditEvent: the whole trail (operator) and an organisation's part of it ----
        operator_headers = org_headers(OPERATOR, operator=True)
        quiet_trail(sc, operator_headers)
        for headers in (operator_headers, org_headers(COVERED)):
            before = [
                e["resource"]["id"]
                for b in raw_pages(sc, "consent", headers, "/fhir/AuditEvent", patient=PERSON, _count=1000)
                for e in b.get("entry", [])
            ]
            bundles = raw_pages(sc, "consent", headers, "/fhir/AuditEvent", patient=PERSON, _count=2)
            ids = [e["resource"]["id"] for b in bundles for e in b.get("entry", [])]
            # the trail as it was at the first page: what the search before it saw, and that search
            assert len(ids) == len(set(ids)) == bundles[0]["total"] and len(bundles) >= 2
            assert ids[1:] == before or ids == before, (len(ids), len(before))
            fhirpy_ids = paged(client(sc, "consent", headers), "AuditEvent", patient=PERSON)
            assert len(fhirpy_ids) == len(set(fhirpy_ids)) and set(ids) <= set(fhirpy_ids)

        # ---- every /fhir route advertised; every error an OperationOutcome (as processes) ----
        async def walks() -> None:
            for service, headers in (("planning", org_headers(OWNER)), ("consent", operator_headers),
                                     ("notify", org_headers(OWNER))):  # fmt: skip
                async with httpx.AsyncClient(base_url=suite.url(service), timeout=15) as http:
                    await every_route_advertised(http)
                    assert await walk_errors(http, headers) > 5
                    statement = (await http.get("/fhir/metadata")).json()
                    assert statement["implementation"]["url"] == f"{suite.url(service)}/fhir"

        asyncio.run(walks())
