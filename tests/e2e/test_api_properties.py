"""Property-based API tests (schemathesis): whatever a caller sends, no service answers 5xx.

The three services run as processes (real RabbitMQ, SMTP sink, their own databases) with
authentication on; every request carries a valid token of an organisation in the directory. For each
operation of each service's own ``/openapi.json``, schemathesis generates requests — valid ones and
ones that break the schema (wrong types, huge integers, odd strings, missing fields) — and each answer
must be below 500. A 503 is a dependency that is down (the consent gate, the broker) and is allowed.

Bounded for this machine: ``MAX_EXAMPLES`` per operation and generation mode, no shrinking, derandomized
(the same requests every run), so the whole file takes a couple of minutes.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
import requests
import schemathesis

# schemathesis imports its OpenAPI modules lazily, at the first schema; pytest rewrites them (it is a
# plugin) and CPython 3.11.7 once failed that mid-test with "SystemError: AST constructor recursion
# depth mismatch" (fixed in later CPython). Imported here, at collection, with a shallow stack.
import schemathesis.specs.openapi.schemas
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from shared.auth import mint_token
from tests.conftest import TEST_JWT_SECRET
from tests.support.infra import mail_sink, rabbit_vhost
from tests.support.suite import SERVICES, Suite, running_suite

pytestmark = [pytest.mark.e2e, pytest.mark.broker, pytest.mark.timeout(600)]

#: an organisation in config/directory.yaml (the listed primary-care unit of the sample stays)
ORG = "SE2321000016-VC001"
MAX_EXAMPLES = 20
#: a dependency that is down may answer 503; nothing else of the 5xx range is allowed
ALLOWED_5XX = {503}

PROPERTY_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    # one suite per test: on PostgreSQL (SIP_TEST_DATABASE=postgres) each test's service databases are
    # dropped when it ends, so a suite shared by the module would lose its stores after the first test
    tmp = tmp_path_factory.mktemp("api-properties")
    with rabbit_vhost() as amqp_url, mail_sink(tmp) as smtp:
        with running_suite(
            amqp_url, tmp, smtp, extra_ports=("mllp",), extra_env={"SIP_AUTH_REQUIRED": "true"}
        ) as s:
            yield s


def _token() -> str:
    return mint_token(TEST_JWT_SECRET, ORG, ttl=3600)


def _schema(base_url: str) -> schemathesis.BaseSchema:
    doc = httpx.get(f"{base_url}/openapi.json", timeout=30).raise_for_status().json()
    return schemathesis.openapi.from_dict(doc)


def _describe(case: schemathesis.Case) -> str:
    return (
        f"{case.method} {case.formatted_path} query={case.query!r} "
        f"body={str(case.body)[:300] if case.body is not None else None}"
    )


def _server_errors(operation: schemathesis.APIOperation, base_url: str, session: requests.Session,
                   headers: dict[str, str]) -> list[str]:  # fmt: skip
    """The first 5xx generated data gets from one operation (positive and negative data), if any."""
    failures: list[str] = []
    strategy = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )

    @PROPERTY_SETTINGS
    @given(case=strategy)
    def no_server_error(case: schemathesis.Case) -> None:
        if failures:
            return  # one example per operation is enough to report
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=30)
        if response.status_code >= 500 and response.status_code not in ALLOWED_5XX:
            failures.append(f"{response.status_code} for {_describe(case)}: {response.text[:200]}")

    no_server_error()
    return failures


def _fuzz(base_url: str) -> list[str]:
    """Every operation of the service; the 5xx found (at most one per operation)."""
    schema = _schema(base_url)
    headers = {"Authorization": f"Bearer {_token()}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, "the service's OpenAPI lists no operation"
    found: list[str] = []
    with requests.Session() as session:
        for operation in operations:
            found += _server_errors(operation, base_url, session, headers)
    return found


#: values at the edges of what Python and the stores hold: a 64-bit overflow, times whose UTC
#: conversion overflows (year 1 east of UTC, year 9999 west of it)
HUGE_INT = 99999999999999999999999
SOME_ID = "0b0e5b9c-6f3e-4c1e-9a43-5d2f7a0e8c11"
EDGE_TIMES = ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "9999-12-31T23:59:59Z")


def _is_datetime(value: object) -> bool:
    if not isinstance(value, str) or len(value) < 16 or value[4:5] != "-" or "T" not in value:
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _to_edges(value: Any, when: str) -> Any:
    """Every integer in ``value`` made huge, every date-time made ``when``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return HUGE_INT
    if _is_datetime(value):
        return when
    if isinstance(value, dict):
        return {k: _to_edges(v, when) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_edges(v, when) for v in value]
    return value


def _edge_errors(operation: schemathesis.APIOperation, base_url: str, session: requests.Session,
                 headers: dict[str, str], when: str) -> list[str]:  # fmt: skip
    """Valid requests with their integers and date-times pushed to the edges; the first 5xx, if any."""
    failures: list[str] = []

    @settings(PROPERTY_SETTINGS, max_examples=3)
    @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
    def no_server_error(case: schemathesis.Case) -> None:
        if failures:
            return
        if case.path_parameters:  # ids that parse (a UUID), so the request gets past the lookup
            case.path_parameters = {
                k: (SOME_ID if isinstance(v, str) else v) for k, v in case.path_parameters.items()
            }
        for part in ("path_parameters", "query", "body"):
            value = getattr(case, part)
            if isinstance(value, (dict, list)):
                setattr(case, part, _to_edges(value, when))
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=30)
        if response.status_code >= 500 and response.status_code not in ALLOWED_5XX:
            failures.append(f"{response.status_code} for {_describe(case)}: {response.text[:200]}")

    no_server_error()
    return failures


@pytest.mark.parametrize("service", SERVICES)
def test_integers_and_times_at_the_edges_get_no_server_error(suite: Suite, service: str) -> None:
    base_url = suite.url(service)
    schema = _schema(base_url)
    headers = {"Authorization": f"Bearer {_token()}"}
    found: list[str] = []
    with requests.Session() as session:
        for result in schema.get_all_operations():
            for when in EDGE_TIMES:
                found += _edge_errors(result.ok(), base_url, session, headers, when)
    assert not found, f"{service}: {len(found)} operation(s) answered 5xx:\n" + "\n".join(found)


@pytest.mark.parametrize("service", SERVICES)
def test_no_generated_request_gets_a_server_error(suite: Suite, service: str) -> None:
    found = _fuzz(suite.url(service))
    assert not found, f"{service}: {len(found)} operation(s) answered 5xx:\n" + "\n".join(found)
