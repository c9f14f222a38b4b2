"""Over a real TCP socket: MLLPServer → IntakeService → SQLite file."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.planning.intake import HospitalEvent, IntakeService, MLLPServer, intake_tables
from services.planning.intake.mllp import FrameDecoder, frame
from shared.persistence import make_engine, sqlite_url
from tests.support.personnummer import ADULT
from tests.unit.intake.messages import CONFORMANCE, adt_bytes, bad_check_digit, msa, segment

pytestmark = pytest.mark.store_free


@dataclass
class Stack:
    engine: AsyncEngine
    table: sa.Table
    server: MLLPServer
    service: IntakeService
    seen: list[HospitalEvent] = field(default_factory=list)

    async def rows(self) -> list[sa.Row]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(sa.select(self.table).order_by(self.table.c.id))).all())


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    engine = make_engine(sqlite_url(tmp_path / "planning.db"))
    md = sa.MetaData()
    table = intake_tables(md)
    async with engine.begin() as conn:
        await conn.run_sync(md.create_all)
    seen: list[HospitalEvent] = []

    async def on_event(conn: AsyncConnection, event: HospitalEvent) -> None:
        assert conn.in_transaction()
        seen.append(event)

    service = IntakeService(engine, table, on_event=on_event)
    server = MLLPServer(service.handle_hl7, "127.0.0.1", 0)
    await server.start()
    assert server.port != 0
    try:
        yield Stack(engine, table, server, service, seen)
    finally:
        await server.stop()
        await engine.dispose()


async def _exchange(port: int, chunks: list[bytes], expect: int, *, delay: float = 0.0) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            if delay:
                await asyncio.sleep(delay)
        decoder, acks = FrameDecoder(), []
        while len(acks) < expect:
            data = await asyncio.wait_for(reader.read(65536), timeout=10)
            assert data, "connection closed before all ACKs arrived"
            acks += decoder.feed(data)
        return acks
    finally:
        writer.close()
        await writer.wait_closed()


async def test_frame_sent_byte_by_byte(stack: Stack) -> None:
    data = frame(adt_bytes(control_id="BYTE-1"))
    (ack,) = await _exchange(stack.server.port, [data[i : i + 1] for i in range(len(data))], 1)
    assert msa(ack)[1:3] == ["AA", "BYTE-1"]
    rows = await stack.rows()
    assert [(r.control_id, r.outcome, r.primary_kind) for r in rows] == [("BYTE-1", "AA", "discharged")]
    assert bytes(rows[0].response_body) == ack
    assert [e.kind for e in stack.seen] == ["discharged"]


async def test_two_frames_in_one_write_and_garbage_before(stack: Stack) -> None:
    data = b"garbage\r\n" + frame(adt_bytes("A01", control_id="TWO-1")) + frame(adt_bytes(control_id="TWO-2"))
    acks = await _exchange(stack.server.port, [data], 2)
    assert [msa(a)[1:3] for a in acks] == [["AA", "TWO-1"], ["AA", "TWO-2"]]
    assert [e.kind for e in stack.seen] == ["admitted", "discharged"]


async def test_duplicate_control_id_gets_identical_ack_and_one_row(stack: Stack) -> None:
    msg = frame(adt_bytes(control_id="DUP-1"))
    (first,) = await _exchange(stack.server.port, [msg], 1)
    (second,) = await _exchange(stack.server.port, [msg], 1)
    # a resend on the same connection too
    third, fourth = await _exchange(stack.server.port, [msg + msg], 2)
    assert first == second == third == fourth
    rows = await stack.rows()
    assert len(rows) == 1
    assert len(stack.seen) == 1  # no second effect


async def test_a13_after_a03_records_cancelled_discharge(stack: Stack) -> None:
    await _exchange(stack.server.port, [frame(adt_bytes("A03", control_id="DIS-1"))], 1)
    (ack,) = await _exchange(stack.server.port, [frame(adt_bytes("A13", control_id="CAN-1"))], 1)
    assert msa(ack)[1:3] == ["AA", "CAN-1"]
    rows = await stack.rows()
    assert [r.primary_kind for r in rows] == ["discharged", "cancelled"]
    (cancel,) = json.loads(rows[1].events)
    assert cancel["kind"] == "cancelled"
    assert cancel["cancels"] == "discharged"
    assert cancel["cancels_message_id"] == "DIS-1"
    assert stack.seen[-1].cancels_message_id == "DIS-1"
    assert stack.seen[-1].patient.value == ADULT


async def test_missing_pid3_is_ae_and_stored_without_effect(stack: Stack) -> None:
    (ack,) = await _exchange(stack.server.port, [frame(adt_bytes(pid3="", control_id="NOPID"))], 1)
    fields = msa(ack)
    assert fields[1:3] == ["AE", "NOPID"]
    assert "PID-3" in fields[3]
    rows = await stack.rows()
    assert [(r.control_id, r.outcome) for r in rows] == [("NOPID", "AE")]
    assert json.loads(rows[0].events) == []
    assert stack.seen == []


async def test_wrong_check_digit_is_ae(stack: Stack) -> None:
    pid3 = f"{bad_check_digit(ADULT)}^^^SKV&1.2.752.129.2.1.3.1&ISO^PN"
    (ack,) = await _exchange(stack.server.port, [frame(adt_bytes(pid3=pid3, control_id="BADPNR"))], 1)
    assert msa(ack)[1] == "AE"
    assert "check digit" in msa(ack)[3]
    assert stack.seen == []


async def test_unsupported_trigger_is_ar(stack: Stack) -> None:
    (ack,) = await _exchange(stack.server.port, [frame(adt_bytes("A05", control_id="A05-1"))], 1)
    assert msa(ack)[1:3] == ["AR", "A05-1"]


async def test_oversize_frame_closes_connection(tmp_path: Path, stack: Stack) -> None:
    small = MLLPServer(stack.service.handle_hl7, "127.0.0.1", 0, max_frame=64)
    await small.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", small.port)
        writer.write(frame(adt_bytes(control_id="BIG")))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), timeout=10) == b""
        writer.close()
    finally:
        await small.stop()
    assert await stack.rows() == []


async def test_handler_failure_sends_no_ack(tmp_path: Path) -> None:
    async def broken(raw: bytes) -> bytes:
        raise RuntimeError("database down")

    server = MLLPServer(broken, "127.0.0.1", 0)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(frame(adt_bytes()))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), timeout=10) == b""
        writer.close()
    finally:
        await server.stop()


async def test_on_event_failure_rolls_back_and_resend_succeeds(tmp_path: Path) -> None:
    engine = make_engine(sqlite_url(tmp_path / "p.db"))
    md = sa.MetaData()
    table = intake_tables(md)
    async with engine.begin() as conn:
        await conn.run_sync(md.create_all)
    calls = {"n": 0}

    async def flaky(conn: AsyncConnection, event: HospitalEvent) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("outbox unavailable")

    service = IntakeService(engine, table, on_event=flaky)
    with pytest.raises(RuntimeError):
        await service.handle_hl7(adt_bytes(control_id="RETRY-1"))
    async with engine.connect() as conn:
        assert (await conn.scalar(sa.select(sa.func.count()).select_from(table))) == 0
    assert msa(await service.handle_hl7(adt_bytes(control_id="RETRY-1")))[1] == "AA"
    await engine.dispose()


async def test_fhir_duplicate_and_tek_fcc(stack: Stack) -> None:
    medcom = CONFORMANCE / "medcom-hospitalnotification"
    first = await stack.service.handle_fhir((medcom / "HospitalNotification_Ex_STIN_A.json").read_bytes())
    # TEK_DUB repeats STIN_A's MessageHeader.id: recognised as a duplicate, same answer, no effect
    dup = await stack.service.handle_fhir((medcom / "HospitalNotification_Ex_TEK_DUB.json").read_bytes())
    assert first == dup and first[0] == 200
    status, body = await stack.service.handle_fhir(
        (medcom / "HospitalNotification_Ex_TEK_FCC.json").read_bytes()
    )
    assert status == 422 and body["resourceType"] == "OperationOutcome"
    rows = await stack.rows()
    assert [(r.source, r.outcome) for r in rows] == [("fhir", "ok"), ("fhir", "fatal-error")]
    assert [e.kind for e in stack.seen] == ["admitted"]


async def test_iso_8859_1_names_over_the_socket_are_stored_as_sent(stack: Stack) -> None:
    raw = adt_bytes(name="Öberg^Åsa", charset="8859/1", encoding="iso8859-1", control_id="LATIN-1")
    assert "Åsa".encode("iso8859-1") in raw
    (ack,) = await _exchange(stack.server.port, [frame(raw)], 1)
    assert msa(ack)[1:3] == ["AA", "LATIN-1"]
    [row] = await stack.rows()
    assert bytes(row.raw) == raw  # the message as received, byte for byte
    assert [e.kind for e in stack.seen] == ["discharged"]


@pytest.mark.parametrize(
    ("version", "pv1_36"), [("2.3", "01"), ("2.7", "01^Discharged to home or self care^HL70112")]
)
async def test_v23_and_v27_field_types_over_the_socket(stack: Stack, version: str, pv1_36: str) -> None:
    raw = adt_bytes(version=version, pv1_36=pv1_36, control_id=f"V{version}")
    (ack,) = await _exchange(stack.server.port, [frame(raw)], 1)
    assert msa(ack)[1:3] == ["AA", f"V{version}"]
    [ev] = stack.seen
    assert ev.discharge_disposition == "01" and ev.kind == "discharged"


@pytest.mark.postgres
async def test_on_postgresql_duplicates_sent_at_once_get_one_row_and_the_same_ack(pg_url: str) -> None:
    engine = make_engine(pg_url)
    md = sa.MetaData()
    table = intake_tables(md)
    async with engine.begin() as conn:
        await conn.run_sync(md.create_all)
    seen: list[HospitalEvent] = []

    async def on_event(conn: AsyncConnection, event: HospitalEvent) -> None:
        seen.append(event)

    service = IntakeService(engine, table, on_event=on_event)
    try:
        raw = adt_bytes(name="Öberg^Åsa", charset="8859/1", encoding="iso8859-1", control_id="PG-1")
        acks = await asyncio.gather(*(service.handle_hl7(raw) for _ in range(8)))
        assert len(set(acks)) == 1 and msa(acks[0])[1] == "AA"
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.select(table))).all()
        assert len(rows) == 1 and bytes(rows[0].raw) == raw
        assert len(seen) == 1
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("field", "kwargs", "value"),
    [
        ("EVN-6", {"evn_occurred": "00010101000000+0100"}, "00010101000000+0100"),  # UTC: year 0
        ("EVN-6", {"evn_occurred": "99991231235959-0100"}, "99991231235959-0100"),  # UTC: year 10000
        ("EVN-6", {"evn_occurred": "99991231"}, "99991231"),  # no deadline can be counted from it
        ("EVN-2", {"evn_recorded": "00010101000000+1400"}, "00010101000000+1400"),
    ],
)
async def test_a16_with_an_event_time_the_store_cannot_hold_is_refused_at_the_door(
    stack: Stack, field: str, kwargs: dict[str, str], value: str
) -> None:
    """Not AA and a dead letter downstream: AE, the ERR segment naming the field, no event."""
    (ack,) = await _exchange(stack.server.port, [frame(adt_bytes("A16", control_id="EDGE-1", **kwargs))], 1)
    assert msa(ack)[1:3] == ["AE", "EDGE-1"]
    seg, _, number = field.partition("-")
    err = segment(ack, "ERR")
    assert err is not None and err[2] == f"{seg}^1^{number}", err
    assert err[3].startswith("102^")
    assert field in err[8] and value in err[8]
    assert stack.seen == []
    rows = await stack.rows()
    assert [(r.control_id, r.outcome) for r in rows] == [("EDGE-1", "AE")]


async def test_a_stay_id_longer_than_the_store_holds_is_refused_naming_pv1_19(stack: Stack) -> None:
    (ack,) = await _exchange(
        stack.server.port, [frame(adt_bytes("A16", control_id="LONG-1", visit="V" * 201))], 1
    )
    assert msa(ack)[1] == "AE"
    err = segment(ack, "ERR")
    assert err is not None and err[2] == "PV1^1^19"
    assert stack.seen == []
