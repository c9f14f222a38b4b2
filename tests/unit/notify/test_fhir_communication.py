"""Every delivery is readable as a FHIR R4 Communication: completed, or not-done with the reason."""

from __future__ import annotations

import httpx
from fhir.resources.R4B.communication import Communication

from services.notify.ports import PermanentSendError
from tests.unit.notify.test_dispatcher import accept

VC = "SE2321000016-VC001"


async def read(app, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://notify") as client:
        return await client.get(path)


async def test_communication_follows_the_delivery(app, settings, clock, sender, webhook, sms):
    created = {n.channel: n for n in await accept(app, settings, clock, VC)}
    email, hook = created["email"], created["webhook"]

    r = await read(app, f"/fhir/Communication/{email.id}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    before = r.json()
    Communication.model_validate(before)
    assert before["status"] == "preparation" and "sent" not in before

    webhook.errors = [PermanentSendError("webhook answered HTTP 400 Bad Request")]
    await app.state.dispatcher.dispatch_once()

    done = (await read(app, f"/fhir/Communication/{email.id}")).json()
    Communication.model_validate(done)
    assert done["id"] == str(email.id)
    assert done["status"] == "completed"
    assert done["sent"] == "2026-03-02T08:00:00Z"
    assert {"system": "urn:sip-suite:notification", "value": str(email.id)} in done["identifier"]
    assert done["recipient"] == [
        {"type": "Organization", "identifier": {"system": "urn:oid:1.2.752.29.4.19", "value": VC}}
    ]
    assert done["sender"]["identifier"]["value"] == VC  # the owning unit (the invited primary-care unit)
    assert done["medium"][0]["coding"][0]["code"] == "EMAILWRIT"
    assert done["category"][0]["coding"][0]["code"] == "invitation"
    # the plan as a FHIR reference (CarePlan id = case id), whatever page plan_url links people to
    assert done["about"] == [{"reference": f"CarePlan/{email.case_id}", "type": "CarePlan"}]
    assert "subject" not in done  # never the patient
    assert "statusReason" not in done

    failed = (await read(app, f"/fhir/Communication/{hook.id}")).json()
    Communication.model_validate(failed)
    assert failed["status"] == "not-done"
    assert failed["statusReason"]["text"] == "webhook answered HTTP 400 Bad Request"
    assert "sent" not in failed

    detail = (await read(app, f"/notifications/{hook.id}")).json()
    assert (detail["status"], detail["kind"], detail["fhir_url"]) == (
        "failed",
        "invitation",
        f"/fhir/Communication/{hook.id}",
    )


async def test_unknown_communication_is_a_fhir_404(app):
    for path in ("/fhir/Communication/00000000-0000-0000-0000-000000000000", "/fhir/Communication/nope"):
        r = await read(app, path)
        assert r.status_code == 404
        assert r.json()["resourceType"] == "OperationOutcome"
