"""Property tests: whatever arrives, intake answers with an ACK or an OperationOutcome — never raises."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.planning.intake import IntakeService, intake_tables
from services.planning.intake.hl7v2 import ack_code_of
from shared.directory import load_directory
from shared.hospital import HospitalEvent
from shared.persistence import make_engine, sqlite_url
from tests.support.examples import examples
from tests.unit.intake.messages import CONFORMANCE, adt_bytes

DIRECTORY = load_directory(Path(__file__).resolve().parents[3] / "config" / "directory.yaml")

SETTINGS = settings(
    max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
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


# ---------------------------------------------------------------- accepted ⇒ storable
# No notice is acknowledged as accepted (AA / 200) and then refused downstream for its content: every
# event of an accepted notice passes the hospital.stay-event.v1 contract (as the broker carries it)
# and the stay handler's storage path (SQLite, in process).

EXTREME_HL7_TIMES = st.one_of(
    st.sampled_from(
        [
            "00010101000000+0100",
            "00010101",
            "00020101000000+0000",
            "00011231235959-1400",
            "99991231235959-0100",
            "99991231",
            "99971231235959+0000",
            "99971231235959-1400",
            "20240301140000+0100",
            "20240301",
            "2024030114",
            "20240229120000.123456-0500",
        ]
    ),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)).map(
        lambda d: d.strftime("%Y%m%d%H%M%S")
    ),
    st.tuples(
        st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
        st.integers(-14 * 60, 14 * 60),
    ).map(
        lambda t: (
            t[0].strftime("%Y%m%d%H%M%S")
            + f"{'+' if t[1] >= 0 else '-'}{abs(t[1]) // 60:02d}{abs(t[1]) % 60:02d}"
        )
    ),
)
ODD_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="|^~\\&\r\n"), max_size=260
)


@st.composite
def extreme_adt(draw: st.DrawFn) -> bytes:
    trigger = draw(st.sampled_from(["A01", "A03", "A08", "A11", "A13", "A16", "A25", "A21", "A22"]))
    kw: dict[str, Any] = {
        "control_id": draw(st.one_of(st.just(f"P{draw(st.integers(0, 10**9))}"), ODD_TEXT.filter(str.strip))),
        "evn_occurred": draw(st.one_of(st.just(""), EXTREME_HL7_TIMES)),
        "evn_recorded": draw(EXTREME_HL7_TIMES),
        "discharge": draw(EXTREME_HL7_TIMES),
        "pv2_9": draw(st.one_of(st.just(""), EXTREME_HL7_TIMES)),
        "visit": draw(st.one_of(st.just("V1"), ODD_TEXT.filter(str.strip))),
        "kommun": draw(st.sampled_from(["0180", "1480", "", "12345"])),
        "pid30": draw(st.sampled_from(["", "Y"])),
    }
    if draw(st.booleans()):
        kw["pid3"] = (
            draw(ODD_TEXT.filter(str.strip)) + "^^^" + draw(st.sampled_from(["HOSP", "1.2.3.4&ISO", ""]))
        )
    raw = adt_bytes(trigger, **kw)
    if draw(st.booleans()):  # a stranger primary-care unit / sender
        raw = raw.replace(b"SE2321000131-E000000000111", draw(ODD_TEXT).encode("utf-8"))
    return raw


class Storage:
    """The stay handler's storage path in process (SQLite): the planning metadata, real handlers."""

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop) -> None:
        from services.planning.adapters.store import metadata

        self.loop = loop
        self.engine = make_engine(sqlite_url(path))

        async def create() -> None:
            async with self.engine.begin() as conn:
                await conn.run_sync(metadata.create_all)

        loop.run_until_complete(create())

    def store(self, event: HospitalEvent) -> None:
        from services.planning import handlers
        from services.planning.adapters.store import SqlCaseRepository
        from shared.clock import FixedClock
        from shared.contracts import HospitalStayEvent
        from shared.directory import UnknownRecipient
        from shared.errors import PermanentError

        # the contract as the broker carries it: serialised by the intake, parsed by planning
        wire = HospitalStayEvent(event=event).model_dump_json()
        received = HospitalStayEvent.model_validate_json(wire).event

        class Outbox:
            async def send(self, m: Any) -> None:
                type(m).model_validate_json(m.model_dump_json())

        async def run() -> None:
            async with self.engine.begin() as conn:
                try:
                    await handlers.handle_stay_event(
                        received, repo=SqlCaseRepository(conn), outbox=Outbox(), directory=DIRECTORY,
                        clock=FixedClock(datetime(2026, 11, 20, 10, tzinfo=UTC)),
                    )  # fmt: skip
                except UnknownRecipient:
                    pass  # routing (the directory), not the notice's content: dead-lettered by design
                except PermanentError as exc:
                    if "another person" not in str(exc):  # a stay reused for someone else: routing too
                        raise

        self.loop.run_until_complete(run())


@pytest.fixture(scope="module")
def storage(harness: Harness, tmp_path_factory: pytest.TempPathFactory) -> Storage:
    return Storage(tmp_path_factory.mktemp("stays") / "planning.db", harness.loop)


@SETTINGS
@given(extreme_adt())
def test_accepted_hl7_is_storable(harness: Harness, storage: Storage, raw: bytes) -> None:
    from services.planning.intake import parse_adt

    outcome = parse_adt(raw)
    if outcome.ack_code != "AA":
        assert outcome.error is not None and outcome.error.code[0] != "207", (
            outcome.error
        )  # no internal error
        return
    assert outcome.events
    for event in outcome.events:
        storage.store(event)


EXTREME_FHIR_TIMES = st.one_of(
    st.sampled_from(
        [
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "9999-12-31T23:59:59Z",
            "0001-01-01",
            "9999-12-31",
            "0002-01-01T00:00:00Z",
            "9997-12-31T23:59:59Z",
            "9997-12-31T23:59:59-14:00",
            "2023-03-07T09:45:30+01:00",
            "2023-03-07",
        ]
    ),
    st.tuples(
        st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
        st.integers(-14 * 60, 14 * 60),
    ).map(
        lambda t: t[0].isoformat() + f"{'+' if t[1] >= 0 else '-'}{abs(t[1]) // 60:02d}:{abs(t[1]) % 60:02d}"
    ),
)
FHIR_TEXT = st.text(max_size=260).filter(str.strip)


@st.composite
def extreme_bundle(draw: st.DrawFn) -> bytes:
    doc = _valid_bundle()
    for entry in doc["entry"]:
        res = entry["resource"]
        kind = res["resourceType"]
        if kind == "Encounter":
            res["period"] = {
                k: draw(EXTREME_FHIR_TIMES) for k in draw(st.sets(st.sampled_from(["start", "end"])))
            }
            if draw(st.booleans()):
                res.pop("episodeOfCare", None)
                res["identifier"] = [{"value": draw(FHIR_TEXT)}]
        elif kind == "Provenance":
            res["occurredDateTime"] = draw(EXTREME_FHIR_TIMES)
            res["recorded"] = draw(EXTREME_FHIR_TIMES)
        elif kind == "Patient" and draw(st.booleans()):
            res["identifier"] = [{"system": draw(st.sampled_from(["urn:oid:1.2.208.176.1.2", "urn:x:" + draw(FHIR_TEXT)])),
                                  "value": draw(FHIR_TEXT)}]  # fmt: skip
            if draw(st.booleans()):
                res["deceasedDateTime"] = draw(EXTREME_FHIR_TIMES)
        elif kind == "MessageHeader" and draw(st.booleans()):
            res["id"] = draw(st.from_regex(r"[A-Za-z0-9\-\.]{1,64}", fullmatch=True))
    return json.dumps(doc).encode()


@SETTINGS
@given(extreme_bundle())
def test_accepted_fhir_is_storable(harness: Harness, storage: Storage, data: bytes) -> None:
    from services.planning.intake import parse_message_bundle

    outcome = parse_message_bundle(data)
    _check_fhir_answer(outcome.status, outcome.body)
    if not outcome.accepted:
        assert outcome.body["issue"][0]["code"] != "processing", outcome.body  # no internal error
        return
    for event in outcome.events:
        storage.store(event)
