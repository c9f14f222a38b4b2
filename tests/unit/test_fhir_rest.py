"""The shared FHIR REST layer's pure parts (shared/fhir_rest.py): route shapes → interactions, content
negotiation, search parameters per Prefer: handling, searchset links, bdl-8 history, _summary/_elements,
If-Match."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

import pytest
from starlette.requests import Request

from shared.fhir_rest import (
    FhirError,
    SearchParam,
    check_if_match,
    classify,
    history_bundle,
    negotiate,
    parse_search,
    searchset,
    subset,
)

BASE = "https://sip.example"


def request(query: dict[str, str] | None = None, **headers: str) -> Request:
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/fhir/CarePlan",
        "query_string": urlencode(query or {}).encode(),
        "headers": [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in headers.items()],
    }
    return Request(scope)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/fhir/metadata", ("capabilities", None, None)),
        ("POST", "/fhir/$process-message", ("system-operation", None, "process-message")),
        ("GET", "/fhir/CarePlan", ("search-type", "CarePlan", None)),
        ("POST", "/fhir/CarePlan", ("create", "CarePlan", None)),
        ("POST", "/fhir/CarePlan/$validate", ("type-operation", "CarePlan", "validate")),
        ("GET", "/fhir/CarePlan/{plan_id}", ("read", "CarePlan", None)),
        ("GET", "/fhir/CarePlan/{plan_id}/_history", ("history-instance", "CarePlan", None)),
        ("GET", "/fhir/CarePlan/{plan_id}/_history/{vid}", ("vread", "CarePlan", None)),
        ("PUT", "/fhir/Consent/{id}", ("update", "Consent", None)),
    ],
)
def test_route_shapes_are_fhir_interactions(method, path, expected):
    assert classify(method, path) == expected


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/fhir/careplans"), ("POST", "/fhir/CarePlan/{id}/x/y")]
)
def test_a_shape_fhir_has_no_interaction_for_is_refused(method, path):
    with pytest.raises(LookupError):
        classify(method, path)


@pytest.mark.parametrize(
    ("headers", "query", "version"),
    [
        ({}, {}, "4.0"),
        ({"accept": "application/fhir+json"}, {}, "4.0"),
        ({"accept": "application/json, text/plain;q=0.5"}, {}, "4.0"),
        ({"accept": "application/fhir+json; fhirVersion=5.0"}, {}, "5.0"),
        ({"accept": "*/*"}, {"_format": "json"}, "4.0"),
        ({}, {"_format": "application/fhir+json;fhirVersion=5.0"}, "5.0"),
        ({}, {"_fhirVersion": "r4"}, "4.0"),
    ],
)
def test_json_in_every_spelling(headers, query, version):
    assert negotiate(request(query, **headers), ("4.0", "5.0")) == version


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({"accept": "application/fhir+xml"}, {}),
        ({"accept": "application/xml, text/xml"}, {}),
        ({}, {"_format": "xml"}),
        ({"accept": "application/fhir+json; fhirVersion=3.0"}, {}),
        ({"accept": "application/fhir+json; fhirVersion=5.0"}, {}),  # notify serves R4 only
    ],
)
def test_xml_and_versions_not_served_are_406(headers, query):
    with pytest.raises(FhirError) as exc:
        negotiate(request(query, **headers), ("4.0",))
    assert exc.value.status == 406


PARAMS = (SearchParam("patient", "reference", "who"),)


def test_unknown_parameters_lenient_by_default_strict_when_asked():
    s = parse_search(request({"patient": "x", "bogus": "1", "_count": "2", "_total": "accurate"}), PARAMS)
    assert s.criteria == [("patient", "x")] and s.ignored == ["bogus"] and s.count == 2
    with pytest.raises(FhirError) as exc:
        parse_search(request({"bogus": "1"}, prefer="handling=strict"), PARAMS)
    assert exc.value.status == 400
    for bad in ({"_count": "x"}, {"_offset": "-1"}, {"_total": "lots"}, {"_snapshot": "2026-01-01T00:00"}):
        with pytest.raises(FhirError):
            parse_search(request(bad), PARAMS)


def test_searchset_links_are_absolute_and_leave_out_what_was_ignored():
    s = parse_search(request({"patient": "x", "bogus": "1", "_count": "2", "_offset": "2"}), PARAMS)
    page = [{"resourceType": "CarePlan", "id": "a", "meta": {"versionId": "1"}}]
    at = datetime(2026, 12, 1, tzinfo=UTC)
    b = searchset(BASE, "CarePlan", s, page, 5, at)
    links = {link["relation"]: link["url"] for link in b["link"]}
    assert set(links) == {"self", "first", "previous", "next"}
    assert all(u.startswith(f"{BASE}/fhir/CarePlan?") and "bogus" not in u for u in links.values())
    assert (
        "_offset=4" in links["next"] and "_offset" not in links["previous"] and "_snapshot=" in links["next"]
    )
    assert b["total"] == 5 and b["id"] and b["entry"][0]["fullUrl"] == f"{BASE}/fhir/CarePlan/a"
    empty = searchset(BASE, "CarePlan", s, [], 0)
    assert "entry" not in empty and empty["total"] == 0


def test_history_fullurls_are_never_version_specific():
    versions = [
        ({"resourceType": "Consent", "id": "c", "meta": {"versionId": v, "lastUpdated": "2026-12-01T00:00:00Z"}},
         "POST" if v == "1" else "PUT", "201" if v == "1" else "200")
        for v in ("2", "1")
    ]  # fmt: skip
    b = history_bundle(BASE, versions)
    assert {e["fullUrl"] for e in b["entry"]} == {f"{BASE}/fhir/Consent/c"}
    assert [e["response"]["etag"] for e in b["entry"]] == ['W/"2"', 'W/"1"']
    assert [e["request"]["url"] for e in b["entry"]] == ["Consent/c", "Consent"]


def test_summary_and_elements():
    plan = {
        "resourceType": "CarePlan", "id": "p", "meta": {"versionId": "3"}, "text": {"status": "generated"},
        "status": "active", "intent": "plan", "subject": {"display": "x"}, "activity": [{"detail": {}}],
        "title": "SIP",
    }  # fmt: skip
    summary = subset(plan, "true", None, "4.0")
    assert "activity" not in summary and "text" not in summary and summary["title"] == "SIP"
    assert summary["meta"]["tag"][0]["code"] == "SUBSETTED" and "tag" not in plan["meta"]
    assert set(subset(plan, "text", None, "4.0")) == {
        "resourceType",
        "id",
        "meta",
        "text",
        "status",
        "intent",
        "subject",
    }
    assert "text" not in subset(plan, "data", None, "4.0") and "activity" in subset(plan, "data", None, "4.0")
    assert set(subset(plan, None, ["title"], "4.0")) == {
        "resourceType",
        "id",
        "meta",
        "title",
        "status",
        "intent",
        "subject",
    }
    assert subset(plan, "false", None, "4.0") is plan


def test_if_match():
    check_if_match(request(), 3)  # no header: goes ahead
    check_if_match(request(if_match='W/"3"'), 3)
    check_if_match(request(if_match='"3"'), 3)
    check_if_match(request(if_match="*"), 3)
    with pytest.raises(FhirError) as exc:
        check_if_match(request(if_match='W/"2"'), 3)
    assert exc.value.status == 412
