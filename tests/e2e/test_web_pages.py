"""The pages for people end to end (issue 20): the three services and the web service as processes, the
real broker and SMTP server. A participant follows the link in their real invitation mail, signs in and
reads the plan; a stranger gets a refusal page; the person signs in as themself, sees who received their
plan, withdraws their consent — and the participant's next page view is refused; the coordinator sees
the overview and the case's timeline. Sign-in here is the development sign-in (tokens minted with the
test secret, no browser); the browser tests sign in through the real OIDC provider."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_JWT_SECRET
from tests.e2e import authz_scenario
from tests.e2e.authz_scenario import OWNER, PARTICIPANT, PERSON, STRANGER, build, wait_for
from tests.support.infra import MailSink, free_port
from tests.support.suite import Suite, running_suite

pytestmark = [pytest.mark.e2e, pytest.mark.broker]

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@contextmanager
def suite_with_pages(amqp_url: str, tmp: Path, smtp: MailSink) -> Iterator[tuple[Suite, str]]:
    port = free_port()
    web = f"http://127.0.0.1:{port}"
    env = {
        "SIP_AUTH_REQUIRED": "true",
        "SIP_JWT_HS256_SECRET": TEST_JWT_SECRET,
        "SIP_DIRECTORY_PATH": str(authz_scenario.test_directory(tmp)),
        "PLANNING_WEB_BASE_URL": web,  # the invitations' links open the pages
    }
    with running_suite(amqp_url, tmp, smtp, extra_env=env) as suite:
        suite.ports["web"] = port
        suite.start("web", env={
            "WEB_HTTP_PORT": str(port), "WEB_PUBLIC_BASE_URL": web, "WEB_SESSION_COOKIE_SECURE": "false",
            "WEB_PLANNING_URL": suite.url("planning"), "WEB_CONSENT_URL": suite.url("consent"),
            "WEB_NOTIFY_URL": suite.url("notify"), "SIP_WEB_DEV_SIGNIN": "true",
        })  # fmt: skip
        yield suite, web


def browser(base: str) -> httpx.Client:
    return httpx.Client(base_url=base, timeout=20, follow_redirects=False)


def dev_sign_in(client: httpx.Client, **who: str) -> httpx.Response:
    token = CSRF.search(client.get("/dev/signin").text)
    assert token, "no CSRF token on the sign-in form"
    return client.post(
        "/dev/signin", data={"csrf_token": token.group(1), "organisation": "", "person": "", **who}
    )


def test_the_invitation_link_the_plan_the_refusals_and_the_withdrawal(
    amqp_url: str, tmp_path: Path, smtp: MailSink
) -> None:
    with suite_with_pages(amqp_url, tmp_path, smtp) as (suite, web):
        sc = asyncio.run(build(suite))
        link = f"{web}/plans/{sc.adult_case}"

        # the participant's invitation mail links the plan's page
        def the_link() -> str | None:
            for m in smtp.messages():
                text = m.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
                if "sip-socialtjanst@stockholm.example" in str(m["To"]) and link in text:
                    return link
            return None

        assert wait_for(the_link, what="the invitation with the page's link")

        # following it: sign in first, then back to the plan
        participant = browser(web)
        r = participant.get(link)
        assert r.status_code == 303 and r.headers["location"] == f"/signin?next=%2Fplans%2F{sc.adult_case}"
        assert participant.get(r.headers["location"]).status_code == 200
        r = dev_sign_in(participant, organisation=PARTICIPANT)
        assert r.status_code == 303 and r.headers["location"] == f"/plans/{sc.adult_case}"
        page = participant.get(r.headers["location"])
        assert page.status_code == 200, page.text[:500]
        assert "Samordnad individuell plan" in page.text and 'data-testid="plan-meeting"' in page.text
        assert PERSON not in page.text

        # a stranger is refused, as an HTML page
        stranger = browser(web)
        dev_sign_in(stranger, organisation=STRANGER)
        refused = stranger.get(f"/plans/{sc.adult_case}")
        assert (
            refused.status_code in (403, 404)
            and "Du har inte tillgång" in refused.text
            and "text/html" in refused.headers["content-type"]
        )

        # the person signs in as themself and sees who received their plan
        person = browser(web)
        dev_sign_in(person, person=PERSON)
        me = person.get("/me")
        assert me.status_code == 200, me.text[:500]
        assert f'href="/plans/{sc.adult_case}"' in me.text
        assert wait_for(lambda: f'data-recipient="{PARTICIPANT}"' in person.get("/me").text,
                        what="the participant's read in the person's trail")  # fmt: skip
        confirm = person.get(f"/me/consents/{sc.adult_consent}/withdraw")
        assert confirm.status_code == 200 and "kan inte ångras" in confirm.text
        done = person.post(f"/me/consents/{sc.adult_consent}/withdraw",
                           data={"csrf_token": CSRF.search(confirm.text).group(1)})  # type: ignore[union-attr]  # fmt: skip
        assert done.status_code == 303 and done.headers["location"] == "/me?withdrawn=1"
        after = person.get("/me?withdrawn=1")
        assert 'data-testid="withdrawn-done"' in after.text and "Återkallat" in after.text

        # the participant's next page view is refused, with the 403 page
        again = participant.get(f"/plans/{sc.adult_case}")
        assert again.status_code == 403 and "Du har inte tillgång" in again.text
        assert person.get(f"/plans/{sc.adult_case}").status_code == 200  # the person still reads their own

        # the coordinator's overview and the case page with its timeline
        owner = browser(web)
        dev_sign_in(owner, organisation=OWNER)
        overview = owner.get("/overview")
        assert overview.status_code == 200 and f'data-case-id="{sc.pending_case}"' in overview.text
        case = owner.get(f"/cases/{sc.child_case}")
        assert case.status_code == 200 and 'data-testid="case-notification"' in case.text
        assert 'data-kind="tl_notice_sent"' in case.text

        # logout ends the session
        r = owner.post("/logout", data={"csrf_token": CSRF.search(case.text).group(1)})  # type: ignore[union-attr]
        assert r.status_code == 303
        assert owner.get("/overview").status_code == 303

        # no personnummer in the web service's log
        log = suite.procs["web"].log_path.read_text()
        assert PERSON not in log and PERSON[2:] not in log
