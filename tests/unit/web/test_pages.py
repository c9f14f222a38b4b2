"""The web service's pages and security basics (issue 20), with Starlette's TestClient and the APIs
faked at the HTTP edge (httpx.MockTransport): session cookie flags, CSRF on every POST, logout ends
the session, the development sign-in off by default, no personnummer in any URL or log, the API's 403
and 404 as pages, the language switch, the PKCE authorization request, and the pages' contents."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient

from services.web.app import CSRF_FIELD, create_app
from services.web.sessions import COOKIE
from services.web.settings import WebSettings
from shared.access import routes
from tests.conftest import TEST_JWT_SECRET
from tests.support.personnummer import ADULTS

PERSON = ADULTS[20]
VC, SOC, SJH = "SE2321000016-VC001", "SE2120001-SOC0180", "SE2321000016-SJH01"
CASE, CONSENT = str(uuid4()), str(uuid4())
PNR_ANYWHERE = re.compile(r"(?<!\d)(\d{6}|\d{8})[-+]?\d{4}(?!\d)")


def person_ref() -> dict[str, Any]:
    return {"identifier": {"system": "http://electronichealth.se/identifier/personnummer", "value": PERSON}}


def org(hsa: str, name: str) -> dict[str, Any]:
    return {"identifier": {"system": "urn:oid:1.2.752.29.4.19", "value": hsa}, "display": name}


MEETING_AT = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
CARE_PLAN: dict[str, Any] = {
    "resourceType": "CarePlan", "id": CASE, "meta": {"versionId": "3", "lastUpdated": "2026-12-04T10:00:00Z"},
    "identifier": [{"system": "urn:sip-suite:sip-case", "value": "SIP-2026-ABC123"}],
    "status": "active", "intent": "plan", "title": "Samordnad individuell plan SIP-2026-ABC123",
    "description": "Vårdcentralen samordnar.", "subject": person_ref(), "author": org(VC, "Vårdcentralen Södermalm"),
    "contained": [
        {"resourceType": "CareTeam", "id": "careteam", "participant": [
            {"role": [{"text": "Personen"}], "member": person_ref()},
            {"role": [{"text": "Kommunens socialtjänst"}], "member": org(SOC, "Stockholms stad, socialtjänsten")},
        ]},
        {"resourceType": "Appointment", "id": "meeting", "status": "booked",
         "start": MEETING_AT.isoformat(), "end": (MEETING_AT + timedelta(hours=1)).isoformat(),
         "comment": "Plats: Rum 3; Video: https://video.example/abc", "participant": []},
        {"resourceType": "Condition", "id": "need-1", "code": {"text": "Stöd i hemmet"}, "subject": person_ref()},
        {"resourceType": "Goal", "id": "goal-g1", "description": {"text": "Bo kvar hemma"},
         "target": [{"dueDate": "2027-06-01"}], "subject": person_ref()},
        {"resourceType": "Task", "id": "follow-up", "owner": org(VC, "Vårdcentralen Södermalm"),
         "restriction": {"period": {"end": "2027-03-01"}}, "for": person_ref()},
    ],
    "activity": [
        {"detail": {"kind": "Task", "goal": [{"reference": "#goal-g1"}], "status": "not-started",
                    "scheduledPeriod": {"end": "2027-02-01"}, "performer": [org(SOC, "Stockholms stad, socialtjänsten")],
                    "description": "Hemtjänst morgon och kväll"}},
        {"detail": {"kind": "Task", "goal": [{"reference": "#goal-g1"}], "status": "not-started",
                    "performer": [{**person_ref(), "display": "Personen själv"}], "description": "Promenad"}},
    ],
    "note": [{"text": "Personens önskemål om mötet: tolk: ar; bildstöd"}],
}  # fmt: skip


class FakeApis:
    """planning, consent and notify at the HTTP edge: answers by path, records what was asked."""

    def __init__(self) -> None:
        self.calls: list[httpx.Request] = []
        self.status: dict[str, int] = {}
        now = datetime.now(UTC)
        self.overview = [
            {"case_id": str(uuid4()), "case_reference": "SIP-2026-LATER1", "state": "invited", "owner_hsa_id": VC,
             "next_deadline": "meeting", "due_at": (now + timedelta(days=5)).isoformat(), "breached_unmet": 0},
            {"case_id": CASE, "case_reference": "SIP-2026-ABC123", "state": "consent_pending", "owner_hsa_id": VC,
             "next_deadline": "invitation", "due_at": (now - timedelta(hours=5)).isoformat(), "breached_unmet": 1},
        ]  # fmt: skip

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        path = request.url.path
        if path in self.status:
            return httpx.Response(self.status[path], json={"detail": "refused"})
        if path == f"/fhir/CarePlan/{CASE}":
            return httpx.Response(200, json=CARE_PLAN)
        if path == f"/fhir/CarePlan/{CASE}/_history":
            return httpx.Response(200, json={"resourceType": "Bundle", "entry": [{"resource": CARE_PLAN}]})
        if path == "/overview":
            return httpx.Response(200, json=self.overview)
        if path == "/cases":
            return httpx.Response(200, json=[{"id": CASE, "reference": "SIP-2026-ABC123", "state": "established",
                                              "patient": "1999********", "opened_at": "2026-12-01T08:00:00Z"}])  # fmt: skip
        if path == f"/cases/{CASE}":
            return httpx.Response(200, json={"id": CASE, "reference": "SIP-2026-ABC123", "state": "invited",
                                             "owner_hsa_id": VC, "opened_at": "2026-12-01T08:00:00Z",
                                             "invited_at": "2026-12-01T09:00:00Z"})  # fmt: skip
        if path == f"/cases/{CASE}/deadlines":
            return httpx.Response(200, json=[{"kind": "invitation", "status": "breached", "due_at": "2026-12-01T08:00:00Z",
                                              "breached_at": "2026-12-01T08:00:01Z", "met_at": None}])  # fmt: skip
        if path == "/notifications":
            return httpx.Response(200, json=[{"id": str(uuid4()), "kind": "invitation", "recipient_hsa_id": SOC,
                                              "channel": "email", "status": "sent", "sent_at": "2026-12-01T09:00:05Z",
                                              "created_at": "2026-12-01T09:00:00Z", "cancelled_at": None}])  # fmt: skip
        if path == "/consents":
            return httpx.Response(200, json=[self.consent()])
        if path == f"/consents/{CONSENT}":
            return httpx.Response(200, json=self.consent())
        if path == f"/consents/{CONSENT}/withdraw" and request.method == "POST":
            return httpx.Response(200, json={**self.consent(), "effective_status": "withdrawn"})
        if path == "/audit":
            return httpx.Response(200, json=[
                {"id": str(uuid4()), "recorded_at": "2026-12-02T10:00:00Z", "action": "read", "outcome": "permit",
                 "reason": f"CarePlan/{CASE}", "basis": "covered", "recipient_hsa_id": SOC},
                {"id": str(uuid4()), "recorded_at": "2026-12-03T10:00:00Z", "action": "read", "outcome": "deny",
                 "reason": f"CarePlan/{CASE}", "basis": None, "recipient_hsa_id": SJH},
            ])  # fmt: skip
        return httpx.Response(404, json={"detail": "no such thing"})

    def consent(self) -> dict[str, Any]:
        return {"id": CONSENT, "patient_identifier": PERSON, "case_id": CASE, "decision": "granted",
                "purposes": ["share-information"], "recipients": [VC, SOC], "excluded_organisations": [SJH],
                "status": "active", "effective_status": "active", "recorded_at": "2026-12-01T08:30:00Z"}  # fmt: skip


def make_client(apis: FakeApis, **settings: Any) -> TestClient:
    values: dict[str, Any] = {"dev_signin": True, "jwt_hs256_secret": TEST_JWT_SECRET, **settings}
    app = create_app(WebSettings(**values))
    app.state.web.http = httpx.AsyncClient(transport=httpx.MockTransport(apis.handler))
    return TestClient(app, base_url="https://testserver")


@pytest.fixture
def apis() -> FakeApis:
    return FakeApis()


@pytest.fixture
def client(apis: FakeApis) -> Iterator[TestClient]:
    with make_client(apis) as c:
        yield c


def csrf_of(html: str) -> str:
    m = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', html)
    assert m, html[:500]
    return m.group(1)


def sign_in(
    client: TestClient, *, organisation: str | None = None, person: str | None = None
) -> httpx.Response:
    token = csrf_of(client.get("/dev/signin").text)
    data = {CSRF_FIELD: token, "organisation": organisation or "", "person": person or ""}
    return client.post("/dev/signin", data=data, follow_redirects=False)


def test_the_session_cookie_is_secure_httponly_and_samesite_lax(client: TestClient) -> None:
    r = sign_in(client, organisation=VC)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    flags = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "secure", "samesite=lax", "path=/"} <= flags, cookie
    sid = cookie.split(";")[0].split("=", 1)[1]
    assert len(sid) >= 40 and "." not in sid  # an opaque random id: no data in the cookie


def test_the_session_id_changes_at_sign_in(client: TestClient) -> None:
    client.get("/dev/signin")
    before = client.cookies.get(COOKIE)
    assert before
    sign_in(client, organisation=VC)
    after = client.cookies.get(COOKIE)
    assert after and after != before
    assert before not in client.app.state.sessions  # type: ignore[attr-defined]


def test_secure_can_be_turned_off_only_by_configuration(apis: FakeApis) -> None:
    assert WebSettings().session_cookie_secure is True
    with make_client(apis, session_cookie_secure=False) as c:
        cookie = sign_in(c, organisation=VC).headers["set-cookie"].lower()
    assert "secure" not in cookie and "httponly" in cookie


def post_routes(client: TestClient) -> list[str]:
    # shared.access.routes: the included routers' routes too (FastAPI keeps them as branches)
    return [
        path.replace("{consent_id}", CONSENT) for method, path, _ in routes(client.app) if method == "POST"
    ]


def test_every_post_needs_the_session_csrf_token(client: TestClient, apis: FakeApis) -> None:
    sign_in(client, person=PERSON)
    routes = post_routes(client)
    assert {"/logout", "/dev/signin", f"/me/consents/{CONSENT}/withdraw"} <= set(routes)
    for path in routes:
        for data in ({}, {CSRF_FIELD: "not-the-token"}, {CSRF_FIELD: ""}):
            r = client.post(path, data=data, follow_redirects=False)
            assert r.status_code == 403, (path, data, r.status_code)
            assert "text/html" in r.headers["content-type"]
            assert 'lang="sv"' in r.text and "säkerhetskod" in r.text
    assert not [c for c in apis.calls if c.method == "POST"]  # nothing reached an API
    assert client.get("/me").status_code == 200  # still signed in: a refused POST did nothing


def test_a_token_from_another_session_is_refused(apis: FakeApis) -> None:
    with make_client(apis) as a, make_client(apis) as b:
        sign_in(a, person=PERSON)
        sign_in(b, person=PERSON)
        other = csrf_of(b.get("/me").text)
        r = a.post(f"/me/consents/{CONSENT}/withdraw", data={CSRF_FIELD: other}, follow_redirects=False)
        assert r.status_code == 403


def test_logout_ends_the_session_and_the_old_cookie_opens_nothing(client: TestClient) -> None:
    sign_in(client, organisation=VC)
    sid = client.cookies.get(COOKIE)
    page = client.get("/overview")
    assert page.status_code == 200
    r = client.post("/logout", data={CSRF_FIELD: csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert f'{COOKIE}=""' in r.headers["set-cookie"] or "max-age=0" in r.headers["set-cookie"].lower()
    assert sid not in client.app.state.sessions  # type: ignore[attr-defined]
    client.cookies.set(COOKIE, sid)  # the old cookie, replayed
    again = client.get("/overview", follow_redirects=False)
    assert again.status_code == 303 and again.headers["location"].startswith("/signin")


def test_development_sign_in_is_off_by_default(apis: FakeApis, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WEB_DEV_SIGNIN", "SIP_WEB_DEV_SIGNIN"):
        monkeypatch.delenv(name, raising=False)
    assert WebSettings().dev_signin is False
    app = create_app(WebSettings(jwt_hs256_secret=TEST_JWT_SECRET))
    with TestClient(app, base_url="https://testserver") as c:
        assert c.get("/dev/signin").status_code == 404
        assert c.post("/dev/signin", data={"organisation": VC}).status_code in (404, 405)
        assert "/dev/signin" not in c.get("/signin").text
    monkeypatch.setenv("SIP_WEB_DEV_SIGNIN", "true")
    assert WebSettings().dev_signin is True


def test_signed_out_a_page_sends_to_sign_in_and_back(client: TestClient) -> None:
    r = client.get(f"/plans/{CASE}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/signin?next=%2Fplans%2F{CASE}"
    client.get(r.headers["location"])
    back = sign_in(client, organisation=SOC)
    assert back.headers["location"] == f"/plans/{CASE}"


def test_no_open_redirect_after_sign_in(client: TestClient) -> None:
    for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        client.get("/signin", params={"next": evil})
        assert sign_in(client, organisation=VC).headers["location"] == "/"


def test_the_plan_page_reads_with_the_users_own_token(client: TestClient, apis: FakeApis) -> None:
    sign_in(client, organisation=SOC)
    r = client.get(f"/plans/{CASE}")
    assert r.status_code == 200
    call = next(c for c in apis.calls if c.url.path == f"/fhir/CarePlan/{CASE}")
    claims = jwt.decode(call.headers["authorization"].removeprefix("Bearer "), TEST_JWT_SECRET,
                        algorithms=["HS256"], audience="sip-suite")  # fmt: skip
    assert claims["hsa_id"] == SOC
    text = r.text
    for shown in ("Stöd i hemmet", "Bo kvar hemma", "Hemtjänst morgon och kväll", "Stockholms stad, socialtjänsten",
                  "2027-02-01", "tills vidare", "Huvudansvar", "Vårdcentralen Södermalm", "Rum 3",
                  "https://video.example/abc", "2026-12-07 kl. 10:00", "tolk: arabiska", "2027-03-01",
                  f'href="/plans/{CASE}/calendar.ics"', '<th scope="col">'):  # fmt: skip
        assert shown in text, shown
    assert PERSON not in text and PERSON[2:8] not in text  # the person is "Personen själv", never a number


def test_the_calendar_file_has_the_invitations_uid(client: TestClient) -> None:
    sign_in(client, organisation=SOC)
    r = client.get(f"/plans/{CASE}/calendar.ics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/calendar")
    assert f"UID:sip-case-{CASE}@sip-suite" in r.text  # notify's calendar UID: calendars update one event
    assert "DTSTART:20261207T090000Z" in r.text and PERSON not in r.text


@pytest.mark.parametrize("status", [403, 404])
def test_an_api_refusal_of_a_plan_is_the_no_access_page(
    client: TestClient, apis: FakeApis, status: int
) -> None:
    # 404: a reader with no part in the case (the API does not disclose that the plan exists); 403: a
    # relation the consent does not cover — the same page for both, so the page discloses nothing more
    apis.status[f"/fhir/CarePlan/{CASE}"] = status
    sign_in(client, organisation="SE2321000016-VC002")
    r = client.get(f"/plans/{CASE}")
    assert r.status_code == 403 and "text/html" in r.headers["content-type"]
    assert "Du har inte tillgång" in r.text and 'id="forbidden"' in r.text and "<main" in r.text


def test_an_unknown_page_or_case_is_the_404_page(client: TestClient, apis: FakeApis) -> None:
    sign_in(client, organisation=VC)
    assert "Sidan finns inte" in client.get("/no/such/page").text
    apis.status[f"/cases/{CASE}"] = 404
    r = client.get(f"/cases/{CASE}")
    assert r.status_code == 404 and "Sidan finns inte" in r.text
    assert client.get("/plans/not-a-uuid").status_code == 404


def test_an_api_outage_is_an_error_page_not_a_crash(client: TestClient, apis: FakeApis) -> None:
    apis.status[f"/fhir/CarePlan/{CASE}"] = 500
    sign_in(client, organisation=SOC)
    r = client.get(f"/plans/{CASE}")
    assert r.status_code == 503 and "Något gick fel" in r.text


def test_an_expired_token_at_the_api_sends_to_sign_in(client: TestClient, apis: FakeApis) -> None:
    apis.status["/overview"] = 401
    sign_in(client, organisation=VC)
    r = client.get("/overview", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/signin")


def test_language_switch(client: TestClient) -> None:
    r = client.get("/")
    assert '<html lang="sv">' in r.text and "Logga in" in r.text
    r = client.get("/?lang=en")
    assert '<html lang="en">' in r.text and "Sign in" in r.text
    r = client.get("/tillganglighet")  # remembered in the session
    assert '<html lang="en">' in r.text and "Accessibility statement" in r.text
    assert '<html lang="sv">' in client.get("/?lang=sv").text
    assert '<html lang="sv">' in client.get("/?lang=xx").text  # an unknown language: Swedish


def test_the_accessibility_statement(client: TestClient) -> None:
    r = client.get("/tillganglighet")
    assert r.status_code == 200
    for said in ("Tillgänglighetsredogörelse", "2018:1937", "WCAG 2.1", "Digg", "Kända brister"):
        assert said in r.text


def test_every_page_has_the_landmarks_and_one_h1(client: TestClient) -> None:
    sign_in(client, organisation=VC)
    for path in ("/", "/signin", "/tillganglighet", f"/plans/{CASE}", "/overview", f"/cases/{CASE}", "/nope"):
        text = client.get(path).text
        assert text.count("<h1") == 1, path
        for part in ('<a class="skip" href="#main"', '<main id="main"', "<header", "<footer", "<nav aria-label",
                     'name="viewport"', 'href="/static/site.css"'):  # fmt: skip
            assert part in text, (path, part)
    assert client.get("/static/site.css").status_code == 200


def test_the_person_sees_their_consents_and_every_disclosure_and_withdraws(
    client: TestClient, apis: FakeApis
) -> None:
    sign_in(client, person=PERSON)
    me = client.get("/me")
    assert me.status_code == 200
    assert f'href="/plans/{CASE}"' in me.text
    assert "Stockholms stad, socialtjänsten" in me.text  # who the consent covers, and who read the plan
    assert 'data-outcome="deny"' in me.text and "Nekat" in me.text
    assert f'href="/me/consents/{CONSENT}/withdraw"' in me.text
    confirm = client.get(f"/me/consents/{CONSENT}/withdraw")
    assert "kan inte ångras" in confirm.text and 'method="post"' in confirm.text
    assert not [c for c in apis.calls if c.method == "POST"]  # the confirmation step withdraws nothing
    r = client.post(f"/me/consents/{CONSENT}/withdraw", data={CSRF_FIELD: csrf_of(confirm.text)},
                    follow_redirects=False)  # fmt: skip
    assert r.status_code == 303 and r.headers["location"] == "/me?withdrawn=1"
    post = [c for c in apis.calls if c.method == "POST"]
    assert [c.url.path for c in post] == [f"/consents/{CONSENT}/withdraw"]
    claims = jwt.decode(post[0].headers["authorization"].split()[1], options={"verify_signature": False})
    assert claims["personal_identity_number"] == PERSON  # the person's own e-ID token, not the service's


def test_the_own_page_is_for_citizens_and_the_overview_for_staff(client: TestClient) -> None:
    sign_in(client, organisation=VC)
    r = client.get("/me")
    assert r.status_code == 403 and "privatperson" in r.text
    sign_in(client, person=PERSON)
    assert client.get("/overview").status_code == 403


def test_the_overview_sorts_by_deadline_and_marks_a_breach_in_words(client: TestClient) -> None:
    sign_in(client, organisation=VC)
    r = client.get("/overview")
    rows = re.findall(r'data-testid="overview-row" data-case-id="([^"]+)" data-breached="(\w+)"', r.text)
    assert rows[0] == (CASE, "true") and rows[1][1] == "false"
    assert "Försenad" in r.text and "försenad med" in r.text  # said in text, not by colour alone
    assert f'href="/cases/{CASE}"' in r.text and f'href="/plans/{CASE}"' in r.text
    case = client.get(f"/cases/{CASE}")
    assert case.status_code == 200
    for shown in (
        "Kallelse",
        "Stockholms stad, socialtjänsten",
        "Tidsfristen har passerat",
        "Ny version av planen",
    ):
        assert shown in case.text, shown


def all_urls(html: str) -> list[str]:
    return re.findall(r'(?:href|action|src)="([^"]*)"', html)


def test_no_personnummer_in_any_url_or_log(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    sign_in(client, person=PERSON)
    for path in ("/", "/me", f"/plans/{CASE}", f"/me/consents/{CONSENT}/withdraw", "/tillganglighet"):
        r = client.get(path)
        seen += [str(r.url), *all_urls(r.text)]
    sign_in(client, organisation=VC)
    for path in ("/overview", f"/cases/{CASE}", f"/plans/{CASE}"):
        r = client.get(path)
        seen += [str(r.url), *all_urls(r.text), *[h.headers.get("location", "") for h in r.history]]
    assert seen and not [u for u in seen if PNR_ANYWHERE.search(u.replace(CASE, "").replace(CONSENT, ""))]
    assert PERSON not in caplog.text and PERSON[2:] not in caplog.text


class _Metadata:
    @staticmethod
    def staff(issuer: str) -> dict[str, Any]:
        return {"issuer": issuer, "authorization_endpoint": f"{issuer}/auth", "token_endpoint": f"{issuer}/token",
                "jwks_uri": f"{issuer}/jwks", "_loaded_at": 1e12}  # fmt: skip


def test_sign_in_asks_the_provider_with_pkce_s256_and_returns_to_callback(apis: FakeApis) -> None:
    issuer = "https://idp.region.example/staff"
    with make_client(apis, staff_issuer=issuer, staff_client_id="sip-web", staff_client_secret="s",
                     public_base_url="https://sip.region.example") as c:  # fmt: skip
        c.app.state.web.oauth.create_client("staff").server_metadata.update(_Metadata.staff(issuer))  # type: ignore[attr-defined]
        page = c.get("/signin")
        assert 'href="/signin/staff"' in page.text and "Personal" in page.text and "Privatperson" in page.text
        r = c.get("/signin/staff", follow_redirects=False)
        assert r.status_code in (302, 303, 307)
        location = httpx.URL(r.headers["location"])
        q = dict(location.params)
        assert str(location).startswith(f"{issuer}/auth?")
        assert q["response_type"] == "code" and q["client_id"] == "sip-web"
        assert q["code_challenge_method"] == "S256" and len(q["code_challenge"]) >= 43
        assert q["redirect_uri"] == "https://sip.region.example/callback"
        assert q["state"] and q["nonce"] and "openid" in q["scope"]
        # the callback without the provider's answer (or with a forged state) signs nobody in
        bad = c.get("/callback", params={"code": "x", "state": "forged"}, follow_redirects=False)
        assert bad.status_code == 403 and "Inloggningen misslyckades" in bad.text
        assert c.get("/overview", follow_redirects=False).status_code == 303


def test_security_headers_are_valid_http(apis: FakeApis) -> None:
    with make_client(apis, staff_issuer="https://idp.region.example/staff") as c:
        r = c.get("/")
    csp = r.headers["content-security-policy"]
    assert csp == csp.strip() and "script-src 'none'" in csp
    assert "form-action 'self' https://idp.region.example" in csp  # logout's redirect to the provider
    assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"


def test_logout_ends_the_providers_session_without_personal_data_in_the_url(apis: FakeApis) -> None:
    issuer = "https://eid.region.example"
    with make_client(apis, citizen_issuer=issuer, citizen_client_id="sip-web", citizen_client_secret="s",
                     public_base_url="https://sip.region.example") as c:  # fmt: skip
        meta = {**_Metadata.staff(issuer), "end_session_endpoint": f"{issuer}/session/end"}
        c.app.state.web.oauth.create_client("citizen").server_metadata.update(meta)  # type: ignore[attr-defined]
        id_token = jwt.encode({"sub": "p", "personal_identity_number": PERSON}, "k" * 32, algorithm="HS256")
        user = {"kind": "citizen", "access_token": "t", "oidc": True, "expires_at": 4e9, "name": None}
        sid = c.app.state.sessions.create({"user": user, "csrf": "tok"})  # type: ignore[attr-defined]
        c.cookies.set(COOKIE, sid)
        r = c.post("/logout", data={CSRF_FIELD: "tok"}, follow_redirects=False)
        assert r.status_code == 303
        location = httpx.URL(r.headers["location"])
        assert str(location).startswith(f"{issuer}/session/end?")
        assert dict(location.params) == {
            "client_id": "sip-web",
            "post_logout_redirect_uri": "https://sip.region.example/",
        }
        assert id_token not in str(location) and PERSON not in str(location)
        assert sid not in c.app.state.sessions  # type: ignore[attr-defined]


def test_health(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"


# every page's rule: open by name, or a signed-in user (of the kind the page is for); anything else is
# a route added without a rule, and this test fails for it
OPEN_PAGES = {"/", "/tillganglighet", "/signin", "/signin/{kind}", "/callback", "/healthz", "/readyz",
              "/metrics", "/dev/signin", "/logout"}  # fmt: skip
CITIZEN_PAGES = {"/me", "/me/consents/{consent_id}/withdraw"}
STAFF_PAGES = {"/overview", "/cases/{case_id}"}
ANY_SIGNED_IN = {"/plans/{plan_id}", "/plans/{plan_id}/calendar.ics"}  # then as the API's rule allows


def test_every_page_has_a_rule_and_a_signed_out_reader_gets_nothing(apis: FakeApis) -> None:
    from starlette.routing import Mount

    app = create_app(WebSettings(dev_signin=True, jwt_hs256_secret=TEST_JWT_SECRET))
    paths = {path for _, path, _ in routes(app)}  # the included page routers' routes too
    mounts = {r.path for r in app.routes if isinstance(r, Mount)}
    assert mounts <= {"/static"}, mounts
    unruled = paths - OPEN_PAGES - CITIZEN_PAGES - STAFF_PAGES - ANY_SIGNED_IN
    assert not unruled, f"pages without a rule: {sorted(unruled)}"
    client = make_client(apis)
    for path in sorted(paths - OPEN_PAGES):
        url = re.sub(r"\{[^}]+\}", CASE if "plan" in path or "case" in path else CONSENT, path)
        answer = client.get(url, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/signin?"), (path, answer)
    assert apis.calls == []  # nothing was asked of the APIs for a reader who is not signed in


@pytest.mark.parametrize(
    "system",
    [
        "http://electronichealth.se/identifier/personnummer",
        "http://electronichealth.se/identifier/samordningsnummer",
    ],
)
def test_the_plan_names_the_person_and_never_shows_their_number(system: str) -> None:
    from services.web.views import care_plan

    number = PERSON  # a test number: what matters is the system the plan names it with
    me = {"identifier": {"system": system, "value": number}}
    plan = care_plan(
        {**CARE_PLAN, "author": me,
         "contained": [{"resourceType": "CareTeam", "id": "careteam", "participant": [{"member": me}]}]},
        self_text="Personen själv",
    )  # fmt: skip
    assert plan.overall_responsible == "Personen själv"
    assert all(number not in who for who, _role in plan.participants)
