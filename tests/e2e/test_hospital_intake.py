"""End to end: hospital messages over a real MLLP socket and real HTTP into the planning process,
through the real RabbitMQ, to a SIP case (and consent asked by the consent process)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import httpx
import pytest

from services.planning.intake.mllp import FrameDecoder, frame
from tests.support.infra import MailSink
from tests.support.personnummer import ADULTS
from tests.support.suite import Suite, running_suite
from tests.unit.intake.messages import CONFORMANCE, adt_bytes, msa

pytestmark = [pytest.mark.e2e, pytest.mark.broker]

VC = "SE2321000016-VC001"


@pytest.fixture
def suite(amqp_url: str, tmp_path: Path, smtp: MailSink) -> Iterator[Suite]:
    with running_suite(
        amqp_url, tmp_path, smtp, services=("consent", "planning"), extra_ports=("mllp",)
    ) as s:
        yield s


def hl7(trigger: str, control_id: str, pnr: str, visit: str, **kw) -> bytes:
    kw.setdefault("kommun", "0180")
    pid3 = f"{pnr}^^^SKV&1.2.752.129.2.1.3.1&ISO^PN"
    raw = adt_bytes(trigger, control_id=control_id, pid3=pid3, visit=visit, charset="8859/1",
                    name="Åström^Örjan", encoding="latin-1", **kw)  # fmt: skip
    return raw.replace(b"SE2321000131-E000000000111", VC.encode())


async def send(port: int, *messages: bytes) -> list[bytes]:
    """All messages in one write (several frames in one read), then read the ACKs."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"".join(frame(m) for m in messages))
    await writer.drain()
    decoder, acks = FrameDecoder(), []
    while len(acks) < len(messages):
        chunk = await asyncio.wait_for(reader.read(65536), timeout=15)
        assert chunk, "connection closed before every ACK came"
        acks += decoder.feed(chunk)
    writer.close()
    return acks


def wait_for(fn, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


async def test_adt_over_mllp_opens_a_case_once_and_a13_cancels_it(suite: Suite) -> None:
    port = suite.ports["mllp"]
    pnr = ADULTS[3]
    a03 = hl7("A03", "E2E-1", pnr, "V-E2E-1", discharge="20261120093000+0100")
    acks = await send(port, a03, a03)  # the second is a resend of the same MSH-10
    assert [msa(a)[1] for a in acks] == ["AA", "AA"] and acks[0] == acks[1]

    with httpx.Client(base_url=suite.url("planning"), timeout=10) as http:
        case = wait_for(lambda: [c for c in http.get("/cases").json() if c["episode_id"] == "V-E2E-1"])
        assert len(case) == 1
        assert case[0]["state"] == "consent_pending"
        assert case[0]["ready_for_discharge_at"].startswith("2026-11-20T08:30:00")
        assert case[0]["participants"][1]["hsa_id"] == VC
        # consent (another process) received the request over RabbitMQ
        # as a unit taking part in the case (consent lists only the caller's own cases)
        with httpx.Client(
            base_url=suite.url("consent"), timeout=10, headers={"X-Sip-Organisation": VC}
        ) as consent:
            wait_for(
                lambda: any(r["case_id"] == case[0]["id"] for r in consent.get("/consent-requests").json())
            )

        [ack] = await send(port, hl7("A13", "E2E-2", pnr, "V-E2E-1", evn_recorded="20261120120000+0100"))
        assert msa(ack)[1] == "AA"
        cancelled = wait_for(
            lambda: [
                c
                for c in http.get("/cases", params={"all": True}).json()
                if c["id"] == case[0]["id"] and c["state"] == "cancelled"
            ]
        )
        assert "cancelled" in cancelled[0]["closed_reason"]
        assert (
            len([c for c in http.get("/cases", params={"all": True}).json() if c["episode_id"] == "V-E2E-1"])
            == 1
        )

        # a wrong check digit is refused with AE and the reason, and changes nothing
        [ae] = await send(port, hl7("A16", "E2E-3", pnr[:-1] + str((int(pnr[-1]) + 1) % 10), "V-E2E-2"))
        assert msa(ae)[1] == "AE" and "check digit" in msa(ae)[3]
        stays = http.get("/stays").json()
        assert all(s["stay_id"] != "V-E2E-2" for s in stays)
        assert all(pnr not in str(s) for s in stays)  # the patient is masked


async def test_fhir_process_message_over_http(suite: Suite) -> None:
    body = (
        CONFORMANCE / "davinci-notifications" / "discharge-notification-message-bundle-01.json"
    ).read_bytes()
    fcc = (CONFORMANCE / "medcom-hospitalnotification" / "HospitalNotification_Ex_TEK_FCC.json").read_bytes()
    async with httpx.AsyncClient(base_url=suite.url("planning"), timeout=10) as http:
        first = await http.post("/fhir/$process-message", content=body,
                                headers={"Content-Type": "application/fhir+json"})  # fmt: skip
        again = await http.post("/fhir/$process-message", content=body,
                                headers={"Content-Type": "application/fhir+json"})  # fmt: skip
        assert first.status_code == 200, first.text
        assert first.json()["resourceType"] == "Bundle" and again.json() == first.json()
        refused = await http.post("/fhir/$process-message", content=fcc,
                                  headers={"Content-Type": "application/fhir+json"})  # fmt: skip
        assert refused.status_code in (400, 422)
        outcome = refused.json()
        assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["diagnostics"]

        async def stays():
            return [s for s in (await http.get("/stays")).json() if s["patient"] == "***"]

        for _ in range(100):
            recorded = await stays()
            if recorded:
                break
            await asyncio.sleep(0.2)
        # a US patient: the stay is recorded, no SIP case, and /stays says why
        assert len(recorded) == 1 and recorded[0]["case_id"] is None
        assert "Swedish" in recorded[0]["note"]


async def test_unknown_kommun_goes_to_the_dead_letter_queue_with_the_reason(suite: Suite) -> None:
    [ack] = await send(suite.ports["mllp"], hl7("A03", "E2E-9", ADULTS[4], "V-E2E-9", kommun="9999"))
    assert msa(ack)[1] == "AA"  # accepted and stored: the routing problem is ours, not the sender's
    conn = await aio_pika.connect(suite.amqp_url)
    async with conn:
        ch = await conn.channel()
        dlq = await ch.declare_queue("planning.hospital.stay-event.v1.dlq", passive=True)
        for _ in range(150):
            msg = await dlq.get(fail=False, no_ack=False)
            if msg is not None:
                break
            await asyncio.sleep(0.2)
        assert msg is not None, "nothing dead-lettered"
        assert "9999" in msg.headers["x-sip-error"]
        await msg.nack(requeue=True)
