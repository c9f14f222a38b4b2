"""Planning's FHIR REST behaviour (shared/fhir_rest.py), in-process with authentication on: the
CapabilityStatement walked (every interaction and search parameter it advertises is tried, every /fhir
route is in it), paging that loses nothing, versions and caching, _summary/_elements, content
negotiation, an OperationOutcome for every error, $validate with Parameters, conditional create and
the identifier search, Provenance read."""

from __future__ import annotations

import json
from datetime import timedelta
from uuid import UUID

from shared.identifiers import PERSONNUMMER_SYSTEM
from tests.integration.planning import test_access
from tests.integration.planning.test_access import (
    CALLERS,
    HOSPITAL,
    OWNER,
    PENDING,
    PERSON,
    REPO,
    T0,
    open_case,
)
from tests.support.fhir_checks import (
    Samples,
    check_bundle,
    check_negotiation,
    every_route_advertised,
    is_outcome,
    walk_capabilities,
    walk_errors,
)
from tests.support.personnummer import ADULTS

world = test_access.world  # the fixture: six cases, the gate's consents, authentication on
BASE = "http://127.0.0.1:8080"  # PlanningSettings' public_base_url default


def care_plan(pnr: str, author: str = OWNER, ident: str | None = None) -> dict:
    body = {
        "resourceType": "CarePlan", "status": "draft", "intent": "proposal",
        "subject": {"identifier": {"system": PERSONNUMMER_SYSTEM, "value": pnr}},
        "author": {"identifier": {"system": "urn:oid:1.2.752.29.4.19", "value": author}},
    }  # fmt: skip
    if ident:
        system, _, value = ident.rpartition("|")
        body["identifier"] = [{"system": system, "value": value}]
    return body


async def follow(world, who: str, url: str, **params) -> tuple[list[str], list[dict]]:
    """Every page of a search through its absolute next links: the ids seen, the bundles."""
    ids: list[str] = []
    bundles: list[dict] = []
    r = await world.http.get(url, params=params, headers=CALLERS[who])
    while True:
        assert r.status_code == 200, r.text[:300]
        bundle = r.json()
        check_bundle(bundle, BASE)
        bundles.append(bundle)
        ids += [e["resource"]["id"] for e in bundle.get("entry", [])]
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not nxt:
            return ids, bundles
        assert nxt[0].startswith(BASE + "/fhir/CarePlan?")
        r = await world.http.get(nxt[0].removeprefix(BASE), headers=CALLERS[who])


async def test_the_capability_statement_is_walked_and_names_every_route(world):
    cs = world.cases
    plan = (await world.get("owner", f"/fhir/CarePlan/{cs['adult']}")).json()
    reference = next(i for i in plan["identifier"] if i["system"].startswith("urn:"))
    message = json.loads(
        (
            REPO / "tests/conformance/davinci-notifications/discharge-notification-message-bundle-01.json"
        ).read_text()
    )
    samples = Samples(
        headers=CALLERS["owner"],
        ids={"CarePlan": str(cs["adult"]), "Provenance": f"{cs['adult']}-1"},
        search={
            "CarePlan": {
                "patient": PERSON,
                "subject:identifier": f"{PERSONNUMMER_SYSTEM}|{PERSON}",
                "status": "active",
                "category": "SIP",
                "date": "ge2026-01-01",
                "identifier": f"{reference['system']}|{reference['value']}",
            },
            "Provenance": {"target": f"CarePlan/{cs['adult']}"},
        },
        bodies={
            "CarePlan": care_plan(ADULTS[11]),
            "CarePlan/$validate": {
                "resourceType": "Parameters",
                "parameter": [{"name": "resource", "resource": care_plan(ADULTS[11])}],
            },
            "$process-message": message,
        },
        body_headers={"$process-message": CALLERS["hospital"]},
    )
    done = await walk_capabilities(world.http, BASE, samples)
    assert {"CarePlan:read", "CarePlan:vread", "CarePlan:history-instance", "CarePlan:search-type",
            "CarePlan:create", "CarePlan/$validate", "Provenance:read", "Provenance:search-type",
            "Provenance?target", "CarePlan?identifier", "$process-message"} <= done  # fmt: skip
    await every_route_advertised(world.http)
    statement = (await world.http.get("/fhir/metadata")).json()
    [careplan] = [r for r in statement["rest"][0]["resource"] if r["type"] == "CarePlan"]
    assert careplan["conditionalCreate"] is True and careplan["versioning"] == "versioned"
    assert statement["messaging"] and "application/fhir+json" in statement["format"]


async def test_paging_through_next_yields_every_visible_plan_once_with_the_right_total(world):
    cs = world.cases
    want = {
        "owner": {cs["adult"], cs["child"], cs["more"]},
        "covered": {cs["adult"], cs["other-1"], cs["other-2"]},
        "stranger": set(),
    }
    for who, expected in want.items():
        ids, bundles = await follow(world, who, "/fhir/CarePlan", _count=2, _total="accurate")
        assert sorted(ids) == sorted(str(c) for c in expected), who
        assert all(b["total"] == len(expected) for b in bundles), who
        assert all(len(b.get("entry", [])) == min(2, len(expected) - 2 * i) for i, b in enumerate(bundles))
    # previous goes back; self repeats the page
    _, bundles = await follow(world, "owner", "/fhir/CarePlan", _count=2)
    last = bundles[-1]
    prev = next(link["url"] for link in last["link"] if link["relation"] == "previous")
    again = (await world.http.get(prev.removeprefix(BASE), headers=CALLERS["owner"])).json()
    assert [e["resource"]["id"] for e in again["entry"]] == [e["resource"]["id"] for e in bundles[0]["entry"]]


async def test_a_plan_written_between_pages_neither_repeats_nor_skips_one(world):
    cs = world.cases
    first = (await world.get("owner", "/fhir/CarePlan", _count=2)).json()
    nxt = next(link["url"] for link in first["link"] if link["relation"] == "next")
    # a newer plan of the owner's arrives (it would be first in the order and push the pages along)
    await open_case(world, "late", ADULTS[12], T0 + timedelta(hours=2), consent=True)
    second = (await world.http.get(nxt.removeprefix(BASE), headers=CALLERS["owner"])).json()
    ids = [e["resource"]["id"] for e in first["entry"] + second["entry"]]
    assert sorted(ids) == sorted(str(c) for c in (cs["adult"], cs["child"], cs["more"]))
    assert second["total"] == 3
    fresh = (await world.get("owner", "/fhir/CarePlan", _count=10)).json()
    assert fresh["total"] == 4  # a new search sees it


async def test_unknown_parameters_lenient_by_default_strict_when_asked(world):
    r = await world.get("owner", "/fhir/CarePlan", bogus="1", _count="1")
    assert r.status_code == 200
    assert all("bogus" not in link["url"] for link in r.json()["link"])
    assert "_count=1" in r.json()["link"][0]["url"]
    r = await world.http.get(
        "/fhir/CarePlan", params={"bogus": "1"}, headers={**CALLERS["owner"], "Prefer": "handling=strict"}
    )
    assert r.status_code == 400 and is_outcome(r) and "bogus" in r.text
    for params in ({"_count": "x"}, {"_total": "maybe"}, {"_summary": "some"}, {"date": "yesterday"}):
        r = await world.http.get("/fhir/CarePlan", params=params, headers=CALLERS["owner"])
        assert r.status_code == 400 and is_outcome(r), params


async def test_etag_last_modified_304_and_if_match_412(world):
    cid = world.cases["adult"]
    r = await world.get("owner", f"/fhir/CarePlan/{cid}")
    version = r.json()["meta"]["versionId"]
    assert r.headers["etag"] == f'W/"{version}"' and r.headers["last-modified"].endswith(" GMT")
    r304 = await world.http.get(
        f"/fhir/CarePlan/{cid}", headers={**CALLERS["owner"], "If-None-Match": f'W/"{version}"'}
    )
    assert r304.status_code == 304 and r304.headers["etag"] == f'W/"{version}"'
    changed = await world.http.get(
        f"/fhir/CarePlan/{cid}", headers={**CALLERS["owner"], "If-None-Match": 'W/"0"'}
    )
    assert changed.status_code == 200
    v = await world.get("owner", f"/fhir/CarePlan/{cid}/_history/1")
    assert v.headers["etag"] == 'W/"1"' and v.headers["last-modified"]
    # HEAD like GET, without a body
    head = await world.http.head(f"/fhir/CarePlan/{cid}", headers=CALLERS["owner"])
    assert head.status_code == 200 and head.content == b"" and head.headers["etag"] == f'W/"{version}"'
    # a command on the plan with a stale If-Match: 412, nothing changed; with the current one it goes ahead
    stale = {**CALLERS["owner"], "If-Match": 'W/"999"'}
    r = await world.http.put(f"/cases/{cid}/preferences", json={"time_of_day": "förmiddag"}, headers=stale)
    assert r.status_code == 412, r.text
    assert (await world.get("owner", f"/fhir/CarePlan/{cid}")).json()["meta"]["versionId"] == version
    fresh = {**CALLERS["owner"], "If-Match": f'W/"{version}"'}
    r = await world.http.put(f"/cases/{cid}/preferences", json={"time_of_day": "förmiddag"}, headers=fresh)
    assert r.status_code == 200, r.text
    # the create answers with its version
    r = await world.http.post("/fhir/CarePlan", json=care_plan(ADULTS[13]), headers=CALLERS["owner"])
    assert r.status_code == 201 and r.headers["etag"] == 'W/"1"' and r.headers["last-modified"]


async def test_summary_and_elements_on_read_and_search(world):
    cid = world.cases["adult"]
    full = (await world.get("owner", f"/fhir/CarePlan/{cid}")).json()
    summary = (await world.get("owner", f"/fhir/CarePlan/{cid}", _summary="true")).json()
    assert {"status", "intent", "subject", "id", "meta"} <= set(summary) and "activity" not in summary
    assert {"code": "SUBSETTED"}.items() <= summary["meta"]["tag"][0].items()
    assert "activity" in full
    elements = (await world.get("owner", f"/fhir/CarePlan/{cid}", _elements="title,period")).json()
    assert set(elements) - {"resourceType", "id", "meta", "status", "intent", "subject"} <= {
        "title",
        "period",
    }
    data = (await world.get("owner", f"/fhir/CarePlan/{cid}", _summary="data")).json()
    assert "text" not in data and "activity" in data
    count = (await world.get("owner", "/fhir/CarePlan", _summary="count")).json()
    assert count["total"] == 3 and "entry" not in count
    page = (await world.get("owner", "/fhir/CarePlan", _elements="status")).json()
    assert page["total"] == 3 and all("activity" not in e["resource"] for e in page["entry"])
    assert (await world.get("owner", f"/fhir/CarePlan/{cid}", _summary="false")).json() == full


async def test_formats_and_versions(world):
    await check_negotiation(world.http, f"/fhir/CarePlan/{world.cases['adult']}", CALLERS["owner"], r5=True)
    await check_negotiation(world.http, "/fhir/CarePlan", CALLERS["owner"], r5=True)


async def test_every_error_under_fhir_is_an_operation_outcome(world):
    assert await walk_errors(world.http, CALLERS["owner"]) > 20
    # 401, 403 (a stranger reading), 422 (a bad body), 400 (a bad parameter)
    r = await world.http.get(f"/fhir/CarePlan/{world.cases['adult']}")
    assert r.status_code == 401 and is_outcome(r)
    r = await world.get("excluded", f"/fhir/CarePlan/{world.cases['adult']}")
    assert r.status_code in (403, 404) and is_outcome(r)
    r = await world.http.post("/fhir/CarePlan", json={"resourceType": "Patient"}, headers=CALLERS["owner"])
    assert r.status_code == 422 and is_outcome(r)
    r = await world.http.post("/fhir/CarePlan", content=b"<CarePlan/>", headers={
        **CALLERS["owner"], "Content-Type": "application/fhir+xml"})  # fmt: skip
    assert r.status_code == 415 and is_outcome(r)
    r = await world.get("owner", "/fhir/Provenance")
    assert r.status_code == 400 and is_outcome(r)
    # not under /fhir: FastAPI's own answer stays
    r = await world.http.delete("/cases", headers=CALLERS["owner"])
    assert r.status_code == 405 and "detail" in r.json()


async def test_validate_takes_parameters_or_a_bare_resource(world):
    plan = care_plan(ADULTS[14])
    for body in (
        plan,
        {
            "resourceType": "Parameters",
            "parameter": [{"name": "mode", "valueCode": "create"}, {"name": "resource", "resource": plan}],
        },
    ):
        r = await world.http.post("/fhir/CarePlan/$validate", json=body, headers=CALLERS["owner"])
        assert r.status_code == 200 and r.json()["issue"][0]["severity"] == "information", r.text
    bad = {
        "resourceType": "Parameters",
        "parameter": [{"name": "resource", "resource": {**plan, "status": "x"}}],
    }
    r = await world.http.post("/fhir/CarePlan/$validate", json=bad, headers=CALLERS["owner"])
    assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["CarePlan.status"]
    r = await world.http.post(
        "/fhir/CarePlan/$validate", json={"resourceType": "Parameters"}, headers=CALLERS["owner"]
    )
    assert r.status_code == 422 and is_outcome(r)


async def test_conditional_create_stores_the_identifier_and_search_finds_it(world):
    ident = "urn:example:journal|P-1212"
    cond = {**CALLERS["owner"], "If-None-Exist": f"identifier={ident}"}
    first = await world.http.post("/fhir/CarePlan", json=care_plan(PENDING), headers=cond)
    again = await world.http.post("/fhir/CarePlan", json=care_plan(PENDING), headers=cond)
    assert first.status_code == 201 and again.status_code == 200, (first.text, again.text)
    assert first.json()["id"] == again.json()["id"]
    assert first.headers["location"].startswith(f"{BASE}/fhir/CarePlan/{first.json()['id']}")
    assert {"system": "urn:example:journal", "value": "P-1212"} in first.json()["identifier"]
    found = (await world.get("owner", "/fhir/CarePlan", identifier=ident)).json()
    assert found["total"] == 1 and found["entry"][0]["resource"]["id"] == first.json()["id"]
    # an identifier in the body (no condition) is kept too
    r = await world.http.post("/fhir/CarePlan", json=care_plan(ADULTS[15], ident="urn:example:journal|P-2"),
                              headers=CALLERS["owner"])  # fmt: skip
    assert r.status_code == 201
    found = (await world.get("owner", "/fhir/CarePlan", identifier="urn:example:journal|P-2")).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [r.json()["id"]]
    # another organisation's search does not find it
    assert (await world.get("stranger", "/fhir/CarePlan", identifier=ident)).json()["total"] == 0


async def test_provenance_read_history_bdl8_and_bundles(world):
    cid = world.cases["adult"]
    history = (await world.get("owner", f"/fhir/CarePlan/{cid}/_history")).json()
    check_bundle(history, BASE)
    assert len({e["fullUrl"] for e in history["entry"]}) == 1  # one resource, many versions: bdl-8
    found = (await world.get("owner", "/fhir/Provenance", target=f"CarePlan/{cid}", _count=1)).json()
    check_bundle(found, BASE)
    assert found["total"] == len(history["entry"]) and len(found["entry"]) == 1
    for e in found["entry"]:
        r = await world.http.get(e["fullUrl"].removeprefix(BASE), headers=CALLERS["owner"])
        assert r.status_code == 200 and r.json() == e["resource"] and r.headers["etag"] == 'W/"1"'
    assert (await world.get("stranger", f"/fhir/Provenance/{cid}-1")).status_code == 404
    assert (await world.get("owner", f"/fhir/Provenance/{cid}-99")).status_code == 404
    assert (await world.get("owner", f"/fhir/Provenance/{UUID(int=0)}-1")).status_code == 404
    assert HOSPITAL
