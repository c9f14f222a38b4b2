"""The net behind every input path: a value the code or the database cannot hold answers 400 (an
OperationOutcome under /fhir), never 500."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.exc import DataError

from shared.runtime import install_value_error_handlers


def app() -> FastAPI:
    a = FastAPI()
    install_value_error_handlers(a)

    @a.get("/overflow")
    async def overflow() -> None:
        raise OverflowError("date value out of range")

    @a.get("/fhir/deep")
    async def deep() -> None:
        raise RecursionError("maximum recursion depth exceeded")

    @a.get("/db")
    async def db() -> None:
        raise DataError("INSERT", {}, Exception("value too long for type character varying(64)"))

    @a.get("/bug")
    async def bug() -> None:
        raise KeyError("a programming error stays a 500")

    return a


@pytest.mark.parametrize(("path", "fhir"), [("/overflow", False), ("/fhir/deep", True), ("/db", False)])
async def test_a_value_out_of_range_is_the_senders_error(path: str, fhir: bool) -> None:
    transport = httpx.ASGITransport(app=app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.get(path)
    assert r.status_code == 400
    body = r.json()
    if fhir:
        assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "invalid"
    else:
        assert "out of the range" in body["detail"]
    assert "64" not in r.text and "recursion" not in r.text  # no internals echoed


async def test_other_errors_are_not_swallowed() -> None:
    transport = httpx.ASGITransport(app=app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/bug")).status_code == 500
