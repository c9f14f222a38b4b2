"""The authorization matrix, tried from outside: every route of the three services — enumerated from
their own OpenAPI documents, each with its ``x-sip-access`` rule (shared/access.py) — called by every
caller kind (owner, participant, sending hospital, an organisation the consent covers, one it
excludes, an operator, the person, a guardian, a stranger, another person), by an organisation that is
not in the directory, and with no, forged, expired, ``alg: none`` and wrong-audience tokens, against
the services as processes on the real broker. For each call the status must be what the rule says;
for listings and searches exactly the records the caller may see, nothing else.

A route that has no rule, or that this test has no probe for, fails the test: a new endpoint cannot
slip in unauthorised.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from shared.access import CALLER_KINDS
from shared.auth import mint_token
from tests.e2e.authz_scenario import (
    CALLERS,
    COVERED,
    EXCLUDED,
    HOSPITAL,
    OPERATOR,
    OWNER,
    PARTICIPANT,
    PERSON,
    STRANGER,
    UNKNOWN,
    Scenario,
    Who,
    authenticated_suite,
    build,
    dump,
    org_headers,
)
from tests.support.infra import MailSink

pytestmark = [pytest.mark.e2e, pytest.mark.broker]

OPEN = {"/healthz", "/readyz", "/metrics", "/fhir/metadata", "/openapi.json", "/docs", "/redoc"}
RANK = {"denied": 0, "filtered": 1, "allowed": 2}


def bad_tokens() -> dict[str, dict[str, str]]:
    now = int(time.time())
    base = {"iss": "x", "sub": "x", "aud": "sip-suite", "iat": now, "exp": now + 600, "hsa_id": OWNER}
    return {
        "no token": {},
        "forged (another secret)": {
            "Authorization": f"Bearer {mint_token('another-secret-of-thirty-two-bytes-at-least', OWNER)}"
        },
        "expired": org_headers(OWNER, now=time.time() - 7200, ttl=600),
        "wrong audience": org_headers(OWNER, audience="someone-else"),
        "alg none": {"Authorization": "Bearer " + jwt.encode(base, key=None, algorithm="none")},
    }


@dataclass
class Probe:
    """How to call one route in the scenario, and what to check beyond the status."""

    request: Callable[[Scenario], tuple[str, dict[str, Any], Any]]  # path, query params, JSON body
    records: Callable[[Any], set[str]] | None = None  # the record keys of a listing's answer
    expected: Callable[[Scenario], dict[str, set[str]]] | None = None  # caller name → exact records
    verdicts: dict[str, str] = field(default_factory=dict)  # caller name → verdict, where not the rule's
    phase: int = 0  # reads first, then commands that change the scenario, the most drastic last


def ids(key: str = "id") -> Callable[[Any], set[str]]:
    return lambda body: {str(item[key]) for item in body}


def bundle_ids(body: Any) -> set[str]:
    return {e["resource"]["id"] for e in body.get("entry", [])}


def get(
    path: Callable[[Scenario], str], query: Callable[[Scenario], dict[str, Any]] | None = None, **params: Any
) -> Callable[[Scenario], tuple[str, dict, Any]]:
    return lambda sc: (path(sc), {**params, **(query(sc) if query else {})}, None)


def post(path: Callable[[Scenario], str], body: Callable[[Scenario], Any]) -> Callable[..., Any]:
    return lambda sc: (path(sc), {}, body(sc))


def everyone(sc: Scenario, **named: set[str]) -> dict[str, set[str]]:
    out = {w.name: set() for w in CALLERS}
    out.update({k.replace("_", " "): v for k, v in named.items()})
    return out


def cases_seen(sc: Scenario, *, operator: bool = True) -> dict[str, set[str]]:
    every = {sc.adult_case, sc.child_case, sc.pending_case}
    return everyone(
        sc, owner=every, participant=every, hospital=every, operator=every if operator else set(),
        person={sc.adult_case}, guardian={sc.child_case}, other_person={sc.pending_case},
    )  # fmt: skip


def plans_seen(sc: Scenario) -> dict[str, set[str]]:
    with_consent = {sc.adult_case, sc.child_case}
    return everyone(
        sc, owner={sc.adult_case, sc.child_case, sc.pending_case} & sc_plans(sc), participant=with_consent,
        hospital=with_consent, covered={sc.adult_case}, person={sc.adult_case}, guardian={sc.child_case},
        other_person={sc.pending_case} & sc_plans(sc),
    )  # fmt: skip


def sc_plans(sc: Scenario) -> set[str]:
    """The cases that have a CarePlan (the owner's search, checked against the three cases)."""
    return getattr(sc, "_plans", set())


CASE = "/cases/{case_id}"
PLAN = {
    "needs": ["Stöd i hemmet"], "goals": [{"id": "g1", "description": "Bo kvar hemma"}],
    "interventions": [{"id": "i1", "description": "Hemtjänst", "goal_ids": ["g1"],
                       "responsible": {"kind": "organisation", "hsa_id": PARTICIPANT}}],
    "overall_responsibility_hsa_id": OWNER, "coordination": "Vårdcentralen samordnar",
    "follow_up_date": "2031-06-01",
}  # fmt: skip
PROBES: dict[tuple[str, str, str], Probe] = {
    # ---- planning: reads -------------------------------------------------------------------------
    ("planning", "GET", "/cases"): Probe(get(lambda sc: "/cases", all="true"), ids(), cases_seen),
    ("planning", "GET", "/overview"): Probe(get(lambda sc: "/overview"), ids("case_id"), cases_seen),
    ("planning", "GET", CASE): Probe(get(lambda sc: f"/cases/{sc.adult_case}")),
    ("planning", "GET", CASE + "/deadlines"): Probe(get(lambda sc: f"/cases/{sc.adult_case}/deadlines")),
    ("planning", "GET", "/stays"): Probe(
        get(lambda sc: "/stays"),
        ids("stay_id"),
        lambda sc: everyone(sc, hospital=set(sc.episodes.values()), operator=set(sc.episodes.values())),
    ),
    ("planning", "GET", "/fhir/CarePlan"): Probe(get(lambda sc: "/fhir/CarePlan"), bundle_ids, plans_seen),
    ("planning", "GET", "/fhir/CarePlan/{plan_id}"): Probe(get(lambda sc: f"/fhir/CarePlan/{sc.adult_case}")),
    ("planning", "GET", "/fhir/CarePlan/{plan_id}/_history"): Probe(
        get(lambda sc: f"/fhir/CarePlan/{sc.adult_case}/_history")
    ),
    ("planning", "GET", "/fhir/CarePlan/{plan_id}/_history/{vid}"): Probe(
        get(lambda sc: f"/fhir/CarePlan/{sc.adult_case}/_history/1")
    ),
    ("planning", "GET", "/fhir/Provenance"): Probe(
        get(lambda sc: "/fhir/Provenance", lambda sc: {"target": f"CarePlan/{sc.adult_case}"})
    ),
    ("planning", "GET", "/fhir/Provenance/{provenance_id}"): Probe(
        get(lambda sc: f"/fhir/Provenance/{sc.adult_case}-1")
    ),
    ("planning", "POST", "/fhir/CarePlan/$validate"): Probe(
        post(lambda sc: "/fhir/CarePlan/$validate", lambda sc: {"resourceType": "CarePlan"})
    ),
    ("planning", "POST", "/fhir/CarePlan"): Probe(
        post(lambda sc: "/fhir/CarePlan", lambda sc: {"resourceType": "CarePlan"}), phase=1
    ),
    ("planning", "POST", "/fhir/$process-message"): Probe(
        post(lambda sc: "/fhir/$process-message", lambda sc: {"resourceType": "Bundle", "type": "message"})
    ),
    # ---- planning: the message store (operators only; the discharge notices arrived over AMQP) ----
    ("planning", "GET", "/messages"): Probe(get(lambda sc: "/messages")),
    ("planning", "POST", "/messages/search"): Probe(
        post(lambda sc: "/messages/search", lambda sc: {"patient": PERSON})
    ),
    ("planning", "GET", "/messages/{message_id}"): Probe(get(lambda sc: f"/messages/{sc_message(sc)}")),
    ("planning", "GET", "/messages/{message_id}/raw"): Probe(
        get(lambda sc: f"/messages/{sc_message(sc)}/raw")
    ),
    ("planning", "POST", "/messages/{message_id}/replay"): Probe(
        post(lambda sc: f"/messages/{sc_message(sc)}/replay", lambda sc: {}), phase=1
    ),
    # ---- planning: commands (on the adult's invited case: most steps are refused by its state) ----
    ("planning", "POST", CASE + "/accept"): Probe(
        post(lambda sc: f"/cases/{sc.adult_case}/accept", lambda sc: {}), phase=1
    ),
    ("planning", "POST", CASE + "/refuse"): Probe(
        post(lambda sc: f"/cases/{sc.adult_case}/refuse", lambda sc: {"reason": "Inte aktuellt"}), phase=1
    ),
    ("planning", "PUT", CASE + "/preferences"): Probe(
        lambda sc: (f"/cases/{sc.adult_case}/preferences", {}, {"interpreter_language": "ar"}), phase=1
    ),
    ("planning", "POST", CASE + "/invite"): Probe(
        post(lambda sc: f"/cases/{sc.adult_case}/invite", lambda sc: {}), phase=1
    ),
    ("planning", "PUT", CASE + "/meeting"): Probe(
        lambda sc: (
            f"/cases/{sc.adult_case}/meeting",
            {},
            {"start": "2031-01-07T09:00:00+01:00", "end": "2031-01-07T10:00:00+01:00", "location": "Rum 3"},
        ),
        phase=1,
    ),
    ("planning", "PUT", CASE + "/plan"): Probe(
        lambda sc: (f"/cases/{sc.adult_case}/plan", {}, PLAN), phase=1
    ),
    ("planning", "POST", CASE + "/plan/approve"): Probe(
        post(
            lambda sc: f"/cases/{sc.adult_case}/plan/approve",
            lambda sc: {"version": 999, "approved_by": "person", "method": "oral"},
        ),
        phase=1,
    ),
    ("planning", "POST", CASE + "/follow-up"): Probe(
        post(
            lambda sc: f"/cases/{sc.adult_case}/follow-up",
            lambda sc: {"outcome": "continue", "next_follow_up_date": "2031-06-01"},
        ),
        phase=1,
    ),
    ("planning", "POST", "/cases"): Probe(
        post(
            lambda sc: "/cases",
            lambda sc: {"patient_identifier": PERSON, "kommun_code": "0180", "proposed_by": "professional"},
        ),
        phase=1,
    ),
    ("planning", "POST", CASE + "/close"): Probe(
        post(lambda sc: f"/cases/{sc.pending_case}/close", lambda sc: {"reason": "Behovet upphörde"}), phase=3
    ),
    # ---- consent ---------------------------------------------------------------------------------
    ("consent", "GET", "/consents"): Probe(
        get(lambda sc: "/consents", patient=PERSON),
        ids(),
        lambda sc: everyone(
            sc,
            owner={sc.adult_consent},
            participant={sc.adult_consent},
            hospital={sc.adult_consent},
            covered={sc.adult_consent},
            operator={sc.adult_consent},
            person={sc.adult_consent},
        ),
    ),
    ("consent", "GET", "/fhir/Consent"): Probe(
        get(lambda sc: "/fhir/Consent", patient=PERSON),
        bundle_ids,
        lambda sc: everyone(
            sc,
            owner={sc.adult_consent},
            participant={sc.adult_consent},
            hospital={sc.adult_consent},
            covered={sc.adult_consent},
            operator={sc.adult_consent},
            person={sc.adult_consent},
        ),
    ),
    ("consent", "GET", "/consents/{consent_id}"): Probe(get(lambda sc: f"/consents/{sc.adult_consent}")),
    ("consent", "GET", "/fhir/Consent/{consent_id}"): Probe(
        get(lambda sc: f"/fhir/Consent/{sc.adult_consent}")
    ),
    ("consent", "GET", "/fhir/Consent/{consent_id}/_history"): Probe(
        get(lambda sc: f"/fhir/Consent/{sc.adult_consent}/_history")
    ),
    ("consent", "GET", "/fhir/Consent/{consent_id}/_history/{vid}"): Probe(
        get(lambda sc: f"/fhir/Consent/{sc.adult_consent}/_history/1")
    ),
    ("consent", "GET", "/consent-requests"): Probe(
        get(lambda sc: "/consent-requests"),
        ids("case_id"),
        lambda sc: everyone(
            sc,
            owner={sc.pending_case},
            participant={sc.pending_case},
            hospital={sc.pending_case},
            operator={sc.pending_case},
        ),
    ),
    ("consent", "POST", "/decisions"): Probe(
        post(
            lambda sc: "/decisions",
            lambda sc: {
                "patient_identifier": PERSON,
                "recipient_hsa_id": COVERED,
                "category": "sip-plan",
                "purpose": "share-information",
                "case_id": sc.adult_case,
            },
        ),
    ),
    ("consent", "GET", "/audit"): Probe(get(lambda sc: "/audit", patient=PERSON), ids()),
    ("consent", "GET", "/fhir/AuditEvent"): Probe(
        get(lambda sc: "/fhir/AuditEvent", patient=PERSON), bundle_ids
    ),
    ("consent", "GET", "/fhir/AuditEvent/{audit_id}"): Probe(
        get(lambda sc: f"/fhir/AuditEvent/{sc_audit(sc)}"),
        # an entry about the owner's read: the owner's own, and of the case it owns; no one else's
        verdicts={
            "participant": "denied",
            "hospital": "denied",
            "covered": "denied",
            "excluded": "denied",
            "stranger": "denied",
        },
    ),
    ("consent", "POST", "/consents"): Probe(
        post(
            lambda sc: "/consents",
            lambda sc: {
                "case_id": sc.adult_case,
                "patient_identifier": PERSON,
                "decision": "granted",
                "valid_until": "2001-01-01T00:00:00+00:00",
            },
        ),
        phase=1,
    ),
    ("consent", "POST", "/consents/{consent_id}/withdraw"): Probe(
        post(lambda sc: f"/consents/{sc.adult_consent}/withdraw", lambda sc: {}), phase=2
    ),
    ("consent", "POST", "/consents/{consent_id}/cancel"): Probe(
        post(lambda sc: f"/consents/{sc.adult_consent}/cancel", lambda sc: {"reason": "registration-error"}),
        phase=3,
    ),
    # ---- notify ----------------------------------------------------------------------------------
    ("notify", "GET", "/notifications"): Probe(
        get(lambda sc: "/notifications", lambda sc: {"case_id": sc.adult_case}),
        ids(),
        lambda sc: everyone(
            sc,
            owner=sc_notes(sc, None),
            participant=sc_notes(sc, PARTICIPANT),
            hospital=sc_notes(sc, HOSPITAL),
            operator=sc_notes(sc, None),
        ),
    ),
    ("notify", "GET", "/deliveries"): Probe(
        get(lambda sc: "/deliveries", lambda sc: {"case_id": sc.adult_case, "limit": 500}),
        ids(),
        lambda sc: everyone(
            sc,
            owner=sc_notes(sc, None),
            participant=sc_notes(sc, PARTICIPANT),
            hospital=sc_notes(sc, HOSPITAL),
            operator=sc_notes(sc, None),
        ),
    ),
    ("notify", "GET", "/fhir/Communication"): Probe(
        get(
            lambda sc: "/fhir/Communication",
            lambda sc: {"about": f"CarePlan/{sc.adult_case}", "_count": 1000},
        ),
        bundle_ids,
        lambda sc: everyone(
            sc,
            owner=sc_notes(sc, None),
            participant=sc_notes(sc, PARTICIPANT),
            hospital=sc_notes(sc, HOSPITAL),
            operator=sc_notes(sc, None),
        ),
    ),
    ("notify", "GET", "/notifications/{notification_id}"): Probe(
        get(lambda sc: f"/notifications/{sc_note(sc)}"),
        verdicts={"hospital": "denied", "covered": "denied"},
    ),
    ("notify", "GET", "/fhir/Communication/{notification_id}"): Probe(
        get(lambda sc: f"/fhir/Communication/{sc_note(sc)}"),
        verdicts={"hospital": "denied", "covered": "denied"},
    ),
}


def sc_notes(sc: Scenario, recipient: str | None) -> set[str]:
    notes: list[dict[str, Any]] = sc._notes  # type: ignore[attr-defined]
    return {n["id"] for n in notes if recipient is None or n["recipient_hsa_id"] == recipient}


def sc_note(sc: Scenario) -> str:
    """The participant's (kommun's) invitation about the adult's case."""
    return next(iter(sorted(sc_notes(sc, PARTICIPANT))))


def sc_message(sc: Scenario) -> int:
    """A stored inbound message (the newest: an effected discharge notice — a replay changes nothing)."""
    found = getattr(sc, "_message", None)
    if found is None:
        page = sc.client("planning", org_headers(OPERATOR, operator=True)).get("/messages").json()
        found = sc._message = page["items"][0]["id"]  # type: ignore[attr-defined]
    return int(found)


def sc_audit(sc: Scenario) -> str:
    """An AuditEvent about the person that records something the owner asked."""
    return sc._audit_id  # type: ignore[attr-defined]


def verdict_for(who: Who, rule: dict[str, Any], probe: Probe) -> str:
    if who.name in probe.verdicts:
        return probe.verdicts[who.name]
    callers = rule["callers"]
    if "excluded" in who.kinds and callers["excluded"] == "denied":
        return "denied"
    if not who.kinds:  # a person with no part in the adult's case: only what every caller may do
        return "allowed" if set(callers.values()) == {"allowed"} else "denied"
    return max((callers[k] for k in who.kinds), key=RANK.__getitem__)


def check(
    sc: Scenario, service: str, method: str, path: str, who: Who, rule: dict[str, Any], probe: Probe
) -> str | None:
    url, params, body = probe.request(sc)
    with sc.client(service, who.headers) as client:
        r = client.request(method, url, params=params, json=body)
    verdict = verdict_for(who, rule, probe)
    label = f"{service} {method} {path} as {who.name} ({verdict})"
    if r.status_code >= 500 or r.status_code == 401:
        return f"{label}: {r.status_code} {r.text[:200]}"
    listing = probe.records is not None and r.status_code == 200 and method == "GET"
    got = probe.records(r.json()) if listing and probe.records else None
    if probe.expected is not None and method == "GET":
        # a listing: exactly the records this caller may see, whatever its relation to the adult's case
        want = probe.expected(sc)[who.name]
        if r.status_code in (403, 404) and not want:
            return None
        if got != want:
            return f"{label}: {r.status_code}, records {sorted(got or [])} != expected {sorted(want)}"
        return None
    if verdict == "denied":
        if r.status_code in (403, 404) or (listing and got == set()):
            return None
        return f"{label}: expected 403/404 or nothing, got {r.status_code} {dump(got or r.text[:200])}"
    if r.status_code in (403, 404):
        return f"{label}: refused {r.status_code} {r.text[:200]}"
    return None


@pytest.fixture
def scenario(amqp_url: str, tmp_path: Path, smtp: MailSink):
    import asyncio

    with authenticated_suite(amqp_url, tmp_path, smtp) as suite:
        sc = asyncio.run(build(suite))
        owner_plans = sc.as_owner("planning").get("/fhir/CarePlan").json()
        sc._plans = bundle_ids(owner_plans)  # type: ignore[attr-defined]
        sc._notes = (
            sc.client("notify", org_headers(OPERATOR, operator=True))
            .get(  # type: ignore[attr-defined]
                "/notifications", params={"case_id": sc.adult_case}
            )
            .json()
        )
        audit = (
            sc.client("consent", org_headers(OPERATOR, operator=True))
            .get("/audit", params={"patient": PERSON})
            .json()
        )
        sc._audit_id = next(e["id"] for e in audit if e.get("recipient_hsa_id") == OWNER)  # type: ignore[attr-defined]
        yield sc


def test_every_route_by_every_caller_kind_gets_what_its_rule_says(scenario: Scenario) -> None:
    sc = scenario
    routes: list[tuple[int, str, str, str, dict[str, Any], Probe]] = []
    unprobed: list[str] = []
    for service in ("planning", "consent", "notify"):
        doc = httpx.get(f"{sc.suite.url(service)}/openapi.json", timeout=10).json()
        for path, operations in doc["paths"].items():
            if path in OPEN:
                continue
            for method, op in operations.items():
                rule = op.get("x-sip-access")
                key = (service, method.upper(), path)
                if rule is None:
                    unprobed.append(f"{key}: no x-sip-access rule")
                    continue
                assert set(rule["callers"]) == set(CALLER_KINDS), key
                probe = PROBES.get(key)
                if probe is None:
                    unprobed.append(f"{key}: no probe in this test")
                    continue
                routes.append((probe.phase, service, method.upper(), path, rule, probe))
    assert unprobed == []
    assert len(routes) >= 35

    failures: list[str] = []
    for _, service, method, path, rule, probe in sorted(routes, key=lambda r: (r[0], r[1], r[3], r[2])):
        # bad tokens and unknown organisations first: nothing they send is looked at
        url, params, body = probe.request(sc)
        for label, headers in bad_tokens().items():
            r = httpx.request(method, sc.suite.url(service) + url, params=params, json=body, headers=headers)
            if r.status_code != 401:
                failures.append(f"{service} {method} {path} with {label}: {r.status_code}, not 401")
        r = httpx.request(method, sc.suite.url(service) + url, params=params, json=body,
                          headers=org_headers(UNKNOWN))  # fmt: skip
        if r.status_code != 403:
            failures.append(
                f"{service} {method} {path} by an organisation not in the directory: {r.status_code}"
            )
        for who in CALLERS:
            problem = check(sc, service, method, path, who, rule, probe)
            if problem:
                failures.append(problem)
    assert failures == [], "\n".join(failures)


def test_audit_listings_show_each_caller_only_what_concerns_it(scenario: Scenario) -> None:
    """The audit trail of the person: whole for the person and an operator, for an organisation only
    what it received or was refused (and the cases it owns); nothing for a stranger or another person."""
    sc = scenario
    for org in (COVERED, EXCLUDED):  # one permitted read, one refused
        sc.client("planning", org_headers(org)).get(f"/fhir/CarePlan/{sc.adult_case}")
    as_operator = sc.client("consent", org_headers(OPERATOR, operator=True))
    everything = {e["id"]: e for e in as_operator.get("/audit", params={"patient": PERSON}).json()}
    assert everything
    for who in CALLERS:
        r = sc.client("consent", who.headers).get("/audit", params={"patient": PERSON})
        seen = r.json() if r.status_code == 200 else []
        after = {
            e["id"]: e for e in as_operator.get("/audit", params={"patient": PERSON, "limit": 1000}).json()
        }
        assert {e["id"] for e in seen} <= set(after), who.name
        if who.name in ("person", "operator"):
            assert len(seen) >= len(everything) - 1 and r.status_code == 200, who.name
        elif who.name in ("stranger", "other person", "guardian"):
            assert [e for e in seen if e.get("recipient_hsa_id") not in (STRANGER,)] == [], who.name
        elif who.name == "excluded":
            assert seen and all(e["recipient_hsa_id"] == EXCLUDED for e in seen), seen
        elif who.name == "covered":
            assert seen and all(e["recipient_hsa_id"] == COVERED for e in seen), seen
