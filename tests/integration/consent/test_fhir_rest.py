"""Consent's FHIR REST behaviour (shared/fhir_rest.py), in-process with authentication on: its
CapabilityStatement walked, every /fhir route advertised, Consent and AuditEvent searches filtered
before paging (every visible record once through the next links, total right), versions and caching,
If-Match on withdrawal, bdl-8 history, _summary/_elements, formats, OperationOutcome for every error."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import uuid4

from tests.integration.consent import test_access
from tests.integration.consent.test_access import (
    CALLERS,
    COVERED,
    OWNER,
    PARTICIPANT,
    PERSON,
    World,
    request_consent,
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

world = test_access.world  # the fixture: the adult's and the child's consents, authentication on
BASE = "http://127.0.0.1:8081"  # ConsentSettings' fhir_base_url default


async def more_consents(w: World, n: int, recorder: str = OWNER) -> list[str]:
    """``n`` more consents of the adult's: each for a case of its own, recorded by ``recorder``."""
    made = []
    for _ in range(n):
        case = uuid4()
        await request_consent(w.rt, case, PERSON, recorder, (recorder,))
        r = await w.http.post("/consents", headers=CALLERS["owner" if recorder == OWNER else "participant"], json={
            "case_id": str(case), "patient_identifier": PERSON, "decision": "granted", "recipients": [recorder],
        })  # fmt: skip
        assert r.status_code == 201, r.text
        made.append(r.json()["id"])
    return made


def tick(w: World) -> None:
    """Time passes (the world's clock is fixed): what is written next is newer than what was read."""
    w.http._transport.app.state.clock.advance(timedelta(seconds=1))  # type: ignore[attr-defined]


async def follow(w: World, who: str, path: str, **params) -> tuple[list[str], list[dict]]:
    """Every page through the absolute next links, time passing between the requests (each search
    is audited: the trail grows while it is paged)."""
    ids: list[str] = []
    bundles: list[dict] = []
    tick(w)
    r = await w.http.get(path, params=params, headers=CALLERS[who])
    while True:
        tick(w)
        assert r.status_code == 200, r.text[:300]
        bundle = r.json()
        check_bundle(bundle, BASE)
        bundles.append(bundle)
        ids += [e["resource"]["id"] for e in bundle.get("entry", [])]
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not nxt:
            return ids, bundles
        r = await w.http.get(nxt[0].removeprefix(BASE), headers=CALLERS[who])


async def test_the_capability_statement_is_walked_and_names_every_route(world: World) -> None:
    await world.http.get(f"/fhir/Consent/{world.consent}", headers=CALLERS["owner"])  # an audited read
    aid = (
        await world.http.get("/fhir/AuditEvent", params={"patient": PERSON}, headers=CALLERS["operator"])
    ).json()
    samples = Samples(
        headers=CALLERS["operator"],
        ids={"Consent": world.consent, "AuditEvent": aid["entry"][0]["resource"]["id"]},
        search={"Consent": {"patient": PERSON, "status": "active"}, "AuditEvent": {"patient": PERSON}},
        with_each={"Consent": {"patient": PERSON}},
    )
    done = await walk_capabilities(world.http, BASE, samples)
    assert {"Consent:read", "Consent:vread", "Consent:history-instance", "Consent:search-type",
            "AuditEvent:read", "AuditEvent:search-type", "Consent?patient", "Consent?status"} <= done  # fmt: skip
    await every_route_advertised(world.http)


async def test_consent_paging_yields_every_visible_consent_once(world: World) -> None:
    mine = await more_consents(world, 3)  # the owner's
    theirs = await more_consents(world, 2, recorder=PARTICIPANT)  # a participant's own cases
    for who, expected in {
        "owner": {world.consent, *mine},
        "participant": {world.consent, *theirs},
        "person": {world.consent, *mine, *theirs},
        "covered": {world.consent},
        "stranger": set(),
    }.items():
        ids, bundles = await follow(world, who, "/fhir/Consent", patient=PERSON, _count=2, _total="accurate")
        assert sorted(ids) == sorted(expected), who
        assert all(b["total"] == len(expected) for b in bundles), who
    # a consent recorded between pages is not on them (the search is frozen at its first page)
    first = (await world.http.get("/fhir/Consent", params={"patient": PERSON, "_count": 2},
                                  headers=CALLERS["owner"])).json()  # fmt: skip
    tick(world)
    await more_consents(world, 1)
    ids = [e["resource"]["id"] for e in first["entry"]]
    r = first
    while nxt := [link["url"] for link in r["link"] if link["relation"] == "next"]:
        r = (await world.http.get(nxt[0].removeprefix(BASE), headers=CALLERS["owner"])).json()
        ids += [e["resource"]["id"] for e in r["entry"]]
    assert sorted(ids) == sorted({world.consent, *mine})


async def test_audit_event_paging_yields_every_visible_entry_once(world: World) -> None:
    for _ in range(6):  # reads by the covered organisation: entries it may see
        tick(world)
        await world.http.get(f"/fhir/Consent/{world.consent}", headers=CALLERS["covered"])
    everything, _ = await follow(world, "operator", "/fhir/AuditEvent", patient=PERSON, _count=1000)
    ids, bundles = await follow(world, "operator", "/fhir/AuditEvent", patient=PERSON, _count=2)
    # the whole trail as it was at the first page: the one search before it is new, the later pages'
    # own audit entries are not on them
    assert len(bundles) >= 4 and ids[1:] == everything and len(set(ids)) == len(ids)
    assert all(b["total"] == len(ids) for b in bundles)
    covered, cb = await follow(world, "covered", "/fhir/AuditEvent", patient=PERSON, _count=2)
    assert len(set(covered)) == len(covered) == cb[0]["total"] >= 3
    assert set(covered) < set(everything) | set(ids) | set(covered)
    for e in (await world.http.get("/fhir/AuditEvent", params={"patient": PERSON, "_count": 50},
                                   headers=CALLERS["covered"])).json()["entry"]:  # fmt: skip
        assert e["resource"]["meta"]["versionId"] == "1"


async def test_an_entry_filed_late_between_pages_moves_no_audit_page_along(world: World) -> None:
    """Reads in planning reach the trail by broker, with the time they happened: an entry can be filed
    after a first page with a time before that page's end. Keyset paging: no entry twice, none lost."""
    for _ in range(6):
        tick(world)
        await world.http.get(f"/fhir/Consent/{world.consent}", headers=CALLERS["covered"])
    tick(world)
    headers = CALLERS["operator"]
    first = (
        await world.http.get("/fhir/AuditEvent", params={"patient": PERSON, "_count": 2}, headers=headers)
    ).json()
    clock = world.http._transport.app.state.clock  # type: ignore[attr-defined]
    now = clock.now()
    # a read filed now, dated just after the first page's last entry (before the search began)
    clock._now = datetime.fromisoformat(first["entry"][-1]["resource"]["recorded"]) + timedelta(
        milliseconds=500
    )
    await world.http.get(f"/fhir/Consent/{world.consent}", headers=CALLERS["covered"])
    clock._now = now + timedelta(seconds=5)
    ids = [e["resource"]["id"] for e in first["entry"]]
    r = first
    while nxt := [link["url"] for link in r["link"] if link["relation"] == "next"]:
        assert "_cursor=" in nxt[0]
        r = (await world.http.get(nxt[0].removeprefix(BASE), headers=headers)).json()
        ids += [e["resource"]["id"] for e in r.get("entry", [])]
    assert len(ids) == len(set(ids)) == first["total"]


async def test_versions_etag_304_if_match_and_bdl8_history(world: World) -> None:
    r = await world.http.get(f"/fhir/Consent/{world.consent}", headers=CALLERS["owner"])
    assert r.headers["etag"] == 'W/"1"' and r.headers["last-modified"].endswith(" GMT")
    r304 = await world.http.get(
        f"/fhir/Consent/{world.consent}", headers={**CALLERS["owner"], "If-None-Match": 'W/"1"'}
    )
    assert r304.status_code == 304
    # a withdrawal with a stale If-Match: 412 and nothing happens; with the current one: withdrawn
    body = {"recorded_by_hsa_id": OWNER}
    stale = {**CALLERS["owner"], "If-Match": 'W/"7"'}
    r = await world.http.post(f"/consents/{world.consent}/withdraw", json=body, headers=stale)
    assert r.status_code == 412, r.text
    assert (await world.http.get(f"/fhir/Consent/{world.consent}", headers=CALLERS["owner"])).json()[
        "status"
    ] == "active"
    r = await world.http.post(f"/consents/{world.consent}/withdraw", json=body,
                              headers={**CALLERS["owner"], "If-Match": 'W/"1"'})  # fmt: skip
    assert r.status_code == 200, r.text
    history = (
        await world.http.get(f"/fhir/Consent/{world.consent}/_history", headers=CALLERS["owner"])
    ).json()
    check_bundle(history, BASE)
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    assert {e["fullUrl"] for e in history["entry"]} == {f"{BASE}/fhir/Consent/{world.consent}"}
    v1 = await world.http.get(f"/fhir/Consent/{world.consent}/_history/1", headers=CALLERS["owner"])
    assert v1.headers["etag"] == 'W/"1"' and v1.json()["meta"]["versionId"] == "1"
    aid = history["entry"][0]["resource"]["id"]
    assert aid == world.consent


async def test_summary_elements_formats_and_errors(world: World) -> None:
    url = f"/fhir/Consent/{world.consent}"
    s = (await world.http.get(url, params={"_summary": "true"}, headers=CALLERS["owner"])).json()
    assert (
        s["meta"]["tag"][0]["code"] == "SUBSETTED"
        and "extension" not in s
        and "provision" in s
        and s["status"] == "active"
    )
    e = (await world.http.get(url, params={"_elements": "dateTime"}, headers=CALLERS["owner"])).json()
    assert "dateTime" in e and "provision" not in e
    c = (await world.http.get("/fhir/Consent", params={"patient": PERSON, "_summary": "count"},
                              headers=CALLERS["owner"])).json()  # fmt: skip
    assert c["total"] == 1 and "entry" not in c
    await check_negotiation(world.http, url, CALLERS["owner"], r5=True)
    await check_negotiation(world.http, "/fhir/AuditEvent", {**CALLERS["person"]}, r5=False)
    assert await walk_errors(world.http, CALLERS["operator"]) > 10
    r = await world.http.get("/fhir/AuditEvent", params={"patient": "nonsense"}, headers=CALLERS["owner"])
    assert r.status_code == 400 and is_outcome(r)
    for cursor in ("garbage", "2026-01-01T00:00:00~x", "2026-01-01T00:00:00~" + "0" * 32):
        r = await world.http.get(
            "/fhir/AuditEvent", params={"patient": PERSON, "_cursor": cursor}, headers=CALLERS["operator"]
        )
        assert r.status_code == 400 and is_outcome(r), cursor
    r = await world.http.get("/fhir/Consent", params={"bogus": "1"},
                             headers={**CALLERS["owner"], "Prefer": "handling=strict"})  # fmt: skip
    assert r.status_code == 400 and is_outcome(r)
    r = await world.http.get(
        "/fhir/Consent", params={"bogus": "1", "patient": PERSON}, headers=CALLERS["owner"]
    )
    assert r.status_code == 200 and "bogus" not in r.json()["link"][0]["url"]
    r = await world.http.get(url)
    assert r.status_code == 401 and is_outcome(r)
    r = await world.http.get(url, headers=CALLERS["stranger"])
    assert r.status_code == 403 and is_outcome(r)
    assert COVERED
