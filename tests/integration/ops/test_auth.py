"""Authenticated HTTP APIs: every endpoint refuses a caller without a valid token (401); a plan is read
only by its owning unit and the organisations the person's consent covers (403 otherwise), each
decision an AuditEvent in the consent service."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import aio_pika
import httpx
import jwt
import pytest

from services.consent.app import create_app as consent_app
from services.consent.settings import ConsentSettings
from services.notify.app import create_app as notify_app
from services.notify.settings import NotifySettings
from services.planning.app import create_app as planning_app
from services.planning.settings import PlanningSettings
from shared.auth import OPEN_PATHS, mint_token
from shared.contracts import DischargeNotified
from tests.conftest import TEST_JWT_SECRET
from tests.support.personnummer import ADULTS

REPO = Path(__file__).resolve().parents[3]
DIRECTORY = str(REPO / "config/directory.yaml")
SOC, VC, SJH, SOLNA = "SE2120001-SOC0180", "SE2321000016-VC001", "SE2321000016-SJH01", "SE2120001-SOC0184"


def bearer(hsa_id: str, **kw) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(TEST_JWT_SECRET, hsa_id, **kw)}"}


def apps(tmp_path, amqp_url="amqp://guest:guest@127.0.0.1:5672/"):
    common = dict(amqp_url=amqp_url, directory_path=DIRECTORY, auth_required=True)
    return {
        "planning": planning_app(PlanningSettings(data_dir=str(tmp_path / "p"), **common)),
        "consent": consent_app(ConsentSettings(data_dir=str(tmp_path / "c"), **common)),
        "notify": notify_app(NotifySettings(data_dir=str(tmp_path / "n"), **common)),
    }


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", str(uuid4()), path)


FORGED = {
    "no token": {},
    "not a bearer": {"Authorization": "Basic c2lwOnNpcA=="},
    "garbage": {"Authorization": "Bearer not.a.jwt"},
    "another secret": {"Authorization": f"Bearer {mint_token('some-other-secret-of-32-bytes-or-more', VC)}"},
    "expired": bearer(VC, now=time.time() - 7200, ttl=600),
    "wrong audience": bearer(VC, audience="someone-else"),
    "alg none": {
        "Authorization": "Bearer "
        + jwt.encode(
            {
                "iss": "x",
                "sub": "x",
                "aud": "sip-suite",
                "iat": int(time.time()),
                "exp": int(time.time()) + 600,
                "hsa_id": VC,
            },
            key=None,
            algorithm="none",
        )
    },
    "no organisation": {
        "Authorization": "Bearer "
        + jwt.encode(
            {
                "iss": "x",
                "sub": "x",
                "aud": "sip-suite",
                "iat": int(time.time()),
                "exp": int(time.time()) + 600,
            },
            TEST_JWT_SECRET,
            algorithm="HS256",
        )
    },
}


@pytest.mark.parametrize("service", ["planning", "consent", "notify"])
async def test_every_endpoint_refuses_a_missing_forged_or_expired_token(tmp_path, service):
    app = apps(tmp_path)[service]
    # every documented operation (the OpenAPI document is generated from the routes themselves)
    operations = [(m.upper(), path) for path, ops in app.openapi()["paths"].items() if path not in OPEN_PATHS
                  for m in ops]  # fmt: skip
    assert len(operations) >= 3
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as http:
        for method, path in operations:
            for label, headers in FORGED.items():
                r = await http.request(method, concrete(path), headers=headers, json={})
                assert r.status_code == 401, (service, method, path, label, r.status_code)
                assert r.headers["www-authenticate"].startswith("Bearer")
                if path.startswith("/fhir"):
                    assert r.json()["resourceType"] == "OperationOutcome"
        # the open paths stay open: no personal data there
        assert (await http.get("/openapi.json")).status_code == 200


async def publish(amqp_url: str, ev: DischargeNotified) -> None:
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        ex = await ch.get_exchange(ev.exchange)
        await ex.publish(aio_pika.Message(ev.model_dump_json().encode(), message_id=str(ev.message_id),
                                          content_type="application/json"), routing_key=ev.routing_key)  # fmt: skip


@pytest.mark.broker
async def test_a_plan_is_read_by_the_owner_and_by_those_the_consent_covers_each_read_audited(
    tmp_path, amqp_url
):
    services = apps(tmp_path, amqp_url)
    for app in services.values():
        await app.state.runtime.start()
    t = {n: httpx.ASGITransport(app=a) for n, a in services.items()}
    try:
        async with (
            httpx.AsyncClient(transport=t["planning"], base_url="http://planning") as planning,
            httpx.AsyncClient(transport=t["consent"], base_url="http://consent") as consent,
        ):
            pnr = ADULTS[23]
            ev = DischargeNotified(
                episode_id=f"V-{uuid4().hex[:6]}", hospital_hsa_id=SJH,
                patient={"identifier": pnr, "kommun_code": "0180", "primary_care_unit_hsa_id": VC},
                ready_for_discharge_at=datetime.now(UTC), needs_kommun_support=True, needs_region_support=True,
            )  # fmt: skip
            await publish(amqp_url, ev)
            case = None
            for _ in range(100):
                cases = (await planning.get("/cases", headers=bearer(VC))).json()
                case = next((c for c in cases if c["episode_id"] == ev.episode_id), None)
                if case:
                    break
                await asyncio.sleep(0.1)
            assert case is not None
            cid = case["id"]
            # an organisation that takes no part does not even see the case in lists
            assert all(c["id"] != cid for c in (await planning.get("/cases", headers=bearer(SOLNA))).json())

            # the person consents to sharing with social services only (not the hospital), recorded by
            # the owning unit once consent has the case's request (it knows the case's owner from it)
            for _ in range(100):
                pending = (await consent.get("/consent-requests", headers=bearer(VC))).json()
                if any(p["case_id"] == cid for p in pending):
                    break
                await asyncio.sleep(0.1)
            r = await consent.post("/consents", headers=bearer(VC), json={
                "case_id": cid, "patient_identifier": pnr, "decision": "granted", "recipients": [SOC, VC],
                "recorded_by_hsa_id": VC})  # fmt: skip
            assert r.status_code in (200, 201), r.text
            for _ in range(100):
                if (await planning.get(f"/fhir/CarePlan/{cid}", headers=bearer(VC))).status_code == 200:
                    break
                await asyncio.sleep(0.1)

            owner = await planning.get(f"/fhir/CarePlan/{cid}", headers=bearer(VC))
            assert owner.status_code == 200 and owner.json()["resourceType"] == "CarePlan"
            covered = await planning.get(f"/fhir/CarePlan/{cid}", headers=bearer(SOC))
            assert covered.status_code == 200 and covered.json()["id"] == cid
            refused = await planning.get(f"/fhir/CarePlan/{cid}", headers=bearer(SJH))
            assert refused.status_code == 403
            assert refused.json()["resourceType"] == "OperationOutcome" and "consent" in refused.text
            assert pnr not in refused.text
            outsider = await planning.get(f"/fhir/CarePlan/{cid}/_history", headers=bearer(SOLNA))
            assert outsider.status_code == 404  # a stranger: the case's existence is not disclosed
            assert outsider.json()["resourceType"] == "OperationOutcome"
            assert (await planning.get(f"/cases/{cid}", headers=bearer(SJH))).status_code == 403
            search = (
                await planning.get("/fhir/CarePlan", params={"patient": pnr}, headers=bearer(SJH))
            ).json()
            assert search["total"] == 0  # a search never shows what a read would refuse

            # the consent service audited each decision: who asked to see what, and what was decided
            audit = (await consent.get("/audit", params={"patient": pnr}, headers=bearer(VC))).json()
            seen = {(a["recipient_hsa_id"], a["outcome"], a["category"]) for a in audit}
            assert (SOC, "permit", "sip-plan") in seen
            assert (SJH, "deny", "sip-plan") in seen
            assert (SOLNA, "deny", "sip-plan") in seen
            fhir_audit = (
                await consent.get("/fhir/AuditEvent", params={"patient": pnr}, headers=bearer(VC))
            ).json()
            assert fhir_audit["resourceType"] == "Bundle" and fhir_audit["total"] >= 3

            # commands need an organisation taking part in the case
            r = await planning.post(f"/cases/{cid}/close", json={"reason": "test"}, headers=bearer(SOLNA))
            assert r.status_code == 404
            json.dumps(audit)  # the audit is plain JSON for the person's own view
    finally:
        for app in services.values():
            await app.state.runtime.stop()
