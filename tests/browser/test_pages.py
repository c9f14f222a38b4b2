"""The pages for people in a real browser (issue 20): Debian's headless chromium through selenium, the
suite as processes (planning, consent, notify, web) on the real broker and a real SMTP server, and a
real OpenID Connect provider process (devtools/oidc-provider) that the services trust by discovery.

One suite start for the whole story (it is slow):
- a participant (the kommun's social services) follows the link in the real invitation mail, signs in
  at its organisation's identity provider and reads the plan;
- a stranger (an organisation with no part in the case) gets the no-access (403) page;
- the person signs in with e-ID, sees who received their plan, withdraws their consent (with the
  confirmation step), and the participant's next page view is refused: the 403 page;
- the coordinator (the owning unit) sees a breached deadline highlighted on the overview;
- a guardian named on a child's consent signs in with e-ID and sees the child's case and consent on
  their own page, and a person not named on it (a stranger to the child) sees nothing of them.
axe-core runs in every page and state shown (WCAG 2.1 A/AA: no violation); with SIP_SCREENSHOTS=1 each
page is saved under docs/screenshots/ for the README.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from shared.contracts import DischargeNotified
from tests.conftest import TEST_JWT_SECRET
from tests.e2e.authz_scenario import (
    GUARDIAN,
    HOSPITAL,
    OTHER_PERSON,
    OWNER,
    PARTICIPANT,
    PERSON,
    STRANGER,
    Scenario,
    build,
    org_headers,
    publish,
    wait_for,
)
from tests.e2e.authz_scenario import (
    test_directory as directory_with_stranger,
)
from tests.support.browser import assert_no_axe_violations, chromium, screenshot
from tests.support.infra import MailSink, free_port, mail_sink, rabbit_vhost
from tests.support.oidc import PASSWORD, Account, Provider, running_provider
from tests.support.personnummer import ADULTS, CHILD
from tests.support.suite import SERVICES, Suite, running_suite

pytestmark = [pytest.mark.e2e, pytest.mark.broker, pytest.mark.browser]

LATE_PERSON = ADULTS[24]  # a discharge whose invitation deadline has passed: no consent, no invitation
PARTICIPANT_MAIL = "sip-socialtjanst@stockholm.example"  # the participant's functional address (directory)
STAFF = (
    Account("socialsekreterare", "Socialsekreterare, Stockholms stad", PARTICIPANT),
    Account("samordnare", "SIP-samordnare, Vårdcentralen Södermalm", OWNER),
    Account("privatvard", "Läkare, privat vårdgivare", STRANGER),
)


@dataclass
class World:
    suite: Suite
    provider: Provider
    scenario: Scenario
    smtp: MailSink
    late_case: str

    @property
    def web(self) -> str:
        return self.suite.url("web")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("pages")
    # every port is chosen first: the provider must know the web's redirect URI, the web the APIs'
    ports = {name: free_port() for name in (*SERVICES, "web")}
    web = f"http://127.0.0.1:{ports['web']}"
    with running_provider(
        tmp, redirect_uris=[f"{web}/callback"], post_logout_redirect_uris=[f"{web}/"],
        staff=STAFF, citizens=[PERSON, GUARDIAN, OTHER_PERSON],
    ) as provider, rabbit_vhost() as amqp_url, mail_sink(tmp) as smtp:  # fmt: skip
        api = {name: f"http://127.0.0.1:{ports[name]}" for name in SERVICES}
        env = {
            "SIP_AUTH_REQUIRED": "true",
            # the test's own set-up calls use development tokens; the pages the provider's
            "SIP_JWT_HS256_SECRET": TEST_JWT_SECRET,
            "SIP_JWT_ISSUERS_FILE": str(provider.issuers_file(tmp / "issuers.yaml")),
            "SIP_DIRECTORY_PATH": str(directory_with_stranger(tmp)),
            "PLANNING_DEADLINE_CHECK_INTERVAL": "1",
            "PLANNING_WEB_BASE_URL": web,
            "WEB_HTTP_PORT": str(ports["web"]), "WEB_PUBLIC_BASE_URL": web,
            "WEB_PLANNING_URL": api["planning"], "WEB_CONSENT_URL": api["consent"],
            "WEB_NOTIFY_URL": api["notify"], "WEB_SESSION_COOKIE_SECURE": "false",
            "WEB_STAFF_ISSUER": provider.staff_issuer, "WEB_STAFF_CLIENT_ID": provider.client_id,
            "WEB_STAFF_CLIENT_SECRET": provider.client_secret,
            "WEB_CITIZEN_ISSUER": provider.eid_issuer, "WEB_CITIZEN_CLIENT_ID": provider.client_id,
            "WEB_CITIZEN_CLIENT_SECRET": provider.client_secret,
        }  # fmt: skip
        with running_suite(amqp_url, tmp, smtp, extra_env=env, ports=ports) as suite:
            suite.start("web")  # after the others: four imports at once miss their minute on a busy machine
            scenario = asyncio.run(build(suite))
            fill_in_the_plan(scenario)
            late_case = asyncio.run(late_discharge(suite))
            yield World(suite, provider, scenario, smtp, late_case)


def fill_in_the_plan(sc: Scenario) -> None:
    """The owning unit books the meeting (a room and a video link, an interpreter wished for) and drafts
    the plan: what a participant then reads on the plan page."""
    planning = sc.as_owner("planning")
    case = sc.adult_case
    prefs = {"place": "Hemma hos mig", "interpreter_language": "ar", "picture_support": True}
    r = planning.put(f"/cases/{case}/preferences", json=prefs)
    assert r.status_code == 200, r.text
    start = (datetime.now(UTC) + timedelta(days=5)).replace(hour=9, minute=0, second=0, microsecond=0)
    meeting = {"start": start.isoformat(), "end": (start + timedelta(hours=1)).isoformat(),
               "location": "Vårdcentralen Södermalm, rum 3", "video_url": "https://mote.example/sip-rum-3"}  # fmt: skip
    r = planning.put(f"/cases/{case}/meeting", json=meeting)
    assert r.status_code == 200, r.text
    plan = {
        "needs": ["Stöd i hemmet efter utskrivningen", "Hjälp med läkemedel"],
        "goals": [{"id": "g1", "description": "Bo kvar hemma med trygghet"}],
        "interventions": [
            {"id": "i1", "description": "Hemtjänst morgon och kväll", "goal_ids": ["g1"],
             "responsible": {"kind": "organisation", "hsa_id": PARTICIPANT}},
            {"id": "i2", "description": "Läkemedelsgenomgång", "goal_ids": ["g1"],
             "responsible": {"kind": "organisation", "hsa_id": OWNER}},
        ],
        "overall_responsibility_hsa_id": OWNER, "coordination": "Vårdcentralen samordnar; ring vid frågor",
        "follow_up_date": (datetime.now(UTC) + timedelta(days=60)).date().isoformat(),
    }  # fmt: skip
    r = planning.put(f"/cases/{case}/plan", json=plan)
    assert r.status_code == 200, r.text


async def late_discharge(suite: Suite) -> str:
    """A person ready for discharge five days ago, still without consent: the invitation deadline (three
    days) has passed, and planning's deadline scan reports the breach."""
    episode = f"LATE-{uuid4().hex[:8]}"
    ev = DischargeNotified(
        episode_id=episode, hospital_hsa_id=HOSPITAL,
        patient={"identifier": LATE_PERSON, "kommun_code": "0180", "primary_care_unit_hsa_id": OWNER},
        ready_for_discharge_at=datetime.now(UTC) - timedelta(days=5), needs_kommun_support=True,
        needs_region_support=True,
    )  # fmt: skip
    await publish(suite.amqp_url, ev)
    planning = httpx.Client(base_url=suite.url("planning"), timeout=10, headers=org_headers(OWNER))

    def case_id() -> str | None:
        cases = planning.get("/cases", params={"all": "true"}).json()
        return next((c["id"] for c in cases if c["episode_id"] == episode), None)

    case = str(wait_for(case_id, what=f"the case of episode {episode}"))

    def breached() -> str | None:
        rows = planning.get("/overview").json()
        return case if any(r["case_id"] == case and r["breached_unmet"] for r in rows) else None

    return str(wait_for(breached, what="the late case's breached invitation deadline"))


# ---- driving the browser -------------------------------------------------------------------------


def wait_testid(driver: WebDriver, testid: str, timeout: float = 30) -> None:
    WebDriverWait(driver, timeout).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, f'[data-testid="{testid}"]'))
    )


def by_testid(driver: WebDriver, testid: str) -> list:
    return driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]')


def sign_in_at_provider(driver: WebDriver, username: str) -> None:
    """The provider's login form (username, password) and its consent form, as a person fills them in."""
    WebDriverWait(driver, 30).until(ec.presence_of_element_located((By.ID, "username")))
    driver.find_element(By.ID, "username").send_keys(username)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "signin").click()
    WebDriverWait(driver, 30).until(ec.presence_of_element_located((By.ID, "approve")))
    driver.find_element(By.ID, "approve").click()


def sign_in(driver: WebDriver, w: World, kind: str, username: str, then: str) -> None:
    """Open ``then`` signed out, choose the kind of sign-in on the web's page, sign in at the provider,
    and land back on ``then``."""
    driver.get(w.web + then)
    wait_testid(driver, f"signin-{kind}")
    driver.find_element(By.CSS_SELECTOR, f'[data-testid="signin-{kind}"]').click()
    sign_in_at_provider(driver, username)
    WebDriverWait(driver, 30).until(lambda d: d.current_url.startswith(w.web + then))
    wait_testid(driver, "page-title")


def title(driver: WebDriver) -> str:
    return str(by_testid(driver, "page-title")[0].text)


def link_in_mail(smtp: MailSink, address: str, case_id: str) -> str:
    """The plan's link in the invitation mail that reached ``address`` about the case."""

    def find() -> str | None:
        for m in smtp.messages():
            if address not in [a.addr_spec for a in m["To"].addresses]:
                continue
            body = m.get_body(preferencelist=("plain",)).get_content()
            for url in re.findall(r"https?://[^\s<>\"')]+", body):
                if case_id in url:
                    return str(url)
        return None

    return str(wait_for(find, what=f"the invitation to {address} with the plan's link"))


# ---- the story ------------------------------------------------------------------------------------


def test_participant_stranger_person_and_coordinator_in_a_real_browser(world: World) -> None:
    w, sc = world, world.scenario
    case = sc.adult_case

    with chromium() as participant:
        # the start page and the accessibility statement, signed out
        participant.get(w.web + "/")
        wait_testid(participant, "page-title")
        assert_no_axe_violations(participant, "the start page")
        screenshot(participant, "start")
        participant.get(w.web + "/tillganglighet")
        wait_testid(participant, "page-title")
        assert_no_axe_violations(participant, "the accessibility statement")
        screenshot(participant, "accessibility-statement")

        # the participant follows the link from the real invitation mail ...
        link = link_in_mail(w.smtp, PARTICIPANT_MAIL, case)
        assert link == f"{w.web}/plans/{case}", f"the invitation links to {link}, not the plan page"
        participant.get(link)
        # ... is asked to sign in (the page says how), chooses staff sign-in
        wait_testid(participant, "signin-staff")
        assert_no_axe_violations(participant, "the sign-in page")
        screenshot(participant, "signin")
        participant.find_element(By.CSS_SELECTOR, '[data-testid="signin-staff"]').click()
        sign_in_at_provider(participant, "socialsekreterare")
        WebDriverWait(participant, 30).until(lambda d: d.current_url.startswith(link))
        wait_testid(participant, "plan-reference")
        assert by_testid(participant, "plan-reference")[0].text.startswith("SIP-")
        # the plan as a person reads it: needs, interventions with who is responsible, the meeting
        assert "Hjälp med läkemedel" in by_testid(participant, "plan-needs")[0].text
        interventions = by_testid(participant, "plan-interventions")[0].text
        assert "Hemtjänst morgon och kväll" in interventions and "Stockholms stad" in interventions
        assert "rum 3" in by_testid(participant, "meeting-place")[0].text
        assert by_testid(participant, "calendar-download")
        assert PERSON not in participant.page_source and PERSON[2:] not in participant.current_url
        assert_no_axe_violations(participant, "the participant's plan page")
        screenshot(participant, "plan")

        # a stranger (an organisation with no part in the case) follows the same link: the no-access
        # page — the same as for a plan that is not there (planning answers a stranger 404: the case's
        # existence is not disclosed, services/planning/access.py)
        with chromium() as stranger:
            sign_in(stranger, w, "staff", "privatvard", f"/plans/{case}")
            assert stranger.find_elements(By.ID, "forbidden"), stranger.find_element(By.TAG_NAME, "main").text
            assert by_testid(stranger, "forbidden-reason") and not by_testid(stranger, "plan-reference")
            assert_no_axe_violations(stranger, "the stranger's no-access page")
            screenshot(stranger, "stranger")

        # the person signs in with e-ID and sees who received their plan
        with chromium() as person:
            sign_in(person, w, "citizen", PERSON, "/me")

            def disclosed_to_participant() -> bool:
                person.refresh()
                wait_testid(person, "page-title")
                return any(
                    row.get_attribute("data-recipient") == PARTICIPANT
                    and row.get_attribute("data-outcome") == "permit"
                    for row in by_testid(person, "disclosure")
                )

            assert wait_for(disclosed_to_participant, timeout=30, what="the participant's read on /me")
            assert by_testid(person, "my-case") and by_testid(person, "my-plan-link")  # their own case
            assert_no_axe_violations(person, "the person's own page")
            screenshot(person, "me")

            # withdraws the consent, through the confirmation page that says what follows
            consent = person.find_element(By.CSS_SELECTOR, f'[data-consent-id="{sc.adult_consent}"]')
            consent.find_element(By.CSS_SELECTOR, '[data-testid="withdraw-link"]').click()
            wait_testid(person, "withdraw-consequences")
            assert_no_axe_violations(person, "the withdrawal's confirmation page")
            screenshot(person, "withdraw-confirm")
            person.find_element(By.CSS_SELECTOR, '[data-testid="withdraw-confirm"]').click()
            wait_testid(person, "withdrawn-done")
            assert_no_axe_violations(person, "the person's own page after the withdrawal")
            screenshot(person, "me-withdrawn")

        # the participant's next page view is refused: the 403 page, saying why and whom to ask
        participant.refresh()
        wait_testid(participant, "page-title")
        assert participant.find_elements(By.ID, "forbidden"), participant.find_element(
            By.TAG_NAME, "main"
        ).text
        assert by_testid(participant, "forbidden-reason") and not by_testid(participant, "plan-reference")
        assert_no_axe_violations(participant, "the participant's 403 page after the withdrawal")
        screenshot(participant, "forbidden")

    # the coordinator sees the breached deadline highlighted on the overview, and the case page
    with chromium() as coordinator:
        sign_in(coordinator, w, "staff", "samordnare", "/overview")
        rows = {r.get_attribute("data-case-id"): r for r in by_testid(coordinator, "overview-row")}
        assert w.late_case in rows, list(rows)
        late = rows[w.late_case]
        assert late.get_attribute("data-breached") == "true"
        assert "breached" in (late.get_attribute("class") or "")
        assert sc.adult_case not in rows or rows[sc.adult_case].get_attribute("data-breached") == "false"
        assert_no_axe_violations(coordinator, "the coordinator's overview")
        screenshot(coordinator, "overview")
        late.find_element(By.CSS_SELECTOR, '[data-testid="case-link"]').click()
        wait_testid(coordinator, "case-timeline")
        assert any(
            d.get_attribute("data-breached") == "true" for d in by_testid(coordinator, "case-deadline")
        )
        assert_no_axe_violations(coordinator, "the case page")
        screenshot(coordinator, "case")

        # signing out ends the session at the web and at the provider (its confirmation form)
        coordinator.find_element(By.ID, "logout").click()
        WebDriverWait(coordinator, 30).until(lambda d: d.current_url.startswith(w.provider.staff_issuer))
        coordinator.find_element(By.ID, "logout").click()
        WebDriverWait(coordinator, 30).until(lambda d: d.current_url.rstrip("/") == w.web)
        coordinator.get(f"{w.web}/overview")
        wait_testid(coordinator, "signin-staff")  # signed out: asked to sign in again

    # no personnummer in any service's log (the web service's included)
    logs = w.suite.logs()
    assert PERSON not in logs and LATE_PERSON not in logs


def test_a_guardian_sees_the_childs_case_and_consent_and_a_stranger_nothing(world: World) -> None:
    """The child's consent names two guardians (tests/e2e/authz_scenario.py); the first signs in at the
    e-ID issuer and finds the child's case and consent on /me — as planning's and consent's APIs allow
    a guardian, read with the guardian's own token. A person not named on it (the scenario's other
    adult, with a case of their own) sees nothing of the child's."""
    w, sc = world, world.scenario

    with chromium() as guardian:
        sign_in(guardian, w, "citizen", GUARDIAN, "/me")
        case_css = f'[data-testid="my-case"][data-case-id="{sc.child_case}"]'

        def child_shown() -> bool:
            guardian.refresh()
            wait_testid(guardian, "page-title")
            return bool(guardian.find_elements(By.CSS_SELECTOR, case_css))

        assert wait_for(child_shown, timeout=30, what="the child's case on the guardian's /me")
        case = guardian.find_element(By.CSS_SELECTOR, case_css)
        assert case.find_elements(By.CSS_SELECTOR, '[data-testid="child-case"]')  # said to be the child's
        [child] = by_testid(guardian, "child")
        consent = child.find_elements(By.CSS_SELECTOR, f'[data-consent-id="{sc.child_consent}"]')
        assert consent, child.text
        assert consent[0].find_elements(
            By.CSS_SELECTOR, '[data-testid="withdraw-link"]'
        )  # theirs to withdraw
        assert sc.adult_case not in guardian.page_source  # the other person's case is not theirs
        page = guardian.page_source
        for number in (CHILD, GUARDIAN):
            assert number not in page and number[2:] not in page and number[2:] not in guardian.current_url
        assert_no_axe_violations(guardian, "the guardian's own page with the child's")
        screenshot(guardian, "me-guardian")

    with chromium() as stranger:
        sign_in(stranger, w, "citizen", OTHER_PERSON, "/me")
        page = stranger.page_source
        assert sc.child_case not in page and sc.child_consent not in page and not by_testid(stranger, "child")
        assert_no_axe_violations(stranger, "the own page of a person not named on the child's consent")

    logs = w.suite.logs()
    assert CHILD not in logs and GUARDIAN not in logs
