"""Property tests: whatever arrives, intake answers with an ACK or an OperationOutcome — never raises."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.planning.intake import IntakeService, intake_tables
from services.planning.intake.hl7v2 import ack_code_of
from shared.persistence import make_engine, sqlite_url
from tests.unit.intake.messages import CONFORMANCE, adt_bytes

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class Harness:
    def __init__(self, path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.engine = make_engine(sqlite_url(path))
        md = sa.MetaData()
        self.table = intake_tables(md)

        async def create() -> None:
            async with self.engine.begin() as conn:
                await conn.run_sync(md.create_all)

        self.loop.run_until_complete(create())
        self.service = IntakeService(self.engine, self.table)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.loop.run_until_complete(self.engine.dispose())
        self.loop.close()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(tmp_path_factory.mktemp("intake") / "intake.db")
    yield h
    h.close()


def _ack_code(ack: bytes) -> str:
    assert isinstance(ack, bytes) and ack.startswith(b"MSH")
    code = ack_code_of(ack)
    assert code in {"AA", "AE", "AR"}
    return code


@SETTINGS
@given(st.binary(max_size=600))
def test_random_bytes_never_aa(harness: Harness, data: bytes) -> None:
    ack = harness.run(harness.service.handle_hl7(data))
    assert _ack_code(ack) != "AA"


@SETTINGS
@given(st.text(alphabet="MSH|^~\\&ADT0123456789\r\nPIDEVNPV1 .+-", max_size=300))
def test_hl7_looking_text_never_raises(harness: Harness, text: str) -> None:
    _ack_code(harness.run(harness.service.handle_hl7(("MSH|^~\\&|" + text).encode())))


@st.composite
def mutated_adt(draw: st.DrawFn) -> bytes:
    raw = bytearray(adt_bytes(control_id=f"M{draw(st.integers(0, 10**9))}"))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "delete", "insert"]))
        pos = draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[pos] = draw(st.integers(0, 255))
        elif op == "delete" and len(raw) > 1:
            del raw[pos : pos + draw(st.integers(1, 20))]
        else:
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=10))
    return bytes(raw)


@SETTINGS
@given(mutated_adt())
def test_mutated_valid_messages_always_acked(harness: Harness, data: bytes) -> None:
    _ack_code(harness.run(harness.service.handle_hl7(data)))


def _valid_bundle() -> dict[str, Any]:
    path = CONFORMANCE / "medcom-hospitalnotification" / "HospitalNotification_Ex_SLHJ_H.json"
    return json.loads(path.read_bytes())


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_bundle(draw: st.DrawFn) -> bytes:
    doc = _valid_bundle()
    paths = [p for p in _paths(doc) if p]
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(paths))
        parent: Any = doc
        try:
            for key in path[:-1]:
                parent = parent[key]
            if draw(st.booleans()):
                parent[path[-1]] = draw(JSON_VALUES)
            elif isinstance(parent, dict):
                parent.pop(path[-1], None)
            elif isinstance(parent, list) and path[-1] < len(parent):
                parent.pop(path[-1])
        except (KeyError, IndexError, TypeError):
            continue
    return json.dumps(doc).encode()


def _check_fhir_answer(status: int, body: dict[str, Any]) -> None:
    assert status in {200, 400, 422}
    if status == 200:
        assert body["resourceType"] == "Bundle"
        assert body["entry"][0]["resource"]["response"]["code"] == "ok"
    else:
        assert body["resourceType"] == "OperationOutcome"
        assert body["issue"][0]["severity"] == "error"
        assert body["issue"][0]["diagnostics"]


@SETTINGS
@given(mutated_bundle())
def test_mutated_fhir_always_answered(harness: Harness, data: bytes) -> None:
    _check_fhir_answer(*harness.run(harness.service.handle_fhir(data)))


@SETTINGS
@given(st.binary(max_size=300) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_garbage_fhir_refused(harness: Harness, data: bytes) -> None:
    status, body = harness.run(harness.service.handle_fhir(data))
    _check_fhir_answer(status, body)
    assert status != 200
