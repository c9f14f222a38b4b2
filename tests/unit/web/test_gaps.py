"""The gaps left in the pages for people (issue 20), with the APIs faked at the HTTP edge as in
test_pages.py: the interpreter language by name in the reader's language, a guardian's own page with
the child's case, consent and audit trail (as the APIs allow; a stranger sees nothing of it), and the
web's /metrics (route templates, sign-ins, API errors; no personal data)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from services.web.views import care_plan, wishes_text
from shared.languages import LANGUAGE_NAMES, InvalidLanguageCode, interpreter_language_name
from tests.support.personnummer import ADULTS, CHILD
from tests.unit.web.test_pages import (
    CARE_PLAN,
    CASE,
    PERSON,
    PNR_ANYWHERE,
    SOC,
    VC,
    FakeApis,
    all_urls,
    make_client,
    sign_in,
)

GUARDIAN, STRANGER = ADULTS[22], ADULTS[21]
CHILD_CASE, CHILD_CONSENT = str(uuid4()), str(uuid4())


# ---- 1. the interpreter language by name --------------------------------------------------------


def test_the_language_names_are_shared_and_validated() -> None:
    assert interpreter_language_name("ar", "sv") == "arabiska"
    assert interpreter_language_name("ar", "en") == "Arabic"
    assert interpreter_language_name("sr-Latn", "sv") == "serbiska"
    assert interpreter_language_name("wo", "sv") == "wo"  # not listed: the code
    with pytest.raises(InvalidLanguageCode) as refused:
        interpreter_language_name("arabiska, patienten har demens", "sv")
    assert "demens" not in str(refused.value)  # the rule is named, never the value
    assert all(len(v) == 2 and all(v) for v in LANGUAGE_NAMES.values())


def test_the_wishes_name_the_interpreter_language_in_the_readers_language() -> None:
    assert wishes_text("plats: Hemma; tolk: ar; bildstöd", "sv") == "plats: Hemma; tolk: arabiska; bildstöd"
    assert wishes_text("tolk: ar; bildstöd", "en") == "interpreter: Arabic; bildstöd"
    assert wishes_text("tolk: wo", "sv") == "tolk: wo"  # an unlisted code stays a code
    assert wishes_text("tolk: inte en kod!", "en") == "tolk: inte en kod!"  # not a code: left as it is
    assert care_plan(CARE_PLAN, lang="en").wishes == "interpreter: Arabic; bildstöd"


@pytest.fixture
def client() -> Iterator[TestClient]:
    with make_client(FakeApis()) as c:
        yield c


@pytest.mark.parametrize(("lang", "name"), [("sv", "tolk: arabiska"), ("en", "interpreter: Arabic")])
def test_the_plan_page_shows_the_interpreter_language_by_name(
    client: TestClient, lang: str, name: str
) -> None:
    sign_in(client, organisation=SOC)
    page = client.get(f"/plans/{CASE}?lang={lang}")
    assert page.status_code == 200 and f'<html lang="{lang}">' in page.text
    wishes = re.search(r'data-testid="meeting-wishes">([^<]*)<', page.text)
    assert wishes and name in wishes.group(1), wishes
    assert not re.search(r"\bar\b", wishes.group(1))  # never the bare code where a name is known


# ---- 2. the guardian's own page -----------------------------------------------------------------


class GuardianApis(FakeApis):
    """The APIs as they answer a guardian named on the child's consent, and a person who is not: the
    caller is told by the personnummer in their own token (the APIs decide)."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse_child_consent = False

    def handler(self, request: httpx.Request) -> httpx.Response:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        pnr = jwt.decode(token, options={"verify_signature": False}).get("personal_identity_number")
        if pnr not in (GUARDIAN, STRANGER):
            return super().handler(request)
        self.calls.append(request)
        path, patient = request.url.path, request.url.params.get("patient")
        guardian = pnr == GUARDIAN
        if path == "/cases":
            return httpx.Response(200, json=[self.child_case()] if guardian else [])
        if path == f"/consents/{CHILD_CONSENT}":
            if not guardian or self.refuse_child_consent:
                return httpx.Response(403, json={"detail": "refused"})
            return httpx.Response(200, json=self.child_consent())
        if path == "/consents":
            return httpx.Response(200, json=[self.child_consent()] if guardian and patient == CHILD else [])
        if path == "/audit":
            if not (guardian and patient == CHILD):
                return httpx.Response(200, json=[])
            return httpx.Response(200, json=[
                {"id": str(uuid4()), "recorded_at": "2026-12-02T10:00:00Z", "action": "read", "outcome": "permit",
                 "reason": f"CarePlan/{CHILD_CASE}", "basis": "covered", "recipient_hsa_id": SOC},
                {"id": str(uuid4()), "recorded_at": "2026-12-02T11:00:00Z", "action": "read", "outcome": "permit",
                 "reason": f"Consent/{CHILD_CONSENT}", "basis": "guardian", "recipient_hsa_id": None},
            ])  # fmt: skip
        return httpx.Response(404, json={"detail": "no such thing"})

    @staticmethod
    def child_case() -> dict[str, Any]:
        return {"id": CHILD_CASE, "reference": "SIP-2026-CHILD1", "state": "invited", "patient": "2017********",
                "is_child": True, "opened_at": "2026-12-01T08:00:00Z", "consent_id": CHILD_CONSENT}  # fmt: skip

    @staticmethod
    def child_consent() -> dict[str, Any]:
        return {"id": CHILD_CONSENT, "patient_identifier": CHILD, "case_id": CHILD_CASE, "decision": "granted",
                "purposes": ["share-information"], "recipients": [VC, SOC], "status": "active",
                "effective_status": "active", "recorded_at": "2026-12-01T08:30:00Z", "given_by": "guardians",
                "guardians": [{"stance": "consents", "identifier": GUARDIAN},
                              {"stance": "consents", "identifier": ADULTS[23]}]}  # fmt: skip


@pytest.fixture
def guardian_apis() -> GuardianApis:
    return GuardianApis()


def test_a_guardian_sees_the_childs_case_consent_and_trail(guardian_apis: GuardianApis) -> None:
    with make_client(guardian_apis) as client:
        sign_in(client, person=GUARDIAN)
        me = client.get("/me")
    assert me.status_code == 200
    text = me.text
    assert f'data-testid="my-case" data-case-id="{CHILD_CASE}"' in text and 'data-testid="child-case"' in text
    assert 'data-testid="child"' in text and "Ditt barn: ärende SIP-2026-CHILD1" in text
    assert f'data-consent-id="{CHILD_CONSENT}"' in text
    assert f'href="/me/consents/{CHILD_CONSENT}/withdraw"' in text  # a guardian may withdraw (the API allows)
    assert f'data-recipient="{SOC}"' in text and "Barnet eller en vårdnadshavare" in text
    # the child's number went only to the consent API (patient=), never onto the page or into a URL of it
    asked = {(c.url.path, c.url.params.get("patient")) for c in guardian_apis.calls}
    assert {(f"/consents/{CHILD_CONSENT}", None), ("/consents", CHILD), ("/audit", CHILD)} <= asked
    for number in (CHILD, GUARDIAN, ADULTS[23]):
        assert number not in text and number[2:] not in text
    assert not [
        u for u in all_urls(text) if PNR_ANYWHERE.search(u.replace(CHILD_CASE, "").replace(CHILD_CONSENT, ""))
    ]


def test_a_guardian_page_in_english_names_the_child(guardian_apis: GuardianApis) -> None:
    with make_client(guardian_apis) as client:
        sign_in(client, person=GUARDIAN)
        me = client.get("/me?lang=en")
    assert "Your child: case SIP-2026-CHILD1" in me.text and "The child or a guardian" in me.text


def test_a_person_not_named_on_the_childs_consent_sees_nothing_of_it(guardian_apis: GuardianApis) -> None:
    with make_client(guardian_apis) as client:
        sign_in(client, person=STRANGER)
        me = client.get("/me")
    assert me.status_code == 200
    assert CHILD_CASE not in me.text and CHILD_CONSENT not in me.text and 'data-testid="child"' not in me.text
    assert not [c for c in guardian_apis.calls if c.url.params.get("patient")]  # no child asked about


def test_a_child_consent_the_api_refuses_is_left_out_not_an_error(guardian_apis: GuardianApis) -> None:
    guardian_apis.refuse_child_consent = True
    with make_client(guardian_apis) as client:
        sign_in(client, person=GUARDIAN)
        me = client.get("/me")
    assert me.status_code == 200
    assert f'data-case-id="{CHILD_CASE}"' in me.text  # planning lists the case
    assert CHILD_CONSENT not in me.text.replace(f'data-case-id="{CHILD_CASE}"', "")
    assert not [c for c in guardian_apis.calls if c.url.params.get("patient")]


def test_the_persons_own_page_asks_about_no_child() -> None:
    apis = FakeApis()
    with make_client(apis) as client:
        sign_in(client, person=PERSON)
        assert client.get("/me").status_code == 200
    # the own case's consent is in the own list: nothing more is asked
    assert {c.url.path for c in apis.calls} == {"/cases", "/consents", "/audit"}
    assert not [c for c in apis.calls if c.url.params.get("patient")]


# ---- 3. /metrics --------------------------------------------------------------------------------


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def value(text: str, name: str, **labels: str) -> float:
    return sum(
        v for n, ls, v in samples(text) if n == name and all(ls.get(k) == x for k, x in labels.items())
    )


def test_metrics_count_requests_by_route_template_sign_ins_and_api_errors() -> None:
    apis = FakeApis()
    with make_client(apis) as client:
        r = client.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert "set-cookie" not in r.headers  # open, like every service's: no sign-in, no session
        sign_in(client, person=PERSON)
        client.get("/me")
        client.get(f"/plans/{CASE}")
        client.get(f"/plans/{uuid4()}/nope")
        apis.status[f"/fhir/CarePlan/{CASE}"] = 500
        client.get(f"/plans/{CASE}")
        apis.status[f"/fhir/CarePlan/{CASE}"] = 404
        client.get(f"/plans/{CASE}")
        client.get("/dev/signin")
        text = client.get("/metrics").text
    assert value(text, "sip_http_requests_total", route="/plans/{plan_id}", status="200", method="GET") == 1
    assert value(text, "sip_http_requests_total", route="/plans/{plan_id}", status="503") == 1
    assert value(text, "sip_http_requests_total", route="/me", status="200") == 1
    assert value(text, "sip_http_requests_total", route="unmatched", status="404") == 1
    assert value(text, "sip_http_request_duration_seconds_count", route="/plans/{plan_id}") == 3
    assert value(text, "sip_web_signins_total", kind="citizen", outcome="ok") == 1
    assert (
        value(text, "sip_web_signins_total", kind="staff", outcome="ok") == 0
    )  # every series from the start
    assert value(text, "sip_web_api_errors_total", service="planning", error="server") == 1
    assert value(text, "sip_web_api_errors_total", service="planning", error="refused") == 1
    assert value(text, "sip_web_api_errors_total", service="consent", error="unavailable") == 0
    assert value(text, "sip_service_info", service="web") == 1


def test_no_personal_data_in_the_metrics_after_page_views(guardian_apis: GuardianApis) -> None:
    with make_client(guardian_apis) as client:
        sign_in(client, person=PERSON)
        for path in ("/me", f"/plans/{CASE}", f"/me/consents/{uuid4()}/withdraw"):
            client.get(path)
        sign_in(client, person=GUARDIAN)
        client.get("/me")
        client.get(f"/plans/{CHILD_CASE}")
        sign_in(client, organisation=VC)
        client.get(f"/cases/{CASE}")
        text = client.get("/metrics").text
    for number in (PERSON, GUARDIAN, CHILD):
        assert number not in text and number[2:] not in text
    labels = [v for _, ls, _ in samples(text) for v in ls.values()]
    assert labels and not [v for v in labels if PNR_ANYWHERE.search(v) or CASE in v or CHILD_CASE in v]
    routes = {ls["route"] for n, ls, _ in samples(text) if n == "sip_http_requests_total"}
    assert {"/me", "/plans/{plan_id}", "/cases/{case_id}", "/dev/signin"} <= routes
