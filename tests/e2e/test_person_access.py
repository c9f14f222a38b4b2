"""The person's own access, end to end (three processes, the real broker, a real SMTP server): after a
discharge, consent and the invitations, the person signs in with a citizen e-ID token, reads their plan
and who received what about them and when, withdraws their consent — and afterwards the other
organisations are refused while the person still reads their own plan and sees the withdrawal and
every later refusal in their audit trail. Another person sees none of it."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.e2e.authz_scenario import (
    COVERED,
    HOSPITAL,
    OTHER_PERSON,
    OWNER,
    PARTICIPANT,
    authenticated_suite,
    build,
    org_headers,
    person_headers,
    wait_for,
)
from tests.support.infra import MailSink

pytestmark = [pytest.mark.e2e, pytest.mark.broker]


def test_the_person_reads_their_plan_and_disclosures_withdraws_and_the_others_are_refused(
    amqp_url: str, tmp_path: Path, smtp: MailSink
) -> None:
    with authenticated_suite(amqp_url, tmp_path, smtp) as suite:
        sc = asyncio.run(build(suite))
        from tests.e2e.authz_scenario import PERSON

        me = person_headers(PERSON)
        planning, consent = sc.client("planning", me), sc.client("consent", me)

        # the plan, as FHIR CarePlan, and the person's case in the listing — their own only
        plan = planning.get(f"/fhir/CarePlan/{sc.adult_case}")
        assert plan.status_code == 200, plan.text
        assert plan.json()["resourceType"] == "CarePlan"
        assert {c["id"] for c in planning.get("/cases", params={"all": "true"}).json()} == {sc.adult_case}
        assert planning.get(f"/fhir/CarePlan/{sc.pending_case}").status_code in (403, 404)

        # the participants read the plan: each read is a disclosure the consent permitted
        for org in (PARTICIPANT, HOSPITAL):
            assert (
                sc.client("planning", org_headers(org)).get(f"/fhir/CarePlan/{sc.adult_case}").status_code
                == 200
            )

        # who received what about me, and when
        trail = consent.get("/audit")
        assert trail.status_code == 200, trail.text
        permitted = {
            e["recipient_hsa_id"]
            for e in trail.json()
            if e["outcome"] == "permit" and e["action"] == "decision"
        }
        assert {PARTICIPANT, HOSPITAL} <= permitted, trail.json()
        assert all(e["recorded_at"] for e in trail.json())
        fhir_trail = consent.get("/fhir/AuditEvent")
        assert fhir_trail.status_code == 200 and fhir_trail.json()["resourceType"] == "Bundle"
        # my own reads are in my trail too
        wait_for(lambda: any(e["action"] in ("read", "search") for e in consent.get("/audit").json()),
                 what="the person's own reads in the trail")  # fmt: skip

        # before the withdrawal the covered organisation reads the plan
        assert (
            sc.client("planning", org_headers(COVERED)).get(f"/fhir/CarePlan/{sc.adult_case}").status_code
            == 200
        )

        # the person withdraws their consent with their own e-ID
        withdrawn = consent.post(f"/consents/{sc.adult_consent}/withdraw", json={})
        assert withdrawn.status_code == 200, withdrawn.text
        assert withdrawn.json()["effective_status"] == "withdrawn"
        after = datetime.now(UTC)
        time.sleep(0.5)

        # the other organisations are refused from now on; the owning unit keeps its own case
        for org in (PARTICIPANT, HOSPITAL):
            r = sc.client("planning", org_headers(org)).get(f"/fhir/CarePlan/{sc.adult_case}")
            assert r.status_code == 403, (org, r.status_code, r.text[:200])
        # the covered unit has no part left in the case: its existence is not disclosed either
        r = sc.client("planning", org_headers(COVERED)).get(f"/fhir/CarePlan/{sc.adult_case}")
        assert r.status_code in (403, 404), r.text[:200]
        # the person still reads their own plan
        assert planning.get(f"/fhir/CarePlan/{sc.adult_case}").status_code == 200

        # ... and sees the withdrawal and every later refusal in their audit trail
        def later_denials() -> set[str]:
            entries = consent.get("/audit").json()
            return {
                e["recipient_hsa_id"] for e in entries
                if e["outcome"] == "deny" and datetime.fromisoformat(e["recorded_at"]) >= after
            }  # fmt: skip

        entries = consent.get("/audit").json()
        assert any(e["action"] == "withdrawal" for e in entries), entries
        assert wait_for(lambda: {PARTICIPANT, HOSPITAL} <= later_denials(), what="the refusals")

        # another person sees nothing of it; the owner still reads its case
        other = person_headers(OTHER_PERSON)
        assert sc.client("consent", other).get("/audit", params={"patient": PERSON}).json() in ([], None) or (
            sc.client("consent", other).get("/audit", params={"patient": PERSON}).status_code == 403
        )
        assert sc.client("planning", other).get(f"/fhir/CarePlan/{sc.adult_case}").status_code in (403, 404)
        assert sc.client("planning", org_headers(OWNER)).get(f"/cases/{sc.adult_case}").status_code == 200
