"""Notify's FHIR REST behaviour (shared/fhir_rest.py), in-process with authentication on: its generated
CapabilityStatement walked, every /fhir route advertised, Communication with meta, ETag and
Last-Modified (304 on If-None-Match), _summary/_elements, R4 JSON only (406 otherwise), and an
OperationOutcome for every error under /fhir."""

from __future__ import annotations

from tests.integration.notify import test_access
from tests.integration.notify.test_access import CALLERS
from tests.support.fhir_checks import (
    Samples,
    check_bundle,
    check_negotiation,
    every_route_advertised,
    is_outcome,
    walk_capabilities,
    walk_errors,
)

world = test_access.world  # the fixture: an invitation and an escalation, authentication on
BASE = "http://127.0.0.1:8082"  # NotifySettings' fhir_base_url default


async def test_the_capability_statement_is_walked_and_names_every_route(world) -> None:
    _app, http, case, made = world
    samples = Samples(
        headers=CALLERS["owner"],
        ids={"Communication": str(made[0].id)},
        search={"Communication": {"about": f"CarePlan/{case}"}},
    )
    assert await walk_capabilities(http, BASE, samples) == {
        "Communication:read",
        "Communication:search-type",
        "Communication?about",
    }
    await every_route_advertised(http)
    statement = (await http.get("/fhir/metadata")).json()
    assert (
        "OAuth" in str(statement["rest"][0]["security"])
        and statement["software"]["name"] == "sip-suite notify"
    )


async def test_a_cases_communications_paged_as_each_caller_may_see_them(world) -> None:
    _app, http, case, made = world
    expected = {
        "owner": {str(n.id) for n in made},
        "participant": {str(n.id) for n in made if n.recipient_hsa_id == test_access.PARTICIPANT},
        "stranger": set(),
    }
    assert len(expected["owner"]) >= 3
    for who, want in expected.items():
        ids: list[str] = []
        r = await http.get(
            "/fhir/Communication", params={"about": f"CarePlan/{case}", "_count": 1}, headers=CALLERS[who]
        )
        while True:
            assert r.status_code == 200, r.text[:300]
            check_bundle(r.json(), BASE)
            assert r.json()["total"] == len(want)
            ids += [e["resource"]["id"] for e in r.json().get("entry", [])]
            nxt = [link["url"] for link in r.json()["link"] if link["relation"] == "next"]
            if not nxt:
                break
            r = await http.get(nxt[0].removeprefix(BASE), headers=CALLERS[who])
        assert sorted(ids) == sorted(want), who
    r = await http.get("/fhir/Communication", headers=CALLERS["owner"])
    assert r.status_code == 400 and is_outcome(r)


async def test_communication_versions_formats_and_errors(world) -> None:
    _app, http, _case, made = world
    url = f"/fhir/Communication/{made[0].id}"
    r = await http.get(url, headers=CALLERS["owner"])
    meta = r.json()["meta"]
    assert r.headers["etag"] == f'W/"{meta["versionId"]}"' and r.headers["last-modified"].endswith(" GMT")
    r304 = await http.get(url, headers={**CALLERS["owner"], "If-None-Match": r.headers["etag"]})
    assert r304.status_code == 304
    s = (await http.get(url, params={"_summary": "true"}, headers=CALLERS["owner"])).json()
    assert "payload" not in s and s["status"] and s["meta"]["tag"][0]["code"] == "SUBSETTED"
    e = (await http.get(url, params={"_elements": "topic"}, headers=CALLERS["owner"])).json()
    assert "topic" in e and "payload" not in e and "recipient" not in e
    await check_negotiation(http, url, CALLERS["owner"], r5=False)
    assert await walk_errors(http, CALLERS["owner"]) > 5
    r = await http.get(url)
    assert r.status_code == 401 and is_outcome(r)
    r = await http.get(url, headers=CALLERS["stranger"])
    assert r.status_code == 403 and is_outcome(r)
