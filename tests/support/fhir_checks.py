"""Checks of the FHIR REST layer (shared/fhir_rest.py) that every service must pass: the Bundle rules
(absolute fullUrls, bdl-8, id, links), a walk of the CapabilityStatement that exercises every
advertised interaction and search parameter, and a walk of the /fhir routes with bad ids and methods
that must all answer an OperationOutcome. Used in-process (httpx over ASGI) and against processes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import httpx

from shared.fhir_rest import classify

FHIR_JSON = "application/fhir+json"


def check_bundle(bundle: dict[str, Any], base: str) -> None:
    """Bundle.id, absolute links and fullUrls under ``base``; bdl-8 for history (no version in fullUrl)."""
    assert bundle["resourceType"] == "Bundle" and bundle.get("id"), bundle.get("id")
    root = base.rstrip("/") + "/fhir/"
    for link in bundle.get("link", []):
        assert link["url"].startswith(root), link
    assert "entry" not in bundle or bundle["entry"], "an empty entry list is not FHIR"
    for entry in bundle.get("entry", []):
        resource = entry["resource"]
        url = entry["fullUrl"]
        assert url == f"{root}{resource['resourceType']}/{resource['id']}", (url, resource["resourceType"])
        assert "/_history/" not in url  # bdl-8
        if bundle["type"] == "searchset":
            assert entry["search"]["mode"] in ("match", "include", "outcome")
        if bundle["type"] == "history":
            assert entry["request"]["method"] in ("POST", "PUT", "DELETE")
            assert entry["response"]["etag"] == f'W/"{resource["meta"]["versionId"]}"'
        assert resource.get("meta", {}).get("versionId"), resource["resourceType"]
        assert resource["meta"].get("lastUpdated"), resource["resourceType"]


def is_outcome(r: httpx.Response) -> bool:
    if not r.headers.get("content-type", "").startswith(FHIR_JSON):
        return False
    body = r.json()
    return body.get("resourceType") == "OperationOutcome" and bool(body.get("issue"))


@dataclass
class Samples:
    """What a capability walk needs to exercise each interaction: an id per type, a value per search
    parameter, bodies for creates and operations, and the caller's headers."""

    headers: dict[str, str]
    ids: dict[str, str]
    search: dict[str, dict[str, str]]
    bodies: dict[str, Any] = field(default_factory=dict)  # "CarePlan" (create), "CarePlan/$validate", "$op"
    body_headers: dict[str, dict[str, str]] = field(default_factory=dict)
    #: parameters a type's search needs beside the one tried (consent: an organisation names the patient)
    with_each: dict[str, dict[str, str]] = field(default_factory=dict)


async def walk_capabilities(http: httpx.AsyncClient, base: str, samples: Samples) -> set[str]:
    """Every interaction, search parameter and operation the CapabilityStatement advertises, tried;
    returns what was exercised (``type:interaction``, ``type?param``, ``$op``)."""
    r = await http.get("/fhir/metadata")
    assert r.status_code == 200, r.text
    statement = r.json()
    assert statement["resourceType"] == "CapabilityStatement" and statement["fhirVersion"] == "4.0.1"
    assert statement["implementation"]["url"] == base.rstrip("/") + "/fhir"
    rest = statement["rest"][0]
    assert rest["security"]["description"]
    done: set[str] = set()
    h = samples.headers
    for res in rest.get("resource", []):
        rtype = res["type"]
        for inter in res.get("interaction", []):
            code = inter["code"]
            rid = samples.ids.get(rtype)
            if code == "read":
                r = await http.get(f"/fhir/{rtype}/{rid}", headers=h)
                assert r.status_code == 200, (rtype, code, r.text[:300])
                assert r.headers["etag"].startswith('W/"') and r.headers["last-modified"].endswith("GMT")
                r304 = await http.get(
                    f"/fhir/{rtype}/{rid}", headers={**h, "If-None-Match": r.headers["etag"]}
                )
                assert r304.status_code == 304 and r304.content == b"", (rtype, r304.status_code)
            elif code == "vread":
                vid = (await http.get(f"/fhir/{rtype}/{rid}", headers=h)).json()["meta"]["versionId"]
                r = await http.get(f"/fhir/{rtype}/{rid}/_history/{vid}", headers=h)
                assert r.status_code == 200 and r.headers["etag"] == f'W/"{vid}"', (rtype, code, r.text[:300])
            elif code == "history-instance":
                r = await http.get(f"/fhir/{rtype}/{rid}/_history", headers=h)
                assert r.status_code == 200, (rtype, code, r.text[:300])
                assert r.json()["type"] == "history" and r.json()["entry"]
                check_bundle(r.json(), base)
            elif code == "search-type":
                params = res.get("searchParam", [])
                for p in params:
                    value = samples.search[rtype][p["name"]]
                    r = await http.get(
                        f"/fhir/{rtype}",
                        params={**samples.with_each.get(rtype, {}), p["name"]: value},
                        headers={**h, "Prefer": "handling=strict"},
                    )
                    assert r.status_code == 200, (rtype, p["name"], r.text[:300])
                    assert r.json()["type"] == "searchset" and "total" in r.json()
                    check_bundle(r.json(), base)
                    done.add(f"{rtype}?{p['name']}")
            elif code == "create":
                key = rtype
                r = await http.post(
                    f"/fhir/{rtype}",
                    json=samples.bodies[key],
                    headers={**h, **samples.body_headers.get(key, {})},
                )
                assert r.status_code in (200, 201), (rtype, code, r.text[:300])
                assert r.headers["etag"].startswith('W/"') and r.headers.get("location", "").startswith(base)
            else:
                raise AssertionError(f"{rtype}: interaction {code} advertised but this walk cannot try it")
            done.add(f"{rtype}:{code}")
        for op in res.get("operation", []):
            key = f"{rtype}/${op['name']}"
            r = await http.post(f"/fhir/{key}", json=samples.bodies[key], headers=h)
            assert r.status_code == 200, (key, r.text[:300])
            done.add(key)
    for op in rest.get("operation", []):
        key = f"${op['name']}"
        r = await http.post(
            f"/fhir/{key}", json=samples.bodies[key], headers={**h, **samples.body_headers.get(key, {})}
        )
        assert r.status_code == 200, (key, r.text[:300])
        done.add(key)
    return done


def advertised(statement: dict[str, Any]) -> set[tuple[str, str | None, str | None]]:
    """(interaction, type, operation) triples the statement names, as :func:`classify` gives them."""
    out: set[tuple[str, str | None, str | None]] = {("capabilities", None, None)}
    rest = statement["rest"][0]
    for res in rest.get("resource", []):
        for inter in res.get("interaction", []):
            out.add((inter["code"], res["type"], None))
        for op in res.get("operation", []):
            out.add(("type-operation", res["type"], op["name"]))
    for op in rest.get("operation", []):
        out.add(("system-operation", None, op["name"]))
    return out


def fhir_paths(openapi: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (method.upper(), path)
        for path, ops in openapi["paths"].items()
        if path == "/fhir" or path.startswith("/fhir/")
        for method in ops
    ]


async def every_route_advertised(http: httpx.AsyncClient) -> None:
    statement = (await http.get("/fhir/metadata")).json()
    openapi = (await http.get("/openapi.json")).json()
    names = advertised(statement)
    missing = [(m, p) for m, p in fhir_paths(openapi) if classify(m, p) not in names]
    assert missing == [], missing


async def walk_errors(http: httpx.AsyncClient, headers: dict[str, str]) -> int:
    """Every /fhir route with a bad id, and with methods it does not serve; an unknown type; each must
    answer 4xx with an OperationOutcome. Returns how many requests were tried."""
    openapi = (await http.get("/openapi.json")).json()
    tried = 0
    paths = {p for _, p in fhir_paths(openapi)}
    for path in sorted(paths):
        served = {m.upper() for m in openapi["paths"][path]}
        bad = re.sub(r"\{[^}]+\}", "no-such-id", path)
        if "GET" in served and "{" in path:
            r = await http.get(bad, headers=headers)
            assert r.status_code in (400, 404) and is_outcome(r), (bad, r.status_code, r.text[:200])
            tried += 1
        for method in ("PUT", "DELETE", "PATCH", "POST", "GET"):
            if method in served:
                continue
            r = await http.request(method, bad, headers=headers, json={"resourceType": "Basic"})
            # 405; 404 where the path is also another route's (GET CarePlan/$validate reads id '$validate')
            assert r.status_code in (404, 405) and is_outcome(r), (method, bad, r.status_code, r.text[:200])
            if method in ("PUT", "DELETE", "PATCH"):
                assert r.status_code == 405, (method, bad, r.status_code)
            tried += 1
    for path in ("/fhir/NoSuchType", "/fhir/NoSuchType/1", "/fhir/CarePlan/x/y/z/w"):
        r = await http.get(path, headers=headers)
        assert r.status_code == 404 and is_outcome(r), (path, r.status_code, r.text[:200])
        tried += 1
    r = await http.get("/fhir/metadata", headers={"Accept": "application/fhir+xml"})
    assert r.status_code == 406 and is_outcome(r)
    return tried + 1


async def check_negotiation(http: httpx.AsyncClient, url: str, headers: dict[str, str], r5: bool) -> None:
    """JSON in every spelling FHIR allows; XML and unserved versions 406 with an OperationOutcome."""
    for accept in (
        "application/fhir+json",
        "application/json",
        "application/fhir+json; fhirVersion=4.0",
        "*/*",
    ):
        r = await http.get(url, headers={**headers, "Accept": accept})
        assert r.status_code == 200, (accept, r.text[:200])
    for fmt in ("json", "application/fhir+json", "application/json"):
        r = await http.get(url, params={"_format": fmt}, headers=headers)
        assert r.status_code == 200, (fmt, r.text[:200])
    for accept in (
        "application/fhir+xml",
        "application/xml",
        "text/xml",
        "application/fhir+json; fhirVersion=3.0",
    ):
        r = await http.get(url, headers={**headers, "Accept": accept})
        assert r.status_code == 406 and is_outcome(r), (accept, r.status_code)
    for fmt in ("xml", "application/fhir+xml", "text/turtle"):
        r = await http.get(url, params={"_format": fmt}, headers=headers)
        assert r.status_code == 406 and is_outcome(r), (fmt, r.status_code)
    r = await http.get(url, headers={**headers, "Accept": "application/fhir+json; fhirVersion=5.0"})
    assert r.status_code == (200 if r5 else 406), r.status_code
    if r5:
        assert "fhirVersion=5.0" in r.headers["content-type"]
